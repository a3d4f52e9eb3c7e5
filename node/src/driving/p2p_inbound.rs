//! The inbound side of the peer-to-peer network: envelopes from authenticated peers, handed to
//! whatever handles them (the receive use case).

use std::future::Future;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::domain::{Ack, Envelope, IdentityKey};
use crate::ports::Inbound;

/// How many envelopes are handled at once. The receive use case serializes the work of one peer
/// (its session) and shares disk flushes between concurrent receipts, so handling envelopes one
/// by one would cap a node at one flush per message.
pub const CONCURRENCY: usize = 64;

/// Feeds every inbound envelope to `handle` (up to [`CONCURRENCY`] at once) and sends each
/// acknowledgement back to its peer. Returns when the network stops.
pub async fn serve<F, Fut>(mut inbound: mpsc::Receiver<Inbound>, handle: F)
where
    F: Fn(peerchat_pki::Username, IdentityKey, Envelope) -> Fut,
    Fut: Future<Output = Ack>,
{
    let stream = futures::stream::poll_fn(move |cx| inbound.poll_recv(cx));
    stream
        .for_each_concurrent(CONCURRENCY, |item| {
            let span = tracing::info_span!(
                "p2p.inbound",
                from = %item.from,
                id = %item.envelope.id,
                ack = tracing::field::Empty,
            );
            // The sender's trace goes on here (the context travels outside the ciphertext).
            peerchat_telemetry::continue_trace(&span, item.envelope.trace.as_deref());
            let handled = handle(item.from, item.identity_key, item.envelope);
            let reply = item.reply;
            async move {
                let ack = tracing::Instrument::instrument(handled, span.clone()).await;
                span.record("ack", tracing::field::debug(&ack));
                let _ = reply.send(ack);
            }
        })
        .await;
}
