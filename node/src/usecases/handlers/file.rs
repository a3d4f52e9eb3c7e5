//! A file offer: checked against this node's limits and the files it knows, recorded with the
//! session, and fetched at once when it is small enough.

use super::Decrypted;
use crate::domain::{Ack, FileOffer};
use crate::ports::{Clock, Directory, Event, FileState, Network, Notifier, Store, Write};
use crate::usecases::{Node, NodeError};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Records a file offered by the sender.
    pub(super) async fn handle_file_offer(
        &self,
        decrypted: Decrypted<'_>,
        offer: FileOffer,
    ) -> Result<Ack, NodeError> {
        let from = decrypted.from.clone();
        match self.take_offer(&from, offer).await {
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
                if reason == crate::domain::RejectReason::Refused {
                    self.record(decrypted, Vec::new(), false).await?;
                }
                Ok(Ack::Rejected(reason))
            }
        }
    }
}
