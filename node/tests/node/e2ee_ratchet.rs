use peerchat::domain::ratchet::{MAX_SKIP, MAX_SKIPPED_KEYS};
use peerchat::domain::{
    DecryptError, IdentityKeyPair, Message, OneTimePreKeyPair, PreKeyId, Session, SessionError,
    SignedPreKeyPair,
};

use crate::support::{User, established, rng, wire};

#[test]
fn a_conversation_flows_both_ways_with_new_dh_steps() {
    let (mut a, mut b, mut rng) = established(10);
    for round in 0..5 {
        for i in 0..3 {
            let text = format!("a{round}.{i}");
            let m = wire(&a.encrypt(text.as_bytes()).unwrap());
            assert_eq!(b.decrypt(&m, &mut rng).unwrap(), text.as_bytes());
        }
        let text = format!("b{round}");
        let m = wire(&b.encrypt(text.as_bytes()).unwrap());
        assert_eq!(a.decrypt(&m, &mut rng).unwrap(), text.as_bytes());
    }
}

#[test]
fn first_messages_carry_the_x3dh_header_until_the_first_reply() {
    let (mut a, mut b, mut rng) = established(11);
    let second = a.encrypt(b"2").unwrap();
    assert!(
        second.prekey().is_some(),
        "Bob may not have received the first one"
    );
    assert_eq!(b.decrypt(&wire(&second), &mut rng).unwrap(), b"2");
    let reply = b.encrypt(b"r").unwrap();
    a.decrypt(&wire(&reply), &mut rng).unwrap();
    assert!(a.encrypt(b"3").unwrap().prekey().is_none());
}

#[test]
fn out_of_order_messages_decrypt_exactly_once() {
    let (mut a, mut b, mut rng) = established(12);
    let msgs: Vec<Message> = (0..6).map(|i| wire(&a.encrypt(&[i]).unwrap())).collect();
    for &i in &[4usize, 0, 5, 2, 1, 3] {
        assert_eq!(b.decrypt(&msgs[i], &mut rng).unwrap(), [i as u8]);
    }
    for m in &msgs {
        assert_eq!(b.decrypt(m, &mut rng), Err(DecryptError::Duplicate));
    }
}

#[test]
fn a_late_message_from_a_previous_chain_still_decrypts() {
    let (mut a, mut b, mut rng) = established(13);
    let late = wire(&a.encrypt(b"late").unwrap());
    let on_time = wire(&a.encrypt(b"on time").unwrap());
    b.decrypt(&on_time, &mut rng).unwrap();
    // Two DH steps happen before the late message arrives.
    let r = wire(&b.encrypt(b"r").unwrap());
    a.decrypt(&r, &mut rng).unwrap();
    let n = wire(&a.encrypt(b"n").unwrap());
    b.decrypt(&n, &mut rng).unwrap();
    assert_eq!(b.decrypt(&late, &mut rng).unwrap(), b"late");
    assert_eq!(b.decrypt(&late, &mut rng), Err(DecryptError::Duplicate));
}

#[test]
fn a_replayed_message_is_rejected_and_changes_nothing() {
    let (mut a, mut b, mut rng) = established(14);
    let m = wire(&a.encrypt(b"once").unwrap());
    b.decrypt(&m, &mut rng).unwrap();
    let before = b.to_bytes();
    assert_eq!(b.decrypt(&m, &mut rng), Err(DecryptError::Duplicate));
    assert_eq!(b.to_bytes(), before);
}

#[test]
fn tampering_anywhere_is_rejected_and_leaves_the_state_unchanged() {
    let (mut a, mut b, mut rng) = established(15);
    let reply = wire(&b.encrypt(b"turn the ratchet").unwrap());
    a.decrypt(&reply, &mut rng).unwrap();
    let genuine = a.encrypt(b"the genuine message").unwrap();
    let bytes = genuine.encode().to_vec();
    let before = b.to_bytes();
    // Flip one bit in every byte position: header and ciphertext alike.
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x04;
        if let Ok(m) = Message::decode(&bad) {
            assert!(
                b.decrypt(&m, &mut rng).is_err(),
                "byte {at} flipped was accepted"
            );
        }
        assert_eq!(
            b.to_bytes(),
            before,
            "byte {at} flipped changed the session"
        );
    }
    assert_eq!(
        b.decrypt(&wire(&genuine), &mut rng).unwrap(),
        b"the genuine message"
    );
}

#[test]
fn a_gap_beyond_max_skip_is_rejected_without_harm() {
    let (mut a, mut b, mut rng) = established(16);
    let msgs: Vec<Message> = (0..=MAX_SKIP + 1)
        .map(|i| wire(&a.encrypt(&i.to_be_bytes()).unwrap()))
        .collect();
    let before = b.to_bytes();
    // The last one needs MAX_SKIP + 1 skipped keys in the current chain.
    assert_eq!(
        b.decrypt(msgs.last().unwrap(), &mut rng),
        Err(DecryptError::TooFarAhead)
    );
    assert_eq!(b.to_bytes(), before);
    // Exactly MAX_SKIP is fine, and so are the rest, in any order.
    assert!(b.decrypt(&msgs[MAX_SKIP as usize], &mut rng).is_ok());
    assert!(b.decrypt(msgs.last().unwrap(), &mut rng).is_ok());
    assert!(b.decrypt(&msgs[3], &mut rng).is_ok());
}

#[test]
fn a_gap_beyond_max_skip_across_a_dh_step_is_rejected() {
    let (mut a, mut b, mut rng) = established(17);
    // Alice sends many on her current chain, Bob sees none, then Alice starts a new chain.
    for i in 0..=MAX_SKIP + 1 {
        a.encrypt(&i.to_be_bytes()).unwrap();
    }
    let r = wire(&b.encrypt(b"r").unwrap());
    a.decrypt(&r, &mut rng).unwrap();
    let next_chain = wire(&a.encrypt(b"next").unwrap());
    let before = b.to_bytes();
    assert_eq!(
        b.decrypt(&next_chain, &mut rng),
        Err(DecryptError::TooFarAhead)
    );
    assert_eq!(b.to_bytes(), before);
}

#[test]
fn skipped_keys_are_capped_and_the_oldest_forgotten() {
    let (mut a, mut b, mut rng) = established(18);
    let mut first_of_each_chain = Vec::new();
    // Three chains, each skipping MAX_SKIP keys: 3 000 > MAX_SKIPPED_KEYS.
    for _ in 0..3 {
        let msgs: Vec<Message> = (0..=MAX_SKIP)
            .map(|i| wire(&a.encrypt(&i.to_be_bytes()).unwrap()))
            .collect();
        b.decrypt(msgs.last().unwrap(), &mut rng).unwrap();
        first_of_each_chain.push(msgs[1].clone());
        let r = wire(&b.encrypt(b"r").unwrap());
        a.decrypt(&r, &mut rng).unwrap();
    }
    assert!(3 * MAX_SKIP as usize > MAX_SKIPPED_KEYS);
    assert_eq!(
        b.decrypt(&first_of_each_chain[0], &mut rng),
        Err(DecryptError::Duplicate)
    );
    assert!(b.decrypt(&first_of_each_chain[2], &mut rng).is_ok());
}

#[test]
fn a_session_saved_and_restored_mid_conversation_keeps_working() {
    let (mut a, mut b, mut rng) = established(19);
    let held_back = wire(&a.encrypt(b"held back").unwrap());
    let m = wire(&a.encrypt(b"delivered").unwrap());
    b.decrypt(&m, &mut rng).unwrap();

    let mut a = Session::from_bytes(&a.to_bytes()).unwrap();
    let mut b = Session::from_bytes(&b.to_bytes()).unwrap();

    assert_eq!(
        b.decrypt(&held_back, &mut rng).unwrap(),
        b"held back",
        "skipped keys survive"
    );
    let r = wire(&b.encrypt(b"reply").unwrap());
    assert_eq!(a.decrypt(&r, &mut rng).unwrap(), b"reply");
    let m = wire(&a.encrypt(b"after restore").unwrap());
    assert_eq!(b.decrypt(&m, &mut rng).unwrap(), b"after restore");

    assert_eq!(
        Session::from_bytes(b"garbage").unwrap_err(),
        SessionError::Corrupt
    );
    let mut future = b.to_bytes().to_vec();
    future[0] = 99;
    assert_eq!(
        Session::from_bytes(&future).unwrap_err(),
        SessionError::Corrupt
    );
    let mut trailing = b.to_bytes().to_vec();
    trailing.push(0);
    assert_eq!(
        Session::from_bytes(&trailing).unwrap_err(),
        SessionError::Corrupt
    );
}

#[test]
fn a_session_stored_without_its_public_ratchet_key_still_restores() {
    // Sessions stored before the public ratchet key followed the state: the state alone.
    let (mut a, mut b, mut rng) = established(23);
    let m = wire(&a.encrypt(b"before").unwrap());
    b.decrypt(&m, &mut rng).unwrap();
    let (a_bytes, b_bytes) = (a.to_bytes(), b.to_bytes());
    let mut a = Session::from_bytes(&a_bytes[..a_bytes.len() - 32]).unwrap();
    let mut b = Session::from_bytes(&b_bytes[..b_bytes.len() - 32]).unwrap();
    // Restored either way, the key in the headers is the same: the conversation goes on.
    assert_eq!(a.to_bytes(), a_bytes);
    let r = wire(&b.encrypt(b"reply").unwrap());
    assert_eq!(a.decrypt(&r, &mut rng).unwrap(), b"reply");
    let m = wire(&a.encrypt(b"after").unwrap());
    assert_eq!(b.decrypt(&m, &mut rng).unwrap(), b"after");
}

#[test]
fn a_message_for_another_session_is_refused() {
    let mut rng = rng(20);
    let (alice, bob) = (User::new(&mut rng), User::new(&mut rng));
    let mut a1 = Session::initiate(&alice.identity, &bob.bundle(false), &mut rng).unwrap();
    let mut a2 = Session::initiate(&alice.identity, &bob.bundle(false), &mut rng).unwrap();
    let m1 = wire(&a1.encrypt(b"1").unwrap());
    let m2 = wire(&a2.encrypt(b"2").unwrap());
    let mut b = bob.respond(&m1, &mut rng).unwrap().session;
    assert!(!b.belongs_to(&m2));
    assert_eq!(b.decrypt(&m2, &mut rng), Err(DecryptError::WrongSession));
    // ...and it can start its own session.
    assert_eq!(bob.respond(&m2, &mut rng).unwrap().plaintext, b"2");
}

#[test]
fn debug_output_never_shows_secrets() {
    let mut rng = rng(21);
    let identity = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKeyPair::generate(PreKeyId(1), &identity, &mut rng);
    let opk = OneTimePreKeyPair::generate(PreKeyId(2), &mut rng);
    let (a, _b, _) = established(22);

    let seed = identity.to_seed();
    let spk_state = postcard::to_stdvec(&spk).unwrap();
    let opk_state = postcard::to_stdvec(&opk).unwrap();
    let session_state = a.to_bytes();
    let shown = [
        format!("{identity:?}"),
        format!("{spk:?}"),
        format!("{opk:?}"),
        format!("{a:?}"),
    ];

    let secrets: Vec<&[u8]> = vec![
        &seed[..],
        &spk_state[1..33],
        &opk_state[1..33],
        &session_state[..],
    ];
    for text in &shown {
        for secret in &secrets {
            for window in secret.windows(6) {
                let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
                assert!(!text.contains(&hex), "{text} shows {hex}");
                let dec = format!("{window:?}");
                assert!(!text.contains(&dec[1..dec.len() - 1]), "{text} shows {dec}");
            }
        }
    }
}
