//! The transport's trust: the CRL its handshakes check and the certificate it presents.

use std::future::Future;

/// What the transport trusts and presents. The maintenance use case keeps it current.
pub trait TransportTrust: Send + Sync + 'static {
    /// The number of the CRL in force, if one is installed.
    fn crl_number(&self) -> Option<u64>;
    /// Installs `crl` (DER, as the rendezvous served it) if it verifies against the pinned CA
    /// and is not older than the one in force, keeps it for the next start and closes the
    /// connections of peers it revokes. Returns whether it was installed.
    fn install_crl(&self, crl: Vec<u8>) -> impl Future<Output = bool> + Send;
    /// Presents `certificate_pem` (for our unchanged identity key) on every new connection.
    fn present_certificate(&self, certificate_pem: &str);
}
