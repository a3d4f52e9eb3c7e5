//! The wire form of a ratchet message.
//!
//! ```text
//! version (1 = 0x01) ‖ kind (0 = normal, 1 = with X3DH header)
//! [ IK_A (32) ‖ EK_A (32) ‖ SPK id (u32 BE) ‖ has OPK (0|1) ‖ OPK id (u32 BE) ]   kind 1 only
//! ratchet key (32) ‖ previous chain length PN (u32 BE) ‖ message number N (u32 BE)
//! AES-256-GCM ciphertext and tag
//! ```
//!
//! Everything before the ciphertext is authenticated as associated data (after `IK_A ‖ IK_B`), so
//! a change to any byte of a message makes it fail to decrypt.

use x25519_dalek::PublicKey;

use super::keys::{IdentityKey, PreKeyId};

/// Current version of the message format.
pub const VERSION: u8 = 1;
const KIND_NORMAL: u8 = 0;
const KIND_PREKEY: u8 = 1;
const PREKEY_HEADER_LEN: usize = 32 + 32 + 4 + 1 + 4;
/// Length of the ratchet header.
pub const HEADER_LEN: usize = 32 + 4 + 4;
/// Length of the AES-GCM tag.
pub const TAG_LEN: usize = 16;

/// What the first messages of a session carry so the responder can run X3DH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreKeyHeader {
    /// The initiator's identity key.
    pub identity: IdentityKey,
    /// The initiator's ephemeral key (also identifies the session attempt).
    #[serde(with = "super::keys::public_serde")]
    pub ephemeral: PublicKey,
    /// The responder's signed prekey that was used.
    pub signed_prekey_id: PreKeyId,
    /// The responder's one-time prekey that was used, if any.
    pub one_time_prekey_id: Option<PreKeyId>,
}

/// The Double Ratchet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub ratchet_key: PublicKey,
    /// Number of messages in the sender's previous sending chain.
    pub previous_chain_length: u32,
    /// Number of this message in the current sending chain.
    pub message_number: u32,
}

/// An encrypted message, as sent between peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) prekey: Option<PreKeyHeader>,
    pub(crate) header: Header,
    /// The full encoding; `body_start` is where the ciphertext begins.
    bytes: Vec<u8>,
    body_start: usize,
}

/// Why bytes are not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageDecodeError {
    /// Too short for its kind.
    #[error("the message is truncated")]
    Truncated,
    /// A version this node does not speak.
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u8),
    /// An unknown kind byte or flag.
    #[error("malformed message header")]
    Malformed,
    /// The identity key in the X3DH header is not a valid Ed25519 key.
    #[error("the sender's identity key is invalid")]
    BadIdentityKey,
}

impl Message {
    pub(crate) fn seal<E>(
        prekey: Option<PreKeyHeader>,
        header: Header,
        encrypt: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Self, E> {
        let mut bytes = Vec::with_capacity(2 + PREKEY_HEADER_LEN + HEADER_LEN);
        bytes.push(VERSION);
        match &prekey {
            None => bytes.push(KIND_NORMAL),
            Some(p) => {
                bytes.push(KIND_PREKEY);
                bytes.extend_from_slice(&p.identity.to_bytes());
                bytes.extend_from_slice(p.ephemeral.as_bytes());
                bytes.extend_from_slice(&p.signed_prekey_id.0.to_be_bytes());
                match p.one_time_prekey_id {
                    Some(id) => {
                        bytes.push(1);
                        bytes.extend_from_slice(&id.0.to_be_bytes());
                    }
                    None => {
                        bytes.push(0);
                        bytes.extend_from_slice(&[0; 4]);
                    }
                }
            }
        }
        bytes.extend_from_slice(header.ratchet_key.as_bytes());
        bytes.extend_from_slice(&header.previous_chain_length.to_be_bytes());
        bytes.extend_from_slice(&header.message_number.to_be_bytes());
        let body_start = bytes.len();
        let ciphertext = encrypt(&bytes)?;
        bytes.extend_from_slice(&ciphertext);
        Ok(Self {
            prekey,
            header,
            bytes,
            body_start,
        })
    }

    /// Parses a message. Nothing is authenticated yet: that happens when it is decrypted.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageDecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(MessageDecodeError::Truncated)?;
        if version != VERSION {
            return Err(MessageDecodeError::UnsupportedVersion(version));
        }
        let (&kind, mut rest) = rest.split_first().ok_or(MessageDecodeError::Truncated)?;
        let prekey = match kind {
            KIND_NORMAL => None,
            KIND_PREKEY => {
                if rest.len() < PREKEY_HEADER_LEN {
                    return Err(MessageDecodeError::Truncated);
                }
                let identity = IdentityKey::from_bytes(&rest[..32])
                    .map_err(|_| MessageDecodeError::BadIdentityKey)?;
                let ephemeral = PublicKey::from(array32(&rest[32..64]));
                let signed_prekey_id = PreKeyId(u32_be(&rest[64..68]));
                let one_time_prekey_id = match rest[68] {
                    0 if rest[69..73] == [0; 4] => None,
                    1 => Some(PreKeyId(u32_be(&rest[69..73]))),
                    _ => return Err(MessageDecodeError::Malformed),
                };
                rest = &rest[PREKEY_HEADER_LEN..];
                Some(PreKeyHeader {
                    identity,
                    ephemeral,
                    signed_prekey_id,
                    one_time_prekey_id,
                })
            }
            _ => return Err(MessageDecodeError::Malformed),
        };
        if rest.len() < HEADER_LEN + TAG_LEN {
            return Err(MessageDecodeError::Truncated);
        }
        let header = Header {
            ratchet_key: PublicKey::from(array32(&rest[..32])),
            previous_chain_length: u32_be(&rest[32..36]),
            message_number: u32_be(&rest[36..40]),
        };
        let body_start = bytes.len() - (rest.len() - HEADER_LEN);
        Ok(Self {
            prekey,
            header,
            bytes: bytes.to_vec(),
            body_start,
        })
    }

    /// The encoding to send.
    pub fn encode(&self) -> &[u8] {
        &self.bytes
    }

    /// The X3DH header, on the first messages of a session.
    pub fn prekey(&self) -> Option<&PreKeyHeader> {
        self.prekey.as_ref()
    }

    /// The ratchet header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Everything that is authenticated but not encrypted.
    pub(crate) fn authenticated_prefix(&self) -> &[u8] {
        &self.bytes[..self.body_start]
    }

    pub(crate) fn ciphertext(&self) -> &[u8] {
        &self.bytes[self.body_start..]
    }
}

fn array32(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[..32]);
    out
}

fn u32_be(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
