//! Wire types of the rendezvous API turned into domain types, at the edge.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use peerchat_rendezvous::api;

use crate::domain::{IdentityKey, OneTimePreKey, PreKeyBundle, PreKeyId, SignedPreKey};
use crate::ports::{DirectoryError, PeerInfo};

fn bad(what: &str) -> DirectoryError {
    DirectoryError::Unavailable(format!("the rendezvous sent an invalid {what}"))
}

fn key(b64: &str, what: &str) -> Result<Vec<u8>, DirectoryError> {
    B64.decode(b64).map_err(|_| bad(what))
}

/// A bundle from its wire form.
pub fn bundle(wire: api::BundleResponse) -> Result<PreKeyBundle, DirectoryError> {
    let identity = IdentityKey::from_bytes(&key(&wire.identity_key, "identity key")?)
        .map_err(|_| bad("identity key"))?;
    let signed_prekey = SignedPreKey::from_parts(
        PreKeyId(wire.signed_prekey.id),
        &key(&wire.signed_prekey.public_key, "signed prekey")?,
        &key(&wire.signed_prekey.signature, "signature")?,
    )
    .map_err(|_| bad("signed prekey"))?;
    let one_time_prekey = wire
        .one_time_prekey
        .map(|k| {
            OneTimePreKey::from_parts(PreKeyId(k.id), &key(&k.public_key, "one-time prekey")?)
                .map_err(|_| bad("one-time prekey"))
        })
        .transpose()?;
    Ok(PreKeyBundle {
        identity,
        signed_prekey,
        one_time_prekey,
    })
}

/// A lookup from its wire form.
pub fn peer_info(wire: api::LookupResponse) -> Result<PeerInfo, DirectoryError> {
    Ok(PeerInfo {
        identity_key: IdentityKey::from_bytes(&key(&wire.identity_key, "identity key")?)
            .map_err(|_| bad("identity key"))?,
        username: wire.username,
        addresses: wire.addresses,
        online: wire.online,
    })
}

/// A signed prekey to its wire form.
pub fn signed_prekey(key: &SignedPreKey) -> api::SignedPreKeyWire {
    api::SignedPreKeyWire {
        id: key.id.0,
        public_key: B64.encode(key.public.as_bytes()),
        signature: B64.encode(key.signature.to_bytes()),
    }
}

/// A one-time prekey to its wire form.
pub fn one_time_prekey(key: &OneTimePreKey) -> api::OneTimePreKeyWire {
    api::OneTimePreKeyWire {
        id: key.id.0,
        public_key: B64.encode(key.public.as_bytes()),
    }
}

/// A rendezvous error body to a directory error.
pub fn refused(body: api::ErrorBody) -> DirectoryError {
    DirectoryError::from_code(&body.error, body.message)
}

/// A mailbox answer from its wire form.
pub fn mailbox(wire: api::MailboxResponse) -> Result<crate::ports::Mailbox, DirectoryError> {
    Ok(crate::ports::Mailbox {
        items: wire
            .envelopes
            .into_iter()
            .map(mail_item)
            .collect::<Result<_, _>>()?,
        crl_number: wire.crl_number,
        prekeys_low: wire.prekeys_low,
    })
}

/// A mailbox envelope from its wire form.
pub fn mail_item(wire: api::MailboxEnvelope) -> Result<crate::ports::MailItem, DirectoryError> {
    Ok(crate::ports::MailItem {
        id: wire.id.parse().map_err(|_| bad("envelope id"))?,
        sender: wire.sender,
        envelope: key(&wire.envelope, "envelope")?,
        sender_key: wire
            .sender_key
            .map(|k| {
                IdentityKey::from_bytes(&key(&k, "sender key")?).map_err(|_| bad("sender key"))
            })
            .transpose()?,
    })
}
