//! Who is behind each connected `PeerId`, as the CA certified it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use peerchat_pki::VerifiedPeer;

/// Verified identities of peers, added by the security upgrade at each handshake.
///
/// An entry outlives its connections a while: a peer's new connection can finish its handshake
/// (and be recorded) before the swarm reports its last old connection closed, so removing the
/// entry then would lose the new connection's identity. [`PeerRegistry::prune`] drops entries of
/// peers that are no longer connected and were not seen for a while; the connection limits bound
/// how many are added in that while.
#[derive(Debug, Default)]
pub struct PeerRegistry(Mutex<HashMap<PeerId, (VerifiedPeer, Instant)>>);

impl PeerRegistry {
    /// Records `peer` behind `peer_id` (at every handshake, so the entry is the latest
    /// certificate's).
    pub fn insert(&self, peer_id: PeerId, peer: VerifiedPeer) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer_id, (peer, Instant::now()));
    }

    /// The verified identity behind `peer_id`.
    pub fn get(&self, peer_id: &PeerId) -> Option<VerifiedPeer> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer_id)
            .map(|(peer, _)| peer.clone())
    }

    /// Drops the entries of peers that `connected` says are gone and that were recorded more
    /// than `older_than` ago.
    pub fn prune(&self, connected: impl Fn(&PeerId) -> bool, older_than: Duration) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, (_, at)| connected(id) || at.elapsed() < older_than);
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Peers whose certificate `is_revoked` says is revoked.
    pub fn revoked(&self, is_revoked: impl Fn(&VerifiedPeer) -> bool) -> Vec<PeerId> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (peer, _))| is_revoked(peer))
            .map(|(id, _)| *id)
            .collect()
    }
}
