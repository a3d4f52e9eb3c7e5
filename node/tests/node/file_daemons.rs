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

/// Overwrites `bytes` at `offset` of the file at `path`, in place (the same inode: a hard link
/// to it sees the change).
fn overwrite(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_completes_from_another_while_the_sender_is_offline_and_a_tampered_chunk_is_refetched()
 {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let dirs = ["alice", "bob", "carol"].map(|n| tmp.path().join(n));
    let mut alice = Daemon::start(&dirs[0], &url);
    let bob = Daemon::start(&dirs[1], &url);
    let mut carol = Daemon::start(&dirs[2], &url);
    alice.register("alice");
    bob.register("bob");
    carol.register("carol");
    let group = ok(&alice.cli(&["group", "create", "crew", "--members", "bob,carol"]))
        .trim()
        .to_owned();
    for d in [&bob, &carol] {
        eventually("every member holds the group", 30, || {
            ok(&d.cli(&["group", "list"]))
                .contains(&group)
                .then_some(())
        });
    }
    carol.terminate();

    // 8 MiB: under --auto-download-max, so members fetch it by themselves.
    let mut bytes = vec![0u8; 8 * 1024 * 1024 + 3];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let source = tmp.path().join("slides.bin");
    std::fs::write(&source, &bytes).unwrap();
    let sent = ok(&alice.cli(&["send-file", "--group", &group, source.to_str().unwrap()]));
    let id = sent.trim().to_owned();
    assert_eq!(id.len(), 32, "the id alone on its line: {sent}");
    let at_bob = eventually("bob fetched it", 60, || {
        file(&bob, &id).filter(|f| f.state == FileState::Complete)
    });
    let bob_copy = std::path::PathBuf::from(at_bob.saved_as.unwrap());
    assert_eq!(std::fs::read(&bob_copy).unwrap(), bytes);
    alice.terminate();

    // Bob's copy of the second chunk changes (what a member with the key could serve): carol,
    // back while alice is away, takes the first chunk from bob and refuses the second.
    let genuine = bytes[1024 * 1024..1024 * 1024 + 6].to_vec();
    overwrite(&bob_copy, 1024 * 1024, b"forged");
    carol = Daemon::start(&dirs[2], &url);
    let carol_log = dirs[2].with_extension("log");
    eventually("carol refuses bob's second chunk", 30, || {
        std::fs::read_to_string(&carol_log)
            .unwrap_or_default()
            .contains("a chunk failed its check")
            .then_some(())
    });
    let stuck = file(&carol, &id).unwrap();
    assert_eq!(
        (stuck.state, stuck.bytes_done),
        (FileState::Downloading, 1024 * 1024),
        "nothing past the refused chunk"
    );
    // Bob's copy is whole again: carol's next attempt fetches the chunk again and completes
    // from bob, with alice still offline.
    overwrite(&bob_copy, 1024 * 1024, &genuine);
    let done = eventually("carol completes from bob", 60, || {
        file(&carol, &id).filter(|f| f.state == FileState::Complete)
    });
    let got = std::fs::read(done.saved_as.unwrap()).unwrap();
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&bytes),
        "the same bytes"
    );
    let log = std::fs::read_to_string(&carol_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("fetching a file") && l.contains("source=bob")),
        "carol fetched from bob"
    );
    drop(bob);
}
