//! Adapters the use cases call.

pub mod crl_file;
pub mod file_dir;
pub mod memory;
pub mod p2p;
pub mod rendezvous_http;
pub mod rendezvous_inprocess;
pub mod rendezvous_wire;
pub mod sled_store;
pub mod store_key;
pub mod transport_trust;
