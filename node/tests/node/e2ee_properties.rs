//! Property tests: random two-way conversations over a network that reorders, duplicates and
//! loses messages.

use peerchat::domain::ratchet::MAX_SKIP;
use peerchat::domain::{DecryptError, Message, Session};
use proptest::prelude::*;
use rand::rngs::StdRng;

use crate::support::{User, established, rng, wire};

#[derive(Debug, Clone)]
enum Op {
    /// Alice (false) or Bob (true) sends a new message.
    Send(bool),
    /// Deliver one in-flight message to Alice (false) or Bob (true), chosen by the index.
    Deliver(bool, usize),
    /// Deliver again one message that the side already received.
    Replay(bool, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(Op::Send),
        3 => (any::<bool>(), any::<usize>()).prop_map(|(s, i)| Op::Deliver(s, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(s, i)| Op::Replay(s, i)),
    ]
}

struct Side {
    session: Option<Session>,
    /// Messages on their way to this side, with the plaintext they must decrypt to.
    inbox: Vec<(Message, Vec<u8>)>,
    received: Vec<Message>,
}

fn run(seed: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut rng: StdRng = rng(seed);
    let alice_user = User::new(&mut rng);
    let bob_user = User::new(&mut rng);
    let mut sides = [
        Side {
            session: Some(
                Session::initiate(&alice_user.identity, &bob_user.bundle(true), &mut rng).unwrap(),
            ),
            inbox: vec![],
            received: vec![],
        },
        Side {
            session: None,
            inbox: vec![],
            received: vec![],
        },
    ];
    let mut counter = 0u32;
    for op in ops {
        match *op {
            Op::Send(from_bob) => {
                let (from, to) = if from_bob { (1, 0) } else { (0, 1) };
                let Some(session) = sides[from].session.as_mut() else {
                    continue;
                };
                counter += 1;
                let text = format!("{from}:{counter}").into_bytes();
                let m = wire(&session.encrypt(&text).unwrap());
                sides[to].inbox.push((m, text));
            }
            Op::Deliver(to_bob, i) => {
                let to = usize::from(to_bob);
                if sides[to].inbox.is_empty() {
                    continue;
                }
                let (m, text) = sides[to].inbox.remove(i % sides[to].inbox.len());
                let plaintext = match sides[to].session.as_mut() {
                    Some(session) => session.decrypt(&m, &mut rng),
                    None => {
                        let responded = bob_user.respond(&m, &mut rng).unwrap();
                        sides[to].session = Some(responded.session);
                        Ok(responded.plaintext)
                    }
                };
                prop_assert_eq!(plaintext.unwrap(), text);
                sides[to].received.push(m);
            }
            Op::Replay(to_bob, i) => {
                let to = usize::from(to_bob);
                if sides[to].received.is_empty() {
                    continue;
                }
                let m = sides[to].received[i % sides[to].received.len()].clone();
                let session = sides[to].session.as_mut().unwrap();
                let before = session.to_bytes();
                prop_assert_eq!(session.decrypt(&m, &mut rng), Err(DecryptError::Duplicate));
                prop_assert_eq!(session.to_bytes(), before);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Every delivered message decrypts exactly once to what was sent; every replay is refused
    /// and changes nothing; lost messages harm nothing that follows.
    #[test]
    fn every_delivered_message_decrypts_exactly_once(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..160)) {
        run(seed, &ops)?;
    }

    /// A single flipped bit anywhere in a message is refused without changing the session, and
    /// the genuine message still decrypts afterwards.
    #[test]
    fn a_flipped_bit_is_rejected_and_the_next_genuine_message_decrypts(
        seed in any::<u64>(),
        warmup in 0usize..6,
        from_bob in any::<bool>(),
        bit in any::<usize>(),
    ) {
        let (mut a, mut b, mut rng) = established(seed);
        for i in 0..warmup {
            let (s, r) = if i % 2 == 0 { (&mut b, &mut a) } else { (&mut a, &mut b) };
            let m = wire(&s.encrypt(b"warm").unwrap());
            r.decrypt(&m, &mut rng).unwrap();
        }
        let (sender, receiver) = if from_bob { (&mut b, &mut a) } else { (&mut a, &mut b) };
        let genuine = sender.encrypt(b"genuine").unwrap();
        let mut bytes = genuine.encode().to_vec();
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let before = receiver.to_bytes();
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert!(receiver.decrypt(&m, &mut rng).is_err());
        }
        prop_assert_eq!(receiver.to_bytes(), before);
        prop_assert_eq!(receiver.decrypt(&wire(&genuine), &mut rng).unwrap(), b"genuine".to_vec());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// A message more than MAX_SKIP ahead is refused, the session is unchanged, and the
    /// conversation continues with the messages in between.
    #[test]
    fn a_gap_beyond_max_skip_is_rejected_without_harm(seed in any::<u64>(), extra in 1u32..40, from_bob in any::<bool>()) {
        let (mut a, mut b, mut rng) = established(seed);
        let (sender, receiver) = if from_bob { (&mut b, &mut a) } else { (&mut a, &mut b) };
        let msgs: Vec<Message> = (0..=MAX_SKIP + extra).map(|i| wire(&sender.encrypt(&i.to_be_bytes()).unwrap())).collect();
        let before = receiver.to_bytes();
        prop_assert_eq!(receiver.decrypt(msgs.last().unwrap(), &mut rng), Err(DecryptError::TooFarAhead));
        prop_assert_eq!(receiver.to_bytes(), before);
        // Once the receiver has caught up past the gap, everything decrypts, old ones from skipped keys.
        prop_assert_eq!(receiver.decrypt(&msgs[extra as usize], &mut rng).unwrap(), extra.to_be_bytes().to_vec());
        prop_assert!(receiver.decrypt(msgs.last().unwrap(), &mut rng).is_ok());
        prop_assert_eq!(receiver.decrypt(&msgs[0], &mut rng).unwrap(), 0u32.to_be_bytes().to_vec());
    }
}
