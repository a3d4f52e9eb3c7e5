//! Client certificates: required on protected routes, from this CA only, not once revoked.

use std::time::SystemTime;

use ed25519_dalek::SigningKey;
use peerchat_pki::tls::Credentials;
use peerchat_pki::{CertificateAuthority, Username, build_csr};
use rand::rngs::OsRng;
use reqwest::{Method, StatusCode};

use crate::support::{NO_BODY, Server, client, send, test_limits};

#[tokio::test]
async fn protected_routes_need_a_client_certificate() {
    let server = Server::start(test_limits()).await;
    server.register("alice").await;
    let http = server.anonymous();
    for (method, path) in [
        (Method::GET, "/v1/users/alice"),
        (Method::POST, "/v1/users/alice/bundle"),
        (Method::GET, "/v1/mailbox/alice"),
        (Method::POST, "/v1/mailbox/alice"),
        (
            Method::DELETE,
            "/v1/mailbox/alice/00000000000000000000000000000000",
        ),
        (Method::PUT, "/v1/presence"),
        (Method::GET, "/v1/prekeys"),
        (Method::PUT, "/v1/prekeys/signed"),
        (Method::POST, "/v1/prekeys/one-time"),
        (Method::POST, "/v1/certificates/renew"),
        (Method::DELETE, "/v1/certificates/current"),
        (Method::POST, "/v1/totp"),
    ] {
        let (code, err) =
            send::<(), serde_json::Value>(&http, method.clone(), &server.url(path), None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            err.unwrap_err().error,
            "certificate_required",
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_certificate_from_a_foreign_ca_is_refused_at_the_handshake() {
    let server = Server::start(test_limits()).await;
    server.register("alice").await;
    let foreign = CertificateAuthority::generate("foreign", SystemTime::now(), &mut OsRng).unwrap();
    let key = SigningKey::generate(&mut OsRng);
    let alice = Username::new("alice").unwrap();
    let cert = foreign
        .issue_peer(
            &build_csr(&key, &alice).unwrap(),
            &alice,
            SystemTime::now(),
            peerchat_pki::DEFAULT_PEER_VALIDITY,
            &mut OsRng,
        )
        .unwrap();
    let http = client(&server.ca, Some(Credentials::new(vec![cert.der], key)));
    let result = http.get(server.url("/v1/users/alice")).send().await;
    assert!(
        result.is_err(),
        "a foreign-CA client got an answer: {result:?}"
    );
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_on_open_and_new_connections() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    server.register("bob").await;

    let (code, _) = alice
        .call::<(), ()>(Method::DELETE, "/v1/certificates/current", NO_BODY)
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);

    // The keep-alive connection the revocation went over: the route refuses it.
    let (code, err) = alice
        .call::<(), serde_json::Value>(Method::GET, "/v1/users/bob", NO_BODY)
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::UNAUTHORIZED, "certificate_revoked")
    );

    // A new connection: the handshake itself fails, the CRL having been swapped.
    let fresh = client(
        &server.ca,
        Some(Credentials::new(
            vec![crate::support::cert_der(&alice.certificate.certificate)],
            alice.key.clone(),
        )),
    );
    assert!(fresh.get(server.url("/v1/users/bob")).send().await.is_err());
}

#[tokio::test]
async fn another_users_mailbox_is_forbidden() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    assert_eq!(
        alice.deposit("bob", 1, b"for bob").await.0,
        StatusCode::ACCEPTED
    );

    let (code, err) = alice
        .call::<(), serde_json::Value>(Method::GET, "/v1/mailbox/bob", NO_BODY)
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (code, _) = alice
        .call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/mailbox/bob/{:032x}", 1),
            NO_BODY,
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (_, mail) = bob
        .call::<(), peerchat_rendezvous::api::MailboxResponse>(
            Method::GET,
            "/v1/mailbox/bob",
            NO_BODY,
        )
        .await;
    assert_eq!(mail.unwrap().envelopes.len(), 1, "nothing was deleted");
}

// curl blocks its thread: the server needs another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_client_certificate_reaches_protected_routes() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = dir.path().join("alice.pem");
    let key = dir.path().join("alice.key");
    std::fs::write(&ca, server.ca.to_pem()).unwrap();
    std::fs::write(&cert, &alice.certificate.certificate).unwrap();
    std::fs::write(
        &key,
        peerchat_pki::private_key_to_pem(&alice.key)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();

    let curl = |with_cert: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca);
        if with_cert {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        let out = cmd
            .arg(server.url("/v1/users/bob"))
            .output()
            .expect("curl must be installed (.ci/run installs it)");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
    };
    let with = curl(true);
    assert!(with.ends_with("\n200"), "{with}");
    assert!(with.contains(r#""username":"bob""#), "{with}");
    let without = curl(false);
    assert!(without.ends_with("\n401"), "{without}");
}

#[tokio::test]
async fn a_long_poll_opened_before_revocation_does_not_hand_out_mail_after_it() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let waiting = {
        let http = alice.http.clone();
        let url = alice.url("/v1/mailbox/alice?wait=20");
        tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Alice logs out over another connection; then mail arrives for her.
    let other = client(
        &server.ca,
        Some(Credentials::new(
            vec![crate::support::cert_der(&alice.certificate.certificate)],
            alice.key.clone(),
        )),
    );
    let status = other
        .delete(server.url("/v1/certificates/current"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        bob.deposit("alice", 1, b"for alice").await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(waiting.await.unwrap(), StatusCode::UNAUTHORIZED);
}
