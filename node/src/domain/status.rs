//! Where a message is in its lifecycle, and the one rule for how that may change.

/// Where a message is in its lifecycle.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Stored and encrypted, not yet acknowledged by anyone.
    Pending,
    /// Acknowledged by the peer (or the mailbox).
    Sent,
    /// The peer confirmed it stored the message (encrypted receipt).
    Delivered,
    /// The peer showed it.
    Read,
    /// Could not be delivered.
    Failed,
    /// A message we received.
    Received,
    /// Waiting for the user to accept the recipient's new key.
    Held,
    /// A message we received that could not be decrypted (kept so that it does not vanish
    /// without a trace; its text is empty).
    Undecryptable,
}

impl MessageStatus {
    /// Whether a message in this status may move to `next`. Statuses only move forward: an
    /// outgoing message along pending → sent → delivered → read, so a late acknowledgement
    /// (`sent`) never undoes a receipt that overtook it; one not acknowledged yet (pending,
    /// held, failed) may also be held, released, given up on or retried; a received one may be
    /// read. This is the one place the rule lives; stores apply it inside their writes.
    pub fn may_become(self, next: Self) -> bool {
        use MessageStatus::{Delivered, Failed, Held, Pending, Read, Received, Sent};
        match (self, next) {
            (from, to) if from == to => false,
            (Pending | Held | Failed, Pending | Held | Failed | Sent | Delivered | Read) => true,
            (Sent, Delivered | Read) | (Delivered, Read) => true,
            (Received, Read) => true,
            _ => false,
        }
    }

    /// Whether the peer (or the mailbox, for it) has acknowledged the message: `sent`, or a
    /// receipt beyond it. Which of the three a sender sees at a given moment depends on whether
    /// a receipt overtook the acknowledgement.
    pub fn is_acknowledged(self) -> bool {
        Self::Pending.may_become(self) && !matches!(self, Self::Pending | Self::Held | Self::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::{self, *};

    #[test]
    fn acknowledged_means_sent_or_a_receipt_beyond_it() {
        for status in [Sent, Delivered, Read] {
            assert!(status.is_acknowledged(), "{status:?}");
        }
        for status in [Pending, Held, Failed, Received, Undecryptable] {
            assert!(!status.is_acknowledged(), "{status:?}");
        }
    }

    #[test]
    fn statuses_only_move_forward() {
        let all = [
            Pending,
            Sent,
            Delivered,
            Read,
            Failed,
            Received,
            Held,
            Undecryptable,
        ];
        let allowed: Vec<(MessageStatus, MessageStatus)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        for (from, to) in [
            (Pending, Sent),
            (Sent, Delivered),
            (Delivered, Read),
            (Pending, Delivered),
            (Failed, Pending),
            (Held, Pending),
            (Pending, Failed),
            (Received, Read),
        ] {
            assert!(allowed.contains(&(from, to)), "{from:?} -> {to:?}");
        }
        for (from, to) in [
            (Delivered, Sent),
            (Read, Delivered),
            (Read, Sent),
            (Sent, Pending),
            (Sent, Failed),
            (Read, Received),
            (Received, Sent),
            (Undecryptable, Read),
        ] {
            assert!(!allowed.contains(&(from, to)), "{from:?} -> {to:?}");
        }
        assert!(
            all.iter().all(|s| !s.may_become(*s)),
            "staying put is no move"
        );
    }
}
