//! Encryption at rest through the binaries: a daemon whose store key is wrapped under a
//! passphrase keeps none of the chat's texts, file names or its identity seed readable in its
//! data directory; a wrong passphrase is refused and changes nothing. A daemon whose store key
//! is kept in a real Secret Service (gnome-keyring on a private session bus) opens its history
//! again with it, and is refused, changing nothing, by a keyring that does not hold it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
fn daemon_exits(dir: &Path, url: &str, env: &[(&str, &OsStr)]) -> String {
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
    let refused = daemon_exits(
        &bob_dir,
        &url,
        &[("PEERCHAT_PASSPHRASE_FILE", wrong.as_os_str())],
    );
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

/// A session bus of the test's own and a Secret Service on it: gnome-keyring, its keyrings
/// under `home`, unlocked with a password. No service is activated on that bus, so nothing but
/// this keyring answers there. Both stop when dropped.
struct SecretService {
    bus: Child,
    keyring: Child,
    address: String,
}

/// A session bus that only routes: no activation, every name may be owned.
const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir=DIR</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

impl SecretService {
    fn start(home: &Path) -> Self {
        for program in ["dbus-daemon", "dbus-send", "gnome-keyring-daemon"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {program}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{program} is needed (packages dbus-daemon, dbus-bin, gnome-keyring; .ci/run \
                 installs them)"
            );
        }
        let run = home.join("run");
        std::fs::create_dir_all(&run).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let config = home.join("bus.conf");
        std::fs::write(&config, BUS_CONFIG.replace("DIR", run.to_str().unwrap())).unwrap();
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut address = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let address = address.trim().to_owned();
        if !address.starts_with("unix:") {
            let _ = bus.kill();
            let mut why = String::new();
            let _ = std::io::Read::read_to_string(&mut bus.stderr.take().unwrap(), &mut why);
            panic!("the session bus did not start: {why}");
        }
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env("HOME", home)
            .env("XDG_RUNTIME_DIR", &run)
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The login keyring's password, on stdin, then end of input.
        keyring
            .stdin
            .take()
            .unwrap()
            .write_all(b"the keyring's own password")
            .unwrap();
        let service = Self {
            bus,
            keyring,
            address,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !service.answers() {
            assert!(
                Instant::now() < deadline,
                "the Secret Service never answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    /// Whether the Secret Service owns its name on the bus.
    fn answers(&self) -> bool {
        let out = Command::new("dbus-send")
            .arg(format!("--bus={}", self.address))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                "string:org.freedesktop.secrets",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("boolean true")
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        let _ = self.keyring.kill();
        let _ = self.keyring.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

#[test]
fn a_store_key_in_a_real_secret_service_reopens_the_history_and_a_keyring_without_it_changes_nothing()
 {
    let tmp = tempfile::tempdir().unwrap();
    let (_rv, port) = rendezvous_process(&rendezvous_binary(), &tmp.path().join("rv"), 0);
    let url = format!("https://localhost:{port}");
    let keyring_home = tmp.path().join("keyring");
    let service = SecretService::start(&keyring_home);
    let env = [
        ("DBUS_SESSION_BUS_ADDRESS", service.address.as_str()),
        // Neither a passphrase nor a plain key: the keyring, as on a desktop.
        ("PEERCHAT_PLAIN_STORE", "false"),
    ];
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let bob_dir = tmp.path().join("bob");
    let mut bob = Daemon::start_with_env(&bob_dir, &url, &[], &env);
    alice.register("alice");
    bob.register("bob");
    let text = "the heron keeps the lighthouse keys in a teacup";
    ok(&alice.cli(&["send", "bob", text]));
    bob.wait_for_history("alice", &[text]);
    bob.terminate();

    // The key file names a keyring entry and holds no key; the keyring keeps it, in its own
    // (encrypted) files.
    let key_file = std::fs::read_to_string(bob_dir.join("store.key")).unwrap();
    let named: serde_json::Value = serde_json::from_str(&key_file).unwrap();
    assert_eq!(named["protection"], "keyring", "{key_file}");
    assert_eq!(named.as_object().unwrap().len(), 3, "{key_file}");
    let bob_log = std::fs::read_to_string(bob_dir.with_extension("log")).unwrap();
    assert!(bob_log.contains("the store key is in the OS keyring"));
    assert!(!bob_log.contains("WARNING"), "{bob_log}");
    assert!(files_containing(&bob_dir, text.as_bytes()).is_empty());
    assert!(files_containing(&bob_dir, b"lighthouse").is_empty());

    // The keyring gives the key back: the same history.
    let mut bob = Daemon::start_with_env(&bob_dir, &url, &[], &env);
    bob.wait_for_history("alice", &[text]);
    bob.terminate();

    // Another keyring (or none at all) does not hold the key: a clear error, nothing changed.
    let before = snapshot(&bob_dir.join("db"));
    drop(service);
    let other = SecretService::start(&tmp.path().join("other-keyring"));
    let refused = daemon_exits(
        &bob_dir,
        &url,
        &[("DBUS_SESSION_BUS_ADDRESS", OsStr::new(&other.address))],
    );
    assert!(
        refused.contains("kept in the OS keyring, which did not give it"),
        "{refused}"
    );
    drop(other);
    let refused = daemon_exits(
        &bob_dir,
        &url,
        &[(
            "DBUS_SESSION_BUS_ADDRESS",
            OsStr::new("unix:path=/nonexistent/bus"),
        )],
    );
    assert!(
        refused.contains("kept in the OS keyring, which did not give it"),
        "{refused}"
    );
    assert_eq!(snapshot(&bob_dir.join("db")), before);
    assert_eq!(
        std::fs::read_to_string(bob_dir.join("store.key")).unwrap(),
        key_file
    );
}
