//! Backups through the use cases: another account's backup is refused, and messages that were
//! still on their way come back as not sent (there is no session to send them with).

use peerchat::domain::backup::Cost;
use peerchat::domain::{ConversationId, MessageId};
use peerchat::driven::memory::{MemoryStore, RecordingNotifier};
use peerchat::driven::rendezvous_inprocess::InProcessDirectory;
use peerchat::ports::SystemClock;
use peerchat::ports::{MessageStatus, MessageStore};
use peerchat::usecases::{BackupFailure, Node, NodeError};
use rand::rngs::OsRng;

use crate::usecases::{fill_mailbox_share, given_a_rendezvous};

const CHEAP: Cost = Cost {
    m_kib: 64,
    t: 1,
    p: 1,
};
const PASSPHRASE: &str = "a long and secret passphrase";

#[tokio::test]
async fn another_accounts_backup_is_refused_and_messages_on_their_way_come_back_not_sent() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    let delivered = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, delivered, "hi".into())
        .await
        .unwrap();
    // Bob offline and his mailbox full for alice: her next message waits, pending.
    world.hub.set_online(&bob.name, false);
    fill_mailbox_share(&alice, &bob.name).await;
    let waiting = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, waiting, "later".into())
        .await
        .unwrap();
    let status_at_alice = |id| {
        alice
            .store
            .message(&ConversationId::from(&bob.name), &id)
            .unwrap()
            .unwrap()
            .status
    };
    assert_eq!(status_at_alice(waiting), MessageStatus::Pending);
    let (sealed, summary) = alice.node.backup(PASSPHRASE, CHEAP).await.unwrap();
    assert_eq!(summary.messages, 2);

    // Bob cannot take alice's backup.
    let refused = bob.node.restore(sealed.clone(), PASSPHRASE).await;
    assert!(matches!(
        refused,
        Err(NodeError::Backup(BackupFailure::OtherAccount(..)))
    ));
    assert!(
        bob.store
            .message(&ConversationId::from(&alice.name), &waiting)
            .unwrap()
            .is_none()
    );

    // A fresh install of alice's account takes it; a wrong passphrase changes nothing.
    let (network, _inbound) = world
        .hub
        .attach(peerchat_pki::Username::new("alice2").unwrap());
    let fresh = Node::new(
        MemoryStore::default(),
        InProcessDirectory::new(world.rendezvous.clone()),
        network,
        RecordingNotifier::default(),
        SystemClock,
    );
    fresh
        .login(&alice.name, "correct horse battery", None)
        .await
        .unwrap();
    assert!(matches!(
        fresh
            .restore(sealed.clone(), "not the passphrase at all")
            .await,
        Err(NodeError::Backup(BackupFailure::Sealed(_)))
    ));
    assert!(fresh.history(&bob.name).unwrap().is_empty());
    let summary = fresh.restore(sealed, PASSPHRASE).await.unwrap();
    assert_eq!((summary.contacts, summary.messages), (1, 2));
    let history = fresh.history(&bob.name).unwrap();
    let status = |id| history.iter().find(|m| m.id == id).unwrap().status;
    assert_eq!(status(delivered), status_at_alice(delivered));
    assert_eq!(
        status(waiting),
        MessageStatus::Failed,
        "not sent: it can be retried"
    );
}
