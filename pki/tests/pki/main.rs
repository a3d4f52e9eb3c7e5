//! Integration tests of the pki crate: issuance and verification, revocation, the CA files, an
//! independent check with OpenSSL, and real TLS handshakes over 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ca_files;
mod issuance;
mod openssl;
mod revocation;
mod support;
mod tls;
