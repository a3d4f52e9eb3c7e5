//! The pure core of the node. Time and randomness are parameters; nothing here performs IO.

pub mod address;
pub mod amend;
pub mod backup;
pub mod content;
pub mod envelope;
pub mod file;
pub mod group;
pub mod ids;
pub mod kdf;
pub mod keys;
pub mod message;
pub mod person;
pub mod ratchet;
pub mod record;
pub mod safety_number;
pub mod search;
pub mod status;
pub mod x3dh;

pub use address::{Address, BadAddress, ConversationId, DeviceId};
pub use amend::{AmendRefused, Amendment};
pub use content::{Content, ContentError, GroupRef};
pub use envelope::{Ack, Envelope, EnvelopeError, RejectReason};
pub use file::{FileError, FileOffer};
pub use group::{Change, Group, GroupError, GroupState, SignedChange};
pub use ids::{FileId, GroupId, MessageId};
pub use keys::{
    IdentityKey, IdentityKeyPair, InvalidKey, OneTimePreKey, OneTimePreKeyPair, PreKeyBundle,
    PreKeyId, SignedPreKey, SignedPreKeyPair,
};
pub use message::{Message, MessageDecodeError, PreKeyHeader};
pub use person::{Person, Profile, ProfileError, Standing};
pub use ratchet::{DecryptError, EncryptError, Responded, Session, SessionError};
pub use record::{Contact, Direction, StoredMessage, group_status};
pub use safety_number::SafetyNumber;
pub use status::MessageStatus;
pub use x3dh::X3dhError;
