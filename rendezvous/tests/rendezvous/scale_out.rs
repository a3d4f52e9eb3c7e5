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

/// A process killed (SIGKILL) when dropped, however the test ends.
struct Process(std::process::Child);

impl Process {
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `request` sent to the first instance in `order` that answers; `None` when none did. Errors of
/// the connection (refused, reset, cut mid-answer) move to the next one, as a node does.
async fn on_any(
    users: &[&crate::support::User],
    build: impl Fn(&crate::support::User) -> reqwest::RequestBuilder,
) -> Option<(reqwest::StatusCode, Vec<u8>)> {
    for user in users {
        let Ok(response) = build(user).send().await else {
            continue;
        };
        let status = response.status();
        if let Ok(body) = response.bytes().await {
            return Some((status, body.to_vec()));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_sigkill_under_load_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use peerchat_rendezvous::api;

    use crate::crash::{External, start_with};

    const SENDERS: u128 = 4;
    const PER_SENDER: u128 = 150;
    const FETCHERS: usize = 8;
    const BUNDLES_PER_FETCHER: usize = 20;
    const KILL_AFTER: usize = 150;

    let server = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rv");
    let args = [
        "--database",
        server.url.as_str(),
        "--deposits-per-minute",
        "1000000",
        "--lookups-per-minute",
        "1000000",
        "--max-connections-per-source",
        "10000",
    ];
    let (first, first_port) = start_with(&data, &args);
    let mut first = Process(first);
    let (second, second_port) = start_with(&data, &args);
    let _second = Process(second);
    let ca = peerchat_pki::CaCertificate::from_pem(
        &std::fs::read_to_string(data.join("ca.pem")).unwrap(),
    )
    .unwrap();
    let rv = [
        External {
            ca: ca.clone(),
            port: first_port,
        },
        External {
            ca,
            port: second_port,
        },
    ];

    let alice = rv[0].register("alice").await;
    assert_eq!(alice.upload_prekeys(0..100).await.one_time_prekeys, 100);
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        senders.push(rv[0].register(&format!("sender{s}")).await);
    }
    let mut fetchers = Vec::new();
    for f in 0..FETCHERS {
        fetchers.push(rv[1].register(&format!("fetcher{f}")).await);
    }

    // Senders deposit for alice on both instances in turn; fetchers take her bundle on both.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut deposits = tokio::task::JoinSet::new();
    for (s, sender) in senders.iter().enumerate() {
        let handles = [rv[0].as_user(sender), rv[1].as_user(sender)];
        let acknowledged = acknowledged.clone();
        deposits.spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_SENDER {
                let id = (s as u128) << 16 | i;
                let request = api::DepositRequest {
                    id: format!("{id:032x}"),
                    envelope: B64.encode(id.to_be_bytes()),
                };
                let [a, b] = &handles;
                let order = if i % 2 == 0 { [a, b] } else { [b, a] };
                let answer = on_any(&order, |user| {
                    user.http.post(user.url("/v1/mailbox/alice")).json(&request)
                })
                .await
                .expect("one instance answers");
                assert_eq!(answer.0, reqwest::StatusCode::ACCEPTED, "{answer:?}");
                acked.push(id);
                acknowledged.fetch_add(1, Ordering::AcqRel);
            }
            acked
        });
    }
    let mut bundles = tokio::task::JoinSet::new();
    for fetcher in &fetchers {
        let handles = [rv[0].as_user(fetcher), rv[1].as_user(fetcher)];
        bundles.spawn(async move {
            let mut handed = Vec::new();
            for i in 0..BUNDLES_PER_FETCHER {
                let [a, b] = &handles;
                let order = if i % 2 == 0 { [a, b] } else { [b, a] };
                let (status, body) = on_any(&order, |user| {
                    user.http.post(user.url("/v1/users/alice/bundle"))
                })
                .await
                .expect("one instance answers");
                assert_eq!(status, reqwest::StatusCode::OK);
                let bundle: api::BundleResponse = serde_json::from_slice(&body).unwrap();
                handed.extend(bundle.one_time_prekey.map(|k| k.id));
            }
            handed
        });
    }

    // The first instance dies mid-load.
    while acknowledged.load(Ordering::Acquire) < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill();
    let at_kill = acknowledged.load(Ordering::Acquire);
    assert!(
        at_kill < (SENDERS * PER_SENDER) as usize,
        "the kill came while deposits were still going"
    );

    let mut acked = Vec::new();
    while let Some(done) = deposits.join_next().await {
        acked.extend(done.unwrap());
    }
    let mut handed = Vec::new();
    while let Some(done) = bundles.join_next().await {
        handed.extend(done.unwrap());
    }

    // Every acknowledged deposit is in alice's mailbox, read through the survivor, once.
    let alice = rv[1].as_user(&alice);
    let mut seen = BTreeMap::<u128, usize>::new();
    loop {
        let (status, mail) = alice
            .call::<(), api::MailboxResponse>(
                reqwest::Method::GET,
                "/v1/mailbox/alice",
                crate::support::NO_BODY,
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK);
        let mail = mail.unwrap().envelopes;
        if mail.is_empty() {
            break;
        }
        for envelope in mail {
            let id = u128::from_str_radix(&envelope.id, 16).unwrap();
            assert_eq!(B64.decode(&envelope.envelope).unwrap(), id.to_be_bytes());
            *seen.entry(id).or_default() += 1;
            let (status, _) = alice
                .call::<(), serde_json::Value>(
                    reqwest::Method::DELETE,
                    &format!("/v1/mailbox/alice/{}", envelope.id),
                    crate::support::NO_BODY,
                )
                .await;
            assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
        }
    }
    assert_eq!(acked.len(), (SENDERS * PER_SENDER) as usize);
    let missing: Vec<_> = acked.iter().filter(|id| !seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "acknowledged and lost: {missing:?}");
    assert!(seen.values().all(|n| *n == 1), "an envelope twice");
    assert_eq!(seen.len(), acked.len(), "nothing that was not sent");

    // No one-time prekey went to two fetchers, and none handed out is still offered.
    let mut once = BTreeMap::<u32, usize>::new();
    for id in &handed {
        *once.entry(*id).or_default() += 1;
    }
    assert!(once.values().all(|n| *n == 1), "a key twice: {once:?}");
    let (status, left) = alice
        .call::<(), api::PreKeyStatus>(reqwest::Method::GET, "/v1/prekeys", crate::support::NO_BODY)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let left = left.unwrap().one_time_prekeys as usize;
    assert!(
        handed.len() + left <= 100,
        "{} handed out and {left} left of 100",
        handed.len()
    );
    eprintln!(
        "killed after {at_kill} acknowledged deposits; {} deposits, {} one-time prekeys handed out, {left} left",
        acked.len(),
        handed.len()
    );
}
