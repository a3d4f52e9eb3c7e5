//! A file node to node on loopback, side by side in the same run with a plain tokio-rustls
//! mutual-TLS copy of the same file between the same two certificates (the ceiling).
//!
//! `cargo bench -p peerchat --bench file` (environment: `FILE_MB`, default 100)
//!
//! - peerchat: alice offers the file (kept and hashed first, timed apart), bob fetches it over
//!   `/peerchat/file/1` through the use case: each 1 MiB chunk sealed by alice, opened, written
//!   in place and synced by bob, its progress committed and flushed in bob's sled store, the whole
//!   hashed and moved into the download directory;
//! - plain TLS: alice reads the file in 1 MiB chunks and writes them framed to a mutual-TLS
//!   socket; bob writes each into the destination file and syncs it (the same durability per
//!   chunk), no encryption beyond TLS, no digest.
//!
//! Peak RSS growth during the fetch is read from `VmHWM` after resetting it (`clear_refs`); both
//! nodes live in this one process, so it is the growth of both together.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use peerchat::daemon::{BroadcastNotifier, LateNetwork};
use peerchat::driven::p2p::{self, P2pConfig};
use peerchat::driven::rendezvous_inprocess::InProcessDirectory;
use peerchat::driven::sled_store::SledStore;
use peerchat::driven::store_key::StoreKey;
use peerchat::ports::SystemClock;
use peerchat::usecases::{FILE_PROTOCOL, FileLimits, Node};
use peerchat_pki::tls::{Credentials, PEER_SERVER_NAME, peer_client_config, peer_server_config};
use peerchat_pki::{CertificateAuthority, TrustStore, Username};
use peerchat_rendezvous::limits::{Limits, Rate};
use peerchat_rendezvous::memory_store::MemoryStore;
use peerchat_rendezvous::service::Rendezvous;
use rand::RngCore;
use rand::rngs::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

/// One side's TLS identity: its credentials and the CA it trusts.
type Side = (Arc<Credentials>, Arc<TrustStore>);

type BenchNode =
    Node<SledStore, InProcessDirectory<MemoryStore>, LateNetwork, BroadcastNotifier, SystemClock>;

async fn node(
    name: &str,
    dir: &std::path::Path,
    rendezvous: &Arc<Rendezvous<MemoryStore>>,
) -> (Arc<BenchNode>, Arc<Credentials>, Arc<TrustStore>) {
    let network = LateNetwork::default();
    let store = SledStore::open(&dir.join("db"), &StoreKey::from_bytes([7; 32]))
        .unwrap()
        .with_files(&dir.join("files"), &dir.join("files"));
    let node = Arc::new(
        Node::new(
            store,
            InProcessDirectory::new(rendezvous.clone()),
            network.clone(),
            BroadcastNotifier::default(),
            SystemClock,
        )
        .with_file_limits(FileLimits {
            max_bytes: 4 << 30,
            auto_download_bytes: 4 << 30,
        }),
    );
    let username = Username::new(name).unwrap();
    node.register(&username, "correct horse battery")
        .await
        .unwrap();
    let identity = node.resume().unwrap();
    let key = SigningKey::from_bytes(&identity.seed);
    let der = {
        use rustls::pki_types::pem::PemObject;
        peerchat_pki::CertificateDer::from_pem_slice(identity.certificate_pem.as_bytes()).unwrap()
    };
    let credentials = Credentials::new(vec![der], key.clone());
    let trust = Arc::new(TrustStore::new(rendezvous.ca().certificate().clone()));
    let mut config = P2pConfig::new(
        key,
        credentials.clone(),
        trust.clone(),
        vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
    );
    config.stream_protocols = vec![FILE_PROTOCOL];
    let net = p2p::start(config, node.clone()).await.unwrap();
    let addresses = net.listen_addrs().iter().map(|a| a.to_string()).collect();
    network.set(net);
    node.announce_presence(addresses, 3600).await.unwrap();
    (node, credentials, trust)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS, runs `work`, and returns how far the peak rose above the RSS before.
async fn peak_growth_mib<F: std::future::Future<Output = ()>>(work: F) -> f64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kib("VmRSS:");
    work.await;
    status_kib("VmHWM:").saturating_sub(before) as f64 / 1024.0
}

async fn plain_copy(
    source: &std::path::Path,
    target: &std::path::Path,
    (alice, bob): (Side, Side),
) -> Duration {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(peer_server_config(bob.0, bob.1).unwrap()));
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(peer_client_config(alice.0, alice.1).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target = target.to_path_buf();
    let receiver = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut out = tokio::fs::File::create(&target).await.unwrap();
        let mut buf = vec![0u8; MIB];
        loop {
            let mut len = [0u8; 4];
            if tls.read_exact(&mut len).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                break;
            }
            tls.read_exact(&mut buf[..len]).await.unwrap();
            out.write_all(&buf[..len]).await.unwrap();
            out.sync_data().await.unwrap();
        }
    });
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from(PEER_SERVER_NAME).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut input = tokio::fs::File::open(source).await.unwrap();
    let mut buf = vec![0u8; MIB];
    loop {
        let mut n = 0;
        while n < MIB {
            let read = input.read(&mut buf[n..]).await.unwrap();
            if read == 0 {
                break;
            }
            n += read;
        }
        tls.write_all(&(n as u32).to_be_bytes()).await.unwrap();
        if n == 0 {
            break;
        }
        tls.write_all(&buf[..n]).await.unwrap();
    }
    tls.flush().await.unwrap();
    receiver.await.unwrap();
    started.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let megabytes: usize = std::env::var("FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let tmp = tempfile::tempdir().unwrap();
        let unlimited = Rate {
            burst: 1_000_000,
            period: Duration::from_nanos(1),
        };
        let limits = Limits {
            argon2_memory_kib: 1024,
            lookups_per_user: unlimited,
            one_time_prekeys_per_pair: unlimited,
            ..Limits::default()
        };
        let ca = CertificateAuthority::generate("bench CA", SystemTime::now(), &mut OsRng).unwrap();
        let rendezvous = Arc::new(Rendezvous::new(MemoryStore::default(), ca, limits).await.unwrap());
        let (alice, alice_credentials, alice_trust) =
            node("alice", &tmp.path().join("alice"), &rendezvous).await;
        let (bob, bob_credentials, bob_trust) =
            node("bob", &tmp.path().join("bob"), &rendezvous).await;

        let size = megabytes * 1_000_000;
        let source = tmp.path().join("source.bin");
        {
            let mut bytes = vec![0u8; size];
            OsRng.fill_bytes(&mut bytes);
            std::fs::write(&source, &bytes).unwrap();
        }
        let mib = size as f64 / MIB as f64;

        let started = Instant::now();
        let id = alice
            .send_file(&Username::new("bob").unwrap(), &source)
            .await
            .unwrap();
        let offered = started.elapsed();
        let mut fetched = Duration::ZERO;
        let node_peak = peak_growth_mib(async {
            let started = Instant::now();
            assert_eq!(bob.fetch_files().await.unwrap(), 1);
            fetched = started.elapsed();
        })
        .await;
        let saved = bob.file(&id).unwrap().saved_as.unwrap();
        assert_eq!(std::fs::metadata(&saved).unwrap().len(), size as u64);

        let mut plain = Duration::ZERO;
        let plain_peak = peak_growth_mib(async {
            plain = plain_copy(
                &source,
                &tmp.path().join("plain.bin"),
                ((alice_credentials, alice_trust), (bob_credentials, bob_trust)),
            )
            .await;
        })
        .await;

        let rate = |d: Duration| mib / d.as_secs_f64();
        println!("{megabytes} MB file, node to node on loopback, one run:");
        println!("| | time | MiB/s | peak RSS growth (both sides) |");
        println!("|---|---|---|---|");
        println!(
            "| peerchat fetch (`/peerchat/file/1`, chunks sealed, synced, progress committed, SHA-256 checked) | {:.2} s | **{:.0}** | {node_peak:.1} MiB |",
            fetched.as_secs_f64(),
            rate(fetched)
        );
        println!(
            "| plain tokio-rustls mTLS copy, synced per MiB | {:.2} s | {:.0} | {plain_peak:.1} MiB |",
            plain.as_secs_f64(),
            rate(plain)
        );
        println!(
            "| ratio | | **{:.0}%** | |",
            100.0 * rate(fetched) / rate(plain)
        );
        println!(
            "(offering it first — copying into the sender's keeping and hashing — took {:.2} s)",
            offered.as_secs_f64()
        );
    });
}
