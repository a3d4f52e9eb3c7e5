//! Fault loops through the real binaries: ten rounds of SIGKILL of the receiver in the middle of
//! a burst of 200 messages, then a restart; and the same for the sender. Counted on both sides:
//! every message the sender's API accepted reaches the receiver exactly once, and nothing else
//! does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peerchat::domain::MessageId;
use peerchat::driving::api::{SendAnswer, SendBody};
use peerchat_pki::Username;

use crate::binaries::{Daemon, rendezvous};

const ROUNDS: usize = 10;
const BURST: usize = 200;

/// A daemon's API: client, base URL and token.
type Api = (reqwest::Client, String, String);

/// Sends `text` to bob through an API; the answer, or `None` when the daemon did not accept it
/// (it was killed under the request).
async fn send(api: Api, text: String) -> Option<SendAnswer> {
    let (http, base, token) = api;
    let body = SendBody {
        to: Username::new("bob").unwrap(),
        text,
        id: None,
        reply_to: None,
    };
    let response = http
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(&token)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if response.status() != 202 {
        return None;
    }
    response.json::<SendAnswer>().await.ok()
}

/// How many copies of each message bob holds from alice, by id.
fn copies_at(bob: &Daemon) -> BTreeMap<MessageId, usize> {
    let mut copies = BTreeMap::new();
    for m in bob.history_json("alice") {
        *copies.entry(m.id).or_default() += 1;
    }
    copies
}

/// Waits until bob holds every message of `expected`, then checks each is there once and that
/// bob holds nothing else from alice.
async fn exactly_once(bob: &Daemon, expected: &BTreeSet<MessageId>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut copies = copies_at(bob);
    while expected.iter().any(|id| !copies.contains_key(id)) {
        assert!(
            Instant::now() < deadline,
            "{} messages never reached bob",
            expected
                .iter()
                .filter(|id| !copies.contains_key(id))
                .count()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        copies = copies_at(bob);
    }
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "held more than once: {twice:?}");
    let unknown: Vec<_> = copies.keys().filter(|id| !expected.contains(id)).collect();
    assert!(unknown.is_empty(), "held but never sent: {unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_receiver_kills_mid_burst_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let bob_dir = tmp.path().join("bob");
    let mut bob = Daemon::start(&bob_dir, &url);
    alice.register("alice");
    bob.register("bob");
    let mut accepted = BTreeSet::new();
    for round in 0..ROUNDS {
        // Killed at a different point of each burst.
        let kill_at = 20 + (round * 37) % (BURST - 40);
        for i in 0..BURST {
            if i == kill_at {
                bob.kill();
            }
            let answer = send(alice.api(), format!("round {round} message {i}"))
                .await
                .expect("alice's daemon accepts every message");
            accepted.insert(answer.id);
        }
        bob = Daemon::start(&bob_dir, &url);
        bob.wait_for("listening on");
    }
    // Counted on both sides: alice's API accepted all 2,000, her history holds them, and bob
    // holds each once.
    assert_eq!(accepted.len(), ROUNDS * BURST);
    let at_alice: BTreeSet<MessageId> = alice.history_json("bob").iter().map(|m| m.id).collect();
    assert_eq!(at_alice, accepted);
    exactly_once(&bob, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sender_kills_mid_burst_deliver_every_accepted_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice_dir = tmp.path().join("alice");
    let mut alice = Daemon::start(&alice_dir, &url);
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    let mut accepted = BTreeSet::new();
    for round in 0..ROUNDS {
        let kill_at = 20 + (round * 37) % (BURST - 40);
        for i in 0..kill_at {
            let answer = send(alice.api(), format!("round {round} message {i}"))
                .await
                .expect("alice's daemon accepts every message");
            accepted.insert(answer.id);
        }
        // Ten more in flight as the daemon dies: those it answered were accepted, and must
        // arrive; the others its user never saw accepted.
        let mut flying = tokio::task::JoinSet::new();
        for i in kill_at..kill_at + 10 {
            flying.spawn(send(alice.api(), format!("round {round} message {i}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        alice.kill();
        while let Some(answer) = flying.join_next().await {
            if let Ok(Some(answer)) = answer {
                accepted.insert(answer.id);
            }
        }
        alice = Daemon::start(&alice_dir, &url);
        alice.wait_for("listening on");
    }
    // Every message alice's user saw accepted is in her history after the restarts; a message
    // she stored but was killed before answering for is there too. Bob ends up with exactly
    // what alice holds, each once.
    let at_alice: BTreeSet<MessageId> = alice.history_json("bob").iter().map(|m| m.id).collect();
    let missing: Vec<_> = accepted.difference(&at_alice).collect();
    assert!(
        missing.is_empty(),
        "accepted, then lost by alice: {missing:?}"
    );
    exactly_once(&bob, &at_alice).await;
}
