//! rustls configurations for peerchat: TLS 1.3 only, with the *ring* provider chosen explicitly.
//!
//! - Peer to peer ([`peer_server_config`], [`peer_client_config`]): both sides present a CA-issued
//!   peer certificate and verify the other's against the CA and the current CRL. Peers are named
//!   by their certificate, not by a host name, so the client does not check one; the caller
//!   compares the [`VerifiedPeer`] with the contact it meant to reach.
//! - Rendezvous HTTPS ([`rendezvous_server_config`], [`rendezvous_client_config`]): the server
//!   presents a server certificate for its host names; a client certificate is optional at the
//!   handshake (registration has none yet) and, when sent, verified like a peer's.
//!
//! Certificates and the CRL live in shared handles ([`Credentials`], [`TrustStore`]): renewing a
//! certificate or installing a new CRL affects the next handshake without rebuilding anything.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ca::CaCertificate;
use crate::signer::RustlsSigner;
use crate::verify::{TrustStore, VerifiedPeer, VerifyError};

/// The server name a dialling peer puts in its ClientHello. It is not checked: the peer's
/// identity is its certificate's username, checked by the caller after the handshake.
pub const PEER_SERVER_NAME: &str = "peer.peerchat.invalid";

/// The crypto provider every peerchat TLS configuration uses (*ring*, TLS 1.3 suites).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificate could not be added as a root.
    #[error("the CA certificate cannot be used as a TLS root")]
    BadRoot,
    /// rustls could not build the server-certificate verifier.
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// This side's certificate chain and key, replaceable at run time (certificate renewal).
pub struct Credentials {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Credentials {
    /// Credentials from a chain (leaf first) and the leaf's Ed25519 key.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: SigningKey) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(certified(chain, key)),
        })
    }

    /// Swaps in a new chain and key for every later handshake.
    pub fn replace(&self, chain: Vec<CertificateDer<'static>>, key: SigningKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = certified(chain, key);
    }

    /// The chain in use.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().cert.clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn certified(chain: Vec<CertificateDer<'static>>, key: SigningKey) -> Arc<CertifiedKey> {
    Arc::new(CertifiedKey::new(
        chain,
        Arc::new(RustlsSigner(Arc::new(key))),
    ))
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("certificates", &self.current().cert.len())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        schemes
            .contains(&SignatureScheme::ED25519)
            .then(|| self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server side of a peer connection: our peer certificate, a peer certificate required from the
/// client and verified against the CA and the current CRL.
pub fn peer_server_config(
    credentials: Arc<Credentials>,
    trust: Arc<TrustStore>,
) -> Result<ServerConfig, TlsError> {
    let verifier = Arc::new(PeerCertVerifier::new(trust, true));
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(credentials);
    Ok(without_resumption(config))
}

/// A resumed TLS 1.3 session skips certificate verification, which would let a peer revoked since
/// its first connection back in. Every handshake here is a full one.
fn without_resumption(mut config: ServerConfig) -> ServerConfig {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

/// Client side of a peer connection: our peer certificate, the server's peer certificate verified
/// against the CA and the current CRL, no host-name check (see [`PEER_SERVER_NAME`]).
pub fn peer_client_config(
    credentials: Arc<Credentials>,
    trust: Arc<TrustStore>,
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(PeerCertVerifier::new(trust, true));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(credentials);
    // See `without_resumption`: the server must see (and check) our certificate every time.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The rendezvous's HTTPS server: its server certificate, and an optional client certificate that
/// is verified like a peer's when presented. Routes that need an identity must then insist on it
/// (see [`verified_peer`]).
pub fn rendezvous_server_config(
    credentials: Arc<Credentials>,
    trust: Arc<TrustStore>,
) -> Result<ServerConfig, TlsError> {
    let verifier = Arc::new(PeerCertVerifier::new(trust, false));
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(credentials);
    Ok(without_resumption(config))
}

/// A client of the rendezvous: the server's certificate is checked against the CA and the host
/// name; `client` is presented when given (every route but registration and login needs it).
pub fn rendezvous_client_config(
    ca: &CaCertificate,
    client: Option<Arc<Credentials>>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(|_| TlsError::BadRoot)?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
    Ok(match client {
        Some(credentials) => builder.with_client_cert_resolver(credentials),
        None => builder.with_no_client_auth(),
    })
}

/// The verified identity behind a finished handshake's peer certificates (`None` when the peer
/// sent none). The chain is verified again at `now`, so the result never rests on a stale check.
pub fn verified_peer(
    certificates: Option<&[CertificateDer<'_>]>,
    trust: &TrustStore,
    now: SystemTime,
) -> Result<VerifiedPeer, VerifyError> {
    trust.verify(certificates.unwrap_or_default(), now)
}

/// Verifies the other side's peer certificate through the shared [`TrustStore`], in either role.
struct PeerCertVerifier {
    trust: Arc<TrustStore>,
    mandatory: bool,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerCertVerifier {
    fn new(trust: Arc<TrustStore>, mandatory: bool) -> Self {
        let hints = vec![DistinguishedName::from(trust.ca().subject_der().to_vec())];
        Self {
            trust,
            mandatory,
            hints,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        self.trust
            .verify(&chain, now)
            .map(|_| ())
            .map_err(to_rustls)
    }
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    let cert_error = match e {
        VerifyError::UnknownIssuer => CertificateError::UnknownIssuer,
        VerifyError::Expired => CertificateError::Expired,
        VerifyError::NotYetValid => CertificateError::NotValidYet,
        VerifyError::Revoked => CertificateError::Revoked,
        VerifyError::CrlExpired => CertificateError::ExpiredRevocationList,
        VerifyError::Malformed | VerifyError::EmptyChain => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

impl fmt::Debug for PeerCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertVerifier")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for PeerCertVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Every configuration here is TLS 1.3 only.
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
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ServerCertVerifier for PeerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
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
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
