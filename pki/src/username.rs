//! The validated username newtype shared by every crate.

use std::fmt;
use std::str::FromStr;

/// Shortest accepted username, in bytes.
pub const MIN_LEN: usize = 3;
/// Longest accepted username, in bytes.
pub const MAX_LEN: usize = 32;

/// A peerchat username: ASCII, lower case, `[a-z0-9][a-z0-9._-]{2,31}`.
///
/// A value of this type is always valid, so code that holds one never re-checks it. It is the
/// name bound to an identity key by the CA (`peerchat://user/<username>` in the certificate).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Username(String);

/// Why a string is not a [`Username`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUsername {
    /// Shorter than [`MIN_LEN`] or longer than [`MAX_LEN`] bytes.
    #[error("a username has {MIN_LEN} to {MAX_LEN} characters, this one has {0}")]
    Length(usize),
    /// The first character is not a lower-case letter or digit.
    #[error("a username starts with a lower-case letter or a digit")]
    FirstCharacter,
    /// A character outside `a-z 0-9 . _ -`.
    #[error("a username may contain only a-z, 0-9, '.', '_' and '-'")]
    Character,
}

impl Username {
    /// Validates `name` exactly as given (no case folding).
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidUsername> {
        let name = name.into();
        let len = name.len();
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(InvalidUsername::Length(name.chars().count()));
        }
        let mut bytes = name.bytes();
        match bytes.next() {
            Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit() => {}
            _ => return Err(InvalidUsername::FirstCharacter),
        }
        if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
            return Err(InvalidUsername::Character);
        }
        Ok(Self(name))
    }

    /// Validates what a person typed: surrounding white space is trimmed and ASCII letters are
    /// folded to lower case, so `" Alice "` names the same account as `"alice"`.
    pub fn from_user_input(input: &str) -> Result<Self, InvalidUsername> {
        Self::new(input.trim().to_ascii_lowercase())
    }

    /// The username as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI the CA writes into a certificate's subject alternative name.
    pub fn to_uri(&self) -> String {
        format!("{URI_PREFIX}{}", self.0)
    }

    /// Parses a `peerchat://user/<username>` URI.
    pub fn from_uri(uri: &str) -> Result<Self, InvalidUsername> {
        match uri.strip_prefix(URI_PREFIX) {
            Some(name) => Self::new(name),
            None => Err(InvalidUsername::Character),
        }
    }
}

/// Prefix of the subject-alternative-name URI that binds a username to a key.
pub const URI_PREFIX: &str = "peerchat://user/";

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({})", self.0)
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Username {
    type Err = InvalidUsername;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Username {
    type Error = InvalidUsername;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> Self {
        u.0
    }
}

impl serde::Serialize for Username {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Username {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in [
            "abc",
            "alice",
            "bob.smith",
            "x_y-z",
            "0day",
            &"a".repeat(32),
        ] {
            assert!(Username::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(Username::new("ab"), Err(InvalidUsername::Length(2)));
        assert_eq!(
            Username::new("a".repeat(33)),
            Err(InvalidUsername::Length(33))
        );
        assert_eq!(Username::new("_abc"), Err(InvalidUsername::FirstCharacter));
        assert_eq!(Username::new(".abc"), Err(InvalidUsername::FirstCharacter));
        assert_eq!(Username::new("Alice"), Err(InvalidUsername::FirstCharacter));
        assert_eq!(Username::new("alIce"), Err(InvalidUsername::Character));
        assert_eq!(Username::new("al ice"), Err(InvalidUsername::Character));
        assert_eq!(Username::new("al/ice"), Err(InvalidUsername::Character));
        assert_eq!(Username::new("alicé"), Err(InvalidUsername::Character));
    }

    #[test]
    fn user_input_is_folded_to_lower_case() {
        assert_eq!(
            Username::from_user_input(" Alice ").unwrap().as_str(),
            "alice"
        );
    }

    #[test]
    fn uri_round_trip() {
        let u = Username::new("alice").unwrap();
        assert_eq!(u.to_uri(), "peerchat://user/alice");
        assert_eq!(Username::from_uri(&u.to_uri()).unwrap(), u);
        assert!(Username::from_uri("https://user/alice").is_err());
        assert!(Username::from_uri("peerchat://user/alice/x").is_err());
    }

    #[test]
    fn serde_validates() {
        let u: Username = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(u.as_str(), "bob");
        assert!(serde_json::from_str::<Username>("\"B\"").is_err());
    }
}
