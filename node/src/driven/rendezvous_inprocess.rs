//! The [`Directory`] port served by a rendezvous running in this process (no HTTP): real
//! rendezvous semantics for use-case tests and in-process demos.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use peerchat_pki::Username;
use peerchat_rendezvous::api;
use peerchat_rendezvous::error::ApiError;
use peerchat_rendezvous::service::{Caller, Rendezvous};
use peerchat_rendezvous::store::Store as RendezvousStore;

use super::rendezvous_wire;
use crate::domain::{OneTimePreKey, PreKeyBundle, SignedPreKey};
use crate::ports::{Directory, DirectoryError, Issued, PeerInfo, TotpEnrolment};

/// A directory client that calls the service directly.
pub struct InProcessDirectory<R: RendezvousStore> {
    service: Arc<Rendezvous<R>>,
    caller: Arc<RwLock<Option<Caller>>>,
}

/// Clones share the service and the authenticated caller.
impl<R: RendezvousStore> Clone for InProcessDirectory<R> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            caller: self.caller.clone(),
        }
    }
}

impl<R: RendezvousStore> std::fmt::Debug for InProcessDirectory<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcessDirectory")
    }
}

impl<R: RendezvousStore> InProcessDirectory<R> {
    /// A client of `service`.
    pub fn new(service: Arc<Rendezvous<R>>) -> Self {
        Self {
            service,
            caller: Arc::new(RwLock::new(None)),
        }
    }

    fn caller(&self) -> Result<Caller, DirectoryError> {
        self.caller
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| DirectoryError::Unavailable("not authenticated".into()))
    }
}

fn translate(e: ApiError) -> DirectoryError {
    DirectoryError::from_code(e.code, e.message)
}

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

impl<R: RendezvousStore> Directory for InProcessDirectory<R> {
    async fn register(
        &self,
        username: &Username,
        password: &str,
        csr: &[u8],
    ) -> Result<Issued, DirectoryError> {
        let request = api::RegisterRequest {
            username: username.clone(),
            password: password.into(),
            csr: B64.encode(csr),
        };
        let issued = self
            .service
            .register(LOCALHOST, request, SystemTime::now())
            .await
            .map_err(translate)?;
        Ok(Issued {
            certificate_pem: issued.certificate,
            ca_pem: issued.ca,
        })
    }

    async fn login(
        &self,
        username: &Username,
        password: &str,
        totp: Option<&str>,
        csr: &[u8],
    ) -> Result<Issued, DirectoryError> {
        let request = api::LoginRequest {
            username: username.clone(),
            password: password.into(),
            totp: totp.map(str::to_owned),
            csr: B64.encode(csr),
        };
        let issued = self
            .service
            .login(LOCALHOST, request, SystemTime::now())
            .await
            .map_err(translate)?;
        Ok(Issued {
            certificate_pem: issued.certificate,
            ca_pem: issued.ca,
        })
    }

    fn authenticate(&self, certificate_pem: &str, _key: &SigningKey) -> Result<(), DirectoryError> {
        use rustls::pki_types::pem::PemObject;
        let der = peerchat_pki::CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|_| DirectoryError::Unavailable("bad certificate".into()))?;
        let peer = self
            .service
            .trust()
            .verify(&[der], SystemTime::now())
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        let caller = self.service.authenticate(Some(&peer)).map_err(translate)?;
        *self.caller.write().unwrap_or_else(|p| p.into_inner()) = Some(caller);
        Ok(())
    }

    async fn upload_prekeys(
        &self,
        signed: Option<SignedPreKey>,
        one_time: Vec<OneTimePreKey>,
    ) -> Result<u32, DirectoryError> {
        let caller = self.caller()?;
        if let Some(signed) = signed {
            self.service
                .upload_signed_prekey(&caller, rendezvous_wire::signed_prekey(&signed))
                .await
                .map_err(translate)?;
        }
        if !one_time.is_empty() {
            let keys = one_time
                .iter()
                .map(rendezvous_wire::one_time_prekey)
                .collect();
            self.service
                .upload_one_time_prekeys(&caller, api::OneTimePreKeysUpload { keys })
                .await
                .map_err(translate)?;
        }
        Ok(self
            .service
            .prekey_status(&caller)
            .map_err(translate)?
            .one_time_prekeys)
    }

    async fn lookup(&self, username: &Username) -> Result<PeerInfo, DirectoryError> {
        let caller = self.caller()?;
        let wire = self
            .service
            .lookup(&caller, username, SystemTime::now())
            .map_err(translate)?;
        rendezvous_wire::peer_info(wire)
    }

    async fn bundle(&self, username: &Username) -> Result<PreKeyBundle, DirectoryError> {
        let caller = self.caller()?;
        rendezvous_wire::bundle(
            self.service
                .bundle(&caller, username)
                .await
                .map_err(translate)?,
        )
    }

    async fn renew(&self, csr: &[u8]) -> Result<Issued, DirectoryError> {
        let caller = self.caller()?;
        let issued = self
            .service
            .renew(
                &caller,
                api::RenewRequest {
                    csr: B64.encode(csr),
                },
                SystemTime::now(),
            )
            .await
            .map_err(translate)?;
        Ok(Issued {
            certificate_pem: issued.certificate,
            ca_pem: issued.ca,
        })
    }

    async fn totp_enrol(&self) -> Result<TotpEnrolment, DirectoryError> {
        let caller = self.caller()?;
        let enrolment = self.service.totp_enrol(&caller).await.map_err(translate)?;
        Ok(TotpEnrolment {
            secret: enrolment.secret,
            uri: enrolment.uri,
        })
    }

    async fn totp_confirm(&self, code: &str) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        let request = api::TotpConfirm { code: code.into() };
        self.service
            .totp_confirm(&caller, request, SystemTime::now())
            .await
            .map_err(translate)
    }

    async fn logout(&self) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        self.service
            .revoke(&caller, SystemTime::now())
            .await
            .map_err(translate)
    }

    async fn deposit(
        &self,
        to: &Username,
        id: &crate::domain::MessageId,
        envelope: &[u8],
    ) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        let request = api::DepositRequest {
            id: id.to_string(),
            envelope: B64.encode(envelope),
        };
        self.service
            .deposit(&caller, to, request, SystemTime::now())
            .await
            .map(|_| ())
            .map_err(translate)
    }

    async fn fetch_mail(
        &self,
        wait_secs: u64,
        known_crl: Option<u64>,
    ) -> Result<crate::ports::Mailbox, DirectoryError> {
        let caller = self.caller()?;
        let mail = self
            .service
            .fetch(
                &caller,
                &caller.username,
                std::time::Duration::from_secs(wait_secs),
                known_crl,
            )
            .await
            .map_err(translate)?;
        rendezvous_wire::mailbox(mail)
    }

    async fn ack_mail(&self, id: &crate::domain::MessageId) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        self.service
            .ack(&caller, &caller.username, &id.to_string())
            .await
            .map_err(translate)
    }

    async fn crl(&self) -> Result<Vec<u8>, DirectoryError> {
        let crl = self.service.crl(SystemTime::now()).map_err(translate)?;
        Ok(crl.der().to_vec())
    }

    async fn announce(&self, addresses: Vec<String>, ttl_secs: u64) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        self.service
            .announce(
                &caller,
                api::PresenceRequest {
                    addresses,
                    ttl_secs,
                },
                SystemTime::now(),
            )
            .await
            .map_err(translate)
    }
}
