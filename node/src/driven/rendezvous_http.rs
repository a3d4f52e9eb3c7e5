//! The [`Directory`] port over the rendezvous's HTTPS API (TLS 1.3, the pinned CA, our
//! certificate once registered), and the pinning of that CA on first contact.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use peerchat_pki::tls::{Credentials, rendezvous_client_config};
use peerchat_pki::{CaCertificate, Username};
use peerchat_rendezvous::api;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::rendezvous_wire;
use crate::domain::{OneTimePreKey, PreKeyBundle, SignedPreKey};
use crate::ports::{Directory, DirectoryError, Issued, PeerInfo, TotpEnrolment};

/// Timeout of every request to the rendezvous.
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long one parked chunk (up to 4 MiB) may take to move.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTPS directory client.
pub struct HttpDirectory {
    /// The rendezvous instances, in the order given; all share one CA.
    bases: Vec<String>,
    /// The one in use (an index into `bases`): the next when it stops answering.
    current: std::sync::atomic::AtomicUsize,
    ca: CaCertificate,
    client: RwLock<reqwest::Client>,
    /// Our username, once authenticated (the mailbox routes name it).
    me: RwLock<Option<Username>>,
}

impl std::fmt::Debug for HttpDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDirectory")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

fn client(
    ca: &CaCertificate,
    credentials: Option<Arc<Credentials>>,
) -> Result<reqwest::Client, DirectoryError> {
    let tls = rendezvous_client_config(ca, credentials)
        .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(TIMEOUT)
        // The rendezvous closes connections idle for 10 s (header-read timeout); dropping ours
        // first keeps a request from racing the server's close.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| DirectoryError::Unavailable(e.to_string()))
}

fn unavailable(e: reqwest::Error) -> DirectoryError {
    // reqwest's message names the URL, never a body.
    DirectoryError::Unavailable(e.to_string())
}

impl HttpDirectory {
    /// A client of the rendezvous at `bases` (`https://host:port`, instances of one service:
    /// it moves to the next when one stops answering), trusting only `ca`.
    pub fn new(bases: &[String], ca: CaCertificate) -> Result<Self, DirectoryError> {
        if bases.is_empty() {
            return Err(DirectoryError::Unavailable("no rendezvous given".into()));
        }
        Ok(Self {
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            current: std::sync::atomic::AtomicUsize::new(0),
            client: RwLock::new(client(&ca, None)?),
            me: RwLock::new(None),
            ca,
        })
    }

    /// Sends the request `build` makes for a base URL to the instance in use; when that one
    /// does not answer (refused, reset, timed out), to the next, each at most once.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DirectoryError> {
        use std::sync::atomic::Ordering;
        let count = self.bases.len();
        let mut attempt = 0;
        loop {
            let at = self.current.load(Ordering::Acquire) % count;
            let base = &self.bases[at];
            match build(base).send().await {
                Ok(response) => return Ok(response),
                Err(e)
                    if attempt + 1 < count
                        && (e.is_connect() || e.is_timeout() || e.is_request()) =>
                {
                    let next = (at + 1) % count;
                    tracing::warn!(rendezvous = %base, next = %self.bases[next], error = %e, "the rendezvous does not answer; moving to the next");
                    let _ = self.current.compare_exchange(
                        at,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    attempt += 1;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    fn http(&self) -> reqwest::Client {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn me(&self) -> Result<Username, DirectoryError> {
        self.me
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| DirectoryError::Unavailable("not authenticated yet".into()))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, DirectoryError> {
        self.call_with_timeout(method, path, body, TIMEOUT).await
    }

    #[tracing::instrument(name = "rendezvous.call", skip_all, fields(%method, path))]
    async fn call_with_timeout<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, DirectoryError> {
        let http = self.http();
        let trace = peerchat_telemetry::traceparent();
        let response = self
            .send(|base| {
                let mut request = http
                    .request(method.clone(), format!("{base}{path}"))
                    .timeout(timeout);
                if let Some(body) = body {
                    request = request.json(body);
                }
                if let Some(trace) = &trace {
                    request = request.header(peerchat_telemetry::TRACEPARENT, trace);
                }
                request
            })
            .await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unavailable)?;
        if status.is_success() {
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes)
                .map_err(|e| DirectoryError::Unavailable(format!("unexpected answer: {e}")));
        }
        match serde_json::from_slice::<api::ErrorBody>(&bytes) {
            Ok(body) => Err(rendezvous_wire::refused(body)),
            Err(_) => Err(DirectoryError::Unavailable(format!(
                "the rendezvous answered {status}"
            ))),
        }
    }

    /// A request with raw bytes for its body and answer (a parked file's chunks).
    #[tracing::instrument(name = "rendezvous.call", skip_all, fields(%method, path))]
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, DirectoryError> {
        let http = self.http();
        let trace = peerchat_telemetry::traceparent();
        let response = self
            .send(|base| {
                let mut request = http
                    .request(method.clone(), format!("{base}{path}"))
                    .timeout(CHUNK_TIMEOUT);
                if let Some(body) = &body {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .body(body.clone());
                }
                if let Some(trace) = &trace {
                    request = request.header(peerchat_telemetry::TRACEPARENT, trace);
                }
                request
            })
            .await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unavailable)?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        match serde_json::from_slice::<api::ErrorBody>(&bytes) {
            Ok(body) => Err(rendezvous_wire::refused(body)),
            Err(_) => Err(DirectoryError::Unavailable(format!(
                "the rendezvous answered {status}"
            ))),
        }
    }

    /// A certificate answer, from the CA we pinned.
    fn issued(&self, issued: api::CertificateResponse) -> Result<Issued, DirectoryError> {
        let ca = CaCertificate::from_pem(&issued.ca)
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        if ca != self.ca {
            return Err(DirectoryError::CaMismatch(ca.fingerprint().to_string()));
        }
        Ok(Issued {
            certificate_pem: issued.certificate,
            ca_pem: issued.ca,
        })
    }
}

impl HttpDirectory {
    /// Where the rendezvous's circuit relay is (`GET /v1/relay`); `None` when it runs none.
    pub async fn relay(&self) -> Result<Option<api::RelayResponse>, DirectoryError> {
        match self
            .call::<(), api::RelayResponse>(Method::GET, "/v1/relay", None)
            .await
        {
            Ok(relay) => Ok(Some(relay)),
            Err(DirectoryError::Refused { code, .. }) if code == "no_relay" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Directory for HttpDirectory {
    async fn crl(&self) -> Result<Vec<u8>, DirectoryError> {
        let http = self.http();
        let response = self.send(|base| http.get(format!("{base}/v1/crl"))).await?;
        if response.status() != StatusCode::OK {
            return Err(DirectoryError::Unavailable(format!(
                "CRL: {}",
                response.status()
            )));
        }
        Ok(response.bytes().await.map_err(unavailable)?.to_vec())
    }

    async fn register(
        &self,
        username: &Username,
        password: &str,
        csr: &[u8],
    ) -> Result<Issued, DirectoryError> {
        let request = api::RegisterRequest {
            username: username.clone(),
            password: password.into(),
            csr: B64.encode(csr),
        };
        let issued: api::CertificateResponse = self
            .call(Method::POST, "/v1/accounts", Some(&request))
            .await?;
        self.issued(issued)
    }

    async fn login(
        &self,
        username: &Username,
        password: &str,
        totp: Option<&str>,
        csr: &[u8],
    ) -> Result<Issued, DirectoryError> {
        let request = api::LoginRequest {
            username: username.clone(),
            password: password.into(),
            totp: totp.map(str::to_owned),
            csr: B64.encode(csr),
        };
        let issued: api::CertificateResponse = self
            .call(Method::POST, "/v1/sessions", Some(&request))
            .await?;
        self.issued(issued)
    }

    fn authenticate(&self, certificate_pem: &str, key: &SigningKey) -> Result<(), DirectoryError> {
        use rustls::pki_types::pem::PemObject;
        let der = peerchat_pki::CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|_| DirectoryError::Unavailable("our certificate is not PEM".into()))?;
        let me = peerchat_pki::verify(
            std::slice::from_ref(&der),
            &self.ca,
            None,
            std::time::SystemTime::now(),
        )
        .map_err(|e| DirectoryError::Unavailable(format!("our certificate: {e}")))?
        .username;
        let authenticated = client(&self.ca, Some(Credentials::new(vec![der], key.clone())))?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = authenticated;
        *self.me.write().unwrap_or_else(|p| p.into_inner()) = Some(me);
        Ok(())
    }

    async fn upload_prekeys(
        &self,
        signed: Option<SignedPreKey>,
        one_time: Vec<OneTimePreKey>,
    ) -> Result<u32, DirectoryError> {
        let mut status: Option<api::PreKeyStatus> = None;
        if let Some(signed) = signed {
            status = Some(
                self.call(
                    Method::PUT,
                    "/v1/prekeys/signed",
                    Some(&rendezvous_wire::signed_prekey(&signed)),
                )
                .await?,
            );
        }
        for chunk in one_time.chunks(100) {
            let upload = api::OneTimePreKeysUpload {
                keys: chunk.iter().map(rendezvous_wire::one_time_prekey).collect(),
            };
            status = Some(
                self.call(Method::POST, "/v1/prekeys/one-time", Some(&upload))
                    .await?,
            );
        }
        let status = match status {
            Some(s) => s,
            None => self.call::<(), _>(Method::GET, "/v1/prekeys", None).await?,
        };
        Ok(status.one_time_prekeys)
    }

    async fn lookup(&self, username: &Username) -> Result<PeerInfo, DirectoryError> {
        let wire: api::LookupResponse = self
            .call::<(), _>(Method::GET, &format!("/v1/users/{username}"), None)
            .await?;
        rendezvous_wire::peer_info(wire)
    }

    async fn bundle(&self, username: &Username) -> Result<PreKeyBundle, DirectoryError> {
        let wire: api::BundleResponse = self
            .call::<(), _>(Method::POST, &format!("/v1/users/{username}/bundle"), None)
            .await?;
        rendezvous_wire::bundle(wire)
    }

    async fn renew(&self, csr: &[u8]) -> Result<Issued, DirectoryError> {
        let request = api::RenewRequest {
            csr: B64.encode(csr),
        };
        let issued: api::CertificateResponse = self
            .call(Method::POST, "/v1/certificates/renew", Some(&request))
            .await?;
        self.issued(issued)
    }

    async fn totp_enrol(&self) -> Result<TotpEnrolment, DirectoryError> {
        let enrolment: api::TotpEnrolment =
            self.call::<(), _>(Method::POST, "/v1/totp", None).await?;
        Ok(TotpEnrolment {
            secret: enrolment.secret,
            uri: enrolment.uri,
        })
    }

    async fn totp_confirm(&self, code: &str) -> Result<(), DirectoryError> {
        let request = api::TotpConfirm { code: code.into() };
        self.call(Method::POST, "/v1/totp/confirm", Some(&request))
            .await
    }

    async fn logout(&self) -> Result<(), DirectoryError> {
        self.call::<(), ()>(Method::DELETE, "/v1/certificates/current", None)
            .await
    }

    async fn deposit(
        &self,
        to: &Username,
        id: &crate::domain::MessageId,
        envelope: &[u8],
    ) -> Result<(), DirectoryError> {
        let request = api::DepositRequest {
            id: id.to_string(),
            envelope: B64.encode(envelope),
        };
        let _: api::DepositResponse = self
            .call(Method::POST, &format!("/v1/mailbox/{to}"), Some(&request))
            .await?;
        Ok(())
    }

    async fn fetch_mail(
        &self,
        wait_secs: u64,
        known_crl: Option<u64>,
    ) -> Result<crate::ports::Mailbox, DirectoryError> {
        let me = self.me()?;
        let mut path = format!("/v1/mailbox/{me}?wait={wait_secs}");
        if let Some(number) = known_crl {
            path.push_str(&format!("&crl={number}"));
        }
        let mail: api::MailboxResponse = self
            .call_with_timeout::<(), _>(
                Method::GET,
                &path,
                None,
                TIMEOUT + Duration::from_secs(wait_secs),
            )
            .await?;
        rendezvous_wire::mailbox(mail)
    }

    async fn ack_mail(&self, id: &crate::domain::MessageId) -> Result<(), DirectoryError> {
        let me = self.me()?;
        self.call::<(), ()>(Method::DELETE, &format!("/v1/mailbox/{me}/{id}"), None)
            .await
    }

    async fn announce(&self, addresses: Vec<String>, ttl_secs: u64) -> Result<(), DirectoryError> {
        self.call::<_, ()>(
            Method::PUT,
            "/v1/presence",
            Some(&api::PresenceRequest {
                addresses,
                ttl_secs,
            }),
        )
        .await
    }

    async fn park(
        &self,
        id: &crate::domain::FileId,
        size: u64,
        chunks: u32,
        readers: &[Username],
    ) -> Result<(), DirectoryError> {
        let request = api::ParkRequest {
            size,
            chunks,
            readers: readers.iter().map(ToString::to_string).collect(),
        };
        self.call::<_, ()>(Method::PUT, &format!("/v1/blobs/{id}"), Some(&request))
            .await
    }

    async fn park_chunk(
        &self,
        id: &crate::domain::FileId,
        index: u32,
        sealed: &[u8],
    ) -> Result<(), DirectoryError> {
        self.raw(
            Method::PUT,
            &format!("/v1/blobs/{id}/{index}"),
            Some(sealed.to_vec()),
        )
        .await
        .map(|_| ())
    }

    async fn parked_chunk(
        &self,
        id: &crate::domain::FileId,
        index: u32,
    ) -> Result<Option<Vec<u8>>, DirectoryError> {
        match self
            .raw(Method::GET, &format!("/v1/blobs/{id}/{index}"), None)
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(DirectoryError::Refused { code, .. }) if code == "no_such_chunk" => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn unpark(&self, id: &crate::domain::FileId) -> Result<(), DirectoryError> {
        self.call::<(), ()>(Method::DELETE, &format!("/v1/blobs/{id}"), None)
            .await
    }
}

/// Why the CA could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// A CA is pinned and another one was offered.
    #[error("this node trusts CA {pinned}, not {offered}; refusing to switch")]
    Different {
        /// Fingerprint of the pinned CA.
        pinned: String,
        /// Fingerprint of the other one.
        offered: String,
    },
    /// The rendezvous presents another CA than the one this node pinned.
    #[error(
        "the rendezvous at {url} presents CA {presented}, but this node pinned CA {pinned}; \
         is --rendezvous the server this node registered with? (a node never switches CAs: \
         use another --data-dir for another rendezvous)"
    )]
    RendezvousCa {
        /// The rendezvous.
        url: String,
        /// Fingerprint of the pinned CA.
        pinned: String,
        /// Fingerprint of the CA the rendezvous presents.
        presented: String,
    },
    /// Reading or writing the pin failed, or the file is not a CA.
    #[error("{0}")]
    File(String),
    /// The rendezvous could not be reached or did not prove it holds the CA's certificate.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// The CA this node trusts: `DIR/ca.pem` if pinned before (and then `ca_cert`, if given, must be
/// the same), else `ca_cert`, else the rendezvous's own CA, fetched once and then confirmed over a
/// connection verified against it. The result is pinned in `DIR/ca.pem`; returns it and whether
/// it was pinned just now.
pub async fn pin_ca(
    data_dir: &Path,
    rendezvous: &[String],
    ca_cert: Option<&Path>,
) -> Result<(CaCertificate, bool), PinError> {
    let first = rendezvous
        .first()
        .ok_or_else(|| DirectoryError::Unavailable("no rendezvous given".into()))?;
    let pin_path = data_dir.join("ca.pem");
    let read = |path: &Path| -> Result<CaCertificate, PinError> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| PinError::File(format!("{}: {e}", path.display())))?;
        CaCertificate::from_pem(&pem)
            .map_err(|e| PinError::File(format!("{}: {e}", path.display())))
    };
    let given = ca_cert.map(read).transpose()?;
    if pin_path.exists() {
        let pinned = read(&pin_path)?;
        if let Some(given) = given
            && given != pinned
        {
            return Err(PinError::Different {
                pinned: pinned.fingerprint().to_string(),
                offered: given.fingerprint().to_string(),
            });
        }
        // Say so now if the rendezvous holds another CA, rather than failing every request
        // later with "unavailable". An unreachable rendezvous is no reason not to start.
        if let Ok(Ok(presented)) =
            tokio::time::timeout(Duration::from_secs(5), fetch_ca(first)).await
            && presented != pinned
        {
            return Err(PinError::RendezvousCa {
                url: first.to_owned(),
                pinned: pinned.fingerprint().to_string(),
                presented: presented.fingerprint().to_string(),
            });
        }
        return Ok((pinned, false));
    }
    let ca = match given {
        Some(ca) => ca,
        None => {
            // The first instance that answers; the others must hold the same CA (checked by
            // every verified connection to them).
            let mut fetched = Err(DirectoryError::Unavailable("no rendezvous answered".into()));
            for url in rendezvous {
                fetched = fetch_ca(url).await;
                if fetched.is_ok() {
                    break;
                }
            }
            fetched?
        }
    };
    // Whatever its source, the rendezvous must present a certificate from this CA for its name.
    let directory = HttpDirectory::new(rendezvous, ca.clone())?;
    let _: api::Health = directory
        .call::<(), _>(Method::GET, "/v1/healthz", None)
        .await?;
    std::fs::write(&pin_path, ca.to_pem())
        .map_err(|e| PinError::File(format!("{}: {e}", pin_path.display())))?;
    Ok((ca, true))
}

/// Fetches the CA certificate over a connection that is not yet verified (trust on first use);
/// the caller confirms it with a verified connection before pinning.
async fn fetch_ca(rendezvous: &str) -> Result<CaCertificate, DirectoryError> {
    let tls = rustls::ClientConfig::builder_with_provider(peerchat_pki::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| DirectoryError::Unavailable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(first_contact::AnyServer))
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(TIMEOUT)
        .build()
        .map_err(unavailable)?;
    let response: api::CaResponse = http
        .get(format!("{}/v1/ca", rendezvous.trim_end_matches('/')))
        .send()
        .await
        .map_err(unavailable)?
        .json()
        .await
        .map_err(unavailable)?;
    CaCertificate::from_pem(&response.certificate)
        .map_err(|e| DirectoryError::Unavailable(e.to_string()))
}

mod first_contact {
    //! The one unverified connection: it only fetches the CA certificate to pin.

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    pub(super) struct AnyServer;

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOfferedOrEnabled,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &peerchat_pki::tls::provider().signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            peerchat_pki::tls::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
