//! In-memory adapters of the driven ports, for tests and in-process demos.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use peerchat_pki::Username;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{
    Ack, Address, ConversationId, Envelope, GroupId, MessageId, OneTimePreKeyPair, PreKeyId,
    RejectReason, Session, SignedPreKeyPair,
};
use crate::ports::{
    AuthenticatedPeer, Batch, Committed, Contact, ContactStore, Conversation, DeliveryError,
    Direction, Event, GroupStore, HeldInbound, IdentityStore, IfStored, Inbound, LocalIdentity,
    MAX_HELD_INBOUND, MemberMoved, MessageStatus, MessageStore, Messages, Notifier, OutboxEntry,
    OutboxStore, Page, PeerStream, PreKeyStore, Reachability, ReachabilityEvent, Recipient,
    SessionStore, Store, StoreError, StoredMessage, Streams, Write,
};

#[derive(Default)]
struct Inner {
    identity: Option<LocalIdentity>,
    signed: HashMap<PreKeyId, Vec<u8>>,
    one_time: HashMap<PreKeyId, Vec<u8>>,
    next_prekey_id: u32,
    signed_rotated_at: Option<u64>,
    contacts: BTreeMap<Address, Contact>,
    known_addresses: HashMap<Address, Vec<String>>,
    sessions: HashMap<Address, Vec<u8>>,
    messages: HashMap<ConversationId, Vec<StoredMessage>>,
    unread: HashMap<ConversationId, u64>,
    outbox: Vec<OutboxEntry>,
    order: u64,
    last_activity: HashMap<ConversationId, u64>,
    held_inbound: HashMap<Username, Vec<HeldInbound>>,
    groups: BTreeMap<GroupId, crate::domain::Group>,
    file_records: BTreeMap<crate::domain::FileId, crate::ports::FileRecord>,
    file_bytes: HashMap<crate::domain::FileId, Vec<u8>>,
    published: BTreeMap<std::path::PathBuf, Vec<u8>>,
    people: BTreeMap<Username, crate::domain::Person>,
    own_profile: Option<crate::domain::Profile>,
    settings: Option<crate::ports::Settings>,
    /// While set, every flush waits until the gate opens.
    flush_gate: Option<FlushGate>,
}

impl Inner {
    /// Appends a message to its conversation and makes that conversation the most recent.
    fn append(&mut self, message: &StoredMessage) {
        self.messages
            .entry(message.conversation())
            .or_default()
            .push(message.clone());
        self.order += 1;
        self.last_activity
            .insert(message.conversation(), self.order);
    }
}

/// The in-memory [`Store`]: same contract as the sled adapter, nothing survives the process.
/// Clones share the same data (a test keeps one to look inside the node's).
#[derive(Default, Clone)]
pub struct MemoryStore(Arc<Mutex<Inner>>);

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStore")
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl MemoryStore {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MessageStore for MemoryStore {
    fn message(
        &self,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self
            .inner()
            .messages
            .get(conversation)
            .and_then(|m| m.iter().find(|m| m.id == *id).cloned()))
    }

    fn history(
        &self,
        conversation: &ConversationId,
        page: Page,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let inner = self.inner();
        let Some(all) = inner.messages.get(conversation) else {
            return Ok(Vec::new());
        };
        let end = match page.before {
            None => all.len(),
            Some(before) => match all.iter().position(|m| m.id == before) {
                Some(at) => at,
                None => return Ok(Vec::new()),
            },
        };
        let start = end.saturating_sub(page.limit);
        Ok(all[start..end].to_vec())
    }

    fn search(
        &self,
        query: &crate::domain::search::Query,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let hits = self
            .inner()
            .messages
            .values()
            .flatten()
            .filter(|m| query.matches(m))
            .cloned()
            .collect();
        Ok(crate::domain::search::newest_first(hits, limit))
    }

    fn conversations(&self) -> Result<Vec<Conversation>, StoreError> {
        let inner = self.inner();
        let mut list: Vec<(u64, Conversation)> = inner
            .messages
            .iter()
            .filter_map(|(id, messages)| {
                Some((
                    inner.last_activity.get(id).copied().unwrap_or(0),
                    Conversation {
                        id: id.clone(),
                        messages: messages.len() as u64,
                        unread: inner.unread.get(id).copied().unwrap_or(0),
                        last: messages.last()?.clone(),
                    },
                ))
            })
            .collect();
        list.sort_by_key(|(order, _)| std::cmp::Reverse(*order));
        Ok(list.into_iter().map(|(_, c)| c).collect())
    }

    fn message_count(&self, conversation: &ConversationId) -> Result<u64, StoreError> {
        Ok(self
            .inner()
            .messages
            .get(conversation)
            .map_or(0, |m| m.len() as u64))
    }

    fn hold_inbound(&self, held: &HeldInbound) -> Result<bool, StoreError> {
        let mut inner = self.inner();
        let list = inner.held_inbound.entry(held.from.clone()).or_default();
        if list.iter().any(|h| h.envelope.id == held.envelope.id) {
            return Ok(true);
        }
        if list.len() >= MAX_HELD_INBOUND {
            return Ok(false);
        }
        list.push(held.clone());
        Ok(true)
    }

    fn held_inbound(&self, peer: &Username) -> Result<Vec<HeldInbound>, StoreError> {
        Ok(self
            .inner()
            .held_inbound
            .get(peer)
            .cloned()
            .unwrap_or_default())
    }

    fn release_inbound(&self, peer: &Username, id: &MessageId) -> Result<(), StoreError> {
        if let Some(list) = self.inner().held_inbound.get_mut(peer) {
            list.retain(|h| h.envelope.id != *id);
        }
        Ok(())
    }
}

impl IdentityStore for MemoryStore {
    fn identity(&self) -> Result<Option<LocalIdentity>, StoreError> {
        Ok(self.inner().identity.clone())
    }

    fn save_identity(
        &self,
        identity: &LocalIdentity,
        signed: &SignedPreKeyPair,
        one_time: &[OneTimePreKeyPair],
    ) -> Result<(), StoreError> {
        let mut inner = self.inner();
        inner.identity = Some(identity.clone());
        inner
            .signed
            .insert(signed.id(), postcard::to_stdvec(signed).map_err(corrupt)?);
        for k in one_time {
            inner
                .one_time
                .insert(k.id(), postcard::to_stdvec(k).map_err(corrupt)?);
            inner.next_prekey_id = inner.next_prekey_id.max(k.id().0 + 1);
        }
        inner.next_prekey_id = inner.next_prekey_id.max(signed.id().0 + 1);
        Ok(())
    }

    fn save_certificate(&self, certificate_pem: &str) -> Result<(), StoreError> {
        if let Some(identity) = self.inner().identity.as_mut() {
            identity.certificate_pem = certificate_pem.to_owned();
        }
        Ok(())
    }
}

impl PreKeyStore for MemoryStore {
    fn signed_prekey(&self, id: PreKeyId) -> Result<Option<SignedPreKeyPair>, StoreError> {
        self.inner()
            .signed
            .get(&id)
            .map(|b| postcard::from_bytes(b).map_err(corrupt))
            .transpose()
    }

    fn one_time_prekey(&self, id: PreKeyId) -> Result<Option<OneTimePreKeyPair>, StoreError> {
        self.inner()
            .one_time
            .get(&id)
            .map(|b| postcard::from_bytes(b).map_err(corrupt))
            .transpose()
    }

    fn add_one_time_prekeys(&self, keys: &[OneTimePreKeyPair]) -> Result<(), StoreError> {
        let mut inner = self.inner();
        for k in keys {
            inner
                .one_time
                .insert(k.id(), postcard::to_stdvec(k).map_err(corrupt)?);
        }
        Ok(())
    }

    fn next_prekey_id(&self) -> Result<PreKeyId, StoreError> {
        let mut inner = self.inner();
        inner.next_prekey_id = inner.next_prekey_id.max(1);
        let id = inner.next_prekey_id;
        inner.next_prekey_id += 1;
        Ok(PreKeyId(id))
    }

    fn signed_prekey_rotated_at(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.inner().signed_rotated_at)
    }

    fn set_signed_prekey_rotated_at(&self, at_ms: u64) -> Result<(), StoreError> {
        self.inner().signed_rotated_at = Some(at_ms);
        Ok(())
    }

    fn add_signed_prekey(&self, key: &SignedPreKeyPair, at_ms: u64) -> Result<(), StoreError> {
        let mut inner = self.inner();
        inner
            .signed
            .insert(key.id(), postcard::to_stdvec(key).map_err(corrupt)?);
        inner.signed_rotated_at = Some(at_ms);
        Ok(())
    }
}

impl ContactStore for MemoryStore {
    fn contact(&self, device: &Address) -> Result<Option<Contact>, StoreError> {
        Ok(self.inner().contacts.get(device).cloned())
    }

    fn save_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        self.inner()
            .contacts
            .insert(contact.address(), contact.clone());
        Ok(())
    }

    fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        Ok(self.inner().contacts.values().cloned().collect())
    }

    fn known_addresses(&self, device: &Address) -> Result<Vec<String>, StoreError> {
        Ok(self
            .inner()
            .known_addresses
            .get(device)
            .cloned()
            .unwrap_or_default())
    }

    fn save_known_addresses(
        &self,
        device: &Address,
        addresses: &[String],
    ) -> Result<(), StoreError> {
        self.inner()
            .known_addresses
            .insert(device.clone(), addresses.to_vec());
        Ok(())
    }
}

impl SessionStore for MemoryStore {
    fn session(&self, device: &Address) -> Result<Option<Session>, StoreError> {
        self.inner()
            .sessions
            .get(device)
            .map(|b| Session::from_bytes(b).map_err(corrupt))
            .transpose()
    }
}

impl MemoryStore {
    /// The bytes of a file published at `path` (what a download directory would hold).
    pub fn published(&self, path: &std::path::Path) -> Option<Vec<u8>> {
        self.inner().published.get(path).cloned()
    }
}

impl crate::ports::FileStore for MemoryStore {
    fn file(
        &self,
        id: &crate::domain::FileId,
    ) -> Result<Option<crate::ports::FileRecord>, StoreError> {
        Ok(self.inner().file_records.get(id).cloned())
    }

    fn files(&self) -> Result<Vec<crate::ports::FileRecord>, StoreError> {
        let mut files: Vec<_> = self.inner().file_records.values().cloned().collect();
        files.sort_by_key(|f| f.at_ms);
        Ok(files)
    }

    async fn keep_file(
        &self,
        id: &crate::domain::FileId,
        source: &std::path::Path,
        max: u64,
    ) -> Result<(u64, [u8; 32]), crate::ports::BlobError> {
        use sha2::Digest;
        let bytes = std::fs::read(source).map_err(|_| {
            crate::ports::BlobError::NotFound(format!("{} is not a file", source.display()))
        })?;
        if bytes.len() as u64 > max {
            return Err(crate::ports::BlobError::TooLarge(max));
        }
        let digest = sha2::Sha256::digest(&bytes).into();
        let size = bytes.len() as u64;
        self.inner().file_bytes.insert(*id, bytes);
        Ok((size, digest))
    }

    async fn read_file(
        &self,
        id: &crate::domain::FileId,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, crate::ports::BlobError> {
        let inner = self.inner();
        let bytes = inner
            .file_bytes
            .get(id)
            .ok_or_else(|| crate::ports::BlobError::NotFound("no such file here".into()))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        bytes
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| crate::ports::BlobError::Io("read past the end".into()))
    }

    async fn write_file(
        &self,
        id: &crate::domain::FileId,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), crate::ports::BlobError> {
        let mut inner = self.inner();
        let file = inner.file_bytes.entry(*id).or_default();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if file.len() < start + bytes.len() {
            file.resize(start + bytes.len(), 0);
        }
        file[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    async fn digest_file(
        &self,
        id: &crate::domain::FileId,
        size: u64,
    ) -> Result<[u8; 32], crate::ports::BlobError> {
        use sha2::Digest;
        let inner = self.inner();
        let bytes = inner
            .file_bytes
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let end = usize::try_from(size).unwrap_or(usize::MAX).min(bytes.len());
        Ok(sha2::Sha256::digest(&bytes[..end]).into())
    }

    async fn publish_file(
        &self,
        id: &crate::domain::FileId,
        name: &str,
        keep: bool,
    ) -> Result<std::path::PathBuf, crate::ports::BlobError> {
        let mut inner = self.inner();
        let bytes = match keep {
            true => inner.file_bytes.get(id).cloned().unwrap_or_default(),
            false => inner.file_bytes.remove(id).unwrap_or_default(),
        };
        let mut n = 1;
        let path = loop {
            let candidate = std::path::PathBuf::from("memory").join(match n {
                1 => name.to_owned(),
                n => crate::domain::file::numbered_name(name, n),
            });
            if !inner.published.contains_key(&candidate) {
                break candidate;
            }
            n += 1;
        };
        inner.published.insert(path.clone(), bytes);
        Ok(path)
    }

    fn file_path(&self, _: &crate::domain::FileId) -> Option<std::path::PathBuf> {
        None
    }

    async fn discard_file(
        &self,
        id: &crate::domain::FileId,
    ) -> Result<(), crate::ports::BlobError> {
        self.inner().file_bytes.remove(id);
        Ok(())
    }
}

impl GroupStore for MemoryStore {
    fn group(&self, id: &GroupId) -> Result<Option<crate::domain::Group>, StoreError> {
        Ok(self.inner().groups.get(id).cloned())
    }

    fn groups(&self) -> Result<Vec<crate::domain::Group>, StoreError> {
        Ok(self.inner().groups.values().cloned().collect())
    }
}

impl crate::ports::PeopleStore for MemoryStore {
    fn person(&self, username: &Username) -> Result<Option<crate::domain::Person>, StoreError> {
        Ok(self.inner().people.get(username).cloned())
    }

    fn people(&self) -> Result<Vec<crate::domain::Person>, StoreError> {
        Ok(self.inner().people.values().cloned().collect())
    }

    fn own_profile(&self) -> Result<Option<crate::domain::Profile>, StoreError> {
        Ok(self.inner().own_profile.clone())
    }

    fn save_own_profile(&self, profile: &crate::domain::Profile) -> Result<(), StoreError> {
        self.inner().own_profile = Some(profile.clone());
        Ok(())
    }

    fn settings(&self) -> Result<Option<crate::ports::Settings>, StoreError> {
        Ok(self.inner().settings)
    }

    fn save_settings(&self, settings: &crate::ports::Settings) -> Result<(), StoreError> {
        self.inner().settings = Some(*settings);
        Ok(())
    }
}

impl OutboxStore for MemoryStore {
    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(self.inner().outbox.clone())
    }
}

/// Whether a message in this state counts as unread.
fn is_unread(message: &StoredMessage) -> bool {
    message.direction == Direction::Incoming && message.status == MessageStatus::Received
}

impl Inner {
    fn find(
        &mut self,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Option<&mut StoredMessage> {
        self.messages
            .get_mut(conversation)
            .and_then(|m| m.iter_mut().find(|m| m.id == *id))
    }

    fn add_unread(&mut self, conversation: &ConversationId, delta: i64) {
        let count = self.unread.entry(conversation.clone()).or_default();
        *count = count.saturating_add_signed(delta);
    }
}

impl Store for MemoryStore {
    fn commit(&self, batch: &Batch) -> Result<Committed, StoreError> {
        let mut inner = self.inner();
        // All or nothing: the only refusal is a duplicate, checked before anything is written.
        for write in &batch.0 {
            if let Write::Message(message, if_stored) = write
                && let Some(earlier) = inner.find(&message.conversation(), &message.id)
            {
                let replace = match if_stored {
                    IfStored::Skip => false,
                    IfStored::ReplaceUndecryptable => {
                        earlier.status == MessageStatus::Undecryptable
                    }
                    IfStored::Replace => true,
                };
                if !replace {
                    return Ok(Committed {
                        duplicate: true,
                        ..Committed::default()
                    });
                }
            }
        }
        let mut committed = Committed::default();
        for write in &batch.0 {
            match write {
                Write::Session(device, session) => {
                    inner
                        .sessions
                        .insert(device.clone(), session.to_bytes().to_vec());
                }
                Write::ConsumePreKey(id) => {
                    inner.one_time.remove(id);
                }
                Write::Message(message, _) => {
                    let conversation = message.conversation();
                    let now = i64::from(is_unread(message));
                    match inner.find(&conversation, &message.id) {
                        Some(earlier) => {
                            let was = i64::from(is_unread(earlier));
                            *earlier = message.clone();
                            inner.add_unread(&conversation, now - was);
                        }
                        None => {
                            inner.append(message);
                            inner.add_unread(&conversation, now);
                        }
                    }
                }
                Write::Status {
                    conversation,
                    id,
                    status,
                    only,
                } => {
                    let Some(m) = inner.find(conversation, id) else {
                        continue;
                    };
                    if only.is_some_and(|d| d != m.direction) || !m.status.may_become(*status) {
                        continue;
                    }
                    let was = i64::from(is_unread(m));
                    m.status = *status;
                    let now = i64::from(is_unread(m));
                    inner.add_unread(conversation, now - was);
                    committed.advanced.push(*id);
                }
                Write::Amend {
                    conversation,
                    id,
                    by,
                    at_ms,
                    amendment,
                } => {
                    if let Some(m) = inner.find(conversation, id)
                        && m.amend(by, amendment, *at_ms)
                    {
                        committed.amended.push(*id);
                    }
                }
                Write::Enqueue(entry) => {
                    if !inner
                        .outbox
                        .iter()
                        .any(|o| o.to == entry.to && o.envelope.id == entry.envelope.id)
                    {
                        inner.outbox.push(entry.clone());
                    }
                }
                Write::Dequeue(device, id) => {
                    inner
                        .outbox
                        .retain(|o| !(o.to == *device && o.envelope.id == *id));
                }
                Write::Group(record) => {
                    inner.groups.insert(record.state().id, (**record).clone());
                }
                Write::Person(person) => {
                    inner
                        .people
                        .insert(person.username.clone(), (**person).clone());
                }
                Write::File(record) => {
                    inner
                        .file_records
                        .insert(record.offer.id, (**record).clone());
                }
                Write::MemberStatus {
                    group,
                    id,
                    member,
                    status,
                } => {
                    let Some(m) = inner.find(&ConversationId::Group(*group), id) else {
                        continue;
                    };
                    if m.move_member(member, *status) {
                        committed.members.push(MemberMoved {
                            group: *group,
                            id: *id,
                            member: member.clone(),
                            status: *status,
                            overall: m.status,
                        });
                    }
                }
            }
        }
        Ok(committed)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let gate = self.inner().flush_gate.clone();
        if let Some(gate) = gate {
            gate.pass().await;
        }
        Ok(())
    }
}

impl MemoryStore {
    /// Holds back every flush from now until the returned gate opens: a test stops a use case
    /// at its next flush (after a commit, before the acknowledgement), to run another one there.
    pub fn hold_flushes(&self) -> FlushGate {
        let gate = FlushGate {
            open: Arc::new(tokio::sync::watch::channel(false).0),
            waiting: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        };
        self.inner().flush_gate = Some(gate.clone());
        gate
    }
}

/// Flushes held back by [`MemoryStore::hold_flushes`].
#[derive(Debug, Clone)]
pub struct FlushGate {
    open: Arc<tokio::sync::watch::Sender<bool>>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl FlushGate {
    /// How many flushes wait at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets the waiting flushes, and every later one, through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    async fn pass(&self) {
        let mut open = self.open.subscribe();
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // The sender lives in `self`, so the wait ends only when the gate opens.
        let _ = open.wait_for(|open| *open).await;
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Records every event, for tests.
#[derive(Debug, Default, Clone)]
pub struct RecordingNotifier(pub Arc<Mutex<Vec<Event>>>);

impl RecordingNotifier {
    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Notifier for RecordingNotifier {
    fn notify(&self, event: Event) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }
}

/// An in-process network: nodes attach under their username and identity key; delivery hands
/// the envelope to the recipient's [`HubInbox`] and waits for its acknowledgement, and streams
/// are in-memory pipes.
#[derive(Debug, Default, Clone)]
pub struct Hub(Arc<Mutex<HashMap<Username, HubEntry>>>);

#[derive(Debug, Clone)]
struct HubEntry {
    /// The key the node authenticates with, once it has one.
    key: Option<crate::domain::IdentityKey>,
    queue: mpsc::Sender<HubItem>,
    online: bool,
}

#[derive(Debug)]
enum HubItem {
    Envelope {
        from: AuthenticatedPeer,
        envelope: Envelope,
        reply: oneshot::Sender<Ack>,
    },
    Stream(PeerStream),
}

/// What arrives for one node on a [`Hub`], until [`HubInbox::serve`] hands it to the node.
#[derive(Debug)]
pub struct HubInbox(mpsc::Receiver<HubItem>);

impl HubInbox {
    /// Hands everything that arrives to `inbound` (envelopes up to 64 at once). Returns when
    /// the hub is dropped.
    pub async fn serve<I: Inbound>(self, inbound: Arc<I>) {
        let mut queue = self.0;
        let stream = futures::stream::poll_fn(move |cx| queue.poll_recv(cx));
        futures::StreamExt::for_each_concurrent(stream, 64, |item| {
            let inbound = inbound.clone();
            async move {
                match item {
                    HubItem::Envelope {
                        from,
                        envelope,
                        reply,
                    } => {
                        let _ = reply.send(inbound.envelope(from, envelope).await);
                    }
                    HubItem::Stream(stream) => inbound.stream(stream).await,
                }
            }
        })
        .await;
    }
}

/// One node's connection to a [`Hub`].
#[derive(Debug, Clone)]
pub struct HubNetwork {
    hub: Hub,
    me: Username,
    reachability: tokio::sync::broadcast::Sender<ReachabilityEvent>,
}

impl Hub {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Username, HubEntry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a node; returns its network and what arrives for it.
    pub fn attach(&self, username: Username) -> (HubNetwork, HubInbox) {
        let (queue, rx) = mpsc::channel(1024);
        self.entries().insert(
            username.clone(),
            HubEntry {
                key: None,
                queue,
                online: true,
            },
        );
        (
            HubNetwork {
                hub: self.clone(),
                me: username,
                reachability: tokio::sync::broadcast::channel(64).0,
            },
            HubInbox(rx),
        )
    }

    /// Sets the identity key `username` authenticates with (after it registered).
    pub fn set_key(&self, username: &Username, key: crate::domain::IdentityKey) {
        if let Some(entry) = self.entries().get_mut(username) {
            entry.key = Some(key);
        }
    }

    /// Takes a node off or back on the network.
    pub fn set_online(&self, username: &Username, online: bool) {
        if let Some(entry) = self.entries().get_mut(username) {
            entry.online = online;
        }
    }
}

impl HubNetwork {
    /// The recipient's queue and our own authenticated identity, if `to` is reachable as the
    /// key it is expected to have.
    fn route(
        &self,
        to: &Recipient,
    ) -> Result<(mpsc::Sender<HubItem>, AuthenticatedPeer), DeliveryError> {
        let entries = self.hub.entries();
        let target = entries
            .get(&to.username)
            .filter(|t| t.online)
            .ok_or_else(|| {
                DeliveryError::Unreachable(format!("{} is not on the hub", to.username))
            })?;
        let sender_key = entries
            .get(&self.me)
            .and_then(|e| e.key)
            .ok_or_else(|| DeliveryError::Refused("this node has no identity yet".into()))?;
        if target.key != Some(to.identity_key) {
            return Err(DeliveryError::WrongPeer);
        }
        Ok((
            target.queue.clone(),
            AuthenticatedPeer {
                username: self.me.clone(),
                identity_key: sender_key,
            },
        ))
    }
}

impl Messages for HubNetwork {
    async fn deliver(&self, to: &Recipient, envelope: Envelope) -> Result<Ack, DeliveryError> {
        let (queue, from) = self.route(to)?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(HubItem::Envelope {
                from,
                envelope,
                reply,
            })
            .await
            .map_err(|_| DeliveryError::Refused("the peer stopped".into()))?;
        Ok(answer
            .await
            .unwrap_or(Ack::Rejected(RejectReason::Internal)))
    }
}

impl Streams for HubNetwork {
    async fn open_stream(
        &self,
        to: &Recipient,
        protocol: &'static str,
    ) -> Result<PeerStream, DeliveryError> {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let (queue, from) = self.route(to)?;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        queue
            .send(HubItem::Stream(PeerStream {
                peer: from,
                protocol: protocol.to_owned(),
                io: Box::pin(theirs.compat()),
            }))
            .await
            .map_err(|_| DeliveryError::Refused("the peer stopped".into()))?;
        Ok(PeerStream {
            peer: AuthenticatedPeer {
                username: to.username.clone(),
                identity_key: to.identity_key,
            },
            protocol: protocol.to_owned(),
            io: Box::pin(ours.compat()),
        })
    }
}

impl Reachability for HubNetwork {
    fn own_addresses(&self) -> Vec<String> {
        vec![format!("hub:{}", self.me)]
    }

    fn reachability(&self) -> tokio::sync::broadcast::Receiver<ReachabilityEvent> {
        self.reachability.subscribe()
    }

    fn connection(&self, peer: &Username) -> Option<crate::ports::PeerConnection> {
        // Every delivery is a hand-over: a peer on the hub and online counts as connected.
        self.hub
            .entries()
            .get(peer)
            .filter(|e| e.online)
            .map(|_| crate::ports::PeerConnection {
                path: crate::ports::Path::Direct,
                remote_address: format!("hub:{peer}"),
            })
    }
}
