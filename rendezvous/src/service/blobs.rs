//! Parked files: a sender leaves the sealed chunks of a file with the rendezvous so that its
//! readers fetch them while the sender is offline. The rendezvous holds ciphertext only (the key
//! travels in the offer, inside the ratchet), bounded: at most [`Limits::blob_max_bytes`] per
//! file, [`Limits::blob_quota_bytes`] per owner, kept [`Limits::blob_expiry`], and gone once
//! every reader has acknowledged it (or its owner withdrew it).
//!
//! On disk, under the blob directory: `ID/meta.json` (owner, readers, sizes, acknowledgements,
//! creation time) and `ID/INDEX` per chunk, each written to a temporary name, synced and renamed,
//! so a chunk is either whole or absent after a crash.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use peerchat_pki::Username;
use serde::{Deserialize, Serialize};

use super::{Caller, Rendezvous, ServiceError, internal, unix};
use crate::store::Store;

/// Most chunks a parked file may have.
pub const MAX_BLOB_CHUNKS: u32 = 4096;
/// Largest chunk (the largest chunk an offer may announce, with its tag).
pub const MAX_BLOB_CHUNK_BYTES: usize = 4 * 1024 * 1024 + 16;
/// Most readers of one parked file (a group's other members).
pub const MAX_BLOB_READERS: usize = 199;

/// A file to park: its sealed size, chunk count and who may read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobSpec {
    /// Total bytes of its sealed chunks.
    pub size: u64,
    /// How many chunks.
    pub chunks: u32,
    /// Who may fetch and acknowledge it.
    pub readers: BTreeSet<Username>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    owner: Username,
    size: u64,
    chunks: u32,
    readers: BTreeSet<Username>,
    acknowledged: BTreeSet<Username>,
    created_s: u64,
}

/// A blob id as the URL carries it: 32 lowercase hexadecimal digits (a file id).
fn checked_id(id: &str) -> Result<&str, ServiceError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(id)
    } else {
        Err(ServiceError::BadBlob(
            "a blob id is 32 lowercase hexadecimal digits",
        ))
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ServiceError {
    move |e| internal(what, e)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).map_err(io("writing a blob"))?;
    file.write_all(bytes).map_err(io("writing a blob"))?;
    file.sync_all().map_err(io("syncing a blob"))?;
    std::fs::rename(&temporary, path).map_err(io("renaming a blob"))?;
    Ok(())
}

impl<S: Store> Rendezvous<S> {
    fn blob_root(&self) -> Result<&Path, ServiceError> {
        self.blobs.as_deref().ok_or(ServiceError::NoBlobStore)
    }

    fn blob_dir(&self, id: &str) -> Result<PathBuf, ServiceError> {
        Ok(self.blob_root()?.join(checked_id(id)?))
    }

    fn read_meta(&self, id: &str) -> Result<Option<Meta>, ServiceError> {
        let path = self.blob_dir(id)?.join("meta.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let meta: Meta = serde_json::from_slice(&bytes)
                    .map_err(|e| internal("reading a blob's metadata", e))?;
                let expired =
                    unix(self.clock.now()) >= meta.created_s + self.limits.blob_expiry.as_secs();
                if expired {
                    self.drop_blob(id)?;
                    return Ok(None);
                }
                Ok(Some(meta))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(internal("reading a blob's metadata", e)),
        }
    }

    fn drop_blob(&self, id: &str) -> Result<(), ServiceError> {
        match std::fs::remove_dir_all(self.blob_dir(id)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal("removing a blob", e)),
        }
    }

    /// Every parked file's id and metadata (expired ones are removed on the way).
    fn all_blobs(&self) -> Result<Vec<(String, Meta)>, ServiceError> {
        let root = self.blob_root()?;
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(internal("listing blobs", e)),
        };
        let mut all = Vec::new();
        for entry in entries {
            let name = entry
                .map_err(io("listing blobs"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if checked_id(&name).is_err() {
                continue;
            }
            if let Some(meta) = self.read_meta(&name)? {
                all.push((name, meta));
            }
        }
        Ok(all)
    }

    /// Removes the parked files past their time. Returns how many went.
    pub fn sweep_blobs(&self) -> Result<usize, ServiceError> {
        if self.blobs.is_none() {
            return Ok(0);
        }
        let _guard = self.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        let before = std::fs::read_dir(self.blob_root()?).map_or(0, |d| d.count());
        let kept = self.all_blobs()?.len();
        Ok(before.saturating_sub(kept))
    }

    /// Parks a file as `id` for `spec.readers`, within the per-file limit and the caller's
    /// quota. Parking the same file again with the same spec changes nothing.
    pub fn park(&self, caller: &Caller, id: &str, spec: BlobSpec) -> Result<(), ServiceError> {
        let limit = self.limits.blob_max_bytes;
        if spec.size > limit {
            return Err(ServiceError::BlobTooLarge(limit));
        }
        if spec.chunks == 0
            || spec.chunks > MAX_BLOB_CHUNKS
            || spec.size > u64::from(spec.chunks) * MAX_BLOB_CHUNK_BYTES as u64
        {
            return Err(ServiceError::BadBlob(
                "the chunk count does not fit the size",
            ));
        }
        if spec.readers.is_empty()
            || spec.readers.len() > MAX_BLOB_READERS
            || spec.readers.contains(&caller.username)
        {
            return Err(ServiceError::BadBlob(
                "a parked file has 1 to 199 readers, not its owner",
            ));
        }
        let _guard = self.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.blob_dir(id)?;
        if let Some(known) = self.read_meta(id)? {
            return match known.owner == caller.username
                && known.size == spec.size
                && known.chunks == spec.chunks
                && known.readers == spec.readers
            {
                true => Ok(()),
                false => Err(ServiceError::BlobExists),
            };
        }
        let held: u64 = self
            .all_blobs()?
            .iter()
            .filter(|(_, m)| m.owner == caller.username)
            .map(|(_, m)| m.size)
            .sum();
        if held + spec.size > self.limits.blob_quota_bytes {
            return Err(ServiceError::BlobQuota(self.limits.blob_quota_bytes));
        }
        let meta = Meta {
            owner: caller.username.clone(),
            size: spec.size,
            chunks: spec.chunks,
            readers: spec.readers,
            acknowledged: BTreeSet::new(),
            created_s: unix(self.clock.now()),
        };
        std::fs::create_dir_all(&dir).map_err(io("creating a blob"))?;
        let bytes = serde_json::to_vec(&meta).map_err(|e| internal("a blob's metadata", e))?;
        write_synced(&dir.join("meta.json"), &bytes)?;
        tracing::info!(
            blob = id,
            chunks = meta.chunks,
            size = meta.size,
            "file parked"
        );
        Ok(())
    }

    /// Stores chunk `index` of a parked file (its owner only; durable before this returns).
    pub fn park_chunk(
        &self,
        caller: &Caller,
        id: &str,
        index: u32,
        bytes: &[u8],
    ) -> Result<(), ServiceError> {
        let _guard = self.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.read_meta(id)?.ok_or(ServiceError::NoSuchBlob)?;
        if meta.owner != caller.username {
            return Err(ServiceError::NotYourBlob);
        }
        if index >= meta.chunks {
            return Err(ServiceError::BadBlob("that chunk is past the file's end"));
        }
        if bytes.len() > MAX_BLOB_CHUNK_BYTES {
            return Err(ServiceError::BlobTooLarge(MAX_BLOB_CHUNK_BYTES as u64));
        }
        let dir = self.blob_dir(id)?;
        let path = dir.join(index.to_string());
        let others: u64 = (0..meta.chunks)
            .filter(|i| *i != index)
            .filter_map(|i| std::fs::metadata(dir.join(i.to_string())).ok())
            .map(|m| m.len())
            .sum();
        if others + bytes.len() as u64 > meta.size {
            return Err(ServiceError::BadBlob(
                "the chunks are larger than the parked size",
            ));
        }
        write_synced(&path, bytes)
    }

    /// Chunk `index` of a parked file, for its owner or a reader; `None` if that chunk is not
    /// here (not uploaded, or the file is gone).
    pub fn parked_chunk(
        &self,
        caller: &Caller,
        id: &str,
        index: u32,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        let Some(meta) = self.read_meta(id)? else {
            return Ok(None);
        };
        if meta.owner != caller.username && !meta.readers.contains(&caller.username) {
            return Err(ServiceError::NotYourBlob);
        }
        if index >= meta.chunks {
            return Ok(None);
        }
        match std::fs::read(self.blob_dir(id)?.join(index.to_string())) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(internal("reading a blob", e)),
        }
    }

    /// A reader has the file (or its owner withdraws it): once every reader acknowledged it,
    /// it is deleted. Acknowledging a file that is gone is fine.
    pub fn unpark(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        let _guard = self.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut meta) = self.read_meta(id)? else {
            return Ok(());
        };
        if meta.owner == caller.username {
            self.drop_blob(id)?;
            tracing::info!(blob = id, "parked file withdrawn");
            return Ok(());
        }
        if !meta.readers.contains(&caller.username) {
            return Err(ServiceError::NotYourBlob);
        }
        meta.acknowledged.insert(caller.username.clone());
        if meta.acknowledged == meta.readers {
            self.drop_blob(id)?;
            tracing::info!(blob = id, "parked file fetched by every reader; deleted");
            return Ok(());
        }
        let bytes = serde_json::to_vec(&meta).map_err(|e| internal("a blob's metadata", e))?;
        write_synced(&self.blob_dir(id)?.join("meta.json"), &bytes)
    }
}
