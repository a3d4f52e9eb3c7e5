//! The daemon: wires the sled store, the rendezvous client, the libp2p network and the local API
//! around the use cases, and keeps presence and prekeys fresh.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::FutureExt;
use libp2p::Multiaddr;
use peerchat_pki::tls::Credentials;
use tokio::sync::broadcast;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::{Ack, Envelope};
use crate::driven::p2p::{self, P2pConfig, P2pNetwork};
use crate::driven::rendezvous_http::{HttpDirectory, pin_ca};
use crate::driven::sled_store::SledStore;
use crate::driven::store_key::{self, Protection, StoreKey};
use crate::driven::transport_trust::DaemonTrust;
use crate::driving::api;
use crate::ports::{
    DeliveryError, Event, IdentityStore, Messages, Notifier, PeerStream, Reachability,
    ReachabilityEvent, Recipient, Streams, SystemClock, TransportTrust,
};
use crate::usecases::{Node, Schedule};
use peerchat_telemetry::Telemetry;

/// File (in the data directory) holding the API address, for the CLI; present only while the
/// daemon runs.
pub const API_ADDR_FILE: &str = "api.addr";
/// File (in the data directory) holding the API port of the last run, so the next run listens
/// on the same one (a bookmarked window keeps working).
pub const API_PORT_FILE: &str = "api.port";
/// File (in the data directory) holding the peer-to-peer port of the last run, listened on again
/// when `--listen` leaves the port to the system.
pub const P2P_PORT_FILE: &str = "p2p.port";
/// File (in the data directory) naming the rendezvous the daemon last used, for the CLI's hints.
pub const RENDEZVOUS_FILE: &str = "rendezvous.url";
/// File (in the data directory) the running daemon holds locked; it names the daemon's pid.
pub const LOCK_FILE: &str = "daemon.lock";
/// File (mode 0600) holding the hashes of the chat window's sessions.
pub const UI_SESSIONS_FILE: &str = "ui-sessions";
/// File (mode 0600) holding the API bearer token.
pub const API_TOKEN_FILE: &str = "api-token";
/// After this long an undelivered message is marked failed (unless configured otherwise).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long shutdown waits for the background tasks once they are cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where everything is kept.
    pub data_dir: PathBuf,
    /// `https://host:port` of the rendezvous: instances of one service (one database, one
    /// CA), used in this order, the next when one stops answering.
    pub rendezvous: Vec<String>,
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
    /// Find contacts on the local network with mDNS.
    pub mdns: bool,
    /// Reserve a slot on the rendezvous's relay, so that peers behind NATs reach us.
    pub relay: bool,
    /// How large files may be, and which are fetched without asking.
    pub file_limits: crate::usecases::FileLimits,
    /// Where complete downloads go (default `DIR/files`).
    pub download_dir: Option<PathBuf>,
    /// How the store key is had: the OS keyring, a passphrase, or (asked for) none.
    pub store_key: crate::driven::store_key::KeyOptions,
    /// The process's tracing, whose spans are renamed `peerchat-<username>` once the node knows
    /// who it is (`None`: the process keeps the name it chose).
    pub telemetry: Option<Arc<Telemetry>>,
}

/// The store key, from the keyring, the passphrase or the plain key file; a store kept in plain
/// says so at every start.
async fn unlock_store(config: &DaemonConfig) -> Result<StoreKey, DaemonError> {
    let dir = config.data_dir.clone();
    let options = config.store_key.clone();
    let (key, protection) = tokio::task::spawn_blocking(move || {
        store_key::unlock(&dir, &options, &store_key::OsKeyring)
    })
    .await
    .map_err(|e| DaemonError::Start(e.to_string()))?
    .map_err(|e| DaemonError::Start(e.to_string()))?;
    match protection {
        Protection::Plain if config.store_key.throwaway => {}
        Protection::Plain => {
            tracing::warn!(
                "the store key is kept unprotected beside the data (--plain-store): anyone who \
                 can read {} can read the history",
                config.data_dir.display()
            );
            eprintln!(
                "peerchat: WARNING: the store key is kept unprotected beside the data \
                 (--plain-store)"
            );
        }
        Protection::Keyring => tracing::info!("the store key is in the OS keyring"),
        Protection::Passphrase => tracing::info!("the store key is protected by a passphrase"),
    }
    Ok(key)
}

/// The network, available once the node is registered and the swarm has started.
#[derive(Debug, Clone)]
pub struct LateNetwork {
    started: Arc<OnceLock<P2pNetwork>>,
    reachability: broadcast::Sender<ReachabilityEvent>,
}

impl Default for LateNetwork {
    fn default() -> Self {
        Self {
            started: Arc::default(),
            reachability: broadcast::channel(256).0,
        }
    }
}

impl LateNetwork {
    /// Provides the started network (once; later calls change nothing).
    pub fn set(&self, network: P2pNetwork) {
        let _ = self.started.set(network);
    }

    /// Where the network, once started, publishes its reachability.
    pub fn reachability_sender(&self) -> broadcast::Sender<ReachabilityEvent> {
        self.reachability.clone()
    }

    fn started(&self) -> Result<&P2pNetwork, DeliveryError> {
        self.started
            .get()
            .ok_or_else(|| DeliveryError::Unreachable("the network has not started".into()))
    }
}

impl Messages for LateNetwork {
    async fn deliver(&self, to: &Recipient, envelope: Envelope) -> Result<Ack, DeliveryError> {
        self.started()?.deliver(to, envelope).await
    }
}

impl Streams for LateNetwork {
    async fn open_stream(
        &self,
        to: &Recipient,
        protocol: &'static str,
    ) -> Result<PeerStream, DeliveryError> {
        self.started()?.open_stream(to, protocol).await
    }
}

impl Reachability for LateNetwork {
    fn own_addresses(&self) -> Vec<String> {
        self.started()
            .map(Reachability::own_addresses)
            .unwrap_or_default()
    }

    fn reachability(&self) -> broadcast::Receiver<ReachabilityEvent> {
        self.reachability.subscribe()
    }

    fn connection(&self, peer: &peerchat_pki::Username) -> Option<crate::ports::PeerConnection> {
        self.started().ok()?.connection(peer)
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

/// The ports the daemon wires the node with.
pub type DaemonPorts = (
    SledStore,
    HttpDirectory,
    LateNetwork,
    BroadcastNotifier,
    SystemClock,
);

/// The node as the daemon wires it.
pub type DaemonNode = crate::usecases::NodeOf<DaemonPorts>;

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

/// How long the daemon waits between tries of its store once the disk was full.
const SPACE_RETRY: Duration = Duration::from_secs(2);

/// How a run of the node on one opening of its store ended.
enum Ended {
    /// Shutdown was asked for.
    Stopped,
    /// A write found the disk full: the store refuses writes until it is opened again. The
    /// API answers that the disk is full (unless its socket could not be kept).
    DiskFull { answering: Option<DiskFullApi> },
}

/// The API while the node is stopped for a full disk: every request is answered so.
struct DiskFullApi {
    closing: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl DiskFullApi {
    /// Answers on `socket`, the API's own.
    fn start(socket: std::net::TcpListener) -> Option<Self> {
        let listener = tokio::net::TcpListener::from_std(socket)
            .inspect_err(
                |e| tracing::warn!(error = %e, "the API cannot answer while the disk is full"),
            )
            .ok()?;
        let closing = CancellationToken::new();
        let task = tokio::spawn(api::serve(
            listener,
            api::disk_full_router(),
            closing.clone().cancelled_owned(),
        ));
        Some(Self { closing, task })
    }

    /// Stops answering and lets the socket go.
    async fn stop(self) {
        self.closing.cancel();
        let _ = self.task.await;
    }
}

/// Runs the daemon until `shutdown` completes.
///
/// When a write finds the disk full, the node stops (its API, network and tasks, as at
/// shutdown: nothing waiting on the store is told a write succeeded), waits until its store
/// can write again, and starts again on it, as a restart would.
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
    // A wrong passphrase stops here, having changed nothing.
    let key = unlock_store(&config).await?;
    let _ = std::fs::write(
        config.data_dir.join(RENDEZVOUS_FILE),
        config
            .rendezvous
            .first()
            .map(String::as_str)
            .unwrap_or_default(),
    );
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let mut store = open_store(&config, &key).map_err(|e| DaemonError::Start(e.to_string()))?;
    loop {
        match serve(&config, store, &stop).await? {
            Ended::Stopped => return Ok(()),
            Ended::DiskFull { answering } => {
                tracing::error!(
                    "the disk is full: the node stopped, and starts again when there is space"
                );
                eprintln!(
                    "peerchat: the disk of {} is full: the node stopped taking messages and starts again when there is space",
                    config.data_dir.display()
                );
                let again = wait_for_space(&config, &key, &stop).await;
                if let Some(answering) = answering {
                    answering.stop().await;
                }
                let Some(again) = again else {
                    let _ = std::fs::remove_file(config.data_dir.join(API_ADDR_FILE));
                    return Ok(());
                };
                tracing::info!("there is space again: the node starts again");
                println!("peerchat: there is space again; the node starts again");
                store = again;
            }
        }
    }
}

/// The node's store in the data directory.
fn open_store(
    config: &DaemonConfig,
    key: &StoreKey,
) -> Result<SledStore, crate::ports::StoreError> {
    let files = config.data_dir.join("files");
    Ok(SledStore::open(&config.data_dir.join("db"), key)?
        .with_files(&files, config.download_dir.as_deref().unwrap_or(&files)))
}

/// Opens the store again once the last run on it has let it go and a write to it succeeds;
/// `None` when shutdown is asked for first.
async fn wait_for_space(
    config: &DaemonConfig,
    key: &StoreKey,
    stop: &CancellationToken,
) -> Option<SledStore> {
    for tries in 1u64.. {
        stop.run_until_cancelled(tokio::time::sleep(SPACE_RETRY))
            .await?;
        // Fails while a task of the last run still holds the database, or the disk is full.
        let why = match open_store(config, key) {
            Ok(store) => match store.probe().await {
                Ok(()) => return Some(store),
                Err(e) => e,
            },
            Err(e) => e,
        };
        // Said now and then, for whoever wonders why the node does not come back.
        if tries % 15 == 0 {
            tracing::warn!(error = %why, "the store cannot write yet");
        } else {
            tracing::debug!(error = %why, "the store cannot write yet");
        }
    }
    None
}

/// Runs the node on `store` until shutdown is asked for or a write finds the disk full.
async fn serve(
    config: &DaemonConfig,
    store: SledStore,
    stop: &CancellationToken,
) -> Result<Ended, DaemonError> {
    let files = config.data_dir.join("files");
    let disk_full = store.disk_full();
    let me = store
        .identity()
        .map_err(|e| DaemonError::Start(e.to_string()))?
        .map(|identity| identity.username);
    export_spans(config, me.as_ref());
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
        .with_read_receipts(config.read_receipts)
        .with_file_limits(config.file_limits),
    );

    // Every background task runs in `tasks` and stops when `cancel` is cancelled; shutdown
    // waits for them.
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    // The network starts once the node has an account: now, or on the `Registered` event.
    {
        let mut registered = node_events.0.subscribe();
        let person_events = node_events.0.subscribe();
        let already = node
            .status()
            .map_err(|e| DaemonError::Start(e.to_string()))?;
        let (node, network, config, ca, cancel) = (
            node.clone(),
            network.clone(),
            config.clone(),
            ca.clone(),
            cancel.clone(),
        );
        tasks.spawn(async move {
            if already.username.is_none() {
                loop {
                    match registered.recv().await {
                        Ok(Event::Registered { .. }) => break,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
            if let Err(e) = run_network(node, network, &config, ca, cancel, person_events).await {
                tracing::error!(error = %e, "the network did not start");
                eprintln!("peerchat: the network did not start: {e}");
            }
        });
    }

    // Each announcement that changed our addresses is printed: where peers reach us now.
    {
        let mut events = node_events.0.subscribe();
        let cancel = cancel.clone();
        tasks.spawn(
            cancel
                .run_until_cancelled_owned(async move {
                    let mut last: Option<Vec<String>> = None;
                    loop {
                        match events.recv().await {
                            Ok(Event::Announced { addresses }) => {
                                if last.as_ref() != Some(&addresses) {
                                    if last.is_some() {
                                        println!("peerchat: reachable at {}", addresses.join(", "));
                                    }
                                    last = Some(addresses);
                                }
                            }
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                })
                .map(drop),
        );
    }
    if config.desktop_notifications {
        let mut events = node_events.0.subscribe();
        let cancel = cancel.clone();
        tasks.spawn(cancel.run_until_cancelled_owned(async move {
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
        }).map(drop));
    }
    let token = token(&config.data_dir)?;
    let listener = bind_api(config).await?;
    // A second handle on the API's socket: when the disk is full, the daemon answers on it at
    // once (requests that arrive meanwhile wait in its backlog).
    let (listener, spare) = {
        let listener = listener.into_std().map_err(|e| io("API socket", e))?;
        let spare = listener.try_clone().map_err(|e| io("API socket", e))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| io("API socket", e))?;
        (listener, spare)
    };
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
        let (cancel, stop, disk_full) = (cancel.clone(), stop.clone(), disk_full.clone());
        async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = disk_full.cancelled() => {}
            }
            cancel.cancel();
        }
    };
    let app = api::router::<DaemonPorts>(api::ApiState {
        node: node.clone(),
        token,
        subscribe: Box::new(move || events.0.subscribe()),
        ui: crate::driving::ui::Sessions::persistent(config.data_dir.join(UI_SESSIONS_FILE)),
        closing: cancel.clone(),
        uploads: files.join(".peerchat").join("uploads"),
    });
    let served = api::serve(listener, app, shutdown).await;
    let full = disk_full.is_cancelled() && !stop.is_cancelled();
    let answering = if full {
        DiskFullApi::start(spare)
    } else {
        drop(spare);
        // Nobody answers there any more: the CLI and health checks must not think otherwise.
        let _ = std::fs::remove_file(config.data_dir.join(API_ADDR_FILE));
        None
    };
    cancel.cancel();
    let stopped = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        tracing::warn!("background tasks still running at shutdown; stopping anyway");
        tasks.abort_all();
    }
    if let Err(e) = node.flush().await {
        tracing::warn!(error = %e, "flushing the store at shutdown failed");
    }
    served.map_err(|e| io("serving the API", e))?;
    Ok(if full {
        Ended::DiskFull { answering }
    } else {
        Ended::Stopped
    })
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

/// Starts the network for the registered node, announces it, and maintains the node until
/// `cancel` is cancelled.
async fn run_network(
    node: Arc<DaemonNode>,
    network: LateNetwork,
    config: &DaemonConfig,
    ca: peerchat_pki::CaCertificate,
    cancel: CancellationToken,
    mut events: broadcast::Receiver<Event>,
) -> Result<(), String> {
    let identity = node.resume().map_err(|e| e.to_string())?;
    export_spans(config, Some(&identity.username));
    let ca_for_relay = ca.clone();
    let key = SigningKey::from_bytes(&identity.seed);
    let der = {
        use rustls::pki_types::pem::PemObject;
        peerchat_pki::CertificateDer::from_pem_slice(identity.certificate_pem.as_bytes())
            .map_err(|e| e.to_string())?
    };
    let credentials = Credentials::new(vec![der], key.clone());
    let trust = Arc::new(DaemonTrust::new(
        ca,
        credentials.clone(),
        key.clone(),
        config.data_dir.clone(),
    ));
    node.refresh_crl(&*trust).await;
    if trust.crl_number().is_none() {
        tracing::warn!("no CRL yet: only pinned contacts are let in until one is fetched");
    }
    let mut p2p_config =
        P2pConfig::new(key, credentials, trust.store(), vec![config.listen.clone()]);
    // The network is kept by the node (its `LateNetwork`): what the network keeps of the node
    // is weak, so that both go when the run ends.
    p2p_config.without_crl = {
        let node = Arc::downgrade(&node);
        p2p::WithoutCrl::OnlyPinned(Arc::new(move |username, key| {
            node.upgrade()
                .is_some_and(|node| node.is_pinned(username, key))
        }))
    };
    p2p_config.refused = {
        let node = Arc::downgrade(&node);
        Some(Arc::new(move |username| {
            node.upgrade().is_none_or(|node| {
                matches!(
                    node.standing(username),
                    Ok(crate::domain::Standing::Blocked)
                )
            })
        }))
    };
    p2p_config.reachability = network.reachability_sender();
    p2p_config.mdns = config.mdns;
    p2p_config.stream_protocols = vec![crate::usecases::FILE_PROTOCOL];
    // The port of the last run, when the configuration leaves it to the system: contacts that
    // know our address reach us after a restart without asking the rendezvous.
    let net = match with_port(&config.listen, saved_p2p_port(&config.data_dir)) {
        Some(previous) => {
            let mut again = p2p_config.clone();
            again.listen = vec![previous];
            match p2p::start(again, node.clone()).await {
                Ok(net) => net,
                Err(_) => p2p::start(p2p_config, node.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            }
        }
        None => p2p::start(p2p_config, node.clone())
            .await
            .map_err(|e| e.to_string())?,
    };
    if let Some(port) = net.listen_addrs().iter().find_map(tcp_port) {
        let _ = std::fs::write(config.data_dir.join(P2P_PORT_FILE), port.to_string());
    }
    trust.attach(net.clone());
    network.set(net.clone());
    // A user blocked now loses the connection they hold (and with it any sign that we are on).
    {
        let net = net.clone();
        tokio::spawn(cancel.clone().run_until_cancelled_owned(async move {
            loop {
                match events.recv().await {
                    // Lagged: some change may be among those missed.
                    Ok(Event::PersonChanged { .. })
                    | Err(broadcast::error::RecvError::Lagged(_)) => {
                        net.drop_refused().await;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
    }
    if config.relay {
        let directory = HttpDirectory::new(&config.rendezvous, ca_for_relay.clone())
            .map_err(|e| e.to_string())?;
        tokio::spawn(
            cancel
                .clone()
                .run_until_cancelled_owned(keep_relay(directory, net.clone())),
        );
    }
    let addresses = net.own_addresses();
    let schedule = Schedule {
        give_up_after: config.give_up_after,
        crl_refresh: config.crl_refresh,
        ..Schedule::default()
    };
    // Reachable before saying so.
    if let Err(e) = node
        .announce_presence(addresses.clone(), schedule.presence_ttl.as_secs())
        .await
    {
        tracing::warn!(error = %e, "announcing presence failed");
    }
    println!(
        "peerchat: {} listening on {}",
        identity.username,
        addresses.join(", ")
    );
    // Whether maintenance ends or this task is aborted, the network stops with it, before the
    // store's last flush: nothing is received (and acknowledged) after shutdown began.
    let _network = StopOnDrop(net);
    node.maintain(trust, schedule, cancel).await;
    Ok(())
}

/// How long a relay may stay without an accepted reservation before the rendezvous is asked
/// again which relay to use (the network itself retries the one it has every few seconds).
const RELAY_GRACE: Duration = Duration::from_secs(30);

/// Keeps a reservation on a relay of the rendezvous: asks where its relay is until it answers and
/// reserves a slot there; whenever that reservation is lost (or not made within
/// [`RELAY_GRACE`]), asks again. The directory moves to the next instance when one stops
/// answering, so a node given several instances reserves on another instance's relay when its
/// own dies, and the presence it announces then carries the new relayed address.
async fn keep_relay(directory: HttpDirectory, net: P2pNetwork) {
    let mut reservation = net.relay_reservation();
    let mut current: Option<libp2p::PeerId> = None;
    let mut wait = Duration::from_secs(2);
    loop {
        match directory.relay().await {
            Ok(Some(answer)) => match relay_server(&answer) {
                Some(relay) if Some(relay.peer_id) != current => {
                    tracing::info!(relay = %relay.peer_id, "using the rendezvous's relay");
                    current = Some(relay.peer_id);
                    net.use_relay(relay).await;
                }
                // The same relay: the network keeps trying it.
                Some(_) => {}
                None => {
                    tracing::warn!("the rendezvous described its relay in a form not understood");
                    return;
                }
            },
            Ok(None) => {
                tracing::info!("the rendezvous runs no relay");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "asking for the relay failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
                continue;
            }
        }
        wait = Duration::from_secs(2);
        // Wait for the reservation to be made, then for it to be lost.
        let made = tokio::time::timeout(RELAY_GRACE, reservation.wait_for(Option::is_some))
            .await
            .map(|held| held.is_ok());
        match made {
            Ok(true) => {
                if reservation.wait_for(Option::is_none).await.is_err() {
                    return;
                }
                tracing::info!("the relay reservation was lost; asking the rendezvous again");
            }
            Ok(false) => return,
            Err(_) => {
                tracing::debug!("no reservation on the relay yet; asking the rendezvous again")
            }
        }
    }
}

/// The relay of a `GET /v1/relay` answer: its `PeerId`, and the addresses that end in it.
fn relay_server(answer: &peerchat_rendezvous::api::RelayResponse) -> Option<p2p::RelayServer> {
    let peer_id: libp2p::PeerId = answer.peer_id.parse().ok()?;
    let addresses: Vec<Multiaddr> = answer
        .addresses
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| a.iter().last() == Some(libp2p::multiaddr::Protocol::P2p(peer_id)))
        .take(p2p::MAX_DIAL_ADDRESSES)
        .collect();
    (!addresses.is_empty()).then_some(p2p::RelayServer { peer_id, addresses })
}

/// Stops the network when dropped.
struct StopOnDrop(P2pNetwork);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// The TCP port of `addr`, if it has one.
fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// The port saved by the last run, if any.
fn saved_p2p_port(data_dir: &Path) -> Option<u16> {
    std::fs::read_to_string(data_dir.join(P2P_PORT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|port| *port != 0)
}

/// `listen` with its TCP port 0 replaced by `port`; `None` when `listen` names a port itself or
/// no port was saved.
fn with_port(listen: &Multiaddr, port: Option<u16>) -> Option<Multiaddr> {
    let port = port?;
    (tcp_port(listen) == Some(0)).then(|| {
        listen
            .iter()
            .map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(0) => libp2p::multiaddr::Protocol::Tcp(port),
                other => other,
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_system_chosen_port_is_replaced_by_the_saved_one_and_a_chosen_one_is_kept() {
        let any: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        assert_eq!(
            with_port(&any, Some(4711)),
            Some("/ip4/127.0.0.1/tcp/4711".parse().unwrap())
        );
        assert_eq!(with_port(&any, None), None);
        let chosen: Multiaddr = "/ip4/0.0.0.0/tcp/4001".parse().unwrap();
        assert_eq!(with_port(&chosen, Some(4711)), None);
    }
}
