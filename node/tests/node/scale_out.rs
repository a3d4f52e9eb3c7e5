//! Several rendezvous instances on one PostgreSQL database, through the real binaries: users
//! registered on different instances reach each other, mail deposited on a third is delivered,
//! and a daemon given several instances moves on when one is killed, to its API and its relay.

use std::time::Duration;

use crate::binaries::{Daemon, RendezvousProcess, rendezvous_binary, rendezvous_process_with_env};
use crate::postgres::Postgres;

/// Rendezvous processes, killed when the test ends however it ends.
struct Instances(Vec<(RendezvousProcess, u16)>);

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

/// The relay's peer id in the first relayed address of a printed address list
/// (`…/p2p/RELAY/p2p-circuit/p2p/US`).
fn relay_of(line: &str) -> String {
    let before = line
        .split("/p2p-circuit")
        .next()
        .unwrap_or_else(|| panic!("no relayed address in {line:?}"));
    before
        .rsplit("/p2p/")
        .next()
        .unwrap_or_else(|| panic!("no relay peer id in {line:?}"))
        .to_owned()
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
    // Alice holds a reservation on the first instance's relay and announces it.
    let first_relay = relay_of(&alice.wait_for("/p2p-circuit"));
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
    // Her reservation died with the first instance: she reserves on the third's relay and
    // announces that address, through the third, in the presence every instance reads.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let line = alice.wait_for("reachable at");
        if line.contains("/p2p-circuit") && relay_of(&line) != first_relay {
            assert!(
                !line.contains(&format!("/p2p/{first_relay}/")),
                "the dead relay is no longer announced: {line}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice never announced another relay"
        );
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
