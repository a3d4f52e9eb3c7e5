//! The peerchat rendezvous: registration and login, the certificate authority, X3DH prekey
//! bundles, exact-name lookup, presence, and an encrypted mailbox for offline recipients, served
//! as a JSON API over HTTPS (TLS 1.3, client certificates from its own CA).
//!
//! [`api`] holds the wire types the node uses. [`service`] holds the use cases over the
//! [`store::Store`] port, [`sled_store`] its embedded adapter ([`memory_store`] an in-memory one
//! for tests), [`http`] the HTTPS adapter.

pub mod api;
pub mod clock;
pub mod connections;
pub mod error;
pub mod http;
pub mod limits;
pub mod memory_store;
pub mod pg_store;
pub mod relay;
pub mod service;
pub mod sled_store;
pub mod store;
pub mod totp_key;
mod wire;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use peerchat_pki::tls::{Credentials, rendezvous_server_config};
use peerchat_pki::{CaError, CertificateAuthority, HostName, SigningKey};
use rand::rngs::OsRng;
use tokio::net::TcpListener;

use crate::limits::Limits;
use crate::service::Rendezvous;
use crate::sled_store::SledStore;
use crate::store::Store;
use crate::totp_key::TotpKey;

/// Lifetime of the HTTPS server certificate; a fresh one is issued at every start.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);

/// What the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `ca.pem`, `ca.key`, `totp.key`, the relay's key, parked files (`blobs/`) and
    /// the embedded database (`db/`), readable by the owner only.
    pub data_dir: PathBuf,
    /// Names the HTTPS certificate is valid for.
    pub hostnames: Vec<HostName>,
    /// Bounds and rates.
    pub limits: Limits,
    /// The circuit relay for nodes behind NATs (`None`: no relay).
    pub relay: Option<relay::RelayConfig>,
    /// Several instances share the data directory (and a database): the relay's key is then
    /// this instance's own, made at each start and never written, so that every instance's
    /// relay has its own peer id.
    pub shared: bool,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CA could not be loaded or created.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The server certificate could not be issued.
    #[error("issuing the HTTPS certificate: {0}")]
    ServerCertificate(#[from] peerchat_pki::IssueError),
    /// The database could not be opened.
    #[error("opening the database: {0}")]
    Store(#[from] store::StoreError),
    /// The key that seals TOTP secrets could not be loaded or created.
    #[error(transparent)]
    TotpKey(#[from] totp_key::TotpKeyError),
    /// Building the service failed.
    #[error("starting the service: {0}")]
    Service(#[from] service::ServiceError),
    /// The TLS configuration was refused.
    #[error("TLS: {0}")]
    Tls(#[from] peerchat_pki::tls::TlsError),
    /// The data directory or the relay's key could not be used.
    #[error("the data directory: {0}")]
    RelayKey(#[from] std::io::Error),
    /// The relay could not start.
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
}

/// A rendezvous ready to serve.
#[derive(Debug)]
pub struct Prepared<S: Store = SledStore> {
    /// The service.
    pub service: Arc<Rendezvous<S>>,
    /// Its TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Whether the CA was created by this start.
    pub created_ca: bool,
    /// The relay's settings and key, when it runs.
    pub relay: Option<(relay::RelayConfig, SigningKey)>,
}

/// Loads or creates the CA, issues the HTTPS certificate, opens the embedded store (sled, in
/// the data directory's `db/`).
pub async fn prepare(config: &Config, now: SystemTime) -> Result<Prepared, StartError> {
    let store = SledStore::open(&db_dir(&config.data_dir))?;
    prepare_on(config, now, store).await
}

/// [`prepare`] on `store` (a [`pg_store::PgStore`] several instances share, say): the data
/// directory then holds the CA, the TOTP sealing key and parked files, and no database.
pub async fn prepare_on<S: Store>(
    config: &Config,
    now: SystemTime,
    store: S,
) -> Result<Prepared<S>, StartError> {
    // Instances sharing the data directory may start at the same moment: one creates the CA
    // and the TOTP key, the others wait for it and load them.
    std::fs::create_dir_all(&config.data_dir)?;
    let lock = std::fs::File::create(config.data_dir.join("start.lock"))?;
    lock.lock()?;
    let (ca, created_ca) = CertificateAuthority::load_or_generate(
        &config.data_dir,
        "peerchat rendezvous CA",
        now,
        &mut OsRng,
    )?;
    let server_key = SigningKey::generate(&mut OsRng);
    let server_cert = ca.issue_server(
        &server_key.verifying_key(),
        &config.hostnames,
        now,
        SERVER_CERT_VALIDITY,
        &mut OsRng,
    )?;
    let totp_key = TotpKey::load_or_create(&config.data_dir)?;
    drop(lock);
    let relay = match &config.relay {
        Some(relay_config) if config.shared => {
            Some((relay_config.clone(), SigningKey::generate(&mut OsRng)))
        }
        Some(relay_config) => Some((
            relay_config.clone(),
            relay::load_or_create_key(&config.data_dir)?,
        )),
        None => None,
    };
    private(&config.data_dir);
    let service = Arc::new(
        Rendezvous::new(store, ca, config.limits.clone())
            .await?
            .with_totp_key(totp_key)
            .with_blobs(config.data_dir.join("blobs")),
    );
    let credentials = Credentials::new(vec![server_cert.der], server_key);
    let tls = Arc::new(rendezvous_server_config(credentials, service.trust())?);
    Ok(Prepared {
        service,
        tls,
        created_ca,
        relay,
    })
}

/// Makes the data directory and everything in it readable by its owner only: the database holds
/// password hashes, sealed TOTP secrets and everyone's mailboxes.
fn private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let walk = |path: &Path, is_dir: bool| {
        let mode = if is_dir { 0o700 } else { 0o600 };
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot restrict permissions");
        }
    };
    fn visit(path: &Path, walk: &dyn Fn(&Path, bool)) {
        let is_dir = path.is_dir();
        walk(path, is_dir);
        if is_dir && let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                visit(&entry.path(), walk);
            }
        }
    }
    visit(dir, &walk);
}

/// Where the database lives inside the data directory.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Starts the relay, when the configuration has one.
pub async fn start_relay<S: Store>(
    prepared: &Prepared<S>,
) -> Result<Option<relay::Relay>, StartError> {
    let Some((config, key)) = &prepared.relay else {
        return Ok(None);
    };
    let service = &prepared.service;
    Ok(Some(
        relay::start(
            config,
            key.clone(),
            service.ca(),
            service.trust(),
            service.now(),
        )
        .await?,
    ))
}

/// Serves until `shutdown` completes; housekeeping runs every ten minutes; everything is flushed
/// before returning. The relay, if configured, is started first.
pub async fn run<S: Store>(
    listener: TcpListener,
    prepared: Prepared<S>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let relay = start_relay(&prepared).await?;
    run_with_metrics(listener, None, prepared, relay, shutdown).await?;
    Ok(())
}

/// [`run`], with the operator's metrics (`GET /metrics`, plain HTTP) served on `metrics` too.
pub async fn run_with_metrics<S: Store>(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    prepared: Prepared<S>,
    relay: Option<relay::Relay>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (app, operator) = http::routers_with_relay(prepared.service.clone(), relay.clone());
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = metrics.map(|listener| {
        tokio::spawn(async move {
            let stopped = async {
                let _ = metrics_stopped.await;
            };
            if let Err(e) = axum::serve(listener, operator)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::warn!(error = %e, "the metrics listener failed");
            }
        })
    });
    let housekeeping = {
        let service = prepared.service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            loop {
                tick.tick().await;
                if let Err(e) = service.housekeeping().await {
                    tracing::warn!(error = %e, "housekeeping failed");
                }
            }
        })
    };
    // Deposits and CRLs of the other instances sharing the store.
    let following = {
        let service = prepared.service.clone();
        tokio::spawn(async move { service.follow_changes().await })
    };
    let result = http::serve(
        listener,
        prepared.tls,
        prepared.service.clone(),
        app,
        shutdown,
    )
    .await;
    housekeeping.abort();
    following.abort();
    if let Some(relay) = relay {
        relay.stop();
    }
    let _ = stop_metrics.send(());
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Err(e) = prepared.service.flush().await {
        tracing::error!(error = %e, "final flush failed");
    }
    result
}
