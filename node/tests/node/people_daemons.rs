//! Message requests, blocking and profiles through the real binaries, driven through the CLI:
//! a block survives a restart of the daemon.

use std::time::Duration;

use peerchat::driving::api::{ContactView, MessageView, RequestView};
use peerchat::ports::MessageStatus;

use crate::binaries::{Daemon, eventually_blocking, ok, rendezvous_alice_and_bob, stop};

fn contacts(d: &Daemon) -> Vec<ContactView> {
    serde_json::from_str(&ok(&d.cli(&["contacts", "--json"]))).unwrap()
}

fn history(d: &Daemon, name: &str) -> Vec<MessageView> {
    serde_json::from_str(&ok(&d.cli(&["history", name, "--json"]))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_profiles_and_a_block_that_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut rv, url, alice, mut bob) = rendezvous_alice_and_bob(tmp.path());
    let bob_dir = tmp.path().join("bob");
    ok(&alice.cli(&["profile", "set", "--display-name", "Alice Liddell"]));
    ok(&bob.cli(&["profile", "set", "--display-name", "Bob Builder"]));

    // Alice writes first: a request at bob's, shown apart and marked in the history.
    ok(&alice.cli(&["send", "bob", "hello, it is alice from the meetup"]));
    bob.wait_for_history("alice", &["hello, it is alice from the meetup"]);
    let requests: Vec<RequestView> =
        serde_json::from_str(&ok(&bob.cli(&["requests", "--json"]))).unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].peer.as_str(), "alice");
    assert_eq!(requests[0].messages, 1);
    let shown = ok(&bob.cli(&["history", "alice"]));
    assert!(shown.contains("MESSAGE REQUEST"), "{shown}");
    // Her profile came with her message; bob's does not go to her while it is a request, nor
    // does a read receipt.
    eventually_blocking("alice's display name at bob's", || {
        contacts(&bob)
            .iter()
            .any(|c| c.display_name.as_deref() == Some("Alice Liddell"))
    });
    eventually_blocking("the delivery receipt", || {
        history(&alice, "bob")[0].status == MessageStatus::Delivered
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(history(&alice, "bob")[0].status, MessageStatus::Delivered);
    assert!(contacts(&alice).iter().all(|c| c.display_name.is_none()));

    // Accepted: bob's profile reaches alice, and the read receipt for what he reads next.
    ok(&bob.cli(&["requests", "accept", "alice"]));
    assert!(ok(&bob.cli(&["requests"])).contains("no message requests"));
    eventually_blocking("bob's display name at alice's", || {
        contacts(&alice)
            .iter()
            .any(|c| c.display_name.as_deref() == Some("Bob Builder"))
    });
    ok(&alice.cli(&["send", "bob", "so you got it"]));
    bob.wait_for_history(
        "alice",
        &["hello, it is alice from the meetup", "so you got it"],
    );
    // The first, read while a request, is acknowledged as read once accepted; the second too.
    eventually_blocking("the read receipts", || {
        let statuses: Vec<MessageStatus> =
            history(&alice, "bob").iter().map(|m| m.status).collect();
        statuses == [MessageStatus::Read, MessageStatus::Read]
    });

    // Blocked: alice loses her connection to bob (no sign that he is on), and bob stays
    // blocked after a restart.
    let bob_online = |alice: &Daemon| {
        contacts(alice)
            .iter()
            .any(|c| c.username.as_str() == "bob" && c.online)
    };
    assert!(bob_online(&alice), "connected before the block");
    ok(&bob.cli(&["block", "alice"]));
    eventually_blocking("alice's connection to bob closed", || !bob_online(&alice));
    bob.terminate();
    bob = Daemon::start(&bob_dir, &url);
    bob.wait_for("listening on");
    let blocked: Vec<String> = serde_json::from_str(&ok(&bob.cli(&["blocked", "--json"]))).unwrap();
    assert_eq!(blocked, ["alice"]);
    let out = bob.cli(&["send", "alice", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("you blocked alice"));
    ok(&alice.cli(&["send", "bob", "are you ignoring me?"]));
    let dropped = history(&alice, "bob").pop().unwrap();
    assert_eq!(
        dropped.status,
        MessageStatus::Sent,
        "acknowledged, no receipt"
    );
    assert!(!bob_online(&alice), "her new connection was refused");
    // It went to the mailbox; bob's node takes it from there and drops it.
    let bob_log = bob_dir.with_extension("log");
    eventually_blocking("bob's node drops it", || {
        std::fs::read_to_string(&bob_log)
            .unwrap_or_default()
            .contains("dropped a message from a blocked user")
    });
    assert!(ok(&bob.cli(&["history", "alice"])).contains("BLOCKED"));

    // Unblocked: her next message arrives; the one sent while blocked never does.
    ok(&bob.cli(&["unblock", "alice"]));
    ok(&alice.cli(&["send", "bob", "hello again"]));
    bob.wait_for_history(
        "alice",
        &[
            "hello, it is alice from the meetup",
            "so you got it",
            "hello again",
        ],
    );
    assert_eq!(
        history(&alice, "bob")
            .iter()
            .find(|m| m.id == dropped.id)
            .unwrap()
            .status,
        MessageStatus::Sent
    );
    drop(alice);
    drop(bob);
    stop(&mut rv);
}
