//! A rendezvous on 127.0.0.1:0 with a temporary data directory, and users that talk to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};
use peerchat_pki::tls::{Credentials, rendezvous_client_config};
use peerchat_pki::{CaCertificate, CertificateDer, Username, build_csr};
use peerchat_rendezvous::api;
use peerchat_rendezvous::limits::{Limits, Rate};
use peerchat_rendezvous::{Config, prepare, run_with_metrics};
use rand::rngs::OsRng;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

pub const PASSWORD: &str = "correct horse battery";

/// Limits for tests: cheap password hashing, generous rates unless a test tightens them.
pub fn test_limits() -> Limits {
    Limits {
        argon2_memory_kib: 256,
        auth_per_prefix: Rate {
            burst: 1000,
            period: Duration::from_millis(1),
        },
        registrations: Rate {
            burst: 1000,
            period: Duration::from_millis(1),
        },
        login_per_account_prefix: Rate {
            burst: 1000,
            period: Duration::from_millis(1),
        },
        login_per_account: Rate {
            burst: 1000,
            period: Duration::from_millis(1),
        },
        lookups_per_user: Rate {
            burst: 1000,
            period: Duration::from_millis(1),
        },
        one_time_prekeys_per_pair: Rate {
            burst: 1000,
            period: Duration::from_millis(1),
        },
        deposits_per_user: Rate {
            burst: 1000,
            period: Duration::from_millis(1),
        },
        ..Limits::default()
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// The operator's metrics address (plain HTTP).
    pub metrics: SocketAddr,
    pub ca: CaCertificate,
    /// Deleted when the server is dropped.
    _dir: tempfile::TempDir,
    /// Dropping it stops the server.
    _stop: oneshot::Sender<()>,
}

impl Server {
    pub async fn start(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            hostnames: vec![
                peerchat_pki::HostName::parse("localhost"),
                peerchat_pki::HostName::parse("127.0.0.1"),
            ],
            limits,
            shared: false,
            relay: Some(peerchat_rendezvous::relay::RelayConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                ..Default::default()
            }),
        };
        let prepared = prepare(&config, SystemTime::now()).await.unwrap();
        let relay = peerchat_rendezvous::start_relay(&prepared).await.unwrap();
        let ca = prepared.service.ca().certificate().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = metrics_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            run_with_metrics(listener, Some(metrics_listener), prepared, relay, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            metrics,
            ca,
            _dir: dir,
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A client without certificate.
    pub fn anonymous(&self) -> reqwest::Client {
        client(&self.ca, None)
    }

    /// Registers `name` with a fresh key and returns the user with a client for it.
    pub async fn register(&self, name: &str) -> User {
        let key = SigningKey::generate(&mut OsRng);
        let username = Username::new(name).unwrap();
        let request = api::RegisterRequest {
            username: username.clone(),
            password: PASSWORD.into(),
            csr: B64.encode(build_csr(&key, &username).unwrap()),
        };
        let response = self
            .anonymous()
            .post(self.url("/v1/accounts"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        let cert: api::CertificateResponse = response.json().await.unwrap();
        User::new(self, username, key, &cert)
    }
}

pub fn client(ca: &CaCertificate, credentials: Option<Arc<Credentials>>) -> reqwest::Client {
    let tls = rendezvous_client_config(ca, credentials).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A client for plain HTTP (the operator's metrics): reqwest needs a TLS configuration even then.
pub fn plain_http() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(peerchat_pki::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

pub fn cert_der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

pub struct User {
    pub username: Username,
    pub key: SigningKey,
    pub certificate: api::CertificateResponse,
    pub http: reqwest::Client,
    base: String,
}

impl User {
    pub fn new(
        server: &Server,
        username: Username,
        key: SigningKey,
        certificate: &api::CertificateResponse,
    ) -> Self {
        let credentials = Credentials::new(vec![cert_der(&certificate.certificate)], key.clone());
        Self {
            http: client(&server.ca, Some(credentials)),
            base: server.url(""),
            username,
            key,
            certificate: certificate.clone(),
        }
    }

    /// A user of a server that runs in another process.
    pub fn new_external(
        username: Username,
        key: SigningKey,
        certificate: &api::CertificateResponse,
        http: reqwest::Client,
        base: String,
    ) -> Self {
        Self {
            username,
            key,
            certificate: certificate.clone(),
            http,
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; returns the status and the body parsed as `T` (or the error body).
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> (StatusCode, Result<T, api::ErrorBody>) {
        send(&self.http, method, &self.url(path), body).await
    }

    pub async fn upload_prekeys(&self, one_time: std::ops::Range<u32>) -> api::PreKeyStatus {
        let spk =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(OsRng));
        let signature = self
            .key
            .sign(&api::signed_prekey_message(1, spk.as_bytes()));
        let wire = api::SignedPreKeyWire {
            id: 1,
            public_key: B64.encode(spk.as_bytes()),
            signature: B64.encode(signature.to_bytes()),
        };
        let (status, body) = self
            .call::<_, api::PreKeyStatus>(Method::PUT, "/v1/prekeys/signed", Some(&wire))
            .await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let keys = one_time
            .map(|id| api::OneTimePreKeyWire {
                id,
                public_key: B64.encode(
                    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(
                        OsRng,
                    ))
                    .as_bytes(),
                ),
            })
            .collect();
        let (status, body) = self
            .call::<_, api::PreKeyStatus>(
                Method::POST,
                "/v1/prekeys/one-time",
                Some(&api::OneTimePreKeysUpload { keys }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        body.unwrap()
    }

    pub async fn deposit(
        &self,
        to: &str,
        id: u8,
        envelope: &[u8],
    ) -> (StatusCode, Result<api::DepositResponse, api::ErrorBody>) {
        let request = api::DepositRequest {
            id: format!("{id:032x}"),
            envelope: B64.encode(envelope),
        };
        self.call(Method::POST, &format!("/v1/mailbox/{to}"), Some(&request))
            .await
    }
}

pub async fn send<B: Serialize, T: DeserializeOwned>(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&B>,
) -> (StatusCode, Result<T, api::ErrorBody>) {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    if status.is_success() {
        let parsed = if bytes.is_empty() {
            serde_json::from_slice(b"null")
        } else {
            serde_json::from_slice(&bytes)
        };
        (
            status,
            Ok(parsed.unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))),
        )
    } else {
        (
            status,
            Err(serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))),
        )
    }
}

pub const NO_BODY: Option<&()> = None;
