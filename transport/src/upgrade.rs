//! `/peerchat/mtls/1.0.0`: libp2p's security upgrade done with our own mutual TLS.
//!
//! Both sides present their CA-issued peer certificate and verify the other's against the CA and
//! the current CRL ([`peerchat_pki::tls`]). The `PeerId` is derived from the verified
//! certificate's Ed25519 key, so libp2p's own check of a dial address's `/p2p/<id>` (`WrongPeerId`)
//! compares against what the CA certified. The upgrade is correct in both TLS roles, whichever side
//! dialled.

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use futures_rustls::TlsStream;
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use peerchat_pki::tls::{Credentials, PEER_SERVER_NAME, peer_client_config, peer_server_config};
use peerchat_pki::{TrustStore, VerifiedPeer, VerifyError};
use rustls::pki_types::ServerName;

use crate::registry::PeerRegistry;

/// The protocol name negotiated by multistream-select.
pub const PROTOCOL: &str = "/peerchat/mtls/1.0.0";

/// Why the security handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The TLS handshake failed (our side refused the peer's certificate, or the peer ours).
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
    /// The handshake finished but the certificate does not verify now.
    #[error("peer certificate: {0}")]
    Certificate(#[from] VerifyError),
    /// The certificate's key cannot be a libp2p identity.
    #[error("the peer certificate's key is not a valid libp2p identity")]
    Identity,
}

/// The upgrade: cheap to clone, shares the certificate, trust store and registry.
#[derive(Clone)]
pub struct MtlsUpgrade {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    trust: Arc<TrustStore>,
    registry: Arc<PeerRegistry>,
}

impl std::fmt::Debug for MtlsUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsUpgrade").finish_non_exhaustive()
    }
}

impl MtlsUpgrade {
    /// An upgrade presenting `credentials` and trusting `trust`; each verified peer is recorded
    /// in `registry`.
    pub fn new(
        credentials: Arc<Credentials>,
        trust: Arc<TrustStore>,
        registry: Arc<PeerRegistry>,
    ) -> Result<Self, peerchat_pki::tls::TlsError> {
        Ok(Self {
            server: Arc::new(peer_server_config(credentials.clone(), trust.clone())?),
            client: Arc::new(peer_client_config(credentials, trust.clone())?),
            trust,
            registry,
        })
    }

    /// Re-verifies the certificate the handshake accepted and turns its key into a `PeerId`.
    fn identify(
        &self,
        state: &rustls::CommonState,
    ) -> Result<(PeerId, VerifiedPeer), UpgradeError> {
        let peer = peerchat_pki::tls::verified_peer(
            state.peer_certificates(),
            &self.trust,
            SystemTime::now(),
        )?;
        let peer_id = peer_id_of(&peer.identity_key.to_bytes()).ok_or(UpgradeError::Identity)?;
        self.registry.insert(peer_id, peer.clone());
        Ok((peer_id, peer))
    }
}

/// The `PeerId` of an Ed25519 identity key.
pub fn peer_id_of(key: &[u8; 32]) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

impl UpgradeInfo for MtlsUpgrade {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for MtlsUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server.clone())
                .accept(socket)
                .await
                .map_err(UpgradeError::Handshake)?;
            let (peer_id, peer) = self.identify(stream.get_ref().1)?;
            tracing::debug!(%peer_id, user = %peer.username, "inbound peer authenticated");
            Ok((peer_id, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for MtlsUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let name = ServerName::try_from(PEER_SERVER_NAME).map_err(|e| {
                UpgradeError::Handshake(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            let stream = futures_rustls::TlsConnector::from(self.client.clone())
                .connect(name, socket)
                .await
                .map_err(UpgradeError::Handshake)?;
            let (peer_id, peer) = self.identify(stream.get_ref().1)?;
            tracing::debug!(%peer_id, user = %peer.username, "outbound peer authenticated");
            Ok((peer_id, stream.into()))
        }
        .boxed()
    }
}
