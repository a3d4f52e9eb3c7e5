//! The service on its own: presence expiry on a clock the test sets, and typed errors.

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use peerchat_pki::{CertificateAuthority, Username};
use peerchat_rendezvous::clock::ManualClock;
use peerchat_rendezvous::service::{Caller, Rendezvous, ServiceError};
use peerchat_rendezvous::sled_store::SledStore;
use rand::rngs::OsRng;

use crate::support::test_limits;

#[tokio::test]
async fn presence_expires_after_its_ttl() {
    let now = SystemTime::now();
    let clock = Arc::new(ManualClock::new(now));
    let ca = CertificateAuthority::generate("t", now, &mut OsRng).unwrap();
    let store = peerchat_rendezvous::memory_store::MemoryStore::default();
    let service = Rendezvous::with_clock(store, ca, test_limits(), clock.clone())
        .await
        .unwrap();
    let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let alice = Username::new("alice").unwrap();
    let csr = peerchat_pki::build_csr(&key, &alice).unwrap();
    service
        .register(
            [127, 0, 0, 1].into(),
            &alice,
            crate::support::PASSWORD.into(),
            &csr,
        )
        .await
        .unwrap();
    let caller = Caller {
        username: alice.clone(),
        serial: "01".parse().unwrap(),
        identity_key: key.verifying_key(),
    };
    let addresses = || vec!["/ip4/127.0.0.1/tcp/1".to_string()];
    service
        .announce(&caller, addresses(), Duration::from_secs(60))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(59));
    assert!(service.lookup(&caller, &alice).await.unwrap().online);
    clock.advance(Duration::from_secs(2));
    let later = service.lookup(&caller, &alice).await.unwrap();
    assert!(!later.online);
    assert!(later.addresses.is_empty());

    // A TTL beyond the cap is cut to it.
    service
        .announce(&caller, addresses(), Duration::from_secs(1 << 40))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3601));
    assert!(!service.lookup(&caller, &alice).await.unwrap().online);
}

#[tokio::test]
async fn the_service_answers_typed_errors() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::generate("t", now, &mut OsRng).unwrap();
    let store = peerchat_rendezvous::memory_store::MemoryStore::default();
    let service = Rendezvous::new(store, ca, test_limits()).await.unwrap();
    let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let alice = Username::new("alice").unwrap();
    let csr = peerchat_pki::build_csr(&key, &alice).unwrap();
    let ip = [127, 0, 0, 1].into();
    assert!(matches!(
        service.register(ip, &alice, "short".into(), &csr).await,
        Err(ServiceError::WeakPassword)
    ));
    assert!(matches!(
        service
            .register(ip, &alice, crate::support::PASSWORD.into(), b"not a csr")
            .await,
        Err(ServiceError::BadCsr(_))
    ));
    service
        .register(ip, &alice, crate::support::PASSWORD.into(), &csr)
        .await
        .unwrap();
    assert!(matches!(
        service
            .register(ip, &alice, crate::support::PASSWORD.into(), &csr)
            .await,
        Err(ServiceError::UsernameTaken)
    ));
    assert!(matches!(
        service
            .login(ip, &alice, "wrong password".into(), None, &csr)
            .await,
        Err(ServiceError::BadCredentials)
    ));
    let caller = Caller {
        username: alice.clone(),
        serial: "01".parse().unwrap(),
        identity_key: key.verifying_key(),
    };
    let nobody = Username::new("nobody").unwrap();
    assert!(matches!(
        service.lookup(&caller, &nobody).await,
        Err(ServiceError::NoSuchUser)
    ));
    assert!(matches!(
        service.bundle(&caller, &alice).await,
        Err(ServiceError::NoPrekeys)
    ));
    assert!(matches!(
        service.fetch(&caller, &nobody, Duration::ZERO, None).await,
        Err(ServiceError::NotYourMailbox)
    ));
    assert!(matches!(
        service.ack(&caller, &alice, &[7; 16]).await,
        Err(ServiceError::NoSuchEnvelope)
    ));
    assert!(matches!(
        service
            .deposit(&caller, &alice, [1; 16], vec![0; 10 << 20])
            .await,
        Err(ServiceError::EnvelopeTooLarge(_))
    ));
    assert!(matches!(
        service
            .announce(
                &caller,
                vec!["not a multiaddr".into()],
                Duration::from_secs(1)
            )
            .await,
        Err(ServiceError::BadAddresses { .. })
    ));
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
                store.next_crl_number().await.unwrap();
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
