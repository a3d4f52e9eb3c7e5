//! The real binary under connections that are opened and then left idle: one source cannot hold
//! more than its share, others are still served at once, and idle connections are closed by the
//! server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use peerchat_pki::CaCertificate;
use peerchat_pki::tls::rendezvous_client_config;
use reqwest::StatusCode;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::crash::start_with;

/// The attacker's own loopback address; the test's other requests come from 127.0.0.1.
const ATTACKER: [u8; 4] = [127, 0, 0, 2];

struct Running {
    child: std::process::Child,
    port: u16,
    ca: CaCertificate,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (child, port) = start_with(dir.path(), args);
    let ca = CaCertificate::from_pem(&std::fs::read_to_string(dir.path().join("ca.pem")).unwrap())
        .unwrap();
    Running {
        child,
        port,
        ca,
        _dir: dir,
    }
}

/// A TCP connection from `from` to the server.
async fn connect_from(from: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(from), 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// A TLS connection (no client certificate) from `from`, handshake done, nothing sent.
async fn tls_from(
    from: [u8; 4],
    port: u16,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = connect_from(from, port).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn connector(ca: &CaCertificate) -> TlsConnector {
    TlsConnector::from(Arc::new(rendezvous_client_config(ca, None).unwrap()))
}

async fn healthz(server: &Running) -> StatusCode {
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(rendezvous_client_config(&server.ca, None).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    http.get(format!("https://localhost:{}/v1/healthz", server.port))
        .send()
        .await
        .expect("healthz answers while one source holds its maximum")
        .status()
}

/// Reads until the server closes the connection; returns what was read.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn one_source_holding_its_maximum_of_idle_connections_does_not_stop_others() {
    let server = start(&[
        "--max-connections-per-source",
        "40",
        "--idle-timeout-secs",
        "600",
    ]);
    let connector = Arc::new(connector(&server.ca));
    // 300 connections from one address, handshakes all at once, then nothing sent.
    let attempts = (0..300).map(|_| {
        let connector = connector.clone();
        let port = server.port;
        tokio::spawn(async move { tls_from(ATTACKER, port, &connector).await.ok() })
    });
    let mut held = Vec::new();
    for attempt in attempts {
        if let Some(tls) = attempt.await.unwrap() {
            held.push(tls);
        }
    }
    // The ones over the bound were closed before their handshake; a handshake can still look
    // complete to a TLS 1.3 client, so count the ones the server really kept: those that stay
    // open to a request.
    let mut alive = 0;
    for tls in &mut held {
        let sent = tls
            .write_all(b"GET /v1/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let mut buf = [0u8; 12];
        if sent.is_ok() && tls.read_exact(&mut buf).await.is_ok() {
            assert_eq!(&buf, b"HTTP/1.1 200");
            alive += 1;
        }
    }
    assert_eq!(alive, 40, "exactly the per-source maximum is served");

    // Another address is served at once while the attacker holds its maximum.
    assert_eq!(healthz(&server).await, StatusCode::OK);

    // Closing the attacker's connections gives its slots back.
    drop(held);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(mut tls) = tls_from(ATTACKER, server.port, &connector).await {
            tls.write_all(b"GET /v1/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 12];
            if tls.read_exact(&mut buf).await.is_ok() {
                again = Some(buf);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(&again.expect("the source is served again"), b"HTTP/1.1 200");
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_by_the_server_but_a_long_poll_is_not() {
    let server = start(&["--idle-timeout-secs", "1"]);
    let connector = connector(&server.ca);

    // Connected over TCP only, never starting TLS: closed by the handshake timeout (10 s),
    // so not part of this test. Handshake done, nothing sent: closed once idle.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tls_from(ATTACKER, server.port, &connector).await.unwrap());
    }
    // Headers started and never finished (slowloris): closed too.
    let mut partial = tls_from(ATTACKER, server.port, &connector).await.unwrap();
    partial
        .write_all(b"GET /v1/healthz HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    // A request answered, then the connection left open: closed after the answer.
    let mut kept_alive = tls_from(ATTACKER, server.port, &connector).await.unwrap();
    kept_alive
        .write_all(b"GET /v1/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();

    let closing = async {
        for tls in &mut idle {
            assert!(read_to_close(tls).await.is_empty());
        }
        assert!(read_to_close(&mut partial).await.is_empty());
        let answered = read_to_close(&mut kept_alive).await;
        assert!(answered.starts_with(b"HTTP/1.1 200"), "{answered:?}");
    };
    tokio::time::timeout(Duration::from_secs(30), closing)
        .await
        .expect("the server closes idle connections");

    // A long poll (3 s) is a request in flight: its connection outlives the 1 s idle timeout
    // and gets its answer.
    let alice = register(&server, "alice").await;
    let started = std::time::Instant::now();
    let response = alice
        .http
        .get(alice.url("/v1/mailbox/alice?wait=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(3));
}

async fn register(server: &Running, name: &str) -> crate::support::User {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use peerchat_pki::{Username, build_csr};
    use peerchat_rendezvous::api;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let username = Username::new(name).unwrap();
    let base = format!("https://localhost:{}", server.port);
    let request = api::RegisterRequest {
        username: username.clone(),
        password: crate::support::PASSWORD.into(),
        csr: B64.encode(build_csr(&key, &username).unwrap()),
    };
    let response = crate::support::client(&server.ca, None)
        .post(format!("{base}/v1/accounts"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let cert: peerchat_rendezvous::api::CertificateResponse = response.json().await.unwrap();
    let credentials = peerchat_pki::tls::Credentials::new(
        vec![crate::support::cert_der(&cert.certificate)],
        key.clone(),
    );
    crate::support::User::new_external(
        username,
        key,
        &cert,
        crate::support::client(&server.ca, Some(credentials)),
        base,
    )
}
