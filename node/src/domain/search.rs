//! Search over stored history: what a query matches, and the words an index keeps.
//!
//! A message matches when every word of the query begins a word of its text, case ignored
//! (`"lunch noon"` finds "Lunch at NOON?", `"lun"` finds it too, `"unch"` does not), as the
//! full-text search of other messengers does. Deleted and undecryptable messages have no text
//! to find.

use std::collections::BTreeSet;

use unicode_segmentation::UnicodeSegmentation;

use super::{MessageStatus, StoredMessage};

/// Bytes of a word an index keeps: longer words are kept by their first bytes (a query word is
/// looked up the same way, then checked against the whole text).
pub const INDEXED_WORD_BYTES: usize = 48;

/// The words of `text` as search compares them: lower case, split at Unicode word boundaries,
/// each once.
pub fn words(text: &str) -> BTreeSet<String> {
    text.unicode_words().map(str::to_lowercase).collect()
}

/// The form of `word` an index keeps: at most [`INDEXED_WORD_BYTES`], cut at a character
/// boundary.
pub fn indexed(word: &str) -> &str {
    if word.len() <= INDEXED_WORD_BYTES {
        return word;
    }
    let mut end = INDEXED_WORD_BYTES;
    while !word.is_char_boundary(end) {
        end -= 1;
    }
    &word[..end]
}

/// The lengths, in characters, of the word prefixes a sealed index keeps: it holds keyed hashes
/// of prefixes rather than words, so it can only be looked up by whole prefixes.
pub const PREFIX_CHARS: [usize; 6] = [1, 2, 3, 5, 8, 12];

/// The prefixes of `word`'s indexed form that an index keeps: one per length of
/// [`PREFIX_CHARS`] the word reaches.
pub fn index_prefixes(word: &str) -> Vec<&str> {
    let word = indexed(word);
    let ends: Vec<usize> = word.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
    PREFIX_CHARS
        .iter()
        .filter_map(|&chars| ends.get(chars - 1).map(|&end| &word[..end]))
        .collect()
}

/// The prefix a query word is looked up by: the longest kept one it reaches. Every word that
/// begins with the query word has this prefix among its [`index_prefixes`].
pub fn lookup_prefix(word: &str) -> &str {
    index_prefixes(word).pop().unwrap_or_default()
}

/// The text of a message search can find, if any.
pub fn searchable(message: &StoredMessage) -> Option<&str> {
    (!message.deleted && message.status != MessageStatus::Undecryptable)
        .then_some(message.body.as_str())
}

/// A search: the words to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    words: Vec<String>,
}

impl Query {
    /// The query for `text`; `None` when it has no word (blank, or punctuation only).
    pub fn parse(text: &str) -> Option<Self> {
        let words: Vec<String> = words(text).into_iter().collect();
        (!words.is_empty()).then_some(Self { words })
    }

    /// The word an index is best scanned by: the longest (the fewest words begin with it).
    pub fn key_word(&self) -> &str {
        self.words
            .iter()
            .max_by_key(|w| w.len())
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Whether `message` matches: each query word begins one of its words.
    pub fn matches(&self, message: &StoredMessage) -> bool {
        let Some(text) = searchable(message) else {
            return false;
        };
        let theirs = words(text);
        self.words
            .iter()
            .all(|w| theirs.iter().any(|t| t.starts_with(w.as_str())))
    }
}

/// Keeps the `limit` newest of `hits` (by sending time, then id), newest first.
pub fn newest_first(mut hits: Vec<StoredMessage>, limit: usize) -> Vec<StoredMessage> {
    hits.sort_by(|a, b| {
        b.sent_at_ms
            .cmp(&a.sent_at_ms)
            .then_with(|| b.id.as_bytes().cmp(a.id.as_bytes()))
    });
    hits.truncate(limit);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_is_kept_by_prefixes_that_every_query_it_answers_is_looked_up_by() {
        assert_eq!(index_prefixes("lunch"), ["l", "lu", "lun", "lunch"]);
        assert_eq!(index_prefixes("é"), ["é"]);
        assert!(index_prefixes("").is_empty());
        for word in [
            "lunch",
            "quarterly",
            "überraschungsparty",
            "日本語のテキスト",
            "a",
        ] {
            let kept = index_prefixes(word);
            for (end, _) in word.char_indices().skip(1).chain([(word.len(), ' ')]) {
                let query = &word[..end];
                assert!(kept.contains(&lookup_prefix(query)), "{word} by {query}");
            }
        }
    }
    use crate::domain::{Direction, MessageId};

    fn message(text: &str) -> StoredMessage {
        StoredMessage::direct(
            MessageId::from_bytes([1; 16]),
            peerchat_pki::Username::new("dora").unwrap(),
            Direction::Incoming,
            text.into(),
            1,
            MessageStatus::Received,
        )
    }

    #[test]
    fn every_query_word_begins_a_word_of_the_text_case_ignored() {
        let m = message("Lunch at NOON? Ça va, Zoë");
        for found in [
            "lunch",
            "LUN",
            "noon lunch",
            "ça",
            "zoë",
            "ZOË",
            "  noon!! ",
        ] {
            assert!(Query::parse(found).unwrap().matches(&m), "{found}");
        }
        for missed in ["unch", "breakfast", "lunch breakfast", "noonday"] {
            assert!(!Query::parse(missed).unwrap().matches(&m), "{missed}");
        }
    }

    #[test]
    fn a_query_without_words_is_none() {
        assert_eq!(Query::parse("   "), None);
        assert_eq!(Query::parse("?! …"), None);
    }

    #[test]
    fn deleted_and_undecryptable_messages_have_no_text_to_find() {
        let query = Query::parse("lunch").unwrap();
        let mut deleted = message("lunch");
        deleted.deleted = true;
        assert!(!query.matches(&deleted));
        let mut lost = message("lunch");
        lost.status = MessageStatus::Undecryptable;
        assert!(!query.matches(&lost));
    }

    #[test]
    fn long_words_are_indexed_by_their_first_bytes_at_a_character_boundary() {
        let word = "é".repeat(40);
        let kept = indexed(&word);
        assert!(kept.len() <= INDEXED_WORD_BYTES && word.starts_with(kept));
        assert_eq!(kept.chars().count(), INDEXED_WORD_BYTES / 2);
        assert_eq!(indexed("short"), "short");
    }
}
