//! The [`Directory`] port served by a rendezvous running in this process (no HTTP): real
//! rendezvous semantics for use-case tests and in-process demos.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use ed25519_dalek::SigningKey;
use peerchat_pki::Username;
use peerchat_rendezvous::service::{Caller, Rendezvous, ServiceError};
use peerchat_rendezvous::store::{
    OneTimePreKeyRecord, SignedPreKeyRecord, Store as RendezvousStore,
};

use crate::domain::{IdentityKey, OneTimePreKey, PreKeyBundle, PreKeyId, SignedPreKey};
use crate::ports::{Directory, DirectoryError, Issued, MailItem, Mailbox, PeerInfo, TotpEnrolment};

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

/// The service's typed refusal as the node's: variant to variant, no strings matched.
fn translate(e: ServiceError) -> DirectoryError {
    match e {
        ServiceError::UsernameTaken => DirectoryError::UsernameTaken,
        ServiceError::WeakPassword => DirectoryError::Rejected(e.to_string()),
        ServiceError::BadCredentials => DirectoryError::BadCredentials,
        ServiceError::TotpRequired => DirectoryError::TotpRequired,
        ServiceError::TotpInvalid => DirectoryError::TotpInvalid,
        ServiceError::TotpAlreadyEnabled => DirectoryError::TotpAlreadyEnabled,
        ServiceError::TotpNotEnrolled => DirectoryError::TotpNotEnrolled,
        ServiceError::RateLimited { .. } => DirectoryError::RateLimited,
        ServiceError::NoSuchUser => DirectoryError::UnknownUser,
        ServiceError::Store(_) | ServiceError::Internal => {
            DirectoryError::Unavailable(e.to_string())
        }
        other => DirectoryError::Refused {
            code: "refused".into(),
            message: other.to_string(),
        },
    }
}

fn bad(what: &str) -> DirectoryError {
    DirectoryError::Unavailable(format!("the rendezvous returned an invalid {what}"))
}

fn issued(issued: peerchat_rendezvous::service::Issued) -> Issued {
    Issued {
        certificate_pem: issued.certificate_pem,
        ca_pem: issued.ca_pem,
    }
}

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

impl<R: RendezvousStore> Directory for InProcessDirectory<R> {
    async fn register(
        &self,
        username: &Username,
        password: &str,
        csr: &[u8],
    ) -> Result<Issued, DirectoryError> {
        self.service
            .register(LOCALHOST, username, password.into(), csr)
            .await
            .map(issued)
            .map_err(translate)
    }

    async fn login(
        &self,
        username: &Username,
        password: &str,
        totp: Option<&str>,
        csr: &[u8],
    ) -> Result<Issued, DirectoryError> {
        self.service
            .login(LOCALHOST, username, password.into(), totp, csr)
            .await
            .map(issued)
            .map_err(translate)
    }

    fn authenticate(&self, certificate_pem: &str, _key: &SigningKey) -> Result<(), DirectoryError> {
        use rustls::pki_types::pem::PemObject;
        let der = peerchat_pki::CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|_| DirectoryError::Unavailable("bad certificate".into()))?;
        let peer = self
            .service
            .trust()
            .verify(&[der], self.service.now())
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        // The trust store's CRL is the one in force: a revoked certificate failed `verify`.
        let caller = Caller {
            username: peer.username,
            serial: peer.serial,
            identity_key: peer.identity_key,
        };
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
            let record = SignedPreKeyRecord {
                id: signed.id.0,
                public_key: *signed.public.as_bytes(),
                signature: signed.signature.to_bytes().to_vec(),
            };
            self.service
                .upload_signed_prekey(&caller, record)
                .await
                .map_err(translate)?;
        }
        if !one_time.is_empty() {
            let keys = one_time
                .iter()
                .map(|k| OneTimePreKeyRecord {
                    id: k.id.0,
                    public_key: *k.public.as_bytes(),
                })
                .collect();
            self.service
                .upload_one_time_prekeys(&caller, keys)
                .await
                .map_err(translate)?;
        }
        Ok(self
            .service
            .prekey_status(&caller)
            .await
            .map_err(translate)?
            .one_time_prekeys)
    }

    async fn lookup(&self, username: &Username) -> Result<PeerInfo, DirectoryError> {
        let caller = self.caller()?;
        let peer = self
            .service
            .lookup(&caller, username)
            .await
            .map_err(translate)?;
        Ok(PeerInfo {
            username: peer.username,
            identity_key: IdentityKey::from_bytes(&peer.identity_key)
                .map_err(|_| bad("identity key"))?,
            addresses: peer.addresses,
            online: peer.online,
        })
    }

    async fn bundle(&self, username: &Username) -> Result<PreKeyBundle, DirectoryError> {
        let caller = self.caller()?;
        let bundle = self
            .service
            .bundle(&caller, username)
            .await
            .map_err(translate)?;
        Ok(PreKeyBundle {
            identity: IdentityKey::from_bytes(&bundle.identity_key)
                .map_err(|_| bad("identity key"))?,
            signed_prekey: SignedPreKey::from_parts(
                PreKeyId(bundle.signed_prekey.id),
                &bundle.signed_prekey.public_key,
                &bundle.signed_prekey.signature,
            )
            .map_err(|_| bad("signed prekey"))?,
            one_time_prekey: bundle
                .one_time_prekey
                .map(|k| {
                    OneTimePreKey::from_parts(PreKeyId(k.id), &k.public_key)
                        .map_err(|_| bad("one-time prekey"))
                })
                .transpose()?,
        })
    }

    async fn renew(&self, csr: &[u8]) -> Result<Issued, DirectoryError> {
        let caller = self.caller()?;
        self.service
            .renew(&caller, csr)
            .await
            .map(issued)
            .map_err(translate)
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
        self.service
            .totp_confirm(&caller, code)
            .await
            .map_err(translate)
    }

    async fn logout(&self) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        self.service.revoke(&caller).await.map_err(translate)
    }

    async fn deposit(
        &self,
        to: &Username,
        id: &crate::domain::MessageId,
        envelope: &[u8],
    ) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        self.service
            .deposit(&caller, to, *id.as_bytes(), envelope.to_vec())
            .await
            .map(|_| ())
            .map_err(translate)
    }

    async fn fetch_mail(
        &self,
        wait_secs: u64,
        known_crl: Option<u64>,
    ) -> Result<Mailbox, DirectoryError> {
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
        Ok(Mailbox {
            items: mail
                .envelopes
                .into_iter()
                .map(|e| {
                    Ok(MailItem {
                        id: crate::domain::MessageId::from_bytes(e.id),
                        sender: e.sender,
                        envelope: e.envelope,
                        sender_key: e
                            .sender_key
                            .map(|k| IdentityKey::from_bytes(&k).map_err(|_| bad("sender key")))
                            .transpose()?,
                    })
                })
                .collect::<Result<_, DirectoryError>>()?,
            crl_number: Some(mail.crl_number),
            prekeys_low: mail.prekeys_low,
        })
    }

    async fn ack_mail(&self, id: &crate::domain::MessageId) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        self.service
            .ack(&caller, &caller.username, id.as_bytes())
            .await
            .map_err(translate)
    }

    async fn crl(&self) -> Result<Vec<u8>, DirectoryError> {
        let crl = self.service.crl().await.map_err(translate)?;
        Ok(crl.der().to_vec())
    }

    async fn announce(&self, addresses: Vec<String>, ttl_secs: u64) -> Result<(), DirectoryError> {
        let caller = self.caller()?;
        self.service
            .announce(&caller, addresses, std::time::Duration::from_secs(ttl_secs))
            .await
            .map_err(translate)
    }

    async fn park(
        &self,
        id: &crate::domain::FileId,
        size: u64,
        chunks: u32,
        readers: &[Username],
    ) -> Result<(), DirectoryError> {
        let spec = peerchat_rendezvous::service::blobs::BlobSpec {
            size,
            chunks,
            readers: readers.iter().cloned().collect(),
        };
        self.service
            .park(&self.caller()?, &id.to_string(), spec)
            .map_err(translate)
    }

    async fn park_chunk(
        &self,
        id: &crate::domain::FileId,
        index: u32,
        sealed: &[u8],
    ) -> Result<(), DirectoryError> {
        self.service
            .park_chunk(&self.caller()?, &id.to_string(), index, sealed)
            .map_err(translate)
    }

    async fn parked_chunk(
        &self,
        id: &crate::domain::FileId,
        index: u32,
    ) -> Result<Option<Vec<u8>>, DirectoryError> {
        self.service
            .parked_chunk(&self.caller()?, &id.to_string(), index)
            .map_err(translate)
    }

    async fn unpark(&self, id: &crate::domain::FileId) -> Result<(), DirectoryError> {
        self.service
            .unpark(&self.caller()?, &id.to_string())
            .map_err(translate)
    }
}
