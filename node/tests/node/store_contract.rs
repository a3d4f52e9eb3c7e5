//! The node's store contract, one function per small store, each checked against the sled and
//! the in-memory adapter.

use peerchat::domain::{
    Address, ConversationId, DeviceId, Envelope, IdentityKeyPair, MessageId, OneTimePreKeyPair,
    PreKeyId, SignedPreKeyPair,
};
use peerchat::driven::memory::MemoryStore;
use peerchat::driven::sled_store::SledStore;
use peerchat::driven::store_key::StoreKey;
use peerchat::ports::{
    Batch, Contact, Direction, HeldInbound, IfStored, LocalIdentity, MAX_HELD_INBOUND,
    MessageStatus, MessageStore, OutboxEntry, Page, Store, StoredMessage, Write,
};
use peerchat_pki::Username;

use crate::support::established;

fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

fn id(n: u8) -> MessageId {
    MessageId::from_bytes([n; 16])
}

fn message(peer: &Username, n: u8, direction: Direction) -> StoredMessage {
    StoredMessage::direct(
        id(n),
        peer.clone(),
        direction,
        format!("m{n}"),
        u64::from(n),
        if direction == Direction::Outgoing {
            MessageStatus::Pending
        } else {
            MessageStatus::Received
        },
    )
}

fn entry(to: Address, n: u8) -> OutboxEntry {
    OutboxEntry {
        queued_at_ms: 1,
        to,
        envelope: Envelope {
            id: id(n),
            trace: None,
            payload: vec![n; 3],
        },
        group: None,
    }
}

fn status(to: &Username, n: u8, status: MessageStatus, only: Option<Direction>) -> Write {
    Write::Status {
        conversation: to.into(),
        id: id(n),
        status,
        only,
    }
}

fn ids(messages: &[StoredMessage]) -> Vec<u8> {
    messages.iter().map(|m| m.id.as_bytes()[0]).collect()
}

/// Identity and prekeys.
fn identity_and_prekeys(store: &impl Store) {
    let mut rng = crate::support::rng(1);
    let me = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKeyPair::generate(PreKeyId(1), &me, &mut rng);
    let opks: Vec<_> = (2..5)
        .map(|i| OneTimePreKeyPair::generate(PreKeyId(i), &mut rng))
        .collect();
    let identity = LocalIdentity {
        username: user("alice"),
        seed: me.to_seed(),
        certificate_pem: "cert".into(),
        ca_pem: "ca".into(),
    };
    assert!(store.identity().unwrap().is_none());
    store.save_identity(&identity, &spk, &opks).unwrap();
    let saved = store.identity().unwrap().unwrap();
    assert_eq!(
        (saved.username.as_str(), *saved.seed),
        ("alice", *me.to_seed())
    );
    store.save_certificate("renewed").unwrap();
    assert_eq!(
        store.identity().unwrap().unwrap().certificate_pem,
        "renewed"
    );

    assert_eq!(
        store.signed_prekey(PreKeyId(1)).unwrap().unwrap().public(),
        spk.public()
    );
    assert!(store.one_time_prekey(PreKeyId(3)).unwrap().is_some());
    let next = store.next_prekey_id().unwrap();
    assert!(next.0 >= 5, "ids never reused: {next:?}");
    assert!(store.next_prekey_id().unwrap().0 > next.0);
    assert_eq!(store.signed_prekey_rotated_at().unwrap(), None);
    let newer = SignedPreKeyPair::generate(PreKeyId(50), &me, &mut rng);
    store.add_signed_prekey(&newer, 1234).unwrap();
    assert_eq!(store.signed_prekey_rotated_at().unwrap(), Some(1234));
    assert!(
        store.signed_prekey(PreKeyId(1)).unwrap().is_some(),
        "older signed prekeys are kept for late initial messages"
    );
    let more = [OneTimePreKeyPair::generate(PreKeyId(60), &mut rng)];
    store.add_one_time_prekeys(&more).unwrap();
    assert!(store.one_time_prekey(PreKeyId(60)).unwrap().is_some());
    // Consumed in a commit.
    store
        .commit(&Batch::new().with(Write::ConsumePreKey(PreKeyId(3))))
        .unwrap();
    assert!(store.one_time_prekey(PreKeyId(3)).unwrap().is_none());
}

/// Sessions, per device.
fn sessions(store: &impl Store) {
    let bob = Address::first(user("bob"));
    let bob_2 = Address {
        user: user("bob"),
        device: DeviceId(2),
    };
    assert!(store.session(&bob).unwrap().is_none());
    let (session, _, _) = established(2);
    let fingerprint = session.to_bytes().to_vec();
    store
        .commit(&Batch::new().with(Write::Session(bob.clone(), Box::new(session))))
        .unwrap();
    assert_eq!(
        store.session(&bob).unwrap().unwrap().to_bytes().to_vec(),
        fingerprint
    );
    assert!(
        store.session(&bob_2).unwrap().is_none(),
        "another device of the same user has its own session"
    );
}

/// Contacts.
fn contacts(store: &impl Store) {
    let key = *IdentityKeyPair::generate(&mut crate::support::rng(4)).public();
    for name in ["carol", "bob"] {
        store
            .save_contact(&Contact {
                username: user(name),
                identity_key: key,
                verified: false,
                pending_key: None,
            })
            .unwrap();
    }
    let mut bob = store
        .contact(&Address::first(user("bob")))
        .unwrap()
        .unwrap();
    bob.verified = true;
    store.save_contact(&bob).unwrap();
    assert!(
        store
            .contact(&Address::first(user("bob")))
            .unwrap()
            .unwrap()
            .verified
    );
    let names: Vec<String> = store
        .contacts()
        .unwrap()
        .iter()
        .map(|c| c.username.to_string())
        .collect();
    assert_eq!(names, ["bob", "carol"], "by name");
    assert!(
        store
            .contact(&Address::first(user("dave")))
            .unwrap()
            .is_none()
    );
    let second_device = Address {
        user: user("bob"),
        device: DeviceId(2),
    };
    assert!(
        store.contact(&second_device).unwrap().is_none(),
        "a key is pinned per device"
    );
}

/// Messages: atomic commits, duplicates, statuses only forward, unread counts, pages.
fn messages(store: &impl Store) {
    let bob = user("bob");
    let carol = user("carol");
    let to_bob = Address::first(bob.clone());
    let (session, _, _) = established(2);
    // The send step: message, session and outbox entry together.
    store
        .commit(
            &Batch::new()
                .with(Write::Message(
                    message(&bob, 1, Direction::Outgoing),
                    IfStored::Skip,
                ))
                .with(Write::Session(to_bob.clone(), Box::new(session)))
                .with(Write::Enqueue(entry(to_bob.clone(), 1))),
        )
        .unwrap();
    assert_eq!(store.outbox().unwrap(), vec![entry(to_bob.clone(), 1)]);

    // A received message is unread; the same id again changes nothing, not even the session
    // written beside it.
    let received = Batch::new().with(Write::Message(
        message(&bob, 2, Direction::Incoming),
        IfStored::Skip,
    ));
    assert!(!store.commit(&received).unwrap().duplicate);
    let (other, _, _) = established(3);
    let again = Batch::new()
        .with(Write::Session(to_bob.clone(), Box::new(other)))
        .with(Write::Message(
            message(&bob, 2, Direction::Incoming),
            IfStored::Skip,
        ))
        .with(Write::Enqueue(entry(to_bob.clone(), 9)));
    let before = store.session(&to_bob).unwrap().unwrap().to_bytes().to_vec();
    assert!(store.commit(&again).unwrap().duplicate);
    assert_eq!(
        store.session(&to_bob).unwrap().unwrap().to_bytes().to_vec(),
        before,
        "a duplicate leaves the whole batch unwritten"
    );
    assert_eq!(store.outbox().unwrap().len(), 1);
    store
        .commit(&Batch::new().with(Write::Message(
            message(&carol, 3, Direction::Incoming),
            IfStored::Skip,
        )))
        .unwrap();

    assert_eq!(
        ids(&store.history(&(&bob).into(), Page::ALL).unwrap()),
        [1, 2]
    );
    let list = store.conversations().unwrap();
    let summary: Vec<(String, u64, u64)> = list
        .iter()
        .map(|c| (c.id.to_string(), c.messages, c.unread))
        .collect();
    assert_eq!(
        summary,
        [("carol".into(), 1, 1), ("bob".into(), 2, 1)],
        "most recent first, with the unread count kept"
    );
    assert_eq!(
        [&bob, &carol, &user("dave")].map(|u| store.message_count(&u.into()).unwrap()),
        [2, 1, 0]
    );

    // Statuses only move forward; a receipt's direction filter keeps incoming ones out.
    let bob_id = ConversationId::from(&bob);
    let status_of = |n| store.message(&bob_id, &id(n)).unwrap().unwrap().status;
    let moved = |write| store.commit(&Batch::new().with(write)).unwrap().advanced;
    assert_eq!(moved(status(&bob, 1, MessageStatus::Sent, None)), [id(1)]);
    assert!(moved(status(&bob, 1, MessageStatus::Pending, None)).is_empty());
    assert_eq!(moved(status(&bob, 1, MessageStatus::Read, None)), [id(1)]);
    assert!(moved(status(&bob, 1, MessageStatus::Sent, None)).is_empty());
    assert!(moved(status(&bob, 1, MessageStatus::Delivered, None)).is_empty());
    assert_eq!(status_of(1), MessageStatus::Read);
    assert!(
        moved(status(
            &bob,
            2,
            MessageStatus::Read,
            Some(Direction::Outgoing)
        ))
        .is_empty(),
        "a receipt does not touch what the peer sent"
    );
    assert!(moved(status(&bob, 99, MessageStatus::Sent, None)).is_empty());
    store
        .commit(&Batch::new().with(Write::Dequeue(to_bob.clone(), id(1))))
        .unwrap();
    assert!(store.outbox().unwrap().is_empty());

    // Reading moves the unread count down, once.
    assert_eq!(
        moved(status(
            &bob,
            2,
            MessageStatus::Read,
            Some(Direction::Incoming)
        )),
        [id(2)]
    );
    assert!(moved(status(&bob, 2, MessageStatus::Read, None)).is_empty());
    let unread = |who: &Username| {
        store
            .conversations()
            .unwrap()
            .into_iter()
            .find(|c| c.id == ConversationId::from(who))
            .unwrap()
            .unread
    };
    assert_eq!((unread(&bob), unread(&carol)), (0, 1));

    // One that could not be decrypted is kept once; a good copy replaces it in place.
    let mut broken = message(&carol, 7, Direction::Incoming);
    broken.status = MessageStatus::Undecryptable;
    broken.body.clear();
    let keep = |m: StoredMessage, if_stored| {
        store
            .commit(&Batch::new().with(Write::Message(m, if_stored)))
            .unwrap()
            .duplicate
    };
    assert!(!keep(broken.clone(), IfStored::Skip));
    assert!(keep(broken, IfStored::Skip));
    assert_eq!(
        unread(&carol),
        1,
        "an undecryptable message is not unread text"
    );
    let good = message(&carol, 7, Direction::Incoming);
    assert!(!keep(good.clone(), IfStored::ReplaceUndecryptable));
    assert!(keep(good.clone(), IfStored::ReplaceUndecryptable));
    let carol_id = ConversationId::from(&carol);
    assert_eq!(store.message(&carol_id, &good.id).unwrap().unwrap(), good);
    assert_eq!(ids(&store.history(&carol_id, Page::ALL).unwrap()), [3, 7]);
    assert_eq!(unread(&carol), 2);
    // A held message released: replaced in place.
    let mut held = message(&carol, 8, Direction::Outgoing);
    held.status = MessageStatus::Held;
    assert!(!keep(held.clone(), IfStored::Skip));
    held.status = MessageStatus::Pending;
    assert!(!keep(held, IfStored::Replace));
    assert_eq!(
        store.message(&carol_id, &id(8)).unwrap().unwrap().status,
        MessageStatus::Pending
    );
    assert_eq!(
        ids(&store.history(&carol_id, Page::ALL).unwrap()),
        [3, 7, 8]
    );

    // Pages: the latest first, then the ones before, oldest first within each.
    let dave = user("dave");
    for n in 10..40 {
        keep(message(&dave, n, Direction::Incoming), IfStored::Skip);
    }
    let dave_id = ConversationId::from(&dave);
    let latest = store.history(&dave_id, Page::latest(12)).unwrap();
    assert_eq!(ids(&latest), (28..40).collect::<Vec<_>>());
    let before = store
        .history(
            &dave_id,
            Page {
                before: Some(latest[0].id),
                limit: 12,
            },
        )
        .unwrap();
    assert_eq!(ids(&before), (16..28).collect::<Vec<_>>());
    let first = store
        .history(
            &dave_id,
            Page {
                before: Some(before[0].id),
                limit: 12,
            },
        )
        .unwrap();
    assert_eq!(ids(&first), (10..16).collect::<Vec<_>>(), "the rest");
    assert!(
        store
            .history(
                &dave_id,
                Page {
                    before: Some(first[0].id),
                    limit: 12
                }
            )
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .history(
                &dave_id,
                Page {
                    before: Some(id(200)),
                    limit: 12
                }
            )
            .unwrap()
            .is_empty(),
        "before an unknown message: nothing"
    );
    assert!(
        store
            .history(&ConversationId::from(&user("erin")), Page::ALL)
            .unwrap()
            .is_empty()
    );
}

/// Envelopes from an unaccepted key: kept in arrival order, once per id, bounded, released one
/// by one.
fn held_inbound(store: &impl Store) {
    let bob = user("bob");
    let held = |n: u8| HeldInbound {
        from: bob.clone(),
        identity_key: *IdentityKeyPair::generate(&mut crate::support::rng(9)).public(),
        envelope: Envelope {
            id: id(n),
            trace: None,
            payload: vec![n; 8],
        },
    };
    assert!(store.hold_inbound(&held(3)).unwrap());
    assert!(store.hold_inbound(&held(1)).unwrap());
    assert!(
        store.hold_inbound(&held(3)).unwrap(),
        "a second copy is not kept"
    );
    let held_ids = |list: Vec<HeldInbound>| -> Vec<u8> {
        list.iter().map(|h| h.envelope.id.as_bytes()[0]).collect()
    };
    assert_eq!(held_ids(store.held_inbound(&bob).unwrap()), [3, 1]);
    assert!(store.held_inbound(&user("carol")).unwrap().is_empty());
    store.release_inbound(&bob, &id(3)).unwrap();
    assert_eq!(held_ids(store.held_inbound(&bob).unwrap()), [1]);
    for n in 1..MAX_HELD_INBOUND {
        let mut h = held(0);
        h.envelope.id = MessageId::from_bytes((1000 + n as u128).to_be_bytes());
        assert!(store.hold_inbound(&h).unwrap());
    }
    assert_eq!(store.held_inbound(&bob).unwrap().len(), MAX_HELD_INBOUND);
    assert!(!store.hold_inbound(&held(200)).unwrap(), "past the bound");
}

/// The outbox, per device and id.
fn outbox(store: &impl Store) {
    let bob = Address::first(user("bob"));
    let bob_2 = Address {
        user: user("bob"),
        device: DeviceId(2),
    };
    store
        .commit(
            &Batch::new()
                .with(Write::Enqueue(entry(bob.clone(), 1)))
                .with(Write::Enqueue(entry(bob_2.clone(), 1))),
        )
        .unwrap();
    assert_eq!(store.outbox().unwrap().len(), 2, "one entry per device");
    store
        .commit(&Batch::new().with(Write::Dequeue(bob_2.clone(), id(1))))
        .unwrap();
    assert_eq!(store.outbox().unwrap(), vec![entry(bob, 1)]);
}

/// Search over every conversation, and amendments applied inside the commit.
fn search_and_amend(store: &impl Store) {
    use peerchat::domain::{Amendment, GroupId};
    let dora = user("dora");
    let with_dora = ConversationId::from(&dora);
    let mut batch = Batch::new();
    for (n, text) in [
        (101, "Lunch at NOON?"),
        (102, "no lunch today"),
        (103, "dinner"),
        (104, "LUNCH again"),
    ] {
        let m = StoredMessage::direct(
            id(n),
            dora.clone(),
            Direction::Incoming,
            text.into(),
            u64::from(n) * 1000,
            MessageStatus::Received,
        );
        batch.push(Write::Message(m, IfStored::Skip));
    }
    let in_group = StoredMessage {
        group: Some(GroupId::from_bytes([9; 16])),
        ..StoredMessage::direct(
            id(105),
            user("erin"),
            Direction::Incoming,
            "lunch in the group".into(),
            105_000,
            MessageStatus::Received,
        )
    };
    batch.push(Write::Message(in_group, IfStored::Skip));
    store.commit(&batch).unwrap();
    let found = |text: &str, limit: usize| {
        let query = peerchat::domain::search::Query::parse(text).unwrap();
        ids(&store.search(&query, limit).unwrap())
    };
    // Every conversation, case ignored, newest first, at most `limit`.
    assert_eq!(found("lunch", 10), vec![105, 104, 102, 101]);
    assert_eq!(found("LuNcH", 2), vec![105, 104]);
    assert_eq!(found("noon", 10), vec![101]);
    assert_eq!(found("no", 10), vec![102, 101], "words beginning with it");
    assert_eq!(found("lunch today", 10), vec![102], "every word");
    assert!(found("breakfast", 10).is_empty());
    assert!(
        found("unch", 10).is_empty(),
        "words are found by their beginning"
    );

    // A delete removes the text from the store, and so from search.
    let amend = |n: u8, by: &str, amendment: Amendment| Write::Amend {
        conversation: with_dora.clone(),
        id: id(n),
        by: user(by),
        at_ms: 110_000,
        amendment,
    };
    let committed = store
        .commit(&Batch::new().with(amend(104, "dora", Amendment::Delete)))
        .unwrap();
    assert_eq!(committed.amended, vec![id(104)]);
    let deleted = store.message(&with_dora, &id(104)).unwrap().unwrap();
    assert!(deleted.deleted && deleted.body.is_empty());
    assert_eq!(found("lunch", 10), vec![105, 102, 101]);
    // Edits and reactions are kept; an amendment of a missing message is skipped.
    let committed = store
        .commit(
            &Batch::new()
                .with(amend(
                    101,
                    "dora",
                    Amendment::Edit {
                        body: "brunch at noon?".into(),
                    },
                ))
                .with(amend(
                    101,
                    "mia",
                    Amendment::React {
                        emoji: Some("👍".into()),
                    },
                ))
                .with(amend(200, "dora", Amendment::Delete)),
        )
        .unwrap();
    assert_eq!(committed.amended, vec![id(101), id(101)]);
    let edited = store.message(&with_dora, &id(101)).unwrap().unwrap();
    assert_eq!(edited.body, "brunch at noon?");
    assert_eq!(edited.edited_at_ms, Some(110_000));
    assert_eq!(edited.reactions[&user("mia")], "👍");
    assert_eq!(found("lunch", 10), vec![105, 102]);
    assert_eq!(found("brunch", 10), vec![101], "an edit's words are found");
    // A held message replaced by its released copy is found by its new text only.
    let released = StoredMessage::direct(
        id(103),
        dora.clone(),
        Direction::Incoming,
        "supper instead".into(),
        103_000,
        MessageStatus::Received,
    );
    store
        .commit(&Batch::new().with(Write::Message(released, IfStored::Replace)))
        .unwrap();
    assert!(found("dinner", 10).is_empty());
    assert_eq!(found("supper", 10), vec![103]);
}

async fn contract(store: &impl Store) {
    identity_and_prekeys(store);
    sessions(store);
    contacts(store);
    messages(store);
    search_and_amend(store);
    held_inbound(store);
    outbox(store);
    store.flush().await.unwrap();
}

#[tokio::test]
async fn the_sled_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&SledStore::open(dir.path(), &StoreKey::from_bytes([7; 32])).unwrap()).await;
    // And it is all still there after reopening, unread counts included.
    let store = SledStore::open(dir.path(), &StoreKey::from_bytes([7; 32])).unwrap();
    let bob = ConversationId::from(&user("bob"));
    assert_eq!(store.history(&bob, Page::ALL).unwrap().len(), 2);
    let carol = store
        .conversations()
        .unwrap()
        .into_iter()
        .find(|c| c.id == ConversationId::from(&user("carol")))
        .unwrap();
    assert_eq!(carol.unread, 2);
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    contract(&MemoryStore::default()).await;
}
