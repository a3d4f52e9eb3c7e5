//! Certificates: issuance, renewal, revocation, and the CRL (re-signed as it ages, and at
//! once after a revocation, which wakes every mailbox long poll).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use peerchat_pki::{Crl, IssueError, IssuedCertificate, Serial, Username};
use rand::rngs::OsRng;

use super::{Caller, Rendezvous, ServiceError, internal, unix};
use crate::store::{Change, Store};

/// A certificate just issued, with the CA that issued it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Its serial.
    pub serial: Serial,
    /// When it expires.
    pub not_after: SystemTime,
}

impl<S: Store> Rendezvous<S> {
    /// The current CRL, re-signed when a day of its validity has passed.
    #[tracing::instrument(name = "service.crl", skip_all)]
    pub async fn crl(&self) -> Result<Arc<Crl>, ServiceError> {
        let now = self.now();
        let current = self.crl.read().unwrap_or_else(|p| p.into_inner()).clone();
        if current.next_update() < now + self.limits.crl_validity - Duration::from_secs(24 * 3600) {
            return self.refresh_crl(now).await;
        }
        Ok(current)
    }

    /// The number of the CRL in force.
    pub(super) fn current_crl_number(&self) -> u64 {
        self.crl.read().unwrap_or_else(|p| p.into_inner()).number()
    }

    /// Signs a CRL of every revocation stored, with the next number from the store, saves it
    /// there (where instances sharing the store find it) and puts it in force.
    pub(super) async fn refresh_crl(&self, now: SystemTime) -> Result<Arc<Crl>, ServiceError> {
        let revoked = self.store.revoked().await?;
        let number = self.store.next_crl_number().await?;
        let crl = self
            .ca
            .sign_crl(&revoked, number, now, now + self.limits.crl_validity)
            .map_err(|e| internal("signing the CRL", e))?;
        self.store.save_crl(number, crl.der()).await?;
        self.store.flush().await?;
        let current = self.install_crl(crl)?;
        self.store.publish(Change::Crl(number)).await?;
        Ok(current)
    }

    /// Puts the newest CRL in the store in force, if it is newer than ours (another instance
    /// signed it). A CRL that does not verify against our CA is refused.
    pub async fn load_crl(&self) -> Result<Arc<Crl>, ServiceError> {
        if let Some((number, der)) = self.store.latest_crl().await?
            && number > self.current_crl_number()
        {
            let crl = Crl::from_der(&der, self.ca.certificate())
                .map_err(|e| internal("the stored CRL", e))?;
            return self.install_crl(crl);
        }
        Ok(self.crl.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Puts `crl` in force unless a newer one is (concurrent refreshes may finish out of
    /// order), waking every long poll; returns the one in force.
    fn install_crl(&self, crl: Crl) -> Result<Arc<Crl>, ServiceError> {
        let mut slot = self.crl.write().unwrap_or_else(|p| p.into_inner());
        if crl.number() > slot.number() {
            self.trust
                .set_crl(crl.clone())
                .map_err(|e| internal("installing the CRL", e))?;
            *slot = Arc::new(crl);
            self.new_crl.notify_waiters();
        }
        Ok(slot.clone())
    }

    /// A new certificate for the caller's current key.
    #[tracing::instrument(name = "service.renew", skip_all)]
    pub async fn renew(&self, caller: &Caller, csr: &[u8]) -> Result<Issued, ServiceError> {
        let issued = self.issue(csr, &caller.username, self.now())?;
        if issued.public_key != caller.identity_key {
            return Err(ServiceError::KeyMismatch);
        }
        let mut account = self.account_of(caller).await?;
        account.certificate = issued.der.to_vec();
        account.serial = issued.serial.clone();
        self.store.update_account(&account).await?;
        self.store
            .record_certificate(&caller.username, &issued.serial)
            .await?;
        self.store.flush().await?;
        Ok(self.issued(&issued))
    }

    /// Revokes the caller's certificate; it appears in the next CRL, returned here.
    #[tracing::instrument(name = "service.revoke", skip_all)]
    pub async fn revoke(&self, caller: &Caller) -> Result<(), ServiceError> {
        let now = self.now();
        self.store.revoke(&caller.serial, unix(now)).await?;
        self.store.flush().await?;
        self.refresh_crl(now).await?;
        tracing::info!(user = %caller.username, serial = %caller.serial, "certificate revoked");
        Ok(())
    }

    pub(super) fn issue(
        &self,
        csr: &[u8],
        username: &Username,
        now: SystemTime,
    ) -> Result<IssuedCertificate, ServiceError> {
        self.ca
            .issue_peer(
                csr,
                username,
                now,
                self.limits.certificate_validity,
                &mut OsRng,
            )
            .map_err(|e| match e {
                IssueError::Rcgen(e) => internal("issuing a certificate", e),
                other => ServiceError::BadCsr(other.to_string()),
            })
    }

    /// What the caller is given for a certificate just issued.
    pub(super) fn issued(&self, issued: &IssuedCertificate) -> Issued {
        Issued {
            certificate_pem: issued.to_pem(),
            ca_pem: self.ca.certificate().to_pem(),
            serial: issued.serial.clone(),
            not_after: issued.not_after,
        }
    }
}
