//! The rendezvous's HTTP request and response types (JSON under `/v1`), shared with the node.
//!
//! Binary values travel as standard base64, certificates as PEM, times as Unix seconds.

use peerchat_pki::Username;
use serde::{Deserialize, Serialize};

/// Prefix of every route.
pub const PREFIX: &str = "/v1";

/// Domain separation of signed-prekey signatures: the identity key signs
/// `SIGNED_PREKEY_CONTEXT ‖ id (u32 BE) ‖ X25519 public key`.
pub const SIGNED_PREKEY_CONTEXT: &[u8] = b"peerchat signed prekey v1";

/// The bytes an identity key signs for a signed prekey.
pub fn signed_prekey_message(id: u32, public: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_PREKEY_CONTEXT.len() + 36);
    m.extend_from_slice(SIGNED_PREKEY_CONTEXT);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(public);
    m
}

/// `GET /v1/relay`: where the circuit relay for nodes behind NATs is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayResponse {
    /// The relay's libp2p `PeerId`.
    pub peer_id: String,
    /// Multiaddrs of the relay, each ending in `/p2p/<peer_id>`.
    pub addresses: Vec<String>,
}

/// `POST /v1/accounts`: create an account and obtain a first certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The account name.
    pub username: Username,
    /// The password (hashed with Argon2id, never stored).
    pub password: String,
    /// DER PKCS#10 request signed by the identity key, base64.
    pub csr: String,
}

/// `POST /v1/sessions`: log in on a new install (a new key is allowed; older certificates of the
/// account are revoked).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The account name.
    pub username: Username,
    /// The password.
    pub password: String,
    /// The current TOTP code, when the account has a second factor.
    #[serde(default)]
    pub totp: Option<String>,
    /// DER PKCS#10 request, base64.
    pub csr: String,
}

/// `POST /v1/certificates/renew`: a new certificate for the caller's current key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    /// DER PKCS#10 request, base64, for the same key as the caller's certificate.
    pub csr: String,
}

/// A certificate issued by the CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The leaf certificate, PEM.
    pub certificate: String,
    /// The CA certificate, PEM.
    pub ca: String,
    /// The serial, hex.
    pub serial: String,
    /// End of validity, Unix seconds.
    pub not_after: u64,
}

/// `GET /v1/ca`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaResponse {
    /// The CA certificate, PEM.
    pub certificate: String,
    /// Its SHA-256 fingerprint, as OpenSSL prints it.
    pub fingerprint: String,
}

/// `POST /v1/totp`: a new (unconfirmed) second factor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpEnrolment {
    /// The shared secret, base32.
    pub secret: String,
    /// An `otpauth://` URI for authenticator apps.
    pub uri: String,
}

/// `POST /v1/totp/confirm`: enable the second factor with a first valid code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpConfirm {
    /// A current code.
    pub code: String,
}

/// A signed prekey on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKeyWire {
    /// Its id.
    pub id: u32,
    /// X25519 public key, base64.
    pub public_key: String,
    /// Ed25519 signature by the identity key over [`signed_prekey_message`], base64.
    pub signature: String,
}

/// A one-time prekey on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePreKeyWire {
    /// Its id.
    pub id: u32,
    /// X25519 public key, base64.
    pub public_key: String,
}

/// `POST /v1/prekeys/one-time`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneTimePreKeysUpload {
    /// The keys (at most [`crate::limits::Limits::max_prekey_batch`] per request).
    pub keys: Vec<OneTimePreKeyWire>,
}

/// `GET /v1/prekeys` and the answer to an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyStatus {
    /// One-time prekeys left on the server.
    pub one_time_prekeys: u32,
    /// Whether a signed prekey is on file.
    pub signed_prekey: bool,
    /// Whether the supply is low and should be replenished.
    pub low: bool,
}

/// `POST /v1/users/{username}/bundle`: what an initiator needs for X3DH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleResponse {
    /// The user.
    pub username: Username,
    /// The Ed25519 identity key, base64.
    pub identity_key: String,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyWire,
    /// One one-time prekey, handed out once, if any was left.
    pub one_time_prekey: Option<OneTimePreKeyWire>,
    /// Whether the user's one-time prekey supply is low.
    pub low_prekeys: bool,
}

/// `GET /v1/users/{username}`: an exact-name lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResponse {
    /// The user.
    pub username: Username,
    /// The user's current certificate, PEM.
    pub certificate: String,
    /// The libp2p `PeerId` of the identity key.
    pub peer_id: String,
    /// The Ed25519 identity key, base64.
    pub identity_key: String,
    /// Addresses announced and not yet expired.
    pub addresses: Vec<String>,
    /// Whether the user announced presence recently.
    pub online: bool,
}

/// `PUT /v1/presence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceRequest {
    /// Multiaddrs where the caller listens.
    pub addresses: Vec<String>,
    /// How long they stay valid, seconds (capped by the server).
    pub ttl_secs: u64,
}

/// `POST /v1/mailbox/{username}`: leave an envelope for an offline user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DepositRequest {
    /// The sender's id for the envelope (32 hex digits); a second deposit with it is a duplicate.
    pub id: String,
    /// The opaque envelope, base64.
    pub envelope: String,
}

/// Answer to a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepositStatus {
    /// Stored (and flushed).
    Stored,
    /// An envelope with that id was already waiting.
    Duplicate,
}

/// Answer to a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositResponse {
    /// What happened.
    pub status: DepositStatus,
}

/// An envelope waiting in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxEnvelope {
    /// The sender's id for it; acknowledge with it.
    pub id: String,
    /// The depositor, as its certificate named it.
    pub sender: Username,
    /// The opaque envelope, base64.
    pub envelope: String,
    /// When it was deposited, Unix seconds.
    pub deposited_at: u64,
    /// The Ed25519 key of the depositor's certificate (32 bytes, base64), so the recipient
    /// decrypts with the key that really sent it, without a lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_key: Option<String>,
}

/// `GET /v1/mailbox/{username}[?wait=SECONDS]`: waiting envelopes, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxResponse {
    /// The envelopes.
    pub envelopes: Vec<MailboxEnvelope>,
    /// The number of the CRL in force. A long poll also answers (with what mail there is) as
    /// soon as a certificate is revoked, and at once when the caller's `crl` is older, so online
    /// nodes learn of a revocation within a round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_number: Option<u64>,
    /// The owner's one-time prekeys are running low: upload more now. A long poll also answers
    /// as soon as a bundle fetch leaves them low.
    #[serde(default)]
    pub prekeys_low: bool,
}

/// Every error: a stable machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code, e.g. `username_taken`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

/// `GET /v1/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// `PUT /v1/blobs/{id}`: park a file's sealed chunks for its readers (then `PUT
/// /v1/blobs/{id}/{index}` with each chunk's bytes as the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkRequest {
    /// Total bytes of the sealed chunks.
    pub size: u64,
    /// How many chunks.
    pub chunks: u32,
    /// Who may fetch it (and acknowledge it with `DELETE /v1/blobs/{id}`).
    pub readers: Vec<String>,
}
