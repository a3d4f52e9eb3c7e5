//! The driven ports: what the use cases need from the outside world. Each states its contract.

use std::future::Future;

use peerchat_pki::Username;

use crate::domain::{Ack, Envelope, IdentityKey};

/// A peer to deliver to: who it is (username and the identity key the lookup or the pinned
/// contact gave) and where it may listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The contact's username.
    pub username: Username,
    /// The contact's identity key; the connection must authenticate with exactly this key.
    pub identity_key: IdentityKey,
    /// Multiaddrs to try (already-open connections are used first).
    pub addresses: Vec<String>,
}

/// Why an envelope was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No address worked (nothing listens, the network failed, or no address was given).
    #[error("the peer is unreachable: {0}")]
    Unreachable(String),
    /// Someone answered, but not the expected peer (another key or another username).
    #[error("the peer at that address is not the expected contact")]
    WrongPeer,
    /// The peer refused the connection (for example our certificate) or closed it.
    #[error("the peer refused the connection: {0}")]
    Refused(String),
    /// No acknowledgement in time.
    #[error("the peer did not acknowledge in time")]
    Timeout,
    /// The envelope is larger than peers accept.
    #[error("the envelope is too large")]
    TooLarge,
}

/// The peer-to-peer network, outbound.
pub trait Network: Send + Sync + 'static {
    /// Delivers `envelope` to `to` and returns its acknowledgement. MUST only return an [`Ack`]
    /// that came from a connection authenticated as `to` (its identity key and username, verified
    /// by the CA); an established connection alone is never taken as acceptance.
    fn deliver(
        &self,
        to: &Recipient,
        envelope: Envelope,
    ) -> impl Future<Output = Result<Ack, DeliveryError>> + Send;
}

/// An envelope that arrived from an authenticated peer. Answer through `reply` once it has been
/// handled (stored, or refused); dropping `reply` answers `Rejected(Internal)`.
#[derive(Debug)]
pub struct Inbound {
    /// The sender, as its certificate names it.
    pub from: Username,
    /// The sender's certified identity key.
    pub identity_key: IdentityKey,
    /// The envelope.
    pub envelope: Envelope,
    /// Where the acknowledgement goes.
    pub reply: tokio::sync::oneshot::Sender<Ack>,
}
