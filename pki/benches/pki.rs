//! Certificates issued per second and verified per second.
//!
//! `cargo bench -p peerchat-pki --bench pki`

#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use peerchat_pki::{
    CertificateAuthority, DEFAULT_PEER_VALIDITY, RevokedEntry, Serial, Username, build_csr, verify,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let now = SystemTime::now();
    let ca = CertificateAuthority::generate("bench CA", now, &mut rng).expect("CA");
    let alice = Username::new("alice").expect("username");
    let key = SigningKey::generate(&mut rng);
    let csr = build_csr(&key, &alice).expect("csr");
    let cert = ca
        .issue_peer(&csr, &alice, now, DEFAULT_PEER_VALIDITY, &mut rng)
        .expect("issue");
    // A CRL of realistic size: 1,000 revoked serials, none of them ours.
    let revoked: Vec<RevokedEntry> = (0..1000)
        .map(|_| RevokedEntry {
            serial: Serial::random(&mut rng),
            revoked_at: now,
        })
        .collect();
    let crl = ca
        .sign_crl(&revoked, 1, now, now + DEFAULT_PEER_VALIDITY)
        .expect("crl");

    let mut group = c.benchmark_group("pki");
    group.throughput(Throughput::Elements(1));
    group.bench_function("build_csr", |b| {
        b.iter(|| build_csr(black_box(&key), &alice))
    });
    group.bench_function("issue_peer_certificate", |b| {
        b.iter(|| {
            ca.issue_peer(
                black_box(&csr),
                &alice,
                now,
                DEFAULT_PEER_VALIDITY,
                &mut rng,
            )
        })
    });
    let chain = [cert.der.clone()];
    group.bench_function("verify_without_crl", |b| {
        b.iter(|| verify(black_box(&chain), ca.certificate(), None, now))
    });
    group.bench_function("verify_with_1000_entry_crl", |b| {
        b.iter(|| verify(black_box(&chain), ca.certificate(), Some(&crl), now))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
