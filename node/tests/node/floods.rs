//! The real binaries under floods: many sends to an offline peer, junk in a mailbox, a drain of
//! one-time prekeys.

use peerchat::driving::api::{SendAnswer, SendBody};
use peerchat::ports::MessageStatus;
use peerchat_pki::Username;

use crate::binaries::{Daemon, rendezvous};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fast_sends_to_an_offline_peer_are_all_queued_none_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let mut bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    assert!(alice.cli(&["send", "bob", "first"]).status.success());
    bob.kill();

    // 200 sends, 20 at a time, through the local API: more lookups and deposits than the
    // rendezvous allows a user at once.
    let (http, base, token) = alice.api();
    let mut refused = Vec::new();
    for batch in 0..10 {
        let sends = (0..20).map(|i| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            tokio::spawn(async move {
                http.post(format!("{base}/api/v1/messages"))
                    .bearer_auth(&token)
                    .json(&SendBody {
                        to: Username::new("bob").unwrap(),
                        text: format!("message {}", batch * 20 + i),
                        id: None,
                    })
                    .send()
                    .await
                    .unwrap()
            })
        });
        for send in sends {
            let response = send.await.unwrap();
            let status = response.status();
            if status.is_success() {
                let answer: SendAnswer = response.json().await.unwrap();
                assert!(
                    matches!(answer.status, MessageStatus::Pending | MessageStatus::Sent),
                    "{:?}",
                    answer.status
                );
            } else {
                refused.push((status, response.text().await.unwrap()));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "{} sends refused, the first: {:?}",
        refused.len(),
        refused.first()
    );
    let history = alice.history_json("bob");
    assert_eq!(history.len(), 201, "every message is stored and queued");
}
