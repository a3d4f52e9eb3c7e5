//! The plaintext inside the ratchet: a versioned `Content`, padded so that the ciphertext length
//! reveals only a bucket, not the exact length of a text.
//!
//! Encoding: `version (1) ‖ postcard(Content) ‖ 0x80 ‖ 0x00…` up to a multiple of
//! [`PADDING_BLOCK`] bytes. New kinds are appended to [`Content`] (postcard numbers variants in
//! declaration order), so the envelope and older kinds never change.

use serde::{Deserialize, Serialize};

use super::amend::{AmendRefused, Amendment};
use super::file::{FileOffer, MAX_FILE_BYTES};
use super::group::{Change, GroupState, MAX_MEMBERS, SignedChange};
use super::ids::{GroupId, MessageId};
use super::person::{Profile, ProfileError};

/// Version of the content encoding.
pub const CONTENT_VERSION: u8 = 1;
/// Encoded content is padded to a multiple of this many bytes.
pub const PADDING_BLOCK: usize = 64;
/// Longest text a message may carry, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most message ids one receipt may acknowledge.
pub const MAX_RECEIPT_IDS: usize = 256;

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A chat message.
    Text {
        /// The sender's id for it (authenticated here, inside the ciphertext).
        id: MessageId,
        /// Milliseconds since the Unix epoch on the sender's clock.
        sent_at_ms: u64,
        /// The text.
        body: String,
    },
    /// The listed messages were stored by the receiver.
    DeliveryReceipt {
        /// The messages acknowledged.
        ids: Vec<MessageId>,
    },
    /// The listed messages were shown to the receiver.
    ReadReceipt {
        /// The messages acknowledged.
        ids: Vec<MessageId>,
    },
    /// A change of a group, from its author. A member the change adds also gets the state it
    /// was made on (`base`), having no earlier state of its own.
    GroupChange {
        /// The state the change was made on, for members it adds.
        base: Option<GroupState>,
        /// The signed change.
        change: Box<SignedChange>,
    },
    /// A chat message in a group (sent to each member over its pairwise session).
    GroupText {
        /// The group.
        group: GroupId,
        /// The group's version as the author sent it: a receiver behind it waits for the
        /// changes it misses before judging whether the author is a member.
        version: u64,
        /// The author's id for it (the same for every member).
        id: MessageId,
        /// Milliseconds since the Unix epoch on the author's clock.
        sent_at_ms: u64,
        /// The text.
        body: String,
    },
    /// The listed messages of the group were stored (`read: false`) or shown (`read: true`)
    /// by the receiver.
    GroupReceipt {
        /// The group.
        group: GroupId,
        /// The messages acknowledged.
        ids: Vec<MessageId>,
        /// Shown, not only stored.
        read: bool,
    },
    /// A file offered: its chunks are fetched from the sender over `/peerchat/file/1`.
    FileOffer {
        /// Name, size, media type, key and digest.
        offer: Box<FileOffer>,
        /// The group it was offered in, if any.
        group: Option<GroupId>,
    },
    /// A text that replies to an earlier message of the same conversation.
    Reply {
        /// The group and its version as the author sent it, for a reply in a group.
        group: Option<GroupRef>,
        /// The sender's id for it (the same for every member of a group).
        id: MessageId,
        /// Milliseconds since the Unix epoch on the sender's clock.
        sent_at_ms: u64,
        /// The text.
        body: String,
        /// The message it replies to.
        reply_to: MessageId,
    },
    /// An edit, delete or reaction of an earlier message of the same conversation.
    Amend {
        /// The group and its version as the author sent it, for a message in a group.
        group: Option<GroupRef>,
        /// The message amended.
        target: MessageId,
        /// Milliseconds since the Unix epoch on the sender's clock.
        at_ms: u64,
        /// What is done to it.
        amendment: Amendment,
    },
    /// The sender's profile, shared with a contact.
    Profile {
        /// The profile.
        profile: Box<Profile>,
    },
    /// The sender is typing (or stopped) in the conversation; never stored, shown for a few
    /// seconds.
    Typing {
        /// The group, for typing in a group.
        group: Option<GroupId>,
        /// Typing now, or stopped.
        typing: bool,
    },
}

/// A group, and its version as a sender knew it (a receiver behind it waits for the changes it
/// misses before judging whether the sender is a member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    /// The group.
    pub group: GroupId,
    /// Its version.
    pub version: u64,
}

/// Why content could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Text longer than [`MAX_TEXT_BYTES`].
    #[error("the text is longer than {MAX_TEXT_BYTES} bytes")]
    TextTooLong,
    /// A receipt for more than [`MAX_RECEIPT_IDS`] messages.
    #[error("a receipt covers at most {MAX_RECEIPT_IDS} messages")]
    TooManyIds,
    /// A group change naming more people than a group may hold.
    #[error("a group has at most {MAX_MEMBERS} members")]
    TooManyMembers,
    /// A file offer out of bounds.
    #[error(transparent)]
    File(#[from] super::file::FileError),
    /// An amendment out of bounds (too long a text, a reaction that is not one emoji).
    #[error(transparent)]
    Amend(#[from] AmendRefused),
    /// A profile out of bounds.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// An encoding version this node does not know.
    #[error("unsupported content version {0}")]
    UnsupportedVersion(u8),
    /// Bad padding, an unknown kind, or a malformed body.
    #[error("malformed content")]
    Malformed,
}

impl Content {
    /// Checks the bounds of the content.
    pub fn validate(&self) -> Result<(), ContentError> {
        match self {
            Content::Text { body, .. }
            | Content::GroupText { body, .. }
            | Content::Reply { body, .. }
                if body.len() > MAX_TEXT_BYTES =>
            {
                Err(ContentError::TextTooLong)
            }
            Content::DeliveryReceipt { ids }
            | Content::ReadReceipt { ids }
            | Content::GroupReceipt { ids, .. }
                if ids.len() > MAX_RECEIPT_IDS =>
            {
                Err(ContentError::TooManyIds)
            }
            Content::FileOffer { offer, .. } => Ok(offer.validate(MAX_FILE_BYTES)?),
            Content::Amend { amendment, .. } => Ok(amendment.validate()?),
            Content::Profile { profile } => Ok(profile.validate()?),
            Content::GroupChange { base, change } => {
                let named = match &change.change {
                    Change::Create { members, .. } => members.len(),
                    Change::Add(users) | Change::Remove(users) => users.len(),
                    _ => 0,
                };
                let held = base
                    .as_ref()
                    .map_or(0, |b| b.members.len().max(b.admins.len()));
                if named > MAX_MEMBERS || held > MAX_MEMBERS {
                    return Err(ContentError::TooManyMembers);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Encodes and pads.
    pub fn encode(&self) -> Result<Vec<u8>, ContentError> {
        self.validate()?;
        let mut out = vec![CONTENT_VERSION];
        out = postcard::to_extend(self, out).map_err(|_| ContentError::Malformed)?;
        out.push(0x80);
        let padded = out.len().div_ceil(PADDING_BLOCK) * PADDING_BLOCK;
        out.resize(padded, 0);
        Ok(out)
    }

    /// Strips the padding and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        let end = bytes
            .iter()
            .rposition(|b| *b != 0)
            .ok_or(ContentError::Malformed)?;
        if bytes[end] != 0x80 {
            return Err(ContentError::Malformed);
        }
        let (&version, body) = bytes[..end].split_first().ok_or(ContentError::Malformed)?;
        if version != CONTENT_VERSION {
            return Err(ContentError::UnsupportedVersion(version));
        }
        let content: Content = postcard::from_bytes(body).map_err(|_| ContentError::Malformed)?;
        content.validate().map_err(|_| ContentError::Malformed)?;
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(body: &str) -> Content {
        Content::Text {
            id: MessageId::from_bytes([7; 16]),
            sent_at_ms: 1_700_000_000_000,
            body: body.into(),
        }
    }

    #[test]
    fn round_trips_every_kind() {
        for c in [
            text("hello"),
            text(""),
            text(&"é".repeat(1000)),
            Content::DeliveryReceipt {
                ids: vec![MessageId::from_bytes([1; 16])],
            },
            Content::ReadReceipt { ids: vec![] },
            Content::GroupText {
                group: GroupId::from_bytes([3; 16]),
                version: 2,
                id: MessageId::from_bytes([4; 16]),
                sent_at_ms: 5,
                body: "to the group".into(),
            },
            Content::GroupReceipt {
                group: GroupId::from_bytes([3; 16]),
                ids: vec![MessageId::from_bytes([4; 16])],
                read: true,
            },
            group_change(3),
            Content::FileOffer {
                offer: Box::new(crate::domain::FileOffer {
                    id: crate::domain::FileId::from_bytes([5; 16]),
                    name: "notes.txt".into(),
                    size: 3,
                    media_type: "text/plain".into(),
                    chunk_size: crate::domain::file::CHUNK_BYTES,
                    key: [1; 32],
                    nonce: [2; 7],
                    sha256: [3; 32],
                    chunk_digests: vec![[4; 32]],
                }),
                group: None,
            },
            Content::Reply {
                group: Some(GroupRef {
                    group: GroupId::from_bytes([3; 16]),
                    version: 4,
                }),
                id: MessageId::from_bytes([6; 16]),
                sent_at_ms: 7,
                body: "agreed".into(),
                reply_to: MessageId::from_bytes([4; 16]),
            },
            Content::Amend {
                group: None,
                target: MessageId::from_bytes([7; 16]),
                at_ms: 8,
                amendment: Amendment::Edit {
                    body: "fixed".into(),
                },
            },
            Content::Profile {
                profile: Box::new(Profile::new("Alice", Some(b"GIF89a....".to_vec()), 10).unwrap()),
            },
            Content::Typing {
                group: Some(GroupId::from_bytes([3; 16])),
                typing: true,
            },
            Content::Amend {
                group: None,
                target: MessageId::from_bytes([7; 16]),
                at_ms: 9,
                amendment: Amendment::React {
                    emoji: Some("👍".into()),
                },
            },
            Content::Amend {
                group: None,
                target: MessageId::from_bytes([7; 16]),
                at_ms: 10,
                amendment: Amendment::Delete,
            },
        ] {
            let bytes = c.encode().unwrap();
            assert_eq!(bytes.len() % PADDING_BLOCK, 0);
            assert_eq!(Content::decode(&bytes).unwrap(), c);
        }
    }

    fn group_change(members: usize) -> Content {
        let key = crate::domain::IdentityKeyPair::from_seed(&[9; 32]);
        let people = (0..members)
            .map(|i| peerchat_pki::Username::new(format!("member{i}")).unwrap())
            .collect();
        Content::GroupChange {
            base: None,
            change: Box::new(SignedChange::sign(
                &key,
                peerchat_pki::Username::new("admin").unwrap(),
                GroupId::from_bytes([3; 16]),
                None,
                Change::Create {
                    name: "friends".into(),
                    members: people,
                },
            )),
        }
    }

    #[test]
    fn a_group_change_naming_more_than_a_group_holds_is_refused() {
        assert!(group_change(MAX_MEMBERS).encode().is_ok());
        assert_eq!(
            group_change(MAX_MEMBERS + 1).encode(),
            Err(ContentError::TooManyMembers)
        );
    }

    #[test]
    fn padding_hides_exact_lengths() {
        assert_eq!(
            text("hi").encode().unwrap().len(),
            text("hello there").encode().unwrap().len()
        );
    }

    #[test]
    fn bounds_and_bad_input_are_refused() {
        assert_eq!(
            text(&"a".repeat(MAX_TEXT_BYTES + 1)).encode(),
            Err(ContentError::TextTooLong)
        );
        let ids = vec![MessageId::from_bytes([0; 16]); MAX_RECEIPT_IDS + 1];
        assert_eq!(
            Content::ReadReceipt { ids }.encode(),
            Err(ContentError::TooManyIds)
        );
        assert_eq!(Content::decode(&[]), Err(ContentError::Malformed));
        assert_eq!(Content::decode(&[0; 64]), Err(ContentError::Malformed));
        let mut future = text("x").encode().unwrap();
        future[0] = 9;
        assert_eq!(
            Content::decode(&future),
            Err(ContentError::UnsupportedVersion(9))
        );
        let reaction = |emoji: &str| Content::Amend {
            group: None,
            target: MessageId::from_bytes([7; 16]),
            at_ms: 1,
            amendment: Amendment::React {
                emoji: Some(emoji.into()),
            },
        };
        assert_eq!(
            reaction("no").encode(),
            Err(ContentError::Amend(AmendRefused::NotAnEmoji))
        );
        let mut forged = reaction("👍").encode().unwrap();
        let at = forged
            .windows(4)
            .position(|w| w == "👍".as_bytes())
            .unwrap();
        forged[at..at + 4].copy_from_slice(b"yes!");
        assert_eq!(Content::decode(&forged), Err(ContentError::Malformed));
        // A profile whose avatar is not an image is refused on the way in too.
        let mut profile = Profile::new("Alice", Some(b"GIF89a....".to_vec()), 1).unwrap();
        let encoded = Content::Profile {
            profile: Box::new(profile.clone()),
        }
        .encode()
        .unwrap();
        let mut forged = encoded.clone();
        let at = forged.windows(6).position(|w| w == b"GIF89a").unwrap();
        forged[at..at + 6].copy_from_slice(b"<svg  ");
        assert_eq!(Content::decode(&forged), Err(ContentError::Malformed));
        profile.display_name = "bad\nname".into();
        assert_eq!(
            Content::Profile {
                profile: Box::new(profile)
            }
            .encode(),
            Err(ContentError::Profile(ProfileError::BadDisplayName))
        );
        let mut unknown_kind = text("x").encode().unwrap();
        unknown_kind[1] = 200;
        assert_eq!(Content::decode(&unknown_kind), Err(ContentError::Malformed));
    }
}
