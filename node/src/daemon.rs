//! The daemon: wires the sled store, the rendezvous client, the libp2p network and the local API
//! around the use cases, and keeps presence and prekeys fresh.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use peerchat_pki::TrustStore;
use peerchat_pki::tls::Credentials;
use tokio::sync::broadcast;

use crate::domain::{Ack, Envelope};
use crate::driven::crl_file;
use crate::driven::p2p::{self, P2pConfig, P2pNetwork};
use crate::driven::rendezvous_http::{HttpDirectory, pin_ca};
use crate::driven::sled_store::SledStore;
use crate::driving::{api, p2p_inbound};
use crate::ports::{DeliveryError, Event, Network, Notifier, Recipient, Store, SystemClock};
use crate::usecases::Node;
use peerchat_telemetry::Telemetry;

/// File (in the data directory) holding the API address, for the CLI; present only while the
/// daemon runs.
pub const API_ADDR_FILE: &str = "api.addr";
/// File (in the data directory) holding the API port of the last run, so the next run listens
/// on the same one (a bookmarked window keeps working).
pub const API_PORT_FILE: &str = "api.port";
/// File (in the data directory) naming the rendezvous the daemon last used, for the CLI's hints.
pub const RENDEZVOUS_FILE: &str = "rendezvous.url";
/// File (in the data directory) the running daemon holds locked; it names the daemon's pid.
pub const LOCK_FILE: &str = "daemon.lock";
/// File (mode 0600) holding the hashes of the chat window's sessions.
pub const UI_SESSIONS_FILE: &str = "ui-sessions";
/// File (mode 0600) holding the API bearer token.
pub const API_TOKEN_FILE: &str = "api-token";
/// How long a signed prekey is used before a new one replaces it.
const SIGNED_PREKEY_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long one mailbox request waits for new mail.
const MAILBOX_WAIT: Duration = Duration::from_secs(25);
/// How often undelivered messages are tried again.
const OUTBOX_RETRY: Duration = Duration::from_secs(3);
/// After this long an undelivered message is marked failed (unless configured otherwise).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long announced addresses stay valid; they are re-announced at half of it.
const PRESENCE_TTL: Duration = Duration::from_secs(120);

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where everything is kept.
    pub data_dir: PathBuf,
    /// `https://host:port` of the rendezvous.
    pub rendezvous: String,
    /// A CA certificate to pin instead of trusting the rendezvous's on first contact.
    pub ca_cert: Option<PathBuf>,
    /// Where the local API listens (loopback).
    pub api: SocketAddr,
    /// Allows a non-loopback API address: inside a container whose API port is published on the
    /// host's loopback only. The bearer token and the Host check still apply.
    pub api_any_address: bool,
    /// Where the peer-to-peer network listens.
    pub listen: Multiaddr,
    /// Whether to tell senders when their messages were read.
    pub read_receipts: bool,
    /// How often the CRL is fetched from the rendezvous.
    pub crl_refresh: Duration,
    /// How long an undelivered message is tried before it is marked failed.
    pub give_up_after: Duration,
    /// Show a desktop notification (`notify-send`) for each message received. Only the sender
    /// is shown, never the text.
    pub desktop_notifications: bool,
    /// The process's tracing, whose spans are renamed `peerchat-<username>` once the node knows
    /// who it is (`None`: the process keeps the name it chose).
    pub telemetry: Option<Arc<Telemetry>>,
}

/// The network, available once the node is registered and the swarm has started.
#[derive(Debug, Clone, Default)]
pub struct LateNetwork(Arc<OnceLock<P2pNetwork>>);

impl LateNetwork {
    /// Provides the started network (once; later calls change nothing).
    pub fn set(&self, network: P2pNetwork) {
        let _ = self.0.set(network);
    }
}

impl Network for LateNetwork {
    async fn deliver(&self, to: &Recipient, envelope: Envelope) -> Result<Ack, DeliveryError> {
        match self.0.get() {
            Some(net) => net.deliver(to, envelope).await,
            None => Err(DeliveryError::Unreachable(
                "the network has not started".into(),
            )),
        }
    }
}

/// Events to every subscriber; a subscriber that falls more than 1,024 events behind misses the
/// oldest (bounded, never blocks the node).
#[derive(Debug, Clone)]
pub struct BroadcastNotifier(pub broadcast::Sender<Event>);

impl Default for BroadcastNotifier {
    fn default() -> Self {
        Self(broadcast::channel(1024).0)
    }
}

impl Notifier for BroadcastNotifier {
    fn notify(&self, event: Event) {
        let _ = self.0.send(event);
    }
}

/// The node as the daemon wires it.
pub type DaemonNode = Node<SledStore, HttpDirectory, LateNetwork, BroadcastNotifier, SystemClock>;

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A file or socket failed.
    #[error("{0}")]
    Io(String),
    /// Something in the wiring failed.
    #[error("{0}")]
    Start(String),
}

fn io(what: &str, e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Io(format!("{what}: {e}"))
}

/// Reads the API token, creating it (mode 0600) on first start.
fn token(data_dir: &Path) -> Result<String, DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(API_TOKEN_FILE);
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let token = crate::driving::token::new_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io("creating the API token", e))?;
    file.write_all(token.as_bytes())
        .map_err(|e| io("writing the API token", e))?;
    Ok(token)
}

/// Names the exported spans' service `peerchat-<username>` once the node knows its user.
fn export_spans(config: &DaemonConfig, me: Option<&peerchat_pki::Username>) {
    if let (Some(telemetry), Some(me)) = (&config.telemetry, me) {
        telemetry.rename(&format!("peerchat-{me}"));
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| io("creating the data directory", e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    // Held until the daemon stops: a second daemon on this directory is told who runs it.
    let _lock = lock_data_dir(&config.data_dir)?;
    let _ = std::fs::write(config.data_dir.join(RENDEZVOUS_FILE), &config.rendezvous);
    // Every background task holds a receiver: it stops when `true` is sent, and `closed()` on
    // the sender tells when the last one has stopped.
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let store = SledStore::open(&config.data_dir.join("db"))
        .map_err(|e| DaemonError::Start(e.to_string()))?;
    let me = store
        .identity()
        .map_err(|e| DaemonError::Start(e.to_string()))?
        .map(|identity| identity.username);
    export_spans(&config, me.as_ref());
    let (ca, pinned_now) = pin_ca(
        &config.data_dir,
        &config.rendezvous,
        config.ca_cert.as_deref(),
    )
    .await
    .map_err(|e| DaemonError::Start(e.to_string()))?;
    println!(
        "peerchat: rendezvous CA {} {}",
        ca.fingerprint(),
        if pinned_now {
            "(pinned now; compare it with the rendezvous's)"
        } else {
            "(pinned)"
        }
    );
    let directory = HttpDirectory::new(&config.rendezvous, ca.clone())
        .map_err(|e| DaemonError::Start(e.to_string()))?;
    let network = LateNetwork::default();
    let node_events = BroadcastNotifier::default();
    let node = Arc::new(
        Node::new(
            store,
            directory,
            network.clone(),
            node_events.clone(),
            SystemClock,
        )
        .with_read_receipts(config.read_receipts),
    );

    let start = {
        let (node, network, config, ca, notifier, closing) = (
            node.clone(),
            network.clone(),
            config.clone(),
            ca.clone(),
            node_events.clone(),
            closing.clone(),
        );
        move || {
            let (node, network, config, ca, notifier) = (
                node.clone(),
                network.clone(),
                config.clone(),
                ca.clone(),
                notifier.clone(),
            );
            let tasks = closing.clone();
            supervised(closing.clone(), async move {
                if let Err(e) = start_network(notifier, node, network, &config, ca, tasks).await {
                    tracing::error!(error = %e, "the network did not start");
                    eprintln!("peerchat: the network did not start: {e}");
                }
            });
        }
    };
    if node
        .store()
        .identity()
        .map_err(|e| DaemonError::Start(e.to_string()))?
        .is_some()
    {
        start();
    }

    if config.desktop_notifications {
        let mut events = node_events.0.subscribe();
        supervised(closing.clone(), async move {
            loop {
                match events.recv().await {
                    Ok(Event::MessageReceived { peer, .. }) => {
                        let shown = tokio::process::Command::new("notify-send")
                            .args(["peerchat", &format!("New message from {peer}")])
                            .status()
                            .await;
                        if let Err(e) = shown {
                            tracing::warn!(error = %e, "desktop notification failed (is notify-send installed?)");
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
    let token = token(&config.data_dir)?;
    let listener = bind_api(&config).await?;
    let addr = listener.local_addr().map_err(|e| io("API address", e))?;
    if !addr.ip().is_loopback() && !config.api_any_address {
        return Err(DaemonError::Start(format!(
            "the API must listen on loopback, not {addr} (see --allow-api-non-loopback)"
        )));
    }
    // The CLI on this host reaches an unspecified address through loopback.
    let local = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    std::fs::write(config.data_dir.join(API_ADDR_FILE), local.to_string())
        .map_err(|e| io("writing the API address", e))?;
    let _ = std::fs::write(config.data_dir.join(API_PORT_FILE), addr.port().to_string());
    println!(
        "peerchat: API on http://{addr} (token in {})",
        config.data_dir.join(API_TOKEN_FILE).display()
    );
    let events = node_events.clone();
    let shutdown = {
        let closing_tx = closing_tx.clone();
        async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        }
    };
    let app = api::router(api::ApiState {
        node,
        token,
        on_registered: Box::new(start),
        subscribe: Box::new(move || events.0.subscribe()),
        ui: crate::driving::ui::Sessions::persistent(config.data_dir.join(UI_SESSIONS_FILE)),
        closing,
    });
    let served = api::serve(listener, app, shutdown).await;
    // Nobody answers there any more: the CLI and health checks must not think otherwise.
    let _ = std::fs::remove_file(config.data_dir.join(API_ADDR_FILE));
    let _ = closing_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), closing_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running after 5 s; stopping anyway");
    }
    served.map_err(|e| io("serving the API", e))?;
    Ok(())
}

/// Runs `task` on its own until it ends or `true` is sent on `stop`'s channel; the receiver is
/// held until then, so the sender's `closed()` waits for it.
fn supervised(
    mut stop: tokio::sync::watch::Receiver<bool>,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => {}
            () = task => {}
        }
    });
}

/// Locks `DIR/daemon.lock` (and writes our pid into it), or says which daemon holds it.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("opening the lock file", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(DaemonError::Start(format!(
                "another peerchat daemon (pid {}) is already running on {}; stop it first, or use another --data-dir",
                pid.trim(),
                data_dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("locking the data directory", e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .map_err(|e| io("writing the lock file", e))?;
    Ok(file)
}

/// Binds the API: on `--api` as given, except that with port 0 the port of the last run is
/// taken again when it is free.
async fn bind_api(config: &DaemonConfig) -> Result<tokio::net::TcpListener, DaemonError> {
    if config.api.port() == 0
        && let Some(port) = std::fs::read_to_string(config.data_dir.join(API_PORT_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p != 0)
        && let Ok(listener) =
            tokio::net::TcpListener::bind(SocketAddr::new(config.api.ip(), port)).await
    {
        return Ok(listener);
    }
    tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|e| io(&format!("binding the API on {}", config.api), e))
}

/// Fetches the CRL and, if it is not older than the one in use, installs it and saves it for
/// the next start. Returns whether one was installed.
async fn install_crl(node: &DaemonNode, trust: &TrustStore, data_dir: &Path) -> bool {
    match node.directory().crl().await {
        Ok(crl) => {
            let der = crl.clone();
            if trust.set_crl(crl).is_err() {
                return false;
            }
            if let Err(e) = crl_file::save(data_dir, &der) {
                tracing::warn!(error = %e, "saving the CRL failed");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "fetching the CRL failed");
            false
        }
    }
}

async fn start_network(
    events: BroadcastNotifier,
    node: Arc<DaemonNode>,
    network: LateNetwork,
    config: &DaemonConfig,
    ca: peerchat_pki::CaCertificate,
    tasks: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let identity = node
        .store()
        .identity()
        .map_err(|e| e.to_string())?
        .ok_or("not registered")?;
    export_spans(config, Some(&identity.username));
    let key = SigningKey::from_bytes(&identity.seed);
    use crate::ports::Directory;
    node.directory()
        .authenticate(&identity.certificate_pem, &key)
        .map_err(|e| e.to_string())?;
    let trust = Arc::new(TrustStore::new(ca.clone()));
    // The last CRL we verified, so revocation holds even if the rendezvous is down now.
    if let Some(saved) = crl_file::load(&config.data_dir, &ca) {
        let _ = trust.set_crl(saved);
    }
    install_crl(&node, &trust, &config.data_dir).await;
    if trust.crl().is_none() {
        tracing::warn!("no CRL yet: only pinned contacts are let in until one is fetched");
    }
    let der = {
        use rustls::pki_types::pem::PemObject;
        peerchat_pki::CertificateDer::from_pem_slice(identity.certificate_pem.as_bytes())
            .map_err(|e| e.to_string())?
    };
    let credentials = Credentials::new(vec![der], key.clone());
    let mut p2p_config = P2pConfig::new(
        key,
        credentials.clone(),
        trust.clone(),
        vec![config.listen.clone()],
    );
    p2p_config.without_crl = {
        let node = node.clone();
        p2p::WithoutCrl::OnlyPinned(Arc::new(move |username, key| {
            matches!(
                node.store().contact(username),
                Ok(Some(contact)) if contact.identity_key.verifying_key() == key
            )
        }))
    };
    p2p_config.on_presence = Some(Arc::new(move |peer, online| {
        events.notify(if online {
            Event::PeerOnline { peer }
        } else {
            Event::PeerOffline { peer }
        });
    }));
    let (net, inbound) = p2p::start(p2p_config).await.map_err(|e| e.to_string())?;
    let addresses: Vec<String> = net
        .reachable_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();

    let _ = network.0.set(net.clone());
    {
        let node = node.clone();
        supervised(
            tasks.clone(),
            p2p_inbound::serve(inbound, move |from, key, envelope| {
                let node = node.clone();
                async move { node.receive(&from, &key, envelope).await }
            }),
        );
    }
    // Reachable before saying so.
    if let Err(e) = node
        .announce_presence(addresses.clone(), PRESENCE_TTL.as_secs())
        .await
    {
        tracing::warn!(error = %e, "announcing presence failed");
    }
    println!(
        "peerchat: {} listening on {}",
        identity.username,
        addresses.join(", ")
    );
    // The mailbox: emptied at start, then whenever the rendezvous signals new mail (long poll).
    // The same long poll answers when a certificate is revoked: the new CRL is fetched at once
    // and the connections of peers it revokes are closed.
    {
        let (node, trust, net, data_dir) = (
            node.clone(),
            trust.clone(),
            net.clone(),
            config.data_dir.clone(),
        );
        supervised(tasks.clone(), async move {
            loop {
                let known = trust.crl().map(|crl| crl.number());
                match node.fetch_mail(MAILBOX_WAIT.as_secs(), known).await {
                    Ok(fetched) => {
                        if fetched.crl_number.is_some_and(|n| Some(n) > known)
                            && install_crl(&node, &trust, &data_dir).await
                        {
                            net.drop_revoked().await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "fetching mail failed");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        });
    }
    // The outbox: retried until acknowledged or too old.
    {
        let node = node.clone();
        let give_up_after = config.give_up_after.as_millis() as u64;
        supervised(tasks.clone(), async move {
            let mut tick = tokio::time::interval(OUTBOX_RETRY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = node.outbox_signal().notified() => {}
                }
                if let Err(e) = node.retry_outbox(give_up_after).await {
                    tracing::warn!(error = %e, "retrying the outbox failed");
                }
            }
        });
    }
    // The CRL: refreshed, handed to the transport, and connections of newly revoked peers closed.
    {
        let (node, trust, net, every, data_dir) = (
            node.clone(),
            trust.clone(),
            net.clone(),
            config.crl_refresh,
            config.data_dir.clone(),
        );
        supervised(tasks.clone(), async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if install_crl(&node, &trust, &data_dir).await {
                    net.drop_revoked().await;
                }
            }
        });
    }
    // Presence, prekeys and the certificate, kept fresh.
    supervised(tasks.clone(), async move {
        let mut tick = tokio::time::interval(PRESENCE_TTL / 2);
        let mut round: u64 = 0;
        loop {
            tick.tick().await;
            if let Err(e) = node
                .announce_presence(addresses.clone(), PRESENCE_TTL.as_secs())
                .await
            {
                tracing::warn!(error = %e, "announcing presence failed");
            }
            if round.is_multiple_of(10) {
                if let Err(e) = node.refresh_prekeys().await {
                    tracing::warn!(error = %e, "refreshing prekeys failed");
                }
                if let Err(e) = node
                    .rotate_signed_prekey(SIGNED_PREKEY_MAX_AGE.as_millis() as u64)
                    .await
                {
                    tracing::warn!(error = %e, "rotating the signed prekey failed");
                }
                // Renewed at two thirds of its life; the network presents the new one at once.
                match node
                    .renew_certificate(peerchat_pki::DEFAULT_PEER_VALIDITY, false)
                    .await
                {
                    Ok(true) => {
                        if let Ok(Some(identity)) = node.store().identity() {
                            use rustls::pki_types::pem::PemObject;
                            if let Ok(der) = peerchat_pki::CertificateDer::from_pem_slice(
                                identity.certificate_pem.as_bytes(),
                            ) {
                                credentials
                                    .replace(vec![der], SigningKey::from_bytes(&identity.seed));
                            }
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "renewing the certificate failed"),
                }
            }
            round += 1;
        }
    });
    Ok(())
}
