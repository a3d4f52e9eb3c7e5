//! Parked files on the service: owner and readers only, the per-file limit and the quota,
//! deletion once every reader acknowledged, expiry after its time, bad input refused.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use peerchat_pki::{CertificateAuthority, Username};
use peerchat_rendezvous::clock::ManualClock;
use peerchat_rendezvous::limits::Limits;
use peerchat_rendezvous::memory_store::MemoryStore;
use peerchat_rendezvous::service::blobs::BlobSpec;
use peerchat_rendezvous::service::{Caller, Rendezvous, ServiceError};
use rand::rngs::OsRng;

use crate::support::test_limits;

const ID: &str = "0123456789abcdef0123456789abcdef";

fn caller(name: &str) -> Caller {
    Caller {
        username: Username::new(name).unwrap(),
        serial: "01".parse().unwrap(),
        identity_key: ed25519_dalek::SigningKey::generate(&mut OsRng).verifying_key(),
    }
}

/// Runs `f` to completion (the memory store's futures never wait).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn readers(names: &[&str]) -> BTreeSet<Username> {
    names.iter().map(|n| Username::new(*n).unwrap()).collect()
}

fn service(dir: &std::path::Path, limits: Limits) -> (Rendezvous<MemoryStore>, Arc<ManualClock>) {
    let now = SystemTime::now();
    let clock = Arc::new(ManualClock::new(now));
    let ca = CertificateAuthority::generate("t", now, &mut OsRng).unwrap();
    let service = block_on(Rendezvous::with_clock(
        MemoryStore::default(),
        ca,
        limits,
        clock.clone(),
    ))
    .unwrap()
    .with_blobs(dir.join("blobs"));
    (service, clock)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
            .sum()
    })
}

#[test]
fn a_parked_file_is_read_by_its_readers_only_and_deleted_once_all_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let (service, _) = service(tmp.path(), test_limits());
    let (alice, bob, carol, eve) = (
        caller("alice"),
        caller("bob"),
        caller("carol"),
        caller("eve"),
    );
    let spec = BlobSpec {
        size: 10,
        chunks: 2,
        readers: readers(&["bob", "carol"]),
    };
    service.park(&alice, ID, spec.clone()).unwrap();
    service.park(&alice, ID, spec.clone()).unwrap();
    assert!(
        matches!(
            service.park(&eve, ID, spec.clone()),
            Err(ServiceError::BlobExists)
        ),
        "nobody else parks under a taken id"
    );
    service.park_chunk(&alice, ID, 0, b"hello").unwrap();
    assert!(matches!(
        service.park_chunk(&bob, ID, 1, b"mine!"),
        Err(ServiceError::NotYourBlob)
    ));
    assert!(matches!(
        service.park_chunk(&alice, ID, 2, b"x"),
        Err(ServiceError::BadBlob(_))
    ));
    assert!(matches!(
        service.park_chunk(&alice, ID, 1, b"more than parked"),
        Err(ServiceError::BadBlob(_))
    ));
    service.park_chunk(&alice, ID, 1, b"world").unwrap();

    assert_eq!(
        service.parked_chunk(&bob, ID, 0).unwrap().unwrap(),
        b"hello"
    );
    assert_eq!(
        service.parked_chunk(&carol, ID, 1).unwrap().unwrap(),
        b"world"
    );
    assert_eq!(service.parked_chunk(&bob, ID, 2).unwrap(), None);
    assert!(matches!(
        service.parked_chunk(&eve, ID, 0),
        Err(ServiceError::NotYourBlob)
    ));
    assert!(matches!(
        service.unpark(&eve, ID),
        Err(ServiceError::NotYourBlob)
    ));

    service.unpark(&bob, ID).unwrap();
    assert!(
        service.parked_chunk(&carol, ID, 0).unwrap().is_some(),
        "carol has not fetched it yet"
    );
    service.unpark(&carol, ID).unwrap();
    assert_eq!(service.parked_chunk(&alice, ID, 0).unwrap(), None);
    assert_eq!(
        files_under(&tmp.path().join("blobs")),
        0,
        "nothing left on disk"
    );
    service.unpark(&carol, ID).unwrap();
}

#[test]
fn parked_files_are_bounded_per_file_and_per_owner_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        blob_max_bytes: 1000,
        blob_quota_bytes: 1500,
        blob_expiry: Duration::from_secs(48 * 3600),
        ..test_limits()
    };
    let (service, clock) = service(tmp.path(), limits);
    let alice = caller("alice");
    let spec = |size| BlobSpec {
        size,
        chunks: 1,
        readers: readers(&["bob"]),
    };
    assert!(matches!(
        service.park(&alice, ID, spec(1001)),
        Err(ServiceError::BlobTooLarge(1000))
    ));
    service.park(&alice, ID, spec(1000)).unwrap();
    let second = "ffffffffffffffffffffffffffffffff";
    assert!(matches!(
        service.park(&alice, second, spec(600)),
        Err(ServiceError::BlobQuota(1500))
    ));
    service.park(&caller("carol"), second, spec(600)).unwrap();

    clock.advance(Duration::from_secs(48 * 3600));
    assert_eq!(service.parked_chunk(&caller("bob"), ID, 0).unwrap(), None);
    assert_eq!(service.sweep_blobs().unwrap(), 1, "carol's went too");
    assert_eq!(files_under(&tmp.path().join("blobs")), 0);
    service.park(&alice, second, spec(600)).unwrap();
}

#[test]
fn malformed_parking_requests_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (service, _) = service(tmp.path(), test_limits());
    let alice = caller("alice");
    let good = BlobSpec {
        size: 10,
        chunks: 1,
        readers: readers(&["bob"]),
    };
    for id in ["../../etc", "0123", "0123456789ABCDEF0123456789ABCDEF", ""] {
        assert!(
            matches!(
                service.park(&alice, id, good.clone()),
                Err(ServiceError::BadBlob(_))
            ),
            "{id:?}"
        );
    }
    for bad in [
        BlobSpec {
            chunks: 0,
            ..good.clone()
        },
        BlobSpec {
            readers: BTreeSet::new(),
            ..good.clone()
        },
        BlobSpec {
            readers: readers(&["alice"]),
            ..good.clone()
        },
    ] {
        assert!(
            matches!(
                service.park(&alice, ID, bad.clone()),
                Err(ServiceError::BadBlob(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(files_under(&tmp.path().join("blobs")), 0);
    let (without, _) = {
        let now = SystemTime::now();
        let ca = CertificateAuthority::generate("t", now, &mut OsRng).unwrap();
        (
            block_on(Rendezvous::new(MemoryStore::default(), ca, test_limits())).unwrap(),
            (),
        )
    };
    assert!(matches!(
        without.park(&alice, ID, good),
        Err(ServiceError::NoBlobStore)
    ));
}
