//! The network port, in three parts: [`Messages`] (an envelope and its acknowledgement),
//! [`Streams`] (an authenticated byte stream to a peer, for bulk data) and [`Reachability`] (our
//! own addresses and each peer's connection). The inbound side is the [`Inbound`] port, which
//! the node implements and the network adapter calls.

use std::future::Future;
use std::pin::Pin;

use futures::{AsyncRead, AsyncReadExt};
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

/// Messages: one envelope to a peer, answered by its acknowledgement (request-response).
pub trait Messages: Send + Sync + 'static {
    /// Delivers `envelope` to `to` and returns its acknowledgement. MUST only return an [`Ack`]
    /// that came from a connection authenticated as `to` (its identity key and username, verified
    /// by the CA); an established connection alone is never taken as acceptance.
    fn deliver(
        &self,
        to: &Recipient,
        envelope: Envelope,
    ) -> impl Future<Output = Result<Ack, DeliveryError>> + Send;
}

/// Why a stream could not be opened.
pub type StreamError = DeliveryError;

/// Anything a stream can be: bytes both ways.
pub trait Duplex: futures::AsyncRead + futures::AsyncWrite + Send + Unpin {}
impl<T: futures::AsyncRead + futures::AsyncWrite + Send + Unpin> Duplex for T {}

/// A bidirectional byte stream with a peer whose certificate the transport verified.
pub struct PeerStream {
    /// Who is at the other end.
    pub peer: AuthenticatedPeer,
    /// The stream's protocol (for example `/peerchat/file/1`).
    pub protocol: String,
    /// The bytes.
    pub io: Pin<Box<dyn Duplex>>,
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream")
            .field("peer", &self.peer.username)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Streams: an authenticated bidirectional byte stream to a peer, for data too large for one
/// envelope (file chunks).
pub trait Streams: Send + Sync + 'static {
    /// Opens a stream of `protocol` to `to`. MUST only return a stream on a connection
    /// authenticated as `to` (its identity key and username, verified by the CA).
    fn open_stream(
        &self,
        to: &Recipient,
        protocol: &'static str,
    ) -> impl Future<Output = Result<PeerStream, StreamError>> + Send;
}

/// How a connection with a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Straight between the two hosts.
    Direct,
    /// Through a relay.
    Relayed,
}

/// A change the network saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReachabilityEvent {
    /// The addresses at which we can be reached changed (listen addresses now; relay addresses
    /// later).
    OwnAddresses(Vec<String>),
    /// A peer's first connection opened (or its best path changed).
    PeerOnline {
        /// Who.
        peer: Username,
        /// Over which path.
        path: Path,
        /// The peer's address on that connection.
        remote_address: String,
    },
    /// A peer's last connection closed.
    PeerOffline {
        /// Who.
        peer: Username,
    },
}

/// How we are connected with a peer right now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerConnection {
    /// Direct or through a relay.
    pub path: Path,
    /// The peer's address on that connection (a multiaddr).
    pub remote_address: String,
}

/// Reachability: our own addresses and each peer's connection, as they change.
pub trait Reachability: Send + Sync + 'static {
    /// The addresses to give peers now (empty before the network runs).
    fn own_addresses(&self) -> Vec<String>;
    /// The connection with `peer`, if one is open (the direct one when there are several).
    fn connection(&self, peer: &Username) -> Option<PeerConnection>;
    /// The changes from now on. A subscriber that falls far behind misses the oldest.
    fn reachability(&self) -> tokio::sync::broadcast::Receiver<ReachabilityEvent>;
}

/// The whole network port.
pub trait Network: Messages + Streams + Reachability {}
impl<T: Messages + Streams + Reachability> Network for T {}

/// A peer whose connection authenticated it: the username and identity key its CA-issued
/// certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedPeer {
    /// The username.
    pub username: Username,
    /// The certified identity key.
    pub identity_key: IdentityKey,
}

/// The inbound side of the network: what the node does with what authenticated peers send. The
/// node implements it; the network adapter calls it.
pub trait Inbound: Send + Sync + 'static {
    /// Handles an envelope and returns the acknowledgement for the sender: `Stored` only once
    /// it is durable.
    fn envelope(
        &self,
        from: AuthenticatedPeer,
        envelope: Envelope,
    ) -> impl Future<Output = Ack> + Send;
    /// Handles a stream a peer opened (dropping it closes it).
    fn stream(&self, stream: PeerStream) -> impl Future<Output = ()> + Send;
}

/// An [`Inbound`] made of a function for envelopes (streams are closed at once): for tools and
/// tests.
#[derive(Debug, Clone)]
pub struct EnvelopeFn<F>(pub F);

impl<F, Fut> Inbound for EnvelopeFn<F>
where
    F: Fn(AuthenticatedPeer, Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Ack> + Send,
{
    fn envelope(
        &self,
        from: AuthenticatedPeer,
        envelope: Envelope,
    ) -> impl Future<Output = Ack> + Send {
        (self.0)(from, envelope)
    }

    async fn stream(&self, _stream: PeerStream) {}
}

/// Reads one frame, a 4-byte big-endian length and that many bytes, from a peer's stream. A
/// length over `max` fails before anything is read. The buffer grows as bytes arrive rather than
/// from the announced length, so a peer that announces a large frame and sends little costs
/// only what it sent.
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut buf = Vec::new();
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}
