//! The node's `Store` contract, checked against the sled and in-memory adapters.

use peerchat::domain::{
    Envelope, IdentityKeyPair, MessageId, OneTimePreKeyPair, PreKeyId, SignedPreKeyPair,
};
use peerchat::driven::memory::MemoryStore;
use peerchat::driven::sled_store::SledStore;
use peerchat::ports::{
    Direction, HeldInbound, LocalIdentity, MAX_HELD_INBOUND, MessageStatus, OutboxEntry, Recorded,
    Store, StoredMessage,
};
use peerchat_pki::Username;

use crate::support::established;

fn message(peer: &Username, id: u8, direction: Direction) -> StoredMessage {
    StoredMessage {
        id: MessageId::from_bytes([id; 16]),
        peer: peer.clone(),
        direction,
        body: format!("m{id}"),
        sent_at_ms: u64::from(id),
        status: if direction == Direction::Outgoing {
            MessageStatus::Pending
        } else {
            MessageStatus::Received
        },
    }
}

async fn contract(store: &impl Store) {
    let mut rng = crate::support::rng(1);
    let me = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKeyPair::generate(PreKeyId(1), &me, &mut rng);
    let opks: Vec<_> = (2..5)
        .map(|i| OneTimePreKeyPair::generate(PreKeyId(i), &mut rng))
        .collect();
    let identity = LocalIdentity {
        username: Username::new("alice").unwrap(),
        seed: me.to_seed(),
        certificate_pem: "cert".into(),
        ca_pem: "ca".into(),
    };
    assert!(store.identity().unwrap().is_none());
    store.save_identity(&identity, &spk, &opks).unwrap();
    assert_eq!(
        store.identity().unwrap().unwrap().username.as_str(),
        "alice"
    );
    assert_eq!(*store.identity().unwrap().unwrap().seed, *me.to_seed());
    assert_eq!(
        store.signed_prekey(PreKeyId(1)).unwrap().unwrap().public(),
        spk.public()
    );
    assert!(store.one_time_prekey(PreKeyId(3)).unwrap().is_some());
    let next = store.next_prekey_id().unwrap();
    assert!(next.0 >= 5, "ids never reused: {next:?}");
    assert!(store.next_prekey_id().unwrap().0 > next.0);

    let (session, _, _) = established(2);
    let bob = Username::new("bob").unwrap();
    let carol = Username::new("carol").unwrap();
    let out = message(&bob, 1, Direction::Outgoing);
    let entry = OutboxEntry {
        queued_at_ms: 1,
        to: bob.clone(),
        envelope: Envelope {
            id: out.id,
            trace: None,
            payload: vec![1, 2, 3],
        },
    };
    store.record_outgoing(&out, &session, &entry).unwrap();
    assert_eq!(store.outbox().unwrap(), vec![entry]);
    assert!(store.session(&bob).unwrap().is_some());

    let inc = message(&bob, 2, Direction::Incoming);
    assert_eq!(
        store
            .record_incoming(&inc, &session, Some(PreKeyId(3)))
            .unwrap(),
        Recorded::Stored
    );
    assert_eq!(
        store.record_incoming(&inc, &session, None).unwrap(),
        Recorded::Duplicate
    );
    assert!(
        store.one_time_prekey(PreKeyId(3)).unwrap().is_none(),
        "the consumed one-time prekey is gone"
    );
    store
        .record_incoming(&message(&carol, 3, Direction::Incoming), &session, None)
        .unwrap();

    let ids: Vec<u8> = store
        .history(&bob)
        .unwrap()
        .iter()
        .map(|m| m.id.as_bytes()[0])
        .collect();
    assert_eq!(ids, [1, 2]);
    let conversations: Vec<String> = store
        .conversations()
        .unwrap()
        .iter()
        .map(|c| c.peer.to_string())
        .collect();
    assert_eq!(conversations, ["carol", "bob"], "most recent first");
    assert_eq!(store.conversations().unwrap()[1].messages, 2);

    assert!(
        store
            .set_status(&bob, &out.id, MessageStatus::Sent)
            .unwrap()
    );
    assert_eq!(
        store.message(&bob, &out.id).unwrap().unwrap().status,
        MessageStatus::Sent
    );
    // Statuses only move forward: not back to pending, and a late `sent` after `read` changes
    // nothing.
    let status_of = |id| store.message(&bob, id).unwrap().unwrap().status;
    assert!(
        !store
            .set_status(&bob, &out.id, MessageStatus::Pending)
            .unwrap()
    );
    assert!(
        store
            .set_status(&bob, &out.id, MessageStatus::Read)
            .unwrap()
    );
    assert!(
        !store
            .set_status(&bob, &out.id, MessageStatus::Sent)
            .unwrap()
    );
    assert!(
        !store
            .set_status(&bob, &out.id, MessageStatus::Delivered)
            .unwrap()
    );
    assert_eq!(status_of(&out.id), MessageStatus::Read);
    assert!(
        !store
            .set_status(&bob, &MessageId::from_bytes([99; 16]), MessageStatus::Sent)
            .unwrap(),
        "no such message"
    );
    assert!(
        store.outbox().unwrap().is_empty(),
        "acknowledged messages leave the outbox"
    );

    // Envelopes from an unaccepted key: kept in arrival order, once per id, bounded, released
    // one by one.
    let held = |n: u8| HeldInbound {
        from: bob.clone(),
        identity_key: *IdentityKeyPair::generate(&mut crate::support::rng(9)).public(),
        envelope: Envelope {
            id: MessageId::from_bytes([n; 16]),
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
    let ids = |s: &dyn Fn() -> Vec<HeldInbound>| -> Vec<u8> {
        s().iter().map(|h| h.envelope.id.as_bytes()[0]).collect()
    };
    assert_eq!(ids(&|| store.held_inbound(&bob).unwrap()), [3, 1]);
    assert!(store.held_inbound(&carol).unwrap().is_empty());
    store
        .release_inbound(&bob, &MessageId::from_bytes([3; 16]))
        .unwrap();
    assert_eq!(ids(&|| store.held_inbound(&bob).unwrap()), [1]);
    for n in 1..MAX_HELD_INBOUND {
        let mut h = held(0);
        h.envelope.id = MessageId::from_bytes((1000 + n as u128).to_be_bytes());
        assert!(store.hold_inbound(&h).unwrap());
    }
    assert_eq!(store.held_inbound(&bob).unwrap().len(), MAX_HELD_INBOUND);
    assert!(!store.hold_inbound(&held(200)).unwrap(), "past the bound");

    // A message that could not be decrypted is kept once, and a good copy replaces it.
    let mut broken = message(&carol, 7, Direction::Incoming);
    broken.status = MessageStatus::Undecryptable;
    broken.body.clear();
    assert_eq!(
        store.record_undecryptable(&broken).unwrap(),
        Recorded::Stored
    );
    assert_eq!(
        store.record_undecryptable(&broken).unwrap(),
        Recorded::Duplicate
    );
    let (_, session_c, _) = established(3);
    let good = message(&carol, 7, Direction::Incoming);
    assert_eq!(
        store.record_incoming(&good, &session_c, None).unwrap(),
        Recorded::Stored
    );
    assert_eq!(store.message(&carol, &good.id).unwrap().unwrap(), good);
    assert_eq!(
        store
            .history(&carol)
            .unwrap()
            .iter()
            .filter(|m| m.id == good.id)
            .count(),
        1
    );
    store.flush().await.unwrap();
}

#[tokio::test]
async fn the_sled_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&SledStore::open(dir.path()).unwrap()).await;
    // And it is all still there after reopening.
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.history(&Username::new("bob").unwrap()).unwrap().len(),
        2
    );
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    contract(&MemoryStore::default()).await;
}
