use std::collections::VecDeque;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::chain_key::ChainKey;
use super::message_key::MessageKey;
use super::ratchet_key::{RatchetKeyPair, RemoteRatchetKey};
use super::root_key::RootKey;
use super::skipped::SkippedKeys;
use super::{MAX_SKIP, MAX_SKIPPED_KEYS};
use crate::domain::keys::{
    IdentityKey, IdentityKeyPair, OneTimePreKeyPair, PreKeyBundle, PreKeyId, SignedPreKeyPair,
};
use crate::domain::message::{Header, Message, PreKeyHeader};
use crate::domain::x3dh::{self, X3dhError};

/// Version of the serialized session state.
const STATE_VERSION: u8 = 1;
/// How many earlier remote ratchet keys are remembered, to recognise late copies of old messages.
const RECENT_REMOTE_KEYS: usize = 32;

/// Why a session could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// X3DH failed (bad bundle signature, low-order key, unknown prekey).
    #[error(transparent)]
    X3dh(#[from] X3dhError),
    /// A session is only created from a message that carries an X3DH header.
    #[error("the message does not start a session")]
    NotAnInitialMessage,
    /// The first message did not decrypt, so no session was created.
    #[error("the initial message did not decrypt: {0}")]
    Decrypt(#[from] DecryptError),
    /// Stored session bytes are corrupt or of an unknown version.
    #[error("the stored session is unreadable")]
    Corrupt,
}

/// Why a message could not be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    /// The sending chain has used all 2^32 message numbers (a new DH step resets it).
    #[error("the sending chain is exhausted; wait for a reply")]
    ChainExhausted,
    /// The plaintext is too long for AES-GCM.
    #[error("the plaintext is too long")]
    TooLong,
}

/// Why a message was refused. A refused message never changes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The message was already decrypted (a replay), or is so late that its key was forgotten.
    #[error("the message was already received, or its key has been discarded")]
    Duplicate,
    /// The message would make the receiver skip more than [`MAX_SKIP`] keys.
    #[error("the message is too far ahead of the conversation")]
    TooFarAhead,
    /// Authentication failed: the message was altered, or was not encrypted for this session.
    #[error("the message failed authentication")]
    Tampered,
    /// The sender's ratchet key is of low order.
    #[error("the message's ratchet key is invalid")]
    InvalidRatchetKey,
    /// The message starts another session (a different X3DH exchange or sender identity).
    #[error("the message belongs to another session")]
    WrongSession,
}

/// Result of accepting an initial message: the new session, the first plaintext, and the one-time
/// prekey that was consumed (delete it so it can never be used again).
#[derive(Debug)]
pub struct Responded {
    /// The responder's new session.
    pub session: Session,
    /// The plaintext of the initial message.
    pub plaintext: Vec<u8>,
    /// The one-time prekey the initiator used, if any.
    pub consumed_one_time_prekey: Option<PreKeyId>,
}

/// A Double Ratchet session with one peer.
///
/// Every decryption is computed first and committed only when the message authenticated, so a
/// tampered, replayed or misdirected message leaves the state exactly as it was.
#[derive(Serialize, Deserialize)]
pub struct Session {
    version: u8,
    local_identity: IdentityKey,
    remote_identity: IdentityKey,
    initiator: bool,
    /// The X3DH ephemeral key: identifies which initial messages belong to this session.
    base_key: [u8; 32],
    root_key: RootKey,
    our_ratchet: RatchetKeyPair,
    sending: Option<ChainKey>,
    their_ratchet: Option<RemoteRatchetKey>,
    receiving: Option<ChainKey>,
    previous_chain_length: u32,
    skipped: SkippedKeys,
    recent_remote_keys: VecDeque<RemoteRatchetKey>,
    /// Sent with every message until the peer's first reply proves it has the session.
    pending_prekey: Option<PreKeyHeader>,
}

impl Session {
    /// Starts a session with the owner of `bundle` (X3DH as initiator). The bundle's signed prekey
    /// signature is checked first. The caller should also check that `bundle.identity` is the key
    /// it expects for that contact.
    pub fn initiate<R: RngCore + CryptoRng>(
        identity: &IdentityKeyPair,
        bundle: &PreKeyBundle,
        rng: &mut R,
    ) -> Result<Self, SessionError> {
        let init = x3dh::initiate(identity, bundle, rng)?;
        let our_ratchet = RatchetKeyPair::generate(rng);
        let their_ratchet = RemoteRatchetKey::from(&init.their_signed_prekey);
        let dh = our_ratchet
            .dh(&their_ratchet)
            .ok_or(X3dhError::NonContributory)?;
        let (root_key, sending) = RootKey::new(*init.secret).advance(&dh);
        Ok(Self {
            version: STATE_VERSION,
            local_identity: *identity.public(),
            remote_identity: bundle.identity,
            initiator: true,
            base_key: init.header.ephemeral.to_bytes(),
            root_key,
            our_ratchet,
            sending: Some(sending),
            their_ratchet: Some(their_ratchet),
            receiving: None,
            previous_chain_length: 0,
            skipped: SkippedKeys::default(),
            recent_remote_keys: VecDeque::new(),
            pending_prekey: Some(init.header),
        })
    }

    /// Accepts an initial message (X3DH as responder) and decrypts it. The caller looks up the
    /// signed and one-time prekeys named by `message.prekey()`; if the message does not decrypt,
    /// no session is created.
    pub fn respond<R: RngCore + CryptoRng>(
        identity: &IdentityKeyPair,
        signed_prekey: &SignedPreKeyPair,
        one_time_prekey: Option<&OneTimePreKeyPair>,
        message: &Message,
        rng: &mut R,
    ) -> Result<Responded, SessionError> {
        let header = message.prekey().ok_or(SessionError::NotAnInitialMessage)?;
        let secret = x3dh::respond(identity, signed_prekey, one_time_prekey, header)?;
        let mut session = Self {
            version: STATE_VERSION,
            local_identity: *identity.public(),
            remote_identity: header.identity,
            initiator: false,
            base_key: header.ephemeral.to_bytes(),
            root_key: RootKey::new(*secret),
            our_ratchet: RatchetKeyPair::from_secret(signed_prekey.secret().clone()),
            sending: None,
            their_ratchet: None,
            receiving: None,
            previous_chain_length: 0,
            skipped: SkippedKeys::default(),
            recent_remote_keys: VecDeque::new(),
            pending_prekey: None,
        };
        let plaintext = session.decrypt(message, rng)?;
        Ok(Responded {
            session,
            plaintext,
            consumed_one_time_prekey: header.one_time_prekey_id,
        })
    }

    /// The peer's identity key, as used in X3DH.
    pub fn remote_identity(&self) -> &IdentityKey {
        &self.remote_identity
    }

    /// Whether `message`'s X3DH header (if any) is the one this session was built from, i.e.
    /// whether the message should be decrypted by this session rather than start a new one.
    pub fn belongs_to(&self, message: &Message) -> bool {
        match message.prekey() {
            None => true,
            Some(p) => {
                p.ephemeral.to_bytes() == self.base_key && p.identity == self.remote_identity
            }
        }
    }

    /// Encrypts `plaintext` as the next message of the sending chain.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Message, EncryptError> {
        let chain = self.sending.as_ref().ok_or(EncryptError::ChainExhausted)?;
        let key = chain.message_key();
        let next = chain.next().ok_or(EncryptError::ChainExhausted)?;
        let header = Header {
            ratchet_key: self.our_ratchet.public_key(),
            previous_chain_length: self.previous_chain_length,
            message_number: key.index(),
        };
        let ad = self.associated_data();
        let message = Message::seal(self.pending_prekey, header, |prefix| {
            key.encrypt(plaintext, &concat(&ad, prefix))
                .map_err(|_| EncryptError::TooLong)
        })?;
        self.sending = Some(next);
        Ok(message)
    }

    /// Decrypts `message`, advancing the ratchet only if it authenticates. `rng` supplies the new
    /// ratchet key when the message starts a new DH step.
    pub fn decrypt<R: RngCore + CryptoRng>(
        &mut self,
        message: &Message,
        rng: &mut R,
    ) -> Result<Vec<u8>, DecryptError> {
        if !self.belongs_to(message) {
            return Err(DecryptError::WrongSession);
        }
        let header = message.header();
        let theirs = RemoteRatchetKey::from(&header.ratchet_key);
        let aad = concat(&self.associated_data(), message.authenticated_prefix());
        let open = |key: &MessageKey| {
            key.decrypt(message.ciphertext(), &aad)
                .map_err(|_| DecryptError::Tampered)
        };

        // 1. A key stored for a message that was skipped earlier.
        if let Some(at) = self.skipped.find(&theirs, header.message_number) {
            let key = self.skipped.get(at).ok_or(DecryptError::Duplicate)?;
            let plaintext = open(key)?;
            self.skipped.remove(at);
            self.pending_prekey = None;
            return Ok(plaintext);
        }

        // 2. The current receiving chain.
        if self.their_ratchet == Some(theirs)
            && let Some(chain) = &self.receiving
        {
            if header.message_number < chain.index() {
                return Err(DecryptError::Duplicate);
            }
            if header.message_number - chain.index() > MAX_SKIP {
                return Err(DecryptError::TooFarAhead);
            }
            let (skipped, key, next) = chain
                .advance_to(header.message_number)
                .ok_or(DecryptError::TooFarAhead)?;
            let plaintext = open(&key)?;
            self.receiving = Some(next);
            self.skipped.extend(theirs, skipped);
            self.pending_prekey = None;
            return Ok(plaintext);
        }
        if self.recent_remote_keys.contains(&theirs) {
            // A chain we have moved past; its unused keys would have been in `skipped`.
            return Err(DecryptError::Duplicate);
        }

        // 3. A new DH ratchet step: finish the current receiving chain up to PN, derive the new one.
        let finished = match (&self.receiving, self.their_ratchet) {
            (Some(chain), Some(old)) if header.previous_chain_length > chain.index() => {
                if header.previous_chain_length - chain.index() > MAX_SKIP {
                    return Err(DecryptError::TooFarAhead);
                }
                let (mut keys, last, _) = chain
                    .advance_to(header.previous_chain_length - 1)
                    .ok_or(DecryptError::TooFarAhead)?;
                keys.push(last);
                Some((old, keys))
            }
            _ => None,
        };
        if header.message_number > MAX_SKIP {
            return Err(DecryptError::TooFarAhead);
        }
        let dh = self
            .our_ratchet
            .dh(&theirs)
            .ok_or(DecryptError::InvalidRatchetKey)?;
        let (root_key, receiving) = self.root_key.advance(&dh);
        let (skipped, key, next) = receiving
            .advance_to(header.message_number)
            .ok_or(DecryptError::TooFarAhead)?;
        let plaintext = open(&key)?;

        // Authentic: commit, and turn the sending side of the ratchet.
        let our_ratchet = RatchetKeyPair::generate(rng);
        let dh = our_ratchet
            .dh(&theirs)
            .ok_or(DecryptError::InvalidRatchetKey)?;
        let (root_key, sending) = root_key.advance(&dh);
        self.previous_chain_length = self.sending.as_ref().map_or(0, ChainKey::index);
        self.sending = Some(sending);
        self.our_ratchet = our_ratchet;
        self.root_key = root_key;
        if let Some((old, keys)) = finished {
            self.skipped.extend(old, keys);
        }
        if let Some(old) = self.their_ratchet.replace(theirs) {
            if self.recent_remote_keys.len() == RECENT_REMOTE_KEYS {
                self.recent_remote_keys.pop_front();
            }
            self.recent_remote_keys.push_back(old);
        }
        self.receiving = Some(next);
        self.skipped.extend(theirs, skipped);
        self.pending_prekey = None;
        Ok(plaintext)
    }

    /// The serialized state, for storage. It contains secrets: store it as such.
    #[allow(clippy::expect_used)]
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        // Every field is plain data (byte arrays, integers, sequences of known length), which
        // postcard always serializes into a Vec. Our ratchet public key follows, so that
        // restoring the session needs no scalar multiplication (sessions are read for every
        // message; a group send reads one per member).
        let mut bytes = postcard::to_stdvec(self).expect("session state serializes");
        bytes.extend_from_slice(self.our_ratchet.public_key().as_bytes());
        Zeroizing::new(bytes)
    }

    /// Restores a session saved with [`Session::to_bytes`] (also one saved before the public key
    /// followed the state).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SessionError> {
        let (session, rest): (Self, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|_| SessionError::Corrupt)?;
        if session.version != STATE_VERSION || session.skipped.len() > MAX_SKIPPED_KEYS {
            return Err(SessionError::Corrupt);
        }
        match rest.len() {
            0 => {}
            32 => {
                let mut public = [0u8; 32];
                public.copy_from_slice(rest);
                session.our_ratchet.restore_public(public);
            }
            _ => return Err(SessionError::Corrupt),
        }
        Ok(session)
    }

    fn associated_data(&self) -> [u8; 64] {
        if self.initiator {
            x3dh::associated_data(&self.local_identity, &self.remote_identity)
        } else {
            x3dh::associated_data(&self.remote_identity, &self.local_identity)
        }
    }
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote_identity", &self.remote_identity)
            .field("initiator", &self.initiator)
            .field("sending_index", &self.sending.as_ref().map(ChainKey::index))
            .field(
                "receiving_index",
                &self.receiving.as_ref().map(ChainKey::index),
            )
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}
