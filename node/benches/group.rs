//! One message to a 200-member group against 199 one-to-one messages to the same members, in one
//! run: 200 nodes in this process on real sled stores (every step flushed), with real Double
//! Ratchet sessions set up by X3DH, connected by the in-process hub (no sockets: what is measured
//! is the node's own work, sender and receivers together on this machine's cores).
//!
//! `cargo bench -p peerchat --bench group` (environment: `MEMBERS`, default 200; `ROUNDS`,
//! default 5)
//!
//! - encrypt and commit: from the call until the sender's store holds every envelope durably
//!   (the first delivery attempt for the group, which follows its single commit and flush; the
//!   last member's delivery attempt for the one-to-one sends, each after its own commit and
//!   flush), deliveries held back meanwhile;
//! - all stored: from the call until every member acknowledged its copy (stored and flushed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use peerchat::domain::{Ack, Envelope, GroupId, MessageId};
use peerchat::driven::memory::{Hub, HubNetwork, RecordingNotifier};
use peerchat::driven::rendezvous_inprocess::InProcessDirectory;
use peerchat::driven::sled_store::SledStore;
use peerchat::driven::store_key::StoreKey;
use peerchat::ports::{
    DeliveryError, Messages, PeerConnection, PeerStream, Reachability, ReachabilityEvent,
    Recipient, StreamError, Streams, SystemClock,
};
use peerchat::usecases::Node;
use peerchat_pki::{CertificateAuthority, Username};
use peerchat_rendezvous::limits::{Limits, Rate};
use peerchat_rendezvous::memory_store::MemoryStore;
use peerchat_rendezvous::service::Rendezvous;
use rand::rngs::OsRng;

/// The hub, with deliveries held back while the gate is closed, counting delivery attempts.
#[derive(Clone)]
struct Gated {
    inner: HubNetwork,
    open: tokio::sync::watch::Receiver<bool>,
    attempts: Arc<AtomicUsize>,
    reached: Arc<tokio::sync::Notify>,
}

impl Messages for Gated {
    async fn deliver(&self, to: &Recipient, envelope: Envelope) -> Result<Ack, DeliveryError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.reached.notify_waiters();
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.inner.deliver(to, envelope).await
    }
}

impl Streams for Gated {
    async fn open_stream(
        &self,
        to: &Recipient,
        protocol: &'static str,
    ) -> Result<PeerStream, StreamError> {
        self.inner.open_stream(to, protocol).await
    }
}

impl Reachability for Gated {
    fn own_addresses(&self) -> Vec<String> {
        self.inner.own_addresses()
    }
    fn connection(&self, peer: &Username) -> Option<PeerConnection> {
        self.inner.connection(peer)
    }
    fn reachability(&self) -> tokio::sync::broadcast::Receiver<ReachabilityEvent> {
        self.inner.reachability()
    }
}

type BenchNode =
    Node<SledStore, InProcessDirectory<MemoryStore>, Gated, RecordingNotifier, SystemClock>;

struct Sender {
    gate: tokio::sync::watch::Sender<bool>,
    attempts: Arc<AtomicUsize>,
    reached: Arc<tokio::sync::Notify>,
}

impl Sender {
    /// Runs `work` with deliveries held until `attempts` delivery attempts were made; returns
    /// the time until then and the time until `work` finished.
    async fn measure<F: std::future::Future<Output = ()> + Send + 'static>(
        &self,
        attempts: usize,
        work: F,
    ) -> (Duration, Duration) {
        self.gate.send_replace(false);
        self.attempts.store(0, Ordering::SeqCst);
        let started = Instant::now();
        let task = tokio::spawn(work);
        loop {
            let reached = self.reached.notified();
            if self.attempts.load(Ordering::SeqCst) >= attempts {
                break;
            }
            reached.await;
        }
        let committed = started.elapsed();
        self.gate.send_replace(true);
        task.await.unwrap();
        (committed, started.elapsed())
    }
}

async fn node(
    name: &Username,
    dir: &std::path::Path,
    hub: &Hub,
    rendezvous: &Arc<Rendezvous<MemoryStore>>,
) -> (Arc<BenchNode>, Sender) {
    let (network, inbound) = hub.attach(name.clone());
    let (gate, open) = tokio::sync::watch::channel(true);
    let attempts = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let store = SledStore::open(dir, &StoreKey::from_bytes([7; 32])).unwrap();
    let node = Arc::new(Node::new(
        store,
        InProcessDirectory::new(rendezvous.clone()),
        Gated {
            inner: network,
            open,
            attempts: attempts.clone(),
            reached: reached.clone(),
        },
        RecordingNotifier::default(),
        SystemClock,
    ));
    node.register(name, "correct horse battery").await.unwrap();
    let identity = node.resume().unwrap();
    let key = peerchat::domain::IdentityKeyPair::from_seed(&identity.seed);
    hub.set_key(name, *key.public());
    tokio::spawn(inbound.serve(node.clone()));
    let sender = Sender {
        gate,
        attempts,
        reached,
    };
    (node, sender)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let members: usize = std::env::var("MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
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
            argon2_memory_kib: 256,
            lookups_per_user: unlimited,
            one_time_prekeys_per_pair: unlimited,
            deposits_per_user: unlimited,
            registrations: unlimited,
            auth_per_prefix: unlimited,
            login_per_account_prefix: unlimited,
            ..Limits::default()
        };
        let ca = CertificateAuthority::generate("bench CA", SystemTime::now(), &mut OsRng).unwrap();
        let rendezvous = Arc::new(Rendezvous::new(MemoryStore::default(), ca, limits).await.unwrap());
        let hub = Hub::default();
        let alice_name = Username::new("alice").unwrap();
        let (alice, sender) = node(&alice_name, &tmp.path().join("alice"), &hub, &rendezvous).await;
        let mut others = Vec::new();
        let mut nodes = Vec::new();
        for i in 1..members {
            let name = Username::new(format!("member{i:03}")).unwrap();
            let (n, _) = node(&name, &tmp.path().join(name.as_str()), &hub, &rendezvous).await;
            others.push(name);
            nodes.push(n);
        }
        // Sessions by X3DH with every member (the group's creation goes over them).
        let group: GroupId = alice.create_group("bench", &others).await.unwrap();
        let recipients = others.len();

        let mut group_commit = Vec::new();
        let mut group_all = Vec::new();
        let mut direct_commit = Vec::new();
        let mut direct_all = Vec::new();
        let mut sequential_all = Vec::new();
        for round in 0..rounds {
            let node = alice.clone();
            let (commit, all) = sender
                .measure(1, async move {
                    node.send_group(
                        &group,
                        MessageId::random(&mut OsRng),
                        format!("group message {round}"),
                    )
                    .await
                    .unwrap();
                })
                .await;
            group_commit.push(commit);
            group_all.push(all);

            let node = alice.clone();
            let to = others.clone();
            let (commit, all) = sender
                .measure(recipients, async move {
                    let sends = to.iter().map(|peer| {
                        let node = node.clone();
                        let peer = peer.clone();
                        async move {
                            node.send(
                                &peer,
                                MessageId::random(&mut OsRng),
                                format!("direct message {round}"),
                            )
                            .await
                            .unwrap();
                        }
                    });
                    futures::future::join_all(sends).await;
                })
                .await;
            direct_commit.push(commit);
            direct_all.push(all);

            // One after another, as a script sending to each member would.
            let started = Instant::now();
            for peer in &others {
                alice
                    .send(peer, MessageId::random(&mut OsRng), format!("one by one {round}"))
                    .await
                    .unwrap();
            }
            sequential_all.push(started.elapsed());
        }
        // Every member stored every message.
        for n in &nodes {
            let got = n.group_history(&group, peerchat::ports::Page::ALL).unwrap();
            assert_eq!(got.len(), rounds);
            assert_eq!(n.history(&alice_name).unwrap().len(), 2 * rounds);
        }
        let (gc, ga, dc, da) = (
            median(group_commit),
            median(group_all),
            median(direct_commit),
            median(direct_all),
        );
        let sa = median(sequential_all);
        println!("{members}-member group ({recipients} recipients), median of {rounds} rounds:");
        println!(
            "| | one group send | {recipients} one-to-one sends, concurrent | ratio | {recipients} one-to-one sends, one after another | ratio |"
        );
        println!("|---|---|---|---|---|---|");
        println!(
            "| encrypt and commit (durable) | {} | {} | {:.2} | – | – |",
            ms(gc),
            ms(dc),
            gc.as_secs_f64() / dc.as_secs_f64()
        );
        println!(
            "| until all {recipients} stored it | {} | {} | {:.2} | {} | {:.2} |",
            ms(ga),
            ms(da),
            ga.as_secs_f64() / da.as_secs_f64(),
            ms(sa),
            ga.as_secs_f64() / sa.as_secs_f64()
        );
    });
}
