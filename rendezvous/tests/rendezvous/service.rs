//! The service with an explicit clock: presence expiry.

use std::time::{Duration, SystemTime};

use peerchat_pki::{CertificateAuthority, Username};
use peerchat_rendezvous::api;
use peerchat_rendezvous::service::{Caller, Rendezvous};
use peerchat_rendezvous::sled_store::SledStore;
use rand::rngs::OsRng;

use crate::support::test_limits;

#[tokio::test]
async fn presence_expires_after_its_ttl() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::generate("t", now, &mut OsRng).unwrap();
    let store = peerchat_rendezvous::memory_store::MemoryStore::default();
    let service = Rendezvous::new(store, ca, test_limits(), now).unwrap();
    let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let alice = Username::new("alice").unwrap();
    let csr = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        peerchat_pki::build_csr(&key, &alice).unwrap(),
    );
    service
        .register(
            [127, 0, 0, 1].into(),
            api::RegisterRequest {
                username: alice.clone(),
                password: crate::support::PASSWORD.into(),
                csr,
            },
            now,
        )
        .await
        .unwrap();
    let caller = Caller {
        username: alice.clone(),
        serial: "01".parse().unwrap(),
        identity_key: key.verifying_key(),
    };
    service
        .announce(
            &caller,
            api::PresenceRequest {
                addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
                ttl_secs: 60,
            },
            now,
        )
        .await
        .unwrap();
    assert!(
        service
            .lookup(&caller, &alice, now + Duration::from_secs(59))
            .unwrap()
            .online
    );
    let later = service
        .lookup(&caller, &alice, now + Duration::from_secs(61))
        .unwrap();
    assert!(!later.online);
    assert!(later.addresses.is_empty());

    // A TTL beyond the cap is cut to it.
    service
        .announce(
            &caller,
            api::PresenceRequest {
                addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
                ttl_secs: 1 << 40,
            },
            now,
        )
        .await
        .unwrap();
    assert!(
        !service
            .lookup(&caller, &alice, now + Duration::from_secs(3601))
            .unwrap()
            .online
    );
}

/// sled 0.34's `flush_async` can deadlock when called concurrently (spacejam/sled#1308); the
/// store must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_all_complete() {
    use peerchat_rendezvous::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
    let tasks: Vec<_> = (0..64u32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.next_crl_number().unwrap();
                store.flush().await.unwrap();
                i
            })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    assert!(all.is_ok(), "flushes did not complete");
}
