//! End to end between two nodes on loopback through the use-case layer with the real adapters:
//! sled stores (every message flushed on both sides before it counts), libp2p with mutual TLS,
//! and a rendezvous service in process.
//!
//! `cargo bench -p peerchat --bench e2e`
//! (environment: `MESSAGES` for the sustained run, default 4000; `CONCURRENCY`, default 64)
//!
//! - sustained: `MESSAGES` sends from alice to bob, `CONCURRENCY` at a time; a message counts when
//!   bob has stored it durably and alice has recorded bob's acknowledgement;
//! - paced: 100 messages per second for 5 seconds, latency from `send` until bob's store holds the
//!   message (bob's `MessageReceived` event, emitted after his flush), p50 and p99.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use peerchat::daemon::{BroadcastNotifier, LateNetwork};
use peerchat::domain::MessageId;
use peerchat::driven::p2p::{self, P2pConfig};
use peerchat::driven::rendezvous_inprocess::InProcessDirectory;
use peerchat::driven::sled_store::SledStore;
use peerchat::driven::store_key::StoreKey;
use peerchat::ports::{Event, SystemClock};
use peerchat::usecases::Node;
use peerchat_pki::tls::Credentials;
use peerchat_pki::{CertificateAuthority, TrustStore, Username};
use peerchat_rendezvous::limits::{Limits, Rate};
use peerchat_rendezvous::memory_store::MemoryStore;
use peerchat_rendezvous::service::Rendezvous;
use rand::rngs::OsRng;

type BenchNode =
    Node<SledStore, InProcessDirectory<MemoryStore>, LateNetwork, BroadcastNotifier, SystemClock>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn node(
    name: &str,
    dir: &std::path::Path,
    rendezvous: &Arc<Rendezvous<MemoryStore>>,
) -> (Arc<BenchNode>, BroadcastNotifier) {
    let network = LateNetwork::default();
    let notifier = BroadcastNotifier::default();
    let node = Arc::new(Node::new(
        SledStore::open(dir, &StoreKey::from_bytes([7; 32])).unwrap(),
        InProcessDirectory::new(rendezvous.clone()),
        network.clone(),
        notifier.clone(),
        SystemClock,
    ));
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
    let trust = Arc::new(TrustStore::new(rendezvous.ca().certificate().clone()));
    let mut config = P2pConfig::new(
        key.clone(),
        Credentials::new(vec![der], key),
        trust,
        vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
    );
    config.inbound_capacity = 4096;
    let net = p2p::start(config, node.clone()).await.unwrap();
    let addresses = net.listen_addrs().iter().map(|a| a.to_string()).collect();
    network.set(net);
    node.announce_presence(addresses, 3600).await.unwrap();
    (node, notifier)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let messages = env("MESSAGES", 4000);
    let concurrency = env("CONCURRENCY", 64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let limits = Limits {
            argon2_memory_kib: 1024,
            lookups_per_user: Rate { burst: 1_000_000, period: Duration::from_nanos(1) },
            one_time_prekeys_per_pair: Rate { burst: 1_000_000, period: Duration::from_nanos(1) },
            ..Limits::default()
        };
        let ca = CertificateAuthority::generate("bench CA", SystemTime::now(), &mut OsRng).unwrap();
        let rendezvous = Arc::new(Rendezvous::new(MemoryStore::default(), ca, limits).await.unwrap());
        let (alice, _) = node("alice", &tmp.path().join("alice"), &rendezvous).await;
        let (bob, bob_events) = node("bob", &tmp.path().join("bob"), &rendezvous).await;
        let to_bob = Username::new("bob").unwrap();
        alice.send(&to_bob, MessageId::random(&mut OsRng), "warm-up".into()).await.unwrap();

        // Sustained, durable on both sides.
        let started = Instant::now();
        let mut in_flight = FuturesUnordered::new();
        let mut next = 0;
        while next < messages || !in_flight.is_empty() {
            while next < messages && in_flight.len() < concurrency {
                let (alice, to) = (alice.clone(), to_bob.clone());
                in_flight.push(tokio::spawn(async move {
                    alice.send(&to, MessageId::random(&mut OsRng), format!("message {next} with some text in it")).await.unwrap();
                }));
                next += 1;
            }
            in_flight.next().await.unwrap().unwrap();
        }
        let elapsed = started.elapsed();
        let stored = bob.history(&Username::new("alice").unwrap()).unwrap().len() - 1;
        let outbox = alice.status().unwrap().outbox;
        assert_eq!(stored, messages, "bob stored every message");
        assert_eq!(outbox, 0, "every message acknowledged");
        let per_sec = messages as f64 / elapsed.as_secs_f64();

        // Paced: 100 messages/s, latency send → stored at bob.
        let mut events = bob_events.0.subscribe();
        let pending = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<MessageId, Instant>::new()));
        let collector = {
            let pending = pending.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while let Ok(event) = events.recv().await {
                    if let Event::MessageReceived { id, .. } = event
                        && let Some(t) = pending.lock().unwrap().remove(&id)
                    {
                        latencies.push(t.elapsed());
                        if latencies.len() == 500 {
                            break;
                        }
                    }
                }
                latencies
            })
        };
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..500 {
            tick.tick().await;
            let id = MessageId::random(&mut OsRng);
            pending.lock().unwrap().insert(id, Instant::now());
            let (alice, to) = (alice.clone(), to_bob.clone());
            tokio::spawn(async move { alice.send(&to, id, format!("paced {i}")).await.unwrap() });
        }
        let mut latencies = tokio::time::timeout(Duration::from_secs(60), collector).await.unwrap().unwrap();
        latencies.sort();

        println!();
        println!("| measure | figure |");
        println!("|---|---|");
        println!("| sustained, {messages} messages, {concurrency} in flight, durable on both sides | {per_sec:.0} messages/s |");
        println!(
            "| send → stored at the receiver, 100 messages/s for 5 s, p50 / p99 | {:.2} ms / {:.2} ms |",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
    });
}
