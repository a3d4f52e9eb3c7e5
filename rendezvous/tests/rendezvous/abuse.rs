//! Bad input, quotas and rate limits: clear errors, nothing stored.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use peerchat_pki::{Username, build_csr};
use peerchat_rendezvous::api;
use peerchat_rendezvous::limits::Rate;
use rand::rngs::OsRng;
use reqwest::{Method, StatusCode};

use crate::support::{NO_BODY, PASSWORD, Server, User, send, test_limits};

#[tokio::test]
async fn twenty_parallel_bundle_fetches_hand_out_each_one_time_prekey_at_most_once() {
    let server = Server::start(test_limits()).await;
    let alice = server.register("alice").await;
    alice.upload_prekeys(0..10).await;
    let mut fetchers = Vec::new();
    for i in 0..20 {
        fetchers.push(server.register(&format!("fetcher{i}")).await);
    }
    let tasks: Vec<_> = fetchers
        .into_iter()
        .map(|f| {
            tokio::spawn(async move {
                let (code, bundle) = f
                    .call::<(), api::BundleResponse>(
                        Method::POST,
                        "/v1/users/alice/bundle",
                        NO_BODY,
                    )
                    .await;
                assert_eq!(code, StatusCode::OK);
                bundle.unwrap().one_time_prekey.map(|k| k.id)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let mut handed: Vec<u32> = ids.iter().flatten().copied().collect();
    handed.sort_unstable();
    assert_eq!(
        handed,
        (0..10).collect::<Vec<_>>(),
        "each of the ten exactly once"
    );
    assert_eq!(ids.iter().filter(|i| i.is_none()).count(), 10);
}

#[tokio::test]
async fn mailbox_quota_and_size_limits_answer_as_specified() {
    let mut limits = test_limits();
    limits.mailbox_max_envelopes = 3;
    limits.max_envelope_bytes = 1000;
    limits.max_body_bytes = 4096;
    let server = Server::start(limits).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    for id in 0..3 {
        assert_eq!(bob.deposit("alice", id, b"x").await.0, StatusCode::ACCEPTED);
    }
    let (code, err) = bob.deposit("alice", 3, b"x").await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::INSUFFICIENT_STORAGE, "mailbox_full")
    );

    let (code, err) = bob.deposit("bob", 4, &[0u8; 1001]).await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    let (code, err) = bob.deposit("bob", 5, &[0u8; 5000]).await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        "body limit"
    );

    let (_, mail) = alice
        .call::<(), api::MailboxResponse>(Method::GET, "/v1/mailbox/alice", NO_BODY)
        .await;
    assert_eq!(mail.unwrap().envelopes.len(), 3);
    let (_, mail) = bob
        .call::<(), api::MailboxResponse>(Method::GET, "/v1/mailbox/bob", NO_BODY)
        .await;
    assert!(
        mail.unwrap().envelopes.is_empty(),
        "refused deposits stored nothing"
    );
}

/// An anonymous client whose connections come from `from` (any 127.0.0.0/8 address is this host).
fn client_from(server: &Server, from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(
            peerchat_pki::tls::rendezvous_client_config(&server.ca, None).unwrap(),
        )
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap()
}

async fn register_from(server: &Server, from: [u8; 4], name: &str) -> StatusCode {
    let key = SigningKey::generate(&mut OsRng);
    let username = Username::new(name).unwrap();
    let request = api::RegisterRequest {
        username: username.clone(),
        password: PASSWORD.into(),
        csr: B64.encode(build_csr(&key, &username).unwrap()),
    };
    client_from(server, from)
        .post(server.url("/v1/accounts"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .status()
}

async fn login_from(server: &Server, from: [u8; 4], user: &User, password: &str) -> StatusCode {
    let login = api::LoginRequest {
        username: user.username.clone(),
        password: password.into(),
        totp: None,
        csr: B64.encode(build_csr(&user.key, &user.username).unwrap()),
    };
    client_from(server, from)
        .post(server.url("/v1/sessions"))
        .json(&login)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn registrations_are_limited_per_network_and_in_all_whatever_the_addresses() {
    let mut limits = test_limits();
    limits.auth_per_prefix = Rate {
        burst: 3,
        period: Duration::from_secs(60),
    };
    limits.registrations = Rate {
        burst: 5,
        period: Duration::from_secs(60),
    };
    let server = Server::start(limits).await;
    // Four addresses of one /24 count as one network.
    let mut one_network = Vec::new();
    for (i, host) in [1u8, 2, 3, 4].into_iter().enumerate() {
        one_network.push(register_from(&server, [127, 0, 0, host], &format!("near{i}")).await);
    }
    assert_eq!(
        one_network,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // The refusal says when to come back, as JSON.
    let key = SigningKey::generate(&mut OsRng);
    let username = Username::new("near9").unwrap();
    let response = client_from(&server, [127, 0, 0, 9])
        .post(server.url("/v1/accounts"))
        .json(&api::RegisterRequest {
            username: username.clone(),
            password: PASSWORD.into(),
            csr: B64.encode(build_csr(&key, &username).unwrap()),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: api::ErrorBody = response.json().await.unwrap();
    assert_eq!(body.error, "rate_limited");

    // Many networks: the global rate caps them all (5 in all, 3 already taken).
    let mut many = Vec::new();
    for n in 1u8..=6 {
        many.push(register_from(&server, [127, 0, n, 1], &format!("far{n}")).await);
    }
    assert_eq!(
        many,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn a_guesser_elsewhere_does_not_lock_the_owner_out_but_meets_a_ceiling_per_account() {
    let mut limits = test_limits();
    limits.login_per_account_prefix = Rate {
        burst: 3,
        period: Duration::from_secs(60),
    };
    limits.login_per_account = Rate {
        burst: 10,
        period: Duration::from_secs(60),
    };
    let server = Server::start(limits).await;
    let alice = server.register("alice").await;

    // The guesser's network is stopped after three tries...
    let mut guesses = Vec::new();
    for _ in 0..4 {
        guesses.push(login_from(&server, [127, 0, 1, 1], &alice, "wrong password").await);
    }
    assert_eq!(
        guesses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // ...while the owner, on her own network, logs in.
    assert_eq!(
        login_from(&server, [127, 0, 0, 1], &alice, PASSWORD).await,
        StatusCode::OK
    );
    // Guesses from many networks meet the account's ceiling: 10 attempts in all, 4 used (the
    // refused fourth guess was stopped before it counted against the account).
    let mut spread = Vec::new();
    for n in 2u8..=5 {
        for _ in 0..2 {
            spread.push(login_from(&server, [127, 0, n, 1], &alice, "wrong password").await);
        }
    }
    assert_eq!(
        spread
            .iter()
            .filter(|c| **c == StatusCode::UNAUTHORIZED)
            .count(),
        6
    );
    assert_eq!(spread.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
}

#[tokio::test]
async fn lookups_and_deposits_are_rate_limited_per_user() {
    let mut limits = test_limits();
    limits.lookups_per_user = Rate {
        burst: 2,
        period: Duration::from_secs(60),
    };
    limits.deposits_per_user = Rate {
        burst: 2,
        period: Duration::from_secs(60),
    };
    let server = Server::start(limits).await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let mut lookups = Vec::new();
    for _ in 0..3 {
        lookups.push(
            alice
                .call::<(), serde_json::Value>(Method::GET, "/v1/users/bob", NO_BODY)
                .await
                .0,
        );
    }
    assert_eq!(
        lookups,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let mut deposits = Vec::new();
    for id in 0..3 {
        deposits.push(alice.deposit("bob", id, b"x").await.0);
    }
    assert_eq!(
        deposits,
        [
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_change_nothing() {
    let server = Server::start(test_limits()).await;
    let http = server.anonymous();
    let url = server.url("/v1/accounts");

    let raw = |body: &'static str| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<api::ErrorBody>().await.unwrap())
        }
    };
    let (code, err) = raw("{not json").await;
    assert_eq!(
        (code, err.error.as_str()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (code, err) = raw(r#"{"username":"Alice!","password":"xxxxxxxxxx","csr":""}"#).await;
    assert_eq!(
        (code, err.error.as_str()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    assert!(err.message.contains("username"), "{}", err.message);
    let (code, err) = raw(r#"{"username":"alice","password":"xxxxxxxxxx","csr":"%%%"}"#).await;
    assert_eq!(
        (code, err.error.as_str()),
        (StatusCode::BAD_REQUEST, "bad_base64")
    );
    let (code, err) = raw(r#"{"username":"alice","password":"xxxxxxxxxx","csr":"AAAA"}"#).await;
    assert_eq!(
        (code, err.error.as_str()),
        (StatusCode::BAD_REQUEST, "bad_csr")
    );
    let (code, err) = raw(r#"{"username":"alice","password":"short","csr":"AAAA"}"#).await;
    assert_eq!(
        (code, err.error.as_str()),
        (StatusCode::BAD_REQUEST, "weak_password")
    );

    // A CSR for another name.
    let key = SigningKey::generate(&mut OsRng);
    let request = api::RegisterRequest {
        username: Username::new("alice").unwrap(),
        password: PASSWORD.into(),
        csr: B64.encode(build_csr(&key, &Username::new("mallory").unwrap()).unwrap()),
    };
    let (code, err) = send::<_, serde_json::Value>(&http, Method::POST, &url, Some(&request)).await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::BAD_REQUEST, "bad_csr")
    );

    // None of that created "alice".
    let alice = server.register("alice").await;

    // A signed prekey not signed by alice's key.
    let other = SigningKey::generate(&mut OsRng);
    let spk = [7u8; 32];
    let forged = api::SignedPreKeyWire {
        id: 1,
        public_key: B64.encode(spk),
        signature: B64.encode(
            ed25519_dalek::Signer::sign(&other, &api::signed_prekey_message(1, &spk)).to_bytes(),
        ),
    };
    let (code, err) = alice
        .call::<_, serde_json::Value>(Method::PUT, "/v1/prekeys/signed", Some(&forged))
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::BAD_REQUEST, "bad_signature")
    );
    let (_, status) = alice
        .call::<(), api::PreKeyStatus>(Method::GET, "/v1/prekeys", NO_BODY)
        .await;
    assert!(!status.unwrap().signed_prekey, "nothing stored");

    let bad_keys = api::OneTimePreKeysUpload {
        keys: vec![api::OneTimePreKeyWire {
            id: 1,
            public_key: B64.encode([1u8; 31]),
        }],
    };
    let (code, err) = alice
        .call::<_, serde_json::Value>(Method::POST, "/v1/prekeys/one-time", Some(&bad_keys))
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::BAD_REQUEST, "bad_key")
    );

    let bad_id = api::DepositRequest {
        id: "xyz".into(),
        envelope: B64.encode(b"x"),
    };
    let (code, err) = alice
        .call::<_, serde_json::Value>(Method::POST, "/v1/mailbox/alice", Some(&bad_id))
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::BAD_REQUEST, "bad_id")
    );
    let (code, err) = alice
        .call::<(), serde_json::Value>(Method::GET, "/v1/mailbox/alice?wait=soon", NO_BODY)
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::BAD_REQUEST, "bad_query")
    );
    let (code, err) = alice
        .call::<(), serde_json::Value>(Method::GET, "/v1/users/NOT_VALID", NO_BODY)
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::BAD_REQUEST, "bad_username")
    );
    let (code, err) = alice
        .call::<(), serde_json::Value>(Method::GET, "/v1/nowhere", NO_BODY)
        .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::NOT_FOUND, "no_such_route")
    );

    let (code, err) = send::<_, serde_json::Value>(
        &http,
        Method::POST,
        &url,
        Some(&api::RegisterRequest {
            username: Username::new("alice").unwrap(),
            password: PASSWORD.into(),
            csr: B64.encode(build_csr(&key, &Username::new("alice").unwrap()).unwrap()),
        }),
    )
    .await;
    assert_eq!(
        (code, err.unwrap_err().error.as_str()),
        (StatusCode::CONFLICT, "username_taken")
    );
}
