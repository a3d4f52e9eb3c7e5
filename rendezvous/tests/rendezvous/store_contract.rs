//! The `Store` contract, checked against both adapters.

use peerchat_pki::{Serial, Username};
use peerchat_rendezvous::memory_store::MemoryStore;
use peerchat_rendezvous::sled_store::SledStore;
use peerchat_rendezvous::store::{Deposit, OneTimePreKeyRecord, Quota, Store, StoredEnvelope};

fn envelope(id: u8, size: usize, expires_at: u64) -> StoredEnvelope {
    StoredEnvelope {
        id: [id; 16],
        sender: Username::new("bob").unwrap(),
        envelope: vec![id; size],
        deposited_at: 1,
        expires_at,
        sender_key: Some([7; 32]),
    }
}

async fn contract(store: &impl Store) {
    let alice = Username::new("alice").unwrap();
    let quota = Quota {
        max_envelopes: 2,
        max_bytes: 100,
        max_envelopes_per_sender: 10,
        max_bytes_per_sender: 1000,
    };

    assert_eq!(
        store.deposit(&alice, &envelope(1, 10, 50), quota).unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store.deposit(&alice, &envelope(1, 10, 50), quota).unwrap(),
        Deposit::Duplicate
    );
    assert_eq!(
        store.deposit(&alice, &envelope(2, 95, 50), quota).unwrap(),
        Deposit::QuotaExceeded,
        "bytes"
    );
    assert_eq!(
        store.deposit(&alice, &envelope(3, 10, 500), quota).unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store.deposit(&alice, &envelope(4, 10, 500), quota).unwrap(),
        Deposit::QuotaExceeded,
        "count"
    );
    assert_eq!(store.count_envelopes().unwrap(), 2);
    let ids: Vec<u8> = store
        .mailbox(&alice, 0, 10)
        .unwrap()
        .iter()
        .map(|e| e.id[0])
        .collect();
    assert_eq!(ids, [1, 3], "oldest first");
    assert_eq!(
        store.mailbox(&alice, 100, 10).unwrap().len(),
        1,
        "expired ones are hidden"
    );
    assert_eq!(store.purge_expired(100).unwrap(), 1);
    assert!(store.ack(&alice, &[3; 16]).unwrap());
    assert!(!store.ack(&alice, &[3; 16]).unwrap());
    assert_eq!(store.count_envelopes().unwrap(), 0);
    assert_eq!(
        store.deposit(&alice, &envelope(5, 90, 500), quota).unwrap(),
        Deposit::Stored,
        "quota freed"
    );

    // One sender's share: bob may hold at most 2 of carol's 4 places; dave still gets in, and an
    // acknowledgement gives bob his place back.
    let carol = Username::new("carol").unwrap();
    let shared = Quota {
        max_envelopes: 4,
        max_bytes: 1000,
        max_envelopes_per_sender: 2,
        max_bytes_per_sender: 1000,
    };
    let from = |sender: &str, id: u8| StoredEnvelope {
        sender: Username::new(sender).unwrap(),
        ..envelope(id, 10, 500)
    };
    assert_eq!(
        store.deposit(&carol, &from("bob", 10), shared).unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store.deposit(&carol, &from("bob", 11), shared).unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store.deposit(&carol, &from("bob", 12), shared).unwrap(),
        Deposit::QuotaExceeded,
        "bob's share is used up"
    );
    assert_eq!(
        store.deposit(&carol, &from("dave", 13), shared).unwrap(),
        Deposit::Stored
    );
    assert!(store.ack(&carol, &[10; 16]).unwrap());
    assert_eq!(
        store.deposit(&carol, &from("bob", 12), shared).unwrap(),
        Deposit::Stored
    );
    let per_byte = Quota {
        max_envelopes: 10,
        max_bytes_per_sender: 15,
        ..shared
    };
    assert_eq!(
        store.deposit(&carol, &from("erin", 14), per_byte).unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store.deposit(&carol, &from("erin", 15), per_byte).unwrap(),
        Deposit::QuotaExceeded,
        "erin's bytes are used up"
    );

    let keys: Vec<_> = (0..5)
        .map(|id| OneTimePreKeyRecord {
            id,
            public_key: [id as u8; 32],
        })
        .collect();
    assert_eq!(
        store.add_one_time_prekeys(&alice, &keys, 3).unwrap(),
        3,
        "capped"
    );
    let mut taken = Vec::new();
    while let Some(k) = store.take_one_time_prekey(&alice).unwrap() {
        taken.push(k.id);
    }
    taken.sort_unstable();
    assert_eq!(taken, [0, 1, 2]);
    assert_eq!(store.count_one_time_prekeys(&alice).unwrap(), 0);

    let serial: Serial = "0a0b".parse().unwrap();
    assert!(!store.is_revoked(&serial).unwrap());
    store.revoke(&serial, 7).unwrap();
    store.revoke(&serial, 9).unwrap();
    assert!(store.is_revoked(&serial).unwrap());
    let revoked = store.revoked().unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        revoked[0].revoked_at,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(7),
        "first time kept"
    );
    let (a, b) = (
        store.next_crl_number().unwrap(),
        store.next_crl_number().unwrap(),
    );
    assert!(b > a);
    store.flush().await.unwrap();
}

#[tokio::test]
async fn the_sled_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&SledStore::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    contract(&MemoryStore::default()).await;
}
