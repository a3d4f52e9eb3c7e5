//! Files: offered inside the ratchet, moved as encrypted chunks.
//!
//! A file is encrypted once, with a fresh random key, as a sequence of chunks under the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár; `aead::stream::StreamBE32` over
//! AES-256-GCM): chunk `i` is sealed with the nonce `prefix ‖ i (u32 BE) ‖ last (1 byte)`, so a
//! chunk moved to another position, or a file cut short before its last chunk, fails to decrypt.
//! The associated data binds every chunk to the file's id. The key, the nonce prefix and the
//! plaintext's SHA-256 travel in a [`FileOffer`], through the ratchet like a text; the chunks
//! travel outside it, so whoever holds them (a relay, another member of a group) learns nothing.
//!
//! Sealing is deterministic for a given offer and position: any holder of the plaintext and the
//! offer (the sender, or a member that completed the download) serves the same ciphertext. The
//! offer carries the SHA-256 of every sealed chunk, so a chunk is checked against what the sender
//! sealed, not only against the key: in a group every member holds the key and could seal a
//! chunk of its own making, and the digest list is what stops a member from serving one.

use aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use aead::{KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::ids::FileId;

/// Chunk size of new offers: 1 MiB.
pub const CHUNK_BYTES: u32 = 1024 * 1024;
/// Smallest and largest chunk size an offer may announce.
pub const CHUNK_BYTES_RANGE: std::ops::RangeInclusive<u32> = 16 * 1024..=4 * 1024 * 1024;
/// The most a file may hold, in bytes (nodes may set a lower limit).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Longest file name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest media type.
pub const MAX_MEDIA_TYPE_BYTES: usize = 127;
/// AES-GCM's tag, added to every chunk.
pub const TAG_BYTES: usize = 16;

/// The most chunks an offer may have (its digest list stays within an envelope: 4096 × 32 bytes).
pub const MAX_CHUNKS: u32 = 4096;

/// Domain separation of the chunks' associated data.
const CHUNK_CONTEXT: &[u8] = b"peerchat file chunk v1";

/// A file offered to a peer (or a group): what the receiver needs to fetch, check and decrypt it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// The sender's id for the file.
    pub id: FileId,
    /// Its name, as the sender's node cleaned it ([`clean_name`]); the receiver cleans it again.
    pub name: String,
    /// Size in bytes of the plaintext.
    pub size: u64,
    /// Its media type (`image/png`, `application/octet-stream`…).
    pub media_type: String,
    /// Bytes of plaintext per chunk (the last one may be shorter).
    pub chunk_size: u32,
    /// The AES-256-GCM key of this file only.
    pub key: [u8; 32],
    /// STREAM's nonce prefix.
    pub nonce: [u8; 7],
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// SHA-256 of each sealed chunk, in order (empty only in offers recorded before digests
    /// were carried: those chunks are checked by their authentication alone).
    pub chunk_digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for FileOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key; the name is the user's.
        f.debug_struct("FileOffer")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

/// Why an offer or a chunk is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The announced size is over the limit.
    #[error("the file is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// A chunk size outside [`CHUNK_BYTES_RANGE`], a media type that is not one, or a name
    /// that cleans to nothing.
    #[error("malformed file offer: {0}")]
    Malformed(&'static str),
    /// A chunk position past the file's last chunk.
    #[error("chunk {index} is past the end of the file ({chunks} chunks)")]
    PastEnd {
        /// The position asked for.
        index: u32,
        /// The file's number of chunks.
        chunks: u32,
    },
    /// The chunk does not authenticate at its position (tampered, moved or truncated) or has
    /// the wrong length.
    #[error("chunk {0} failed authentication")]
    BadChunk(u32),
}

impl FileOffer {
    /// Checks the bounds of the offer against `max_size`.
    pub fn validate(&self, max_size: u64) -> Result<(), FileError> {
        let limit = max_size.min(MAX_FILE_BYTES);
        if self.size > limit {
            return Err(FileError::TooLarge { limit });
        }
        if !CHUNK_BYTES_RANGE.contains(&self.chunk_size) {
            return Err(FileError::Malformed("chunk size"));
        }
        if self.media_type.is_empty()
            || self.media_type.len() > MAX_MEDIA_TYPE_BYTES
            || !self.media_type.contains('/')
            || !self
                .media_type
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(FileError::Malformed("media type"));
        }
        if self.name.len() > MAX_NAME_BYTES || clean_name(&self.name).is_none() {
            return Err(FileError::Malformed("name"));
        }
        if u64::from(self.chunks()) * u64::from(self.chunk_size) < self.size
            || self.chunks() > MAX_CHUNKS
        {
            return Err(FileError::Malformed("too many chunks"));
        }
        if self.chunk_digests.len() != self.chunks() as usize {
            return Err(FileError::Malformed("chunk digests"));
        }
        Ok(())
    }

    /// The digest of a sealed chunk, as listed in [`FileOffer::chunk_digests`].
    pub fn digest(sealed: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(sealed).into()
    }

    /// Opens chunk `index` as served by anyone: it must be the chunk the sender sealed (its
    /// digest is the listed one) and authenticate at its position.
    pub fn check(&self, index: u32, sealed: &[u8]) -> Result<Vec<u8>, FileError> {
        if let Some(listed) = self.chunk_digests.get(index as usize)
            && *listed != Self::digest(sealed)
        {
            return Err(FileError::BadChunk(index));
        }
        if !self.chunk_digests.is_empty() && index as usize >= self.chunk_digests.len() {
            return Err(FileError::PastEnd {
                index,
                chunks: self.chunks(),
            });
        }
        self.open(index, sealed)
    }

    /// How many chunks the file has (an empty file has one, empty).
    pub fn chunks(&self) -> u32 {
        let n = self.size.div_ceil(u64::from(self.chunk_size.max(1))).max(1);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Bytes of plaintext in chunk `index`.
    pub fn chunk_len(&self, index: u32) -> Result<usize, FileError> {
        let chunks = self.chunks();
        if index >= chunks {
            return Err(FileError::PastEnd { index, chunks });
        }
        let start = u64::from(index) * u64::from(self.chunk_size);
        let len = (self.size - start).min(u64::from(self.chunk_size));
        Ok(usize::try_from(len).unwrap_or(usize::MAX))
    }

    /// Where chunk `index` starts in the plaintext.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size)
    }

    fn stream(&self) -> StreamBE32<Aes256Gcm> {
        let aead = Aes256Gcm::new((&self.key).into());
        StreamBE32::from_aead(aead, (&self.nonce).into())
    }

    fn associated_data(&self) -> Vec<u8> {
        [CHUNK_CONTEXT, self.id.as_bytes()].concat()
    }

    /// Seals chunk `index` (its plaintext must be exactly [`FileOffer::chunk_len`] bytes).
    pub fn seal(&self, index: u32, plaintext: &[u8]) -> Result<Vec<u8>, FileError> {
        if plaintext.len() != self.chunk_len(index)? {
            return Err(FileError::BadChunk(index));
        }
        let last = index + 1 == self.chunks();
        self.stream()
            .encrypt(
                index,
                last,
                Payload {
                    msg: plaintext,
                    aad: &self.associated_data(),
                },
            )
            .map_err(|_| FileError::BadChunk(index))
    }

    /// Opens chunk `index`: it must authenticate at that position (with the last-chunk flag on
    /// the last one only) and hold exactly the chunk's length.
    pub fn open(&self, index: u32, ciphertext: &[u8]) -> Result<Vec<u8>, FileError> {
        let expected = self.chunk_len(index)?;
        if ciphertext.len() != expected + TAG_BYTES {
            return Err(FileError::BadChunk(index));
        }
        let last = index + 1 == self.chunks();
        self.stream()
            .decrypt(
                index,
                last,
                Payload {
                    msg: ciphertext,
                    aad: &self.associated_data(),
                },
            )
            .map_err(|_| FileError::BadChunk(index))
    }
}

/// A file name safe to create in a download directory: the last component of whatever path was
/// given (either separator), without control or bidirectional-override characters, without
/// leading dots or spaces, at most [`MAX_NAME_BYTES`] bytes. `None` when nothing is left.
pub fn clean_name(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = last
        .chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    name = name
        .trim_start_matches(['.', ' '])
        .trim_end_matches([' ', '.'])
        .to_owned();
    while name.len() > MAX_NAME_BYTES {
        name.pop();
    }
    (!name.is_empty()).then_some(name)
}

/// The `n`th alternative of `name` when it is taken: `photo (2).jpg` for `photo.jpg`, `n = 2`.
pub fn numbered_name(name: &str, n: u32) -> String {
    match name.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => format!("{stem} ({n}).{extension}"),
        _ => format!("{name} ({n})"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn offer(size: u64, chunk_size: u32) -> FileOffer {
        FileOffer {
            id: FileId::from_bytes([1; 16]),
            name: "report.pdf".into(),
            size,
            media_type: "application/pdf".into(),
            chunk_size,
            key: [7; 32],
            nonce: [9; 7],
            sha256: [0; 32],
            chunk_digests: Vec::new(),
        }
        .with_digests()
    }

    impl FileOffer {
        fn with_digests(mut self) -> Self {
            self.chunk_digests = (0..self.chunks())
                .map(|i| {
                    let plain = vec![i as u8; self.chunk_len(i).unwrap()];
                    FileOffer::digest(&self.seal(i, &plain).unwrap())
                })
                .collect();
            self
        }
    }

    fn plaintext(offer: &FileOffer, index: u32) -> Vec<u8> {
        vec![index as u8; offer.chunk_len(index).unwrap()]
    }

    #[test]
    fn chunks_round_trip_and_the_last_one_is_shorter() {
        let o = offer(40 * 1024 + 5, 16 * 1024);
        assert_eq!(o.chunks(), 3);
        assert_eq!(o.chunk_len(2).unwrap(), 8 * 1024 + 5);
        for i in 0..3 {
            let sealed = o.seal(i, &plaintext(&o, i)).unwrap();
            assert_eq!(sealed.len(), o.chunk_len(i).unwrap() + TAG_BYTES);
            assert_eq!(o.open(i, &sealed).unwrap(), plaintext(&o, i));
            // Deterministic: anyone holding the plaintext serves the same bytes.
            assert_eq!(o.seal(i, &plaintext(&o, i)).unwrap(), sealed);
        }
        assert_eq!(
            offer(0, 16 * 1024).chunks(),
            1,
            "an empty file is one empty chunk"
        );
    }

    #[test]
    fn a_tampered_moved_or_truncated_chunk_fails() {
        let o = offer(48 * 1024, 16 * 1024);
        let sealed: Vec<Vec<u8>> = (0..3)
            .map(|i| o.seal(i, &plaintext(&o, i)).unwrap())
            .collect();
        let mut tampered = sealed[1].clone();
        tampered[10] ^= 1;
        assert_eq!(o.open(1, &tampered), Err(FileError::BadChunk(1)));
        // Chunk 0 presented as chunk 1.
        assert_eq!(o.open(1, &sealed[0]), Err(FileError::BadChunk(1)));
        // A file cut after chunk 1: chunk 1 was not sealed as the last one.
        let shorter = offer(32 * 1024, 16 * 1024);
        let o_as_shorter = FileOffer {
            size: shorter.size,
            ..o.clone()
        };
        assert_eq!(
            o_as_shorter.open(1, &sealed[1]),
            Err(FileError::BadChunk(1))
        );
        // Another file's chunk (same key, other id).
        let other = FileOffer {
            id: FileId::from_bytes([2; 16]),
            ..o.clone()
        };
        assert_eq!(other.open(0, &sealed[0]), Err(FileError::BadChunk(0)));
        assert_eq!(
            o.open(3, &sealed[2]),
            Err(FileError::PastEnd {
                index: 3,
                chunks: 3
            })
        );
    }

    #[test]
    fn offers_are_checked_for_their_bounds() {
        assert!(offer(100, CHUNK_BYTES).validate(1000).is_ok());
        assert_eq!(
            offer(1001, CHUNK_BYTES).validate(1000),
            Err(FileError::TooLarge { limit: 1000 })
        );
        assert!(offer(1, 1024).validate(1000).is_err(), "tiny chunks");
        for bad in ["", "image", "text/plain; x=\"y\"", "a/\u{7}"] {
            let o = FileOffer {
                media_type: bad.into(),
                ..offer(1, CHUNK_BYTES)
            };
            assert!(o.validate(1000).is_err(), "{bad:?}");
        }
        let nameless = FileOffer {
            name: "../..".into(),
            ..offer(1, CHUNK_BYTES)
        };
        assert!(nameless.validate(1000).is_err());
        let mut short_list = offer(40 * 1024, 16 * 1024);
        short_list.chunk_digests.pop();
        assert_eq!(
            short_list.validate(1 << 20),
            Err(FileError::Malformed("chunk digests"))
        );
        let mut too_many = offer(u64::from(MAX_CHUNKS + 1) * 16 * 1024, 16 * 1024);
        too_many.chunk_digests = vec![[0; 32]; (MAX_CHUNKS + 1) as usize];
        assert!(too_many.validate(u64::MAX).is_err());
    }

    #[test]
    fn a_chunk_sealed_by_another_key_holder_is_not_the_one_listed() {
        // A group member holds the key and can seal a chunk that authenticates: the digest
        // list is what refuses it.
        let o = offer(32 * 1024, 16 * 1024);
        let genuine = o.seal(1, &plaintext(&o, 1)).unwrap();
        assert_eq!(o.check(1, &genuine).unwrap(), plaintext(&o, 1));
        let forged = o.seal(1, &vec![0xEE; o.chunk_len(1).unwrap()]).unwrap();
        assert!(o.open(1, &forged).is_ok(), "it authenticates under the key");
        assert_eq!(o.check(1, &forged), Err(FileError::BadChunk(1)));
        assert_eq!(o.check(0, &genuine), Err(FileError::BadChunk(0)));
        assert!(o.check(2, &genuine).is_err());
    }

    #[test]
    fn names_are_cleaned_for_the_download_directory() {
        for (raw, clean) in [
            ("report.pdf", Some("report.pdf")),
            ("../../etc/passwd", Some("passwd")),
            ("..\\..\\boot.ini", Some("boot.ini")),
            (".bashrc", Some("bashrc")),
            ("...", None),
            ("a\u{0}b\nc\u{1b}[31m.txt", Some("abc[31m.txt")),
            ("evil\u{202e}gpj.exe", Some("evilgpj.exe")),
            ("dir/", None),
            ("  spaced .txt  ", Some("spaced .txt")),
        ] {
            assert_eq!(clean_name(raw).as_deref(), clean, "{raw:?}");
        }
        let long = "é".repeat(300);
        assert!(clean_name(&long).unwrap().len() <= MAX_NAME_BYTES);
        assert_eq!(numbered_name("photo.jpg", 2), "photo (2).jpg");
        assert_eq!(numbered_name("README", 3), "README (3)");
    }
}
