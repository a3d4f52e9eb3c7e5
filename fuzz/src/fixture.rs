//! What the targets decode against: keys, a session, a CA and an offer, made once per process
//! from a fixed seed so that a saved input means the same thing on every run.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use peerchat::domain::{
    FileId, FileOffer, IdentityKeyPair, OneTimePreKeyPair, PreKeyBundle, PreKeyId, Session,
    SignedPreKeyPair,
};
use peerchat_pki::{CertificateAuthority, Crl, RevokedEntry, Serial, Username};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The fixed world of the targets.
pub struct Fixture {
    /// Bob's identity, signed and one-time prekeys (the responder's side of X3DH).
    pub bob_identity: IdentityKeyPair,
    /// Bob's signed prekey.
    pub bob_signed: SignedPreKeyPair,
    /// Bob's one-time prekey.
    pub bob_one_time: OneTimePreKeyPair,
    /// Bob's session after Alice's first message, as stored.
    pub bob_session: Vec<u8>,
    /// Alice's first message (carries the X3DH header), as sent.
    pub first_message: Vec<u8>,
    /// Alice's next messages, as sent.
    pub later_messages: Vec<Vec<u8>>,
    /// The CA.
    pub ca: CertificateAuthority,
    /// A CRL of the CA revoking one serial.
    pub crl: Crl,
    /// The name CSRs are issued for.
    pub alice: Username,
    /// The time certificates are checked at.
    pub now: SystemTime,
    /// A three-chunk file offer with its digests.
    pub offer: FileOffer,
    /// The offer's sealed chunks.
    pub chunks: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fixture")
    }
}

impl Fixture {
    /// The fixture (made on first use).
    pub fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(Fixture::make)
    }

    /// A generator with a fixed seed, so that every run of an input takes the same path.
    pub fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(0x70ee_c4a7)
    }

    fn make() -> Fixture {
        let mut rng = StdRng::seed_from_u64(2026);
        let alice_identity = IdentityKeyPair::generate(&mut rng);
        let bob_identity = IdentityKeyPair::generate(&mut rng);
        let bob_signed = SignedPreKeyPair::generate(PreKeyId(1), &bob_identity, &mut rng);
        let bob_one_time = OneTimePreKeyPair::generate(PreKeyId(100), &mut rng);
        let bundle = PreKeyBundle {
            identity: *bob_identity.public(),
            signed_prekey: bob_signed.public(),
            one_time_prekey: Some(bob_one_time.public()),
        };
        let mut alice = Session::initiate(&alice_identity, &bundle, &mut rng).expect("initiate");
        let first = alice.encrypt(b"hello bob").expect("encrypt");
        let responded = Session::respond(
            &bob_identity,
            &bob_signed,
            Some(&bob_one_time),
            &first,
            &mut rng,
        )
        .expect("respond");
        let later_messages = ["second", "third", ""]
            .iter()
            .map(|text| {
                alice
                    .encrypt(text.as_bytes())
                    .expect("encrypt")
                    .encode()
                    .to_vec()
            })
            .collect();

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = CertificateAuthority::generate("peerchat fuzz CA", now, &mut rng).expect("CA");
        let crl = ca
            .sign_crl(
                &[RevokedEntry {
                    serial: Serial::from_be_bytes(&[7; 16]),
                    revoked_at: now,
                }],
                1,
                now,
                now + Duration::from_secs(86_400),
            )
            .expect("CRL");

        let mut offer = FileOffer {
            id: FileId::from_bytes([9; 16]),
            name: "notes.txt".into(),
            size: 40_000,
            media_type: "text/plain".into(),
            chunk_size: 16 * 1024,
            key: [3; 32],
            nonce: [4; 7],
            sha256: [0; 32],
            chunk_digests: Vec::new(),
        };
        let chunks: Vec<Vec<u8>> = (0..offer.chunks())
            .map(|index| {
                let len = offer.chunk_len(index).expect("in range");
                offer.seal(index, &vec![index as u8; len]).expect("seal")
            })
            .collect();
        offer.chunk_digests = chunks.iter().map(|c| FileOffer::digest(c)).collect();

        Fixture {
            bob_identity,
            bob_signed,
            bob_one_time,
            bob_session: responded.session.to_bytes().to_vec(),
            first_message: first.encode().to_vec(),
            later_messages,
            ca,
            crl,
            alice: Username::new("alice").expect("a username"),
            now,
            offer,
            chunks,
        }
    }
}
