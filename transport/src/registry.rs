//! Who is behind each connected `PeerId`, as the CA certified it.

use std::collections::HashMap;
use std::sync::Mutex;

use libp2p::PeerId;
use peerchat_pki::VerifiedPeer;

/// Verified identities of connected peers. Entries are added by the security upgrade and removed
/// when the last connection to a peer closes, so the map is bounded by the connection limit.
#[derive(Debug, Default)]
pub struct PeerRegistry(Mutex<HashMap<PeerId, VerifiedPeer>>);

impl PeerRegistry {
    pub fn insert(&self, peer_id: PeerId, peer: VerifiedPeer) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer_id, peer);
    }

    /// The verified identity behind `peer_id`, if connected.
    pub fn get(&self, peer_id: &PeerId) -> Option<VerifiedPeer> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer_id)
            .cloned()
    }

    pub fn remove(&self, peer_id: &PeerId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer_id);
    }

    /// Peers whose certificate `is_revoked` says is revoked.
    pub fn revoked(&self, is_revoked: impl Fn(&VerifiedPeer) -> bool) -> Vec<PeerId> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, peer)| is_revoked(peer))
            .map(|(id, _)| *id)
            .collect()
    }
}
