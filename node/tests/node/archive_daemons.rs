//! Export and encrypted backups through the real binaries: a backup restored into a fresh
//! install (after `login`) shows the history, and the contacts see a key change.

use peerchat::driving::api::{ContactView, GroupView};
use peerchat::driving::cli::archive::Export;

use crate::binaries::{Daemon, eventually_blocking, ok, refused, rendezvous_alice_and_bob, stop};

fn texts(d: &Daemon, name: &str) -> Vec<String> {
    d.history_json(name).into_iter().map(|m| m.text).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_a_backup_restored_into_a_fresh_install() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut rv, url, mut alice, bob) = rendezvous_alice_and_bob(tmp.path());
    ok(&alice.cli(&["send", "bob", "hello bob\n# not a heading"]));
    bob.wait_for_history("alice", &["hello bob\n# not a heading"]);
    ok(&bob.cli(&["send", "alice", "hi alice"]));
    alice.wait_for_history("bob", &["hello bob\n# not a heading", "hi alice"]);
    let group = ok(&alice.cli(&["group", "create", "Book club", "--members", "bob"]));
    let group = group.split_whitespace().next().unwrap().to_owned();
    ok(&alice.cli(&["send", "--group", &group, "first chapter tonight"]));

    // Export: one conversation, or all, as JSON or Markdown; never over an existing file.
    let one: Export = serde_json::from_str(&ok(&alice.cli(&["export", "bob"]))).unwrap();
    assert_eq!(one.account.as_str(), "alice");
    assert_eq!(one.conversations.len(), 1);
    let exported: Vec<&str> = one.conversations[0]
        .messages
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(exported, ["hello bob\n# not a heading", "hi alice"]);
    let all: Export = serde_json::from_str(&ok(&alice.cli(&["export"]))).unwrap();
    assert_eq!(all.conversations.len(), 2);
    assert!(all.conversations.iter().any(|c| {
        c.group
            .as_ref()
            .is_some_and(|g| g.name == "Book club" && g.members.len() == 2)
    }));
    let md = ok(&alice.cli(&["export", "--format", "markdown"]));
    assert!(md.contains("## Conversation with bob"), "{md}");
    assert!(md.contains("> hello bob\n> # not a heading\n"), "{md}");
    assert!(md.contains("## Group “Book club”"), "{md}");
    let file = tmp.path().join("bob.md");
    let path = file.to_str().unwrap();
    ok(&alice.cli(&["export", "bob", "--format", "markdown", "--output", path]));
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("> hi alice")
    );
    refused(&alice, &["export", "bob", "--output", path], "exists");

    // A backup: sealed with a passphrase; too short a passphrase is refused.
    let passphrase = tmp.path().join("passphrase");
    std::fs::write(&passphrase, "short\n").unwrap();
    let passphrase = passphrase.to_str().unwrap();
    let backup = tmp.path().join("alice.peerchat-backup");
    let backup = backup.to_str().unwrap();
    refused(
        &alice,
        &["backup", "create", backup, "--passphrase-file", passphrase],
        "at least 12 characters",
    );
    std::fs::write(passphrase, "a long and secret passphrase\n").unwrap();
    let made = ok(&alice.cli(&["backup", "create", backup, "--passphrase-file", passphrase]));
    assert!(made.contains("3 message(s)"), "{made}");
    let sealed = std::fs::read(backup).unwrap();
    for secret in ["hello bob", "hi alice", "Book club", "first chapter"] {
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in the backup in the clear"
        );
    }
    refused(
        &alice,
        &["backup", "create", backup, "--passphrase-file", passphrase],
        "exists",
    );

    // Alice's machine is gone; a fresh install logs in and restores.
    alice.terminate();
    let alice = Daemon::start(&tmp.path().join("alice-new"), &url);
    ok(&alice.cli(&["login", "alice"]));
    alice.wait_for("listening on");
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not the right passphrase").unwrap();
    refused(
        &alice,
        &[
            "backup",
            "restore",
            backup,
            "--passphrase-file",
            wrong.to_str().unwrap(),
        ],
        "passphrase is wrong",
    );
    assert!(
        alice.history_json("bob").is_empty(),
        "a failed restore changes nothing"
    );
    let restored = ok(&alice.cli(&["backup", "restore", backup, "--passphrase-file", passphrase]));
    assert!(restored.contains("3 message(s)"), "{restored}");
    assert_eq!(
        texts(&alice, "bob"),
        ["hello bob\n# not a heading", "hi alice"]
    );
    let groups: Vec<GroupView> =
        serde_json::from_str(&ok(&alice.cli(&["group", "list", "--json"]))).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "Book club");
    let history = ok(&alice.cli(&["history", "--group", &group]));
    assert!(history.contains("first chapter tonight"), "{history}");
    // Restoring again adds nothing twice.
    let again = ok(&alice.cli(&["backup", "restore", backup, "--passphrase-file", passphrase]));
    assert!(again.contains("0 message(s)"), "{again}");
    assert_eq!(texts(&alice, "bob").len(), 2);

    // Writing from the new install: bob sees alice's key change, as with any new install.
    ok(&alice.cli(&["send", "bob", "it is me, on a new machine"]));
    eventually_blocking("bob sees alice's key change", || {
        let contacts: Vec<ContactView> =
            serde_json::from_str(&ok(&bob.cli(&["contacts", "--json"]))).unwrap();
        contacts
            .iter()
            .any(|c| c.username.as_str() == "alice" && c.key_changed)
    });
    drop(alice);
    drop(bob);
    stop(&mut rv);
}
