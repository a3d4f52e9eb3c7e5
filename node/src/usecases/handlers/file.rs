//! A file offer: checked against this node's limits and the files it knows (and, a group's
//! file, against the group: from a member, to a group we are in), recorded with the session,
//! and fetched at once when it is small enough.

use super::Decrypted;
use crate::domain::{Ack, FileOffer, GroupId, RejectReason};
use crate::ports::{Clock, Directory, Event, FileState, Network, Notifier, Store, Write};
use crate::usecases::{Node, NodeError};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Records a file offered by the sender.
    pub(super) async fn handle_file_offer(
        &self,
        decrypted: Decrypted<'_>,
        offer: FileOffer,
        group: Option<GroupId>,
    ) -> Result<Ack, NodeError> {
        let from = decrypted.from.clone();
        if let Some(group) = group {
            let me = self.me()?;
            let Some(held) = self.store.group(&group)? else {
                // Its creation, or the change adding us, is still on its way.
                return Ok(Ack::Rejected(RejectReason::Busy));
            };
            let members = &held.state().members;
            if !members.contains(&from) || !members.contains(&me.0) {
                tracing::warn!(peer = %from, group = %group, "a group file from a non-member was refused");
                self.record(decrypted, Vec::new(), false).await?;
                return Ok(Ack::Rejected(RejectReason::Refused));
            }
        }
        match self.take_offer(&from, offer, group).await {
            Ok(Some(record)) => {
                let (id, size) = (record.offer.id, record.offer.size);
                let downloading = record.state == FileState::Downloading;
                self.record(decrypted, vec![Write::File(Box::new(record))], true)
                    .await?;
                self.notifier.notify(Event::FileOffered {
                    peer: from,
                    id,
                    size,
                    downloading,
                });
                if downloading {
                    self.downloads_signal.notify_one();
                }
                Ok(Ack::Stored)
            }
            Ok(None) => {
                self.record(decrypted, Vec::new(), true).await?;
                Ok(Ack::Duplicate)
            }
            Err(reason) => {
                if reason == RejectReason::Refused {
                    self.record(decrypted, Vec::new(), false).await?;
                }
                Ok(Ack::Rejected(reason))
            }
        }
    }
}
