//! Search over a node's stored history: 100,000 messages in sled (as a daemon keeps them, with
//! its word index), and the same in the in-memory store (a scan), searched for a word that ten of them hold, a word none holds,
//! and a word thousands hold.
//!
//! `cargo bench -p peerchat --bench search` (environment: `MESSAGES`, default 100000)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::Criterion;
use peerchat::domain::MessageId;
use peerchat::domain::search::Query;
use peerchat::driven::memory::MemoryStore;
use peerchat::driven::sled_store::SledStore;
use peerchat::driven::store_key::StoreKey;
use peerchat::ports::{
    Batch, Direction, IfStored, MessageStatus, MessageStore, Store, StoredMessage, Write,
};
use peerchat_pki::Username;
use rand::SeedableRng;

/// Writes `n` messages from 50 people: every 10,000th mentions "quarterly", every 20th "lunch".
fn fill(store: &impl Store, n: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let people: Vec<Username> = (0..50)
        .map(|i| Username::new(format!("person{i}")).unwrap())
        .collect();
    for chunk in (0..n).step_by(1000) {
        let mut batch = Batch::new();
        for i in chunk..(chunk + 1000).min(n) {
            let text = match i {
                i if i % 10_000 == 0 => format!("the quarterly numbers, part {i}"),
                i if i % 20 == 0 => format!("lunch at noon? ({i})"),
                i => format!("message {i}: a few words about nothing in particular, as chats go"),
            };
            let m = StoredMessage::direct(
                MessageId::random(&mut rng),
                people[(i % 50) as usize].clone(),
                if i % 2 == 0 {
                    Direction::Incoming
                } else {
                    Direction::Outgoing
                },
                text,
                1_600_000_000_000 + i,
                MessageStatus::Read,
            );
            batch.push(Write::Message(m, IfStored::Skip));
        }
        store.commit(&batch).unwrap();
    }
}

fn main() {
    let n: u64 = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path(), &StoreKey::from_bytes([7; 32])).unwrap();
    let started = std::time::Instant::now();
    fill(&sled, n);
    println!(
        "writing {n} messages into sled (with the index) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let memory = MemoryStore::default();
    fill(&memory, n);
    let mut c = Criterion::default().configure_from_args().sample_size(20);
    for (word, what) in [
        ("QUARTERLY", "10 hits"),
        ("breakfast", "no hit"),
        ("lunch", "5,000 hits, 100 returned"),
    ] {
        let query = Query::parse(word).unwrap();
        c.bench_function(&format!("search {n} in sled, {what}"), |b| {
            b.iter(|| black_box(sled.search(black_box(&query), 100).unwrap()))
        });
        c.bench_function(&format!("search {n} in memory, {what}"), |b| {
            b.iter(|| black_box(memory.search(black_box(&query), 100).unwrap()))
        });
    }
    c.final_summary();
}
