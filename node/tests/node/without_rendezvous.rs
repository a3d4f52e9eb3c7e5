//! Known contacts reach each other with the rendezvous stopped: the addresses that worked are
//! kept with the contact and tried before any lookup, and a restarted daemon listens on its
//! port of before. Through the real binaries.

use std::time::{Duration, Instant};

use peerchat::ports::MessageStatus;

use crate::binaries::{Daemon, rendezvous_binary, rendezvous_process, stop};

fn send(from: &Daemon, to: &str, text: &str) -> String {
    let out = from.cli(&["send", to, text]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_contacts_talk_directly_with_the_rendezvous_stopped_also_after_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = rendezvous_binary();
    let (mut rendezvous, port) = rendezvous_process(&binary, &tmp.path().join("rendezvous"), 0);
    let url = format!("https://localhost:{port}");
    let (alice_dir, bob_dir) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let mut alice = Daemon::start(&alice_dir, &url);
    let mut bob = Daemon::start(&bob_dir, &url);
    alice.register("alice");
    bob.register("bob");
    // They meet through the rendezvous once.
    send(&alice, "bob", "one");
    send(&bob, "alice", "two");
    bob.wait_for_history("alice", &["one", "two"]);
    // The path is visible: a direct connection, and where it goes.
    let contacts = alice.cli(&["contacts", "--json"]);
    let contacts: serde_json::Value = serde_json::from_slice(&contacts.stdout).unwrap();
    let bob_entry = &contacts[0];
    assert_eq!(bob_entry["username"], "bob");
    assert_eq!(bob_entry["online"], true);
    assert_eq!(bob_entry["path"], "direct");
    assert!(
        bob_entry["remote_address"]
            .as_str()
            .unwrap()
            .starts_with("/ip4/127.0.0.1/tcp/")
    );
    let listed = String::from_utf8_lossy(&alice.cli(&["contacts"]).stdout).into_owned();
    assert!(listed.contains("online · direct"), "{listed}");

    // The rendezvous goes away: no lookup, no mailbox. Each message is acknowledged by the
    // other node itself, at the address that worked before.
    stop(&mut rendezvous);
    send(&alice, "bob", "three");
    let status = |daemon: &Daemon, peer: &str, text: &str| {
        daemon
            .history_json(peer)
            .into_iter()
            .find(|m| m.text == text)
            .map(|m| m.status)
    };
    assert!(status(&alice, "bob", "three").unwrap().is_acknowledged());
    send(&bob, "alice", "four");
    assert!(status(&bob, "alice", "four").unwrap().is_acknowledged());
    alice.wait_for_history("bob", &["one", "two", "three", "four"]);
    // Two minutes of conversation with the rendezvous down (PEERCHAT_OFFLINE_SECS shortens it
    // for a quick run): every message is acknowledged by the other node, in order.
    let minutes: u64 = std::env::var("PEERCHAT_OFFLINE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let until = Instant::now() + Duration::from_secs(minutes);
    let mut all: Vec<String> = ["one", "two", "three", "four"].map(String::from).to_vec();
    let mut i = 0;
    while Instant::now() < until {
        let (from, to) = if i % 2 == 0 {
            (&alice, "bob")
        } else {
            (&bob, "alice")
        };
        let text = format!("offline {i}");
        send(from, to, &text);
        assert!(
            status(from, to, &text).unwrap().is_acknowledged(),
            "{text} was not acknowledged directly"
        );
        all.push(text);
        i += 1;
        std::thread::sleep(Duration::from_secs(4));
    }
    alice.wait_for_history("bob", &all);
    bob.wait_for_history("alice", &all);

    // Both daemons restart, the rendezvous still down: each listens on its port of before, and
    // the other still knows it.
    alice.terminate();
    bob.terminate();
    alice = Daemon::start(&alice_dir, &url);
    bob = Daemon::start(&bob_dir, &url);
    alice.wait_for("listening on");
    bob.wait_for("listening on");
    send(&alice, "bob", "five");
    assert!(status(&alice, "bob", "five").unwrap().is_acknowledged());
    send(&bob, "alice", "six");
    assert!(status(&bob, "alice", "six").unwrap().is_acknowledged());
    all.extend(["five", "six"].map(String::from));
    bob.wait_for_history("alice", &all);
    alice.wait_for_history("bob", &all);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&alice, "bob", "five") != Some(MessageStatus::Read) {
        assert!(Instant::now() < deadline, "no read receipt came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        status(&alice, "bob", "five"),
        Some(MessageStatus::Read),
        "bob's history above showed it, and alice got his read receipt directly"
    );
}
