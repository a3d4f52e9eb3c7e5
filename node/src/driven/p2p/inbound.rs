//! What authenticated peers send, handed to the [`Inbound`] port: envelopes (up to
//! [`CONCURRENCY`] at once, each answered with the port's acknowledgement) and streams.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::Admission;
use super::registry::PeerRegistry;
use crate::domain::{Ack, Envelope, IdentityKey};
use crate::ports::{AuthenticatedPeer, Inbound, PeerStream};

/// How many envelopes are handled at once. The receive use case serializes the work of one peer
/// (its session) and shares disk flushes between concurrent receipts, so handling envelopes one
/// by one would cap a node at one flush per message.
pub const CONCURRENCY: usize = 64;

/// An envelope from an authenticated peer, with where its acknowledgement goes (dropping `reply`
/// answers `Rejected(Internal)`).
#[derive(Debug)]
pub(super) struct Received {
    pub from: AuthenticatedPeer,
    pub envelope: Envelope,
    pub reply: oneshot::Sender<Ack>,
}

/// Feeds every envelope to `inbound` and sends each acknowledgement back. Returns when the
/// swarm stops.
pub(super) async fn envelopes<I: Inbound>(mut received: mpsc::Receiver<Received>, inbound: Arc<I>) {
    let stream = futures::stream::poll_fn(move |cx| received.poll_recv(cx));
    stream
        .for_each_concurrent(CONCURRENCY, |item| {
            let span = tracing::info_span!(
                "p2p.inbound",
                from = %item.from.username,
                id = %item.envelope.id,
                ack = tracing::field::Empty,
            );
            // The sender's trace goes on here (the context travels outside the ciphertext).
            peerchat_telemetry::continue_trace(&span, item.envelope.trace.as_deref());
            let inbound = inbound.clone();
            async move {
                let ack = tracing::Instrument::instrument(
                    inbound.envelope(item.from, item.envelope),
                    span.clone(),
                )
                .await;
                span.record("ack", tracing::field::debug(&ack));
                let _ = item.reply.send(ack);
            }
        })
        .await;
}

/// The byte an acceptor writes first on every stream it takes. libp2p-stream hands inbound
/// streams over through a channel of one slot and drops those that find it full (two streams
/// opened at once are enough), after the protocol was already confirmed to the opener; the
/// opener waits for this byte, so a dropped stream is seen at once and opened again
/// ([`super::P2pNetwork`]'s `open_stream`).
pub(super) const STREAM_ACCEPTED: u8 = 1;

/// Hands every stream of `protocol` that an admitted peer opens to `inbound`, at most `limit`
/// at once (further ones are closed; the opener may try again), each confirmed to the opener
/// with [`STREAM_ACCEPTED`] first. Returns when the swarm stops.
pub(super) async fn streams<I: Inbound>(
    incoming: libp2p_stream::IncomingStreams,
    protocol: &'static str,
    registry: Arc<PeerRegistry>,
    admission: Admission,
    inbound: Arc<I>,
    limit: usize,
) {
    incoming
        .filter_map(|(peer_id, io)| {
            let peer = registry.get(&peer_id).filter(|p| admission.admits(p));
            if peer.is_none() {
                tracing::info!(%peer_id, protocol, "stream from a peer not admitted; closed");
            }
            futures::future::ready(peer.map(|peer| PeerStream {
                peer: AuthenticatedPeer {
                    username: peer.username,
                    identity_key: IdentityKey::from_verifying_key(peer.identity_key),
                },
                protocol: protocol.to_owned(),
                io: Box::pin(io),
            }))
        })
        .for_each_concurrent(limit, |mut stream| {
            let span = tracing::info_span!("p2p.stream", from = %stream.peer.username, protocol);
            let inbound = inbound.clone();
            let serve = async move {
                use futures::AsyncWriteExt;
                if stream.io.write_all(&[STREAM_ACCEPTED]).await.is_err() {
                    return;
                }
                inbound.stream(stream).await;
            };
            tracing::Instrument::instrument(serve, span)
        })
        .await;
}
