//! Files through the real binaries: a 100 MB file between two daemons, with the receiver killed
//! (SIGKILL) and the sender restarted in the middle.

use std::io::Write;
use std::time::{Duration, Instant};

use peerchat::driving::api::FileView;
use peerchat::ports::FileState;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::binaries::{Daemon, ok, rendezvous};

fn file(d: &Daemon, id: &str) -> Option<FileView> {
    let files: Vec<FileView> = serde_json::from_str(&ok(&d.cli(&["files", "--json"]))).unwrap();
    files.into_iter().find(|f| f.id.to_string() == id)
}

/// Polls `check` every 100 ms for up to `secs`.
fn eventually<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The chunk the fetches of a daemon started from, in its log.
fn fetch_starts(log: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("fetching a file"))
        .filter_map(|l| {
            l.split("from=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_file_survives_a_killed_receiver_and_a_restarted_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let (alice_dir, bob_dir) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let mut alice = Daemon::start(&alice_dir, &url);
    let mut bob = Daemon::start(&bob_dir, &url);
    alice.register("alice");
    bob.register("bob");

    // 100 MB of random bytes (no chunk repeats another).
    let source = tmp.path().join("archive.bin");
    let mut digest = Sha256::new();
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&source).unwrap());
        let mut block = vec![0u8; 1_000_000];
        for _ in 0..100 {
            rand::rngs::OsRng.fill_bytes(&mut block);
            digest.update(&block);
            out.write_all(&block).unwrap();
        }
    }
    let expected: [u8; 32] = digest.finalize().into();

    let id = ok(&alice.cli(&["send-file", "bob", source.to_str().unwrap()]))
        .trim()
        .to_owned();
    let offered = eventually("bob gets the offer", 30, || file(&bob, &id));
    assert_eq!(offered.size, 100_000_000);
    assert_eq!(
        offered.state,
        FileState::Offered,
        "over --auto-download-max: waits"
    );
    ok(&bob.cli(&["file", "accept", &id]));

    // Bob is killed in the middle, then restarted: it resumes where its progress stood.
    let before_kill = eventually("a quarter is fetched", 120, || {
        file(&bob, &id).filter(|f| f.bytes_done >= 25_000_000)
    });
    bob.kill();
    let recorded = (before_kill.bytes_done / (1024 * 1024)) as u32;
    bob = Daemon::start(&bob_dir, &url);
    bob.wait_for("listening on");

    // Alice is restarted in the middle too: bob carries on when she is back.
    eventually("half is fetched", 120, || {
        file(&bob, &id).filter(|f| f.bytes_done >= 50_000_000)
    });
    alice.terminate();
    alice = Daemon::start(&alice_dir, &url);
    alice.wait_for("listening on");

    let done = eventually("the file is complete", 240, || {
        file(&bob, &id).filter(|f| f.state == FileState::Complete)
    });
    let saved = std::path::PathBuf::from(done.saved_as.unwrap());
    assert!(
        saved.starts_with(bob_dir.join("files")),
        "{}",
        saved.display()
    );
    assert_eq!(saved.file_name().unwrap(), "archive.bin");
    let got: [u8; 32] = Sha256::digest(std::fs::read(&saved).unwrap()).into();
    assert_eq!(got, expected, "the same bytes");

    // What the second run of bob fetched first: no earlier than what was recorded before the
    // kill (each chunk is recorded before the next is read, so at most the one being read at
    // the kill is fetched again).
    let starts = fetch_starts(&bob_dir.with_extension("log"));
    assert!(
        starts.len() >= 3,
        "three fetches (start, after the kill, after alice's restart): {starts:?}"
    );
    assert_eq!(starts[0], 0);
    assert!(
        starts[1] >= recorded && starts[1] > 0,
        "resumed at chunk {} with {recorded} recorded before the kill",
        starts[1]
    );
    // `file save` copies it out, and refuses to overwrite.
    let copy = tmp.path().join("copy.bin");
    ok(&bob.cli(&["file", "save", &id, copy.to_str().unwrap()]));
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 100_000_000);
    assert!(
        !bob.cli(&["file", "save", &id, copy.to_str().unwrap()])
            .status
            .success()
    );
    drop(alice);
}
