//! Several rendezvous instances on one PostgreSQL database, through the real binaries: users
//! registered on different instances reach each other, mail deposited on a third is delivered,
//! and a daemon given several instances moves on when one is killed.

use std::process::Child;
use std::time::Duration;

use crate::binaries::{Daemon, rendezvous_binary, rendezvous_process_with_env};
use crate::postgres::Postgres;

/// Rendezvous processes, killed when the test ends however it ends.
struct Instances(Vec<(Child, u16)>);

impl Instances {
    fn url(&self, i: usize) -> String {
        format!("https://localhost:{}", self.0[i].1)
    }

    fn kill(&mut self, i: usize) {
        let child = &mut self.0[i].0;
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_database_are_one_rendezvous_and_a_killed_one_is_passed_over() {
    let tmp = tempfile::tempdir().unwrap();
    let database = Postgres::start();
    let binary = rendezvous_binary();
    // One data directory for all three: the first creates the CA, the others load it.
    let shared = tmp.path().join("rendezvous");
    let env = [("PEERCHAT_RENDEZVOUS_DATABASE_URL", database.url.as_str())];
    let mut rv = Instances(
        (0..3)
            .map(|_| rendezvous_process_with_env(&binary, &shared, 0, &env))
            .collect(),
    );
    assert!(
        !shared.join("db").exists(),
        "with --database no sled database is written"
    );

    // Alice registers on the first (and knows the third), bob on the second.
    let alice_dir = tmp.path().join("alice");
    let bob_dir = tmp.path().join("bob");
    let (first, third) = (rv.url(0), rv.url(2));
    let alice = Daemon::start_with(&alice_dir, &first, &["--rendezvous", &third]);
    let mut bob = Daemon::start(&bob_dir, &rv.url(1));
    alice.register("alice");
    bob.register("bob");
    ok(&alice.cli(&["send", "bob", "hello from the first instance"]));
    bob.wait_for_history("alice", &["hello from the first instance"]);

    // Bob goes offline; alice's instance is killed outright. Her next message finds bob
    // offline and is deposited through the third instance.
    bob.terminate();
    rv.kill(0);
    ok(&alice.cli(&["send", "bob", "left with the third instance"]));
    let log = alice_dir.with_extension("log");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("moving to the next")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alice never moved to the third instance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bob comes back on the second instance and gets it from the mailbox they share.
    bob = Daemon::start(&bob_dir, &rv.url(1));
    bob.wait_for("listening on");
    bob.wait_for_history(
        "alice",
        &[
            "hello from the first instance",
            "left with the third instance",
        ],
    );
    ok(&bob.cli(&["send", "alice", "got it"]));
    alice.wait_for_history(
        "bob",
        &[
            "hello from the first instance",
            "left with the third instance",
            "got it",
        ],
    );
}
