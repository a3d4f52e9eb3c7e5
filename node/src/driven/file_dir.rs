//! File bytes on disk, for the sled store: copies of the files we offer under `.peerchat/sent/`,
//! downloads in progress under `.peerchat/partial/` (each chunk written in place and synced), and
//! complete downloads moved into the download directory under a name that takes nothing's place.
//! Everything streams through a fixed buffer: no file is held in memory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::domain::FileId;
use crate::domain::file::numbered_name;
use crate::ports::BlobError;

/// Bytes read at a time when copying or hashing.
const BUFFER: usize = 256 * 1024;

/// Where a node keeps file bytes.
#[derive(Debug, Clone)]
pub struct FileDir {
    own: PathBuf,
    downloads: PathBuf,
}

fn io(e: std::io::Error) -> BlobError {
    BlobError::Io(e.kind().to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BlobError::Io(e.to_string()))?
}

impl FileDir {
    /// Keeps its own files under `root/.peerchat/` and publishes downloads into `downloads`.
    pub fn new(root: &Path, downloads: &Path) -> Self {
        Self {
            own: root.join(".peerchat"),
            downloads: downloads.to_path_buf(),
        }
    }

    fn sent(&self, id: &FileId) -> PathBuf {
        self.own.join("sent").join(id.to_string())
    }

    fn partial(&self, id: &FileId) -> PathBuf {
        self.own.join("partial").join(id.to_string())
    }

    /// See [`crate::ports::FileStore::file_path`].
    pub fn path(&self, id: &FileId) -> Option<PathBuf> {
        [self.sent(id), self.partial(id)]
            .into_iter()
            .find(|p| p.is_file())
    }

    /// See [`crate::ports::FileStore::keep_file`].
    pub async fn keep(
        &self,
        id: &FileId,
        source: &Path,
        max: u64,
    ) -> Result<(u64, [u8; 32]), BlobError> {
        let (source, target) = (source.to_path_buf(), self.sent(id));
        blocking(move || {
            let missing = || BlobError::NotFound(format!("{} is not a file", source.display()));
            let mut input = std::fs::File::open(&source).map_err(|_| missing())?;
            let meta = input.metadata().map_err(io)?;
            if !meta.is_file() {
                return Err(missing());
            }
            if meta.len() > max {
                return Err(BlobError::TooLarge(max));
            }
            std::fs::create_dir_all(target.parent().unwrap_or(&target)).map_err(io)?;
            let temporary = target.with_extension("tmp");
            let mut output = std::fs::File::create(&temporary).map_err(io)?;
            let mut hash = Sha256::new();
            let mut buffer = vec![0u8; BUFFER];
            let mut size = 0u64;
            loop {
                let n = input.read(&mut buffer).map_err(io)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > max {
                    drop(output);
                    let _ = std::fs::remove_file(&temporary);
                    return Err(BlobError::TooLarge(max));
                }
                hash.update(&buffer[..n]);
                output.write_all(&buffer[..n]).map_err(io)?;
            }
            output.sync_all().map_err(io)?;
            std::fs::rename(&temporary, &target).map_err(io)?;
            Ok((size, hash.finalize().into()))
        })
        .await
    }

    /// See [`crate::ports::FileStore::read_file`].
    pub async fn read(&self, id: &FileId, offset: u64, len: usize) -> Result<Vec<u8>, BlobError> {
        let paths = [self.sent(id), self.partial(id)];
        blocking(move || {
            let path = paths
                .iter()
                .find(|p| p.exists())
                .ok_or_else(|| BlobError::NotFound("no such file here".into()))?;
            let mut file = std::fs::File::open(path).map_err(io)?;
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut bytes = vec![0u8; len];
            file.read_exact(&mut bytes).map_err(io)?;
            Ok(bytes)
        })
        .await
    }

    /// See [`crate::ports::FileStore::write_file`].
    pub async fn write(&self, id: &FileId, offset: u64, bytes: &[u8]) -> Result<(), BlobError> {
        let (path, bytes) = (self.partial(id), bytes.to_vec());
        blocking(move || {
            std::fs::create_dir_all(path.parent().unwrap_or(&path)).map_err(io)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_data().map_err(io)
        })
        .await
    }

    /// See [`crate::ports::FileStore::digest_file`].
    pub async fn digest(&self, id: &FileId, size: u64) -> Result<[u8; 32], BlobError> {
        let path = self.partial(id);
        blocking(move || {
            let file = std::fs::File::open(&path).map_err(io)?;
            let mut input = file.take(size);
            let mut hash = Sha256::new();
            let mut buffer = vec![0u8; BUFFER];
            loop {
                let n = input.read(&mut buffer).map_err(io)?;
                if n == 0 {
                    break;
                }
                hash.update(&buffer[..n]);
            }
            Ok(hash.finalize().into())
        })
        .await
    }

    /// See [`crate::ports::FileStore::publish_file`].
    pub async fn publish(&self, id: &FileId, name: &str, keep: bool) -> Result<PathBuf, BlobError> {
        let (from, downloads, name) = (self.partial(id), self.downloads.clone(), name.to_owned());
        blocking(move || {
            std::fs::create_dir_all(&downloads).map_err(io)?;
            for n in 1..10_000u32 {
                let candidate = match n {
                    1 => downloads.join(&name),
                    n => downloads.join(numbered_name(&name, n)),
                };
                // A hard link never replaces an existing file: taken names fail and the next
                // is tried. Then the partial name goes.
                match std::fs::hard_link(&from, &candidate) {
                    Ok(()) => {
                        if !keep {
                            std::fs::remove_file(&from).map_err(io)?;
                        }
                        return Ok(candidate);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(_) => {
                        // Another filesystem: copy into a new file of that name.
                        let mut output = match std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&candidate)
                        {
                            Ok(output) => output,
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                            Err(e) => return Err(io(e)),
                        };
                        let mut input = std::fs::File::open(&from).map_err(io)?;
                        std::io::copy(&mut input, &mut output).map_err(io)?;
                        output.sync_all().map_err(io)?;
                        if !keep {
                            std::fs::remove_file(&from).map_err(io)?;
                        }
                        return Ok(candidate);
                    }
                }
            }
            Err(BlobError::Io(
                "no free name in the download directory".into(),
            ))
        })
        .await
    }

    /// See [`crate::ports::FileStore::discard_file`].
    pub async fn discard(&self, id: &FileId) -> Result<(), BlobError> {
        let paths = [self.sent(id), self.partial(id)];
        blocking(move || {
            for path in paths {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(e)),
                }
            }
            Ok(())
        })
        .await
    }
}
