//! peerchat's X3DH + Double Ratchet side by side with vodozemac (Matrix's audited Olm), in one run.
//!
//! `cargo bench -p peerchat --bench e2ee`
//!
//! - `establish`: the initiator builds a session and encrypts a first 100-byte message; the
//!   responder builds its session from it and decrypts (prekeys generated beforehand, untimed).
//! - `steady`: encrypt + decrypt of a 100-byte message in an established session, same direction
//!   (no DH ratchet step).
//! - `ping_pong`: one message each way; every receive performs a DH ratchet step. Reported per
//!   message (half a round trip).
//!
//! After criterion's own report, a table prints both medians and peerchat/vodozemac per operation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BatchSize, Criterion};
use peerchat::domain::{
    IdentityKeyPair, Message, OneTimePreKeyPair, PreKeyBundle, PreKeyId, Session, SignedPreKeyPair,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use vodozemac::olm::{Account, OlmMessage, Session as OlmSession, SessionConfig};

const PAYLOAD: [u8; 100] = [0x42; 100];

fn peerchat_pair(rng: &mut StdRng) -> (Session, Session) {
    let alice = IdentityKeyPair::generate(rng);
    let bob = IdentityKeyPair::generate(rng);
    let spk = SignedPreKeyPair::generate(PreKeyId(1), &bob, rng);
    let opk = OneTimePreKeyPair::generate(PreKeyId(2), rng);
    let bundle = PreKeyBundle {
        identity: *bob.public(),
        signed_prekey: spk.public(),
        one_time_prekey: Some(opk.public()),
    };
    let mut a = Session::initiate(&alice, &bundle, rng).unwrap();
    let m = Message::decode(a.encrypt(&PAYLOAD).unwrap().encode()).unwrap();
    let mut b = Session::respond(&bob, &spk, Some(&opk), &m, rng)
        .unwrap()
        .session;
    // One round trip, so both sides are past the initial messages.
    let r = Message::decode(b.encrypt(&PAYLOAD).unwrap().encode()).unwrap();
    a.decrypt(&r, rng).unwrap();
    (a, b)
}

fn olm_pair() -> (OlmSession, OlmSession) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let mut a = alice
        .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
        .unwrap();
    let OlmMessage::PreKey(m) = a.encrypt(PAYLOAD).unwrap() else {
        unreachable!()
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &m)
        .unwrap()
        .session;
    let r = b.encrypt(PAYLOAD).unwrap();
    a.decrypt(&r).unwrap();
    (a, b)
}

fn establish(c: &mut Criterion) {
    let mut group = c.benchmark_group("establish");
    let mut rng = StdRng::seed_from_u64(1);
    let alice = IdentityKeyPair::generate(&mut rng);
    let bob = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKeyPair::generate(PreKeyId(1), &bob, &mut rng);
    group.bench_function("peerchat", |b| {
        b.iter_batched(
            || OneTimePreKeyPair::generate(PreKeyId(2), &mut StdRng::seed_from_u64(2)),
            |opk| {
                let bundle = PreKeyBundle {
                    identity: *bob.public(),
                    signed_prekey: spk.public(),
                    one_time_prekey: Some(opk.public()),
                };
                let mut a = Session::initiate(&alice, &bundle, &mut rng).unwrap();
                let wire = a.encrypt(&PAYLOAD).unwrap().encode().to_vec();
                let m = Message::decode(&wire).unwrap();
                black_box(Session::respond(&bob, &spk, Some(&opk), &m, &mut rng).unwrap())
            },
            BatchSize::SmallInput,
        )
    });
    let olm_alice = Account::new();
    group.bench_function("vodozemac", |b| {
        b.iter_batched(
            || {
                let mut bob = Account::new();
                bob.generate_one_time_keys(1);
                let otk = *bob.one_time_keys().values().next().unwrap();
                bob.mark_keys_as_published();
                (bob, otk)
            },
            |(mut bob, otk)| {
                let mut a = olm_alice
                    .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
                    .unwrap();
                let m = a.encrypt(PAYLOAD).unwrap();
                let OlmMessage::PreKey(m) =
                    OlmMessage::from_parts(m.to_parts().0, &m.to_parts().1).unwrap()
                else {
                    unreachable!()
                };
                black_box(
                    bob.create_inbound_session(
                        SessionConfig::version_1(),
                        olm_alice.curve25519_key(),
                        &m,
                    )
                    .unwrap(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn steady(c: &mut Criterion) {
    let mut group = c.benchmark_group("steady");
    let mut rng = StdRng::seed_from_u64(3);
    let (mut a, mut b) = peerchat_pair(&mut rng);
    group.bench_function("peerchat", |bench| {
        bench.iter(|| {
            let wire = a.encrypt(black_box(&PAYLOAD)).unwrap().encode().to_vec();
            let m = Message::decode(&wire).unwrap();
            black_box(b.decrypt(&m, &mut rng).unwrap())
        })
    });
    let (mut oa, mut ob) = olm_pair();
    group.bench_function("vodozemac", |bench| {
        bench.iter(|| {
            let m = oa.encrypt(black_box(PAYLOAD)).unwrap();
            let (t, bytes) = m.to_parts();
            let m = OlmMessage::from_parts(t, &bytes).unwrap();
            black_box(ob.decrypt(&m).unwrap())
        })
    });
    group.finish();
}

fn ping_pong(c: &mut Criterion) {
    let mut group = c.benchmark_group("ping_pong");
    let mut rng = StdRng::seed_from_u64(4);
    let (mut a, mut b) = peerchat_pair(&mut rng);
    group.bench_function("peerchat", |bench| {
        bench.iter(|| {
            let m = Message::decode(a.encrypt(&PAYLOAD).unwrap().encode()).unwrap();
            black_box(b.decrypt(&m, &mut rng).unwrap());
            let m = Message::decode(b.encrypt(&PAYLOAD).unwrap().encode()).unwrap();
            black_box(a.decrypt(&m, &mut rng).unwrap())
        })
    });
    let (mut oa, mut ob) = olm_pair();
    group.bench_function("vodozemac", |bench| {
        bench.iter(|| {
            let (t, bytes) = oa.encrypt(PAYLOAD).unwrap().to_parts();
            black_box(
                ob.decrypt(&OlmMessage::from_parts(t, &bytes).unwrap())
                    .unwrap(),
            );
            let (t, bytes) = ob.encrypt(PAYLOAD).unwrap().to_parts();
            black_box(
                oa.decrypt(&OlmMessage::from_parts(t, &bytes).unwrap())
                    .unwrap(),
            )
        })
    });
    group.finish();
}

fn output_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("criterion-e2ee")
}

/// Median of one benchmark in nanoseconds, from criterion's saved estimates.
fn median_ns(group: &str, function: &str) -> Option<f64> {
    let path = output_dir()
        .join(group)
        .join(function)
        .join("new")
        .join("estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_table() {
    println!();
    println!("| operation | peerchat | vodozemac | peerchat / vodozemac |");
    println!("|---|---|---|---|");
    for (group, label, per) in [
        (
            "establish",
            "session establishment (both sides, first message)",
            1.0,
        ),
        ("steady", "encrypt + decrypt, 100 B, same chain", 1.0),
        (
            "ping_pong",
            "encrypt + decrypt with a DH ratchet step, per message",
            2.0,
        ),
    ] {
        let (Some(p), Some(v)) = (median_ns(group, "peerchat"), median_ns(group, "vodozemac"))
        else {
            println!("| {label} | (no saved estimate: run `cargo bench`) | | |");
            continue;
        };
        println!(
            "| {label} | {:.2} µs | {:.2} µs | {:.2}× |",
            p / per / 1e3,
            v / per / 1e3,
            p / v
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(&output_dir())
        .configure_from_args();
    establish(&mut c);
    steady(&mut c);
    ping_pong(&mut c);
    c.final_summary();
    print_table();
}
