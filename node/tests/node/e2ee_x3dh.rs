use peerchat::domain::{Message, PreKeyId, Session, SessionError, SignedPreKeyPair, X3dhError};

use crate::support::{User, rng, wire};

#[test]
fn given_a_bundle_with_a_one_time_prekey_when_both_run_x3dh_then_they_share_a_session() {
    let mut rng = rng(1);
    let (alice, bob) = (User::new(&mut rng), User::new(&mut rng));

    let mut a = Session::initiate(&alice.identity, &bob.bundle(true), &mut rng).unwrap();
    let first = wire(&a.encrypt(b"hi").unwrap());
    let header = *first
        .prekey()
        .expect("the first message carries the X3DH header");
    assert_eq!(header.identity, *alice.identity.public());
    assert_eq!(header.signed_prekey_id, PreKeyId(1));
    assert_eq!(header.one_time_prekey_id, Some(PreKeyId(100)));

    let responded = bob.respond(&first, &mut rng).unwrap();
    assert_eq!(responded.plaintext, b"hi");
    assert_eq!(responded.consumed_one_time_prekey, Some(PreKeyId(100)));
    assert_eq!(responded.session.remote_identity(), alice.identity.public());

    let mut b = responded.session;
    let reply = wire(&b.encrypt(b"hello alice").unwrap());
    assert!(reply.prekey().is_none());
    assert_eq!(a.decrypt(&reply, &mut rng).unwrap(), b"hello alice");
}

#[test]
fn given_a_bundle_without_one_time_prekey_then_x3dh_still_agrees() {
    let mut rng = rng(2);
    let (alice, bob) = (User::new(&mut rng), User::new(&mut rng));
    let mut a = Session::initiate(&alice.identity, &bob.bundle(false), &mut rng).unwrap();
    let first = wire(&a.encrypt(b"no opk").unwrap());
    assert_eq!(first.prekey().unwrap().one_time_prekey_id, None);
    let responded = bob.respond(&first, &mut rng).unwrap();
    assert_eq!(responded.plaintext, b"no opk");
    assert_eq!(responded.consumed_one_time_prekey, None);
}

#[test]
fn a_bundle_whose_signed_prekey_signature_is_wrong_is_refused() {
    let mut rng = rng(3);
    let (alice, bob, eve) = (
        User::new(&mut rng),
        User::new(&mut rng),
        User::new(&mut rng),
    );

    // Eve's signed prekey presented as Bob's.
    let mut forged = bob.bundle(true);
    forged.signed_prekey = eve.signed_prekey.public();
    assert_eq!(
        Session::initiate(&alice.identity, &forged, &mut rng).unwrap_err(),
        SessionError::X3dh(X3dhError::BadSignedPreKeySignature)
    );

    // Bob's prekey, a signature bit flipped.
    let mut flipped = bob.bundle(true);
    let mut sig = flipped.signed_prekey.signature.to_bytes();
    sig[10] ^= 1;
    flipped.signed_prekey.signature = ed25519_dalek::Signature::from_bytes(&sig);
    assert!(Session::initiate(&alice.identity, &flipped, &mut rng).is_err());
}

#[test]
fn a_mismatched_identity_key_yields_no_session() {
    let mut rng = rng(4);
    let (alice, bob, mallory) = (
        User::new(&mut rng),
        User::new(&mut rng),
        User::new(&mut rng),
    );

    // Alice encrypts to a bundle that names Mallory's identity with Bob's prekeys signed by
    // Mallory: Bob, whose identity differs, cannot accept it.
    let bundle = peerchat::domain::PreKeyBundle {
        identity: *mallory.identity.public(),
        signed_prekey: SignedPreKeyPair::generate(PreKeyId(1), &mallory.identity, &mut rng)
            .public(),
        one_time_prekey: None,
    };
    let mut a = Session::initiate(&alice.identity, &bundle, &mut rng).unwrap();
    let first = wire(&a.encrypt(b"for mallory?").unwrap());
    assert!(matches!(
        bob.respond(&first, &mut rng),
        Err(SessionError::Decrypt(_))
    ));

    // A genuine message for Bob, accepted with the wrong identity key on Bob's side.
    let mut a = Session::initiate(&alice.identity, &bob.bundle(false), &mut rng).unwrap();
    let first = wire(&a.encrypt(b"for bob").unwrap());
    let wrong = Session::respond(
        &mallory.identity,
        &bob.signed_prekey,
        None,
        &first,
        &mut rng,
    );
    assert!(matches!(wrong, Err(SessionError::Decrypt(_))), "{wrong:?}");
}

#[test]
fn the_responder_needs_the_prekeys_the_message_names() {
    let mut rng = rng(5);
    let (alice, bob) = (User::new(&mut rng), User::new(&mut rng));
    let mut a = Session::initiate(&alice.identity, &bob.bundle(true), &mut rng).unwrap();
    let first = wire(&a.encrypt(b"x").unwrap());

    // The one-time prekey is gone (already consumed).
    assert_eq!(
        Session::respond(&bob.identity, &bob.signed_prekey, None, &first, &mut rng).unwrap_err(),
        SessionError::X3dh(X3dhError::OneTimePreKeyMissing)
    );
    // Another one-time prekey is supplied.
    let other = &bob.one_time_prekeys[1];
    assert_eq!(
        Session::respond(
            &bob.identity,
            &bob.signed_prekey,
            Some(other),
            &first,
            &mut rng
        )
        .unwrap_err(),
        SessionError::X3dh(X3dhError::OneTimePreKeyMissing)
    );
    // A rotated signed prekey.
    let rotated = SignedPreKeyPair::generate(PreKeyId(2), &bob.identity, &mut rng);
    assert!(matches!(
        Session::respond(
            &bob.identity,
            &rotated,
            bob.one_time(Some(PreKeyId(100))),
            &first,
            &mut rng
        ),
        Err(SessionError::X3dh(X3dhError::SignedPreKeyMismatch {
            wanted: 1
        }))
    ));
    // A message without X3DH header cannot start a session.
    let mut b = bob.respond(&first, &mut rng).unwrap().session;
    let reply = wire(&b.encrypt(b"y").unwrap());
    assert_eq!(
        Session::respond(
            &alice.identity,
            &alice.signed_prekey,
            None,
            &reply,
            &mut rng
        )
        .unwrap_err(),
        SessionError::NotAnInitialMessage
    );
}

#[test]
fn a_low_order_ephemeral_key_is_refused() {
    let mut rng = rng(6);
    let (alice, bob) = (User::new(&mut rng), User::new(&mut rng));
    let mut a = Session::initiate(&alice.identity, &bob.bundle(false), &mut rng).unwrap();
    let mut bytes = a.encrypt(b"x").unwrap().encode().to_vec();
    // version, kind, IK_A (32), then EK_A (32): the zero point is of low order.
    bytes[34..66].fill(0);
    let message = Message::decode(&bytes).unwrap();
    assert_eq!(
        bob.respond(&message, &mut rng).unwrap_err(),
        SessionError::X3dh(X3dhError::NonContributory)
    );
}

#[test]
fn signed_prekeys_verify_under_the_rendezvous_wire_format() {
    // The rendezvous checks uploaded signed prekeys with its own copy of the signed encoding.
    use ed25519_dalek::Verifier;
    let mut rng = rng(7);
    let bob = User::new(&mut rng);
    let spk = SignedPreKeyPair::generate(PreKeyId(42), &bob.identity, &mut rng).public();
    let message = peerchat_rendezvous::api::signed_prekey_message(spk.id.0, spk.public.as_bytes());
    bob.identity
        .public()
        .verifying_key()
        .verify(&message, &spk.signature)
        .unwrap();
}
