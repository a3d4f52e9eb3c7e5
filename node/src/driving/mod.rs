//! Adapters that call the use cases.

pub mod p2p_inbound;
