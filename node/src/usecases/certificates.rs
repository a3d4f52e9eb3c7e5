//! Our certificate: renewed at two thirds of its life, revoked at logout.

use std::time::{Duration, SystemTime};

use peerchat_pki::{CaCertificate, build_csr};

use super::{Node, NodeError};
use crate::ports::{Clock, Directory, Network, Notifier, Store};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Renews our certificate (same key) once two thirds of its lifetime `lifetime` have passed,
    /// or when `force`. Returns whether it was renewed.
    #[tracing::instrument(name = "usecase.renew_certificate", skip_all)]
    pub async fn renew_certificate(
        &self,
        lifetime: Duration,
        force: bool,
    ) -> Result<bool, NodeError> {
        let me = self.me()?;
        let identity = self.store.identity()?.ok_or(NodeError::NotRegistered)?;
        let ca =
            CaCertificate::from_pem(&identity.ca_pem).map_err(|_| NodeError::BadCertificate)?;
        let chain = vec![pem_certificate(&identity.certificate_pem)?];
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(self.clock.now_ms());
        let current =
            peerchat_pki::verify(&chain, &ca, None, now).map_err(|_| NodeError::BadCertificate)?;
        let left = current.not_after.duration_since(now).unwrap_or_default();
        if !force && left > lifetime / 3 {
            return Ok(false);
        }
        let csr = build_csr(me.1.signing_key(), &me.0).map_err(|_| NodeError::BadCertificate)?;
        let issued = self.directory.renew(&csr).await?;
        let renewed =
            peerchat_pki::verify(&[pem_certificate(&issued.certificate_pem)?], &ca, None, now)
                .map_err(|_| NodeError::BadCertificate)?;
        if renewed.identity_key != me.1.signing_key().verifying_key() || renewed.username != me.0 {
            return Err(NodeError::BadCertificate);
        }
        self.store.save_certificate(&issued.certificate_pem)?;
        self.store.flush().await?;
        self.directory
            .authenticate(&issued.certificate_pem, me.1.signing_key())?;
        tracing::info!(serial = %renewed.serial, "certificate renewed");
        Ok(true)
    }

    /// Revokes our certificate at the rendezvous: peers refuse it once their CRL is refreshed.
    #[tracing::instrument(name = "usecase.logout", skip_all)]
    pub async fn logout(&self) -> Result<(), NodeError> {
        self.me()?;
        self.directory.logout().await?;
        Ok(())
    }
}

fn pem_certificate(pem: &str) -> Result<peerchat_pki::CertificateDer<'static>, NodeError> {
    use rustls::pki_types::pem::PemObject;
    peerchat_pki::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| NodeError::BadCertificate)
}
