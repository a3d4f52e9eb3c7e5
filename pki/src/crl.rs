//! Certificate revocation lists: signed by the CA, consulted by every verifier.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::ca::{CaCertificate, CertificateAuthority, from_unix, pem_encode, to_offset};
use crate::types::{Fingerprint, Serial};

/// A revoked certificate, as the CA records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial of the revoked certificate.
    pub serial: Serial,
    /// When the CA revoked it.
    pub revoked_at: SystemTime,
}

/// Why a CRL was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// Not a DER (or PEM) CRL.
    #[error("the CRL is malformed")]
    Malformed,
    /// Issued by another CA than the trusted one.
    #[error("the CRL was issued by another CA")]
    WrongIssuer,
    /// The CA's signature does not verify.
    #[error("the CRL's signature does not verify against the CA")]
    BadSignature,
    /// A CRL without `nextUpdate` or a CRL number: this CA always writes both.
    #[error("the CRL lacks a next-update time or a CRL number")]
    MissingField,
    /// Installing it would replace a newer CRL by an older one (a rollback).
    #[error("the CRL (number {offered}) is older than the one in use (number {current})")]
    Older {
        /// Number of the CRL in use.
        current: u64,
        /// Number of the CRL offered.
        offered: u64,
    },
    /// rcgen refused to sign it.
    #[error("signing the CRL failed: {0}")]
    Sign(#[source] rcgen::Error),
}

/// A CRL whose signature has been checked against the CA.
#[derive(Clone)]
pub struct Crl {
    der: Vec<u8>,
    number: u64,
    this_update: SystemTime,
    next_update: SystemTime,
    revoked: BTreeMap<Serial, SystemTime>,
    issuer: Fingerprint,
}

impl Crl {
    /// Parses a DER CRL and checks that `ca` issued and signed it.
    pub fn from_der(der: &[u8], ca: &CaCertificate) -> Result<Self, CrlError> {
        let (rest, crl) =
            CertificateRevocationList::from_der(der).map_err(|_| CrlError::Malformed)?;
        if !rest.is_empty() {
            return Err(CrlError::Malformed);
        }
        if crl.issuer().as_raw() != ca.subject_der() {
            return Err(CrlError::WrongIssuer);
        }
        let (_, ca_cert) = X509Certificate::from_der(ca.der()).map_err(|_| CrlError::Malformed)?;
        crl.verify_signature(ca_cert.public_key())
            .map_err(|_| CrlError::BadSignature)?;
        let next_update = crl.next_update().ok_or(CrlError::MissingField)?;
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or(CrlError::MissingField)?;
        let revoked = crl
            .iter_revoked_certificates()
            .map(|r| {
                (
                    Serial::from_be_bytes(r.raw_serial()),
                    from_unix(r.revocation_date.timestamp()),
                )
            })
            .collect();
        Ok(Self {
            der: der.to_vec(),
            number,
            this_update: from_unix(crl.last_update().timestamp()),
            next_update: from_unix(next_update.timestamp()),
            revoked,
            issuer: ca.fingerprint(),
        })
    }

    /// Parses a PEM `X509 CRL` block, then as [`Crl::from_der`].
    pub fn from_pem(pem: &str, ca: &CaCertificate) -> Result<Self, CrlError> {
        let block = pem::parse(pem).map_err(|_| CrlError::Malformed)?;
        if block.tag() != "X509 CRL" {
            return Err(CrlError::Malformed);
        }
        Self::from_der(block.contents(), ca)
    }

    /// DER encoding, as served by the rendezvous.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM encoding (`openssl crl` reads it).
    pub fn to_pem(&self) -> String {
        pem_encode("X509 CRL", &self.der)
    }

    /// The CRL number; newer CRLs have larger numbers.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// When it was issued.
    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    /// When the next one is due; past it, verification fails with
    /// [`crate::VerifyError::CrlExpired`] until a fresh CRL is installed.
    pub fn next_update(&self) -> SystemTime {
        self.next_update
    }

    /// Fingerprint of the CA whose signature on this CRL was checked.
    pub fn issuer(&self) -> Fingerprint {
        self.issuer
    }

    /// Whether `serial` is listed.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.revoked.contains_key(serial)
    }

    /// The revoked serials with their revocation times.
    pub fn revoked(&self) -> impl Iterator<Item = RevokedEntry> + '_ {
        self.revoked.iter().map(|(serial, at)| RevokedEntry {
            serial: serial.clone(),
            revoked_at: *at,
        })
    }
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field("number", &self.number)
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

// CRLs are signed here, beside their parsing, so that the CA module does not depend on this
// one: `ca` knows certificates, `crl` knows revocation lists and the CA that signs them.
impl CertificateAuthority {
    /// Signs a CRL listing `revoked`, valid from `this_update` until `next_update`. `number` must
    /// grow with every CRL the CA publishes; verifiers refuse to go back to a smaller one.
    pub fn sign_crl(
        &self,
        revoked: &[RevokedEntry],
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Crl, CrlError> {
        let params = CertificateRevocationListParams {
            this_update: to_offset(this_update),
            next_update: to_offset(next_update),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(r.serial.as_bytes()),
                    revocation_time: to_offset(r.revoked_at),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(CrlError::Sign)?;
        Crl::from_der(crl.der(), &self.cert)
    }
}
