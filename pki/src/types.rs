//! Small value types: certificate serial numbers and fingerprints.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

/// A certificate serial number: a positive integer, kept as its big-endian bytes without leading
/// zeros so that two encodings of the same number compare equal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// A fresh random 128-bit serial (RFC 5280 asks for at least 64 unpredictable bits).
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 16];
        loop {
            rng.fill_bytes(&mut bytes);
            // A non-zero first byte keeps the number 128 bits long and the encoding canonical.
            if bytes[0] != 0 {
                return Self(bytes.to_vec());
            }
        }
    }

    /// The serial from its big-endian bytes, as found in a DER INTEGER.
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Self(bytes[first..].to_vec())
    }

    /// Big-endian bytes without leading zeros.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex, the form used in APIs and logs.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

/// Why a string is not a serial number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a serial number is 1 to 20 bytes of hex")]
pub struct InvalidSerial;

impl FromStr for Serial {
    type Err = InvalidSerial;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 40 {
            return Err(InvalidSerial);
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| InvalidSerial))
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(Self::from_be_bytes(&bytes))
    }
}

impl serde::Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// SHA-256 over a certificate's DER: what people compare to check they trust the same CA.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Upper-case hex pairs joined by `:`, as `openssl x509 -fingerprint -sha256` prints them.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_canonical_and_round_trips() {
        assert_eq!(
            Serial::from_be_bytes(&[0, 0, 1, 2]),
            Serial::from_be_bytes(&[1, 2])
        );
        let s: Serial = "00ab01".parse().unwrap();
        assert_eq!(s.to_hex(), "ab01");
        assert!("abc".parse::<Serial>().is_err());
        assert!("zz".parse::<Serial>().is_err());
        let mut rng = rand::thread_rng();
        let r = Serial::random(&mut rng);
        assert_eq!(r.as_bytes().len(), 16);
        assert_eq!(r.to_hex().parse::<Serial>().unwrap(), r);
        assert_ne!(Serial::random(&mut rng), r);
    }

    #[test]
    fn fingerprint_format() {
        let f = Fingerprint::of_der(b"abc");
        let s = f.to_string();
        assert_eq!(s.len(), 32 * 3 - 1);
        assert!(s.starts_with("BA:78:16:BF"));
    }
}
