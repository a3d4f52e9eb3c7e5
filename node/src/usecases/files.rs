//! Files: offer one to a peer or a group (the offer travels through the ratchet like a text),
//! serve its chunks over `/peerchat/file/1`, and fetch offered files chunk by chunk — each chunk
//! checked against the offer's digest list and at its position before it is written, progress
//! recorded durably, resumed from the first missing chunk after a restart or a dropped
//! connection, and the whole checked against the offer's SHA-256 before the file appears in the
//! download directory.
//!
//! Who serves: the sender, to whomever it offered the file; and in a group every member, to the
//! other members, the chunks it holds (a member that completed keeps its copy). A member fetches
//! from the sender first and, when the sender is busy (it serves at most
//! [`MAX_UPLOADS_PER_FILE`] fetchers of a file at once) or unreachable, from other members, so
//! the sender does not upload a copy per member.
//!
//! The stream: the fetcher sends `len (u32 BE) ‖ postcard(FileRequest)`; the server answers
//! `len ‖ postcard(FileAnswer)` and, if it serves, the sealed chunks from the one asked for up
//! to the one it announced, each as `len ‖ bytes`.

use futures::AsyncWriteExt;
use peerchat_pki::Username;
use rand::RngCore;
use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Node, NodeError};
use crate::domain::file::{CHUNK_BYTES, TAG_BYTES, clean_name};
use crate::domain::{Address, Content, Envelope, FileId, FileOffer, GroupId, MessageId};
use crate::ports::{
    Batch, BlobError, Clock, Direction, Directory, Event, FileRecord, FileState, Network, Notifier,
    OutboxEntry, PeerStream, Recipient, Store, Write, read_frame,
};

/// The stream protocol that carries chunks.
pub const FILE_PROTOCOL: &str = "/peerchat/file/1";

/// Largest request or answer frame.
const MAX_CONTROL_FRAME: usize = 1024;

/// How many fetchers one node serves one file to at once; the others are told it is busy and
/// fetch from other members (or come back later).
pub const MAX_UPLOADS_PER_FILE: usize = 3;

/// How many other members a group fetch tries, besides the sender.
const MAX_MEMBER_SOURCES: usize = 8;

/// Default largest file accepted (`--max-file-size`).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// Default largest file fetched without asking (`--auto-download-max`).
pub const DEFAULT_AUTO_DOWNLOAD_BYTES: u64 = 25 * 1024 * 1024;

/// How large the files this node sends and takes may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// Files larger than this are neither sent nor accepted.
    pub max_bytes: u64,
    /// Offers up to this size are fetched at once; larger ones wait for `file accept`.
    pub auto_download_bytes: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_FILE_BYTES,
            auto_download_bytes: DEFAULT_AUTO_DOWNLOAD_BYTES,
        }
    }
}

/// Whether a file sent to one person is also parked with the rendezvous, so that it can be
/// fetched while we are offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parking {
    /// Only served from this node.
    Never,
    /// Parked when the recipient is offline as the offer goes out.
    #[default]
    IfOffline,
    /// Parked in any case.
    Always,
}

/// The fetcher's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRequest {
    /// Which file.
    pub id: FileId,
    /// The first chunk wanted.
    pub from: u32,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileAnswer {
    /// The chunks from the one asked for up to (not including) `until` follow.
    Chunks {
        /// One past the last chunk that follows.
        until: u32,
    },
    /// Not served: unknown, not offered to the one asking, or not here any more.
    Refused,
    /// Serving as many fetchers of this file as it will: ask someone else, or later.
    Busy,
}

/// Why a fetch stopped.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("the peer could not be reached: {0}")]
    Unreachable(String),
    #[error("the peer refused to serve the file")]
    Refused,
    #[error("the peer is serving the file to others")]
    Busy,
    #[error("nobody reachable holds the rest of the file")]
    Unavailable,
    #[error("chunk {0} is not the one the sender sealed")]
    BadChunk(u32),
    #[error("the download was cancelled")]
    Cancelled,
    #[error("the stream broke: {0}")]
    Stream(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

async fn write_frame(
    io: &mut (impl futures::AsyncWrite + Unpin),
    bytes: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await
}

/// A media type from a file name's extension (what the window needs to preview images).
fn media_type(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" | "md" => "text/plain",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Offers the file at `path` to `to`: it is copied into the node's keeping (so it can be
    /// served while the original moves), an offer with a fresh key goes to `to` through the
    /// ratchet, and `to` fetches the chunks. Returns the file's id.
    #[tracing::instrument(name = "usecase.send_file", skip_all, fields(peer = %to))]
    pub async fn send_file(
        &self,
        to: &Username,
        path: &std::path::Path,
    ) -> Result<FileId, NodeError> {
        self.send_file_parking(to, path, Parking::default()).await
    }

    /// [`Node::send_file`], parking the file's sealed chunks with the rendezvous as `parking`
    /// says (ciphertext only; the rendezvous deletes them once the recipient has the file).
    pub async fn send_file_parking(
        &self,
        to: &Username,
        path: &std::path::Path,
        parking: Parking,
    ) -> Result<FileId, NodeError> {
        let me = self.me()?;
        if me.0 == *to {
            return Err(NodeError::OwnAccount(to.clone()));
        }
        self.contact_for(to).await?;
        let offer = self.prepare_offer(path).await?;
        let id = offer.id;
        let record = FileRecord {
            offer: offer.clone(),
            peer: to.clone(),
            direction: Direction::Outgoing,
            state: FileState::Offered,
            chunks_done: 0,
            at_ms: self.clock.now_ms(),
            saved_as: None,
            group: None,
        };
        let content = Content::FileOffer {
            offer: Box::new(offer),
            group: None,
        };
        if let Err(e) = self
            .send_control(to, content, vec![Write::File(Box::new(record))])
            .await
        {
            let _ = self.store.discard_file(&id).await;
            return Err(e);
        }
        let park = match parking {
            Parking::Never => false,
            Parking::Always => true,
            Parking::IfOffline => !self
                .directory
                .lookup(to)
                .await
                .is_ok_and(|peer| peer.online),
        };
        if park && let Err(e) = self.park(&id, std::slice::from_ref(to)).await {
            // The offer went out: they fetch it from us when we are both online.
            tracing::warn!(file = %id, error = %e, "the file could not be parked");
        }
        Ok(id)
    }

    /// Parks a file we offered with the rendezvous for `readers`: its sealed chunks, one at a
    /// time from our copy.
    async fn park(&self, id: &FileId, readers: &[Username]) -> Result<(), NodeError> {
        let offer = self.file(id)?.offer;
        let sealed_size = offer.size + u64::from(offer.chunks()) * TAG_BYTES as u64;
        self.directory
            .park(id, sealed_size, offer.chunks(), readers)
            .await?;
        for index in 0..offer.chunks() {
            let len = offer
                .chunk_len(index)
                .map_err(|e| NodeError::File(e.to_string()))?;
            let plaintext = self
                .store
                .read_file(id, offer.offset(index), len)
                .await
                .map_err(|e| NodeError::File(e.to_string()))?;
            let sealed = offer
                .seal(index, &plaintext)
                .map_err(|e| NodeError::File(e.to_string()))?;
            self.directory.park_chunk(id, index, &sealed).await?;
        }
        tracing::info!(file = %id, chunks = offer.chunks(), "file parked with the rendezvous");
        Ok(())
    }

    /// Offers the file at `path` to every other member of `group`: encrypted and offered once,
    /// the offer sent pairwise like a group message; members fetch the chunks from us or from
    /// each other. Returns the file's id.
    #[tracing::instrument(name = "usecase.send_group_file", skip_all, fields(group = %group))]
    pub async fn send_group_file(
        &self,
        group: &GroupId,
        path: &std::path::Path,
    ) -> Result<FileId, NodeError> {
        let me = self.me()?;
        let state = self.group(group)?;
        if !state.members.contains(&me.0) {
            return Err(NodeError::NotMember(*group));
        }
        let offer = self.prepare_offer(path).await?;
        let id = offer.id;
        let record = FileRecord {
            offer: offer.clone(),
            peer: me.0.clone(),
            direction: Direction::Outgoing,
            state: FileState::Offered,
            chunks_done: 0,
            at_ms: self.clock.now_ms(),
            saved_as: None,
            group: Some(*group),
        };
        let plaintext = Content::FileOffer {
            offer: Box::new(offer),
            group: Some(*group),
        }
        .encode()?;
        let recipients = state
            .members
            .iter()
            .filter(|m| **m != me.0)
            .map(|m| (m.clone(), plaintext.clone()))
            .collect();
        if let Err(e) = self
            .fan_out(
                *group,
                recipients,
                None,
                None,
                vec![Write::File(Box::new(record))],
            )
            .await
        {
            let _ = self.store.discard_file(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    /// Keeps a copy of the file at `path` and makes its offer: a fresh key and nonce prefix,
    /// and the digest of every sealed chunk (sealed one at a time from the copy).
    async fn prepare_offer(&self, path: &std::path::Path) -> Result<FileOffer, NodeError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(clean_name)
            .ok_or_else(|| NodeError::File("that path names no file".into()))?;
        let id = FileId::random(&mut OsRng);
        let (size, sha256) = self
            .store
            .keep_file(&id, path, self.file_limits.max_bytes)
            .await
            .map_err(|e| NodeError::File(e.to_string()))?;
        let mut offer = FileOffer {
            id,
            media_type: media_type(&name).to_owned(),
            name,
            size,
            chunk_size: CHUNK_BYTES,
            key: [0; 32],
            nonce: [0; 7],
            sha256,
            chunk_digests: Vec::new(),
        };
        OsRng.fill_bytes(&mut offer.key);
        OsRng.fill_bytes(&mut offer.nonce);
        let digests = async {
            let mut digests = Vec::with_capacity(offer.chunks() as usize);
            for index in 0..offer.chunks() {
                let len = offer.chunk_len(index).map_err(|e| e.to_string())?;
                let plaintext = self
                    .store
                    .read_file(&id, offer.offset(index), len)
                    .await
                    .map_err(|e| e.to_string())?;
                let sealed = offer.seal(index, &plaintext).map_err(|e| e.to_string())?;
                digests.push(FileOffer::digest(&sealed));
            }
            Ok::<_, String>(digests)
        }
        .await;
        match digests {
            Ok(digests) => offer.chunk_digests = digests,
            Err(e) => {
                let _ = self.store.discard_file(&id).await;
                return Err(NodeError::File(e));
            }
        }
        if let Err(e) = offer.validate(self.file_limits.max_bytes) {
            let _ = self.store.discard_file(&id).await;
            return Err(NodeError::File(e.to_string()));
        }
        Ok(offer)
    }

    /// Encrypts `content` for `to` (X3DH on first contact), stores it in the outbox with
    /// `writes` in one commit, flushes, and delivers it (else the outbox and the mailbox do).
    async fn send_control(
        &self,
        to: &Username,
        content: Content,
        writes: Vec<Write>,
    ) -> Result<(), NodeError> {
        let plaintext = content.encode()?;
        let envelope = {
            let _guard = self.peer_lock(to).lock_owned().await;
            let mut session = self.session_for(to).await?;
            let sealed = session.encrypt(&plaintext)?;
            let envelope = Envelope {
                id: MessageId::random(&mut OsRng),
                trace: peerchat_telemetry::traceparent(),
                payload: sealed.encode().to_vec(),
            };
            let device = Address::first(to.clone());
            let mut batch = Batch(writes);
            batch.push(Write::Session(device.clone(), Box::new(session)));
            batch.push(Write::Enqueue(OutboxEntry {
                to: device,
                queued_at_ms: self.clock.now_ms(),
                envelope: envelope.clone(),
                group: None,
            }));
            self.store.commit(&batch)?;
            envelope
        };
        self.store.flush().await?;
        self.deliver(to, envelope, None).await;
        Ok(())
    }

    /// Every file offered to or by this node, oldest first.
    #[tracing::instrument(name = "usecase.files", skip_all)]
    pub fn files(&self) -> Result<Vec<FileRecord>, NodeError> {
        Ok(self
            .store
            .files()?
            .into_iter()
            .map(|f| self.with_progress(f))
            .collect())
    }

    /// One file's record.
    pub fn file(&self, id: &FileId) -> Result<FileRecord, NodeError> {
        self.store
            .file(id)?
            .map(|f| self.with_progress(f))
            .ok_or_else(|| NodeError::File(format!("no file {id} on this node")))
    }

    /// Where a file's bytes can be read whole: a complete download in the download directory,
    /// or the copy of a file we offered.
    pub fn file_content(&self, id: &FileId) -> Result<(FileRecord, std::path::PathBuf), NodeError> {
        let record = self.file(id)?;
        let path = match (record.direction, record.state) {
            (Direction::Incoming, FileState::Complete) => record
                .saved_as
                .clone()
                .map(std::path::PathBuf::from)
                .filter(|p| p.is_file())
                .or_else(|| self.store.file_path(id)),
            (Direction::Outgoing, _) => self.store.file_path(id),
            _ => None,
        };
        let path = path.ok_or_else(|| NodeError::File("that file is not here (yet)".into()))?;
        Ok((record, path))
    }

    /// Starts fetching an offered file (one over the size fetched without asking).
    #[tracing::instrument(name = "usecase.accept_file", skip_all, fields(file = %id))]
    pub async fn accept_file(&self, id: &FileId) -> Result<(), NodeError> {
        let mut record = self.file(id)?;
        if record.direction != Direction::Incoming {
            return Err(NodeError::File("that file is one you sent".into()));
        }
        match record.state {
            FileState::Offered | FileState::Failed | FileState::Cancelled => {}
            FileState::Downloading | FileState::Complete => return Ok(()),
        }
        record.state = FileState::Downloading;
        self.store
            .commit(&Batch::new().with(Write::File(Box::new(record))))?;
        self.store.flush().await?;
        self.downloads_signal.notify_one();
        Ok(())
    }

    /// Gives up on a file: an incoming one stops and its bytes are dropped; an outgoing one is
    /// served no more.
    #[tracing::instrument(name = "usecase.cancel_file", skip_all, fields(file = %id))]
    pub async fn cancel_file(&self, id: &FileId) -> Result<(), NodeError> {
        let peer = self.file(id)?.peer;
        {
            let _guard = self.peer_lock(&peer).lock_owned().await;
            let mut record = self.file(id)?;
            if record.state == FileState::Complete && record.direction == Direction::Incoming {
                return Err(NodeError::File("that file is complete".into()));
            }
            record.state = FileState::Cancelled;
            self.store
                .commit(&Batch::new().with(Write::File(Box::new(record))))?;
        }
        self.store.flush().await?;
        self.store
            .discard_file(id)
            .await
            .map_err(|e| NodeError::File(e.to_string()))?;
        if self.file(id)?.direction == Direction::Outgoing
            && let Err(e) = self.directory.unpark(id).await
        {
            tracing::info!(file = %id, error = %e, "could not withdraw a parked file");
        }
        Ok(())
    }

    /// Fetches every file marked for download, one after the other. Returns how many
    /// completed.
    pub async fn fetch_files(&self) -> Result<usize, NodeError> {
        self.me()?;
        let mut completed = 0;
        for record in self.store.files()? {
            if record.direction != Direction::Incoming || record.state != FileState::Downloading {
                continue;
            }
            let id = record.offer.id;
            match self.fetch(record).await {
                Ok(true) => completed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::info!(file = %id, error = %e, "fetching a file stopped; it resumes later")
                }
            }
        }
        Ok(completed)
    }

    /// Fetches one file from its first missing chunk; whether it completed (true) or failed
    /// its digest (false).
    async fn fetch(&self, mut record: FileRecord) -> Result<bool, FetchError> {
        let offer = record.offer.clone();
        let id = offer.id;
        let chunks = offer.chunks();
        // Whole from the start: hashed on the way (else the file is read once more at the end).
        let mut hashed = (record.chunks_done == 0).then(Sha256::new);
        if record.chunks_done < chunks {
            let mut last_error = FetchError::Unavailable;
            for source in self.sources(&record)? {
                match self.fetch_from(&source, &mut record, &mut hashed).await {
                    Ok(()) => {}
                    Err(
                        e @ (FetchError::Cancelled | FetchError::Node(_) | FetchError::Blob(_)),
                    ) => {
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::info!(file = %id, source = %source, error = %e, "fetching from one source stopped");
                        last_error = e;
                    }
                }
                if record.chunks_done == chunks {
                    break;
                }
            }
            if record.chunks_done < chunks {
                // Nobody who holds it answered: the sender may have parked it.
                match self.fetch_parked(&mut record, &mut hashed).await {
                    Ok(()) => {}
                    Err(
                        e @ (FetchError::Cancelled | FetchError::Node(_) | FetchError::Blob(_)),
                    ) => {
                        return Err(e);
                    }
                    Err(FetchError::Unavailable) => return Err(last_error),
                    Err(e) => {
                        tracing::info!(file = %id, source = "rendezvous", error = %e, "fetching from one source stopped");
                        return Err(e);
                    }
                }
            }
        }
        let digest = match hashed {
            Some(hash) => hash.finalize().into(),
            None => self.store.digest_file(&id, offer.size).await?,
        };
        if digest != offer.sha256 {
            tracing::warn!(file = %id, "a fetched file does not match its digest; discarded");
            self.store.discard_file(&id).await?;
            record.state = FileState::Failed;
            record.chunks_done = 0;
            self.store
                .commit(&Batch::new().with(Write::File(Box::new(record))))
                .map_err(NodeError::from)?;
            self.store.flush().await.map_err(NodeError::from)?;
            self.notifier.notify(Event::FileFailed { id });
            return Ok(false);
        }
        let name = clean_name(&offer.name).unwrap_or_else(|| id.to_string());
        {
            let _guard = self.peer_lock(&record.peer).lock_owned().await;
            let now = self.store.file(&id).map_err(NodeError::from)?;
            if now.is_some_and(|r| r.state == FileState::Cancelled) {
                self.store.discard_file(&id).await?;
                return Err(FetchError::Cancelled);
            }
            // A group file stays here too, served to the members still fetching it.
            let path = self
                .store
                .publish_file(&id, &name, record.group.is_some())
                .await?;
            record.state = FileState::Complete;
            record.saved_as = Some(path.display().to_string());
            self.store
                .commit(&Batch::new().with(Write::File(Box::new(record))))
                .map_err(NodeError::from)?;
        }
        self.store.flush().await.map_err(NodeError::from)?;
        self.notifier.notify(Event::FileCompleted { id });
        // A parked copy, if any, is not needed for us any more.
        if let Err(e) = self.directory.unpark(&id).await {
            tracing::info!(file = %id, error = %e, "could not acknowledge a parked file");
        }
        Ok(true)
    }

    /// Whom to fetch a file from, in order: its sender, then (a group's file) up to
    /// [`MAX_MEMBER_SOURCES`] other members in random order.
    fn sources(&self, record: &FileRecord) -> Result<Vec<Username>, NodeError> {
        let mut sources = vec![record.peer.clone()];
        if let Some(group) = record.group {
            let me = self.me()?;
            let mut members: Vec<Username> = self
                .store
                .group(&group)?
                .map(|g| g.state().members.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|m| *m != me.0 && *m != record.peer)
                .collect();
            members.shuffle(&mut OsRng);
            members.truncate(MAX_MEMBER_SOURCES);
            sources.extend(members);
        }
        Ok(sources)
    }

    /// Fetches from `source` the chunks it holds from our first missing one, each checked,
    /// written and recorded durably before the next is read.
    async fn fetch_from(
        &self,
        source: &Username,
        record: &mut FileRecord,
        hashed: &mut Option<Sha256>,
    ) -> Result<(), FetchError> {
        let offer = record.offer.clone();
        let id = offer.id;
        let contact = self.contact_for(source).await?;
        let addresses = match self.store.known_addresses(&Address::first(source.clone())) {
            Ok(known) if !known.is_empty() => known,
            _ => {
                self.directory
                    .lookup(source)
                    .await
                    .map_err(NodeError::from)?
                    .addresses
            }
        };
        let recipient = Recipient {
            username: source.clone(),
            identity_key: contact.identity_key,
            addresses,
        };
        let mut stream = self
            .network
            .open_stream(&recipient, FILE_PROTOCOL)
            .await
            .map_err(|e| FetchError::Unreachable(e.to_string()))?;
        let request = FileRequest {
            id,
            from: record.chunks_done,
        };
        let broken = |e: std::io::Error| FetchError::Stream(e.kind().to_string());
        write_frame(
            &mut stream.io,
            &postcard::to_stdvec(&request).unwrap_or_default(),
        )
        .await
        .map_err(broken)?;
        let answer = read_frame(&mut stream.io, MAX_CONTROL_FRAME)
            .await
            .map_err(broken)?;
        let until = match postcard::from_bytes::<FileAnswer>(&answer) {
            Ok(FileAnswer::Chunks { until }) => until.min(offer.chunks()),
            Ok(FileAnswer::Busy) => return Err(FetchError::Busy),
            _ => return Err(FetchError::Refused),
        };
        if until <= record.chunks_done {
            return Err(FetchError::Refused);
        }
        tracing::info!(file = %id, source = %source, from = record.chunks_done, until, "fetching a file");
        let max = offer.chunk_size as usize + TAG_BYTES;
        // One chunk at a time: read, checked, written, recorded durably, and only then the
        // next read, so a crash at any point costs at most the chunk being read.
        let mut io = stream.io;
        while record.chunks_done < until {
            let sealed = read_frame(&mut io, max).await.map_err(broken)?;
            self.take_chunk(record, hashed, &sealed, source.as_str())
                .await?;
        }
        Ok(())
    }

    /// Fetches from the rendezvous the chunks the sender parked there, from our first missing
    /// one.
    async fn fetch_parked(
        &self,
        record: &mut FileRecord,
        hashed: &mut Option<Sha256>,
    ) -> Result<(), FetchError> {
        let id = record.offer.id;
        let chunks = record.offer.chunks();
        let mut announced = false;
        while record.chunks_done < chunks {
            let sealed = self
                .directory
                .parked_chunk(&id, record.chunks_done)
                .await
                .map_err(|e| FetchError::Unreachable(e.to_string()))?
                .ok_or(FetchError::Unavailable)?;
            if !announced {
                tracing::info!(file = %id, source = "rendezvous", from = record.chunks_done, "fetching a file");
                announced = true;
            }
            self.take_chunk(record, hashed, &sealed, "rendezvous")
                .await?;
        }
        Ok(())
    }

    /// The next chunk as `source` served it: checked against the offer, written, recorded
    /// durably (unless the user cancelled meanwhile), and shown as progress.
    async fn take_chunk(
        &self,
        record: &mut FileRecord,
        hashed: &mut Option<Sha256>,
        sealed: &[u8],
        source: &str,
    ) -> Result<(), FetchError> {
        let offer = &record.offer;
        let (id, index) = (offer.id, record.chunks_done);
        let plaintext = offer.check(index, sealed).map_err(|_| {
            tracing::warn!(file = %id, source, chunk = index, "a chunk failed its check; it is fetched elsewhere or again");
            FetchError::BadChunk(index)
        })?;
        self.store
            .write_file(&id, offer.offset(index), &plaintext)
            .await?;
        if let Some(hash) = hashed.as_mut() {
            hash.update(&plaintext);
        }
        record.chunks_done = index + 1;
        {
            // Recorded only if the user did not cancel it meanwhile (`cancel_file` changes the
            // record under the same lock).
            let _guard = self.peer_lock(&record.peer).lock_owned().await;
            let now = self.store.file(&id).map_err(NodeError::from)?;
            if now.is_some_and(|r| r.state == FileState::Cancelled) {
                self.store.discard_file(&id).await?;
                return Err(FetchError::Cancelled);
            }
            self.store
                .commit(&Batch::new().with(Write::File(Box::new(record.clone()))))
                .map_err(NodeError::from)?;
        }
        self.store.flush().await.map_err(NodeError::from)?;
        self.notifier.notify(Event::FileProgress {
            id,
            bytes_done: record.bytes_done(),
            total: record.offer.size,
        });
        Ok(())
    }

    /// How far we serve a file to `asker`: one past the last chunk we hold, if `asker` may have
    /// it at all — the peer we offered it to, or (a group's file) a current member.
    fn servable(&self, record: &FileRecord, asker: &Username) -> Option<u32> {
        if record.state == FileState::Cancelled {
            return None;
        }
        let allowed = match record.group {
            None => record.direction == Direction::Outgoing && record.peer == *asker,
            Some(group) => self
                .store
                .group(&group)
                .ok()
                .flatten()
                .is_some_and(|g| g.state().members.contains(asker)),
        };
        if !allowed {
            return None;
        }
        match (record.direction, record.state) {
            (Direction::Outgoing, _) | (_, FileState::Complete) => Some(record.offer.chunks()),
            (Direction::Incoming, _) => Some(record.chunks_done),
        }
    }

    /// Serves a `/peerchat/file/1` stream: the chunks of a file the peer asking may have, from
    /// the one it asks for up to the last we hold.
    pub(super) async fn serve_file(&self, mut stream: PeerStream) {
        let peer = stream.peer.username.clone();
        let request = match read_frame(&mut stream.io, MAX_CONTROL_FRAME).await {
            Ok(bytes) => postcard::from_bytes::<FileRequest>(&bytes).ok(),
            Err(_) => None,
        };
        let served = request.as_ref().and_then(|r| {
            let record = self.store.file(&r.id).ok().flatten()?;
            let until = self.servable(&record, &peer)?;
            Some((record, until))
        });
        let (Some(request), Some((record, until))) = (request, served) else {
            tracing::warn!(peer = %peer, "a peer asked for a file it was not offered");
            let _ = write_frame(
                &mut stream.io,
                &postcard::to_stdvec(&FileAnswer::Refused).unwrap_or_default(),
            )
            .await;
            return;
        };
        let offer = record.offer;
        let Some(_upload) = Upload::start(&self.uploads, offer.id) else {
            let busy = postcard::to_stdvec(&FileAnswer::Busy).unwrap_or_default();
            let _ = write_frame(&mut stream.io, &busy).await;
            let _ = stream.io.close().await;
            return;
        };
        let answer = postcard::to_stdvec(&FileAnswer::Chunks { until }).unwrap_or_default();
        if write_frame(&mut stream.io, &answer).await.is_err() {
            return;
        }
        let mut sent = 0u32;
        for index in request.from..until {
            let served = async {
                let len = offer.chunk_len(index).map_err(|e| e.to_string())?;
                let plaintext = self
                    .store
                    .read_file(&offer.id, offer.offset(index), len)
                    .await
                    .map_err(|e| e.to_string())?;
                let sealed = offer.seal(index, &plaintext).map_err(|e| e.to_string())?;
                write_frame(&mut stream.io, &sealed)
                    .await
                    .map_err(|e| e.kind().to_string())
            };
            if let Err(e) = served.await {
                tracing::info!(file = %offer.id, error = %e, "serving a file stopped");
                break;
            }
            sent += 1;
            if record.group.is_none() {
                self.served(&offer, index + 1).await;
            }
        }
        let _ = stream.io.flush().await;
        let _ = stream.io.close().await;
        tracing::info!(file = %offer.id, peer = %peer, from = request.from, sent, "file chunks served");
    }

    /// Notes that the peer has fetched `chunks` chunks of a file we offered: shown as progress,
    /// and recorded as complete once it has them all.
    async fn served(&self, offer: &FileOffer, chunks: u32) {
        self.notifier.notify(Event::FileProgress {
            id: offer.id,
            bytes_done: offer.offset(chunks).min(offer.size),
            total: offer.size,
        });
        {
            let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
            if chunks < offer.chunks() {
                let high = serving.entry(offer.id).or_default();
                *high = (*high).max(chunks);
                return;
            }
            serving.remove(&offer.id);
        }
        let done = match self.store.file(&offer.id) {
            Ok(Some(mut record)) if record.state == FileState::Offered => {
                record.chunks_done = chunks;
                record.state = FileState::Complete;
                self.store
                    .commit(&Batch::new().with(Write::File(Box::new(record))))
                    .is_ok()
            }
            _ => false,
        };
        if done {
            let _ = self.store.flush().await;
            self.notifier.notify(Event::FileCompleted { id: offer.id });
        }
    }

    /// `record` with what serving it has reached so far.
    fn with_progress(&self, mut record: FileRecord) -> FileRecord {
        if record.direction == Direction::Outgoing
            && let Some(high) = self
                .serving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&record.offer.id)
        {
            record.chunks_done = record.chunks_done.max(*high);
        }
        record
    }

    /// An offered file: recorded (and fetched at once up to the size fetched without asking).
    pub(super) async fn take_offer(
        &self,
        from: &Username,
        offer: FileOffer,
        group: Option<GroupId>,
    ) -> Result<Option<FileRecord>, crate::domain::RejectReason> {
        if offer.validate(self.file_limits.max_bytes).is_err() {
            tracing::warn!(peer = %from, file = %offer.id, "a file offer over the limit or malformed was refused");
            return Err(crate::domain::RejectReason::Refused);
        }
        match self.store.file(&offer.id) {
            Ok(Some(known))
                if known.peer == *from && known.offer == offer && known.group == group =>
            {
                return Ok(None);
            }
            Ok(Some(_)) => {
                tracing::warn!(peer = %from, file = %offer.id, "a second offer with a known file id was refused");
                return Err(crate::domain::RejectReason::Refused);
            }
            Ok(None) => {}
            Err(_) => return Err(crate::domain::RejectReason::Internal),
        }
        let state = match offer.size <= self.file_limits.auto_download_bytes {
            true => FileState::Downloading,
            false => FileState::Offered,
        };
        Ok(Some(FileRecord {
            offer,
            peer: from.clone(),
            direction: Direction::Incoming,
            state,
            chunks_done: 0,
            at_ms: self.clock.now_ms(),
            saved_as: None,
            group,
        }))
    }
}

/// One fetcher being served a file: counted while it lasts, at most
/// [`MAX_UPLOADS_PER_FILE`] at once.
struct Upload<'a> {
    uploads: &'a std::sync::Mutex<std::collections::HashMap<FileId, usize>>,
    id: FileId,
}

impl<'a> Upload<'a> {
    fn start(
        uploads: &'a std::sync::Mutex<std::collections::HashMap<FileId, usize>>,
        id: FileId,
    ) -> Option<Self> {
        let mut counts = uploads.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(id).or_default();
        if *count >= MAX_UPLOADS_PER_FILE {
            return None;
        }
        *count += 1;
        Some(Self { uploads, id })
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        let mut counts = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_file_is_served_to_a_bounded_number_of_fetchers_at_once() {
        let uploads = std::sync::Mutex::new(std::collections::HashMap::new());
        let (one, other) = (FileId::from_bytes([1; 16]), FileId::from_bytes([2; 16]));
        let mut held: Vec<Upload<'_>> = (0..MAX_UPLOADS_PER_FILE)
            .map(|_| Upload::start(&uploads, one).unwrap())
            .collect();
        assert!(Upload::start(&uploads, one).is_none(), "busy");
        assert!(Upload::start(&uploads, other).is_some(), "per file");
        held.pop();
        assert!(Upload::start(&uploads, one).is_some(), "a slot came free");
        held.clear();
        assert!(uploads.lock().unwrap().is_empty(), "nothing left over");
    }
}
