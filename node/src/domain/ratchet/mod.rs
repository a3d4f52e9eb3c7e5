//! The Double Ratchet (Signal specification) over an X3DH shared secret.
//!
//! KDF_RK is HKDF-SHA256 (salt = root key), KDF_CK is HMAC-SHA256 (`0x01` → message key,
//! `0x02` → next chain key), and message keys expand (HKDF) to an AES-256-GCM key and nonce. The
//! associated data is `IK_A ‖ IK_B ‖` the message's unencrypted prefix.

mod chain_key;
mod message_key;
mod ratchet_key;
mod root_key;
mod session;
mod skipped;

pub use session::{DecryptError, EncryptError, Responded, Session, SessionError};

/// How many message keys one message may make the receiver skip (and store) in one chain. A
/// message further ahead is refused with [`DecryptError::TooFarAhead`] and changes nothing.
pub const MAX_SKIP: u32 = 1000;

/// How many skipped message keys a session keeps. Past it the oldest are forgotten, and their
/// messages, should they still arrive, are refused as [`DecryptError::Duplicate`].
pub const MAX_SKIPPED_KEYS: usize = 2000;
