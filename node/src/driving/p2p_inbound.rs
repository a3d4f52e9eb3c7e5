//! The inbound side of the peer-to-peer network: envelopes from authenticated peers, handed to
//! whatever handles them (the receive use case), one at a time per peer order of arrival.

use std::future::Future;

use tokio::sync::mpsc;

use crate::domain::Ack;
use crate::ports::Inbound;

/// Feeds every inbound envelope to `handle` and sends its acknowledgement back to the peer.
/// Returns when the network stops.
pub async fn serve<F, Fut>(mut inbound: mpsc::Receiver<Inbound>, mut handle: F)
where
    F: FnMut(peerchat_pki::Username, crate::domain::IdentityKey, crate::domain::Envelope) -> Fut,
    Fut: Future<Output = Ack>,
{
    while let Some(item) = inbound.recv().await {
        let span = tracing::info_span!("p2p.inbound", from = %item.from, id = %item.envelope.id);
        let ack = tracing::Instrument::instrument(
            handle(item.from, item.identity_key, item.envelope),
            span,
        )
        .await;
        let _ = item.reply.send(ack);
    }
}
