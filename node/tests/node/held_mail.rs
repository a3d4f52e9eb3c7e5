//! The real binaries: mail from a contact's new key, deposited while we were offline, is kept,
//! raises the key change, and is decrypted once the new key is accepted.

use std::time::{Duration, Instant};

use peerchat::ports::MessageStatus;

use crate::binaries::{Daemon, rendezvous};

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_from_a_contacts_new_key_is_held_then_decrypted_after_accept_key() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let mut alice = Daemon::start(&tmp.path().join("alice"), &url);
    let mut bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    assert!(
        bob.cli(&["send", "alice", "hi from the old install"])
            .status
            .success()
    );
    eventually("the first message", || {
        (alice.history_json("bob").len() == 1).then_some(())
    })
    .await;
    // Bob wrote first: alice takes the conversation up, so read receipts go to him.
    let out = alice.cli(&["requests", "accept", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Alice goes offline; bob logs in on a new install (a new key) and writes to her.
    alice.kill();
    bob.kill();
    let bob = Daemon::start(&tmp.path().join("bob-new"), &url);
    let out = bob.cli(&["login", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bob.wait_for("listening on");
    for text in ["one from the new install", "two from the new install"] {
        let out = bob.cli(&["send", "alice", text]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).ends_with("sent\n"),
            "in the mailbox: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Alice starts: the mail is taken from the mailbox and kept, not decrypted, not dropped.
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    alice.wait_for("listening on");
    eventually("the key change warning", || {
        let contacts = String::from_utf8(alice.cli(&["contacts"]).stdout).unwrap();
        contacts
            .contains("WARNING: bob's key has changed")
            .then_some(())
    })
    .await;
    let history = alice.history_json("bob");
    assert_eq!(
        history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["hi from the old install"],
        "nothing from the new key is taken before it is accepted"
    );

    let out = alice.cli(&["accept-key", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history = eventually("the held messages", || {
        let h = alice.history_json("bob");
        (h.len() == 3).then_some(h)
    })
    .await;
    assert_eq!(
        history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        [
            "hi from the old install",
            "one from the new install",
            "two from the new install"
        ],
        "both, once each, in order"
    );
    assert!(
        history
            .iter()
            .all(|m| m.status != MessageStatus::Undecryptable)
    );
    // Bob's new install learns they were read: alice's history above showed them.
    eventually("read receipts at bob's new install", || {
        bob.history_json("alice")
            .iter()
            .all(|m| m.status == MessageStatus::Read)
            .then_some(())
    })
    .await;
}
