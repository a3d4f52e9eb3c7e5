//! The certificate authority: its certificate (what everybody trusts) and its key (what only the
//! rendezvous holds).

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::csr::{CsrError, ED25519_OID, check_csr};
use crate::signer::{RcgenPublicKey, RcgenSigner};
use crate::types::{Fingerprint, Serial};
use crate::username::Username;
use crate::{BACKDATE, DEFAULT_CA_VALIDITY};

/// File name of the CA certificate inside a data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a data directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// The CA's certificate: the trust root every node pins. Holds no secret.
#[derive(Clone)]
pub struct CaCertificate {
    der: CertificateDer<'static>,
    subject: Vec<u8>,
    key: VerifyingKey,
    fingerprint: Fingerprint,
}

impl CaCertificate {
    /// Parses and checks a CA certificate: an Ed25519, self-signed certificate with
    /// `CA:true`. Anything else is refused, so a leaf cannot be pinned as a root by mistake.
    pub fn from_der(der: &[u8]) -> Result<Self, CaError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|_| CaError::NotACa("not a DER certificate"))?;
        if !rest.is_empty() {
            return Err(CaError::NotACa("trailing bytes after the certificate"));
        }
        if !cert.is_ca() {
            return Err(CaError::NotACa(
                "the certificate is not a CA (basicConstraints)",
            ));
        }
        if cert.public_key().algorithm.algorithm.to_id_string() != ED25519_OID {
            return Err(CaError::NotACa("the CA key is not Ed25519"));
        }
        let key_bytes: [u8; 32] = cert
            .public_key()
            .subject_public_key
            .data
            .as_ref()
            .try_into()
            .map_err(|_| CaError::NotACa("the CA key is not Ed25519"))?;
        let key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| CaError::NotACa("the CA key is not Ed25519"))?;
        cert.verify_signature(None)
            .map_err(|_| CaError::NotACa("the certificate is not self-signed"))?;
        Ok(Self {
            subject: cert.subject().as_raw().to_vec(),
            der: CertificateDer::from(der.to_vec()),
            key,
            fingerprint: Fingerprint::of_der(der),
        })
    }

    /// Parses a PEM `CERTIFICATE` block, then as [`CaCertificate::from_der`].
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| CaError::NotACa("no PEM certificate found"))?;
        Self::from_der(&der)
    }

    /// DER encoding.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// PEM encoding.
    pub fn to_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    /// The DER of the subject name, which CRLs and leaves name as their issuer.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject
    }

    /// The CA's public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// SHA-256 fingerprint that people compare out of band.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

impl PartialEq for CaCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}
impl Eq for CaCertificate {}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCertificate")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A host name for a server certificate: an IP address becomes an IP SAN, anything else a DNS SAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    /// A DNS name such as `rendezvous` or `chat.example.org`.
    Dns(String),
    /// An IP address such as `127.0.0.1`.
    Ip(IpAddr),
}

impl HostName {
    /// Reads `s` as an IP address if it is one, else as a DNS name (checked when issuing).
    pub fn parse(s: &str) -> Self {
        match s.parse::<IpAddr>() {
            Ok(ip) => Self::Ip(ip),
            Err(_) => Self::Dns(s.to_owned()),
        }
    }
}

/// Problems creating, saving or loading the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing the CA files failed.
    #[error("CA file {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate cannot serve as the peerchat CA.
    #[error("not a usable CA certificate: {0}")]
    NotACa(&'static str),
    /// The key file is not a PKCS#8 Ed25519 private key.
    #[error("the CA key file is not a PKCS#8 Ed25519 private key")]
    BadKey,
    /// The key file can be read by other users; fix its mode (`chmod 600`).
    #[error("the CA key file {0} is readable by other users; run `chmod 600` on it")]
    KeyPermissions(String),
    /// The key does not belong to the certificate.
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    /// rcgen refused to build or sign something.
    #[error("certificate encoding failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Why the CA refused to issue a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR is malformed, unsigned by its key, or not Ed25519.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The CSR names no user; it must name the account it is for.
    #[error("the certificate signing request names no user")]
    MissingUsername,
    /// The CSR names another user than the account it is submitted for.
    #[error("the certificate signing request names {requested:?}, not {expected}")]
    WrongUsername {
        /// The name found in the request.
        requested: String,
        /// The account the request was submitted for.
        expected: Username,
    },
    /// A server certificate needs at least one host name.
    #[error("a server certificate needs at least one host name")]
    NoHostNames,
    /// A DNS host name is not valid.
    #[error("invalid host name {0:?}")]
    BadHostName(String),
    /// The validity period is out of range.
    #[error("invalid validity period")]
    BadValidity,
    /// rcgen refused to build or sign the certificate.
    #[error("certificate encoding failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A certificate the CA has just issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The DER certificate.
    pub der: CertificateDer<'static>,
    /// Its serial number, which revocation refers to.
    pub serial: Serial,
    /// The subject's key.
    pub public_key: VerifyingKey,
    /// Start of validity (the issuing time less [`BACKDATE`]).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl IssuedCertificate {
    /// PEM encoding of the certificate.
    pub fn to_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }
}

/// The CA: its certificate and signing key. Only the rendezvous holds one.
pub struct CertificateAuthority {
    pub(crate) cert: CaCertificate,
    pub(crate) issuer: Issuer<'static, RcgenSigner<SigningKey>>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.cert.fingerprint)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new CA named `name` with a fresh Ed25519 key, valid from `now` for
    /// [`DEFAULT_CA_VALIDITY`]. It may sign leaves and CRLs but no intermediate CA (path length 0).
    pub fn generate<R: RngCore + CryptoRng>(
        name: &str,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<Self, CaError> {
        let key = SigningKey::generate(rng);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "peerchat");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now));
        params.not_after = to_offset(now + DEFAULT_CA_VALIDITY);
        params.serial_number = Some(SerialNumber::from_slice(Serial::random(rng).as_bytes()));
        params.key_identifier_method = KeyIdMethod::Sha256;
        let signer = RcgenSigner::new(key);
        let cert = params.self_signed(&signer)?;
        let ca = CaCertificate::from_der(cert.der())?;
        let issuer = Issuer::new(params, signer);
        Ok(Self { cert: ca, issuer })
    }

    /// Rebuilds the CA from its certificate and key, checking that they belong together.
    pub fn from_parts(cert: CaCertificate, key: SigningKey) -> Result<Self, CaError> {
        if key.verifying_key() != *cert.public_key() {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(cert.der(), RcgenSigner::new(key))?;
        Ok(Self { cert, issuer })
    }

    /// Loads `dir/ca.pem` and `dir/ca.key`. A key file readable by group or others is refused.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(|e| io_err(&cert_path, e))?;
        let meta = fs::metadata(&key_path).map_err(|e| io_err(&key_path, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CaError::KeyPermissions(key_path.display().to_string()));
        }
        let key_pem = zeroize::Zeroizing::new(
            fs::read_to_string(&key_path).map_err(|e| io_err(&key_path, e))?,
        );
        let key = crate::keyfile::private_key_from_pem(&key_pem).map_err(|_| CaError::BadKey)?;
        Self::from_parts(CaCertificate::from_pem(&cert_pem)?, key)
    }

    /// Loads the CA from `dir` if it is there, else creates one and saves it. Returns whether it
    /// was created.
    pub fn load_or_generate<R: RngCore + CryptoRng>(
        dir: &Path,
        name: &str,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<(Self, bool), CaError> {
        if dir.join(CA_CERT_FILE).exists() || dir.join(CA_KEY_FILE).exists() {
            return Ok((Self::load(dir)?, false));
        }
        let ca = Self::generate(name, now, rng)?;
        ca.save(dir)?;
        Ok((ca, true))
    }

    /// Writes `dir/ca.pem` (0644) and `dir/ca.key` (0600, PKCS#8 PEM). Each file is written to a
    /// temporary name, synced and renamed, so a crash never leaves half a key behind.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let key_pem = crate::keyfile::private_key_to_pem(self.issuer.key().key())
            .map_err(|_| CaError::BadKey)?;
        write_atomically(&dir.join(CA_KEY_FILE), key_pem.as_bytes(), 0o600)?;
        write_atomically(
            &dir.join(CA_CERT_FILE),
            self.cert.to_pem().as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CaCertificate {
        &self.cert
    }

    /// Issues a peer certificate for `username` from a CSR.
    ///
    /// The CSR must be signed by the key it carries (proof of possession), carry an Ed25519 key and
    /// name `username` (its CN, and any peerchat SAN URI). Every field of the certificate is the
    /// CA's choice: subject `CN=<username>`, SAN URI `peerchat://user/<username>` and nothing else,
    /// EKU serverAuth + clientAuth, `CA:false`, validity `[now - BACKDATE, now + validity]`, a
    /// random 128-bit serial. Whatever else the CSR asks for (CA rights, other names) is ignored.
    pub fn issue_peer<R: RngCore + CryptoRng>(
        &self,
        csr_der: &[u8],
        username: &Username,
        now: SystemTime,
        validity: Duration,
        rng: &mut R,
    ) -> Result<IssuedCertificate, IssueError> {
        let csr = check_csr(csr_der)?;
        if csr.requested_names.is_empty() {
            return Err(IssueError::MissingUsername);
        }
        if let Some(other) = csr
            .requested_names
            .iter()
            .find(|n| n.as_str() != username.as_str())
        {
            return Err(IssueError::WrongUsername {
                requested: other.clone(),
                expected: username.clone(),
            });
        }
        let mut params = leaf_params(now, validity, rng)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "peerchat");
        dn.push(DnType::CommonName, username.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(username.to_uri().try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_leaf(&params, csr.key)
    }

    /// Issues an HTTPS server certificate for `public_key` naming `hosts` (EKU serverAuth only),
    /// for the rendezvous's own API.
    pub fn issue_server<R: RngCore + CryptoRng>(
        &self,
        public_key: &VerifyingKey,
        hosts: &[HostName],
        now: SystemTime,
        validity: Duration,
        rng: &mut R,
    ) -> Result<IssuedCertificate, IssueError> {
        let first = hosts.first().ok_or(IssueError::NoHostNames)?;
        let mut params = leaf_params(now, validity, rng)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "peerchat");
        dn.push(
            DnType::CommonName,
            match first {
                HostName::Dns(name) => name.clone(),
                HostName::Ip(ip) => ip.to_string(),
            },
        );
        params.distinguished_name = dn;
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h {
                HostName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
                HostName::Dns(name) => {
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b))
                    {
                        return Err(IssueError::BadHostName(name.clone()));
                    }
                    Ok(SanType::DnsName(name.clone().try_into()?))
                }
            })
            .collect::<Result<_, IssueError>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign_leaf(&params, *public_key)
    }

    fn sign_leaf(
        &self,
        params: &CertificateParams,
        key: VerifyingKey,
    ) -> Result<IssuedCertificate, IssueError> {
        let cert = params.signed_by(&RcgenPublicKey(key.to_bytes()), &self.issuer)?;
        let serial = Serial::from_be_bytes(
            params
                .serial_number
                .as_ref()
                .map(|s| s.as_ref())
                .unwrap_or_default(),
        );
        Ok(IssuedCertificate {
            der: cert.der().clone(),
            serial,
            public_key: key,
            not_before: from_offset(params.not_before),
            not_after: from_offset(params.not_after),
        })
    }
}

fn leaf_params<R: RngCore + CryptoRng>(
    now: SystemTime,
    validity: Duration,
    rng: &mut R,
) -> Result<CertificateParams, IssueError> {
    if validity.is_zero() {
        return Err(IssueError::BadValidity);
    }
    let not_after = now.checked_add(validity).ok_or(IssueError::BadValidity)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now));
    params.not_after = to_offset(not_after);
    params.serial_number = Some(SerialNumber::from_slice(Serial::random(rng).as_bytes()));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// X.509 times have one-second resolution; truncate so the reported times match the certificate.
pub(crate) fn to_offset(t: SystemTime) -> OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn from_offset(t: OffsetDateTime) -> SystemTime {
    from_unix(t.unix_timestamp())
}

pub(crate) fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn io_err(path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` with `mode`: to a temporary file, synced, then renamed, so a crash never
/// leaves half a file behind.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    // `mode` only applies when the file is created; make sure a leftover temp file is tightened.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = fs::File::open(parent)
    {
        // Make the rename itself durable.
        let _ = dir.sync_all();
    }
    Ok(())
}
