//! Files through the use cases on in-memory adapters (the hub carries the chunk streams): an
//! offer through the ratchet, chunks fetched and checked, progress, digests, refusals.

use peerchat::domain::FileId;
use peerchat::ports::{Batch, Direction, Event, FileState, FileStore, Store, Write};
use peerchat::usecases::{FileLimits, NodeError};
use rand::RngCore;

use crate::usecases::{User, World, given_a_rendezvous};

const MIB: usize = 1024 * 1024;

/// A file of `len` random bytes in a temporary directory.
fn a_file(dir: &tempfile::TempDir, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let mut bytes = vec![0u8; len];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let path = dir.path().join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

async fn pair(bob_limits: FileLimits) -> (World, User, User) {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_user_with_file_limits("bob", bob_limits).await;
    (world, alice, bob)
}

/// The bytes done of every file progress event `u`'s node emitted, in order.
fn progress(u: &User) -> Vec<u64> {
    u.events
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::FileProgress { bytes_done, .. } => Some(*bytes_done),
            _ => None,
        })
        .collect()
}

fn offered_to(u: &User, id: &FileId) -> peerchat::ports::FileRecord {
    u.store.file(id).unwrap().expect("the offer arrived")
}

#[tokio::test]
async fn an_offered_file_is_fetched_chunk_by_chunk_checked_and_published() {
    let tmp = tempfile::tempdir().unwrap();
    let (_world, alice, bob) = pair(FileLimits::default()).await;
    let (path, bytes) = a_file(&tmp, "../holiday photo.jpg", 2 * MIB + 12_345);
    let id = alice.node.send_file(&bob.name, &path).await.unwrap();

    let offer = offered_to(&bob, &id);
    assert_eq!(offer.direction, Direction::Incoming);
    assert_eq!(
        offer.state,
        FileState::Downloading,
        "small files start by themselves"
    );
    assert_eq!(offer.offer.name, "holiday photo.jpg");
    assert_eq!(offer.offer.media_type, "image/jpeg");
    assert_eq!(offer.offer.chunks(), 3);
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);

    let done = offered_to(&bob, &id);
    assert_eq!(done.state, FileState::Complete);
    assert_eq!(done.bytes_done(), bytes.len() as u64);
    let saved = std::path::PathBuf::from(done.saved_as.unwrap());
    assert_eq!(bob.store.published(&saved).unwrap(), bytes);
    assert!(bob.events.events().contains(&Event::FileCompleted { id }));
    assert_eq!(
        progress(&bob),
        [MIB as u64, 2 * MIB as u64, bytes.len() as u64],
        "one progress event per chunk"
    );
    // The sender sees bob fetch it: progress per chunk, then complete.
    let sent = alice.node.file(&id).unwrap();
    assert_eq!(sent.direction, Direction::Outgoing);
    assert_eq!(
        (sent.state, sent.bytes_done()),
        (FileState::Complete, bytes.len() as u64)
    );
    assert_eq!(
        progress(&alice),
        [MIB as u64, 2 * MIB as u64, bytes.len() as u64]
    );
    assert!(alice.events.events().contains(&Event::FileCompleted { id }));
}

#[tokio::test]
async fn a_large_offer_waits_for_accept_and_a_fetch_resumes_from_the_first_missing_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = FileLimits {
        auto_download_bytes: MIB as u64,
        ..FileLimits::default()
    };
    let (_world, alice, bob) = pair(limits).await;
    let (path, bytes) = a_file(&tmp, "big.bin", 4 * MIB + 1);
    let id = alice.node.send_file(&bob.name, &path).await.unwrap();
    assert_eq!(offered_to(&bob, &id).state, FileState::Offered);
    assert_eq!(bob.node.fetch_files().await.unwrap(), 0, "not accepted yet");
    let waiting = alice.node.file(&id).unwrap();
    assert_eq!(
        (waiting.state, waiting.bytes_done()),
        (FileState::Offered, 0)
    );

    // As if bob's node stopped after two chunks: they are stored, and recorded.
    let mut record = offered_to(&bob, &id);
    for index in 0..2u32 {
        let start = index as usize * MIB;
        bob.store
            .write_file(&id, start as u64, &bytes[start..start + MIB])
            .await
            .unwrap();
    }
    record.chunks_done = 2;
    record.state = FileState::Downloading;
    bob.store
        .commit(&Batch::new().with(Write::File(Box::new(record))))
        .unwrap();
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);
    assert_eq!(
        progress(&bob),
        [3 * MIB as u64, 4 * MIB as u64, 4 * MIB as u64 + 1],
        "only the missing chunks were fetched"
    );
    let saved = std::path::PathBuf::from(offered_to(&bob, &id).saved_as.unwrap());
    assert_eq!(bob.store.published(&saved).unwrap(), bytes);
    // Accepting a complete file changes nothing.
    bob.node.accept_file(&id).await.unwrap();
    assert_eq!(offered_to(&bob, &id).state, FileState::Complete);
}

#[tokio::test]
async fn a_chunk_that_is_not_the_one_listed_is_refused_and_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_world, alice, bob) = pair(FileLimits::default()).await;
    let (path, bytes) = a_file(&tmp, "report.pdf", 2 * MIB + 10);
    // Not parked: the sender is the only source.
    let id = alice
        .node
        .send_file_parking(&bob.name, &path, peerchat::usecases::Parking::Never)
        .await
        .unwrap();
    // The sender's kept copy changed after the offer: the second chunk it seals authenticates
    // under the key but is not the chunk listed in the offer.
    alice
        .store
        .write_file(&id, MIB as u64 + 5, b"changed")
        .await
        .unwrap();
    assert_eq!(bob.node.fetch_files().await.unwrap(), 0);
    let stopped = offered_to(&bob, &id);
    assert_eq!(
        (stopped.state, stopped.chunks_done, stopped.saved_as),
        (FileState::Downloading, 1, None),
        "the first chunk is kept, the bad one is not written, the download goes on later"
    );
    assert_eq!(progress(&bob), [MIB as u64]);
    // The genuine bytes again: the next fetch takes the refused chunk again and completes.
    alice
        .store
        .write_file(&id, MIB as u64, &bytes[MIB..2 * MIB])
        .await
        .unwrap();
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);
    let saved = std::path::PathBuf::from(offered_to(&bob, &id).saved_as.unwrap());
    assert_eq!(bob.store.published(&saved).unwrap(), bytes);
}

#[tokio::test]
async fn a_file_that_does_not_match_its_digest_is_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    let (_world, alice, bob) = pair(FileLimits::default()).await;
    let (path, _) = a_file(&tmp, "report.pdf", MIB + 10);
    let id = alice.node.send_file(&bob.name, &path).await.unwrap();
    // A sender whose chunks are the ones it listed but whose announced digest of the whole is
    // not theirs.
    let mut lied = offered_to(&bob, &id);
    lied.offer.sha256[0] ^= 1;
    bob.store
        .commit(&Batch::new().with(Write::File(Box::new(lied))))
        .unwrap();
    assert_eq!(bob.node.fetch_files().await.unwrap(), 0);
    let failed = offered_to(&bob, &id);
    assert_eq!(failed.state, FileState::Failed);
    assert_eq!((failed.saved_as, failed.chunks_done), (None, 0));
    assert!(bob.events.events().contains(&Event::FileFailed { id }));
    assert!(
        bob.store.read_file(&id, 0, 1).await.is_err(),
        "its bytes were discarded"
    );
}

#[tokio::test]
async fn a_peer_asking_for_a_file_it_was_not_offered_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, alice, bob) = pair(FileLimits::default()).await;
    let carol = world.given_a_registered_user("carol").await;
    let (path, _) = a_file(&tmp, "secret.txt", 1000);
    let id = alice.node.send_file(&bob.name, &path).await.unwrap();
    // Carol learnt the offer (say bob forwarded it) and asks alice for the chunks.
    let mut stolen = offered_to(&bob, &id);
    stolen.state = FileState::Downloading;
    carol
        .store
        .commit(&Batch::new().with(Write::File(Box::new(stolen))))
        .unwrap();
    assert_eq!(carol.node.fetch_files().await.unwrap(), 0);
    let at_carol = offered_to(&carol, &id);
    assert_eq!((at_carol.chunks_done, at_carol.saved_as), (0, None));
    assert_eq!(
        carol.store.read_file(&id, 0, 1).await.ok(),
        None,
        "no byte arrived"
    );
}

#[tokio::test]
async fn files_over_the_limit_are_refused_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = FileLimits {
        max_bytes: 1000,
        auto_download_bytes: 1000,
    };
    let (world, alice, bob) = pair(limits).await;
    let (path, _) = a_file(&tmp, "big.bin", 5000);
    // Bob takes at most 1000 bytes: alice's offer is refused and bob keeps nothing.
    let id = alice.node.send_file(&bob.name, &path).await.unwrap();
    assert!(bob.store.file(&id).unwrap().is_none());
    // Carol sends at most 1000 bytes: her node says so and offers nothing.
    let carol = world.given_a_user_with_file_limits("carol", limits).await;
    assert!(matches!(
        carol.node.send_file(&bob.name, &path).await,
        Err(NodeError::File(e)) if e.contains("larger than 1000")
    ));
    assert!(carol.store.files().unwrap().is_empty());
    // A path that is no file.
    assert!(matches!(
        alice.node.send_file(&bob.name, tmp.path()).await,
        Err(NodeError::File(_))
    ));
}

#[tokio::test]
async fn a_cancelled_download_is_not_fetched_until_accepted_again() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = FileLimits {
        auto_download_bytes: 0,
        ..FileLimits::default()
    };
    let (_world, alice, bob) = pair(limits).await;
    let (path, bytes) = a_file(&tmp, "notes.txt", 3000);
    let id = alice.node.send_file(&bob.name, &path).await.unwrap();
    bob.node.accept_file(&id).await.unwrap();
    bob.node.cancel_file(&id).await.unwrap();
    assert_eq!(offered_to(&bob, &id).state, FileState::Cancelled);
    assert_eq!(bob.node.fetch_files().await.unwrap(), 0);
    assert_eq!(offered_to(&bob, &id).chunks_done, 0);
    // Changed their mind: accepted again, fetched.
    bob.node.accept_file(&id).await.unwrap();
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);
    let saved = std::path::PathBuf::from(offered_to(&bob, &id).saved_as.unwrap());
    assert_eq!(bob.store.published(&saved).unwrap(), bytes);
    // A complete file cannot be cancelled.
    assert!(matches!(
        bob.node.cancel_file(&id).await,
        Err(NodeError::File(_))
    ));
}

/// Alice (admin) with bob and carol in a group, every member holding the creation.
async fn a_group_of_three() -> (World, [User; 3], peerchat::domain::GroupId) {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    let carol = world.given_a_registered_user("carol").await;
    let id = alice
        .node
        .create_group("crew", &[bob.name.clone(), carol.name.clone()])
        .await
        .unwrap();
    (world, [alice, bob, carol], id)
}

#[tokio::test]
async fn a_group_file_is_offered_once_and_a_member_completes_from_another_while_the_sender_is_away()
{
    let tmp = tempfile::tempdir().unwrap();
    let (world, [alice, bob, carol], group) = a_group_of_three().await;
    let (path, bytes) = a_file(&tmp, "plan.pdf", 3 * MIB + 7);
    let id = alice.node.send_group_file(&group, &path).await.unwrap();

    let sent = alice.node.file(&id).unwrap();
    assert_eq!(
        (sent.direction, sent.group, &sent.peer),
        (Direction::Outgoing, Some(group), &alice.name)
    );
    for member in [&bob, &carol] {
        let offered = offered_to(member, &id);
        assert_eq!(
            (offered.group, &offered.peer, offered.state),
            (Some(group), &alice.name, FileState::Downloading),
            "{}",
            member.name
        );
        assert_eq!(
            offered.offer, sent.offer,
            "one offer, one key, for everyone"
        );
    }
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);
    let at_bob = offered_to(&bob, &id);
    assert_eq!(
        bob.store
            .published(std::path::Path::new(&at_bob.saved_as.unwrap()))
            .unwrap(),
        bytes
    );

    // The sender goes away; carol fetches everything from bob, who kept his copy.
    world.hub.set_online(&alice.name, false);
    assert_eq!(carol.node.fetch_files().await.unwrap(), 1);
    let at_carol = offered_to(&carol, &id);
    assert_eq!(at_carol.state, FileState::Complete);
    assert_eq!(
        carol
            .store
            .published(std::path::Path::new(&at_carol.saved_as.unwrap()))
            .unwrap(),
        bytes
    );
}

#[tokio::test]
async fn a_member_serving_chunks_of_its_own_making_is_caught_and_the_sender_serves_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, [alice, bob, carol], group) = a_group_of_three().await;
    let (path, bytes) = a_file(&tmp, "minutes.txt", 2 * MIB + 100);
    let id = alice.node.send_group_file(&group, &path).await.unwrap();
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);
    // Bob changes his copy: what he serves now authenticates under the file's key (he holds
    // it), but is not what alice sealed.
    bob.store
        .write_file(&id, MIB as u64 + 1, b"forged")
        .await
        .unwrap();
    world.hub.set_online(&alice.name, false);
    assert_eq!(carol.node.fetch_files().await.unwrap(), 0);
    let stopped = offered_to(&carol, &id);
    assert_eq!(
        (stopped.state, stopped.chunks_done),
        (FileState::Downloading, 1),
        "bob's genuine first chunk is kept, his forged second is not"
    );
    world.hub.set_online(&alice.name, true);
    assert_eq!(carol.node.fetch_files().await.unwrap(), 1);
    let at_carol = offered_to(&carol, &id);
    assert_eq!(
        carol
            .store
            .published(std::path::Path::new(&at_carol.saved_as.unwrap()))
            .unwrap(),
        bytes
    );
}

#[tokio::test]
async fn group_files_go_to_members_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, [alice, bob, carol], group) = a_group_of_three().await;
    let dave = world.given_a_registered_user("dave").await;
    let (path, _) = a_file(&tmp, "crew only.txt", 1000);
    // A non-member cannot offer a file to the group.
    assert!(matches!(
        dave.node.send_group_file(&group, &path).await,
        Err(NodeError::UnknownGroup(_))
    ));
    let id = alice.node.send_group_file(&group, &path).await.unwrap();
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);
    // Dave learnt the offer and asks alice and bob for it: neither serves him.
    let mut stolen = offered_to(&bob, &id);
    stolen.state = FileState::Downloading;
    stolen.chunks_done = 0;
    stolen.saved_as = None;
    let mut doctored = bob.node.group(&group).unwrap();
    doctored.members.insert(dave.name.clone());
    dave.store
        .commit(
            &Batch::new()
                .with(Write::File(Box::new(stolen)))
                .with(Write::Group(Box::new(
                    peerchat::domain::Group::joined(doctored).unwrap(),
                ))),
        )
        .unwrap();
    assert_eq!(dave.node.fetch_files().await.unwrap(), 0);
    assert!(
        dave.store.read_file(&id, 0, 1).await.is_err(),
        "no byte arrived"
    );
    // Once removed, carol is served no more either (she had not fetched it yet).
    alice
        .node
        .change_group(
            &group,
            peerchat::domain::Change::Remove(vec![carol.name.clone()]),
        )
        .await
        .unwrap();
    assert_eq!(carol.node.fetch_files().await.unwrap(), 0);
    assert!(carol.store.read_file(&id, 0, 1).await.is_err());
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

#[tokio::test]
async fn a_file_to_an_offline_contact_is_parked_fetched_while_the_sender_is_away_and_then_deleted()
{
    let tmp = tempfile::tempdir().unwrap();
    let (world, alice, bob) = pair(FileLimits::default()).await;
    let (path, bytes) = a_file(&tmp, "letter.pdf", 2 * MIB + 77);
    world.hub.set_online(&bob.name, false);
    let id = alice.node.send_file(&bob.name, &path).await.unwrap();
    let parked = world.blobs.path().join("blobs");
    assert_eq!(
        files_under(&parked),
        1 + 3,
        "its metadata and three sealed chunks"
    );
    // What the rendezvous holds is ciphertext: no chunk holds a run of the file.
    for chunk in std::fs::read_dir(parked.join(id.to_string())).unwrap() {
        let held = std::fs::read(chunk.unwrap().path()).unwrap();
        assert!(
            !held
                .windows(64)
                .any(|w| bytes.windows(64).next() == Some(w)),
            "plaintext at the rendezvous"
        );
    }

    // Alice goes away; bob comes back, gets the offer from the mailbox, fetches from the
    // rendezvous.
    world.hub.set_online(&alice.name, false);
    world.hub.set_online(&bob.name, true);
    assert_eq!(bob.node.fetch_mail(0, None).await.unwrap().count, 1);
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);
    let done = offered_to(&bob, &id);
    let saved = std::path::PathBuf::from(done.saved_as.unwrap());
    assert_eq!(bob.store.published(&saved).unwrap(), bytes);
    assert_eq!(files_under(&parked), 0, "deleted once bob acknowledged it");
}

#[tokio::test]
async fn a_tampered_parked_chunk_is_refused_and_fetched_from_the_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, alice, bob) = pair(FileLimits::default()).await;
    let (path, bytes) = a_file(&tmp, "letter.pdf", 2 * MIB + 77);
    let id = alice
        .node
        .send_file_parking(&bob.name, &path, peerchat::usecases::Parking::Always)
        .await
        .unwrap();
    // Whoever runs the rendezvous flips a byte of the second chunk.
    let chunk = world
        .blobs
        .path()
        .join("blobs")
        .join(id.to_string())
        .join("1");
    let mut held = std::fs::read(&chunk).unwrap();
    held[100] ^= 1;
    std::fs::write(&chunk, held).unwrap();

    world.hub.set_online(&alice.name, false);
    assert_eq!(bob.node.fetch_files().await.unwrap(), 0);
    assert_eq!(
        (
            offered_to(&bob, &id).state,
            offered_to(&bob, &id).chunks_done
        ),
        (FileState::Downloading, 1),
        "the first chunk from the rendezvous, not the tampered second"
    );
    world.hub.set_online(&alice.name, true);
    assert_eq!(bob.node.fetch_files().await.unwrap(), 1);
    let saved = std::path::PathBuf::from(offered_to(&bob, &id).saved_as.unwrap());
    assert_eq!(bob.store.published(&saved).unwrap(), bytes);
}
