//! The peerchat rendezvous: registration and login, the certificate authority, X3DH prekey
//! bundles, exact-name lookup, presence, and an encrypted mailbox for offline recipients, served
//! as a JSON API over HTTPS (TLS 1.3, client certificates from its own CA).
//!
//! [`api`] holds the wire types the node uses. [`service`] holds the use cases over the
//! [`store::Store`] port, [`sled_store`] its embedded adapter ([`memory_store`] an in-memory one
//! for tests), [`http`] the HTTPS adapter.

pub mod api;
pub mod connections;
pub mod error;
pub mod http;
pub mod limits;
pub mod memory_store;
pub mod service;
pub mod sled_store;
pub mod store;

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

/// Lifetime of the HTTPS server certificate; a fresh one is issued at every start.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);

/// What the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `ca.pem`, `ca.key` and the database (`db/`).
    pub data_dir: PathBuf,
    /// Names the HTTPS certificate is valid for.
    pub hostnames: Vec<HostName>,
    /// Bounds and rates.
    pub limits: Limits,
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
    /// Building the service failed.
    #[error("starting the service: {0}")]
    Service(#[from] error::ApiError),
    /// The TLS configuration was refused.
    #[error("TLS: {0}")]
    Tls(#[from] peerchat_pki::tls::TlsError),
}

/// A rendezvous ready to serve.
#[derive(Debug)]
pub struct Prepared {
    /// The service.
    pub service: Arc<Rendezvous<SledStore>>,
    /// Its TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Whether the CA was created by this start.
    pub created_ca: bool,
}

/// Loads or creates the CA, issues the HTTPS certificate, opens the store.
pub fn prepare(config: &Config, now: SystemTime) -> Result<Prepared, StartError> {
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
    let store = SledStore::open(&db_dir(&config.data_dir))?;
    let service = Arc::new(Rendezvous::new(store, ca, config.limits.clone(), now)?);
    let credentials = Credentials::new(vec![server_cert.der], server_key);
    let tls = Arc::new(rendezvous_server_config(credentials, service.trust())?);
    Ok(Prepared {
        service,
        tls,
        created_ca,
    })
}

/// Where the database lives inside the data directory.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Serves until `shutdown` completes; housekeeping runs every ten minutes; everything is flushed
/// before returning.
pub async fn run(
    listener: TcpListener,
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = http::router(prepared.service.clone());
    let housekeeping = {
        let service = prepared.service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            loop {
                tick.tick().await;
                if let Err(e) = service.housekeeping(SystemTime::now()).await {
                    tracing::warn!(error = %e, "housekeeping failed");
                }
            }
        })
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
    if let Err(e) = prepared.service.flush().await {
        tracing::error!(error = %e, "final flush failed");
    }
    result
}
