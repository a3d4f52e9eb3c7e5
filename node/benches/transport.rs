//! The libp2p transport between two nodes on loopback, side by side with a plain tokio-rustls
//! mutual-TLS socket doing the same exchange (the ceiling of this machine).
//!
//! `cargo bench -p peerchat --bench transport`
//! (environment: `ENVELOPES`, default 20000; `WINDOW` in flight, default 256; `BULK` MiB, default 200)
//!
//! - pipelined: `ENVELOPES` envelopes of 1 KiB, `WINDOW` in flight, each acknowledged;
//!   envelopes/s and p50/p99 round trip (send → acknowledgement) under that load;
//! - sequential: 2,000 envelopes of 1 KiB one at a time, p50/p99 round trip;
//! - bulk: `BULK` payloads of 1 MiB, `BULK_WINDOW` in flight (default 16), MiB/s.
//!
//! The plain socket uses the same TLS configurations (`pki::tls` peer configs, Ed25519
//! certificates from the same CA) and the same framing: 4-byte length, payload, 1-byte ack.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use peerchat::domain::{Ack, Envelope, IdentityKey, MessageId};
use peerchat::driven::p2p::{P2pConfig, P2pNetwork, start};
use peerchat::ports::{EnvelopeFn, Messages, Recipient};
use peerchat_pki::tls::{Credentials, PEER_SERVER_NAME, peer_client_config, peer_server_config};
use peerchat_pki::{CertificateAuthority, TrustStore, Username, build_csr};
use rand::rngs::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Identity {
    name: Username,
    key: SigningKey,
    credentials: Arc<Credentials>,
    trust: Arc<TrustStore>,
}

fn identity(ca: &CertificateAuthority, name: &str) -> Identity {
    let key = SigningKey::generate(&mut OsRng);
    let name = Username::new(name).unwrap();
    let cert = ca
        .issue_peer(
            &build_csr(&key, &name).unwrap(),
            &name,
            SystemTime::now(),
            Duration::from_secs(86400),
            &mut OsRng,
        )
        .unwrap();
    Identity {
        credentials: Credentials::new(vec![cert.der], key.clone()),
        trust: Arc::new(TrustStore::new(ca.certificate().clone())),
        name,
        key,
    }
}

async fn node(id: &Identity) -> P2pNetwork {
    let mut config = P2pConfig::new(
        id.key.clone(),
        id.credentials.clone(),
        id.trust.clone(),
        vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
    );
    config.max_envelope_bytes = 2 * MIB;
    config.inbound_capacity = 4096;
    config.request_timeout = Duration::from_secs(60);
    start(config, Arc::new(EnvelopeFn(|_, _| async { Ack::Stored })))
        .await
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Figures {
    pipelined_per_sec: f64,
    pipelined_p50: Duration,
    pipelined_p99: Duration,
    sequential_p50: Duration,
    sequential_p99: Duration,
    bulk_mib_per_sec: f64,
}

/// Runs `count` requests with `window` in flight; returns elapsed time and each round trip.
async fn drive<F, Fut>(count: usize, window: usize, send: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut rtts = Vec::with_capacity(count);
    let mut next = 0;
    while next < count || !in_flight.is_empty() {
        while next < count && in_flight.len() < window {
            let fut = send(next);
            in_flight.push(async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            });
            next += 1;
        }
        if let Some(rtt) = in_flight.next().await {
            rtts.push(rtt);
        }
    }
    let elapsed = started.elapsed();
    rtts.sort();
    (elapsed, rtts)
}

async fn libp2p_figures(
    ca: &CertificateAuthority,
    envelopes: usize,
    window: usize,
    bulk: usize,
) -> Figures {
    let (alice_id, bob_id) = (identity(ca, "alice"), identity(ca, "bob"));
    let alice = node(&alice_id).await;
    let bob = node(&bob_id).await;
    let to_bob = Recipient {
        username: bob_id.name.clone(),
        identity_key: IdentityKey::from_verifying_key(bob_id.key.verifying_key()),
        addresses: bob.listen_addrs().iter().map(|a| a.to_string()).collect(),
    };
    let send = |size: usize| {
        let (alice, to_bob) = (alice.clone(), to_bob.clone());
        async move {
            let envelope = Envelope {
                id: MessageId::random(&mut OsRng),
                trace: None,
                payload: vec![0x5a; size],
            };
            assert_eq!(alice.deliver(&to_bob, envelope).await, Ok(Ack::Stored));
        }
    };
    send(KIB).await; // connect
    let (elapsed, pipelined) = drive(envelopes, window, |_| send(KIB)).await;
    let (_, sequential) = drive(2000, 1, |_| send(KIB)).await;
    let (bulk_elapsed, _) = drive(bulk, env("BULK_WINDOW", 16), |_| send(MIB)).await;
    Figures {
        pipelined_per_sec: envelopes as f64 / elapsed.as_secs_f64(),
        pipelined_p50: percentile(&pipelined, 0.50),
        pipelined_p99: percentile(&pipelined, 0.99),
        sequential_p50: percentile(&sequential, 0.50),
        sequential_p99: percentile(&sequential, 0.99),
        bulk_mib_per_sec: bulk as f64 / bulk_elapsed.as_secs_f64(),
    }
}

/// The ceiling: one mutual-TLS connection, frames written by one task, acks read by another,
/// round trips matched in order.
async fn plain_tls_figures(
    ca: &CertificateAuthority,
    envelopes: usize,
    window: usize,
    bulk: usize,
) -> Figures {
    let (alice_id, bob_id) = (identity(ca, "alice"), identity(ca, "bob"));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        peer_server_config(bob_id.credentials, bob_id.trust).unwrap(),
    ));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        peer_client_config(alice_id.credentials, alice_id.trust).unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let (mut r, mut w) = tokio::io::split(tls);
        let mut buf = vec![0u8; 2 * MIB];
        loop {
            let mut len = [0u8; 4];
            if r.read_exact(&mut len).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes(len) as usize;
            r.read_exact(&mut buf[..len]).await.unwrap();
            w.write_all(&[1]).await.unwrap();
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from(PEER_SERVER_NAME).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (r, w) = tokio::io::split(tls);
    let writer = Arc::new(tokio::sync::Mutex::new(w));
    let reader = Arc::new(tokio::sync::Mutex::new(r));
    // Requests are written and acknowledged in order; a round trip holds the reader for its ack
    // only after writing, so the window stays pipelined.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<()>>();
    {
        let reader = reader.clone();
        tokio::spawn(async move {
            let mut r = reader.lock().await;
            let mut ack = [0u8; 1];
            while let Some(done) = rx.recv().await {
                r.read_exact(&mut ack).await.unwrap();
                let _ = done.send(());
            }
        });
    }
    let send = |size: usize| {
        let (writer, tx) = (writer.clone(), tx.clone());
        async move {
            let (done, wait) = tokio::sync::oneshot::channel();
            {
                let mut w = writer.lock().await;
                tx.send(done).unwrap();
                w.write_all(&(size as u32).to_be_bytes()).await.unwrap();
                w.write_all(&vec![0x5a; size]).await.unwrap();
                w.flush().await.unwrap();
            }
            wait.await.unwrap();
        }
    };
    let (elapsed, pipelined) = drive(envelopes, window, |_| send(KIB)).await;
    let (_, sequential) = drive(2000, 1, |_| send(KIB)).await;
    let (bulk_elapsed, _) = drive(bulk, env("BULK_WINDOW", 16), |_| send(MIB)).await;
    Figures {
        pipelined_per_sec: envelopes as f64 / elapsed.as_secs_f64(),
        pipelined_p50: percentile(&pipelined, 0.50),
        pipelined_p99: percentile(&pipelined, 0.99),
        sequential_p50: percentile(&sequential, 0.50),
        sequential_p99: percentile(&sequential, 0.99),
        bulk_mib_per_sec: bulk as f64 / bulk_elapsed.as_secs_f64(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let envelopes = env("ENVELOPES", 20_000);
    let window = env("WINDOW", 256);
    let bulk = env("BULK", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = CertificateAuthority::generate("bench CA", SystemTime::now(), &mut OsRng).unwrap();
    let p2p = runtime.block_on(libp2p_figures(&ca, envelopes, window, bulk));
    let plain = runtime.block_on(plain_tls_figures(&ca, envelopes, window, bulk));
    println!();
    println!(
        "{envelopes} envelopes of 1 KiB with {window} in flight; 2,000 one at a time; {bulk} × 1 MiB with {} in flight",
        env("BULK_WINDOW", 16)
    );
    println!("| measure | peerchat libp2p | plain tokio-rustls mTLS | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| pipelined 1 KiB envelopes/s | {:.0} | {:.0} | {:.0}% |",
        p2p.pipelined_per_sec,
        plain.pipelined_per_sec,
        100.0 * p2p.pipelined_per_sec / plain.pipelined_per_sec
    );
    println!(
        "| round trip under that load, p50 / p99 | {} / {} | {} / {} | |",
        ms(p2p.pipelined_p50),
        ms(p2p.pipelined_p99),
        ms(plain.pipelined_p50),
        ms(plain.pipelined_p99)
    );
    println!(
        "| round trip one at a time, p50 / p99 | {} / {} | {} / {} | |",
        ms(p2p.sequential_p50),
        ms(p2p.sequential_p99),
        ms(plain.sequential_p50),
        ms(plain.sequential_p99)
    );
    println!(
        "| bulk 1 MiB payloads, MiB/s | {:.0} | {:.0} | {:.0}% |",
        p2p.bulk_mib_per_sec,
        plain.bulk_mib_per_sec,
        100.0 * p2p.bulk_mib_per_sec / plain.bulk_mib_per_sec
    );
}
