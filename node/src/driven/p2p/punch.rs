//! Which dials leave from the listening port, and DCUtR's hole punching that needs them.
//!
//! Ordinary dials use a fresh port: with the listening port (libp2p's default), two nodes dialling
//! each other at the same moment can meet in a TCP simultaneous open, a single connection on which
//! both start TLS as clients, and the handshake fails. Two kinds of dial must leave from the
//! listening port all the same:
//!
//! - dials to the relay, so that the address the relay observes (identify) is the NAT's mapping of
//!   the listening port, which is what a hole punch reuses;
//! - DCUtR's hole-punch dials, which are simultaneous opens on purpose: DCUtR makes one side dial
//!   with its role overridden to listener (TLS server), so the TLS roles match.
//!
//! [`PortPolicy`] records them: [`HolePunch`] wraps DCUtR's behaviour and notes the addresses of
//! each dial it asks for, [`PortChoice`] (the TCP transport) lets exactly those, and dials to the
//! relay, keep the listening port.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, dcutr};

/// Most hole-punch addresses remembered before they are dialled (DCUtR tries a few at a time).
const MAX_PUNCH_ADDRESSES: usize = 64;

/// The dials that keep the listening port, shared by [`HolePunch`] and [`PortChoice`].
#[derive(Clone, Debug, Default)]
pub struct PortPolicy(Arc<Mutex<PolicyState>>);

#[derive(Debug, Default)]
struct PolicyState {
    /// Peers dialled from the listening port (the relay).
    reuse_peers: HashSet<PeerId>,
    /// Addresses (without `/p2p`) of hole-punch dials asked for and not yet made.
    punch: HashSet<Multiaddr>,
}

impl PortPolicy {
    /// Dials to `peer` keep the listening port from now on.
    pub fn reuse_for(&self, peer: PeerId) {
        self.state().reuse_peers.insert(peer);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PolicyState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_punch(&self, addresses: &[Multiaddr]) {
        let mut state = self.state();
        if state.punch.len() + addresses.len() > MAX_PUNCH_ADDRESSES {
            state.punch.clear();
        }
        state
            .punch
            .extend(addresses.iter().map(|a| without_peer(a.clone()).0));
    }

    /// Whether a dial of `addr` keeps the listening port (a hole punch is used up by its dial).
    fn keeps_port(&self, addr: &Multiaddr) -> bool {
        let (bare, peer) = without_peer(addr.clone());
        let mut state = self.state();
        peer.is_some_and(|p| state.reuse_peers.contains(&p)) || state.punch.remove(&bare)
    }
}

/// `addr` without its trailing `/p2p/<id>`, and that id.
fn without_peer(mut addr: Multiaddr) -> (Multiaddr, Option<PeerId>) {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => {
            addr.pop();
            (addr, Some(id))
        }
        _ => (addr, None),
    }
}

/// A TCP transport whose dials use a fresh port unless the [`PortPolicy`] says otherwise.
pub struct PortChoice<T> {
    pub inner: T,
    pub policy: PortPolicy,
}

impl<T: libp2p::Transport + Unpin> libp2p::Transport for PortChoice<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<T::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        mut opts: DialOpts,
    ) -> Result<T::Dial, TransportError<T::Error>> {
        if !self.policy.keeps_port(&addr) {
            opts.port_use = PortUse::New;
        }
        self.inner.dial(addr, opts)
    }

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<T::ListenerUpgrade, T::Error>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

/// DCUtR, noting in the [`PortPolicy`] the addresses of the hole-punch dials it asks for.
pub struct HolePunch {
    inner: dcutr::Behaviour,
    policy: PortPolicy,
    /// Hole-punch dials asked for, not yet started by the swarm.
    asked: HashSet<ConnectionId>,
}

impl HolePunch {
    pub fn new(local_peer_id: PeerId, policy: PortPolicy) -> Self {
        Self {
            inner: dcutr::Behaviour::new(local_peer_id),
            policy,
            asked: HashSet::new(),
        }
    }
}

impl NetworkBehaviour for HolePunch {
    type ConnectionHandler = <dcutr::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = dcutr::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if self.asked.remove(&id) {
            self.policy.note_punch(addresses);
        }
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::DialFailure(failure) = &event {
            self.asked.remove(&failure.connection_id);
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<dcutr::Event, THandlerInEvent<Self>>> {
        let polled = self.inner.poll(cx);
        if let Poll::Ready(ToSwarm::Dial { opts }) = &polled {
            if self.asked.len() >= MAX_PUNCH_ADDRESSES {
                self.asked.clear();
            }
            self.asked.insert(opts.connection_id());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_the_relay_and_asked_hole_punches_keep_the_listening_port() {
        let policy = PortPolicy::default();
        let relay = PeerId::random();
        let peer = PeerId::random();
        let at = |s: &str| s.parse::<Multiaddr>().unwrap();
        let relay_addr = at(&format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}"));
        let peer_addr = at(&format!("/ip4/198.18.2.2/tcp/5000/p2p/{peer}"));
        assert!(!policy.keeps_port(&relay_addr), "nothing recorded yet");
        policy.reuse_for(relay);
        assert!(policy.keeps_port(&relay_addr));
        assert!(
            policy.keeps_port(&relay_addr),
            "the relay keeps it every time"
        );
        assert!(!policy.keeps_port(&peer_addr), "an ordinary dial to a peer");
        policy.note_punch(&[at("/ip4/198.18.2.2/tcp/5000")]);
        assert!(
            policy.keeps_port(&peer_addr),
            "the hole punch to that address"
        );
        assert!(
            !policy.keeps_port(&peer_addr),
            "used up: the next ordinary dial gets a fresh port"
        );
    }
}
