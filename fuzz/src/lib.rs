//! Fuzz targets: one for every decoder that takes bytes from outside the process.
//!
//! Each target takes arbitrary bytes and must neither panic nor hang; where a decoder has a
//! property beyond that (a decoded value encodes back to itself, a forged ciphertext never
//! opens, a certificate the CA issued verifies), the target asserts it, so a violation is a
//! crash the fuzzer reports. `fuzz/afl` drives them with AFL++ (`scripts/fuzz.sh`), and
//! `tests/replay.rs` replays every saved input under `fuzz/corpus/<target>/` on each
//! `cargo test`.

// A fuzz target reports a bug by panicking, and its fixtures are made from constants.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod api;
mod fixture;
mod seeds;

use std::time::Duration;

use futures::executor::block_on;
use libp2p::request_response::Codec;
use peerchat::domain::{Ack, Content, Envelope, FileOffer, Message, Session};
use peerchat::driven::p2p::codec::{EnvelopeCodec, PROTOCOL};
use peerchat::ports::read_frame;
use peerchat::usecases::{FileAnswer, FileRequest};
use peerchat_pki::{CaCertificate, CertificateDer, Crl};

pub use fixture::Fixture;
pub use seeds::seeds;

/// A fuzz target: bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("frame", frame),
    ("content", content),
    ("ratchet", ratchet),
    ("csr", csr),
    ("certificate", certificate),
    ("file", file),
    ("rendezvous_api", api::rendezvous),
    ("node_api", api::node),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Envelope and acknowledgement frames as a peer sends them: whatever decodes encodes back to
/// the same value.
pub fn envelope(data: &[u8]) {
    if let Ok(envelope) = Envelope::decode(data) {
        let again = Envelope::decode(&envelope.encode()).expect("a decoded envelope re-encodes");
        assert_eq!(again, envelope);
        assert!(envelope.encode().len() <= envelope.encoded_len_bound());
    }
    if let Ok(ack) = Ack::decode(data) {
        assert_eq!(Ack::decode(&ack.encode()).expect("an ack re-encodes"), ack);
    }
}

/// The `/peerchat/msg/1` stream as a peer writes it: a length prefix, then the frame, read with
/// the node's bound.
pub fn frame(data: &[u8]) {
    let mut codec = EnvelopeCodec::default();
    let read = block_on(codec.read_request(&PROTOCOL, &mut futures::io::Cursor::new(data)));
    if let Ok(envelope) = read {
        assert!(data.len() >= 4 + envelope.encode().len().min(1));
        assert!(data.len() - 4 <= codec.max_envelope_bytes);
    }
    let _ = block_on(codec.read_response(&PROTOCOL, &mut futures::io::Cursor::new(data)));
}

/// Decrypted content, every kind: what decodes is valid and encodes back to itself.
pub fn content(data: &[u8]) {
    if let Ok(content) = Content::decode(data) {
        let bytes = content
            .encode()
            .expect("decoded content is valid, so it encodes");
        assert_eq!(Content::decode(&bytes).expect("re-decodes"), content);
    }
}

/// A ratchet message from the wire, decoded and then decrypted by an established session and
/// by a responder's prekeys. Only the exact bytes the sender produced may open.
pub fn ratchet(data: &[u8]) {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    let fixture = Fixture::get();
    let mut rng = fixture.rng();
    let sent = |data: &[u8]| {
        fixture.first_message.as_slice() == data
            || fixture.later_messages.iter().any(|m| m.as_slice() == data)
    };
    let mut session = Session::from_bytes(&fixture.bob_session).expect("the fixture's session");
    if session.decrypt(&message, &mut rng).is_ok() {
        assert!(sent(data), "a message the sender never made opened");
    }
    // Until the first reply every message carries the X3DH header, and any one of them may be
    // the first to arrive.
    if message.prekey().is_some() {
        let responded = Session::respond(
            &fixture.bob_identity,
            &fixture.bob_signed,
            Some(&fixture.bob_one_time),
            &message,
            &mut rng,
        );
        if responded.is_ok() {
            assert!(
                sent(data),
                "an initial message the sender never made opened"
            );
        }
    }
}

/// A certificate signing request as the rendezvous receives it: what the CA signs verifies, for
/// the name asked, and nothing else.
pub fn csr(data: &[u8]) {
    let fixture = Fixture::get();
    let issued = fixture.ca.issue_peer(
        data,
        &fixture.alice,
        fixture.now,
        Duration::from_secs(3600),
        &mut fixture.rng(),
    );
    if let Ok(issued) = issued {
        let peer = peerchat_pki::verify(
            std::slice::from_ref(&issued.der),
            fixture.ca.certificate(),
            None,
            fixture.now,
        )
        .expect("a certificate the CA issued verifies");
        assert_eq!(peer.username, fixture.alice);
        assert_eq!(peer.identity_key, issued.public_key);
    }
}

/// Certificates, CA certificates and CRLs as peers and the rendezvous present them.
pub fn certificate(data: &[u8]) {
    let fixture = Fixture::get();
    let ca = fixture.ca.certificate();
    let chain = [CertificateDer::from(data.to_vec())];
    if let Ok(peer) = peerchat_pki::verify(&chain, ca, Some(&fixture.crl), fixture.now) {
        assert!(!fixture.crl.is_revoked(&peer.serial));
        assert_eq!(
            peerchat_pki::certificate_key(data).expect("a verified certificate has a key"),
            peer.identity_key
        );
    }
    let _ = peerchat_pki::certificate_key(data);
    let _ = CaCertificate::from_der(data);
    if let Ok(crl) = Crl::from_der(data, ca) {
        assert_eq!(crl.issuer(), ca.fingerprint());
    }
}

/// A file transfer as a peer drives it: its request and answer frames (selector 0 and 1), an
/// offer with its chunk ranges (2), and a served chunk checked against an offer (3).
pub fn file(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 | 1 => {
            let Ok(frame) = block_on(read_frame(&mut futures::io::Cursor::new(rest), 1024)) else {
                return;
            };
            if selector % 4 == 0 {
                let _ = postcard::from_bytes::<FileRequest>(&frame);
            } else {
                let _ = postcard::from_bytes::<FileAnswer>(&frame);
            }
        }
        2 => {
            let Ok(offer) = postcard::from_bytes::<FileOffer>(rest) else {
                return;
            };
            if offer.validate(u64::MAX).is_err() {
                return;
            }
            let chunks = offer.chunks();
            if let Some(last) = chunks.checked_sub(1) {
                let len = offer.chunk_len(last).expect("the last chunk is in range");
                assert_eq!(offer.offset(last) + len as u64, offer.size);
            }
            assert!(offer.chunk_len(chunks).is_err(), "a chunk past the end");
        }
        _ => {
            let Some((index, sealed)) = rest.split_first_chunk::<4>() else {
                return;
            };
            let fixture = Fixture::get();
            let index = u32::from_be_bytes(*index);
            if let Ok(plain) = fixture.offer.check(index, sealed) {
                assert_eq!(
                    sealed,
                    fixture.chunks[index as usize].as_slice(),
                    "a chunk the sender never sealed opened"
                );
                assert_eq!(
                    plain.len(),
                    fixture.offer.chunk_len(index).expect("in range")
                );
            }
        }
    }
}
