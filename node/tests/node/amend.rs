//! Replies, edits, deletes for everyone and reactions through the use cases on in-memory
//! adapters, one to one and in a group; forged amendments (what a modified client sends) are
//! refused by the receiver and change nothing.

use peerchat::domain::amend::EDIT_WINDOW_MS;
use peerchat::domain::{AmendRefused, Amendment, ConversationId, GroupId, MessageId};
use peerchat::ports::{
    Batch, Direction, IfStored, MessageStatus, MessageStore, Page, Store, StoredMessage, Write,
};
use peerchat::usecases::NodeError;
use rand::rngs::OsRng;

use crate::usecases::{User, World, alice_and_bob, direct, flush_outbox, given_a_rendezvous, send};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `u`'s copy of message `id` in `conversation`.
fn copy(u: &User, conversation: &ConversationId, id: MessageId) -> StoredMessage {
    u.store.message(conversation, &id).unwrap().unwrap()
}

fn react(emoji: &str) -> Amendment {
    Amendment::React {
        emoji: Some(emoji.into()),
    }
}

/// Makes `u`'s store hold `message` as given (a modified client's view of it).
fn doctor(u: &User, message: StoredMessage) {
    u.store
        .commit(&Batch::new().with(Write::Message(message, IfStored::Replace)))
        .unwrap();
}

#[tokio::test]
async fn a_reply_an_edit_reactions_and_a_delete_reach_the_other_side() {
    let (_world, alice, bob) = alice_and_bob().await;
    let hello = send(&alice, &bob, "hello bob").await;

    // Bob replies, quoting it.
    let answer = MessageId::random(&mut OsRng);
    bob.node
        .reply(&alice.name, answer, "hi alice".into(), hello)
        .await
        .unwrap();
    assert_eq!(copy(&alice, &direct(&bob), answer).reply_to, Some(hello));
    assert_eq!(copy(&bob, &direct(&alice), answer).reply_to, Some(hello));

    // Alice edits hers: both copies show the new text, marked edited.
    alice
        .node
        .amend(
            &direct(&bob),
            hello,
            Amendment::Edit {
                body: "hello, bob".into(),
            },
        )
        .await
        .unwrap();
    flush_outbox(&alice).await;
    for (u, with) in [(&alice, &bob), (&bob, &alice)] {
        let m = copy(u, &direct(with), hello);
        assert_eq!(m.body, "hello, bob", "{}", u.name);
        assert!(m.edited_at_ms.is_some(), "{}", u.name);
    }

    // One reaction per person: bob's second replaces his first; alice's is apart.
    bob.node
        .amend(&direct(&alice), hello, react("👍"))
        .await
        .unwrap();
    bob.node
        .amend(&direct(&alice), hello, react("❤️"))
        .await
        .unwrap();
    alice
        .node
        .amend(&direct(&bob), hello, react("😂"))
        .await
        .unwrap();
    flush_outbox(&bob).await;
    flush_outbox(&alice).await;
    for (u, with) in [(&alice, &bob), (&bob, &alice)] {
        let reactions = copy(u, &direct(with), hello).reactions;
        assert_eq!(reactions.len(), 2, "{}", u.name);
        assert_eq!(reactions[&bob.name], "❤️");
        assert_eq!(reactions[&alice.name], "😂");
    }
    // Bob takes his back.
    bob.node
        .amend(&direct(&alice), hello, Amendment::React { emoji: None })
        .await
        .unwrap();
    flush_outbox(&bob).await;
    assert!(
        !copy(&alice, &direct(&bob), hello)
            .reactions
            .contains_key(&bob.name)
    );

    // Alice deletes it for everyone: the text is gone from both stores, not hidden.
    alice
        .node
        .amend(&direct(&bob), hello, Amendment::Delete)
        .await
        .unwrap();
    flush_outbox(&alice).await;
    for (u, with) in [(&alice, &bob), (&bob, &alice)] {
        let m = copy(u, &direct(with), hello);
        assert!(m.deleted, "{}", u.name);
        assert_eq!(m.body, "");
        assert!(m.reactions.is_empty());
        let texts: Vec<String> = u
            .store
            .history(&direct(with), Page::ALL)
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert!(
            texts.iter().all(|t| !t.contains("hello")),
            "{}: {texts:?}",
            u.name
        );
    }
    // The reply still names it.
    assert_eq!(copy(&bob, &direct(&alice), answer).reply_to, Some(hello));
    // Nothing more is done to a deleted message.
    assert!(matches!(
        alice
            .node
            .amend(
                &direct(&bob),
                hello,
                Amendment::Edit {
                    body: "again".into()
                }
            )
            .await,
        Err(NodeError::Amend(AmendRefused::Deleted))
    ));
}

#[tokio::test]
async fn only_the_author_edits_or_deletes_and_a_forged_edit_changes_nothing() {
    let (_world, alice, bob) = alice_and_bob().await;
    let hello = send(&alice, &bob, "hello bob").await;

    // Bob's node refuses to edit or delete alice's message.
    for amendment in [
        Amendment::Edit {
            body: "forged".into(),
        },
        Amendment::Delete,
    ] {
        assert!(matches!(
            bob.node.amend(&direct(&alice), hello, amendment).await,
            Err(NodeError::Amend(AmendRefused::NotAuthor))
        ));
    }
    // A modified client believes it wrote alice's message and sends an edit and a delete:
    // alice's node refuses both and her message is as she wrote it.
    doctor(
        &bob,
        StoredMessage::direct(
            hello,
            alice.name.clone(),
            Direction::Outgoing,
            "hello bob".into(),
            now_ms(),
            MessageStatus::Sent,
        ),
    );
    bob.node
        .amend(
            &direct(&alice),
            hello,
            Amendment::Edit {
                body: "forged".into(),
            },
        )
        .await
        .unwrap();
    bob.node
        .amend(&direct(&alice), hello, Amendment::Delete)
        .await
        .unwrap();
    flush_outbox(&bob).await;
    let kept = copy(&alice, &direct(&bob), hello);
    assert_eq!(kept.body, "hello bob");
    assert!(!kept.deleted && kept.edited_at_ms.is_none());
    // Bob's outbox is empty: the refusals were final answers.
    assert!(
        peerchat::ports::OutboxStore::outbox(&bob.store)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn edits_and_deletes_end_24_hours_after_sending() {
    let (_world, alice, bob) = alice_and_bob().await;
    let old = send(&alice, &bob, "from yesterday").await;
    let day_ago = now_ms() - EDIT_WINDOW_MS - 60_000;
    for (u, peer, direction) in [
        (&alice, &bob, Direction::Outgoing),
        (&bob, &alice, Direction::Incoming),
    ] {
        let m = copy(u, &direct(peer), old);
        doctor(
            u,
            StoredMessage {
                sent_at_ms: day_ago,
                direction,
                ..m
            },
        );
    }
    // Alice's node refuses.
    assert!(matches!(
        alice
            .node
            .amend(&direct(&bob), old, Amendment::Delete)
            .await,
        Err(NodeError::Amend(AmendRefused::TooLate))
    ));
    // A modified client that thinks it is still in time: bob's node refuses.
    let m = copy(&alice, &direct(&bob), old);
    doctor(
        &alice,
        StoredMessage {
            sent_at_ms: now_ms(),
            ..m
        },
    );
    alice
        .node
        .amend(
            &direct(&bob),
            old,
            Amendment::Edit {
                body: "rewritten history".into(),
            },
        )
        .await
        .unwrap();
    flush_outbox(&alice).await;
    let kept = copy(&bob, &direct(&alice), old);
    assert_eq!(kept.body, "from yesterday");
    assert!(kept.edited_at_ms.is_none());
    // Reactions have no window.
    bob.node
        .amend(&direct(&alice), old, react("👍"))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_replies_and_amendments_are_clear_errors_and_change_nothing() {
    let (_world, alice, bob) = alice_and_bob().await;
    let hello = send(&alice, &bob, "hello bob").await;
    let unknown = MessageId::random(&mut OsRng);
    assert!(matches!(
        bob.node
            .reply(&alice.name, MessageId::random(&mut OsRng), "?".into(), unknown)
            .await,
        Err(NodeError::NoSuchMessage(id)) if id == unknown
    ));
    assert!(matches!(
        alice
            .node
            .amend(&direct(&bob), unknown, Amendment::Delete)
            .await,
        Err(NodeError::NoSuchMessage(_))
    ));
    for not_one_emoji in ["ok", "👍👍", "", " "] {
        assert!(
            matches!(
                bob.node
                    .amend(&direct(&alice), hello, react(not_one_emoji))
                    .await,
                Err(NodeError::Amend(AmendRefused::NotAnEmoji))
            ),
            "{not_one_emoji:?}"
        );
    }
    assert!(matches!(
        alice
            .node
            .amend(
                &direct(&bob),
                hello,
                Amendment::Edit {
                    body: "x".repeat(peerchat::domain::content::MAX_TEXT_BYTES + 1)
                }
            )
            .await,
        Err(NodeError::Amend(AmendRefused::TextTooLong))
    ));
    // Nothing changed on either side, and nothing was queued.
    for (u, with) in [(&alice, &bob), (&bob, &alice)] {
        let m = copy(u, &direct(with), hello);
        assert_eq!(m.body, "hello bob");
        assert!(m.reactions.is_empty() && m.edited_at_ms.is_none());
        assert_eq!(u.store.history(&direct(with), Page::ALL).unwrap().len(), 1);
    }
}

async fn a_group_of_three() -> (World, [User; 3], GroupId) {
    let world = given_a_rendezvous().await;
    let mut people = Vec::new();
    for name in ["alice", "bob", "carol"] {
        people.push(world.given_a_registered_user(name).await);
    }
    let people: [User; 3] = people.try_into().ok().unwrap();
    let others = vec![people[1].name.clone(), people[2].name.clone()];
    let id = people[0]
        .node
        .create_group("friends", &others)
        .await
        .unwrap();
    (world, people, id)
}

#[tokio::test]
async fn replies_edits_deletes_and_reactions_work_in_a_group() {
    let (_world, people, group) = a_group_of_three().await;
    let [alice, bob, carol] = &people;
    let conversation = ConversationId::Group(group);
    let plan = MessageId::random(&mut OsRng);
    alice
        .node
        .send_group(&group, plan, "dinner at 8?".into())
        .await
        .unwrap();
    let yes = MessageId::random(&mut OsRng);
    bob.node
        .reply_group(&group, yes, "yes".into(), plan)
        .await
        .unwrap();
    for u in &people {
        assert_eq!(
            copy(u, &conversation, yes).reply_to,
            Some(plan),
            "{}",
            u.name
        );
    }
    alice
        .node
        .amend(
            &conversation,
            plan,
            Amendment::Edit {
                body: "dinner at 9?".into(),
            },
        )
        .await
        .unwrap();
    bob.node
        .amend(&conversation, plan, react("👍"))
        .await
        .unwrap();
    carol
        .node
        .amend(&conversation, plan, react("🎉"))
        .await
        .unwrap();
    for u in &people {
        let m = copy(u, &conversation, plan);
        assert_eq!(m.body, "dinner at 9?", "{}", u.name);
        assert!(m.edited_at_ms.is_some());
        assert_eq!(m.reactions.len(), 2, "{}", u.name);
        assert_eq!(m.reactions[&carol.name], "🎉");
    }
    // Carol is not the author: her node refuses, and a forged edit is refused by every member.
    assert!(matches!(
        carol
            .node
            .amend(&conversation, plan, Amendment::Delete)
            .await,
        Err(NodeError::Amend(AmendRefused::NotAuthor))
    ));
    let mut forged = copy(carol, &conversation, plan);
    forged.direction = Direction::Outgoing;
    forged.peer = carol.name.clone();
    doctor(carol, forged);
    carol
        .node
        .amend(&conversation, plan, Amendment::Delete)
        .await
        .unwrap();
    for u in [alice, bob] {
        let m = copy(u, &conversation, plan);
        assert!(!m.deleted, "{}", u.name);
        assert_eq!(m.body, "dinner at 9?");
    }
    // Bob deletes his reply: gone for everyone.
    bob.node
        .amend(&conversation, yes, Amendment::Delete)
        .await
        .unwrap();
    for u in &people {
        let m = copy(u, &conversation, yes);
        assert!(m.deleted && m.body.is_empty(), "{}", u.name);
    }
}
