//! Adapters that call the use cases.

pub mod api;
pub mod cli;
pub mod p2p_inbound;
pub mod token;
pub mod ui;
