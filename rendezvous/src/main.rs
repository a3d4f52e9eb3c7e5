//! `peerchat-rendezvous`: wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use libp2p::Multiaddr;
use peerchat_pki::HostName;
use peerchat_rendezvous::limits::{Limits, Rate};
use peerchat_rendezvous::pg_store::PgStore;
use peerchat_rendezvous::relay::{self, RelayConfig, RelayLimits};
use peerchat_rendezvous::store::Store;
use peerchat_rendezvous::{Config, Prepared, prepare, prepare_on, run_with_metrics, start_relay};
use peerchat_telemetry::Telemetry;

/// The peerchat rendezvous server: accounts, certificate authority, prekeys, lookup, mailbox.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory for the CA (ca.pem, ca.key) and the database.
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_DATA_DIR")]
    data_dir: PathBuf,
    /// Keep the records in this Postgres-protocol database
    /// (`postgres://user:password@host:port/db`) instead of sled in the data directory.
    /// Several instances on one database (and one data directory, for the CA) are one service.
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
    /// Address to serve HTTPS on.
    #[arg(
        long,
        env = "PEERCHAT_RENDEZVOUS_LISTEN",
        default_value = "127.0.0.1:8443"
    )]
    listen: SocketAddr,
    /// A name of this server for its HTTPS certificate (repeat, or comma-separate in the
    /// environment). An IP address becomes an IP SAN, anything else a DNS SAN.
    #[arg(
        long = "hostname",
        env = "PEERCHAT_RENDEZVOUS_HOSTNAME",
        value_delimiter = ',',
        default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()]
    )]
    hostnames: Vec<String>,
    /// Lookups and bundle fetches allowed per user per minute (bursts of a fifth of it).
    #[arg(
        long,
        env = "PEERCHAT_RENDEZVOUS_LOOKUPS_PER_MINUTE",
        default_value_t = 1200
    )]
    lookups_per_minute: u32,
    /// Mailbox deposits allowed per user per minute (bursts of a fifth of it).
    #[arg(
        long,
        env = "PEERCHAT_RENDEZVOUS_DEPOSITS_PER_MINUTE",
        default_value_t = 1200
    )]
    deposits_per_minute: u32,
    /// Most connections open at once from one IPv4 address or IPv6 /64; further ones are
    /// closed at once.
    #[arg(
        long,
        env = "PEERCHAT_RENDEZVOUS_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 64
    )]
    max_connections_per_source: usize,
    /// Seconds after which a connection with no request in flight is closed (a request's
    /// headers must arrive within it too).
    #[arg(
        long,
        env = "PEERCHAT_RENDEZVOUS_IDLE_TIMEOUT_SECS",
        default_value_t = 30
    )]
    idle_timeout_secs: u64,
    /// Where to serve the operator's Prometheus metrics (`GET /metrics`, plain HTTP). Keep it on
    /// loopback or an operator network; `127.0.0.1:0` picks a free port (printed at start).
    #[arg(
        long,
        env = "PEERCHAT_RENDEZVOUS_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: SocketAddr,
    /// Also write the CA certificate (public, PEM) to this file, for nodes to trust without a
    /// manual step (e.g. a volume shared with node containers). The CA key never leaves
    /// `--data-dir`.
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_CA_CERT_OUT")]
    ca_cert_out: Option<PathBuf>,
    /// Where the circuit relay for nodes behind NATs listens (repeat for several). The relay
    /// admits only peers with a certificate of this CA.
    #[arg(
        long,
        env = "PEERCHAT_RENDEZVOUS_RELAY_LISTEN",
        value_delimiter = ',',
        default_values_t = vec![relay::default_listen()]
    )]
    relay_listen: Vec<Multiaddr>,
    /// The relay's public address, when it differs from the listen address (behind a NAT or in a
    /// container); repeat for several. `GET /v1/relay` gives these to nodes.
    #[arg(
        long,
        env = "PEERCHAT_RENDEZVOUS_RELAY_ANNOUNCE",
        value_delimiter = ','
    )]
    relay_announce: Vec<Multiaddr>,
    /// Run no relay.
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_NO_RELAY")]
    no_relay: bool,
    /// Relay reservations held at once, all users together.
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_RELAY_MAX_RESERVATIONS", default_value_t = RelayLimits::default().max_reservations)]
    relay_max_reservations: usize,
    /// Relay reservations held at once by one user (device).
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_RELAY_MAX_RESERVATIONS_PER_USER", default_value_t = RelayLimits::default().max_reservations_per_user)]
    relay_max_reservations_per_user: usize,
    /// Relayed circuits open at once, all users together.
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_RELAY_MAX_CIRCUITS", default_value_t = RelayLimits::default().max_circuits)]
    relay_max_circuits: usize,
    /// Relayed circuits open at once to or from one user (device).
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_RELAY_MAX_CIRCUITS_PER_USER", default_value_t = RelayLimits::default().max_circuits_per_user)]
    relay_max_circuits_per_user: usize,
    /// Bytes one circuit may carry (both directions) before the relay closes it.
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_RELAY_MAX_CIRCUIT_BYTES", default_value_t = RelayLimits::default().max_circuit_bytes)]
    relay_max_circuit_bytes: u64,
    /// Seconds one circuit may stay open before the relay closes it.
    #[arg(long, env = "PEERCHAT_RENDEZVOUS_RELAY_MAX_CIRCUIT_SECS", default_value_t = RelayLimits::default().max_circuit_duration.as_secs())]
    relay_max_circuit_secs: u64,
}

fn per_minute(n: u32) -> Rate {
    let n = n.max(1);
    Rate {
        burst: (n / 5).max(1),
        period: Duration::from_secs(60) / n,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = Telemetry::init("info", "rendezvous");
    let outcome = serve(args).await;
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerchat-rendezvous: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), BoxError> {
    let config = Config {
        data_dir: args.data_dir.clone(),
        hostnames: args.hostnames.iter().map(|h| HostName::parse(h)).collect(),
        limits: Limits {
            lookups_per_user: per_minute(args.lookups_per_minute),
            deposits_per_user: per_minute(args.deposits_per_minute),
            max_connections_per_source: args.max_connections_per_source.max(1),
            idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
            ..Limits::default()
        },
        shared: args.database.is_some(),
        relay: (!args.no_relay).then(|| RelayConfig {
            listen: args.relay_listen.clone(),
            announce: args.relay_announce.clone(),
            limits: RelayLimits {
                max_reservations: args.relay_max_reservations.max(1),
                max_reservations_per_user: args.relay_max_reservations_per_user.max(1),
                max_circuits: args.relay_max_circuits,
                max_circuits_per_user: args.relay_max_circuits_per_user,
                max_circuit_bytes: args.relay_max_circuit_bytes,
                max_circuit_duration: Duration::from_secs(args.relay_max_circuit_secs.max(1)),
                ..RelayLimits::default()
            },
        }),
    };
    match &args.database {
        Some(url) => {
            let store = PgStore::connect(url).await?;
            let prepared = prepare_on(&config, SystemTime::now(), store).await?;
            serve_prepared(args, prepared).await
        }
        None => {
            let prepared = prepare(&config, SystemTime::now()).await?;
            serve_prepared(args, prepared).await
        }
    }
}

async fn serve_prepared<S: Store>(args: Args, prepared: Prepared<S>) -> Result<(), BoxError> {
    if let Some(out) = &args.ca_cert_out {
        // Written whole, then renamed: a reader never sees half a certificate.
        let partial = out.with_extension("partial");
        std::fs::write(&partial, prepared.service.ca().certificate().to_pem())?;
        std::fs::rename(&partial, out)?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let metrics = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| format!("metrics address {}: {e}", args.metrics_listen))?;
    let fingerprint = prepared.service.ca().certificate().fingerprint();
    let relay = start_relay(&prepared).await?;
    let relay_line = match &relay {
        Some(relay) => format!(
            "; relay on {}",
            relay
                .addresses()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        None => String::new(),
    };
    // One line, so that whoever reads the first line learns every address.
    println!(
        "peerchat rendezvous on https://{} (CA {}: {}){relay_line}; metrics on http://{}/metrics",
        listener.local_addr()?,
        if prepared.created_ca {
            "created"
        } else {
            "loaded"
        },
        fingerprint,
        metrics.local_addr()?
    );
    tracing::info!(addr = %listener.local_addr()?, ca = %fingerprint, "serving");
    run_with_metrics(listener, Some(metrics), prepared, relay, shutdown_signal()).await?;
    tracing::info!("stopped; everything flushed");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The binary reports any error as one line.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
