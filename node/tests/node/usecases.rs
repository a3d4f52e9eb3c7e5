//! Use cases on in-memory adapters, as given/when/then scenarios: a real rendezvous service in
//! process (memory store), an in-process network hub, recording notifiers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use peerchat::domain::{Ack, Envelope, IdentityKey, MessageId, RejectReason};
use peerchat::driven::memory::{Hub, HubNetwork, MemoryStore, RecordingNotifier};
use peerchat::driven::rendezvous_inprocess::InProcessDirectory;
use peerchat::ports::{
    AuthenticatedPeer, ContactStore, Direction, DirectoryError, EnvelopeFn, Event, IdentityStore,
    MessageStatus, OutboxStore, SystemClock, TransportTrust,
};
use peerchat::usecases::{KeyKind, Node, NodeError};
use peerchat_pki::{CertificateAuthority, Username};
use peerchat_rendezvous::limits::{Limits, Rate};
use peerchat_rendezvous::memory_store::MemoryStore as RendezvousMemory;
use peerchat_rendezvous::service::Rendezvous;
use rand::rngs::OsRng;

pub(crate) type TestNode = Node<
    MemoryStore,
    InProcessDirectory<RendezvousMemory>,
    HubNetwork,
    RecordingNotifier,
    SystemClock,
>;

pub(crate) struct World {
    pub(crate) rendezvous: Arc<Rendezvous<RendezvousMemory>>,
    pub(crate) hub: Hub,
    /// Where the rendezvous keeps parked files (removed with the world).
    pub(crate) blobs: tempfile::TempDir,
}

pub(crate) struct User {
    pub(crate) name: Username,
    pub(crate) node: Arc<TestNode>,
    pub(crate) events: RecordingNotifier,
    /// The node's store, shared, to look inside.
    pub(crate) store: MemoryStore,
    /// The node's rendezvous client, shared (authenticated as the node).
    pub(crate) directory: InProcessDirectory<RendezvousMemory>,
}

pub(crate) fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

pub(crate) async fn given_a_rendezvous() -> World {
    let limits = Limits {
        argon2_memory_kib: 256,
        lookups_per_user: Rate {
            burst: 10_000,
            period: Duration::from_millis(1),
        },
        one_time_prekeys_per_pair: Rate {
            burst: 10_000,
            period: Duration::from_millis(1),
        },
        deposits_per_user: Rate {
            burst: 10_000,
            period: Duration::from_millis(1),
        },
        auth_per_prefix: Rate {
            burst: 10_000,
            period: Duration::from_millis(1),
        },
        registrations: Rate {
            burst: 10_000,
            period: Duration::from_millis(1),
        },
        login_per_account_prefix: Rate {
            burst: 10_000,
            period: Duration::from_millis(1),
        },
        ..Limits::default()
    };
    let ca = CertificateAuthority::generate("use-case CA", SystemTime::now(), &mut OsRng).unwrap();
    let blobs = tempfile::tempdir().unwrap();
    World {
        rendezvous: Arc::new(
            Rendezvous::new(RendezvousMemory::default(), ca, limits)
                .await
                .unwrap()
                .with_blobs(blobs.path().join("blobs")),
        ),
        hub: Hub::default(),
        blobs,
    }
}

impl World {
    pub(crate) async fn given_a_registered_user(&self, name: &str) -> User {
        self.given_a_user_with_file_limits(name, peerchat::usecases::FileLimits::default())
            .await
    }

    /// A registered user whose node takes files within `limits`.
    pub(crate) async fn given_a_user_with_file_limits(
        &self,
        name: &str,
        limits: peerchat::usecases::FileLimits,
    ) -> User {
        self.given_a_user_built(name, |node| node.with_file_limits(limits))
            .await
    }

    /// `u` logged in on a new install (a new node, a new key), which the hub now reaches in
    /// place of the old one (offline from now): that node and its key.
    pub(crate) async fn given_a_new_install_of(
        &self,
        u: &User,
    ) -> (Arc<TestNode>, peerchat::domain::IdentityKeyPair) {
        self.hub.set_online(&u.name, false);
        let (network, inbound) = self.hub.attach(u.name.clone());
        let node = Arc::new(Node::new(
            MemoryStore::default(),
            InProcessDirectory::new(self.rendezvous.clone()),
            network,
            RecordingNotifier::default(),
            SystemClock,
        ));
        node.login(&u.name, "correct horse battery", None)
            .await
            .unwrap();
        let key = peerchat::domain::IdentityKeyPair::from_seed(&node.resume().unwrap().seed);
        self.hub.set_key(&u.name, *key.public());
        tokio::spawn(inbound.serve(node.clone()));
        (node, key)
    }

    /// A registered user whose node is set up by `build`.
    pub(crate) async fn given_a_user_built(
        &self,
        name: &str,
        build: impl FnOnce(TestNode) -> TestNode,
    ) -> User {
        let name = user(name);
        let (network, inbound) = self.hub.attach(name.clone());
        let events = RecordingNotifier::default();
        let store = MemoryStore::default();
        let directory = InProcessDirectory::new(self.rendezvous.clone());
        let node = Arc::new(build(Node::new(
            store.clone(),
            directory.clone(),
            network,
            events.clone(),
            SystemClock,
        )));
        node.register(&name, "correct horse battery").await.unwrap();
        let identity = store.identity().unwrap().unwrap();
        let key = peerchat::domain::IdentityKeyPair::from_seed(&identity.seed);
        self.hub.set_key(&name, *key.public());
        tokio::spawn(inbound.serve(node.clone()));
        User {
            name,
            node,
            events,
            store,
            directory,
        }
    }
}

/// The direct conversation with `with`.
pub(crate) fn direct(with: &User) -> peerchat::domain::ConversationId {
    peerchat::domain::ConversationId::Direct(with.name.clone())
}

/// Sends `text` from `from` to `to`; its id.
pub(crate) async fn send(from: &User, to: &User, text: &str) -> MessageId {
    let id = MessageId::random(&mut OsRng);
    from.node.send(&to.name, id, text.into()).await.unwrap();
    id
}

/// Delivers what `u` queued (receipts, amendments and profiles go through the outbox).
pub(crate) async fn flush_outbox(u: &User) {
    u.node.retry_outbox(u64::MAX).await.unwrap();
}

/// A rendezvous with alice and bob registered.
pub(crate) async fn alice_and_bob() -> (World, User, User) {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    (world, alice, bob)
}

/// Fills `from`'s share of `to`'s mailbox, so that its next deposits are refused.
pub(crate) async fn fill_mailbox_share(from: &User, to: &Username) {
    use peerchat::ports::Directory;
    for i in 0..Limits::default().mailbox_max_envelopes_per_sender {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        from.directory
            .deposit(to, &MessageId::from_bytes(bytes), b"x")
            .await
            .unwrap();
    }
}

fn texts(node: &TestNode, peer: &Username) -> Vec<(Direction, String)> {
    node.history(peer)
        .unwrap()
        .into_iter()
        .map(|m| (m.direction, m.body))
        .collect()
}

#[tokio::test]
async fn given_two_users_when_alice_sends_then_bob_stores_it_and_alice_sees_sent() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;

    let id = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, id, "hello bob".into())
        .await
        .unwrap();

    let at_bob = bob.node.history(&alice.name).unwrap();
    assert_eq!(at_bob.len(), 1);
    assert_eq!(
        (at_bob[0].id, at_bob[0].direction, at_bob[0].body.as_str()),
        (id, Direction::Incoming, "hello bob")
    );
    let at_alice = alice.node.history(&bob.name).unwrap();
    assert_eq!(at_alice[0].status, MessageStatus::Sent);
    assert!(alice.store.outbox().unwrap().is_empty());
    assert!(bob.events.events().contains(&Event::MessageReceived {
        peer: alice.name.clone(),
        id
    }));
    assert!(alice.events.events().contains(&Event::StatusChanged {
        peer: bob.name.clone(),
        id,
        status: MessageStatus::Sent
    }));
}

#[tokio::test]
async fn given_a_conversation_then_both_histories_show_the_same_messages_in_order() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;

    alice
        .node
        .send(&bob.name, MessageId::random(&mut OsRng), "one".into())
        .await
        .unwrap();
    bob.node
        .send(&alice.name, MessageId::random(&mut OsRng), "two".into())
        .await
        .unwrap();
    alice
        .node
        .send(&bob.name, MessageId::random(&mut OsRng), "three".into())
        .await
        .unwrap();

    use Direction::{Incoming as In, Outgoing as Out};
    assert_eq!(
        texts(&alice.node, &bob.name),
        [
            (Out, "one".to_string()),
            (In, "two".to_string()),
            (Out, "three".to_string())
        ]
    );
    assert_eq!(
        texts(&bob.node, &alice.name),
        [
            (In, "one".to_string()),
            (Out, "two".to_string()),
            (In, "three".to_string())
        ]
    );
    assert_eq!(alice.node.conversations().unwrap()[0].messages, 3);
    assert_eq!(
        bob.node.contacts().unwrap()[0].username,
        alice.name,
        "bob pinned alice on first contact"
    );
}

#[tokio::test]
async fn given_a_sent_message_when_the_client_retries_the_same_id_then_nothing_is_sent_twice() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    let id = MessageId::random(&mut OsRng);

    alice.node.send(&bob.name, id, "once".into()).await.unwrap();
    alice.node.send(&bob.name, id, "once".into()).await.unwrap();

    assert_eq!(alice.node.history(&bob.name).unwrap().len(), 1);
    assert_eq!(bob.node.history(&alice.name).unwrap().len(), 1);
}

#[tokio::test]
async fn given_bob_offline_when_alice_sends_then_the_mailbox_keeps_it_until_bob_fetches() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    world.hub.set_online(&bob.name, false);

    let id = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, id, "are you there?".into())
        .await
        .unwrap();

    assert_eq!(
        alice.node.history(&bob.name).unwrap()[0].status,
        MessageStatus::Sent,
        "the mailbox acknowledged it"
    );
    assert!(alice.store.outbox().unwrap().is_empty());
    assert!(bob.node.history(&alice.name).unwrap().is_empty());

    assert_eq!(bob.node.fetch_mail(0, None).await.unwrap().count, 1);
    let at_bob = bob.node.history(&alice.name).unwrap();
    assert_eq!(
        (at_bob.len(), at_bob[0].id, at_bob[0].body.as_str()),
        (1, id, "are you there?")
    );
    assert_eq!(
        bob.node.fetch_mail(0, None).await.unwrap().count,
        0,
        "stored mail is acknowledged and gone"
    );
}

#[tokio::test]
async fn given_neither_peer_nor_mailbox_reachable_then_the_message_waits_in_the_outbox_and_is_retried()
 {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    world.hub.set_online(&bob.name, false);
    // Fill alice's share of bob's mailbox (250 envelopes) so her deposits are refused.
    fill_mailbox_share(&alice, &bob.name).await;
    let id = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, id, "queued".into())
        .await
        .unwrap();
    assert_eq!(
        alice.node.history(&bob.name).unwrap()[0].status,
        MessageStatus::Pending
    );
    assert_eq!(alice.store.outbox().unwrap().len(), 1);

    world.hub.set_online(&bob.name, true);
    alice.node.retry_outbox(u64::MAX).await.unwrap();
    assert_eq!(
        alice.node.history(&bob.name).unwrap()[0].status,
        MessageStatus::Sent
    );
    assert!(
        bob.node
            .history(&alice.name)
            .unwrap()
            .iter()
            .any(|m| m.id == id)
    );

    // A message that cannot be delivered in time is marked failed, not dropped.
    world.hub.set_online(&bob.name, false);
    let late = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, late, "too late".into())
        .await
        .unwrap();
    alice.node.retry_outbox(0).await.unwrap();
    let status = alice
        .node
        .history(&bob.name)
        .unwrap()
        .into_iter()
        .find(|m| m.id == late)
        .unwrap()
        .status;
    assert_eq!(status, MessageStatus::Failed);
    assert!(
        alice.store.outbox().unwrap().is_empty(),
        "a failed message leaves the outbox"
    );

    // The user retries it once bob is back.
    world.hub.set_online(&bob.name, true);
    alice.node.retry(&bob.name, &late).await.unwrap();
    let status = alice
        .node
        .history(&bob.name)
        .unwrap()
        .into_iter()
        .find(|m| m.id == late)
        .unwrap()
        .status;
    assert_eq!(status, MessageStatus::Sent);
    assert!(
        bob.node
            .history(&alice.name)
            .unwrap()
            .iter()
            .any(|m| m.body == "too late")
    );
    assert!(matches!(
        alice.node.retry(&bob.name, &late).await,
        Err(NodeError::NotRetryable)
    ));
}

#[tokio::test]
async fn given_a_received_envelope_when_it_is_tampered_then_it_is_kept_as_undecryptable_until_a_good_copy_replaces_it()
 {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    world.hub.set_online(&bob.name, false);
    let id = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, id, "sealed".into())
        .await
        .unwrap();
    let envelope = mailed(&bob).await;
    let alice_key = identity_of(&alice);

    let mut tampered = envelope.clone();
    let last = tampered.payload.len() - 1;
    tampered.payload[last] ^= 1;
    assert_eq!(
        bob.node.receive(&alice.name, &alice_key, tampered).await,
        Ack::Rejected(RejectReason::Undecryptable)
    );
    // Never dropped without a trace: it shows, marked undecryptable, with no text.
    let shown = bob.node.history(&alice.name).unwrap();
    assert_eq!(
        shown
            .iter()
            .map(|m| (m.id, m.status, m.body.as_str()))
            .collect::<Vec<_>>(),
        [(id, MessageStatus::Undecryptable, "")]
    );
    assert!(
        bob.events
            .events()
            .iter()
            .any(|e| matches!(e, Event::MessageReceived { id: got, .. } if *got == id))
    );

    // The intact copy decrypts and takes its place; a replay of it changes nothing.
    assert_eq!(
        bob.node
            .receive(&alice.name, &alice_key, envelope.clone())
            .await,
        Ack::Stored
    );
    assert_eq!(
        bob.node.receive(&alice.name, &alice_key, envelope).await,
        Ack::Duplicate
    );
    let shown = bob.node.history(&alice.name).unwrap();
    assert_eq!(
        shown
            .iter()
            .map(|m| (m.id, m.status, m.body.as_str()))
            .collect::<Vec<_>>(),
        [(id, MessageStatus::Received, "sealed")]
    );
}

#[tokio::test]
async fn given_an_envelope_whose_x3dh_identity_is_not_the_authenticated_sender_then_it_is_refused()
{
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    let mallory = world.given_a_registered_user("mallory").await;
    world.hub.set_online(&bob.name, false);
    alice
        .node
        .send(
            &bob.name,
            MessageId::random(&mut OsRng),
            "from alice".into(),
        )
        .await
        .unwrap();
    let envelope = mailed(&bob).await;

    // Mallory relays alice's envelope over her own authenticated connection.
    let ack = bob
        .node
        .receive(&mallory.name, &identity_of(&mallory), envelope)
        .await;
    assert_eq!(ack, Ack::Rejected(RejectReason::Undecryptable));
    let shown = bob.node.history(&mallory.name).unwrap();
    assert_eq!(
        shown.iter().map(|m| m.status).collect::<Vec<_>>(),
        [MessageStatus::Undecryptable],
        "kept as undecryptable from mallory, nothing taken for alice"
    );
    assert!(bob.node.history(&alice.name).unwrap().is_empty());
}

#[tokio::test]
async fn given_an_unknown_recipient_when_sending_then_a_clear_error_and_nothing_stored() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let nobody = user("nobody");
    let err = alice
        .node
        .send(&nobody, MessageId::random(&mut OsRng), "x".into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Directory(DirectoryError::NoSuchUser(ref name)) if *name == nobody),
        "{err}"
    );
    assert!(alice.node.history(&nobody).unwrap().is_empty());
    assert!(alice.store.outbox().unwrap().is_empty());

    // Nor is one's own name a contact.
    let err = alice
        .node
        .send(&alice.name, MessageId::random(&mut OsRng), "x".into())
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::OwnAccount(_)), "{err}");
    assert!(alice.node.contacts().unwrap().is_empty());
    assert!(alice.store.outbox().unwrap().is_empty());
}

#[tokio::test]
async fn given_no_account_then_commands_say_so_and_registering_twice_is_refused() {
    let world = given_a_rendezvous().await;
    let (network, _inbound) = world.hub.attach(user("carol"));
    let node = Node::new(
        MemoryStore::default(),
        InProcessDirectory::new(world.rendezvous.clone()),
        network,
        RecordingNotifier::default(),
        SystemClock,
    );
    let err = node
        .send(&user("alice"), MessageId::random(&mut OsRng), "x".into())
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::NotRegistered));
    node.register(&user("carol"), "correct horse battery")
        .await
        .unwrap();
    assert!(matches!(
        node.register(&user("carol"), "correct horse battery").await,
        Err(NodeError::AlreadyRegistered(_))
    ));
    assert_eq!(node.status().unwrap().username, Some(user("carol")));
}

#[tokio::test]
async fn given_a_drained_prekey_supply_when_refreshing_then_a_new_batch_is_published() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    use peerchat::ports::Directory;
    for _ in 0..90 {
        alice.directory.bundle(&bob.name).await.unwrap();
    }
    let before = bob.directory.upload_prekeys(None, vec![]).await.unwrap();
    assert_eq!(before, 10);

    bob.node.refresh_prekeys().await.unwrap();

    assert_eq!(
        bob.directory.upload_prekeys(None, vec![]).await.unwrap(),
        110
    );
    // The new keys work: a fresh initiator gets one and bob can answer.
    let carol = world.given_a_registered_user("carol").await;
    carol
        .node
        .send(&bob.name, MessageId::random(&mut OsRng), "hi".into())
        .await
        .unwrap();
    assert_eq!(bob.node.history(&carol.name).unwrap().len(), 1);
}

fn identity_of(u: &User) -> IdentityKey {
    let identity = u.store.identity().unwrap().unwrap();
    *peerchat::domain::IdentityKeyPair::from_seed(&identity.seed).public()
}

/// The envelope waiting in `u`'s mailbox (left there).
async fn mailed(u: &User) -> Envelope {
    use peerchat::ports::Directory;
    let mailbox = u.directory.fetch_mail(0, None).await.unwrap();
    Envelope::decode(&mailbox.items[0].envelope).unwrap()
}

#[tokio::test]
async fn given_a_stored_message_then_receipts_move_the_senders_status_to_delivered_then_read() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    let id = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, id, "did you get this?".into())
        .await
        .unwrap();
    assert_eq!(
        alice.node.history(&bob.name).unwrap()[0].status,
        MessageStatus::Sent
    );

    // Bob's delivery receipt waits in his outbox until it runs.
    bob.node.retry_outbox(u64::MAX).await.unwrap();
    assert_eq!(
        alice.node.history(&bob.name).unwrap()[0].status,
        MessageStatus::Delivered
    );
    assert!(alice.events.events().contains(&Event::StatusChanged {
        peer: bob.name.clone(),
        id,
        status: MessageStatus::Delivered
    }));

    // A first message from someone new is a request: no read receipt until bob accepts it.
    bob.node.accept_request(&alice.name).await.unwrap();
    bob.node.mark_read(&alice.name).await.unwrap();
    bob.node.retry_outbox(u64::MAX).await.unwrap();
    assert_eq!(
        alice.node.history(&bob.name).unwrap()[0].status,
        MessageStatus::Read
    );
    assert_eq!(
        bob.node.history(&alice.name).unwrap()[0].status,
        MessageStatus::Read
    );
    assert!(
        bob.store.outbox().unwrap().is_empty(),
        "receipts leave the outbox once acknowledged"
    );
}

#[tokio::test]
async fn given_a_registered_node_then_it_renews_its_certificate_and_logout_revokes_it() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    let before = alice.store.identity().unwrap().unwrap().certificate_pem;

    // Not due yet (a fresh 30-day certificate), then forced.
    assert!(
        !alice
            .node
            .renew_certificate(peerchat_pki::DEFAULT_PEER_VALIDITY, false)
            .await
            .unwrap()
    );
    assert!(
        alice
            .node
            .renew_certificate(peerchat_pki::DEFAULT_PEER_VALIDITY, true)
            .await
            .unwrap()
    );
    let after = alice.store.identity().unwrap().unwrap().certificate_pem;
    assert_ne!(before, after);
    // Still the same identity: the conversation goes on.
    alice
        .node
        .send(&bob.name, MessageId::random(&mut OsRng), "renewed".into())
        .await
        .unwrap();
    assert_eq!(bob.node.history(&alice.name).unwrap().len(), 1);

    alice.node.logout().await.unwrap();
    let crl = world.rendezvous.crl().await.unwrap();
    let serial = {
        use rustls::pki_types::pem::PemObject;
        let der = peerchat_pki::CertificateDer::from_pem_slice(after.as_bytes()).unwrap();
        peerchat_pki::verify(
            &[der],
            world.rendezvous.ca().certificate(),
            None,
            SystemTime::now(),
        )
        .unwrap()
        .serial
    };
    assert!(
        crl.is_revoked(&serial),
        "the renewed certificate is revoked at logout"
    );
}

#[tokio::test]
async fn given_an_old_signed_prekey_then_it_is_rotated_and_the_previous_one_still_answers_late_messages()
 {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    world.hub.set_online(&bob.name, false);
    // An initial message made with bob's first signed prekey, still in the mailbox.
    alice
        .node
        .send(
            &bob.name,
            MessageId::random(&mut OsRng),
            "made with the old prekey".into(),
        )
        .await
        .unwrap();

    assert!(
        !bob.node.rotate_signed_prekey(0).await.unwrap(),
        "the first look only records the time"
    );
    assert!(bob.node.rotate_signed_prekey(0).await.unwrap());
    assert!(
        !bob.node.rotate_signed_prekey(u64::MAX).await.unwrap(),
        "not due"
    );

    use peerchat::ports::Directory;
    let carol = world.given_a_registered_user("carol").await;
    let bundle = carol.directory.bundle(&bob.name).await.unwrap();
    assert_ne!(
        bundle.signed_prekey.id,
        peerchat::domain::PreKeyId(1),
        "new initiators get the new prekey"
    );

    world.hub.set_online(&bob.name, true);
    assert_eq!(bob.node.fetch_mail(0, None).await.unwrap().count, 1);
    assert_eq!(
        bob.node.history(&alice.name).unwrap()[0].body,
        "made with the old prekey"
    );
    carol
        .node
        .send(
            &bob.name,
            MessageId::random(&mut OsRng),
            "made with the new one".into(),
        )
        .await
        .unwrap();
    assert_eq!(
        bob.node.history(&carol.name).unwrap()[0].body,
        "made with the new one"
    );
}

#[tokio::test]
async fn given_bob_logs_in_with_a_new_key_then_alice_gets_a_key_change_event_and_her_send_is_held()
{
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    alice
        .node
        .send(&bob.name, MessageId::random(&mut OsRng), "first".into())
        .await
        .unwrap();

    // Bob on a new install: a new node, logged in with a new key.
    let (new_bob, key) = world.given_a_new_install_of(&bob).await;

    let id = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, id, "second".into())
        .await
        .unwrap();
    assert!(alice.events.events().contains(&Event::KeyChanged {
        peer: bob.name.clone()
    }));
    assert_eq!(
        alice.node.history(&bob.name).unwrap()[1].status,
        MessageStatus::Held
    );
    assert!(new_bob.history(&alice.name).unwrap().is_empty());

    // Compare before accepting: alice sees the number of bob's new key (the old one beside it),
    // and bob's new install, for whom alice is not a contact yet, the number of her certified
    // key: the two match.
    let at_alice = alice.node.safety_number(&bob.name).await.unwrap();
    let at_new_bob = new_bob.safety_number(&alice.name).await.unwrap();
    assert_eq!(at_alice.of, KeyKind::Pending);
    assert_eq!(at_new_bob.of, KeyKind::Certified);
    assert_eq!(at_alice.shown.digits(), at_new_bob.shown.digits());
    assert_ne!(
        at_alice.pinned.as_ref().unwrap().digits(),
        at_alice.shown.digits(),
        "the old key's number is given beside it"
    );
    // A number that is not the new key's changes nothing.
    assert!(matches!(
        alice
            .node
            .verify(&bob.name, &at_alice.pinned.unwrap().grouped())
            .await,
        Err(NodeError::SafetyNumberMismatch)
    ));
    assert_eq!(
        alice.node.history(&bob.name).unwrap()[1].status,
        MessageStatus::Held
    );

    // Verifying the new key's number accepts it and marks it verified in one step.
    alice
        .node
        .verify(&bob.name, &at_alice.shown.grouped())
        .await
        .unwrap();
    assert_eq!(new_bob.history(&alice.name).unwrap()[0].body, "second");
    let contact = alice.store.contact(&(&bob.name).into()).unwrap().unwrap();
    assert!(contact.verified && contact.pending_key.is_none());
    assert_eq!(contact.identity_key, *key.public());
    assert_eq!(
        alice.node.safety_number(&bob.name).await.unwrap().of,
        KeyKind::Pinned
    );
}

#[tokio::test]
async fn given_mail_from_a_new_key_arriving_while_the_key_is_accepted_then_it_is_stored_after_the_held_mail()
 {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    send(&bob, &alice, "from the old install").await;

    // Bob on a new install writes "one" while alice is offline; she fetches it: held.
    world.hub.set_online(&alice.name, false);
    let (new_bob, _) = world.given_a_new_install_of(&bob).await;
    for text in ["one", "two"] {
        new_bob
            .send(&alice.name, MessageId::random(&mut OsRng), text.into())
            .await
            .unwrap();
        if text == "one" {
            assert_eq!(alice.node.fetch_mail(0, None).await.unwrap().count, 1);
        }
    }
    assert_eq!(
        texts(&alice.node, &bob.name),
        [(Direction::Incoming, "from the old install".to_string())],
        "\"one\" is held"
    );

    // Alice accepts the new key; the accept is stopped at its first flush (the new key is
    // saved, the held mail not taken yet) while her next fetch brings "two".
    let gate = alice.store.hold_flushes();
    let accept = tokio::spawn({
        let (node, bob) = (alice.node.clone(), bob.name.clone());
        async move { node.accept_key(&bob).await }
    });
    while gate.waiting() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fetch = tokio::spawn({
        let node = alice.node.clone();
        async move { node.fetch_mail(0, None).await }
    });
    // Unordered, "two" would be decrypted and committed now, and wait at the gate too.
    for _ in 0..100 {
        if gate.waiting() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.open();
    accept.await.unwrap().unwrap();
    assert_eq!(fetch.await.unwrap().unwrap().count, 1);

    assert_eq!(
        texts(&alice.node, &bob.name),
        ["from the old install", "one", "two"].map(|t| (Direction::Incoming, t.to_string())),
        "what was held comes before what arrived while the key was accepted"
    );
}

#[tokio::test]
async fn given_a_second_factor_when_logging_in_on_a_new_install_then_the_code_is_required() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let enrolment = alice.node.enable_totp().await.unwrap();
    assert!(enrolment.uri.starts_with("otpauth://totp/"));
    assert!(!format!("{enrolment:?}").contains(&enrolment.secret));
    let totp = totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        totp_rs::Secret::Encoded(enrolment.secret)
            .to_bytes()
            .unwrap(),
        Some("peerchat".into()),
        "alice".into(),
    )
    .unwrap();
    assert!(alice.node.confirm_totp("000000x").await.is_err());
    // One moment for every code of the test, so that no step boundary falls between them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    alice.node.confirm_totp(&totp.generate(now)).await.unwrap();

    let new_install = || {
        Node::new(
            MemoryStore::default(),
            InProcessDirectory::new(world.rendezvous.clone()),
            world.hub.attach(alice.name.clone()).0,
            RecordingNotifier::default(),
            SystemClock,
        )
    };
    let without_code = new_install();
    let refused = without_code
        .login(&alice.name, "correct horse battery", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, NodeError::Directory(DirectoryError::TotpRequired)),
        "{refused:?}"
    );
    assert!(without_code.status().unwrap().username.is_none());

    // The confirmation used this step's code, and each code works once: the next step's.
    let with_used_code = new_install();
    assert!(
        with_used_code
            .login(
                &alice.name,
                "correct horse battery",
                Some(&totp.generate(now)),
            )
            .await
            .is_err()
    );
    let next = now + 30;
    let with_code = new_install();
    with_code
        .login(
            &alice.name,
            "correct horse battery",
            Some(&totp.generate(next)),
        )
        .await
        .unwrap();
    assert_eq!(
        with_code.status().unwrap().username.as_ref(),
        Some(&alice.name)
    );
}

#[tokio::test]
async fn given_a_receipt_in_the_outbox_then_status_counts_only_messages_and_its_ack_is_no_event() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    // Bob writes; alice stores it and queues a delivery receipt (sent by her next outbox run).
    let id = MessageId::random(&mut OsRng);
    bob.node
        .send(&alice.name, id, "hello".into())
        .await
        .unwrap();
    assert_eq!(alice.node.history(&bob.name).unwrap().len(), 1);
    assert_eq!(alice.store.outbox().unwrap().len(), 1, "the receipt");
    // `status` counts messages waiting, as `history` shows them: alice has none.
    assert_eq!(alice.node.status().unwrap().outbox, 0);

    // An acknowledged receipt is not a message: no status event names its id.
    alice.node.retry_outbox(u64::MAX).await.unwrap();
    assert!(
        alice.store.outbox().unwrap().is_empty(),
        "the receipt went out"
    );
    let ids_known: Vec<MessageId> = alice
        .node
        .history(&bob.name)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    for event in alice.events.events() {
        if let Event::StatusChanged { id, .. } = event {
            assert!(
                ids_known.contains(&id),
                "an event for an id no history knows: {id}"
            );
        }
    }
}

#[tokio::test]
async fn given_the_receipt_processed_before_the_ack_then_the_status_stays_delivered() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    // Bob's node answers each envelope only after it has sent its own delivery receipt, so
    // alice processes the receipt before the acknowledgement of her send.
    let bob_name = user("bob");
    let (network, inbound) = world.hub.attach(bob_name.clone());
    let bob = Arc::new(Node::new(
        MemoryStore::default(),
        InProcessDirectory::new(world.rendezvous.clone()),
        network,
        RecordingNotifier::default(),
        SystemClock,
    ));
    bob.register(&bob_name, "correct horse battery")
        .await
        .unwrap();
    let identity = bob.resume().unwrap();
    world.hub.set_key(
        &bob_name,
        *peerchat::domain::IdentityKeyPair::from_seed(&identity.seed).public(),
    );
    let receiver = bob.clone();
    tokio::spawn(inbound.serve(Arc::new(EnvelopeFn(
        move |from: AuthenticatedPeer, envelope| {
            let receiver = receiver.clone();
            async move {
                let ack = receiver
                    .receive(&from.username, &from.identity_key, envelope)
                    .await;
                receiver.retry_outbox(u64::MAX).await.unwrap();
                ack
            }
        },
    ))));

    let id = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob_name, id, "receipt first".into())
        .await
        .unwrap();
    let status = alice.node.history(&bob_name).unwrap()[0].status;
    assert_eq!(
        status,
        MessageStatus::Delivered,
        "the late acknowledgement did not take the status back"
    );
    let moves: Vec<MessageStatus> = alice
        .events
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::StatusChanged {
                id: got, status, ..
            } if got == id => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(
        moves,
        [MessageStatus::Delivered],
        "only real moves are events"
    );
}

/// The transport's trust as a test sees it: the CRLs handed to it.
#[derive(Default)]
struct RecordingTrust {
    installed: std::sync::Mutex<Vec<u64>>,
    presented: std::sync::Mutex<Vec<String>>,
    ca: std::sync::OnceLock<peerchat_pki::CaCertificate>,
}

impl TransportTrust for RecordingTrust {
    fn crl_number(&self) -> Option<u64> {
        self.installed.lock().unwrap().last().copied()
    }

    async fn install_crl(&self, crl: Vec<u8>) -> bool {
        let crl = peerchat_pki::Crl::from_der(&crl, self.ca.get().unwrap()).unwrap();
        let mut installed = self.installed.lock().unwrap();
        if installed.last().is_some_and(|n| *n > crl.number()) {
            return false;
        }
        installed.push(crl.number());
        true
    }

    fn present_certificate(&self, certificate_pem: &str) {
        self.presented
            .lock()
            .unwrap()
            .push(certificate_pem.to_owned());
    }
}

#[tokio::test]
async fn maintenance_empties_the_mailbox_follows_revocations_and_stops_when_cancelled() {
    let world = given_a_rendezvous().await;
    let alice = world.given_a_registered_user("alice").await;
    let bob = world.given_a_registered_user("bob").await;
    let carol = world.given_a_registered_user("carol").await;
    world.hub.set_online(&bob.name, false);
    let id = MessageId::random(&mut OsRng);
    alice
        .node
        .send(&bob.name, id, "while you were away".into())
        .await
        .unwrap();
    world.hub.set_online(&bob.name, true);
    let trust = Arc::new(RecordingTrust::default());
    trust
        .ca
        .set(world.rendezvous.ca().certificate().clone())
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let schedule = peerchat::usecases::Schedule {
        mailbox_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let maintained = tokio::spawn(bob.node.clone().maintain(
        trust.clone(),
        schedule,
        cancel.clone(),
    ));

    // The mailbox is emptied at once, and the CRL in force is fetched.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bob.node.history(&alice.name).unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mail never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bob.node.history(&alice.name).unwrap()[0].id, id);
    while trust.crl_number().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CRL was installed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = trust.crl_number();
    // Carol logs out: her certificate is revoked, and bob's waiting long poll answers with the
    // new CRL number, so the new CRL is installed at once rather than at the next refresh.
    carol.node.logout().await.unwrap();
    while trust.crl_number() == first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new CRL never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(trust.crl_number() > first);

    // Cancelled, every task stops, even the long poll.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), maintained)
        .await
        .expect("maintenance stopped")
        .unwrap();
}

/// Echoes every stream and acknowledges every envelope: bob's side of the hub test.
struct Echo;

impl peerchat::ports::Inbound for Echo {
    async fn envelope(&self, _from: AuthenticatedPeer, _envelope: Envelope) -> Ack {
        Ack::Stored
    }

    async fn stream(&self, stream: peerchat::ports::PeerStream) {
        use futures::{AsyncReadExt, AsyncWriteExt};
        let greeting = format!("hello {}", stream.peer.username);
        let (mut reader, mut writer) = stream.io.split();
        let mut asked = Vec::new();
        reader.read_to_end(&mut asked).await.unwrap();
        writer
            .write_all(&[greeting.as_bytes(), &asked].concat())
            .await
            .unwrap();
        writer.close().await.unwrap();
    }
}

#[tokio::test]
async fn the_in_memory_hub_carries_authenticated_streams() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use peerchat::ports::{Recipient, Streams};
    let hub = Hub::default();
    let (alice, _alice_inbox) = hub.attach(user("alice"));
    let (_bob, bob_inbox) = hub.attach(user("bob"));
    let key = |seed| {
        *peerchat::domain::IdentityKeyPair::generate(&mut crate::support::rng(seed)).public()
    };
    hub.set_key(&user("alice"), key(1));
    hub.set_key(&user("bob"), key(2));
    tokio::spawn(bob_inbox.serve(Arc::new(Echo)));
    let bob = Recipient {
        username: user("bob"),
        identity_key: key(2),
        addresses: Vec::new(),
    };

    let stream = alice.open_stream(&bob, "/peerchat/test/1").await.unwrap();
    assert_eq!(stream.peer.username, user("bob"));
    let (mut reader, mut writer) = stream.io.split();
    writer.write_all(b", 1 MiB follows").await.unwrap();
    writer.write_all(&vec![7u8; 1 << 20]).await.unwrap();
    writer.close().await.unwrap();
    let mut back = Vec::new();
    reader.read_to_end(&mut back).await.unwrap();
    assert!(
        back.starts_with(b"hello alice, 1 MiB follows"),
        "bob's side names alice"
    );
    assert_eq!(back.len(), b"hello alice, 1 MiB follows".len() + (1 << 20));

    // Another key under bob's name is not bob.
    let impostor = Recipient {
        identity_key: key(3),
        ..bob
    };
    assert!(matches!(
        alice.open_stream(&impostor, "/peerchat/test/1").await,
        Err(peerchat::ports::DeliveryError::WrongPeer)
    ));
}
