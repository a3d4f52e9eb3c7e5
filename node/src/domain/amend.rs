//! What can be done to a message after it was sent: its author edits it or deletes it for
//! everyone within [`EDIT_WINDOW_MS`], and anyone in the conversation reacts to it with one
//! emoji (replaceable and removable). The rules are checked where an amendment is made and
//! again where it arrives; a refused one changes nothing.

use peerchat_pki::Username;
use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use super::content::MAX_TEXT_BYTES;
use super::record::{Direction, StoredMessage};

/// How long after sending its author may edit or delete a message (24 hours).
pub const EDIT_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// How far ahead of the receiver's clock an amendment's time may be (clock skew).
pub const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// Longest reaction, in bytes of UTF-8 (one emoji, with its modifiers and joiners).
pub const MAX_REACTION_BYTES: usize = 64;

/// A change to an earlier message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Amendment {
    /// The author replaces the text.
    Edit {
        /// The new text.
        body: String,
    },
    /// The author deletes it for everyone: the text is removed, not hidden.
    Delete,
    /// Someone reacts with one emoji, replacing their earlier reaction; `None` takes it back.
    React {
        /// The emoji.
        emoji: Option<String>,
    },
}

/// Why an amendment is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmendRefused {
    /// Only a message's author may edit or delete it.
    #[error("only the author of a message may edit or delete it")]
    NotAuthor,
    /// Edits and deletes are allowed for 24 hours after sending.
    #[error("a message can be edited or deleted only within 24 hours of sending")]
    TooLate,
    /// The message was deleted.
    #[error("the message was deleted")]
    Deleted,
    /// A reaction must be one emoji.
    #[error("a reaction is one emoji")]
    NotAnEmoji,
    /// The new text is too long.
    #[error("the text is longer than {MAX_TEXT_BYTES} bytes")]
    TextTooLong,
}

/// Whether `s` is one emoji: one grapheme cluster, not a letter, digit, punctuation mark or
/// space, within [`MAX_REACTION_BYTES`].
pub fn is_one_emoji(s: &str) -> bool {
    s.len() <= MAX_REACTION_BYTES
        && s.graphemes(true).count() == 1
        && !s.is_ascii()
        && !s
            .chars()
            .any(|c| c.is_alphabetic() || c.is_whitespace() || c.is_control())
}

impl Amendment {
    /// Its own bounds: a text within [`MAX_TEXT_BYTES`], a reaction of one emoji.
    pub fn validate(&self) -> Result<(), AmendRefused> {
        match self {
            Amendment::Edit { body } if body.len() > MAX_TEXT_BYTES => {
                Err(AmendRefused::TextTooLong)
            }
            Amendment::React { emoji: Some(e) } if !is_one_emoji(e) => {
                Err(AmendRefused::NotAnEmoji)
            }
            _ => Ok(()),
        }
    }
}

impl StoredMessage {
    /// Who wrote it, given who we are.
    pub fn author<'a>(&'a self, me: &'a Username) -> &'a Username {
        match self.direction {
            Direction::Outgoing => me,
            Direction::Incoming => &self.peer,
        }
    }

    /// Whether `by` may make `amendment` at `at_ms` (the amender's clock), where `by` is known to
    /// be in the message's conversation and `me` is this node's user. Edits and deletes are the
    /// author's alone, within [`EDIT_WINDOW_MS`] of the message's sending; nothing is done to a
    /// deleted message.
    pub fn may_amend(
        &self,
        me: &Username,
        by: &Username,
        amendment: &Amendment,
        at_ms: u64,
    ) -> Result<(), AmendRefused> {
        amendment.validate()?;
        if self.deleted {
            return Err(AmendRefused::Deleted);
        }
        match amendment {
            Amendment::Edit { .. } | Amendment::Delete => {
                if self.author(me) != by {
                    return Err(AmendRefused::NotAuthor);
                }
                if at_ms.saturating_sub(self.sent_at_ms) > EDIT_WINDOW_MS {
                    return Err(AmendRefused::TooLate);
                }
                Ok(())
            }
            Amendment::React { .. } => Ok(()),
        }
    }

    /// Applies an amendment [`Self::may_amend`] allowed; whether anything changed. An edit
    /// older than the one shown is ignored (edits can arrive out of order), and nothing changes
    /// a deleted message.
    pub fn amend(&mut self, by: &Username, amendment: &Amendment, at_ms: u64) -> bool {
        if self.deleted {
            return false;
        }
        match amendment {
            Amendment::Edit { body } => {
                if self.edited_at_ms.is_some_and(|t| t > at_ms) || self.body == *body {
                    return false;
                }
                self.body.clone_from(body);
                self.edited_at_ms = Some(at_ms);
                true
            }
            Amendment::Delete => {
                self.deleted = true;
                self.body = String::new();
                self.edited_at_ms = None;
                self.reactions.clear();
                true
            }
            Amendment::React { emoji: Some(emoji) } => {
                self.reactions.insert(by.clone(), emoji.clone()) != Some(emoji.clone())
            }
            Amendment::React { emoji: None } => self.reactions.remove(by).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageId, MessageStatus};

    fn name(s: &str) -> Username {
        Username::new(s).unwrap()
    }

    fn from_bob(sent_at_ms: u64) -> StoredMessage {
        StoredMessage::direct(
            MessageId::from_bytes([1; 16]),
            name("bob"),
            Direction::Incoming,
            "hello".into(),
            sent_at_ms,
            MessageStatus::Received,
        )
    }

    #[test]
    fn only_the_author_edits_or_deletes_and_only_within_the_window() {
        let (alice, bob) = (name("alice"), name("bob"));
        let m = from_bob(1_000);
        let edit = Amendment::Edit { body: "hi".into() };
        assert_eq!(m.may_amend(&alice, &bob, &edit, 2_000), Ok(()));
        assert_eq!(
            m.may_amend(&alice, &alice, &edit, 2_000),
            Err(AmendRefused::NotAuthor)
        );
        assert_eq!(
            m.may_amend(&alice, &alice, &Amendment::Delete, 2_000),
            Err(AmendRefused::NotAuthor)
        );
        assert_eq!(
            m.may_amend(&alice, &bob, &edit, 1_000 + EDIT_WINDOW_MS),
            Ok(())
        );
        assert_eq!(
            m.may_amend(&alice, &bob, &Amendment::Delete, 1_001 + EDIT_WINDOW_MS),
            Err(AmendRefused::TooLate)
        );
        // Anyone in the conversation reacts, also later.
        let react = Amendment::React {
            emoji: Some("👍".into()),
        };
        assert_eq!(
            m.may_amend(&alice, &alice, &react, 10 * EDIT_WINDOW_MS),
            Ok(())
        );
        // Our own message: we are its author.
        let mine = StoredMessage {
            direction: Direction::Outgoing,
            ..from_bob(1_000)
        };
        assert_eq!(mine.may_amend(&alice, &alice, &edit, 2_000), Ok(()));
        assert_eq!(
            mine.may_amend(&alice, &bob, &edit, 2_000),
            Err(AmendRefused::NotAuthor)
        );
    }

    #[test]
    fn a_delete_removes_the_text_and_nothing_changes_it_after() {
        let bob = name("bob");
        let mut m = from_bob(1_000);
        assert!(m.amend(
            &bob,
            &Amendment::React {
                emoji: Some("🎉".into())
            },
            2_000
        ));
        assert!(m.amend(&bob, &Amendment::Delete, 3_000));
        assert!(m.deleted && m.body.is_empty() && m.reactions.is_empty());
        let edit = Amendment::Edit {
            body: "back".into(),
        };
        assert_eq!(
            m.may_amend(&name("alice"), &bob, &edit, 4_000),
            Err(AmendRefused::Deleted)
        );
        assert!(!m.amend(&bob, &edit, 4_000));
        assert!(m.body.is_empty());
    }

    #[test]
    fn edits_keep_the_latest_and_reactions_are_one_per_person() {
        let (alice, bob) = (name("alice"), name("bob"));
        let mut m = from_bob(1_000);
        assert!(m.amend(&bob, &Amendment::Edit { body: "two".into() }, 3_000));
        // An older edit arriving late does not win.
        assert!(!m.amend(&bob, &Amendment::Edit { body: "one".into() }, 2_000));
        assert_eq!((m.body.as_str(), m.edited_at_ms), ("two", Some(3_000)));
        let react = |e: &str| Amendment::React {
            emoji: Some(e.into()),
        };
        assert!(m.amend(&alice, &react("👍"), 4_000));
        assert!(m.amend(&alice, &react("❤️"), 5_000));
        assert!(m.amend(&bob, &react("👍"), 5_000));
        assert_eq!(m.reactions.len(), 2);
        assert_eq!(m.reactions[&alice], "❤️");
        assert!(m.amend(&alice, &Amendment::React { emoji: None }, 6_000));
        assert!(!m.reactions.contains_key(&alice));
    }

    #[test]
    fn a_reaction_is_one_emoji() {
        for ok in ["👍", "❤️", "👍🏽", "👩‍👩‍👧", "🇫🇷", "1️⃣"] {
            assert!(is_one_emoji(ok), "{ok}");
        }
        for bad in ["", "a", "ok", "👍👍", " ", "👍 ", "\u{0}", &"👍".repeat(20)] {
            assert!(!is_one_emoji(bad), "{bad:?}");
        }
    }
}
