//! Encryption at rest through the binaries: a daemon whose store key is wrapped under a
//! passphrase keeps none of the chat's texts, file names or its identity seed readable in its
//! data directory; a wrong passphrase is refused and changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use peerchat::driven::sled_store::SledStore;
use peerchat::driven::store_key::{self, KeyOptions, OsKeyring, Protection};
use peerchat::driving::api::FileView;
use peerchat::ports::{FileState, IdentityStore};

use crate::binaries::{
    Daemon, eventually_blocking, files_containing, ok, rendezvous_binary, rendezvous_process,
};

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    files
}

/// `peerchat daemon` on `dir` with `env`, no terminal; its output once it exits.
fn daemon_exits(dir: &Path, url: &str, env: &[(&str, &Path)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peerchat"))
        .args(["daemon", "--data-dir"])
        .arg(dir)
        .args(["--rendezvous", url])
        .env("RUST_LOG", "off")
        .env_remove("PEERCHAT_PLAIN_STORE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the daemon started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_passphrase_store_keeps_no_text_no_file_name_and_no_seed_and_refuses_a_wrong_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rv, port) = rendezvous_process(&rendezvous_binary(), &tmp.path().join("rv"), 0);
    let url = format!("https://localhost:{port}");
    let passphrase = tmp.path().join("passphrase");
    std::fs::write(&passphrase, "a long store passphrase\n").unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "a long store passphrasf\n").unwrap();
    let env = [("PEERCHAT_PASSPHRASE_FILE", passphrase.to_str().unwrap())];

    let alice_dir = tmp.path().join("alice");
    let bob_dir = tmp.path().join("bob");
    let alice = Daemon::start(&alice_dir, &url);
    let mut bob = Daemon::start_with_env(&bob_dir, &url, &[], &env);
    alice.register("alice");
    bob.register("bob");

    let to_bob = "the walrus sings at midnight by the amber pier";
    let to_alice = "the tortoise answers at dawn with a saffron kite";
    ok(&alice.cli(&["send", "bob", to_bob]));
    bob.wait_for_history("alice", &[to_bob]);
    ok(&bob.cli(&["send", "alice", to_alice]));
    alice.wait_for_history("bob", &[to_bob, to_alice]);
    let source = tmp.path().join("zanzibar-itinerary.txt");
    std::fs::write(&source, "nothing to see").unwrap();
    let id = ok(&alice.cli(&["send-file", "bob", source.to_str().unwrap()]))
        .trim()
        .to_owned();
    eventually_blocking("bob has the file", || {
        let files: Vec<FileView> =
            serde_json::from_str(&ok(&bob.cli(&["files", "--json"]))).unwrap();
        files
            .iter()
            .any(|f| f.id.to_string() == id && f.state == FileState::Complete)
    });
    bob.terminate();

    // The seed, read the way the daemon reads it: with the passphrase.
    let with_passphrase = KeyOptions {
        passphrase_file: Some(passphrase.clone()),
        ..KeyOptions::default()
    };
    let (key, protection) = store_key::unlock(&bob_dir, &with_passphrase, &OsKeyring).unwrap();
    assert_eq!(protection, Protection::Passphrase);
    let seed = {
        let store = SledStore::open(&bob_dir.join("db"), &key).unwrap();
        *store.identity().unwrap().unwrap().seed
    };
    for (what, needle) in [
        ("a text received", to_bob.as_bytes()),
        ("a text sent", to_alice.as_bytes()),
        ("a word of a text", b"saffron".as_slice()),
        ("the identity seed", &seed[..]),
        ("the store key", &key.as_bytes()[..]),
    ] {
        let found = files_containing(&bob_dir, needle);
        assert!(found.is_empty(), "{what} is readable in {found:?}");
    }
    // The file's name is only where the user asked for the file (its download), not in the
    // store.
    assert!(files_containing(&bob_dir.join("db"), b"zanzibar-itinerary").is_empty());
    // Alice chose nothing and has no keyring: her key lies beside her data, said at start.
    let alice_log = std::fs::read_to_string(alice_dir.with_extension("log")).unwrap();
    assert!(alice_log.contains("WARNING: the store key is kept unprotected"));

    // A wrong passphrase, or none (no terminal to ask on): a clear error, nothing changed.
    let before = snapshot(&bob_dir.join("db"));
    let key_file = std::fs::read(bob_dir.join("store.key")).unwrap();
    let refused = daemon_exits(&bob_dir, &url, &[("PEERCHAT_PASSPHRASE_FILE", &wrong)]);
    assert!(refused.contains("the passphrase is wrong"), "{refused}");
    assert!(!refused.contains("a long store"), "{refused}");
    let refused = daemon_exits(&bob_dir, &url, &[]);
    assert!(refused.contains("--passphrase-file"), "{refused}");
    assert_eq!(snapshot(&bob_dir.join("db")), before);
    assert_eq!(std::fs::read(bob_dir.join("store.key")).unwrap(), key_file);

    // The right one opens it all again.
    let bob = Daemon::start_with_env(&bob_dir, &url, &[], &env);
    bob.wait_for_history("alice", &[to_bob, to_alice]);
}

#[test]
fn a_new_store_with_no_keyring_no_passphrase_and_no_terminal_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("carol");
    let refused = daemon_exits(&dir, "https://localhost:9", &[]);
    assert!(
        refused.contains("--passphrase-file") && refused.contains("--plain-store"),
        "{refused}"
    );
    assert!(!dir.join("store.key").exists());
    assert!(!dir.join("db").exists());
}
