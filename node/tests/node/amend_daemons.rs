//! Replies, edits, deletes for everyone and reactions through the real binaries: two daemons one
//! to one, and three in a group, driven through the CLI.

use std::collections::BTreeMap;

use peerchat::driving::api::MessageView;

use crate::binaries::{
    Daemon, eventually_blocking, ok, refused, rendezvous_alice_and_bob, rendezvous_binary,
    rendezvous_process, stop,
};

/// The id `send` printed.
fn sent_id(out: &str) -> String {
    out.split_whitespace().next().unwrap().to_owned()
}

/// `d`'s copy of message `id` in the conversation `args` names (`NAME` or `--group ID`).
fn find(d: &Daemon, args: &[&str], id: &str) -> Option<MessageView> {
    let mut command = vec!["history"];
    command.extend_from_slice(args);
    command.push("--json");
    let all: Vec<MessageView> = serde_json::from_str(&ok(&d.cli(&command))).unwrap();
    all.into_iter().find(|m| m.id.to_string() == id)
}

fn reactions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(who, e)| (who.to_string(), e.to_string()))
        .collect()
}

fn reactions_of(m: &MessageView) -> BTreeMap<String, String> {
    m.reactions
        .iter()
        .map(|(who, e)| (who.to_string(), e.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_reply_edit_react_and_delete_for_everyone() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut rv, _, alice, bob) = rendezvous_alice_and_bob(tmp.path());

    let lunch = sent_id(&ok(&alice.cli(&["send", "bob", "lunch?"])));
    bob.wait_for_history("alice", &["lunch?"]);
    let sure = sent_id(&ok(&bob.cli(&[
        "send",
        "alice",
        "sure",
        "--reply-to",
        &lunch,
    ])));
    eventually_blocking("alice has bob's reply, quoting hers", || {
        find(&alice, &["bob"], &sure)
            .is_some_and(|m| m.reply_to.map(|r| r.to_string()) == Some(lunch.clone()))
    });

    ok(&alice.cli(&["edit", "bob", &lunch, "lunch at noon?"]));
    eventually_blocking("bob sees the edit", || {
        find(&bob, &["alice"], &lunch).is_some_and(|m| m.text == "lunch at noon?" && m.edited)
    });

    ok(&bob.cli(&["react", "alice", &lunch, "👍"]));
    ok(&alice.cli(&["react", "bob", &lunch, "😂"]));
    ok(&bob.cli(&["react", "alice", &lunch, "❤️"]));
    let both = reactions(&[("alice", "😂"), ("bob", "❤️")]);
    for (d, peer) in [(&alice, "bob"), (&bob, "alice")] {
        eventually_blocking("one reaction per person, bob's replaced", || {
            find(d, &[peer], &lunch).is_some_and(|m| reactions_of(&m) == both)
        });
    }
    ok(&bob.cli(&["react", "--remove", "alice", &lunch]));
    eventually_blocking("bob's reaction is taken back", || {
        find(&alice, &["bob"], &lunch)
            .is_some_and(|m| reactions_of(&m) == reactions(&[("alice", "😂")]))
    });

    // Bad commands are clear errors.
    refused(
        &bob,
        &["edit", "alice", &lunch, "mine now"],
        "only the author",
    );
    refused(&bob, &["delete", "alice", &lunch], "only the author");
    refused(&bob, &["react", "alice", &lunch, "ok"], "one emoji");
    refused(
        &bob,
        &["react", "alice", "0123456789abcdef0123456789abcdef", "👍"],
        "no message",
    );
    refused(
        &bob,
        &["edit", "alice", "not-an-id", "x"],
        "not a message id",
    );

    ok(&alice.cli(&["delete", "bob", &lunch]));
    eventually_blocking("bob's copy is deleted", || {
        find(&bob, &["alice"], &lunch).is_some_and(|m| m.deleted && m.text.is_empty())
    });
    let shown = ok(&bob.cli(&["history", "alice"]));
    assert!(shown.contains("(this message was deleted)"), "{shown}");
    assert!(!shown.contains("lunch at noon"), "{shown}");
    assert!(
        shown.contains(&format!("(reply to {lunch}) sure")),
        "{shown}"
    );

    drop(alice);
    drop(bob);
    stop(&mut rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_reply_edit_react_and_delete_in_a_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut rv, port) = rendezvous_process(&rendezvous_binary(), &tmp.path().join("rv"), 0);
    let url = format!("https://localhost:{port}");
    let names = ["alice", "bob", "carol"];
    let daemons: Vec<Daemon> = names
        .iter()
        .map(|n| Daemon::start(&tmp.path().join(n), &url))
        .collect();
    for (d, n) in daemons.iter().zip(names) {
        d.register(n);
    }
    let [alice, bob, carol] = &daemons[..] else {
        unreachable!()
    };
    let group = ok(&alice.cli(&["group", "create", "lunch", "--members", "bob,carol"]))
        .trim()
        .to_owned();
    let at = ["--group", group.as_str()];
    for d in &daemons {
        eventually_blocking("every member holds the group", || {
            d.cli(&["group", "show", &group]).status.success()
        });
    }

    let plan = sent_id(&ok(&alice.cli(&["send", "--group", &group, "noon?"])));
    for d in &daemons {
        eventually_blocking("everyone has the plan", || find(d, &at, &plan).is_some());
    }
    let yes = sent_id(&ok(&bob.cli(&[
        "send",
        "--group",
        &group,
        "--reply-to",
        &plan,
        "yes",
    ])));
    ok(&alice.cli(&["edit", "--group", &group, &plan, "one o'clock?"]));
    ok(&carol.cli(&["react", "--group", &group, &plan, "🎉"]));
    ok(&bob.cli(&["react", "--group", &group, &plan, "👍"]));
    refused(
        carol,
        &["delete", "--group", &group, &plan],
        "only the author",
    );
    let expected = reactions(&[("bob", "👍"), ("carol", "🎉")]);
    for d in &daemons {
        eventually_blocking("the reply, the edit and both reactions everywhere", || {
            let edited = find(d, &at, &plan).is_some_and(|m| {
                m.text == "one o'clock?" && m.edited && reactions_of(&m) == expected
            });
            let quoting = find(d, &at, &yes)
                .is_some_and(|m| m.reply_to.map(|r| r.to_string()).as_ref() == Some(&plan));
            edited && quoting
        });
    }
    ok(&bob.cli(&["delete", "--group", &group, &yes]));
    for d in &daemons {
        eventually_blocking("bob's reply is deleted everywhere", || {
            find(d, &at, &yes).is_some_and(|m| m.deleted && m.text.is_empty())
        });
    }
    drop(daemons);
    stop(&mut rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_a_message_among_100000_stored_through_the_binaries() {
    use peerchat::driven::sled_store::SledStore;
    use peerchat::ports::{Batch, Direction, IfStored, MessageStatus, Store, StoredMessage, Write};
    use rand::rngs::OsRng;

    let tmp = tempfile::tempdir().unwrap();
    let (mut rv, url, alice, mut bob) = rendezvous_alice_and_bob(tmp.path());
    let bob_dir = tmp.path().join("bob");
    ok(&alice.cli(&["send", "bob", "the Quarterly report is ready"]));
    bob.wait_for_history("alice", &["the Quarterly report is ready"]);

    // 100,000 older messages from 50 people, written into bob's store while his daemon is
    // stopped; every 10,000th mentions the quarter too.
    bob.terminate();
    {
        let (key, _) = peerchat::driven::store_key::unlock(
            &bob_dir,
            &peerchat::driven::store_key::KeyOptions::default(),
            &peerchat::driven::store_key::OsKeyring,
        )
        .unwrap();
        let store = SledStore::open(&bob_dir.join("db"), &key).unwrap();
        for chunk in 0..100u64 {
            let mut batch = Batch::new();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                let text = if i % 10_000 == 0 {
                    format!("quarterly numbers, part {i}")
                } else {
                    format!("filler message {i} about nothing in particular")
                };
                let m = StoredMessage::direct(
                    peerchat::domain::MessageId::random(&mut OsRng),
                    peerchat_pki::Username::new(format!("person{}", i % 50)).unwrap(),
                    Direction::Incoming,
                    text,
                    1_600_000_000_000 + i,
                    MessageStatus::Read,
                );
                batch.push(Write::Message(m, IfStored::Skip));
            }
            store.commit(&batch).unwrap();
        }
        store.flush().await.unwrap();
    }
    bob = Daemon::start(&bob_dir, &url);
    bob.wait_for("listening on");

    let hits: Vec<peerchat::driving::api::SearchHit> =
        serde_json::from_str(&ok(&bob.cli(&["search", "QUARTERLY", "--json"]))).unwrap();
    assert_eq!(hits.len(), 11, "alice's and ten of the stored ones");
    assert_eq!(
        hits[0].peer.as_ref().map(ToString::to_string),
        Some("alice".into())
    );
    assert_eq!(hits[0].message.text, "the Quarterly report is ready");
    assert!(
        hits.windows(2)
            .all(|w| w[0].message.sent_at_ms >= w[1].message.sent_at_ms),
        "newest first"
    );
    assert_eq!(hits[1].message.text, "quarterly numbers, part 90000");
    let shown = ok(&bob.cli(&["search", "quarterly report"]));
    assert!(
        shown.contains("[alice] alice: the Quarterly report is ready"),
        "{shown}"
    );
    let out = bob.cli(&["search", "  "]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("search for some text"));
    drop(alice);
    drop(bob);
    stop(&mut rv);
}
