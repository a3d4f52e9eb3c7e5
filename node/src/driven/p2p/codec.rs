//! `/peerchat/msg/1`: one envelope per request, one acknowledgement per response, each framed as
//! a 4-byte big-endian length and the bytes, with a hard bound on every frame.

use std::io;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::domain::{Ack, Envelope};
use crate::ports::read_frame;

/// The messaging protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/peerchat/msg/1");
/// Default largest envelope a node accepts.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 256 * 1024;
/// Largest acknowledgement.
const MAX_ACK_BYTES: usize = 64;

/// The bounded codec.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeCodec {
    /// Largest envelope read or written; a larger length prefix fails the stream before any
    /// allocation.
    pub max_envelope_bytes: usize,
}

impl Default for EnvelopeCodec {
    fn default() -> Self {
        Self {
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
        }
    }
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {max}", bytes.len()),
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for EnvelopeCodec {
    type Protocol = StreamProtocol;
    type Request = Envelope;
    type Response = Ack;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Envelope> {
        let bytes = read_frame(io, self.max_envelope_bytes).await?;
        Envelope::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Ack> {
        let bytes = read_frame(io, MAX_ACK_BYTES).await?;
        Ack::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        envelope: Envelope,
    ) -> io::Result<()> {
        write_frame(io, &envelope.encode(), self.max_envelope_bytes).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        ack: Ack,
    ) -> io::Result<()> {
        write_frame(io, &ack.encode(), MAX_ACK_BYTES).await
    }
}
