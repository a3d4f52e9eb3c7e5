use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::MAX_SKIPPED_KEYS;
use super::message_key::MessageKey;
use super::ratchet_key::RemoteRatchetKey;

/// Keys of messages that were skipped (not yet received), oldest first, at most
/// [`MAX_SKIPPED_KEYS`]; adding more forgets the oldest.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SkippedKeys(VecDeque<(RemoteRatchetKey, MessageKey)>);

impl SkippedKeys {
    /// Position of the key for message `n` of chain `ratchet_key`.
    pub(crate) fn find(&self, ratchet_key: &RemoteRatchetKey, n: u32) -> Option<usize> {
        // Recent keys are the likeliest to be asked for.
        self.0
            .iter()
            .rposition(|(k, mk)| k == ratchet_key && mk.index() == n)
    }

    pub(crate) fn get(&self, at: usize) -> Option<&MessageKey> {
        self.0.get(at).map(|(_, mk)| mk)
    }

    pub(crate) fn remove(&mut self, at: usize) {
        self.0.remove(at);
    }

    pub(crate) fn extend(&mut self, ratchet_key: RemoteRatchetKey, keys: Vec<MessageKey>) {
        for key in keys {
            if self.0.len() == MAX_SKIPPED_KEYS {
                self.0.pop_front();
            }
            self.0.push_back((ratchet_key, key));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}
