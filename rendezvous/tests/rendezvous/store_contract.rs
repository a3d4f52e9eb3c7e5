//! The `Store` contract, checked against both adapters.

use peerchat_pki::{Serial, Username};
use peerchat_rendezvous::memory_store::MemoryStore;
use peerchat_rendezvous::pg_store::PgStore;
use peerchat_rendezvous::sled_store::SledStore;
use peerchat_rendezvous::store::{
    Account, Deposit, OneTimePreKeyRecord, Presence, Quota, Store, StoredEnvelope, TotpSecret,
    TotpState,
};

use crate::postgres::Postgres;

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
        store
            .deposit(&alice, &envelope(1, 10, 50), quota)
            .await
            .unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store
            .deposit(&alice, &envelope(1, 10, 50), quota)
            .await
            .unwrap(),
        Deposit::Duplicate
    );
    assert_eq!(
        store
            .deposit(&alice, &envelope(2, 95, 50), quota)
            .await
            .unwrap(),
        Deposit::QuotaExceeded,
        "bytes"
    );
    assert_eq!(
        store
            .deposit(&alice, &envelope(3, 10, 500), quota)
            .await
            .unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store
            .deposit(&alice, &envelope(4, 10, 500), quota)
            .await
            .unwrap(),
        Deposit::QuotaExceeded,
        "count"
    );
    assert_eq!(store.count_envelopes().await.unwrap(), 2);
    let ids: Vec<u8> = store
        .mailbox(&alice, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id[0])
        .collect();
    assert_eq!(ids, [1, 3], "oldest first");
    assert_eq!(
        store.mailbox(&alice, 100, 10).await.unwrap().len(),
        1,
        "expired ones are hidden"
    );
    assert_eq!(store.purge_expired(100).await.unwrap(), 1);
    assert!(store.ack(&alice, &[3; 16]).await.unwrap());
    assert!(!store.ack(&alice, &[3; 16]).await.unwrap());
    assert_eq!(store.count_envelopes().await.unwrap(), 0);
    assert_eq!(
        store
            .deposit(&alice, &envelope(5, 90, 500), quota)
            .await
            .unwrap(),
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
        store
            .deposit(&carol, &from("bob", 10), shared)
            .await
            .unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store
            .deposit(&carol, &from("bob", 11), shared)
            .await
            .unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store
            .deposit(&carol, &from("bob", 12), shared)
            .await
            .unwrap(),
        Deposit::QuotaExceeded,
        "bob's share is used up"
    );
    assert_eq!(
        store
            .deposit(&carol, &from("dave", 13), shared)
            .await
            .unwrap(),
        Deposit::Stored
    );
    assert!(store.ack(&carol, &[10; 16]).await.unwrap());
    assert_eq!(
        store
            .deposit(&carol, &from("bob", 12), shared)
            .await
            .unwrap(),
        Deposit::Stored
    );
    let per_byte = Quota {
        max_envelopes: 10,
        max_bytes_per_sender: 15,
        ..shared
    };
    assert_eq!(
        store
            .deposit(&carol, &from("erin", 14), per_byte)
            .await
            .unwrap(),
        Deposit::Stored
    );
    assert_eq!(
        store
            .deposit(&carol, &from("erin", 15), per_byte)
            .await
            .unwrap(),
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
        store.add_one_time_prekeys(&alice, &keys, 3).await.unwrap(),
        3,
        "capped"
    );
    let mut taken = Vec::new();
    while let Some(k) = store.take_one_time_prekey(&alice).await.unwrap() {
        taken.push(k.id);
    }
    taken.sort_unstable();
    assert_eq!(taken, [0, 1, 2]);
    assert_eq!(store.count_one_time_prekeys(&alice).await.unwrap(), 0);

    let serial: Serial = "0a0b".parse().unwrap();
    assert!(!store.is_revoked(&serial).await.unwrap());
    store.revoke(&serial, 7).await.unwrap();
    store.revoke(&serial, 9).await.unwrap();
    assert!(store.is_revoked(&serial).await.unwrap());
    let revoked = store.revoked().await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        revoked[0].revoked_at,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(7),
        "first time kept"
    );
    let (a, b) = (
        store.next_crl_number().await.unwrap(),
        store.next_crl_number().await.unwrap(),
    );
    assert!(b > a);

    // The newest CRL saved is the one given; an older number saved late changes nothing.
    assert_eq!(store.latest_crl().await.unwrap(), None);
    store.save_crl(b, b"newer").await.unwrap();
    store.save_crl(a, b"older").await.unwrap();
    assert_eq!(
        store.latest_crl().await.unwrap(),
        Some((b, b"newer".to_vec()))
    );

    // Accounts: created once, read back whole, and a TOTP step recorded by compare-and-set.
    let mut account = Account {
        username: alice.clone(),
        password_hash: "$argon2id$hash".into(),
        identity_key: [3; 32],
        peer_id: "12D3Koo".into(),
        certificate: vec![1, 2, 3],
        serial: "0c".parse().unwrap(),
        totp: Some(TotpState {
            secret: TotpSecret::Sealed(vec![9; 40]),
            confirmed: true,
            last_step: 10,
        }),
        created_at: 5,
    };
    assert!(store.create_account(&account).await.unwrap());
    assert!(!store.create_account(&account).await.unwrap(), "name taken");
    assert_eq!(
        store.account(&alice).await.unwrap().as_ref(),
        Some(&account)
    );
    assert_eq!(store.count_accounts().await.unwrap(), 1);
    let mut next = account.clone();
    next.totp.as_mut().unwrap().last_step = 11;
    assert!(store.update_account_if_step(&next, 10).await.unwrap());
    let mut racing = account.clone();
    racing.totp.as_mut().unwrap().last_step = 12;
    assert!(
        !store.update_account_if_step(&racing, 10).await.unwrap(),
        "the step moved meanwhile: refused"
    );
    assert_eq!(store.account(&alice).await.unwrap(), Some(next));
    account.totp = None;
    store.update_account(&account).await.unwrap();
    assert_eq!(store.account(&alice).await.unwrap(), Some(account));
    assert_eq!(store.account(&carol).await.unwrap(), None);

    // Presence, read back as written.
    let presence = Presence {
        addresses: vec!["/ip4/127.0.0.1/tcp/1".into(), "/ip4/10.0.0.1/tcp/2".into()],
        expires_at: 99,
    };
    store.set_presence(&alice, &presence).await.unwrap();
    assert_eq!(store.presence(&alice).await.unwrap(), Some(presence));
    store.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_contract() {
    let server = Postgres::start();
    let store = PgStore::connect(&server.url).await.unwrap();
    contract(&store).await;
    // The migrations are applied once: a second instance connects to the same database.
    let again = PgStore::connect(&server.url).await.unwrap();
    assert_eq!(again.count_accounts().await.unwrap(), 1);
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
