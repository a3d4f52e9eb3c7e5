//! Adapters the use cases call.

pub mod p2p;
