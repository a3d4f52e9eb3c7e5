//! Fault loops through the real binaries: ten rounds of SIGKILL of the receiver in the middle of
//! a burst of 200 messages, then a restart; and the same for the sender. Counted on both sides:
//! every message the sender's API accepted reaches the receiver exactly once, and nothing else
//! does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peerchat::domain::MessageId;
use peerchat::driving::api::{SendAnswer, SendBody};
use peerchat::ports::MessageStatus;
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
    for m in bob
        .history_json("alice")
        .into_iter()
        .filter(|m| m.author.as_str() == "alice")
    {
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
    // Bob knows alice: 2,000 messages are no request.
    bob.add_contact("alice").await;
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
    // Bob knows alice: 2,000 messages are no request.
    bob.add_contact("alice").await;
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

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped (also when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI has it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }

    /// Fills what is left of it with one file; that file's path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        // The last bytes too, so that not even a small record fits.
        while file.write_all(&[0u8; 512]).is_ok() {}
        while file.write_all(&[0u8]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// How many times bob's node stopped for a full disk (its daemon says so on stderr, in its log).
fn stops_for_full_disk(disk: &Tmpfs) -> usize {
    std::fs::read_to_string(disk.0.with_extension("log"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("peerchat: the disk of ") && line.contains(" is full"))
        .count()
}

/// Frees bob's disk and waits for his daemon, the same process, to start its node again.
fn free(bob: &mut Daemon, filler: std::path::PathBuf) {
    std::fs::remove_file(filler).unwrap();
    bob.wait_for("there is space again");
    bob.wait_for("listening on");
    assert!(bob.is_running(), "bob's daemon recovers without a restart");
}

/// Bob's data directory on a small tmpfs that fills up, twice.
///
/// First while alice writes to him: his node takes her messages while they fit, refuses to
/// acknowledge the one it cannot store, and stops until there is space; his own send meanwhile
/// is refused with a clear error. Then while he writes: his sends are taken until one is
/// refused, clearly. Each time, once space returns, his daemon (the same process) starts its
/// node again: every message alice's node accepted reaches him exactly once, every send his
/// node took reaches her, and both carry on. A restart afterwards finds the same history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_acknowledges_nothing_unstored_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    // Bob's data directory is the tmpfs itself; his log lies beside it, on the roomy disk.
    let disk = Tmpfs::mount(&tmp.path().join("bob"), "48m");
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let mut bob = Daemon::start(&disk.0, &url);
    alice.register("alice");
    bob.register("bob");
    crate::binaries::ok(&alice.cli(&["send", "bob", "before the disk filled"]));
    bob.wait_for_history("alice", &["before the disk filled"]);
    crate::binaries::ok(&bob.cli(&["send", "alice", "me too"]));
    alice.wait_for_history("bob", &["before the disk filled", "me too"]);
    let mut accepted: BTreeSet<MessageId> = alice
        .history_json("bob")
        .iter()
        .take(1)
        .map(|m| m.id)
        .collect();
    let long = "x".repeat(15_000);

    // 1. Alice writes to bob until his node cannot store one of her messages.
    let filler = disk.fill();
    let mut delivered_while_full = 0;
    while stops_for_full_disk(&disk) == 0 {
        let answer = send(alice.api(), format!("alice {} {long}", accepted.len()))
            .await
            .expect("alice's daemon accepts every message");
        accepted.insert(answer.id);
        assert!(
            accepted.len() < 2_000,
            "bob's node took 30 MB on a full 48 MB disk"
        );
        crate::binaries::eventually_blocking("bob's node stores the message or stops", || {
            stops_for_full_disk(&disk) > 0
                || alice
                    .history_json("bob")
                    .iter()
                    .any(|m| m.id == answer.id && m.status == MessageStatus::Delivered)
        });
        delivered_while_full += 1;
    }
    assert!(delivered_while_full > 0);
    // Whatever bob's node could not store, it did not acknowledge: alice still holds it.
    let waiting = alice
        .history_json("bob")
        .iter()
        .filter(|m| accepted.contains(&m.id) && m.status != MessageStatus::Delivered)
        .count();
    assert!(
        waiting >= 1,
        "bob's node acknowledged a message it could not store"
    );
    // Bob is told why nothing works.
    let out = bob.cli(&["send", "alice", "while the disk is full"]);
    assert!(!out.status.success());
    let refusal = String::from_utf8_lossy(&out.stderr);
    assert!(refusal.contains("disk is full"), "{refusal}");
    for i in 0..20 {
        let answer = send(alice.api(), format!("while bob's node is stopped {i}"))
            .await
            .expect("alice's daemon accepts every message");
        accepted.insert(answer.id);
    }
    free(&mut bob, filler);
    exactly_once(&bob, &accepted).await;

    // 2. Bob writes until his node cannot store one of his messages.
    let filler = disk.fill();
    let mut taken = 0;
    let refusal = loop {
        let out = bob.cli(&["send", "alice", &format!("bob {taken} {long}")]);
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        taken += 1;
        assert!(taken < 2_000, "bob's node took 30 MB on a full 48 MB disk");
    };
    assert!(refusal.contains("disk is full"), "{refusal}");
    crate::binaries::eventually_blocking("bob's node stops for the full disk again", || {
        stops_for_full_disk(&disk) == 2
    });
    free(&mut bob, filler);
    // Every send of bob's that his node took is kept, and reaches alice.
    crate::binaries::eventually_blocking("alice has every message bob's node took", || {
        alice
            .history_json("bob")
            .iter()
            .filter(|m| m.text.starts_with("bob ") && m.text.ends_with(&long))
            .count()
            == taken
    });
    crate::binaries::ok(&bob.cli(&["send", "alice", "space again"]));
    crate::binaries::eventually_blocking("bob's message after the disk is freed", || {
        alice
            .history_json("bob")
            .iter()
            .any(|m| m.text == "space again")
    });
    exactly_once(&bob, &accepted).await;

    // What the node stored after each recovery is durable: a restart finds each message once.
    bob.kill();
    let bob = Daemon::start(&disk.0, &url);
    bob.wait_for("listening on");
    exactly_once(&bob, &accepted).await;
}
