//! The peerchat node.
//!
//! [`domain`] is the pure core: X3DH, the Double Ratchet, message and content encodings and
//! safety numbers, with no IO, no clock and no OS randomness. The rest of the hexagon (use cases,
//! ports and adapters) is built around it.

pub mod daemon;
pub mod demo;
pub mod domain;
pub mod driven;
pub mod driving;
pub mod ports;
pub mod probe;
pub mod usecases;
