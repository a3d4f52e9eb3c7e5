//! What travels between peers (and through the mailbox): an envelope around one encrypted
//! message, and the receiver's acknowledgement.
//!
//! The envelope's clear fields are the message id (for idempotence and acknowledgement), an
//! optional W3C trace context (random ids only) and the encrypted payload. The sender is not a
//! field: the receiver takes it from the authenticated connection (or the mailbox's record of the
//! depositor's certificate), never from the envelope.

use serde::{Deserialize, Serialize};

use super::ids::MessageId;

/// Version of the envelope encoding.
pub const ENVELOPE_VERSION: u8 = 1;
/// Longest accepted trace context (a `traceparent` is 55 characters).
pub const MAX_TRACE_LEN: usize = 128;

/// An encrypted message on its way to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's id of the message inside.
    pub id: MessageId,
    /// W3C `traceparent` of the sending span, if tracing is on.
    pub trace: Option<String>,
    /// The encoded ratchet message (serialized as one byte string, not byte by byte).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// The receiver's answer to an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Decrypted and stored durably.
    Stored,
    /// Already stored earlier; nothing changed.
    Duplicate,
    /// Refused, and why. The sender should not retry the same envelope unless the reason is
    /// [`RejectReason::Busy`].
    Rejected(RejectReason),
}

/// Why an envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    /// It could not be parsed.
    #[error("malformed envelope")]
    Malformed,
    /// It is larger than the receiver accepts.
    #[error("envelope too large")]
    TooLarge,
    /// It did not decrypt (tampered, replayed, or for an unknown session).
    #[error("the message could not be decrypted")]
    Undecryptable,
    /// The receiver is overloaded; try again later.
    #[error("the receiver is busy")]
    Busy,
    /// The receiver failed to store it; try again later.
    #[error("the receiver could not store the message")]
    Internal,
    /// It decrypted, but its sender may not say it: a group message from someone who is not a
    /// member, a group change its author may not make, a message past what a request (someone
    /// who wrote first, not answered) may leave. Final: it is not sent again.
    #[error("the receiver refused the message: its sender may not send it")]
    Refused,
}

/// Why bytes are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Unknown version.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// Not a valid encoding, or a field out of bounds.
    #[error("malformed envelope")]
    Malformed,
}

impl Envelope {
    /// `version ‖ postcard(envelope)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 64);
        out.push(ENVELOPE_VERSION);
        // Serializing plain data into a Vec cannot fail; an error would leave only the version
        // byte, which `decode` refuses.
        postcard::to_extend(self, out).unwrap_or_else(|_| vec![ENVELOPE_VERSION])
    }

    /// An upper bound of `encode().len()`, without encoding (payloads can be large).
    pub fn encoded_len_bound(&self) -> usize {
        // version + id + option tag + trace length prefix + trace + payload length prefix + payload
        1 + 16 + 1 + 5 + self.trace.as_ref().map_or(0, String::len) + 5 + self.payload.len()
    }

    /// Parses and bounds-checks an envelope.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Malformed)?;
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let envelope: Envelope =
            postcard::from_bytes(body).map_err(|_| EnvelopeError::Malformed)?;
        if envelope
            .trace
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TRACE_LEN)
        {
            return Err(EnvelopeError::Malformed);
        }
        Ok(envelope)
    }
}

impl Ack {
    /// `postcard(ack)`.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses an acknowledgement.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        postcard::from_bytes(bytes).map_err(|_| EnvelopeError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_junk() {
        let e = Envelope {
            id: MessageId::from_bytes([3; 16]),
            trace: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            payload: vec![1, 2, 3],
        };
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        assert_eq!(Envelope::decode(&[]), Err(EnvelopeError::Malformed));
        assert_eq!(
            Envelope::decode(&[9, 0]),
            Err(EnvelopeError::UnsupportedVersion(9))
        );
        assert_eq!(Envelope::decode(&[1, 0xff]), Err(EnvelopeError::Malformed));
        let long = Envelope {
            trace: Some("x".repeat(MAX_TRACE_LEN + 1)),
            ..e
        };
        assert_eq!(
            Envelope::decode(&long.encode()),
            Err(EnvelopeError::Malformed)
        );
        for ack in [
            Ack::Stored,
            Ack::Duplicate,
            Ack::Rejected(RejectReason::Busy),
            Ack::Rejected(RejectReason::Refused),
        ] {
            assert_eq!(Ack::decode(&ack.encode()).unwrap(), ack);
        }
    }
}
