//! Register: a new identity, its certificate from the rendezvous, and published prekeys.

use peerchat_pki::{CaCertificate, Username, build_csr};
use rand::rngs::OsRng;

use super::{Node, NodeError, PREKEY_BATCH};
use crate::domain::{IdentityKeyPair, OneTimePreKeyPair, PreKeyId, SignedPreKeyPair};
use crate::ports::{
    Clock, Directory, Event, LocalIdentity, Network, Notifier, Store, TotpEnrolment,
};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Creates the account `username`: generates the identity key, obtains a certificate for it,
    /// stores identity and prekeys durably, then publishes the prekeys.
    #[tracing::instrument(name = "usecase.register", skip_all, fields(user = %username))]
    pub async fn register(&self, username: &Username, password: &str) -> Result<(), NodeError> {
        self.enrol(username, password, None).await
    }

    /// Logs in to an existing account from this (new) install: a new identity key, certified by
    /// the rendezvous, which revokes the account's older certificates. Contacts see the key change.
    /// `totp` is the current code of the account's second factor, when it has one.
    #[tracing::instrument(name = "usecase.login", skip_all, fields(user = %username))]
    pub async fn login(
        &self,
        username: &Username,
        password: &str,
        totp: Option<&str>,
    ) -> Result<(), NodeError> {
        self.enrol(username, password, Some(totp)).await
    }

    /// Starts enabling a second factor: the secret to put in an authenticator app. It takes
    /// effect once [`Node::confirm_totp`] gets a valid code.
    #[tracing::instrument(name = "usecase.enable_totp", skip_all)]
    pub async fn enable_totp(&self) -> Result<TotpEnrolment, NodeError> {
        self.me()?;
        Ok(self.directory.totp_enrol().await?)
    }

    /// Enables the second factor with a first valid code; later logins need a code.
    #[tracing::instrument(name = "usecase.confirm_totp", skip_all)]
    pub async fn confirm_totp(&self, code: &str) -> Result<(), NodeError> {
        self.me()?;
        Ok(self.directory.totp_confirm(code).await?)
    }

    /// Registers (`login` is `None`) or logs in (with the TOTP code, if any).
    async fn enrol(
        &self,
        username: &Username,
        password: &str,
        login: Option<Option<&str>>,
    ) -> Result<(), NodeError> {
        if let Some(existing) = self.store.identity()? {
            return Err(NodeError::AlreadyRegistered(existing.username));
        }
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let csr =
            build_csr(identity.signing_key(), username).map_err(|_| NodeError::BadCertificate)?;
        let issued = match login {
            Some(totp) => self.directory.login(username, password, totp, &csr).await?,
            None => self.directory.register(username, password, &csr).await?,
        };
        // The certificate must certify our key under our name, from the CA it came with.
        let ca = CaCertificate::from_pem(&issued.ca_pem).map_err(|_| NodeError::BadCertificate)?;
        let chain = vec![pem_certificate(&issued.certificate_pem)?];
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.clock.now_ms());
        let certified =
            peerchat_pki::verify(&chain, &ca, None, now).map_err(|_| NodeError::BadCertificate)?;
        if certified.username != *username
            || certified.identity_key != identity.signing_key().verifying_key()
        {
            return Err(NodeError::BadCertificate);
        }
        let signed = SignedPreKeyPair::generate(PreKeyId(1), &identity, &mut OsRng);
        let one_time: Vec<_> = (2..2 + PREKEY_BATCH)
            .map(|id| OneTimePreKeyPair::generate(PreKeyId(id), &mut OsRng))
            .collect();
        let local = LocalIdentity {
            username: username.clone(),
            seed: identity.to_seed(),
            certificate_pem: issued.certificate_pem.clone(),
            ca_pem: issued.ca_pem,
        };
        self.store.save_identity(&local, &signed, &one_time)?;
        self.store.flush().await?;
        self.directory
            .authenticate(&issued.certificate_pem, identity.signing_key())?;
        self.directory
            .upload_prekeys(
                Some(signed.public()),
                one_time.iter().map(OneTimePreKeyPair::public).collect(),
            )
            .await?;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) =
            Some(std::sync::Arc::new((username.clone(), identity)));
        tracing::info!(login = login.is_some(), "enrolled");
        self.notifier.notify(Event::Registered {
            user: username.clone(),
        });
        Ok(())
    }
}

fn pem_certificate(pem: &str) -> Result<peerchat_pki::CertificateDer<'static>, NodeError> {
    use rustls::pki_types::pem::PemObject;
    peerchat_pki::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| NodeError::BadCertificate)
}
