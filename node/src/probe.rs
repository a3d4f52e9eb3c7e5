//! `peerchat probe`: dials a peer over the mutual-TLS transport with a certificate given as
//! files, to check from outside whom the peer lets in (for example, that a certificate from
//! another CA is refused while one from ours is accepted).
//!
//! The probe sends one envelope that decrypts for nobody; a peer that accepted the connection
//! answers it with a refusal, which still proves the handshake went through. Nothing is stored on
//! either side.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use peerchat_pki::tls::Credentials;
use peerchat_pki::{CaCertificate, TrustStore, Username};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::domain::{Ack, Envelope, IdentityKey, MessageId, RejectReason};
use crate::driven::p2p::{self, P2pConfig};
use crate::ports::{EnvelopeFn, Messages, Recipient};

/// What to probe, and as whom.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Our certificate (PEM).
    pub certificate: PathBuf,
    /// Its Ed25519 private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// The CA the peer's certificate must come from (PEM).
    pub ca: PathBuf,
    /// Who the peer must be.
    pub peer: Username,
    /// Where it listens, ending in `/p2p/<its id>`.
    pub address: Multiaddr,
}

/// Why the probe did not get through.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A file could not be read.
    #[error("{}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file is not what it should be.
    #[error("{0}")]
    Invalid(String),
    /// Our side could not start.
    #[error("the probe could not start: {0}")]
    Start(String),
    /// The peer (or the network) refused.
    #[error("{0}")]
    Refused(#[from] crate::ports::DeliveryError),
}

fn read(path: &Path) -> Result<Zeroizing<String>, ProbeError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| ProbeError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The identity key inside a `/p2p/` id (Ed25519 peer ids embed the key).
fn key_of(address: &Multiaddr) -> Result<IdentityKey, ProbeError> {
    let peer_id = address
        .iter()
        .find_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .ok_or_else(|| ProbeError::Invalid("the address has no /p2p/<peer id>".into()))?;
    let public = libp2p::identity::PublicKey::try_decode_protobuf(peer_id.as_ref().digest())
        .ok()
        .and_then(|k| k.try_into_ed25519().ok())
        .ok_or_else(|| ProbeError::Invalid("the peer id holds no Ed25519 key".into()))?;
    IdentityKey::from_bytes(&public.to_bytes())
        .map_err(|_| ProbeError::Invalid("the peer id holds an invalid key".into()))
}

/// Dials the peer as the certificate's holder and returns the peer's answer to the probe
/// envelope; an error when the connection was refused or the peer is not who it should be.
pub async fn run(probe: &Probe) -> Result<Ack, ProbeError> {
    let key = SigningKey::from_pkcs8_pem(&read(&probe.key)?)
        .map_err(|_| ProbeError::Invalid(format!("{}: not an Ed25519 key", probe.key.display())))?;
    let certificate = {
        use rustls::pki_types::pem::PemObject;
        peerchat_pki::CertificateDer::from_pem_slice(read(&probe.certificate)?.as_bytes()).map_err(
            |_| {
                ProbeError::Invalid(format!(
                    "{}: not a PEM certificate",
                    probe.certificate.display()
                ))
            },
        )?
    };
    let ca = CaCertificate::from_pem(&read(&probe.ca)?)
        .map_err(|e| ProbeError::Invalid(format!("{}: {e}", probe.ca.display())))?;
    let recipient = Recipient {
        username: probe.peer.clone(),
        identity_key: key_of(&probe.address)?,
        addresses: vec![probe.address.to_string()],
    };
    let mut config = P2pConfig::new(
        key.clone(),
        Credentials::new(vec![certificate], key),
        std::sync::Arc::new(TrustStore::new(ca)),
        Vec::new(),
    );
    // The address is the one the user gave, wherever it points.
    config.dial_any_local = true;
    // The probe only sends: whatever a peer might send it is refused.
    let refuse = EnvelopeFn(|_, _| async { Ack::Rejected(RejectReason::Internal) });
    let network = p2p::start(config, std::sync::Arc::new(refuse))
        .await
        .map_err(|e| ProbeError::Start(e.to_string()))?;
    let envelope = Envelope {
        id: MessageId::random(&mut OsRng),
        trace: None,
        payload: vec![0],
    };
    Ok(network.deliver(&recipient, envelope).await?)
}
