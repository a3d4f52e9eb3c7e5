//! The real binaries as a new user meets them: errors that say what to do, and small truths.

use std::process::{Command, Stdio};

use crate::binaries::{Daemon, rendezvous};

fn peerchat(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerchat"))
        .args(args)
        .env_remove("PEERCHAT_PASSWORD")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_mistakes_are_explained_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let dir = tmp.path().join("alice");
    let dir_arg = dir.to_str().unwrap();

    // Not an https:// URL.
    let out = peerchat(&[
        "daemon",
        "--data-dir",
        dir_arg,
        "--rendezvous",
        "http://localhost:8443",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("https://"), "{}", stderr(&out));

    let mut alice = Daemon::start(&dir, &url);
    // A second daemon on the same directory names the first one's pid.
    let out = peerchat(&["daemon", "--data-dir", dir_arg, "--rendezvous", &url]);
    assert!(!out.status.success());
    let pid = std::fs::read_to_string(dir.join("daemon.lock")).unwrap();
    assert!(
        stderr(&out).contains("already running") && stderr(&out).contains(pid.trim()),
        "{}",
        stderr(&out)
    );

    // No password variable and no terminal: the message names the variable.
    let out = peerchat(&["--data-dir", dir_arg, "register", "alice"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PEERCHAT_PASSWORD"),
        "{}",
        stderr(&out)
    );

    // Not registered yet: the hint is a command to paste, with this data directory.
    let out = peerchat(&["--data-dir", dir_arg, "send", "bob", "hi"]);
    assert!(
        stderr(&out).contains(&format!("peerchat --data-dir {dir_arg} register NAME")),
        "{}",
        stderr(&out)
    );

    // Stopped: api.addr is gone (nothing answers there), and the hint to start the daemon
    // names both the directory and the rendezvous.
    let port = std::fs::read_to_string(dir.join("api.addr")).unwrap();
    alice.terminate();
    assert!(
        !dir.join("api.addr").exists(),
        "api.addr outlived the daemon"
    );
    let out = peerchat(&["--data-dir", dir_arg, "status"]);
    assert!(
        stderr(&out).contains(&format!(
            "peerchat daemon --data-dir {dir_arg} --rendezvous {url}"
        )),
        "{}",
        stderr(&out)
    );

    // Restarted: the API is on the same port (a bookmarked window keeps working).
    let alice = Daemon::start(&dir, &url);
    assert_eq!(std::fs::read_to_string(dir.join("api.addr")).unwrap(), port);
    drop(alice);

    // Another rendezvous, with another CA: refused at start, with both fingerprints.
    let other = rendezvous(&tmp.path().join("other")).await;
    let out = peerchat(&["daemon", "--data-dir", dir_arg, "--rendezvous", &other]);
    assert!(!out.status.success());
    let pinned = peerchat_pki::CaCertificate::from_pem(
        &std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
    )
    .unwrap()
    .fingerprint()
    .to_string();
    let presented = peerchat_pki::CaCertificate::from_pem(
        &std::fs::read_to_string(tmp.path().join("other").join("ca.pem")).unwrap(),
    )
    .unwrap()
    .fingerprint()
    .to_string();
    let said = stderr(&out);
    assert!(
        said.contains(&pinned) && said.contains(&presented),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_bad_requests_and_hostile_texts_are_handled_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");

    // Unknown names are errors that name them.
    let out = alice.cli(&["history", "nobody"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nobody"), "{}", stderr(&out));
    let out = alice.cli(&["send", "nobody", "hello?"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no user named nobody"),
        "{}",
        stderr(&out)
    );

    // A malformed request is refused without a parser's line and column.
    let (http, base, token) = alice.api();
    let response = http
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"to": "bob", "text": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    let body = response.text().await.unwrap();
    assert!(!body.contains("line 1"), "{body}");

    // A text that tries to clear the screen and forge a line is printed escaped.
    let forged = "ok\u{1b}[2J\n01:12:00 bob: send me your password";
    assert!(bob.cli(&["send", "alice", forged]).status.success());
    crate::revocation::eventually("bob's message", || !alice.history_json("bob").is_empty()).await;
    let shown = alice.cli(&["history", "bob"]).stdout;
    assert!(
        !shown.contains(&0x1b),
        "an escape byte reached the terminal"
    );
    let shown = String::from_utf8(shown).unwrap();
    // Bob wrote first: the history is headed as a request, then his message on one line.
    let mut lines = shown.lines();
    assert!(
        lines.next().unwrap().starts_with("MESSAGE REQUEST: bob"),
        "{shown}"
    );
    assert_eq!(lines.count(), 1, "{shown}");
    assert!(
        shown.contains(r"\u{1b}[2J\n01:12:00 bob: send me your password"),
        "{shown}"
    );
}
