//! peerchat's public-key infrastructure, shared by the rendezvous (which runs the CA) and the
//! nodes (which present and verify certificates).
//!
//! - [`CertificateAuthority`] creates, stores and loads the Ed25519 CA, issues peer certificates
//!   from CSRs ([`build_csr`]) and HTTPS server certificates, and signs CRLs.
//! - [`verify`] checks a peer's certificate chain against the CA and a CRL at an explicit time and
//!   returns the [`VerifiedPeer`] it names.
//! - [`tls`] builds the rustls configurations (TLS 1.3 only) for peer-to-peer mutual TLS and for
//!   the rendezvous's HTTPS, with a CRL that can be swapped at run time ([`TrustStore`]).
//!
//! Time is always a parameter: nothing in here reads the clock, so tests can move it freely.
//! Randomness (serial numbers, keys) comes from an injected RNG.

mod ca;
mod crl;
mod csr;
mod keyfile;
mod signer;
pub mod tls;
mod types;
mod username;
mod verify;

pub use ca::{
    CaCertificate, CaError, CertificateAuthority, HostName, IssueError, IssuedCertificate,
    write_atomically,
};
pub use crl::{Crl, CrlError, RevokedEntry};
pub use csr::{CsrError, build_csr};
pub use keyfile::{BadKeyFile, private_key_from_pem, private_key_to_pem};
pub use types::{Fingerprint, Serial};
pub use username::{InvalidUsername, URI_PREFIX, Username};
pub use verify::{TrustStore, VerifiedPeer, VerifyError, certificate_key, verify};

/// Re-exported so callers name the same key and certificate types as this crate.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use rustls_pki_types::CertificateDer;

/// Default lifetime of a peer certificate.
pub const DEFAULT_PEER_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);
/// Default lifetime of the CA certificate.
pub const DEFAULT_CA_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before the issuing `now`, so that a verifier whose clock runs a
/// little behind the CA's does not see a fresh certificate as "not yet valid".
pub const BACKDATE: std::time::Duration = std::time::Duration::from_secs(5 * 60);
