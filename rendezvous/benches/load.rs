//! Load benchmark of the rendezvous, with a minimal axum + rustls endpoint as the ceiling.
//!
//! `cargo bench -p peerchat-rendezvous --bench load`
//! (environment: `USERS`, default 100000; `CLIENTS`, default 32; `SECS` per phase, default 5)
//!
//! 1. Pre-populates a store with `USERS` accounts, each with a signed prekey and two one-time
//!    prekeys (written directly through the store, not over HTTP).
//! 2. Starts the real `peerchat-rendezvous` binary on it (rate limits raised out of the way).
//! 3. `CLIENTS` concurrent keep-alive mTLS clients, each its own connection, run for `SECS`:
//!    lookups of random users, then bundle fetches of random users (each consumes and durably
//!    removes a one-time prekey while any is left).
//! 4. The same clients against a constant-answer axum route behind the same TLS configuration
//!    (client certificate verified against the same CA), in this process: the ceiling.
//! 5. Prints requests per second, the ratios, and the server's peak RSS (`VmHWM`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use peerchat_pki::tls::{Credentials, rendezvous_client_config, rendezvous_server_config};
use peerchat_pki::{CertificateAuthority, HostName, Username, build_csr};
use peerchat_rendezvous::sled_store::SledStore;
use peerchat_rendezvous::store::{Account, OneTimePreKeyRecord, SignedPreKeyRecord, Store};
use rand::rngs::OsRng;
use rand::{Rng, SeedableRng};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn populate(dir: &std::path::Path, users: u64) -> CertificateAuthority {
    let now = SystemTime::now();
    let (ca, _) = CertificateAuthority::load_or_generate(dir, "load CA", now, &mut OsRng).unwrap();
    let store = SledStore::open(&peerchat_rendezvous::db_dir(dir)).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fill(&store, &ca, users));
    ca
}

/// Writes `users` accounts, each with a signed prekey and two one-time prekeys, into `store`.
async fn fill(store: &impl Store, ca: &CertificateAuthority, users: u64) {
    let now = SystemTime::now();
    let template_key = SigningKey::generate(&mut OsRng);
    let template_name = Username::new("template").unwrap();
    let template = ca
        .issue_peer(
            &build_csr(&template_key, &template_name).unwrap(),
            &template_name,
            now,
            Duration::from_secs(86400),
            &mut OsRng,
        )
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let started = Instant::now();
    for i in 0..users {
        let username = Username::new(format!("user{i}")).unwrap();
        let key = SigningKey::generate(&mut rng);
        store
            .create_account(&Account {
                username: username.clone(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA".into(),
                identity_key: key.verifying_key().to_bytes(),
                peer_id: peerchat_rendezvous::service::peer_id_of(&key.verifying_key()).unwrap(),
                certificate: template.der.to_vec(),
                serial: template.serial.clone(),
                totp: None,
                created_at: 0,
            }).await
            .unwrap();
        store
            .set_signed_prekey(
                &username,
                &SignedPreKeyRecord {
                    id: 1,
                    public_key: rng.r#gen(),
                    signature: vec![0; 64],
                },
            )
            .await
            .unwrap();
        let keys = [
            OneTimePreKeyRecord {
                id: 1,
                public_key: rng.r#gen(),
            },
            OneTimePreKeyRecord {
                id: 2,
                public_key: rng.r#gen(),
            },
        ];
        store
            .add_one_time_prekeys(&username, &keys, 200)
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    eprintln!(
        "populated {users} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn client_credentials(ca: &CertificateAuthority, i: usize) -> Arc<Credentials> {
    let key = SigningKey::generate(&mut OsRng);
    let name = Username::new(format!("client{i}")).unwrap();
    let cert = ca
        .issue_peer(
            &build_csr(&key, &name).unwrap(),
            &name,
            SystemTime::now(),
            Duration::from_secs(86400),
            &mut OsRng,
        )
        .unwrap();
    Credentials::new(vec![cert.der], key)
}

/// Runs `clients` loops for `secs` seconds; returns completed requests per second.
async fn load(
    ca: &CertificateAuthority,
    base: &str,
    method: reqwest::Method,
    path: impl Fn(u64) -> String + Send + Sync + 'static,
    clients: usize,
    secs: u64,
    users: u64,
) -> f64 {
    let path = Arc::new(path);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(
                rendezvous_client_config(ca.certificate(), Some(client_credentials(ca, i)))
                    .unwrap(),
            )
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        // Open the connection before the clock starts.
        let _ = http
            .get(format!("{base}/v1/healthz"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
        let (path, done, failed, method, base) = (
            path.clone(),
            done.clone(),
            failed.clone(),
            method.clone(),
            base.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            while Instant::now() < deadline {
                let target = rng.gen_range(0..users);
                match http
                    .request(method.clone(), format!("{base}{}", path(target)))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "requests failed during the load");
    done.load(Ordering::Relaxed) as f64 / elapsed
}

fn vm(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` and friends: nothing to list, nothing to run.
        return;
    }
    let users = env("USERS", 100_000);
    let clients = env("CLIENTS", 32) as usize;
    let secs = env("SECS", 5);
    let dir = tempfile::tempdir().unwrap();
    let ca = populate(dir.path(), users);

    let mut child = Command::new(env!("CARGO_BIN_EXE_peerchat-rendezvous"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--lookups-per-minute",
            "100000000",
            "--deposits-per-minute",
            "100000000",
            "--no-relay",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let pid = child.id();
    let rss_start = vm(pid, "VmRSS:");
    let base = format!("https://localhost:{port}");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let lookups = runtime.block_on(load(
        &ca,
        &base,
        reqwest::Method::GET,
        |t| format!("/v1/users/user{t}"),
        clients,
        secs,
        users,
    ));
    let bundles = runtime.block_on(load(
        &ca,
        &base,
        reqwest::Method::POST,
        |t| format!("/v1/users/user{t}/bundle"),
        clients,
        secs,
        users,
    ));
    let peak = vm(pid, "VmHWM:");
    child.kill().unwrap();
    child.wait().unwrap();

    // The ceiling: a constant answer behind the same TLS stack, same CA, client certificates.
    let server_key = SigningKey::generate(&mut OsRng);
    let server_cert = ca
        .issue_server(
            &server_key.verifying_key(),
            &[HostName::parse("localhost")],
            SystemTime::now(),
            Duration::from_secs(86400),
            &mut OsRng,
        )
        .unwrap();
    let trust = Arc::new(peerchat_pki::TrustStore::new(ca.certificate().clone()));
    let tls = Arc::new(
        rendezvous_server_config(Credentials::new(vec![server_cert.der], server_key), trust)
            .unwrap(),
    );
    let ceiling = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/v1/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/v1/users/{name}",
                axum::routing::get(|| async { "constant" }),
            );
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        load(
            &ca,
            &format!("https://localhost:{port}"),
            reqwest::Method::GET,
            |t| format!("/v1/users/user{t}"),
            clients,
            secs,
            users,
        )
        .await
    });

    println!();
    println!("{users} users, {clients} concurrent keep-alive mTLS clients, {secs} s per phase");
    println!("| endpoint | requests/s | share of ceiling |");
    println!("|---|---|---|");
    println!("| constant answer, axum + rustls (ceiling) | {ceiling:.0} | 100% |");
    println!(
        "| lookup `GET /v1/users/{{name}}` | {lookups:.0} | {:.0}% |",
        100.0 * lookups / ceiling
    );
    println!(
        "| bundle `POST /v1/users/{{name}}/bundle` | {bundles:.0} | {:.0}% |",
        100.0 * bundles / ceiling
    );
    println!(
        "server RSS after start: {:.1} MB; peak RSS (VmHWM): {:.1} MB",
        rss_start as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
