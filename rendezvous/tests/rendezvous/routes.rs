//! The happy path of every route.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use peerchat_pki::{Crl, Username, build_csr};
use peerchat_rendezvous::api;
use rand::rngs::OsRng;
use reqwest::{Method, StatusCode};

use crate::support::{NO_BODY, PASSWORD, Server, User, send, test_limits};

#[tokio::test]
async fn health_ca_and_crl_are_public() {
    let server = Server::start(test_limits()).await;
    let http = server.anonymous();

    let (status, health) =
        send::<(), api::Health>(&http, Method::GET, &server.url("/v1/healthz"), None).await;
    assert_eq!(
        (status, health.unwrap().status.as_str()),
        (StatusCode::OK, "ok")
    );

    let (_, ca) =
        send::<(), api::CaResponse>(&http, Method::GET, &server.url("/v1/ca"), None).await;
    let ca = ca.unwrap();
    assert_eq!(ca.fingerprint, server.ca.fingerprint().to_string());
    assert_eq!(ca.certificate, server.ca.to_pem());

    let der = http
        .get(server.url("/v1/crl"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let crl = Crl::from_der(&der, &server.ca).unwrap();
    assert_eq!(crl.revoked().count(), 0);
}

#[tokio::test]
async fn register_upload_prekeys_lookup_and_fetch_a_bundle() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let status = alice.upload_prekeys(0..25).await;
    assert_eq!(
        status,
        api::PreKeyStatus {
            one_time_prekeys: 25,
            signed_prekey: true,
            low: false
        }
    );

    let (code, bundle) = bob
        .call::<(), api::BundleResponse>(Method::POST, "/v1/users/alice/bundle", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::OK);
    let bundle = bundle.unwrap();
    let identity = VerifyingKey::from_bytes(
        &B64.decode(&bundle.identity_key)
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(identity, alice.key.verifying_key());
    let spk: [u8; 32] = B64
        .decode(&bundle.signed_prekey.public_key)
        .unwrap()
        .try_into()
        .unwrap();
    let sig = Signature::from_slice(&B64.decode(&bundle.signed_prekey.signature).unwrap()).unwrap();
    identity
        .verify(
            &api::signed_prekey_message(bundle.signed_prekey.id, &spk),
            &sig,
        )
        .unwrap();
    assert!(bundle.one_time_prekey.is_some());
    assert!(!bundle.low_prekeys);

    let (_, status) = alice
        .call::<(), api::PreKeyStatus>(Method::GET, "/v1/prekeys", NO_BODY)
        .await;
    assert_eq!(
        status.unwrap().one_time_prekeys,
        24,
        "the bundle consumed one"
    );

    let (code, found) = bob
        .call::<(), api::LookupResponse>(Method::GET, "/v1/users/alice", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::OK);
    let found = found.unwrap();
    assert_eq!(found.username.as_str(), "alice");
    assert!(found.peer_id.starts_with("12D3KooW"), "{}", found.peer_id);
    assert_eq!(found.certificate, alice.certificate.certificate);
    assert!(!found.online);
    assert!(found.addresses.is_empty());

    let presence = api::PresenceRequest {
        addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        ttl_secs: 60,
    };
    let (code, _) = alice
        .call::<_, ()>(Method::PUT, "/v1/presence", Some(&presence))
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (_, found) = bob
        .call::<(), api::LookupResponse>(Method::GET, "/v1/users/alice", NO_BODY)
        .await;
    let found = found.unwrap();
    assert!(found.online);
    assert_eq!(found.addresses, presence.addresses);

    let (code, err) = bob
        .call::<(), api::LookupResponse>(Method::GET, "/v1/users/nobody", NO_BODY)
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::NOT_FOUND, "no_such_user")
    );
}

#[tokio::test]
async fn deposit_fetch_and_acknowledge_mail() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let (code, r) = bob.deposit("alice", 1, b"opaque envelope 1").await;
    assert_eq!(
        (code, r.unwrap().status),
        (StatusCode::ACCEPTED, api::DepositStatus::Stored)
    );
    let (_, r) = bob.deposit("alice", 1, b"opaque envelope 1").await;
    assert_eq!(r.unwrap().status, api::DepositStatus::Duplicate);
    assert_eq!(
        bob.deposit("alice", 2, b"opaque envelope 2").await.0,
        StatusCode::ACCEPTED
    );

    let (code, mail) = alice
        .call::<(), api::MailboxResponse>(Method::GET, "/v1/mailbox/alice", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::OK);
    let mail = mail.unwrap().envelopes;
    assert_eq!(mail.len(), 2);
    assert_eq!(mail[0].sender.as_str(), "bob");
    assert_eq!(B64.decode(&mail[0].envelope).unwrap(), b"opaque envelope 1");
    assert_eq!(B64.decode(&mail[1].envelope).unwrap(), b"opaque envelope 2");

    let (code, _) = alice
        .call::<(), ()>(
            Method::DELETE,
            &format!("/v1/mailbox/alice/{}", mail[0].id),
            NO_BODY,
        )
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = alice
        .call::<(), ()>(
            Method::DELETE,
            &format!("/v1/mailbox/alice/{}", mail[0].id),
            NO_BODY,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, mail) = alice
        .call::<(), api::MailboxResponse>(Method::GET, "/v1/mailbox/alice", NO_BODY)
        .await;
    assert_eq!(mail.unwrap().envelopes.len(), 1);
}

#[tokio::test]
async fn a_waiting_recipient_learns_of_new_mail_at_once() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let waiting = {
        let http = alice.http.clone();
        let url = alice.url("/v1/mailbox/alice?wait=20");
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r: api::MailboxResponse = http.get(url).send().await.unwrap().json().await.unwrap();
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        bob.deposit("alice", 9, b"wake up").await.0,
        StatusCode::ACCEPTED
    );
    let (mail, waited) = waiting.await.unwrap();
    assert_eq!(mail.envelopes.len(), 1);
    // Woken by the deposit, not by the 20-second wait running out.
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
}

#[tokio::test]
async fn renew_keeps_the_key_and_logout_revokes() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;

    let renew = api::RenewRequest {
        csr: B64.encode(build_csr(&alice.key, &alice.username).unwrap()),
    };
    let (code, renewed) = alice
        .call::<_, api::CertificateResponse>(Method::POST, "/v1/certificates/renew", Some(&renew))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_ne!(renewed.unwrap().serial, alice.certificate.serial);

    let other_key = SigningKey::generate(&mut OsRng);
    let renew = api::RenewRequest {
        csr: B64.encode(build_csr(&other_key, &alice.username).unwrap()),
    };
    let (code, err) = alice
        .call::<_, api::CertificateResponse>(Method::POST, "/v1/certificates/renew", Some(&renew))
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::BAD_REQUEST, "key_mismatch")
    );

    let (code, _) = alice
        .call::<(), ()>(Method::DELETE, "/v1/certificates/current", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let der = server
        .anonymous()
        .get(server.url("/v1/crl"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let crl = Crl::from_der(&der, &server.ca).unwrap();
    assert!(crl.is_revoked(&alice.certificate.serial.parse().unwrap()));
}

#[tokio::test]
async fn login_on_a_new_install_revokes_the_old_certificate_and_voids_prekeys() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    alice.upload_prekeys(0..5).await;

    let new_key = SigningKey::generate(&mut OsRng);
    let login = api::LoginRequest {
        username: alice.username.clone(),
        password: PASSWORD.into(),
        totp: None,
        csr: B64.encode(build_csr(&new_key, &alice.username).unwrap()),
    };
    let (code, cert) = send::<_, api::CertificateResponse>(
        &server.anonymous(),
        Method::POST,
        &server.url("/v1/sessions"),
        Some(&login),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let again = User::new(&server, alice.username.clone(), new_key, &cert.unwrap());

    let (_, status) = again
        .call::<(), api::PreKeyStatus>(Method::GET, "/v1/prekeys", NO_BODY)
        .await;
    assert_eq!(
        status.unwrap(),
        api::PreKeyStatus {
            one_time_prekeys: 0,
            signed_prekey: false,
            low: true
        }
    );
    let der = server
        .anonymous()
        .get(server.url("/v1/crl"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        Crl::from_der(&der, &server.ca)
            .unwrap()
            .is_revoked(&alice.certificate.serial.parse().unwrap())
    );

    let mut wrong = login.clone();
    wrong.password = "not the password".into();
    let (code, err) = send::<_, api::CertificateResponse>(
        &server.anonymous(),
        Method::POST,
        &server.url("/v1/sessions"),
        Some(&wrong),
    )
    .await;
    let wrong = err.unwrap_err();
    assert_eq!(
        (code, wrong.error.as_str()),
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );

    // An unknown user gets the very same answer: logins do not tell who is registered.
    let mut unknown = login.clone();
    unknown.username = Username::new("nobody-here").unwrap();
    let (code, err) = send::<_, api::CertificateResponse>(
        &server.anonymous(),
        Method::POST,
        &server.url("/v1/sessions"),
        Some(&unknown),
    )
    .await;
    let unknown = err.unwrap_err();
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (unknown.error.as_str(), unknown.message.as_str()),
        (wrong.error.as_str(), wrong.message.as_str())
    );
}

#[tokio::test]
async fn totp_enrolment_then_login_needs_the_code() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;

    let (code, enrolment) = alice
        .call::<(), api::TotpEnrolment>(Method::POST, "/v1/totp", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::OK);
    let enrolment = enrolment.unwrap();
    assert!(enrolment.uri.starts_with("otpauth://totp/"));
    let secret = totp_rs::Secret::Encoded(enrolment.secret)
        .to_bytes()
        .unwrap();
    let totp = totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret.clone(),
        Some("peerchat".into()),
        "alice".into(),
    )
    .unwrap();

    // One moment for every code of the test, so that no step boundary falls between them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (code, _) = alice
        .call::<_, ()>(
            Method::POST,
            "/v1/totp/confirm",
            Some(&api::TotpConfirm {
                code: "000000".into(),
            }),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = alice
        .call::<_, ()>(
            Method::POST,
            "/v1/totp/confirm",
            Some(&api::TotpConfirm {
                code: totp.generate(now),
            }),
        )
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);

    let key = SigningKey::generate(&mut OsRng);
    let mut login = api::LoginRequest {
        username: alice.username.clone(),
        password: PASSWORD.into(),
        totp: None,
        csr: B64.encode(build_csr(&key, &alice.username).unwrap()),
    };
    let url = server.url("/v1/sessions");
    let (code, err) =
        send::<_, api::CertificateResponse>(&server.anonymous(), Method::POST, &url, Some(&login))
            .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::UNAUTHORIZED, "totp_required")
    );
    // The confirmation used this step's code: it does not work again. The next step's does,
    // once.
    login.totp = Some(totp.generate(now));
    let (code, _) =
        send::<_, api::CertificateResponse>(&server.anonymous(), Method::POST, &url, Some(&login))
            .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "a code is single use");
    login.totp = Some(totp.generate(now + 30));
    let (code, _) =
        send::<_, api::CertificateResponse>(&server.anonymous(), Method::POST, &url, Some(&login))
            .await;
    assert_eq!(code, StatusCode::OK);
    let (code, err) =
        send::<_, api::CertificateResponse>(&server.anonymous(), Method::POST, &url, Some(&login))
            .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::UNAUTHORIZED, "totp_required"),
        "the same valid code is refused the second time"
    );

    // The secret is not in the clear anywhere in the data directory, which only its owner
    // can read.
    use std::os::unix::fs::PermissionsExt;
    let dir = server.data_dir();
    assert_eq!(
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                "the TOTP secret is in the clear in {}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn metrics_are_served_to_the_operator_apart_from_the_api() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    assert_eq!(bob.deposit("alice", 1, b"x").await.0, StatusCode::ACCEPTED);
    // Not on the API, even for a registered user.
    let (code, _) = alice
        .call::<(), serde_json::Value>(Method::GET, "/v1/metrics", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // On the operator's address, plain HTTP.
    let response = crate::support::plain_http()
        .get(format!("http://{}/metrics", server.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("peerchat_rendezvous_registered_users 2"),
        "{text}"
    );
    assert!(
        text.contains("peerchat_rendezvous_mailbox_envelopes 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/v1/accounts",method="POST",status="201""#),
        "{text}"
    );
    assert!(
        text.contains("peerchat_rendezvous_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn a_revocation_answers_a_held_long_poll_and_an_older_crl_number_is_answered_at_once() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (code, mail) = alice
        .call::<(), api::MailboxResponse>(Method::GET, "/v1/mailbox/alice", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::OK);
    let known = mail.unwrap().crl_number.expect("the CRL number in force");

    // Alice holds a long poll (up to 20 s); bob logs out, which revokes his certificate.
    let started = std::time::Instant::now();
    let poll = {
        let http = alice.http.clone();
        let url = alice.url(&format!("/v1/mailbox/alice?wait=20&crl={known}"));
        tokio::spawn(async move {
            send::<(), api::MailboxResponse>(&http, Method::GET, &url, None).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, _) = bob
        .call::<(), ()>(Method::DELETE, "/v1/certificates/current", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, mail) = poll.await.unwrap();
    assert_eq!(code, StatusCode::OK);
    let mail = mail.unwrap();
    assert!(mail.envelopes.is_empty());
    let newer = mail.crl_number.unwrap();
    assert!(newer > known, "the answer names the new CRL");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "answered by the revocation, not by the end of the wait"
    );

    // A caller that missed it (its number is older) is answered at once, without waiting.
    let (code, mail) = alice
        .call::<(), api::MailboxResponse>(
            Method::GET,
            &format!("/v1/mailbox/alice?wait=20&crl={known}"),
            NO_BODY,
        )
        .await;
    assert_eq!(
        (code, mail.unwrap().crl_number),
        (StatusCode::OK, Some(newer))
    );
    let (code, body) = alice
        .call::<(), api::MailboxResponse>(Method::GET, "/v1/mailbox/alice?crl=x", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(body.unwrap_err().error, "bad_query");
}

#[tokio::test]
async fn the_relay_is_public_and_its_name_cannot_be_registered() {
    let server = Server::start(test_limits()).await;
    let http = server.anonymous();
    let (status, relay) =
        send::<(), api::RelayResponse>(&http, Method::GET, &server.url("/v1/relay"), None).await;
    assert_eq!(status, StatusCode::OK);
    let relay = relay.unwrap();
    assert!(relay.peer_id.starts_with("12D3KooW"), "{}", relay.peer_id);
    assert!(!relay.addresses.is_empty());
    for address in &relay.addresses {
        assert!(
            address.starts_with("/ip4/127.0.0.1/tcp/")
                && address.ends_with(&format!("/p2p/{}", relay.peer_id)),
            "{address}"
        );
    }

    // The relay's certificate names "relay": no user may take that name.
    let key = SigningKey::generate(&mut OsRng);
    let name = Username::new(peerchat_rendezvous::relay::RELAY_USERNAME).unwrap();
    let body = api::RegisterRequest {
        username: name.clone(),
        password: PASSWORD.into(),
        csr: B64.encode(build_csr(&key, &name).unwrap()),
    };
    let (status, _) = send::<_, api::CertificateResponse>(
        &http,
        Method::POST,
        &server.url("/v1/accounts"),
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
}
