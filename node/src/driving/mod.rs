//! Adapters that call the use cases.

pub mod api;
pub mod cli;
pub mod token;
pub mod ui;
