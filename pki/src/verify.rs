//! Verification of peer certificates against the CA, a CRL and an explicit time.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{CaCertificate, from_unix};
use crate::crl::{Crl, CrlError};
use crate::csr::ED25519_OID;
use crate::types::Serial;
use crate::username::{URI_PREFIX, Username};

/// The only signature algorithm peerchat certificates use.
static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[webpki::ring::ED25519];

/// A peer whose certificate chain verified: who it is and which key speaks for it.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The username the CA bound to the key.
    pub username: Username,
    /// The Ed25519 identity key (also the libp2p `PeerId` and the X3DH identity key).
    pub identity_key: VerifyingKey,
    /// The certificate's serial, for revocation.
    pub serial: Serial,
    /// End of the certificate's validity.
    pub not_after: SystemTime,
}

impl fmt::Debug for VerifiedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedPeer")
            .field("username", &self.username)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Why a certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No certificate was presented.
    #[error("no certificate was presented")]
    EmptyChain,
    /// The certificate is not valid DER X.509.
    #[error("the certificate is malformed")]
    Malformed,
    /// Not issued by the trusted CA (or its signature does not verify).
    #[error("the certificate was not issued by the trusted CA")]
    UnknownIssuer,
    /// Past its `notAfter`.
    #[error("the certificate has expired")]
    Expired,
    /// Before its `notBefore`.
    #[error("the certificate is not valid yet")]
    NotYetValid,
    /// Listed in the CRL.
    #[error("the certificate has been revoked")]
    Revoked,
    /// The CRL in use is past its `nextUpdate`; a fresh one must be fetched.
    #[error("the revocation list has expired")]
    CrlExpired,
    /// A CA certificate, a server-only certificate or one without both TLS usages.
    #[error("not a peer certificate (it must be a leaf with serverAuth and clientAuth)")]
    NotAPeerCertificate,
    /// No single, valid `peerchat://user/<username>` URI.
    #[error("the certificate does not name exactly one valid peerchat user")]
    BadUsername,
    /// The key is not Ed25519.
    #[error("the certificate key is not an Ed25519 key")]
    UnsupportedKey,
    /// Any other reason the path validator gave.
    #[error("the certificate is invalid: {0}")]
    Invalid(String),
}

/// Verifies a peer's certificate `chain` (leaf first) at time `now` against `ca` and, when given,
/// `crl` (a [`Crl`] is only ever built after its signature checked out against a CA; it must be
/// this `ca`'s, and one past its `nextUpdate` fails closed).
pub fn verify(
    chain: &[CertificateDer<'_>],
    ca: &CaCertificate,
    crl: Option<&Crl>,
    now: SystemTime,
) -> Result<VerifiedPeer, VerifyError> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(VerifyError::EmptyChain)?;
    let leaf = EndEntityCert::try_from(leaf_der).map_err(|_| VerifyError::Malformed)?;
    let anchor =
        webpki::anchor_from_trusted_cert(ca.der()).map_err(|_| VerifyError::UnknownIssuer)?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    leaf.verify_for_usage(
        ALGORITHMS,
        &[anchor],
        intermediates,
        time,
        KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(map_webpki)?;
    let peer = peer_identity(leaf_der)?;
    // The CRL's signature was checked against this same CA when the `Crl` was built, so a lookup
    // is all that is left (webpki would verify the CRL signature again on every handshake).
    if let Some(crl) = crl {
        if crl.issuer() != ca.fingerprint() {
            return Err(VerifyError::Invalid("the CRL belongs to another CA".into()));
        }
        if now > crl.next_update() {
            return Err(VerifyError::CrlExpired);
        }
        if crl.is_revoked(&peer.serial) {
            return Err(VerifyError::Revoked);
        }
    }
    Ok(peer)
}

/// The Ed25519 key a certificate carries, without verifying anything else (to check that a
/// certificate belongs to a key pair one holds).
pub fn certificate_key(der: &[u8]) -> Result<VerifyingKey, VerifyError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| VerifyError::Malformed)?;
    ed25519_key(&cert)
}

/// The certificate's subject key, which must be Ed25519.
fn ed25519_key(cert: &X509Certificate<'_>) -> Result<VerifyingKey, VerifyError> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(VerifyError::UnsupportedKey);
    }
    let key: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| VerifyError::UnsupportedKey)?;
    VerifyingKey::from_bytes(&key).map_err(|_| VerifyError::UnsupportedKey)
}

/// Reads the peer fields of a certificate whose chain has already been verified.
fn peer_identity(der: &[u8]) -> Result<VerifiedPeer, VerifyError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| VerifyError::Malformed)?;
    if cert.is_ca() {
        return Err(VerifyError::NotAPeerCertificate);
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => {}
        _ => return Err(VerifyError::NotAPeerCertificate),
    }
    let san = match cert.subject_alternative_name() {
        Ok(Some(san)) => san,
        _ => return Err(VerifyError::BadUsername),
    };
    let mut users = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
            _ => None,
        });
    let username = match (users.next(), users.next()) {
        (Some(uri), None) => Username::from_uri(uri).map_err(|_| VerifyError::BadUsername)?,
        _ => return Err(VerifyError::BadUsername),
    };
    let identity_key = ed25519_key(&cert)?;
    Ok(VerifiedPeer {
        username,
        identity_key,
        serial: Serial::from_be_bytes(cert.raw_serial()),
        not_after: from_unix(cert.validity().not_after.timestamp()),
    })
}

fn map_webpki(e: webpki::Error) -> VerifyError {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer
        | E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => VerifyError::UnknownIssuer,
        E::CertExpired { .. } => VerifyError::Expired,
        E::CertNotValidYet { .. } => VerifyError::NotYetValid,
        E::CertRevoked => VerifyError::Revoked,
        E::CrlExpired { .. } => VerifyError::CrlExpired,
        E::CaUsedAsEndEntity | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            VerifyError::NotAPeerCertificate
        }
        E::BadDer | E::BadDerTime | E::TrailingData(_) => VerifyError::Malformed,
        other => VerifyError::Invalid(other.to_string()),
    }
}

/// The trusted CA and the current CRL, shared by every TLS configuration built from it.
///
/// The CRL can be replaced while connections are open (the node refreshes it from the
/// rendezvous); the next handshake uses the new one. Cheap to share: wrap it in an [`Arc`].
pub struct TrustStore {
    ca: CaCertificate,
    crl: RwLock<Option<Arc<Crl>>>,
}

impl TrustStore {
    /// Trusts `ca`, with no CRL yet.
    pub fn new(ca: CaCertificate) -> Self {
        Self {
            ca,
            crl: RwLock::new(None),
        }
    }

    /// The trusted CA.
    pub fn ca(&self) -> &CaCertificate {
        &self.ca
    }

    /// The CRL in use, if any.
    pub fn crl(&self) -> Option<Arc<Crl>> {
        self.crl.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `crl` for all later verifications. A CRL with a smaller number than the one in
    /// use is refused, so an attacker replaying an old CRL cannot un-revoke a certificate.
    pub fn set_crl(&self, crl: Crl) -> Result<(), CrlError> {
        let mut slot = self.crl.write().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = slot.as_ref()
            && crl.number() < current.number()
        {
            return Err(CrlError::Older {
                current: current.number(),
                offered: crl.number(),
            });
        }
        *slot = Some(Arc::new(crl));
        Ok(())
    }

    /// [`verify`] against this store's CA and current CRL.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<VerifiedPeer, VerifyError> {
        let crl = self.crl();
        verify(chain, &self.ca, crl.as_deref(), now)
    }
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("ca", &self.ca)
            .field("crl", &self.crl())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_chain_is_refused() {
        let mut rng = rand::thread_rng();
        let ca = crate::CertificateAuthority::generate("t", SystemTime::now(), &mut rng).unwrap();
        assert_eq!(
            verify(&[], ca.certificate(), None, SystemTime::now()),
            Err(VerifyError::EmptyChain)
        );
        assert_eq!(
            verify(
                &[CertificateDer::from(vec![1, 2, 3])],
                ca.certificate(),
                None,
                SystemTime::now()
            ),
            Err(VerifyError::Malformed)
        );
    }
}
