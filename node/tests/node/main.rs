//! Integration tests of the node crate, by layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod amend;
mod amend_daemons;
mod archive;
mod archive_daemons;
mod at_rest;
mod binaries;
mod e2ee_properties;
mod e2ee_ratchet;
mod e2ee_x3dh;
mod fault_loops;
mod file_daemons;
mod files;
mod floods;
mod friction;
mod group_daemons;
mod groups;
mod held_mail;
mod nat;
mod p2p;
mod people;
mod people_daemons;
#[path = "../../../rendezvous/tests/rendezvous/postgres.rs"]
mod postgres;
mod revocation;
mod scale_out;
mod store_contract;
mod support;
mod traces;
mod usecases;
mod window;
mod without_rendezvous;
