//! The real binary: killed with SIGKILL after acknowledging a deposit, restarted, nothing lost.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use peerchat_pki::CaCertificate;
use peerchat_rendezvous::api;
use reqwest::{Method, StatusCode};

use crate::support::{NO_BODY, User, cert_der};

/// Starts the binary on 127.0.0.1:0 and reads the address it prints.
fn start(dir: &Path) -> (Child, u16) {
    start_with(dir, &[])
}

/// Starts the binary on 127.0.0.1:0 with `args` and reads the address it prints.
pub fn start_with(dir: &Path, args: &[&str]) -> (Child, u16) {
    let (child, line) = start_line(dir, args);
    let port = line
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    (child, port)
}

/// Starts the binary on 127.0.0.1:0 with `args`; returns it and the first line it prints.
fn start_line(dir: &Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerchat-rendezvous"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--relay-listen", "/ip4/127.0.0.1/tcp/0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

#[tokio::test]
async fn the_start_line_names_the_metrics_address_and_the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rv");
    let (mut child, line) = start_line(&data, &[]);
    let metrics = line
        .split("metrics on ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"));
    assert!(metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"));
    let text = crate::support::plain_http()
        .get(metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("peerchat_rendezvous_registered_users 0"),
        "{text}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ca.key")), 0o600);
    assert_eq!(mode(&data.join("totp.key")), 0o600);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A minimal server handle so the `support::User` helpers work against the external process.
pub struct External {
    pub ca: CaCertificate,
    pub port: u16,
}

impl External {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// `user`, talking to this server.
    pub fn as_user(&self, user: &User) -> User {
        User::new_external(
            user.username.clone(),
            user.key.clone(),
            &user.certificate,
            crate::support::client(
                &self.ca,
                Some(peerchat_pki::tls::Credentials::new(
                    vec![cert_der(&user.certificate.certificate)],
                    user.key.clone(),
                )),
            ),
            self.url(""),
        )
    }

    pub async fn register(&self, name: &str) -> User {
        use ed25519_dalek::SigningKey;
        use peerchat_pki::{Username, build_csr};
        use rand::rngs::OsRng;
        let key = SigningKey::generate(&mut OsRng);
        let username = Username::new(name).unwrap();
        let request = api::RegisterRequest {
            username: username.clone(),
            password: crate::support::PASSWORD.into(),
            csr: B64.encode(build_csr(&key, &username).unwrap()),
        };
        let http = crate::support::client(&self.ca, None);
        let response = http
            .post(self.url("/v1/accounts"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let cert: api::CertificateResponse = response.json().await.unwrap();
        let credentials =
            peerchat_pki::tls::Credentials::new(vec![cert_der(&cert.certificate)], key.clone());
        let mut user = User::new_external(
            username,
            key,
            &cert,
            crate::support::client(&self.ca, Some(credentials)),
            self.url(""),
        );
        user.certificate = cert;
        user
    }
}

/// Starts the binary on `dir` and a handle on it, with the CA it wrote there.
fn start_external(dir: &Path) -> (Child, External) {
    let (child, port) = start(dir);
    let ca =
        CaCertificate::from_pem(&std::fs::read_to_string(dir.join("ca.pem")).unwrap()).unwrap();
    (child, External { ca, port })
}

#[tokio::test]
async fn a_deposit_survives_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, server) = start_external(dir.path());
    let ca = server.ca.clone();
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (code, _) = bob.deposit("alice", 42, b"sealed for alice").await;
    assert_eq!(code, StatusCode::ACCEPTED);

    child.kill().unwrap(); // SIGKILL: no shutdown path runs.
    child.wait().unwrap();

    let (mut child, port) = start(dir.path());
    let restarted =
        CaCertificate::from_pem(&std::fs::read_to_string(dir.path().join("ca.pem")).unwrap())
            .unwrap();
    assert_eq!(restarted, ca, "the CA survives");
    let alice = External { ca, port }.as_user(&alice);
    let (code, mail) = alice
        .call::<(), api::MailboxResponse>(Method::GET, "/v1/mailbox/alice", NO_BODY)
        .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "alice's account and certificate survive"
    );
    let mail = mail.unwrap().envelopes;
    assert_eq!(mail.len(), 1);
    assert_eq!(B64.decode(&mail[0].envelope).unwrap(), b"sealed for alice");
    assert_eq!(mail[0].sender.as_str(), "bob");

    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_a_restart_keeps_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = start(dir.path());
    let ca = CaCertificate::from_pem(&std::fs::read_to_string(dir.path().join("ca.pem")).unwrap())
        .unwrap();
    let server = External {
        ca: ca.clone(),
        port,
    };
    server.register("alice").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "graceful shutdown exits with 0, got {exit:?}"
    );

    let (mut child, port) = start(dir.path());
    let server = External { ca, port };
    let http = crate::support::client(&server.ca, None);
    let request = api::RegisterRequest {
        username: peerchat_pki::Username::new("alice").unwrap(),
        password: crate::support::PASSWORD.into(),
        csr: B64.encode(
            peerchat_pki::build_csr(
                &ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng),
                &peerchat_pki::Username::new("alice").unwrap(),
            )
            .unwrap(),
        ),
    };
    let response = http
        .post(server.url("/v1/accounts"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CONFLICT,
        "alice is still registered"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// One fetcher's round: bundles of bob fetched one after another until the server goes away;
/// the one-time prekey ids it received, and whether a request failed (the kill landed).
async fn fetch_until_killed(user: User) -> (Vec<u32>, bool) {
    let mut ids = Vec::new();
    loop {
        let response = match user
            .http
            .post(user.url("/v1/users/bob/bundle"))
            .send()
            .await
        {
            Ok(response) => response,
            Err(_) => return (ids, true),
        };
        let status = response.status();
        let Ok(bytes) = response.bytes().await else {
            return (ids, true);
        };
        if status == StatusCode::OK {
            let bundle: api::BundleResponse = serde_json::from_slice(&bytes).unwrap();
            ids.extend(bundle.one_time_prekey.map(|k| k.id));
        }
    }
}

/// Killed with SIGKILL ten times while six users fetch bob's bundles at once: no one-time
/// prekey is ever handed out twice, because each is recorded as used, durably, before its
/// bundle leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_one_time_prekey_is_handed_out_twice_across_kills_during_concurrent_fetches() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, server) = start_external(dir.path());
    let (ca, port) = (server.ca.clone(), server.port);
    let bob = server.register("bob").await;
    bob.upload_prekeys(1..101).await;
    let status = bob.upload_prekeys(101..201).await;
    assert_eq!(status.one_time_prekeys, 200);
    let mut fetchers = Vec::new();
    for i in 0..6 {
        fetchers.push(server.register(&format!("fetcher{i}")).await);
    }

    let mut handed: Vec<u32> = Vec::new();
    let mut interrupted_rounds = 0;
    let mut port = port;
    for _round in 0..10 {
        let server = External {
            ca: ca.clone(),
            port,
        };
        let tasks: Vec<_> = fetchers
            .iter()
            .map(|f| tokio::spawn(fetch_until_killed(server.as_user(f))))
            .collect();
        let delay = rand::thread_rng().gen_range(30..300);
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let mut interrupted = false;
        for task in tasks {
            let (ids, failed) = task.await.unwrap();
            handed.extend(ids);
            interrupted |= failed;
        }
        interrupted_rounds += usize::from(interrupted);
        (child, port) = start(dir.path());
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let mut unique = handed.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        handed.len(),
        "a one-time prekey was handed out twice: {handed:?}"
    );
    assert!(
        handed.len() >= 20,
        "too few keys were handed out to show anything: {}",
        handed.len()
    );
    assert_eq!(interrupted_rounds, 10, "every kill landed during fetches");
}
