//! Identifiers chosen by clients.

use std::fmt;
use std::str::FromStr;

use rand_core::{CryptoRng, RngCore};

/// A 128-bit random identifier with a 32-hex-digit text form (also its JSON form) and raw bytes
/// in binary encodings.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $invalid:ident, $what:literal, $message:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 16]);

        #[doc = concat!("Why a string is not a ", $what, ".")]
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error($message)]
        pub struct $invalid;

        impl $name {
            /// A fresh random id.
            pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
                let mut bytes = [0u8; 16];
                rng.fill_bytes(&mut bytes);
                Self(bytes)
            }

            /// The id from its bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = $invalid;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let s = s.trim();
                if s.len() != 32 || !s.is_ascii() {
                    return Err($invalid);
                }
                let mut bytes = [0u8; 16];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| $invalid)?;
                }
                Ok(Self(bytes))
            }
        }

        /// Hex in human-readable formats (JSON), raw bytes in binary ones.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_string())
                } else {
                    serde::Serialize::serialize(&self.0, s)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    Ok(Self(<[u8; 16]>::deserialize(d)?))
                }
            }
        }
    };
}

hex_id!(
    /// A message id: 128 random bits chosen by the sender's client. It makes `send` idempotent
    /// and lets the receiver drop duplicates; receipts refer to it.
    MessageId,
    InvalidMessageId,
    "message id",
    "a message id is 32 hexadecimal digits"
);

hex_id!(
    /// A group id: 128 random bits chosen by the group's creator.
    GroupId,
    InvalidGroupId,
    "group id",
    "a group id is 32 hexadecimal digits"
);

hex_id!(
    /// A file id: 128 random bits chosen by the sender.
    FileId,
    InvalidFileId,
    "file id",
    "a file id is 32 hexadecimal digits"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints_and_nothing_else() {
        let id = MessageId::from_bytes([0xab; 16]);
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        assert!("abc".parse::<MessageId>().is_err());
        assert!("zz".repeat(16).parse::<MessageId>().is_err());
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
        assert_eq!(
            postcard::from_bytes::<MessageId>(&postcard::to_stdvec(&id).unwrap()).unwrap(),
            id
        );
    }
}
