//! The [`TransportTrust`] adapter: the trust store the TLS handshakes check, the credentials
//! they present, the CRL file kept in the data directory, and the network whose connections of
//! revoked peers are closed.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ed25519_dalek::SigningKey;
use peerchat_pki::tls::Credentials;
use peerchat_pki::{CaCertificate, Crl, TrustStore};

use super::crl_file;
use super::p2p::P2pNetwork;
use crate::ports::TransportTrust;

/// The daemon's transport trust.
pub struct DaemonTrust {
    ca: CaCertificate,
    trust: Arc<TrustStore>,
    credentials: Arc<Credentials>,
    key: SigningKey,
    data_dir: PathBuf,
    network: OnceLock<P2pNetwork>,
}

impl std::fmt::Debug for DaemonTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonTrust")
            .field("crl", &self.crl_number())
            .finish_non_exhaustive()
    }
}

impl DaemonTrust {
    /// Trust in `ca`, starting from the CRL saved in `data_dir` (if it verifies), presenting
    /// `credentials` made with `key`.
    pub fn new(
        ca: CaCertificate,
        credentials: Arc<Credentials>,
        key: SigningKey,
        data_dir: PathBuf,
    ) -> Self {
        let trust = Arc::new(TrustStore::new(ca.clone()));
        // The last CRL we verified, so revocation holds even if the rendezvous is down now.
        if let Some(saved) = crl_file::load(&data_dir, &ca) {
            let _ = trust.set_crl(saved);
        }
        Self {
            ca,
            trust,
            credentials,
            key,
            data_dir,
            network: OnceLock::new(),
        }
    }

    /// The trust store the handshakes check.
    pub fn store(&self) -> Arc<TrustStore> {
        self.trust.clone()
    }

    /// The network whose revoked peers' connections are closed on a new CRL (once).
    pub fn attach(&self, network: P2pNetwork) {
        let _ = self.network.set(network);
    }
}

impl TransportTrust for DaemonTrust {
    fn crl_number(&self) -> Option<u64> {
        self.trust.crl().map(|crl| crl.number())
    }

    async fn install_crl(&self, der: Vec<u8>) -> bool {
        let crl = match Crl::from_der(&der, &self.ca) {
            Ok(crl) => crl,
            Err(e) => {
                tracing::warn!(error = %e, "the rendezvous served a CRL that does not verify");
                return false;
            }
        };
        if self.trust.set_crl(crl.clone()).is_err() {
            return false;
        }
        if let Err(e) = crl_file::save(&self.data_dir, &crl) {
            tracing::warn!(error = %e, "saving the CRL failed");
        }
        if let Some(network) = self.network.get() {
            network.drop_revoked().await;
        }
        true
    }

    fn present_certificate(&self, certificate_pem: &str) {
        use rustls::pki_types::pem::PemObject;
        match peerchat_pki::CertificateDer::from_pem_slice(certificate_pem.as_bytes()) {
            Ok(der) => self.credentials.replace(vec![der], self.key.clone()),
            Err(e) => tracing::warn!(error = %e, "the renewed certificate is not PEM"),
        }
    }
}
