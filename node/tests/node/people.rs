//! Message requests, blocking, profiles and the typing indicator through the use cases on
//! in-memory adapters.

use peerchat::domain::{MessageId, Standing};
use peerchat::ports::{
    Event, MessageStatus, MessageStore, OutboxStore, Page, PeopleStore, Settings,
};
use peerchat::usecases::NodeError;
use rand::rngs::OsRng;

use crate::usecases::{User, alice_and_bob, direct, flush_outbox, given_a_rendezvous, send};

fn status(u: &User, with: &User, id: MessageId) -> MessageStatus {
    u.store.message(&direct(with), &id).unwrap().unwrap().status
}

/// The profile `u` holds of `of`.
fn profile_seen(u: &User, of: &User) -> peerchat::domain::Profile {
    u.node.person(&of.name).unwrap().unwrap().profile.unwrap()
}

fn typing_seen(u: &User, from: &User) -> usize {
    u.events
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Typing { peer, .. } if *peer == from.name))
        .count()
}

#[tokio::test]
async fn a_first_message_from_a_stranger_is_a_request_until_accepted() {
    let (_world, alice, bob) = alice_and_bob().await;
    alice.node.set_profile("Alice L.", None).await.unwrap();
    bob.node.set_profile("Bob B.", None).await.unwrap();
    let hello = send(&alice, &bob, "hello, we met at the conference").await;

    // Bob stores it, as a request, apart from his conversations.
    assert_eq!(bob.node.standing(&alice.name).unwrap(), Standing::Request);
    let requests = bob.node.requests().unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].peer, alice.name);
    assert_eq!(
        requests[0].conversation.as_ref().unwrap().last.body,
        "hello, we met at the conference"
    );
    // Alice wrote first, so she took the conversation up and shared her profile with it.
    flush_outbox(&alice).await;
    let alice_seen = bob.node.person(&alice.name).unwrap().unwrap();
    assert_eq!(alice_seen.profile.unwrap().display_name, "Alice L.");

    // The delivery receipt goes back; a read receipt, typing and bob's profile do not.
    flush_outbox(&bob).await;
    assert_eq!(status(&alice, &bob, hello), MessageStatus::Delivered);
    bob.node.mark_read(&alice.name).await.unwrap();
    assert_eq!(bob.node.typing(&direct(&alice), true).await.unwrap(), 0);
    flush_outbox(&bob).await;
    assert_eq!(status(&alice, &bob, hello), MessageStatus::Delivered);
    assert_eq!(typing_seen(&alice, &bob), 0);
    assert!(
        alice
            .node
            .person(&bob.name)
            .unwrap()
            .is_none_or(|p| p.profile.is_none())
    );

    // Accepted: no longer a request; alice gets bob's profile, and read receipts flow.
    bob.node.accept_request(&alice.name).await.unwrap();
    assert!(bob.node.requests().unwrap().is_empty());
    assert_eq!(bob.node.standing(&alice.name).unwrap(), Standing::Accepted);
    flush_outbox(&bob).await;
    let bob_seen = alice.node.person(&bob.name).unwrap().unwrap();
    assert_eq!(bob_seen.profile.unwrap().display_name, "Bob B.");
    // What bob read while it was a request is acknowledged as read now.
    assert_eq!(status(&alice, &bob, hello), MessageStatus::Read);
    let again = send(&alice, &bob, "so, coffee?").await;
    bob.node.mark_read(&alice.name).await.unwrap();
    flush_outbox(&bob).await;
    assert_eq!(status(&alice, &bob, again), MessageStatus::Read);
    // Accepting twice is an error that changes nothing.
    assert!(matches!(
        bob.node.accept_request(&alice.name).await,
        Err(NodeError::NoRequest(_))
    ));
}

#[tokio::test]
async fn replying_to_a_request_accepts_it() {
    let (_world, alice, bob) = alice_and_bob().await;
    send(&alice, &bob, "hi").await;
    assert_eq!(bob.node.requests().unwrap().len(), 1);
    send(&bob, &alice, "hello yourself").await;
    assert!(bob.node.requests().unwrap().is_empty());
    assert_eq!(bob.node.standing(&alice.name).unwrap(), Standing::Accepted);
    // And alice, who wrote first, never saw a request.
    assert!(alice.node.requests().unwrap().is_empty());
}

#[tokio::test]
async fn a_blocked_users_messages_are_dropped_without_a_receipt_until_unblocked() {
    let (_world, alice, bob) = alice_and_bob().await;
    send(&alice, &bob, "first").await;
    send(&bob, &alice, "hi").await;
    flush_outbox(&bob).await;
    bob.node.block(&alice.name, true).await.unwrap();
    assert_eq!(bob.node.blocked().unwrap(), vec![alice.name.clone()]);

    let dropped = send(&alice, &bob, "you cannot ignore me").await;
    flush_outbox(&bob).await;
    // Acknowledged like a mailbox deposit, never delivered: alice cannot tell.
    assert_eq!(status(&alice, &bob, dropped), MessageStatus::Sent);
    assert!(
        bob.store
            .message(&direct(&alice), &dropped)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        bob.store.history(&direct(&alice), Page::ALL).unwrap().len(),
        2
    );
    assert!(
        !bob.events
            .events()
            .iter()
            .any(|e| matches!(e, Event::MessageReceived { id, .. } if *id == dropped))
    );
    // Nothing of bob's goes to alice: no message, no typing, no profile.
    let refused = bob
        .node
        .send(&alice.name, MessageId::random(&mut OsRng), "x".into())
        .await;
    assert!(matches!(refused, Err(NodeError::Blocked(_))));
    assert_eq!(bob.node.typing(&direct(&alice), true).await.unwrap(), 0);
    bob.node.set_profile("Bob", None).await.unwrap();
    flush_outbox(&bob).await;
    assert!(
        alice
            .node
            .person(&bob.name)
            .unwrap()
            .is_none_or(|p| p.profile.is_none())
    );
    // Alice's typing is not shown either.
    alice.node.typing(&direct(&bob), true).await.unwrap();
    assert_eq!(typing_seen(&bob, &alice), 0);
    assert!(matches!(
        bob.node.block(&alice.name, true).await,
        Err(NodeError::AlreadyBlocked(_))
    ));

    // Unblocked: alice's next message arrives and decrypts (the session stayed in step).
    bob.node.block(&alice.name, false).await.unwrap();
    let later = send(&alice, &bob, "are we good?").await;
    assert_eq!(
        bob.store
            .message(&direct(&alice), &later)
            .unwrap()
            .unwrap()
            .body,
        "are we good?"
    );
    assert_eq!(bob.node.standing(&alice.name).unwrap(), Standing::Accepted);
    assert!(matches!(
        bob.node.block(&alice.name, false).await,
        Err(NodeError::NotBlocked(_))
    ));
    assert!(matches!(
        bob.node.block(&bob.name, true).await,
        Err(NodeError::OwnAccount(_))
    ));
}

#[tokio::test]
async fn blocking_a_stranger_drops_their_first_message_and_makes_no_request() {
    let (_world, alice, bob) = alice_and_bob().await;
    bob.node.block(&alice.name, true).await.unwrap();
    let id = send(&alice, &bob, "buy cheap watches").await;
    assert_eq!(status(&alice, &bob, id), MessageStatus::Sent);
    assert!(bob.node.requests().unwrap().is_empty());
    assert!(bob.store.conversations().unwrap().is_empty());
}

#[tokio::test]
async fn typing_reaches_a_connected_contact_is_never_stored_and_follows_the_setting() {
    let (world, alice, bob) = alice_and_bob().await;
    send(&alice, &bob, "hi").await;
    send(&bob, &alice, "hello").await;
    let stored = bob.store.history(&direct(&alice), Page::ALL).unwrap().len();

    assert_eq!(alice.node.typing(&direct(&bob), true).await.unwrap(), 1);
    assert!(bob.events.events().contains(&Event::Typing {
        peer: alice.name.clone(),
        group: None,
        typing: true,
    }));
    assert_eq!(
        bob.store.history(&direct(&alice), Page::ALL).unwrap().len(),
        stored
    );
    // The sessions stay in step: a message after the typing decrypts.
    let after = send(&alice, &bob, "still there").await;
    assert!(
        bob.store
            .message(&direct(&alice), &after)
            .unwrap()
            .is_some()
    );

    // Not to someone offline (not queued for later either).
    world.hub.set_online(&bob.name, false);
    assert_eq!(alice.node.typing(&direct(&bob), true).await.unwrap(), 0);
    world.hub.set_online(&bob.name, true);
    // Switched off in the settings: nothing is sent.
    alice
        .node
        .save_settings(Settings {
            read_receipts: true,
            typing: false,
        })
        .await
        .unwrap();
    let seen = typing_seen(&bob, &alice);
    assert_eq!(alice.node.typing(&direct(&bob), false).await.unwrap(), 0);
    assert_eq!(typing_seen(&bob, &alice), seen);
    assert!(!alice.store.settings().unwrap().unwrap().typing);
}

#[tokio::test]
async fn a_profile_is_checked_shared_with_contacts_and_the_newest_kept() {
    let (world, alice, bob) = alice_and_bob().await;
    let carol = world.given_a_registered_user("carol").await;
    send(&alice, &bob, "hi").await;
    assert!(matches!(
        alice.node.set_profile("bad\u{0}name", None).await,
        Err(NodeError::Profile(_))
    ));
    assert!(matches!(
        alice
            .node
            .set_profile("Alice", Some(b"<svg onload=alert(1)>".to_vec()))
            .await,
        Err(NodeError::Profile(_))
    ));
    assert!(alice.node.own_profile().unwrap().is_none());

    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    alice
        .node
        .set_profile("Alice", Some(png.clone()))
        .await
        .unwrap();
    flush_outbox(&alice).await;
    let seen = profile_seen(&bob, &alice);
    assert_eq!(seen.display_name, "Alice");
    assert_eq!(seen.avatar.unwrap().bytes, png);
    // Carol, whom alice never wrote to, gets nothing.
    assert!(carol.node.person(&alice.name).unwrap().is_none());
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    alice.node.set_profile("Alice Liddell", None).await.unwrap();
    flush_outbox(&alice).await;
    let seen = profile_seen(&bob, &alice);
    assert_eq!(seen.display_name, "Alice Liddell");
    assert!(seen.avatar.is_none());
}

#[tokio::test]
async fn a_request_takes_only_so_many_messages_until_accepted_and_a_contact_is_not_limited() {
    let world = given_a_rendezvous().await;
    let alice = world
        .given_a_user_built("alice", |node| node.with_request_limit(3))
        .await;
    let mallory = world.given_a_registered_user("mallory").await;
    let bob = world.given_a_registered_user("bob").await;

    // A stranger's first three messages are kept, as a request; the rest are refused, for good.
    for n in 0..3 {
        let id = send(&mallory, &alice, &format!("buy now {n}")).await;
        assert_eq!(status(&mallory, &alice, id), MessageStatus::Sent);
    }
    let refused = send(&mallory, &alice, "buy now 3").await;
    assert_eq!(status(&mallory, &alice, refused), MessageStatus::Failed);
    assert!(
        mallory
            .store
            .outbox()
            .unwrap()
            .iter()
            .all(|e| e.envelope.id != refused),
        "not sent again"
    );
    assert_eq!(alice.store.message_count(&direct(&mallory)).unwrap(), 3);
    assert!(
        alice
            .store
            .message(&direct(&mallory), &refused)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        alice.node.standing(&mallory.name).unwrap(),
        Standing::Request
    );

    // Someone alice wrote to first is not a request: no limit.
    send(&alice, &bob, "hi bob").await;
    for n in 0..5 {
        send(&bob, &alice, &format!("bob {n}")).await;
    }
    assert_eq!(alice.store.message_count(&direct(&bob)).unwrap(), 6);

    // Accepted, the conversation goes on in step (the refused message advanced the session).
    alice.node.accept_request(&mallory.name).await.unwrap();
    let later = send(&mallory, &alice, "sorry, a real question").await;
    let kept = alice
        .store
        .message(&direct(&mallory), &later)
        .unwrap()
        .unwrap();
    assert_eq!(
        (kept.body.as_str(), kept.status),
        ("sorry, a real question", MessageStatus::Received)
    );
}
