//! The libp2p security upgrade every peerchat swarm uses, `/peerchat/mtls/1.0.0` ([`upgrade`]):
//! mutual TLS with certificates of the peerchat CA, with the verified identity of each connected
//! peer in a [`registry::PeerRegistry`]. The node's network uses it, and so will the
//! rendezvous's relay, which is why it is a crate of its own.

pub mod registry;
pub mod upgrade;
