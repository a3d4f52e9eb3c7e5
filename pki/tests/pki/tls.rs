//! Real TLS 1.3 handshakes over 127.0.0.1 with tokio-rustls.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use ed25519_dalek::SigningKey;
use peerchat_pki::tls::{
    Credentials, PEER_SERVER_NAME, peer_client_config, peer_server_config,
    rendezvous_client_config, rendezvous_server_config, verified_peer,
};
use peerchat_pki::{CertificateAuthority, HostName, RevokedEntry, TrustStore, VerifiedPeer};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::support::{days, identity, new_ca, rng};

/// What each side saw of one connection: the server's view of the client certificate, and the
/// bytes the client got back from the server's echo.
struct Outcome {
    server: io::Result<Option<Vec<CertificateDer<'static>>>>,
    client: io::Result<Vec<u8>>,
    client_saw: Option<Vec<CertificateDer<'static>>>,
}

async fn connect(server: ServerConfig, client: ClientConfig, name: &str) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let certs = tls.get_ref().1.peer_certificates().map(|c| c.to_vec());
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        tls.write_all(&buf).await?;
        tls.shutdown().await?;
        Ok::<_, io::Error>(certs)
    });
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut client_saw = None;
    let client = async {
        let mut tls = connector.connect(name, tcp).await?;
        client_saw = tls.get_ref().1.peer_certificates().map(|c| c.to_vec());
        tls.write_all(b"hello").await?;
        let mut buf = vec![0u8; 5];
        tls.read_exact(&mut buf).await?;
        Ok(buf)
    }
    .await;
    let server = server_task.await.unwrap();
    Outcome {
        server,
        client,
        client_saw,
    }
}

struct Peer {
    credentials: Arc<Credentials>,
    trust: Arc<TrustStore>,
    serial: peerchat_pki::Serial,
}

fn peer(ca: &CertificateAuthority, name: &str) -> Peer {
    let (key, cert) = identity(ca, name, SystemTime::now());
    Peer {
        credentials: Credentials::new(vec![cert.der], key),
        trust: Arc::new(TrustStore::new(ca.certificate().clone())),
        serial: cert.serial,
    }
}

fn seen(certs: &Option<Vec<CertificateDer<'static>>>, trust: &TrustStore) -> VerifiedPeer {
    verified_peer(certs.as_deref(), trust, SystemTime::now()).unwrap()
}

#[tokio::test]
async fn two_ca_issued_peers_complete_a_mutual_handshake() {
    let ca = new_ca(SystemTime::now());
    let alice = peer(&ca, "alice");
    let bob = peer(&ca, "bob");

    let out = connect(
        peer_server_config(bob.credentials.clone(), bob.trust.clone()).unwrap(),
        peer_client_config(alice.credentials.clone(), alice.trust.clone()).unwrap(),
        PEER_SERVER_NAME,
    )
    .await;

    assert_eq!(out.client.unwrap(), b"hello");
    let server_saw = out.server.unwrap();
    assert_eq!(seen(&server_saw, &bob.trust).username.as_str(), "alice");
    assert_eq!(seen(&out.client_saw, &alice.trust).username.as_str(), "bob");
}

#[tokio::test]
async fn a_client_with_a_foreign_ca_certificate_is_refused() {
    let ca = new_ca(SystemTime::now());
    let foreign = new_ca(SystemTime::now());
    let bob = peer(&ca, "bob");
    let mallory = peer(&foreign, "alice");
    // Mallory trusts our CA, so only bob's check of her certificate can stop her.
    let mallory_trust = Arc::new(TrustStore::new(ca.certificate().clone()));

    let out = connect(
        peer_server_config(bob.credentials.clone(), bob.trust.clone()).unwrap(),
        peer_client_config(mallory.credentials.clone(), mallory_trust).unwrap(),
        PEER_SERVER_NAME,
    )
    .await;

    let err = out.server.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(
        out.client.is_err(),
        "the client must never get data through"
    );
}

#[tokio::test]
async fn a_server_with_a_foreign_ca_certificate_is_refused() {
    let ca = new_ca(SystemTime::now());
    let foreign = new_ca(SystemTime::now());
    let alice = peer(&ca, "alice");
    let mallory = peer(&foreign, "bob");
    let mallory_trust = Arc::new(TrustStore::new(ca.certificate().clone()));

    let out = connect(
        peer_server_config(mallory.credentials.clone(), mallory_trust).unwrap(),
        peer_client_config(alice.credentials.clone(), alice.trust.clone()).unwrap(),
        PEER_SERVER_NAME,
    )
    .await;

    let err = out.client.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn a_client_revoked_by_a_crl_swap_is_refused_on_its_next_connection() {
    let now = SystemTime::now();
    let ca = new_ca(now);
    let alice = peer(&ca, "alice");
    let bob = peer(&ca, "bob");
    let server = Arc::new(peer_server_config(bob.credentials.clone(), bob.trust.clone()).unwrap());
    let client =
        Arc::new(peer_client_config(alice.credentials.clone(), alice.trust.clone()).unwrap());

    // Two connections before: the second would resume the first's session if resumption were on.
    for _ in 0..2 {
        let before = connect((*server).clone(), (*client).clone(), PEER_SERVER_NAME).await;
        assert_eq!(before.client.unwrap(), b"hello");
        assert!(
            before.server.unwrap().is_some(),
            "every handshake carries the client certificate"
        );
    }

    // Same configuration objects; only the CRL in bob's trust store changes.
    let crl = ca
        .sign_crl(
            &[RevokedEntry {
                serial: alice.serial.clone(),
                revoked_at: now,
            }],
            1,
            now,
            now + days(7),
        )
        .unwrap();
    bob.trust.set_crl(crl).unwrap();

    let after = connect((*server).clone(), (*client).clone(), PEER_SERVER_NAME).await;
    let err = after.server.unwrap_err();
    assert!(err.to_string().contains("Revoked"), "{err}");
    assert!(after.client.is_err());
}

#[tokio::test]
async fn renewed_credentials_are_used_by_the_next_handshake() {
    let now = SystemTime::now();
    let ca = new_ca(now);
    let alice = peer(&ca, "alice");
    let bob = peer(&ca, "bob");
    let (new_key, new_cert) = identity(&ca, "alice", now);
    alice
        .credentials
        .replace(vec![new_cert.der.clone()], new_key.clone());

    let out = connect(
        peer_server_config(bob.credentials.clone(), bob.trust.clone()).unwrap(),
        peer_client_config(alice.credentials.clone(), alice.trust.clone()).unwrap(),
        PEER_SERVER_NAME,
    )
    .await;
    let saw = seen(&out.server.unwrap(), &bob.trust);
    assert_eq!(saw.serial, new_cert.serial);
    assert_eq!(saw.identity_key, new_key.verifying_key());
}

fn rendezvous_server(ca: &CertificateAuthority) -> (ServerConfig, Arc<TrustStore>) {
    let key = SigningKey::generate(&mut rng());
    let cert = ca
        .issue_server(
            &key.verifying_key(),
            &[HostName::parse("localhost"), HostName::parse("127.0.0.1")],
            SystemTime::now(),
            days(30),
            &mut rng(),
        )
        .unwrap();
    let trust = Arc::new(TrustStore::new(ca.certificate().clone()));
    let config =
        rendezvous_server_config(Credentials::new(vec![cert.der], key), trust.clone()).unwrap();
    (config, trust)
}

#[tokio::test]
async fn the_rendezvous_accepts_clients_with_and_without_a_certificate() {
    let ca = new_ca(SystemTime::now());
    let alice = peer(&ca, "alice");

    let (server, trust) = rendezvous_server(&ca);
    let anonymous = connect(
        server,
        rendezvous_client_config(ca.certificate(), None).unwrap(),
        "localhost",
    )
    .await;
    assert_eq!(anonymous.client.unwrap(), b"hello");
    assert!(anonymous.server.unwrap().is_none());

    let (server, _) = rendezvous_server(&ca);
    let authenticated = connect(
        server,
        rendezvous_client_config(ca.certificate(), Some(alice.credentials.clone())).unwrap(),
        "127.0.0.1",
    )
    .await;
    assert_eq!(authenticated.client.unwrap(), b"hello");
    assert_eq!(
        seen(&authenticated.server.unwrap(), &trust)
            .username
            .as_str(),
        "alice"
    );
}

#[tokio::test]
async fn the_rendezvous_client_checks_the_host_name_and_the_ca() {
    let ca = new_ca(SystemTime::now());
    let (server, _) = rendezvous_server(&ca);
    let out = connect(
        server,
        rendezvous_client_config(ca.certificate(), None).unwrap(),
        "elsewhere.example",
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");

    let foreign = new_ca(SystemTime::now());
    let (server, _) = rendezvous_server(&ca);
    let out = connect(
        server,
        rendezvous_client_config(foreign.certificate(), None).unwrap(),
        "localhost",
    )
    .await;
    let err = out.client.unwrap_err().to_string();
    // Same CA name, other key: webpki reports the signature rather than the issuer.
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer")
            || err.contains("invalid peer certificate: BadSignature"),
        "{err}"
    );
}

#[tokio::test]
async fn the_rendezvous_refuses_a_foreign_client_certificate() {
    let ca = new_ca(SystemTime::now());
    let foreign = new_ca(SystemTime::now());
    let mallory = peer(&foreign, "mallory");
    let (server, _) = rendezvous_server(&ca);
    let out = connect(
        server,
        rendezvous_client_config(ca.certificate(), Some(mallory.credentials.clone())).unwrap(),
        "localhost",
    )
    .await;
    assert!(
        out.server
            .unwrap_err()
            .to_string()
            .contains("UnknownIssuer")
    );
    assert!(out.client.is_err());
}
