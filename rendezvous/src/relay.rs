//! The circuit relay: libp2p's circuit relay v2 server for nodes behind NATs, on its own TCP
//! address, behind the same `/peerchat/mtls/1.0.0` upgrade as the nodes' connections.
//!
//! The relay presents a peer certificate of this CA for the reserved name [`RELAY_USERNAME`] and
//! admits only peers with a certificate of this CA that the current CRL does not revoke, so only
//! our users can reserve a slot or open a circuit. A relayed connection is a stream through the
//! relay on which the two nodes run their own mutual TLS: the relay copies ciphertext.
//!
//! Beside the relay it runs identify (a node learns the address the relay sees, its candidate for
//! hole punching), ping, and an AutoNAT v2 server (a node learns whether an address of its is
//! reachable from outside).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, connection_limits, identify, ping, relay};
use peerchat_pki::tls::Credentials;
use peerchat_pki::{CertificateAuthority, SigningKey, TrustStore, Username};
use peerchat_transport::registry::PeerRegistry;
use peerchat_transport::upgrade::MtlsUpgrade;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rand::rngs::OsRng;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroize;

/// The name in the relay's certificate. Registration refuses it, so no user can hold it.
pub const RELAY_USERNAME: &str = "relay";

/// Lifetime of the relay's certificate; a fresh one is issued at every start.
pub const RELAY_CERT_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);

/// Where the relay listens and what it allows.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to listen, e.g. `/ip4/0.0.0.0/tcp/4001`.
    pub listen: Vec<Multiaddr>,
    /// The addresses nodes reach the relay at, when they differ from the listen addresses (a
    /// public address in front of a NAT or a container). Empty: the listen addresses.
    pub announce: Vec<Multiaddr>,
    /// Reservations, circuits and their bounds.
    pub limits: RelayLimits,
}

/// The relay's bounds. rust-libp2p's defaults (128 KiB and two minutes per circuit, 16 circuits
/// in all) are made for strangers; these are for the CA's own users, each of whom must hold a
/// certificate to get in. "Per user" is per device key (`PeerId`), which the certificate binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once, all users together.
    pub max_reservations: usize,
    /// Reservations held at once by one user.
    pub max_reservations_per_user: usize,
    /// How long a reservation lasts before the node renews it.
    pub reservation_duration: Duration,
    /// Circuits open at once, all users together.
    pub max_circuits: usize,
    /// Circuits open at once to or from one user.
    pub max_circuits_per_user: usize,
    /// How long one circuit may stay open; the nodes then open a new one (or reach each other
    /// directly, or through the mailbox).
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry, both directions together.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 4096,
            max_reservations_per_user: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 4096,
            max_circuits_per_user: 32,
            max_circuit_duration: Duration::from_secs(30 * 60),
            max_circuit_bytes: 64 << 20,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: vec![default_listen()],
            announce: Vec::new(),
            limits: RelayLimits::default(),
        }
    }
}

/// `/ip4/0.0.0.0/tcp/4001`.
pub fn default_listen() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
        .with(Protocol::Tcp(4001))
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay's certificate could not be issued.
    #[error("issuing the relay certificate: {0}")]
    Certificate(String),
    /// The TLS configuration was refused.
    #[error("relay TLS: {0}")]
    Tls(#[from] peerchat_pki::tls::TlsError),
    /// Listening failed.
    #[error("relay: cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::v2::server::Behaviour,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What the relay counts, for the operator's `/metrics`.
#[derive(Clone, Default)]
pub struct RelayMetrics {
    reservations: Family<OutcomeLabels, Counter>,
    circuits: Family<OutcomeLabels, Counter>,
    open_circuits: Gauge,
    refused_handshakes: Counter,
}

impl std::fmt::Debug for RelayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayMetrics").finish_non_exhaustive()
    }
}

impl RelayMetrics {
    /// Registers the counters under `relay_…` in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "relay_reservations",
            "Reservation requests, by outcome (accepted, renewed, denied, closed, timed_out)",
            self.reservations.clone(),
        );
        registry.register(
            "relay_circuits",
            "Circuit requests, by outcome (accepted, denied, closed, failed)",
            self.circuits.clone(),
        );
        registry.register(
            "relay_open_circuits",
            "Circuits open now",
            self.open_circuits.clone(),
        );
        registry.register(
            "relay_refused_handshakes",
            "Connections refused at the mutual TLS handshake (no certificate of this CA, or a revoked one)",
            self.refused_handshakes.clone(),
        );
    }

    /// Reservation requests that ended with `outcome` (`accepted`, `renewed`, `denied`, …).
    pub fn reservations(&self, outcome: &'static str) -> u64 {
        self.reservations
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// Circuit requests that ended with `outcome` (`accepted`, `denied`, `closed`).
    pub fn circuits(&self, outcome: &'static str) -> u64 {
        self.circuits
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// Connections refused at the handshake.
    pub fn refused_handshakes(&self) -> u64 {
        self.refused_handshakes.get()
    }

    fn reservation(&self, outcome: &'static str) {
        self.reservations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn circuit(&self, outcome: &'static str) {
        self.circuits
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// A running relay: its `PeerId` and addresses (`GET /v1/relay`). Stops when [`Relay::stop`] is
/// called or the last handle is dropped.
#[derive(Clone, Debug)]
pub struct Relay {
    peer_id: PeerId,
    addresses: Arc<RwLock<Vec<Multiaddr>>>,
    metrics: RelayMetrics,
    stop: CancellationToken,
    _guard: Arc<tokio_util::sync::DropGuard>,
}

impl Relay {
    /// The relay's `PeerId`.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Where nodes reach the relay, each ending in `/p2p/<peer id>`.
    pub fn addresses(&self) -> Vec<Multiaddr> {
        self.addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Its counters.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// Closes every connection and stops listening.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// The relay's key in the data directory (so its `PeerId`, which nodes keep in the addresses
/// they announce, survives restarts), created on first use.
pub fn load_or_create_key(data_dir: &std::path::Path) -> Result<SigningKey, std::io::Error> {
    let path = data_dir.join("relay.key");
    match std::fs::read_to_string(&path) {
        Ok(pem) => peerchat_pki::private_key_from_pem(&pem).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut OsRng);
            let pem = peerchat_pki::private_key_to_pem(&key)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            peerchat_pki::write_atomically(&path, pem.as_bytes(), 0o600)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Issues the relay's certificate with `ca`, starts listening, and runs the relay until it is
/// stopped. Handshakes check certificates against `trust`, the rendezvous's own CA and CRL, so a
/// revocation reaches the relay's next handshake; open connections of revoked peers are closed
/// when the CRL changes.
pub async fn start(
    config: &RelayConfig,
    key: SigningKey,
    ca: &CertificateAuthority,
    trust: Arc<TrustStore>,
    now: SystemTime,
) -> Result<Relay, RelayError> {
    let username =
        Username::new(RELAY_USERNAME).map_err(|e| RelayError::Certificate(e.to_string()))?;
    let csr = peerchat_pki::build_csr(&key, &username)
        .map_err(|e| RelayError::Certificate(e.to_string()))?;
    let issued = ca
        .issue_peer(&csr, &username, now, RELAY_CERT_VALIDITY, &mut OsRng)
        .map_err(|e| RelayError::Certificate(e.to_string()))?;
    let credentials = Credentials::new(vec![issued.der], key.clone());
    let mut seed = key.to_bytes();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| RelayError::Certificate(e.to_string()))?;
    seed.zeroize();
    let peer_id = keypair.public().to_peer_id();
    let registry = Arc::new(PeerRegistry::default());
    let upgrade = MtlsUpgrade::new(credentials, trust.clone(), registry.clone())?;
    let transport = {
        use libp2p::Transport as _;
        libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true))
            .upgrade(libp2p::core::upgrade::Version::V1Lazy)
            .authenticate(upgrade)
            .multiplex(libp2p::yamux::Config::default())
            .timeout(Duration::from_secs(20))
            .boxed()
    };
    let limits = &config.limits;
    let rate = |n: u32| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
    // rust-libp2p's default rates (60 reservations an hour per IP address) would stop the 61st
    // user behind one office NAT; every user here holds a certificate, so the bounds are per
    // device, with a wide one per address against a runaway client.
    let relay_config = relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: limits.max_reservations_per_user,
        reservation_duration: limits.reservation_duration,
        reservation_rate_limiters: Vec::new(),
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_user,
        max_circuit_duration: limits.max_circuit_duration,
        max_circuit_bytes: limits.max_circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    }
    // Per device: 30 reservations at once, then one every 2 minutes.
    .reservation_rate_per_peer(rate(30), Duration::from_secs(120))
    .reservation_rate_per_ip(rate(1000), Duration::from_secs(1))
    // Per device: 120 circuits at once (a contact list behind symmetric NATs), then one every
    // 10 seconds.
    .circuit_src_per_peer(rate(120), Duration::from_secs(10))
    .circuit_src_per_ip(rate(1000), Duration::from_secs(1));
    let connection_limits = connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(8))
        .with_max_pending_incoming(Some(256))
        .with_max_established(Some(
            u32::try_from(limits.max_reservations + limits.max_circuits)
                .unwrap_or(u32::MAX)
                .saturating_mul(2),
        ));
    let behaviour = Behaviour {
        limits: connection_limits::Behaviour::new(connection_limits),
        relay: relay::Behaviour::new(peer_id, relay_config),
        identify: identify::Behaviour::new(identify::Config::new(
            "/peerchat/1.0.0".into(),
            keypair.public(),
        )),
        ping: ping::Behaviour::default(),
        autonat: autonat::v2::server::Behaviour::default(),
    };
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    let listening = peerchat_transport::listen::listen_on_all(&mut swarm, &config.listen)
        .await
        .map_err(|e| RelayError::Listen {
            addr: e.addr,
            reason: e.reason,
        })?;
    // The relay must know its external addresses: they are what a reservation's answer carries.
    let external = if config.announce.is_empty() {
        listening
    } else {
        config.announce.clone()
    };
    let addresses: Vec<Multiaddr> = external
        .into_iter()
        .map(|a| {
            let bare: Multiaddr = a
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            swarm.add_external_address(bare.clone());
            bare.with(Protocol::P2p(peer_id))
        })
        .collect();
    tracing::info!(%peer_id, addresses = ?addresses, "relay listening");
    let stop = CancellationToken::new();
    let metrics = RelayMetrics::default();
    let driver = Driver {
        swarm,
        registry,
        trust,
        metrics: metrics.clone(),
    };
    tokio::spawn(stop.clone().run_until_cancelled_owned(driver.run()));
    Ok(Relay {
        peer_id,
        addresses: Arc::new(RwLock::new(addresses)),
        metrics,
        _guard: Arc::new(stop.clone().drop_guard()),
        stop,
    })
}

struct Driver {
    swarm: Swarm<Behaviour>,
    registry: Arc<PeerRegistry>,
    trust: Arc<TrustStore>,
    metrics: RelayMetrics,
}

impl Driver {
    async fn run(mut self) {
        let mut crl_number = self.trust.crl().map(|c| c.number());
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.event(event),
                _ = tick.tick() => {
                    let swarm = &self.swarm;
                    self.registry.prune(|peer| swarm.is_connected(peer), Duration::from_secs(60));
                    let now = self.trust.crl().map(|c| c.number());
                    if now != crl_number {
                        crl_number = now;
                        self.drop_revoked();
                    }
                }
            }
        }
    }

    /// Closes the connections (and with them the reservations and circuits) of peers the
    /// current CRL revokes.
    fn drop_revoked(&mut self) {
        let Some(crl) = self.trust.crl() else {
            return;
        };
        for peer in self.registry.revoked(|p| crl.is_revoked(&p.serial)) {
            tracing::info!(%peer, "relay: closing the connection of a revoked peer");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => self.relay_event(event),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                self.metrics.refused_handshakes.inc();
                tracing::info!(from = %send_back_addr, error = %error, "relay: connection refused");
            }
            _ => {}
        }
    }

    #[allow(deprecated)]
    fn relay_event(&mut self, event: relay::Event) {
        let m = &self.metrics;
        match event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed,
            } => {
                m.reservation(if renewed { "renewed" } else { "accepted" });
                tracing::debug!(peer = %src_peer_id, renewed, "relay: reservation accepted");
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                m.reservation("denied");
                tracing::info!(peer = %src_peer_id, ?status, "relay: reservation denied");
            }
            relay::Event::ReservationClosed { .. } => m.reservation("closed"),
            relay::Event::ReservationTimedOut { .. } => m.reservation("timed_out"),
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                m.circuit("accepted");
                m.open_circuits.inc();
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit opened");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                m.circuit("denied");
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay: circuit denied");
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                m.circuit("closed");
                m.open_circuits.dec();
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, error = ?error.map(|e| e.to_string()), "relay: circuit closed");
            }
            _ => {}
        }
    }
}
