//! Several rendezvous instances on one PostgreSQL database (a real server the test starts):
//! what one instance does, every other one honours at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use peerchat_pki::{CertificateAuthority, Username, build_csr};
use peerchat_rendezvous::api::signed_prekey_message;
use peerchat_rendezvous::pg_store::PgStore;
use peerchat_rendezvous::service::{Caller, Rendezvous, ServiceError};
use peerchat_rendezvous::store::{OneTimePreKeyRecord, SignedPreKeyRecord};
use rand::rngs::OsRng;
use rustls::pki_types::pem::PemObject;

use crate::postgres::Postgres;
use crate::support::{PASSWORD, test_limits};

/// `n` instances on the database at `url`, sharing one CA (as they share the data directory),
/// each following the others' changes.
async fn instances(url: &str, n: usize) -> Vec<Arc<Rendezvous<PgStore>>> {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::generate("scale-out CA", SystemTime::now(), &mut OsRng)
        .unwrap()
        .save(dir.path())
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let ca = CertificateAuthority::load(dir.path()).unwrap();
        let store = PgStore::connect(url).await.unwrap();
        let service = Arc::new(Rendezvous::new(store, ca, test_limits()).await.unwrap());
        let following = service.clone();
        tokio::spawn(async move { following.follow_changes().await });
        out.push(service);
    }
    out
}

/// Registers `name` on `service`; returns its caller and certificate (DER).
async fn register(
    service: &Rendezvous<PgStore>,
    name: &str,
) -> (
    Caller,
    SigningKey,
    rustls::pki_types::CertificateDer<'static>,
) {
    let key = SigningKey::generate(&mut OsRng);
    let username = Username::new(name).unwrap();
    let issued = service
        .register(
            [127, 0, 0, 1].into(),
            &username,
            PASSWORD.into(),
            &build_csr(&key, &username).unwrap(),
        )
        .await
        .unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
        .unwrap();
    let caller = Caller {
        username,
        serial: issued.serial,
        identity_key: key.verifying_key(),
    };
    (caller, key, der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bundle_fetches_on_two_instances_hand_out_each_one_time_prekey_once() {
    let server = Postgres::start();
    let rv = instances(&server.url, 2).await;
    let (bob, bob_key, _) = register(&rv[0], "bob").await;
    let public = [7u8; 32];
    rv[0]
        .upload_signed_prekey(
            &bob,
            SignedPreKeyRecord {
                id: 1,
                public_key: public,
                signature: bob_key
                    .sign(&signed_prekey_message(1, &public))
                    .to_bytes()
                    .to_vec(),
            },
        )
        .await
        .unwrap();
    let keys: Vec<_> = (0..100u32)
        .map(|id| OneTimePreKeyRecord {
            id,
            public_key: [id as u8; 32],
        })
        .collect();
    rv[1].upload_one_time_prekeys(&bob, keys).await.unwrap();

    // 1,000 callers at once, every other one on the other instance.
    let fetches: Vec<_> = (0..1000)
        .map(|i| {
            let service = rv[i % 2].clone();
            tokio::spawn(async move {
                let caller = Caller {
                    username: Username::new(format!("caller{i}")).unwrap(),
                    serial: "01".parse().unwrap(),
                    identity_key: SigningKey::generate(&mut OsRng).verifying_key(),
                };
                service
                    .bundle(&caller, &Username::new("bob").unwrap())
                    .await
                    .unwrap()
                    .one_time_prekey
                    .map(|k| k.id)
            })
        })
        .collect();
    let mut handed: BTreeMap<u32, usize> = BTreeMap::new();
    let mut without = 0;
    for fetch in fetches {
        match fetch.await.unwrap() {
            Some(id) => *handed.entry(id).or_default() += 1,
            None => without += 1,
        }
    }
    assert_eq!(handed.len(), 100, "every key handed out");
    assert!(handed.values().all(|n| *n == 1), "no key twice: {handed:?}");
    assert_eq!(without, 900, "the rest carry the signed prekey only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_on_one_instance_answers_a_long_poll_held_by_another() {
    let server = Postgres::start();
    let rv = instances(&server.url, 2).await;
    let (alice, _, _) = register(&rv[0], "alice").await;
    let (bob, _, _) = register(&rv[1], "bob").await;

    let held = {
        let (service, bob) = (rv[1].clone(), bob.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mailbox = service
                .fetch(&bob, &bob.username, Duration::from_secs(25), None)
                .await
                .unwrap();
            (mailbox, started.elapsed())
        })
    };
    // The poll is held (nothing waits yet) before alice deposits on the other instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished());
    let deposited = Instant::now();
    rv[0]
        .deposit(&alice, &bob.username, [5; 16], b"sealed".to_vec())
        .await
        .unwrap();
    let (mailbox, _) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("woken by the deposit on the other instance, not by its own deadline")
        .unwrap();
    eprintln!(
        "woken {:?} after the deposit on the other instance",
        deposited.elapsed()
    );
    assert_eq!(mailbox.envelopes.len(), 1);
    assert_eq!(mailbox.envelopes[0].envelope, b"sealed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_instance_is_refused_by_every_other_and_they_serve_one_crl() {
    let server = Postgres::start();
    let rv = instances(&server.url, 3).await;
    let (alice, _, der) = register(&rv[0], "alice").await;
    let peer = rv[2]
        .trust()
        .verify(std::slice::from_ref(&der), SystemTime::now())
        .unwrap();
    assert!(rv[2].authenticate(Some(&peer)).await.is_ok());

    rv[1].revoke(&alice).await.unwrap();
    for (i, service) in rv.iter().enumerate() {
        assert!(
            matches!(
                service.authenticate(Some(&peer)).await,
                Err(ServiceError::CertificateRevoked)
            ),
            "instance {i} refuses the revoked certificate at once"
        );
    }
    // Each instance signed a CRL at start; the revoking one's is the newest, and every
    // instance puts it in force when told.
    let newest = rv[1].crl().await.unwrap();
    assert!(newest.is_revoked(&alice.serial));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = Vec::new();
        for service in &rv {
            all.push(service.crl().await.unwrap());
        }
        if all.iter().all(|c| c.der() == newest.der()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instances serve different CRLs: {:?}",
            all.iter().map(|c| c.number()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new connection with the certificate now fails at every instance's handshake check.
    for service in &rv {
        assert!(
            service
                .trust()
                .verify(std::slice::from_ref(&der), SystemTime::now())
                .is_err()
        );
    }
}
