//! The driven ports: what the use cases need from the outside world, one module per concern.
//! Each trait states its contract; the adapters in `driven` implement them.

mod directory;
mod events;
mod network;
mod store;
mod trust;

pub use crate::domain::{Contact, Direction, MessageStatus, StoredMessage};
pub use directory::*;
pub use events::*;
pub use network::*;
pub use store::*;
pub use trust::*;
