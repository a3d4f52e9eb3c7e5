//! Certificate signing requests: built by a node from its identity key, checked by the CA.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::signer::RcgenSigner;
use crate::username::Username;

/// Object identifier of Ed25519 keys (RFC 8410).
pub(crate) const ED25519_OID: &str = "1.3.101.112";

/// Why a CSR could not be built or was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The bytes are not a DER PKCS#10 request (or carry trailing data).
    #[error("the certificate signing request is malformed")]
    Malformed,
    /// The request is not signed by the key it carries: no proof of possession.
    #[error("the certificate signing request's signature does not verify against its own key")]
    BadSignature,
    /// The request's key is not an Ed25519 key, the only kind of identity key.
    #[error("the certificate signing request must carry an Ed25519 key")]
    UnsupportedKey,
    /// rcgen refused to encode the request.
    #[error("could not encode the certificate signing request")]
    Encode(#[source] rcgen::Error),
}

/// Builds the DER CSR a node sends to the rendezvous: subject `CN=<username>`, the SAN URI
/// `peerchat://user/<username>`, signed by `identity` (proof of possession).
///
/// The CA ignores everything in it but the key and the name it checks against the account.
pub fn build_csr(identity: &SigningKey, username: &Username) -> Result<Vec<u8>, CsrError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, username.as_str());
    params.distinguished_name = dn;
    let uri = username.to_uri().try_into().map_err(CsrError::Encode)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&RcgenSigner::new(identity))
        .map_err(CsrError::Encode)?;
    Ok(csr.der().to_vec())
}

/// What the CA learns from a CSR whose signature verified.
#[derive(Debug)]
pub(crate) struct CheckedCsr {
    pub(crate) key: VerifyingKey,
    /// Every username the request names: its subject CN and any `peerchat://user/` SAN URI, as
    /// written (not validated, so a bad one can be reported).
    pub(crate) requested_names: Vec<String>,
}

/// Parses a CSR, checks its self-signature and extracts its key and the names it asks for.
pub(crate) fn check_csr(der: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let spki = &csr.certification_request_info.subject_pki;
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(CsrError::UnsupportedKey);
    }
    let key_bytes: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CsrError::UnsupportedKey)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| CsrError::UnsupportedKey)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut requested_names = Vec::new();
    for cn in csr.certification_request_info.subject.iter_common_name() {
        requested_names.push(cn.as_str().map_err(|_| CsrError::Malformed)?.to_owned());
    }
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name
                        && let Some(user) = uri.strip_prefix(crate::username::URI_PREFIX)
                    {
                        requested_names.push(user.to_owned());
                    }
                }
            }
        }
    }
    Ok(CheckedCsr {
        key,
        requested_names,
    })
}
