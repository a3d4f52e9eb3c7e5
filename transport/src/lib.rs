//! The libp2p security upgrade every peerchat swarm uses, `/peerchat/mtls/1.0.0` ([`upgrade`]):
//! mutual TLS with certificates of the peerchat CA, with the verified identity of each connected
//! peer in a [`registry::PeerRegistry`]. The node's network and the rendezvous's relay both use
//! it, which is why it is a crate of its own; [`listen`] starts either listening.

pub mod listen;
pub mod registry;
pub mod upgrade;
