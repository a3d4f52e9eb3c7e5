//! Load benchmark of the rendezvous on sled and on PostgreSQL (one and three instances), with a
//! minimal axum + rustls endpoint as the ceiling, all in one run.
//!
//! `cargo bench -p peerchat-rendezvous --bench load`
//! (environment: `USERS`, default 100000; `CLIENTS`, default 32; `SECS` per phase, default 5;
//! `POSTGRES=0` leaves PostgreSQL out, as it is when its binaries are not installed)
//!
//! 1. Pre-populates each store with `USERS` accounts, each with a signed prekey and two
//!    one-time prekeys (written directly through the store, not over HTTP): sled in a data
//!    directory, and a PostgreSQL server of the bench's own (as the tests start it).
//! 2. Starts the real `peerchat-rendezvous` binary on it (rate limits raised out of the way):
//!    one on sled, one on PostgreSQL, then three on the same PostgreSQL database.
//! 3. `CLIENTS` concurrent keep-alive mTLS clients, each its own connection (spread evenly over
//!    the instances), run for `SECS`: lookups of random users, then bundle fetches of random
//!    users (each consumes and durably removes a one-time prekey while any is left).
//! 4. The same clients against a constant-answer axum route behind the same TLS configuration
//!    (client certificate verified against the same CA), in this process: the ceiling.
//! 5. Prints requests per second, the ratios, the CPU time the rendezvous processes and the
//!    database server used in each phase (the database's share of the server-side cost), and
//!    the instances' peak RSS (`VmHWM`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use peerchat_pki::tls::{Credentials, rendezvous_client_config, rendezvous_server_config};
use peerchat_pki::{CertificateAuthority, HostName, Username, build_csr};
use peerchat_rendezvous::pg_store::PgStore;
use peerchat_rendezvous::sled_store::SledStore;
use peerchat_rendezvous::store::{Account, OneTimePreKeyRecord, SignedPreKeyRecord, Store};
use rand::rngs::OsRng;
use rand::{Rng, SeedableRng};

#[path = "../tests/rendezvous/postgres.rs"]
#[allow(dead_code)]
mod postgres;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `users` accounts, each with a signed prekey and two one-time prekeys, into `store`,
/// 16 users at a time.
async fn fill(store: &impl Store, ca: &CertificateAuthority, users: u64, label: &str) {
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
    let started = Instant::now();
    const STREAMS: u64 = 16;
    let template = &template;
    futures::future::join_all((0..STREAMS).map(|stream| async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(stream);
        for i in (stream..users).step_by(STREAMS as usize) {
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
                })
                .await
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
    }))
    .await;
    store.flush().await.unwrap();
    eprintln!(
        "{label}: populated {users} users in {:.1} s",
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

/// Runs `clients` loops for `secs` seconds, client `i` on `bases[i % len]`; returns completed
/// requests per second.
async fn load(
    ca: &CertificateAuthority,
    bases: &[String],
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
        let base = &bases[i % bases.len()];
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

/// CPU time (user + system, clock ticks) of `pid`, with its children's that it waited for.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is the 3rd field overall.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14..=17 overall, 12..=15 here (0-based 11..=14).
    fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum()
}

/// The parent pid of `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The PostgreSQL server listening on `port`: its postmaster and every backend it forked.
fn postgres_pids(port: u16) -> Vec<u32> {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let needle = format!("-p\0{port}\0");
    let Some(postmaster) = pids.iter().copied().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
    }) else {
        return Vec::new();
    };
    let mut out = vec![postmaster];
    out.extend(
        pids.iter()
            .copied()
            .filter(|pid| parent(*pid) == Some(postmaster)),
    );
    out
}

/// Rendezvous instances started for one configuration, killed when dropped.
struct Instances(Vec<(std::process::Child, String)>);

impl Instances {
    /// `n` binaries on `data_dir`, with `extra` arguments.
    fn start(n: usize, data_dir: &std::path::Path, extra: &[&str]) -> Self {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut child = Command::new(env!("CARGO_BIN_EXE_peerchat-rendezvous"))
                .arg("--data-dir")
                .arg(data_dir)
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
                .args(extra)
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
                .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
                .parse()
                .unwrap();
            out.push((child, format!("https://localhost:{port}")));
        }
        Self(out)
    }

    fn bases(&self) -> Vec<String> {
        self.0.iter().map(|(_, base)| base.clone()).collect()
    }

    fn cpu_ticks(&self) -> u64 {
        self.0.iter().map(|(c, _)| cpu_ticks(c.id())).sum()
    }

    fn peak_rss_kib(&self) -> u64 {
        self.0
            .iter()
            .map(|(c, _)| vm(c.id(), "VmHWM:"))
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One phase's figures.
struct Phase {
    per_sec: f64,
    /// CPU time of the rendezvous instances and of the database server, in clock ticks.
    rendezvous_ticks: u64,
    database_ticks: u64,
}

impl Phase {
    fn database_share(&self) -> String {
        let total = self.rendezvous_ticks + self.database_ticks;
        if self.database_ticks == 0 || total == 0 {
            return "—".into();
        }
        format!("{:.0}%", 100.0 * self.database_ticks as f64 / total as f64)
    }
}

/// One configuration's figures.
struct Row {
    label: String,
    lookups: Phase,
    bundles: Phase,
    peak_rss_kib: u64,
}

#[allow(clippy::too_many_arguments)]
fn phase(
    runtime: &tokio::runtime::Runtime,
    ca: &CertificateAuthority,
    instances: &Instances,
    database_port: Option<u16>,
    method: reqwest::Method,
    path: impl Fn(u64) -> String + Send + Sync + 'static,
    clients: usize,
    secs: u64,
    users: u64,
) -> Phase {
    let database = || {
        database_port
            .map(|port| postgres_pids(port).into_iter().map(cpu_ticks).sum())
            .unwrap_or(0)
    };
    let (rv_before, db_before) = (instances.cpu_ticks(), database());
    let per_sec = runtime.block_on(load(
        ca,
        &instances.bases(),
        method,
        path,
        clients,
        secs,
        users,
    ));
    Phase {
        per_sec,
        rendezvous_ticks: instances.cpu_ticks().saturating_sub(rv_before),
        database_ticks: database().saturating_sub(db_before),
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    label: &str,
    runtime: &tokio::runtime::Runtime,
    ca: &CertificateAuthority,
    instances: Instances,
    database_port: Option<u16>,
    clients: usize,
    secs: u64,
    users: u64,
) -> Row {
    let lookups = phase(
        runtime,
        ca,
        &instances,
        database_port,
        reqwest::Method::GET,
        |t| format!("/v1/users/user{t}"),
        clients,
        secs,
        users,
    );
    let bundles = phase(
        runtime,
        ca,
        &instances,
        database_port,
        reqwest::Method::POST,
        |t| format!("/v1/users/user{t}/bundle"),
        clients,
        secs,
        users,
    );
    let row = Row {
        label: label.to_owned(),
        lookups,
        bundles,
        peak_rss_kib: instances.peak_rss_kib(),
    };
    eprintln!(
        "{label}: {:.0} lookups/s, {:.0} bundles/s",
        row.lookups.per_sec, row.bundles.per_sec
    );
    row
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` and friends: nothing to list, nothing to run.
        return;
    }
    let users = env("USERS", 100_000);
    let clients = env("CLIENTS", 32) as usize;
    let secs = env("SECS", 5);
    let with_postgres = env("POSTGRES", 1) != 0
        && std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("bin/initdb").exists());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();

    // sled, the embedded default.
    let sled_dir = tempfile::tempdir().unwrap();
    let (ca, _) = CertificateAuthority::load_or_generate(
        sled_dir.path(),
        "load CA",
        SystemTime::now(),
        &mut OsRng,
    )
    .unwrap();
    {
        let store = SledStore::open(&peerchat_rendezvous::db_dir(sled_dir.path())).unwrap();
        runtime.block_on(fill(&store, &ca, users, "sled"));
    }
    rows.push(measure(
        "sled, 1 instance",
        &runtime,
        &ca,
        Instances::start(1, sled_dir.path(), &[]),
        None,
        clients,
        secs,
        users,
    ));

    // PostgreSQL: one instance, then three on the same database (one shared data directory
    // holding the same CA). The three-instance run finds slightly fewer one-time prekeys left.
    let server = with_postgres.then(postgres::Postgres::start);
    if let Some(server) = &server {
        let port: u16 = server
            .url
            .rsplit(':')
            .next()
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        let shared = tempfile::tempdir().unwrap();
        ca.save(shared.path()).unwrap();
        runtime.block_on(async {
            let store = PgStore::connect(&server.url).await.unwrap();
            fill(&store, &ca, users, "PostgreSQL").await;
        });
        let args = ["--database", server.url.as_str()];
        for n in [1, 3] {
            rows.push(measure(
                &format!("PostgreSQL, {n} instance{}", if n == 1 { "" } else { "s" }),
                &runtime,
                &ca,
                Instances::start(n, shared.path(), &args),
                Some(port),
                clients,
                secs,
                users,
            ));
        }
    } else {
        eprintln!("PostgreSQL left out (POSTGRES=0, or its server binaries are not installed)");
    }

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
            &[format!("https://localhost:{port}")],
            reqwest::Method::GET,
            |t| format!("/v1/users/user{t}"),
            clients,
            secs,
            users,
        )
        .await
    });

    println!();
    println!(
        "{users} users, {clients} concurrent keep-alive mTLS clients, {secs} s per phase, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| store, instances | lookups/s | share of ceiling | bundles/s | database's share of server CPU (lookups / bundles) | peak RSS per instance |"
    );
    println!("|---|---|---|---|---|---|");
    println!("| constant answer, axum + rustls (ceiling) | {ceiling:.0} | 100% | | | |");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.0}% | {:.0} | {} / {} | {:.1} MB |",
            row.label,
            row.lookups.per_sec,
            100.0 * row.lookups.per_sec / ceiling,
            row.bundles.per_sec,
            row.lookups.database_share(),
            row.bundles.database_share(),
            row.peak_rss_kib as f64 / 1024.0
        );
    }
}
