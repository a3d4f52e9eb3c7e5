//! `peerchat demo`: an embedded rendezvous and two nodes (alice and bob) on 127.0.0.1, ready to
//! chat with the CLI; no external service.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use peerchat_pki::{HostName, Username};
use peerchat_rendezvous::limits::Limits;
use reqwest::Method;
use tokio::sync::watch;

use crate::daemon::{self, API_ADDR_FILE, DaemonConfig, DaemonError};
use crate::driving::api::RegisterBody;
use crate::driving::cli::ApiClient;
use crate::usecases::NodeStatus;

/// The demo users' password (it protects nothing but the demo's own rendezvous).
pub const DEMO_PASSWORD: &str = "peerchat demo password";
/// The demo users.
pub const USERS: [&str; 2] = ["alice", "bob"];

async fn wait_for_api(dir: &Path) -> Result<ApiClient, DaemonError> {
    for _ in 0..300 {
        if dir.join(API_ADDR_FILE).exists()
            && let Ok(client) = ApiClient::from_data_dir(dir)
            && client
                .call::<(), NodeStatus>(Method::GET, "/api/v1/status", None)
                .await
                .is_ok()
        {
            return Ok(client);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DaemonError::Start(format!(
        "the node in {} did not start",
        dir.display()
    )))
}

/// `/ip4/127.0.0.1/tcp/0`: the demo's relay, like everything else, lives on loopback.
fn loopback_any_port() -> libp2p::Multiaddr {
    libp2p::Multiaddr::empty()
        .with(libp2p::multiaddr::Protocol::Ip4(
            std::net::Ipv4Addr::LOCALHOST,
        ))
        .with(libp2p::multiaddr::Protocol::Tcp(0))
}

/// Runs the demo under `base` until `shutdown` completes.
pub async fn run(
    base: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let (stop, stopped) = watch::channel(false);
    // The rendezvous stops after the nodes, so that no node sees it gone while still running.
    let (stop_rendezvous, rendezvous_stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };

    let rendezvous_dir = base.join("rendezvous");
    let config = peerchat_rendezvous::Config {
        data_dir: rendezvous_dir.clone(),
        hostnames: vec![HostName::parse("localhost"), HostName::parse("127.0.0.1")],
        limits: Limits::default(),
        shared: false,
        relay: Some(peerchat_rendezvous::relay::RelayConfig {
            listen: vec![loopback_any_port()],
            ..Default::default()
        }),
    };
    let prepared = peerchat_rendezvous::prepare(&config, SystemTime::now())
        .await
        .map_err(|e| DaemonError::Start(e.to_string()))?;
    let fingerprint = prepared.service.ca().certificate().fingerprint();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DaemonError::Io(e.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(|e| DaemonError::Io(e.to_string()))?
        .port();
    let rendezvous = tokio::spawn(peerchat_rendezvous::run(
        listener,
        prepared,
        signal(rendezvous_stopped),
    ));
    let url = format!("https://localhost:{port}");
    println!("peerchat demo: rendezvous on {url}, CA {fingerprint}");
    println!("  (each node prints the CA it pinned: it must be this one)");

    let mut nodes = Vec::new();
    let mut links = Vec::new();
    for name in USERS {
        let dir = base.join(name);
        let _ = std::fs::remove_file(dir.join(API_ADDR_FILE));
        let config = DaemonConfig {
            data_dir: dir.clone(),
            rendezvous: vec![url.clone()],
            ca_cert: Some(rendezvous_dir.join("ca.pem")),
            api: "127.0.0.1:0"
                .parse()
                .map_err(|_| DaemonError::Start("API address".into()))?,
            listen: "/ip4/127.0.0.1/tcp/0"
                .parse()
                .map_err(|_| DaemonError::Start("listen address".into()))?,
            api_any_address: false,
            read_receipts: true,
            crl_refresh: Duration::from_secs(300),
            give_up_after: daemon::GIVE_UP_AFTER,
            desktop_notifications: false,
            mdns: false,
            relay: true,
            file_limits: crate::usecases::FileLimits::default(),
            download_dir: None,
            // The demo's accounts have a known password; their store keys lie beside their data.
            store_key: crate::driven::store_key::KeyOptions {
                plain: true,
                throwaway: true,
                ..Default::default()
            },
            // One process, one service name (`peerchat-demo`), set by the caller.
            telemetry: None,
        };
        nodes.push(tokio::spawn(daemon::run(config, signal(stopped.clone()))));
        let client = wait_for_api(&dir).await?;
        let status: NodeStatus = client
            .call::<(), _>(Method::GET, "/api/v1/status", None)
            .await
            .map_err(|e| DaemonError::Start(e.0))?;
        let link: crate::driving::ui::UiLink = client
            .call::<(), _>(Method::POST, "/api/v1/ui/link", None)
            .await
            .map_err(|e| DaemonError::Start(e.0))?;
        links.push((name, format!("{}{}", client.base(), link.path)));
        if status.username.is_none() {
            let body = RegisterBody {
                username: Username::new(name).map_err(|e| DaemonError::Start(e.to_string()))?,
                password: DEMO_PASSWORD.into(),
            };
            client
                .call::<_, ()>(Method::POST, "/api/v1/register", Some(&body))
                .await
                .map_err(|e| DaemonError::Start(e.0))?;
        }
    }

    let exe = std::env::args().next().unwrap_or_else(|| "peerchat".into());
    let a = base.join("alice");
    let b = base.join("bob");
    println!();
    println!("peerchat demo: alice and bob are online. In another terminal:");
    println!("  {exe} --data-dir {} send bob \"Hello Bob\"", a.display());
    println!("  {exe} --data-dir {} history alice", b.display());
    println!("  {exe} --data-dir {} send alice \"Hi Alice\"", b.display());
    println!("  {exe} --data-dir {} watch", a.display());
    println!("Or chat in the browser (each link works once, for a few minutes):");
    for (name, link) in &links {
        println!("  {name}: {link}");
    }
    println!("  for a new link: {exe} --data-dir {} ui", a.display());
    println!(
        "Ctrl-C stops the demo; its data stays in {}.",
        base.display()
    );

    shutdown.await;
    let _ = stop.send(true);
    for node in nodes {
        let _ = node.await;
    }
    let _ = stop_rendezvous.send(true);
    let _ = rendezvous.await;
    println!("peerchat demo: stopped");
    Ok(())
}
