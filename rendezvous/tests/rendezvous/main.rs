//! Integration tests of the rendezvous over real HTTPS on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod blobs;
mod connections;
mod crash;
mod mtls;
mod postgres;
mod routes;
mod scale_out;
mod service;
mod store_contract;
mod support;
