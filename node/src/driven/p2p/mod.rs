//! The libp2p network adapter: a swarm on TCP + yamux whose security layer is our mutual TLS
//! ([`upgrade`]), speaking `/peerchat/msg/1` ([`codec`]) plus identify and ping.
//!
//! [`start`] spawns the swarm on its own task and returns a [`P2pNetwork`] handle: the
//! [`Messages`], [`Streams`] and [`Reachability`] ports. What authenticated peers send goes to
//! the [`Inbound`] port given to [`start`] ([`inbound`] feeds it).

pub mod codec;
mod inbound;
mod punch;
pub use peerchat_transport::{registry, upgrade};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, connection_limits, identify, mdns, ping, relay};
use peerchat_pki::TrustStore;
use peerchat_pki::Username;
use peerchat_pki::tls::Credentials;
use tokio::sync::{broadcast, mpsc, oneshot};
use zeroize::Zeroize;

use self::codec::EnvelopeCodec;
use self::inbound::Received;
use self::punch::{HolePunch, PortChoice, PortPolicy};
use self::registry::PeerRegistry;
use self::upgrade::{MtlsUpgrade, peer_id_of};
use crate::domain::{Ack, Envelope, IdentityKey, RejectReason};
use crate::ports::{
    AuthenticatedPeer, DeliveryError, Inbound, Messages, Path, PeerConnection, PeerStream,
    Reachability, ReachabilityEvent, Recipient, StreamError, Streams,
};

/// Settings of the network adapter.
#[derive(Clone)]
pub struct P2pConfig {
    /// The identity key: libp2p identity, certificate key and X3DH identity at once.
    pub identity: SigningKey,
    /// Our CA-issued certificate with that key.
    pub credentials: Arc<Credentials>,
    /// The CA and the CRL (shared, so a CRL refresh reaches the next handshake).
    pub trust: Arc<TrustStore>,
    /// Where to listen, e.g. `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Largest envelope sent or accepted.
    pub max_envelope_bytes: usize,
    /// How long to wait for an acknowledgement.
    pub request_timeout: Duration,
    /// Inbound envelopes queued for the receiver (and at most as many awaiting its answer); past
    /// that, peers get `Rejected(Busy)` and retry later.
    pub inbound_capacity: usize,
    /// Closes connections idle for this long.
    pub idle_timeout: Duration,
    /// Most connections open at once with one peer (both directions); further ones are closed
    /// after the handshake. Three: a relayed one each way while both dial at once, and the
    /// direct one a hole punch makes beside them.
    pub max_connections_per_peer: u32,
    /// Most envelopes being received or sent at once on one connection; further inbound
    /// streams are reset (the sender retries), so one peer holds at most
    /// `max_connections_per_peer × max_streams_per_connection × max_envelope_bytes` of our memory,
    /// and only as much as it really sent.
    pub max_streams_per_connection: usize,
    /// Most connections from all peers together (inbound, established).
    pub max_incoming_connections: u32,
    /// Most inbound connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Where our address changes and peers' connections and disconnections are published.
    pub reachability: broadcast::Sender<ReachabilityEvent>,
    /// The stream protocols peers may open to us (each handed to [`Inbound::stream`]).
    pub stream_protocols: Vec<&'static str>,
    /// Whom to let in while no CRL is installed (revocation cannot be checked then).
    pub without_crl: WithoutCrl,
    /// Peers never let in, CRL or not (the daemon: users its user blocked); their connections
    /// are closed after the handshake, and [`P2pNetwork::drop_refused`] closes open ones.
    pub refused: Option<RefusedCheck>,
    /// Dial loopback and link-local addresses even where this node does not listen on such a
    /// network: for a tool whose addresses the user typed (`peerchat probe`), never for
    /// addresses other nodes announced.
    pub dial_any_local: bool,
    /// The relay to reserve a slot on at start (it can also be given later,
    /// [`P2pNetwork::use_relay`]).
    pub relay: Option<RelayServer>,
    /// Find peers on the local network with mDNS (announces our `PeerId` there).
    pub mdns: bool,
}

/// A circuit relay: its `PeerId` and addresses (`GET /v1/relay` of the rendezvous).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayServer {
    /// The relay's `PeerId`: its certificate's key, checked by the handshake.
    pub peer_id: PeerId,
    /// Where it listens.
    pub addresses: Vec<Multiaddr>,
}

/// The policy for peers while the trust store holds no CRL.
#[derive(Clone)]
pub enum WithoutCrl {
    /// Every peer with a certificate of the CA (for tests and tools that install no CRL).
    AdmitAll,
    /// Only peers for whom the function says yes (the daemon: contacts pinned to exactly the
    /// certificate's key); everyone else is disconnected until a CRL is installed.
    OnlyPinned(PinnedCheck),
}

impl std::fmt::Debug for WithoutCrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AdmitAll => "AdmitAll",
            Self::OnlyPinned(_) => "OnlyPinned",
        })
    }
}

/// Whether a user is never to be let in.
pub type RefusedCheck = Arc<dyn Fn(&Username) -> bool + Send + Sync>;

/// Whether a username and Ed25519 key are a pinned contact.
pub type PinnedCheck = Arc<dyn Fn(&Username, &ed25519_dalek::VerifyingKey) -> bool + Send + Sync>;

impl std::fmt::Debug for P2pConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2pConfig")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl P2pConfig {
    /// Defaults around the given identity.
    pub fn new(
        identity: SigningKey,
        credentials: Arc<Credentials>,
        trust: Arc<TrustStore>,
        listen: Vec<Multiaddr>,
    ) -> Self {
        Self {
            identity,
            credentials,
            trust,
            listen,
            max_envelope_bytes: codec::DEFAULT_MAX_ENVELOPE_BYTES,
            request_timeout: Duration::from_secs(10),
            inbound_capacity: 1024,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections_per_peer: 3,
            max_streams_per_connection: 64,
            max_incoming_connections: 256,
            max_pending_incoming: 64,
            reachability: broadcast::channel(256).0,
            stream_protocols: Vec::new(),
            without_crl: WithoutCrl::AdmitAll,
            refused: None,
            dial_any_local: false,
            relay: None,
            mdns: false,
        }
    }
}

/// How long a connection with no message stays open: while a conversation goes on, messages keep
/// its connection (direct or relayed, with its hole punch) open, so each one is not a new dial.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The non-loopback addresses of `listening`, or all of them when there are no others.
fn reachable(listening: &[Multiaddr]) -> Vec<Multiaddr> {
    let loopback = |a: &Multiaddr| {
        a.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_loopback(),
            Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        })
    };
    let outside: Vec<Multiaddr> = listening.iter().filter(|a| !loopback(a)).cloned().collect();
    if outside.is_empty() {
        listening.to_vec()
    } else {
        outside
    }
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] peerchat_pki::tls::TlsError),
    /// The identity key was refused by libp2p.
    #[error("identity key: {0}")]
    Identity(String),
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The transport could not be built.
    #[error("transport: {0}")]
    Transport(String),
    /// Our own certificate is unreadable, or certifies another key than the identity key.
    #[error("our certificate does not certify this identity key: {0}")]
    Certificate(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    messages: request_response::Behaviour<EnvelopeCodec>,
    streams: libp2p_stream::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    relay: relay::client::Behaviour,
    hole_punch: HolePunch,
    autonat: autonat::v2::client::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

enum Command {
    Deliver(Outgoing),
    /// Dials the peer unless a connection is open or being made; answers once one is open.
    Connect {
        peer_id: PeerId,
        addresses: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), DeliveryError>>,
    },
    DropRevoked,
    /// Closes the connections of peers [`P2pConfig::refused`] refuses now.
    DropRefused,
    /// Reserve a slot on this relay (replacing any other).
    UseRelay(RelayServer),
}

/// One envelope on its way to a peer.
struct Outgoing {
    peer_id: PeerId,
    username: Username,
    addresses: Vec<Multiaddr>,
    envelope: Envelope,
    reply: oneshot::Sender<Result<Ack, DeliveryError>>,
}

/// Handle to the running swarm: the outbound [`Network`] port. Cheap to clone; the swarm stops
/// when every handle is dropped.
#[derive(Clone)]
pub struct P2pNetwork {
    commands: mpsc::Sender<Command>,
    registry: Arc<PeerRegistry>,
    admission: Admission,
    local_peer_id: PeerId,
    listen_addrs: Arc<std::sync::RwLock<Vec<Multiaddr>>>,
    max_envelope_bytes: usize,
    peer_ids: Arc<std::sync::Mutex<HashMap<[u8; 32], PeerId>>>,
    streams: libp2p_stream::Control,
    reachability: broadcast::Sender<ReachabilityEvent>,
    connections: Connections,
    dial_any_local: bool,
    /// Addresses of peers found by mDNS on the local network.
    discovered: Discovered,
    /// The relay we hold a reservation on now, if any.
    reservation: tokio::sync::watch::Receiver<Option<PeerId>>,
    stop: tokio_util::sync::CancellationToken,
}

/// Peers found on the local network, with their addresses.
type Discovered = Arc<std::sync::Mutex<HashMap<PeerId, Vec<Multiaddr>>>>;

/// The open connection with each peer, by username, kept by the driver.
type Connections = Arc<std::sync::Mutex<HashMap<Username, PeerConnection>>>;

impl std::fmt::Debug for P2pNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2pNetwork")
            .field("peer_id", &self.local_peer_id)
            .field("listen", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

impl P2pNetwork {
    /// The `PeerId` of a contact's key (decompressing the key costs a square root, so it is
    /// remembered; at most a few thousand contacts).
    fn peer_id(&self, key: &IdentityKey) -> Result<PeerId, DeliveryError> {
        let bytes = key.to_bytes();
        let mut cache = self.peer_ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = cache.get(&bytes) {
            return Ok(*id);
        }
        let id = peer_id_of(&bytes).ok_or(DeliveryError::WrongPeer)?;
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(bytes, id);
        Ok(id)
    }

    /// Our `PeerId`.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The addresses we listen on (with the ports the OS chose), each ending in `/p2p/<our id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The addresses to give peers: loopback ones only when there is nothing else (a peer's
    /// 127.0.0.1 is itself, unless everything runs on one host).
    pub fn reachable_addrs(&self) -> Vec<Multiaddr> {
        reachable(&self.listen_addrs())
    }

    /// The `PeerId` and dialable addresses of `to`.
    fn target(&self, to: &Recipient) -> Result<(PeerId, Vec<Multiaddr>), DeliveryError> {
        let peer_id = self.peer_id(&to.identity_key)?;
        let mut addresses = if self.dial_any_local {
            to.addresses
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
                .filter_map(|a| with_peer_id(a, peer_id))
                .take(MAX_DIAL_ADDRESSES)
                .collect()
        } else {
            dialable(&to.addresses, peer_id, &self.listen_addrs())
        };
        // What mDNS saw on our own network comes first: it was there a moment ago.
        if let Some(seen) = self
            .discovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer_id)
        {
            let local: Vec<Multiaddr> = seen
                .iter()
                .filter_map(|a| with_peer_id(a.clone(), peer_id))
                .filter(|a| !addresses.contains(a))
                .take(MAX_DIAL_ADDRESSES)
                .collect();
            addresses.splice(0..0, local);
        }
        Ok((peer_id, addresses))
    }

    /// The verified identities of connected peers.
    pub fn registry(&self) -> &PeerRegistry {
        &self.registry
    }

    /// Stops the swarm (closing every connection) and hands nothing more to the inbound port;
    /// what it was handling is dropped unacknowledged, so the peer sends it again.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Closes connections to peers that the current CRL revokes (call after installing a CRL;
    /// their next connection then fails at the handshake).
    pub async fn drop_revoked(&self) {
        let _ = self.commands.send(Command::DropRevoked).await;
    }

    /// Closes connections to peers the configuration refuses now (call after the user blocks
    /// someone; their next connection is closed after the handshake).
    pub async fn drop_refused(&self) {
        let _ = self.commands.send(Command::DropRefused).await;
    }

    /// Reserves a slot on `relay` and announces the relayed address beside the direct ones; kept
    /// up while the network runs (renewed, and made again after the relay was unreachable).
    pub async fn use_relay(&self, relay: RelayServer) {
        let _ = self.commands.send(Command::UseRelay(relay)).await;
    }

    /// The relay we hold a reservation on, changing as reservations are accepted and lost.
    pub fn relay_reservation(&self) -> tokio::sync::watch::Receiver<Option<PeerId>> {
        self.reservation.clone()
    }
}

impl Messages for P2pNetwork {
    #[tracing::instrument(name = "p2p.deliver", skip_all, fields(peer = %to.username, id = %envelope.id))]
    async fn deliver(&self, to: &Recipient, mut envelope: Envelope) -> Result<Ack, DeliveryError> {
        // The receiver's spans become children of this one.
        if let Some(trace) = peerchat_telemetry::traceparent() {
            envelope.trace = Some(trace);
        }
        if envelope.encoded_len_bound() > self.max_envelope_bytes {
            return Err(DeliveryError::TooLarge);
        }
        let (peer_id, addresses) = self.target(to)?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Deliver(Outgoing {
                peer_id,
                username: to.username.clone(),
                addresses,
                envelope,
                reply,
            }))
            .await
            .map_err(|_| DeliveryError::Unreachable("the network has stopped".into()))?;
        answer
            .await
            .map_err(|_| DeliveryError::Unreachable("the network has stopped".into()))?
    }
}

impl Streams for P2pNetwork {
    #[tracing::instrument(name = "p2p.open_stream", skip_all, fields(peer = %to.username, protocol))]
    async fn open_stream(
        &self,
        to: &Recipient,
        protocol: &'static str,
    ) -> Result<PeerStream, StreamError> {
        let stream_protocol = libp2p::StreamProtocol::new(protocol);
        let (peer_id, addresses) = self.target(to)?;
        let (reply, connected) = oneshot::channel();
        let stopped = || DeliveryError::Unreachable("the network has stopped".into());
        self.commands
            .send(Command::Connect {
                peer_id,
                addresses,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        connected.await.map_err(|_| stopped())??;
        // The PeerId pins the key; the CA-certified name must be the one asked for too.
        let peer = self
            .registry
            .get(&peer_id)
            .filter(|p| p.username == to.username && self.admission.admits(p))
            .ok_or(DeliveryError::WrongPeer)?;
        // A stream the peer's side dropped before taking it (see
        // [`inbound::STREAM_ACCEPTED`]) is opened again, a few times.
        let mut attempt = 0;
        let io = loop {
            let mut io = self
                .streams
                .clone()
                .open_stream(peer_id, stream_protocol.clone())
                .await
                .map_err(|e| match e {
                    libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => {
                        DeliveryError::Refused(format!("the peer does not speak {protocol}"))
                    }
                    other => DeliveryError::Refused(other.to_string()),
                })?;
            let mut accepted = [0u8; 1];
            match futures::AsyncReadExt::read_exact(&mut io, &mut accepted).await {
                Ok(()) if accepted[0] == inbound::STREAM_ACCEPTED => break io,
                Ok(()) => {
                    return Err(DeliveryError::Refused(format!(
                        "the peer answered {protocol} with something else"
                    )));
                }
                Err(_) if attempt < STREAM_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(e) => {
                    return Err(DeliveryError::Refused(format!(
                        "the peer did not take the stream: {e}"
                    )));
                }
            }
        };
        Ok(PeerStream {
            peer: AuthenticatedPeer {
                username: peer.username,
                identity_key: IdentityKey::from_verifying_key(peer.identity_key),
            },
            protocol: protocol.to_owned(),
            io: Box::pin(io),
        })
    }
}

/// How many more times a stream the peer dropped before taking it is opened.
const STREAM_ATTEMPTS: u64 = 5;

impl Reachability for P2pNetwork {
    fn own_addresses(&self) -> Vec<String> {
        self.reachable_addrs()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn reachability(&self) -> broadcast::Receiver<ReachabilityEvent> {
        self.reachability.subscribe()
    }

    fn connection(&self, peer: &Username) -> Option<PeerConnection> {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
    }
}

/// Who may talk to us: with a CRL installed, everyone it does not revoke (the handshake checked
/// it too, but a handshake that finished just before a CRL was installed did not); without one,
/// whom the policy admits. Never a refused peer.
#[derive(Clone)]
struct Admission {
    trust: Arc<TrustStore>,
    without_crl: WithoutCrl,
    refused: Option<RefusedCheck>,
}

impl Admission {
    fn refuses(&self, username: &Username) -> bool {
        self.refused
            .as_ref()
            .is_some_and(|refused| refused(username))
    }

    fn admits(&self, peer: &peerchat_pki::VerifiedPeer) -> bool {
        if self.refuses(&peer.username) {
            return false;
        }
        if let Some(crl) = self.trust.crl() {
            return !crl.is_revoked(&peer.serial);
        }
        match &self.without_crl {
            WithoutCrl::AdmitAll => true,
            WithoutCrl::OnlyPinned(pinned) => pinned(&peer.username, &peer.identity_key),
        }
    }
}

/// Most announced addresses of one peer that are dialled.
pub const MAX_DIAL_ADDRESSES: usize = 8;

/// The addresses of a peer worth dialling, out of what it (or someone for it) announced, which
/// are claims: each gets the peer's `/p2p/<id>` (so the handshake must be with its key),
/// loopback and link-local addresses only when we listen on such a network ourselves (else they
/// would reach a service of our own host or link), and at most [`MAX_DIAL_ADDRESSES`] of them.
pub fn dialable(announced: &[String], peer_id: PeerId, own: &[Multiaddr]) -> Vec<Multiaddr> {
    let we_listen_on = |scope: Scope| own.iter().any(|a| scope_of(a) == Some(scope));
    announced
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| match scope_of(a) {
            Some(scope @ (Scope::Loopback | Scope::LinkLocal)) => we_listen_on(scope),
            Some(Scope::Unspecified) => false,
            _ => true,
        })
        .filter_map(|a| with_peer_id(a, peer_id))
        .take(MAX_DIAL_ADDRESSES)
        .collect()
}

/// Where an IP address reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Loopback,
    LinkLocal,
    Unspecified,
    Other,
}

/// The scope of `addr`'s IP address (`None` for a name or no IP).
fn scope_of(addr: &Multiaddr) -> Option<Scope> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) if ip.is_loopback() => Some(Scope::Loopback),
        Protocol::Ip4(ip) if ip.is_link_local() => Some(Scope::LinkLocal),
        Protocol::Ip4(ip) if ip.is_unspecified() => Some(Scope::Unspecified),
        Protocol::Ip6(ip) if ip.is_loopback() => Some(Scope::Loopback),
        Protocol::Ip6(ip) if ip.is_unicast_link_local() => Some(Scope::LinkLocal),
        Protocol::Ip6(ip) if ip.is_unspecified() => Some(Scope::Unspecified),
        Protocol::Ip4(_) | Protocol::Ip6(_) => Some(Scope::Other),
        _ => None,
    })
}

/// `addr` ending in `/p2p/<peer_id>`; `None` if it names another peer.
fn with_peer_id(mut addr: Multiaddr, peer_id: PeerId) -> Option<Multiaddr> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) if id == peer_id => Some(addr),
        Some(Protocol::P2p(_)) => {
            // An address that names another peer: dial it anyway, the upgrade reports who answers.
            addr.pop();
            addr.push(Protocol::P2p(peer_id));
            Some(addr)
        }
        _ => {
            addr.push(Protocol::P2p(peer_id));
            Some(addr)
        }
    }
}

/// Starts the swarm, waits until it listens, and returns the handle; what peers send goes to
/// `inbound`. The swarm stops when every handle is dropped.
pub async fn start<I: Inbound>(
    config: P2pConfig,
    inbound: Arc<I>,
) -> Result<P2pNetwork, StartError> {
    // One key for everything: the certificate must carry the libp2p identity key.
    let chain = config.credentials.chain();
    let leaf = chain
        .first()
        .ok_or_else(|| StartError::Certificate("no certificate".into()))?;
    let certified =
        peerchat_pki::certificate_key(leaf).map_err(|e| StartError::Certificate(e.to_string()))?;
    if certified != config.identity.verifying_key() {
        return Err(StartError::Certificate(
            "the certificate holds another key".into(),
        ));
    }
    let mut seed = config.identity.to_bytes();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| StartError::Identity(e.to_string()))?;
    seed.zeroize();
    let registry = Arc::new(PeerRegistry::default());
    let upgrade = MtlsUpgrade::new(
        config.credentials.clone(),
        config.trust.clone(),
        registry.clone(),
    )?;
    let codec = EnvelopeCodec {
        max_envelope_bytes: config.max_envelope_bytes,
    };
    let timeout = config.request_timeout;
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_established_incoming(Some(config.max_incoming_connections))
        .with_max_pending_incoming(Some(config.max_pending_incoming));
    let streams = config.max_streams_per_connection;
    let mut yamux = libp2p::yamux::Config::default();
    // Room for identify and ping beside the envelopes; yamux resets streams past it.
    yamux.set_max_num_streams(streams + 8);
    let local_peer_id = keypair.public().to_peer_id();
    let policy = PortPolicy::default();
    // TCP, and circuits through a relay; our mutual TLS on both, end to end between the two
    // peers on a relayed connection (the relay copies ciphertext).
    let (relay_transport, relay_client) = relay::client::new(local_peer_id);
    let transport = {
        use libp2p::Transport as _;
        let tcp = PortChoice {
            inner: libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true)),
            policy: policy.clone(),
        };
        relay_transport
            .or_transport(tcp)
            .upgrade(libp2p::core::upgrade::Version::V1Lazy)
            .authenticate(upgrade)
            .multiplex(yamux)
            .timeout(Duration::from_secs(20))
            .boxed()
    };
    let mdns = if config.mdns {
        Some(
            mdns::tokio::Behaviour::new(
                mdns::Config {
                    // A contact who comes back on the LAN is found within half a minute.
                    query_interval: Duration::from_secs(30),
                    ..mdns::Config::default()
                },
                local_peer_id,
            )
            .map_err(|e| StartError::Transport(format!("mDNS: {e}")))?,
        )
    } else {
        None
    };
    let behaviour = Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        streams: libp2p_stream::Behaviour::new(),
        messages: request_response::Behaviour::with_codec(
            codec,
            [(codec::PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(timeout)
                .with_max_concurrent_streams(streams),
        ),
        identify: identify::Behaviour::new(identify::Config::new(
            "/peerchat/1.0.0".into(),
            keypair.public(),
        )),
        ping: ping::Behaviour::default(),
        relay: relay_client,
        hole_punch: HolePunch::new(local_peer_id, policy.clone()),
        autonat: autonat::v2::client::Behaviour::default(),
        mdns: mdns.into(),
    };
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        local_peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(config.idle_timeout),
    );

    let listen_addrs: Vec<Multiaddr> =
        peerchat_transport::listen::listen_on_all(&mut swarm, &config.listen)
            .await
            .map_err(|e| StartError::Listen {
                addr: e.addr,
                reason: e.reason,
            })?
            .into_iter()
            .map(|a| a.with_p2p(local_peer_id).unwrap_or_else(|a| a))
            .collect();
    let (commands, command_rx) = mpsc::channel(1024);
    let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity);
    // Stops the swarm and everything it feeds at once ([`P2pNetwork::shutdown`]).
    let stop = tokio_util::sync::CancellationToken::new();
    let admission = Admission {
        trust: config.trust.clone(),
        without_crl: config.without_crl.clone(),
        refused: config.refused.clone(),
    };
    let mut control = swarm.behaviour().streams.new_control();
    for protocol in &config.stream_protocols {
        let incoming = control
            .accept(libp2p::StreamProtocol::new(protocol))
            .map_err(|e| StartError::Transport(e.to_string()))?;
        tokio::spawn(stop.clone().run_until_cancelled_owned(inbound::streams(
            incoming,
            protocol,
            registry.clone(),
            admission.clone(),
            inbound.clone(),
            config.max_streams_per_connection,
        )));
    }
    tokio::spawn(
        stop.clone()
            .run_until_cancelled_owned(inbound::envelopes(inbound_rx, inbound)),
    );
    let listen_addrs = Arc::new(std::sync::RwLock::new(listen_addrs));
    let connections = Connections::default();
    let discovered = Discovered::default();
    let (reservation_tx, reservation) = tokio::sync::watch::channel(None);
    let _ = config.reachability.send(ReachabilityEvent::OwnAddresses(
        reachable(&listen_addrs.read().unwrap_or_else(|p| p.into_inner()))
            .iter()
            .map(ToString::to_string)
            .collect(),
    ));
    let driver = Driver {
        swarm,
        registry: registry.clone(),
        admission: admission.clone(),
        inbound: inbound_tx,
        max_answers: config.inbound_capacity,
        pending: HashMap::new(),
        // Half of a connection's streams: the peer's requests to us share them.
        max_outbound_per_peer: (config.max_streams_per_connection / 2).max(1),
        in_flight: HashMap::new(),
        waiting: HashMap::new(),
        dial_errors: HashMap::new(),
        answers: FuturesUnordered::new(),
        connecting: HashMap::new(),
        listen_addrs: listen_addrs.clone(),
        reachability: config.reachability.clone(),
        connections: connections.clone(),
        peer_connections: HashMap::new(),
        policy,
        relay: None,
        relay_listener: None,
        relay_retry: None,
        reservation: reservation_tx,
        discovered: discovered.clone(),
    };
    tokio::spawn(
        stop.clone()
            .run_until_cancelled_owned(driver.run(command_rx)),
    );
    let network = P2pNetwork {
        commands,
        registry,
        admission,
        local_peer_id,
        listen_addrs,
        max_envelope_bytes: config.max_envelope_bytes,
        peer_ids: Arc::default(),
        streams: control,
        reachability: config.reachability,
        connections,
        dial_any_local: config.dial_any_local,
        discovered,
        reservation,
        stop,
    };
    if let Some(relay) = config.relay {
        network.use_relay(relay).await;
    }
    Ok(network)
}

struct Pending {
    peer_id: PeerId,
    username: Username,
    reply: oneshot::Sender<Result<Ack, DeliveryError>>,
    /// The envelope and its addresses, kept for one more try when the connection it went on
    /// closes under it (a relayed connection closed after the hole punch, or by its relay's
    /// limits): the receiver drops duplicates, so a second copy is harmless.
    again: Option<(Envelope, Vec<Multiaddr>)>,
}

type Answer = BoxFuture<'static, (ResponseChannel<Ack>, Ack)>;

/// Owns the swarm; everything else talks to it through channels.
struct Driver {
    swarm: Swarm<Behaviour>,
    registry: Arc<PeerRegistry>,
    admission: Admission,
    inbound: mpsc::Sender<Received>,
    max_answers: usize,
    pending: HashMap<OutboundRequestId, Pending>,
    /// Most requests in flight to one peer; further envelopes wait in `waiting`, so a burst of
    /// sends queues here instead of failing on the connection's stream bound.
    max_outbound_per_peer: usize,
    in_flight: HashMap<PeerId, usize>,
    waiting: HashMap<PeerId, std::collections::VecDeque<Outgoing>>,
    /// The last dial error per peer, to explain a request's `DialFailure`.
    dial_errors: HashMap<PeerId, DeliveryError>,
    answers: FuturesUnordered<Answer>,
    /// Callers waiting for a connection to a peer (streams).
    connecting: HashMap<PeerId, Vec<oneshot::Sender<Result<(), DeliveryError>>>>,
    /// Our listen addresses, shared with the handle.
    listen_addrs: Arc<std::sync::RwLock<Vec<Multiaddr>>>,
    reachability: broadcast::Sender<ReachabilityEvent>,
    connections: Connections,
    /// Every open connection of each peer, with its path.
    peer_connections: HashMap<PeerId, Vec<(ConnectionId, PeerConnection)>>,
    policy: PortPolicy,
    /// The relay we hold (or try to hold) a reservation on.
    relay: Option<RelayServer>,
    /// The listener of the reservation on it.
    relay_listener: Option<libp2p::core::transport::ListenerId>,
    /// When to try the reservation again after it failed or closed.
    relay_retry: Option<tokio::time::Instant>,
    /// The relay whose reservation is accepted and not closed since, shared with the handles.
    reservation: tokio::sync::watch::Sender<Option<PeerId>>,
    discovered: Discovered,
}

/// How long the identity of a peer no longer connected is kept (see [`PeerRegistry`]).
const REGISTRY_GRACE: Duration = Duration::from_secs(60);

/// How long after a failed or closed reservation it is tried again.
const RELAY_RETRY: Duration = Duration::from_secs(10);

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut prune = tokio::time::interval(REGISTRY_GRACE);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                Some((channel, ack)) = self.answers.next(), if !self.answers.is_empty() => {
                    let _ = self.swarm.behaviour_mut().messages.send_response(channel, ack);
                }
                event = self.swarm.select_next_some() => self.event(event),
                () = sleep_until(self.relay_retry) => {
                    self.relay_retry = None;
                    self.reserve();
                }
                _ = prune.tick() => {
                    let swarm = &self.swarm;
                    self.registry.prune(|peer| swarm.is_connected(peer), REGISTRY_GRACE);
                }
            }
        }
        tracing::debug!("network stopped");
    }

    /// Listens through the relay (a reservation): the relay client dials it, from the listening
    /// port, and the reservation's address is reported as a new listen address.
    fn reserve(&mut self) {
        let Some(relay) = self.relay.clone() else {
            return;
        };
        if let Some(old) = self.relay_listener.take() {
            self.swarm.remove_listener(old);
        }
        let own = self
            .listen_addrs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let candidates: Vec<String> = relay.addresses.iter().map(ToString::to_string).collect();
        let Some(address) = dialable(&candidates, relay.peer_id, &own)
            .into_iter()
            .next()
        else {
            tracing::warn!(relay = %relay.peer_id, "no address of the relay can be dialled from here");
            return;
        };
        match self
            .swarm
            .listen_on(address.clone().with(Protocol::P2pCircuit))
        {
            Ok(id) => {
                tracing::debug!(%address, "reserving a slot on the relay");
                self.relay_listener = Some(id);
            }
            Err(e) => {
                tracing::warn!(%address, error = %e, "cannot reserve a slot on the relay");
                self.relay_retry = Some(tokio::time::Instant::now() + RELAY_RETRY);
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Deliver(outgoing) => {
                let in_flight = self.in_flight.get(&outgoing.peer_id).copied().unwrap_or(0);
                if in_flight < self.max_outbound_per_peer {
                    self.send(outgoing);
                } else {
                    self.waiting
                        .entry(outgoing.peer_id)
                        .or_default()
                        .push_back(outgoing);
                }
            }
            Command::Connect {
                peer_id,
                addresses,
                reply,
            } => {
                if self.swarm.is_connected(&peer_id) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let dial = libp2p::swarm::dial_opts::DialOpts::peer_id(peer_id)
                    .addresses(addresses)
                    .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match self.swarm.dial(dial) {
                    Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {
                        self.connecting.entry(peer_id).or_default().push(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(dial_failure(&e)));
                    }
                }
            }
            Command::UseRelay(relay) => {
                self.reservation.send_replace(None);
                self.policy.reuse_for(relay.peer_id);
                self.relay = Some(relay);
                self.reserve();
            }
            Command::DropRevoked => {
                let Some(crl) = self.admission.trust.crl() else {
                    return;
                };
                for peer in self.registry.revoked(|p| crl.is_revoked(&p.serial)) {
                    tracing::info!(%peer, "closing the connection of a revoked peer");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::DropRefused => {
                for peer in self
                    .registry
                    .revoked(|p| self.admission.refuses(&p.username))
                {
                    tracing::info!(%peer, "closing the connection of a refused peer");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }

    /// Whether `peer` may talk to us now.
    fn admitted(&self, peer: &peerchat_pki::VerifiedPeer) -> bool {
        self.admission.admits(peer)
    }

    fn publish(&self, event: ReachabilityEvent) {
        let _ = self.reachability.send(event);
    }

    fn publish_addresses(&self) {
        let addresses = reachable(&self.listen_addrs.read().unwrap_or_else(|p| p.into_inner()))
            .iter()
            .map(ToString::to_string)
            .collect();
        self.publish(ReachabilityEvent::OwnAddresses(addresses));
    }

    fn send(&mut self, outgoing: Outgoing) {
        let Outgoing {
            peer_id,
            username,
            addresses,
            envelope,
            reply,
        } = outgoing;
        let again = Some((envelope.clone(), addresses.clone()));
        let id = self
            .swarm
            .behaviour_mut()
            .messages
            .send_request_with_addresses(&peer_id, envelope, addresses);
        *self.in_flight.entry(peer_id).or_default() += 1;
        self.pending.insert(
            id,
            Pending {
                peer_id,
                username,
                reply,
                again,
            },
        );
    }

    /// A request to `peer` has ended: the next waiting envelope for it goes out.
    fn finished(&mut self, peer: PeerId) {
        if let Some(count) = self.in_flight.get_mut(&peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.in_flight.remove(&peer);
            }
        }
        let next = self
            .waiting
            .get_mut(&peer)
            .and_then(|queue| queue.pop_front());
        if self
            .waiting
            .get(&peer)
            .is_some_and(|queue| queue.is_empty())
        {
            self.waiting.remove(&peer);
        }
        if let Some(next) = next {
            self.send(next);
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Messages(event)) => self.message_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::HolePunch(event)) => match event.result {
                Ok(direct) => {
                    tracing::info!(peer = %event.remote_peer_id, "hole punch succeeded: a direct connection");
                    self.leave_relayed(event.remote_peer_id, direct);
                }
                Err(e) => {
                    tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punch failed; staying relayed");
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => match event {
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                } => {
                    tracing::info!(relay = %relay_peer_id, renewal, "relay reservation accepted");
                    if self
                        .relay
                        .as_ref()
                        .is_some_and(|r| r.peer_id == relay_peer_id)
                    {
                        self.reservation.send_replace(Some(relay_peer_id));
                    }
                }
                other => tracing::debug!(event = ?other, "relay client"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => match event.result {
                Ok(()) => {
                    tracing::info!(address = %event.tested_addr, "address confirmed reachable from outside (AutoNAT)")
                }
                Err(e) => {
                    tracing::debug!(address = %event.tested_addr, error = %e, "address not reachable from outside (AutoNAT)")
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => self.mdns_event(event),
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.add_own_address(address);
            }
            SwarmEvent::ExternalAddrExpired { address } => self.remove_own_address(address),
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                let failure = dial_failure(&error);
                tracing::debug!(%peer, error = %error, "dial failed");
                for waiting in self.connecting.remove(&peer).unwrap_or_default() {
                    let _ = waiting.send(Err(failure.clone()));
                }
                if self.dial_errors.len() > 1024 {
                    self.dial_errors.clear();
                }
                self.dial_errors.insert(peer, failure);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if self.is_relay(&peer_id) {
                    tracing::debug!(relay = %peer_id, "connected to the relay");
                    return;
                }
                if let Some(peer) = self.registry.get(&peer_id)
                    && !self.admitted(&peer)
                {
                    tracing::info!(%peer_id, "refusing a peer: revoked, blocked, or no CRL yet and not a pinned contact");
                    self.swarm.close_connection(connection_id);
                    return;
                }
                tracing::debug!(%peer_id, dialer = endpoint.is_dialer(), relayed = endpoint.is_relayed(), "connected");
                self.dial_errors.remove(&peer_id);
                for waiting in self.connecting.remove(&peer_id).unwrap_or_default() {
                    let _ = waiting.send(Ok(()));
                }
                let connection = PeerConnection {
                    path: if endpoint.is_relayed() {
                        Path::Relayed
                    } else {
                        Path::Direct
                    },
                    remote_address: endpoint.get_remote_address().to_string(),
                };
                self.peer_connections
                    .entry(peer_id)
                    .or_default()
                    .push((connection_id, connection));
                self.path_changed(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(open) = self.peer_connections.get_mut(&peer_id) {
                    open.retain(|(id, _)| *id != connection_id);
                }
                self.path_changed(peer_id);
                if num_established == 0 {
                    self.peer_connections.remove(&peer_id);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => self.add_own_address(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => self.remove_own_address(address),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if Some(listener_id) == self.relay_listener => {
                // The relay went away, refused the reservation, or closed it: try again later.
                tracing::info!(reason = ?reason.err().map(|e| e.to_string()), "the relay reservation ended; trying again shortly");
                self.relay_listener = None;
                self.reservation.send_replace(None);
                self.relay_retry = Some(tokio::time::Instant::now() + RELAY_RETRY);
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                // Refusals are worth seeing (a revoked or foreign certificate); the connection
                // bounds limit how many there can be.
                tracing::info!(from = %send_back_addr, error = %error, "incoming connection refused");
            }
            _ => {}
        }
    }

    /// Whether `peer` is the relay we use (a connection to it is no contact's).
    fn is_relay(&self, peer: &PeerId) -> bool {
        self.relay.as_ref().is_some_and(|r| r.peer_id == *peer)
    }

    /// Publishes `peer`'s best path (direct before relayed) when it changed.
    fn path_changed(&mut self, peer_id: PeerId) {
        let Some(peer) = self.registry.get(&peer_id) else {
            return;
        };
        let best = self.peer_connections.get(&peer_id).and_then(|open| {
            open.iter()
                .map(|(_, c)| c)
                .find(|c| c.path == Path::Direct)
                .or_else(|| open.first().map(|(_, c)| c))
                .cloned()
        });
        let mut shown = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if shown.get(&peer.username) == best.as_ref() {
            return;
        }
        match best {
            Some(connection) => {
                shown.insert(peer.username.clone(), connection.clone());
                drop(shown);
                self.publish(ReachabilityEvent::PeerOnline {
                    peer: peer.username,
                    path: connection.path,
                    remote_address: connection.remote_address,
                });
            }
            None => {
                shown.remove(&peer.username);
                drop(shown);
                self.publish(ReachabilityEvent::PeerOffline {
                    peer: peer.username,
                });
            }
        }
    }

    /// A hole punch gave a direct connection: the relayed ones to the same peer are closed (what
    /// was in flight on them is sent again on the direct one, see [`Pending::again`]).
    fn leave_relayed(&mut self, peer: PeerId, direct: ConnectionId) {
        let relayed: Vec<ConnectionId> = self
            .peer_connections
            .get(&peer)
            .map(|open| {
                open.iter()
                    .filter(|(id, c)| *id != direct && c.path == Path::Relayed)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        for id in relayed {
            self.swarm.close_connection(id);
        }
    }

    fn add_own_address(&mut self, address: Multiaddr) {
        let address = address
            .with_p2p(*self.swarm.local_peer_id())
            .unwrap_or_else(|a| a);
        let mut listen = self.listen_addrs.write().unwrap_or_else(|p| p.into_inner());
        if !listen.contains(&address) {
            listen.push(address);
            drop(listen);
            self.publish_addresses();
        }
    }

    fn remove_own_address(&mut self, address: Multiaddr) {
        let address = address
            .with_p2p(*self.swarm.local_peer_id())
            .unwrap_or_else(|a| a);
        let mut listen = self.listen_addrs.write().unwrap_or_else(|p| p.into_inner());
        let before = listen.len();
        listen.retain(|a| *a != address);
        let changed = listen.len() != before;
        drop(listen);
        if changed {
            self.publish_addresses();
        }
    }

    fn mdns_event(&mut self, event: mdns::Event) {
        let mut seen = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            mdns::Event::Discovered(found) => {
                for (peer, address) in found {
                    if seen.len() >= 1024 && !seen.contains_key(&peer) {
                        continue;
                    }
                    let known = seen.entry(peer).or_default();
                    if !known.contains(&address) && known.len() < MAX_DIAL_ADDRESSES {
                        tracing::debug!(%peer, %address, "found on the local network (mDNS)");
                        known.push(address);
                    }
                }
            }
            mdns::Event::Expired(gone) => {
                for (peer, address) in gone {
                    if let Some(known) = seen.get_mut(&peer) {
                        known.retain(|a| *a != address);
                        if known.is_empty() {
                            seen.remove(&peer);
                        }
                    }
                }
            }
        }
    }

    fn message_event(&mut self, event: request_response::Event<Envelope, Ack>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.inbound(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let Some(pending) = self.pending.remove(&request_id) else {
                        return;
                    };
                    self.finished(pending.peer_id);
                    // The PeerId pins the key; check the CA-certified name too.
                    let result = match self.registry.get(&pending.peer_id) {
                        Some(p)
                            if p.username == pending.username
                                && peer == pending.peer_id
                                && self.admitted(&p) =>
                        {
                            Ok(response)
                        }
                        _ => Err(DeliveryError::WrongPeer),
                    };
                    let _ = pending.reply.send(result);
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                let Some(mut pending) = self.pending.remove(&request_id) else {
                    return;
                };
                if matches!(error, OutboundFailure::ConnectionClosed)
                    && let Some((envelope, addresses)) = pending.again.take()
                {
                    // Once more, on another connection of the peer or a new one.
                    tracing::debug!(%peer, "the connection closed under a request; sending it again");
                    // Still in flight: the count for the peer stays as it is.
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .messages
                        .send_request_with_addresses(&pending.peer_id, envelope, addresses);
                    self.pending.insert(id, pending);
                    return;
                }
                self.finished(pending.peer_id);
                let failure = match error {
                    OutboundFailure::DialFailure => {
                        self.dial_errors.remove(&peer).unwrap_or_else(|| {
                            DeliveryError::Unreachable("no address could be dialled".into())
                        })
                    }
                    OutboundFailure::Timeout => DeliveryError::Timeout,
                    OutboundFailure::ConnectionClosed => {
                        DeliveryError::Refused("the connection closed".into())
                    }
                    OutboundFailure::UnsupportedProtocols => {
                        DeliveryError::Refused("the peer does not speak /peerchat/msg/1".into())
                    }
                    OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                        DeliveryError::TooLarge
                    }
                    OutboundFailure::Io(e) => DeliveryError::Refused(e.to_string()),
                };
                let _ = pending.reply.send(Err(failure));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, error = %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn inbound(&mut self, peer: PeerId, envelope: Envelope, channel: ResponseChannel<Ack>) {
        let Some(verified) = self.registry.get(&peer).filter(|p| self.admitted(p)) else {
            let _ = self
                .swarm
                .behaviour_mut()
                .messages
                .send_response(channel, Ack::Rejected(RejectReason::Internal));
            return;
        };
        if self.answers.len() >= self.max_answers {
            let _ = self
                .swarm
                .behaviour_mut()
                .messages
                .send_response(channel, Ack::Rejected(RejectReason::Busy));
            return;
        }
        let (reply, answer) = oneshot::channel();
        let item = Received {
            from: AuthenticatedPeer {
                username: verified.username,
                identity_key: IdentityKey::from_verifying_key(verified.identity_key),
            },
            envelope,
            reply,
        };
        if let Err(full) = self.inbound.try_send(item) {
            drop(full);
            let _ = self
                .swarm
                .behaviour_mut()
                .messages
                .send_response(channel, Ack::Rejected(RejectReason::Busy));
            return;
        }
        self.answers.push(Box::pin(async move {
            let ack = answer
                .await
                .unwrap_or(Ack::Rejected(RejectReason::Internal));
            (channel, ack)
        }));
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a failed dial means for the caller.
fn dial_failure(error: &DialError) -> DeliveryError {
    match error {
        DialError::WrongPeerId { .. } => DeliveryError::WrongPeer,
        other => DeliveryError::Unreachable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn with_a_crl_admission_refuses_a_revoked_serial_whatever_the_handshake_saw() {
        use peerchat_pki::{CertificateAuthority, RevokedEntry, Serial};
        use rand::rngs::OsRng;
        let now = std::time::SystemTime::now();
        let ca = CertificateAuthority::generate("admission CA", now, &mut OsRng).unwrap();
        let trust = Arc::new(TrustStore::new(ca.certificate().clone()));
        let peer = |name: &str, serial: Serial| peerchat_pki::VerifiedPeer {
            username: Username::new(name).unwrap(),
            identity_key: ed25519_dalek::SigningKey::generate(&mut OsRng).verifying_key(),
            serial,
            not_after: now + Duration::from_secs(3600),
        };
        let revoked = peer("mallory", Serial::random(&mut OsRng));
        let fine = peer("alice", Serial::random(&mut OsRng));
        let blocked = peer("spammer", Serial::random(&mut OsRng));
        let admission = Admission {
            trust: trust.clone(),
            without_crl: WithoutCrl::AdmitAll,
            refused: Some(Arc::new(|u: &Username| u.as_str() == "spammer")),
        };
        assert!(admission.admits(&revoked) && admission.admits(&fine));
        assert!(!admission.admits(&blocked), "refused with or without a CRL");
        let crl = ca
            .sign_crl(
                &[RevokedEntry {
                    serial: revoked.serial.clone(),
                    revoked_at: now,
                }],
                1,
                now,
                now + Duration::from_secs(86400),
            )
            .unwrap();
        trust.set_crl(crl).unwrap();
        assert!(!admission.admits(&revoked), "revoked once the CRL says so");
        assert!(admission.admits(&fine));
        assert!(!admission.admits(&blocked));
    }

    #[test]
    fn announced_addresses_are_dialled_only_with_the_peers_id_and_within_bounds() {
        let peer = PeerId::random();
        let other = PeerId::random();
        let strings = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let public = addrs(&["/ip4/198.18.0.5/tcp/4001"]);
        let announced = strings(&[
            "/ip4/198.18.0.7/tcp/4001",
            "/ip4/127.0.0.1/tcp/22",
            "/ip4/169.254.1.1/tcp/22",
            "/ip6/fe80::1/tcp/22",
            "/ip4/0.0.0.0/tcp/1",
            "not a multiaddr",
        ]);
        // From a node on a public segment: only the public address, with bob's id.
        let dialled = dialable(&announced, peer, &public);
        assert_eq!(
            dialled,
            vec![
                format!("/ip4/198.18.0.7/tcp/4001/p2p/{peer}")
                    .parse()
                    .unwrap()
            ]
        );
        // A node listening on loopback itself (everything on one host) may dial loopback.
        let local = addrs(&["/ip4/127.0.0.1/tcp/4001"]);
        assert_eq!(dialable(&announced, peer, &local).len(), 2);
        // An address naming another peer is dialled as this peer's (the handshake checks).
        let claimed = vec![format!("/ip4/198.18.0.9/tcp/1/p2p/{other}")];
        assert_eq!(
            dialable(&claimed, peer, &public),
            vec![format!("/ip4/198.18.0.9/tcp/1/p2p/{peer}").parse().unwrap()]
        );
        // A flood of claims: at most a few dials.
        let many: Vec<String> = (0..100)
            .map(|i| format!("/ip4/198.18.1.{i}/tcp/4001"))
            .collect();
        assert_eq!(dialable(&many, peer, &public).len(), MAX_DIAL_ADDRESSES);
    }

    #[test]
    fn peers_are_given_outside_addresses_and_loopback_only_when_alone() {
        let all = addrs(&[
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/172.18.0.3/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/ip6/fd00::3/tcp/4001",
        ]);
        assert_eq!(
            reachable(&all),
            addrs(&["/ip4/172.18.0.3/tcp/4001", "/ip6/fd00::3/tcp/4001"])
        );
        let local = addrs(&["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"]);
        assert_eq!(reachable(&local), local, "everything on one host");
        assert!(reachable(&[]).is_empty());
    }
}
