//! Groups through the real binaries: four daemons and the rendezvous binary on 127.0.0.1,
//! driven through the CLI.

use peerchat::driving::api::{GroupView, MessageView};
use peerchat::ports::MessageStatus;

use crate::binaries::{
    Daemon, eventually_blocking, files_containing, ok, rendezvous_binary, rendezvous_process, stop,
};

fn show(d: &Daemon, id: &str) -> Option<GroupView> {
    let out = d.cli(&["group", "show", id, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn history(d: &Daemon, id: &str) -> Vec<MessageView> {
    serde_json::from_str(&ok(&d.cli(&["history", "--group", id, "--json"]))).unwrap()
}

fn texts(d: &Daemon, id: &str) -> Vec<(String, String)> {
    history(d, id)
        .into_iter()
        .map(|m| (m.author.to_string(), m.text))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_daemons_talk_in_a_group_remove_and_re_add_a_member_and_use_the_mailbox() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = rendezvous_binary();
    let rv_dir = tmp.path().join("rendezvous");
    let (mut rv, port) = rendezvous_process(&binary, &rv_dir, 0);
    let url = format!("https://localhost:{port}");
    let names = ["alice", "bob", "carol", "dave"];
    let mut daemons: Vec<Daemon> = names
        .iter()
        .map(|n| Daemon::start(&tmp.path().join(n), &url))
        .collect();
    for (d, n) in daemons.iter().zip(names) {
        d.register(n);
    }

    // Alice creates the group; the id alone is on standard output.
    let group_name = "the quiet reading circle";
    let created =
        ok(&daemons[0].cli(&["group", "create", group_name, "--members", "bob,carol,dave"]));
    let id = created.trim().to_owned();
    assert_eq!(id.len(), 32, "{created}");
    for d in &daemons {
        eventually_blocking("every member holds the group", || {
            show(d, &id).is_some_and(|g| g.version == 1 && g.members.len() == 4)
        });
    }
    let listed = ok(&daemons[2].cli(&["group", "list"]));
    assert!(
        listed.contains(&id) && listed.contains(group_name),
        "{listed}"
    );

    // Everyone talks; every member has every message with its author, in the order sent.
    let mut expected = Vec::new();
    for (d, n) in daemons.iter().zip(names) {
        let text = format!("{n} says hello");
        ok(&d.cli(&["send", "--group", &id, &text]));
        expected.push((n.to_string(), text));
    }
    for d in &daemons {
        eventually_blocking("everyone has every message", || texts(d, &id) == expected);
    }
    // Alice's first message: delivered to all three (receipts per member).
    eventually_blocking("delivered to 3 of 3", || {
        let first = &history(&daemons[0], &id)[0];
        first
            .receipts
            .as_ref()
            .is_some_and(|r| r.recipients == 3 && r.delivered == 3)
    });
    let human = ok(&daemons[0].cli(&["history", "--group", &id]));
    assert!(
        human.contains("alice: alice says hello  [delivered to 3 of 3"),
        "{human}"
    );

    // Carol is removed: she learns it, gets nothing new, and her node refuses to post.
    ok(&daemons[0].cli(&["group", "remove", &id, "carol"]));
    eventually_blocking("carol knows she was removed", || {
        show(&daemons[2], &id).is_some_and(|g| !g.member)
    });
    ok(&daemons[0].cli(&["send", "--group", &id, "carol is gone"]));
    expected.push(("alice".into(), "carol is gone".into()));
    for d in [&daemons[1], &daemons[3]] {
        eventually_blocking("members get the message", || texts(d, &id) == expected);
    }
    let refused = daemons[2].cli(&["send", "--group", &id, "can I still post?"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a member"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A non-admin's change is refused with a clear error.
    let not_admin = daemons[1].cli(&["group", "rename", &id, "bob's"]);
    assert!(!not_admin.status.success());
    assert!(String::from_utf8_lossy(&not_admin.stderr).contains("may not"));

    // Carol is added back and receives again.
    ok(&daemons[0].cli(&["group", "add", &id, "carol"]));
    eventually_blocking("carol is a member again", || {
        show(&daemons[2], &id).is_some_and(|g| g.member && g.version == 3)
    });
    assert!(
        !texts(&daemons[2], &id).contains(&("alice".into(), "carol is gone".into())),
        "carol got a message sent while she was out"
    );
    ok(&daemons[1].cli(&["send", "--group", &id, "welcome back"]));
    eventually_blocking("carol gets messages again", || {
        texts(&daemons[2], &id).last() == Some(&("bob".into(), "welcome back".into()))
    });

    // Dave is offline: the message waits in the mailbox, which learns nothing of the group.
    daemons[3].kill();
    let out = ok(&daemons[0].cli(&["send", "--group", &id, "while dave was away"]));
    assert!(out.trim_end().ends_with("sent"), "{out}");
    let mine = history(&daemons[0], &id).pop().unwrap();
    assert_eq!(
        mine.receipts.unwrap().members[&"dave".parse().unwrap()],
        MessageStatus::Sent,
        "the mailbox took dave's copy"
    );
    stop(&mut rv);
    let raw_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for needle in [
        group_name.as_bytes(),
        id.as_bytes(),
        &raw_id,
        b"while dave was away",
    ] {
        let found = files_containing(&rv_dir, needle);
        assert!(
            found.is_empty(),
            "the rendezvous stored {:?} in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    rv = rendezvous_process(&binary, &rv_dir, port).0;
    daemons[3] = Daemon::start(&tmp.path().join("dave"), &url);
    daemons[3].wait_for("listening on");
    eventually_blocking("dave gets it from the mailbox", || {
        texts(&daemons[3], &id).last() == Some(&("alice".into(), "while dave was away".into()))
    });
    stop(&mut rv);
}
