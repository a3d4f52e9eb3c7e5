//! The HTTP adapter's translation between the service's domain values and the JSON wire types
//! of [`crate::api`]: base64, hex, PEM and Unix seconds live here, not in the service.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::api;
use crate::error::ApiError;
use crate::service::{Bundle, Issued, Mailbox, PeerRecord, PreKeySupply, unix};
use crate::store::{OneTimePreKeyRecord, SignedPreKeyRecord};

/// Bytes from a base64 field, or a 400 naming the field.
pub fn decode_b64(field: &'static str, value: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(value.trim())
        .map_err(|_| ApiError::bad_request("bad_base64", format!("`{field}` is not valid base64")))
}

fn decode_key(field: &'static str, value: &str) -> Result<[u8; 32], ApiError> {
    <[u8; 32]>::try_from(decode_b64(field, value)?)
        .map_err(|_| ApiError::bad_request("bad_key", format!("`{field}` is not a 32-byte key")))
}

/// A signed prekey from its wire form.
pub fn signed_prekey(wire: &api::SignedPreKeyWire) -> Result<SignedPreKeyRecord, ApiError> {
    Ok(SignedPreKeyRecord {
        id: wire.id,
        public_key: decode_key("public_key", &wire.public_key)?,
        signature: decode_b64("signature", &wire.signature)?,
    })
}

/// A one-time prekey from its wire form.
pub fn one_time_prekey(wire: &api::OneTimePreKeyWire) -> Result<OneTimePreKeyRecord, ApiError> {
    Ok(OneTimePreKeyRecord {
        id: wire.id,
        public_key: decode_key("public_key", &wire.public_key)?,
    })
}

/// An envelope id from its 32 hex digits.
pub fn envelope_id(id: &str) -> Result<[u8; 16], ApiError> {
    let bad = || ApiError::bad_request("bad_id", "an envelope id is 32 hexadecimal digits");
    if id.len() != 32 || !id.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An issued certificate as answered.
pub fn certificate(issued: Issued) -> api::CertificateResponse {
    api::CertificateResponse {
        certificate: issued.certificate_pem,
        ca: issued.ca_pem,
        serial: issued.serial.to_hex(),
        not_after: unix(issued.not_after),
    }
}

/// A prekey supply as answered.
pub fn supply(supply: PreKeySupply) -> api::PreKeyStatus {
    api::PreKeyStatus {
        one_time_prekeys: supply.one_time_prekeys,
        signed_prekey: supply.signed_prekey,
        low: supply.low,
    }
}

/// A bundle as answered.
pub fn bundle(bundle: Bundle) -> api::BundleResponse {
    api::BundleResponse {
        username: bundle.username,
        identity_key: B64.encode(bundle.identity_key),
        signed_prekey: api::SignedPreKeyWire {
            id: bundle.signed_prekey.id,
            public_key: B64.encode(bundle.signed_prekey.public_key),
            signature: B64.encode(&bundle.signed_prekey.signature),
        },
        one_time_prekey: bundle.one_time_prekey.map(|k| api::OneTimePreKeyWire {
            id: k.id,
            public_key: B64.encode(k.public_key),
        }),
        low_prekeys: bundle.low_prekeys,
    }
}

/// A lookup as answered.
pub fn lookup(peer: PeerRecord) -> api::LookupResponse {
    api::LookupResponse {
        username: peer.username,
        certificate: pem("CERTIFICATE", &peer.certificate_der),
        peer_id: peer.peer_id,
        identity_key: B64.encode(peer.identity_key),
        addresses: peer.addresses,
        online: peer.online,
    }
}

/// A mailbox answer.
pub fn mailbox(mailbox: Mailbox) -> api::MailboxResponse {
    api::MailboxResponse {
        envelopes: mailbox
            .envelopes
            .into_iter()
            .map(|e| api::MailboxEnvelope {
                id: hex(&e.id),
                sender: e.sender,
                envelope: B64.encode(&e.envelope),
                deposited_at: e.deposited_at,
                sender_key: e.sender_key.map(|k| B64.encode(k)),
            })
            .collect(),
        crl_number: Some(mailbox.crl_number),
        prekeys_low: mailbox.prekeys_low,
    }
}
