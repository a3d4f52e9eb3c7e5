//! The real `peerchat` binary: two daemons and a rendezvous (in this process, real HTTPS) on
//! 127.0.0.1, driven through the CLI and the local API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use peerchat::driving::api::{MessageView, SendAnswer, SendBody};
use peerchat::ports::MessageStatus;
use peerchat_pki::{HostName, Username};
use peerchat_rendezvous::limits::Limits;
use peerchat_rendezvous::{Config, prepare, run};

pub(crate) const PASSWORD: &str = "correct horse battery";

/// A rendezvous served by this process on 127.0.0.1:0.
pub(crate) async fn rendezvous(dir: &Path) -> String {
    rendezvous_with(
        dir,
        Limits {
            argon2_memory_kib: 1024,
            ..Limits::default()
        },
    )
    .await
    .0
}

/// A rendezvous with `limits` served by this process on 127.0.0.1:0: its URL and its service
/// (for looking into its store).
pub(crate) async fn rendezvous_with(
    dir: &Path,
    limits: Limits,
) -> (
    String,
    std::sync::Arc<
        peerchat_rendezvous::service::Rendezvous<peerchat_rendezvous::sled_store::SledStore>,
    >,
) {
    let config = Config {
        data_dir: dir.to_path_buf(),
        hostnames: vec![HostName::parse("localhost"), HostName::parse("127.0.0.1")],
        limits,
        shared: false,
        relay: Some(peerchat_rendezvous::relay::RelayConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..Default::default()
        }),
    };
    let prepared = prepare(&config, SystemTime::now()).await.unwrap();
    let service = prepared.service.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { run(listener, prepared, std::future::pending()).await });
    (format!("https://localhost:{port}"), service)
}

/// The daemon's log, kept beside its data for people to look at when a test fails.
fn log_file(dir: &Path) -> Stdio {
    std::fs::create_dir_all(dir).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .unwrap();
    Stdio::from(file)
}

pub(crate) struct Daemon {
    child: Child,
    dir: PathBuf,
    lines: mpsc::Receiver<String>,
    /// The network namespace it runs in (its CLI runs there too).
    netns: Option<String>,
}

/// `program`, run inside the network namespace `netns` when there is one.
pub(crate) fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

impl Daemon {
    pub(crate) fn start(dir: &Path, rendezvous: &str) -> Self {
        Self::start_with(dir, rendezvous, &[])
    }

    pub(crate) fn start_with(dir: &Path, rendezvous: &str, extra: &[&str]) -> Self {
        Self::start_with_env(dir, rendezvous, extra, &[])
    }

    pub(crate) fn start_with_env(
        dir: &Path,
        rendezvous: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_in(None, dir, rendezvous, extra, env)
    }

    /// A daemon in the network namespace `netns` (when given).
    pub(crate) fn start_in(
        netns: Option<&str>,
        dir: &Path,
        rendezvous: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let _ = std::fs::remove_file(dir.join("api.addr"));
        let mut command = command_in(netns, Path::new(env!("CARGO_BIN_EXE_peerchat")));
        // No keyring here: a test's store key lies beside its data, unless the test gives a
        // passphrase.
        if !env.iter().any(|(k, _)| *k == "PEERCHAT_PASSPHRASE_FILE") {
            command.env("PEERCHAT_PLAIN_STORE", "true");
        }
        let mut child = command
            .arg("daemon")
            .arg("--data-dir")
            .arg(dir)
            .args(["--rendezvous", rendezvous])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file(dir))
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let daemon = Self {
            child,
            dir: dir.to_path_buf(),
            lines,
            netns: netns.map(str::to_owned),
        };
        daemon.wait_for("API on");
        daemon
    }

    /// Waits for a line of the daemon's output containing `needle`.
    pub(crate) fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "the daemon in {} never printed {needle:?}",
                    self.dir.display()
                ),
            }
        }
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        command_in(
            self.netns.as_deref(),
            Path::new(env!("CARGO_BIN_EXE_peerchat")),
        )
        .arg("--data-dir")
        .arg(&self.dir)
        .args(args)
        .env("PEERCHAT_PASSWORD", PASSWORD)
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
    }

    pub(crate) fn register(&self, name: &str) {
        let out = self.cli(&["register", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_for("listening on");
    }

    pub(crate) fn api(&self) -> (reqwest::Client, String, String) {
        let addr = std::fs::read_to_string(self.dir.join("api.addr")).unwrap();
        let token = std::fs::read_to_string(self.dir.join("api-token")).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(peerchat_pki::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .build()
            .unwrap();
        (
            http,
            format!("http://{}", addr.trim()),
            token.trim().to_owned(),
        )
    }

    /// Adds `name` as a contact (the conversation is taken up: what they send is no request,
    /// which would take only [`peerchat::usecases::MAX_REQUEST_MESSAGES`]).
    pub(crate) async fn add_contact(&self, name: &str) {
        let (http, base, token) = self.api();
        let response = http
            .post(format!("{base}/api/v1/contacts"))
            .bearer_auth(&token)
            .json(&peerchat::driving::api::AddContactBody {
                username: Username::new(name).unwrap(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "{}", response.text().await.unwrap());
    }

    /// Waits (up to 30 s) until the conversation with `peer` holds exactly `texts`, in order.
    pub(crate) fn wait_for_history(&self, peer: &str, texts: &[impl AsRef<str>]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let history: Vec<String> = self
                .history_json(peer)
                .into_iter()
                .map(|m| m.text)
                .collect();
            if history
                .iter()
                .map(String::as_str)
                .eq(texts.iter().map(AsRef::as_ref))
            {
                return;
            }
            assert!(Instant::now() < deadline, "the history is {history:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn history_json(&self, peer: &str) -> Vec<MessageView> {
        let out = self.cli(&["history", peer, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub(crate) fn terminate(&mut self) {
        stop(&mut self.child);
    }

    /// Sends SIGTERM and waits up to `limit` for the daemon to exit; its exit status, or
    /// `None` if it still runs then.
    pub(crate) fn terminate_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the daemon's process has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CLI run's standard output, after asserting that it succeeded (else its error is shown).
/// Polls `check` every 200 ms for up to 30 s.
pub(crate) fn eventually_blocking(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The CLI refuses with a message containing `why`.
pub(crate) fn refused(d: &Daemon, args: &[&str], why: &str) {
    let out = d.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(stderr.contains(why), "{args:?}: {stderr}");
}

/// A rendezvous binary and the daemons of alice and bob (in `tmp/alice` and `tmp/bob`), both
/// registered; with the rendezvous's URL.
pub(crate) fn rendezvous_alice_and_bob(tmp: &Path) -> (RendezvousProcess, String, Daemon, Daemon) {
    let (rv, port) = rendezvous_process(&rendezvous_binary(), &tmp.join("rv"), 0);
    let url = format!("https://localhost:{port}");
    let alice = Daemon::start(&tmp.join("alice"), &url);
    let bob = Daemon::start(&tmp.join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    (rv, url, alice, bob)
}

pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub(crate) fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_chat_directly_and_the_rendezvous_never_sees_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");

    let texts = [
        "Hello Bob, this is Alice",
        "Hi Alice! Bob here",
        "Shall we meet at noon?",
    ];
    for (from, to, text) in [
        (&alice, "bob", texts[0]),
        (&bob, "alice", texts[1]),
        (&alice, "bob", texts[2]),
    ] {
        let out = from.cli(&["send", to, text]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            reported_acknowledged(&out.stdout),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let expected: Vec<(String, String)> =
        [("alice", texts[0]), ("bob", texts[1]), ("alice", texts[2])]
            .iter()
            .map(|(a, t)| (a.to_string(), t.to_string()))
            .collect();
    for (daemon, peer) in [(&alice, "bob"), (&bob, "alice")] {
        let history: Vec<(String, String)> = daemon
            .history_json(peer)
            .into_iter()
            .map(|m| (m.author.to_string(), m.text))
            .collect();
        assert_eq!(history, expected, "history at {}", daemon.dir.display());
    }
    let human = String::from_utf8(alice.cli(&["history", "bob"]).stdout).unwrap();
    // Each line: time, author, text, status (receipts may still be on their way).
    let first = human.lines().next().unwrap_or_default();
    assert!(
        first.contains(" alice: Hello Bob, this is Alice  ["),
        "{human}"
    );
    assert!(
        ["[sent]", "[delivered]", "[read]"]
            .iter()
            .any(|s| first.ends_with(s)),
        "{human}"
    );

    for text in texts {
        let found = files_containing(&tmp.path().join("rendezvous"), text.as_bytes());
        assert!(
            found.is_empty(),
            "the rendezvous stored {text:?} in {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    alice.register("alice");

    let out = alice.cli(&["send", "nobody", "hello?"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no user named nobody"), "{err}");
    assert!(
        !alice.cli(&["history", "nobody", "--json"]).status.success(),
        "nothing stored, and no such user"
    );

    let out = alice.cli(&["send", "Not A Name!", "x"]);
    assert!(!out.status.success());

    let (http, base, token) = alice.api();
    let no_token = http
        .get(format!("{base}/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = http
        .get(format!("{base}/api/v1/status"))
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "bad_token");
    let malformed = http
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"to\": 42}")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let rebinding = http
        .get(format!("{base}/api/v1/status"))
        .bearer_auth(&token)
        .header("host", "evil.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(rebinding.status(), 403);

    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(alice.dir.join("api-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_mid_stream_loses_no_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let mut bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    bob.add_contact("alice").await;
    let (http, base, token) = alice.api();
    let bob_name = Username::new("bob").unwrap();

    let send = |i: usize| {
        let (http, base, token, to) = (http.clone(), base.clone(), token.clone(), bob_name.clone());
        async move {
            let body = SendBody {
                to,
                text: format!("message {i}"),
                id: None,
                reply_to: None,
            };
            let r = http
                .post(format!("{base}/api/v1/messages"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<SendAnswer>().await.unwrap()
        }
    };
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        if i == 80 {
            bob.kill();
        }
        if i == 140 {
            bob = Daemon::start(&tmp.path().join("bob"), &url);
            bob.wait_for("listening on");
        }
        let answer = send(i).await;
        if answer.status.is_acknowledged() {
            acknowledged.push(answer.id);
        }
    }
    if acknowledged.len() < 100 {
        for who in ["alice", "bob"] {
            let log =
                std::fs::read_to_string(tmp.path().join(format!("{who}.log"))).unwrap_or_default();
            for line in log.lines().rev().take(10) {
                eprintln!("{who}: {line}");
            }
        }
    }
    assert!(
        acknowledged.len() >= 100,
        "only {} acknowledged",
        acknowledged.len()
    );

    // Messages sent while bob was down went to the mailbox; bob empties it after his restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut history = bob.history_json("alice");
    while acknowledged
        .iter()
        .any(|id| !history.iter().any(|m| m.id == *id))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        history = bob.history_json("alice");
    }
    for id in &acknowledged {
        let copies = history.iter().filter(|m| m.id == *id).count();
        assert_eq!(
            copies, 1,
            "acknowledged message {id} is in bob's history {copies} times"
        );
    }
    // The conversation goes on after the crash, both ways.
    assert!(send(1000).await.status.is_acknowledged());
    let out = bob.cli(&["send", "alice", "back online"]);
    assert!(
        reported_acknowledged(&out.stdout),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        alice
            .history_json("bob")
            .iter()
            .any(|m| m.text == "back online")
    );
}

/// The rendezvous binary, built if needed (it belongs to another package of the workspace).
pub(crate) fn rendezvous_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "peerchat-rendezvous",
            "--bin",
            "peerchat-rendezvous",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building peerchat-rendezvous failed");
    Path::new(env!("CARGO_BIN_EXE_peerchat")).with_file_name("peerchat-rendezvous")
}

/// The real rendezvous binary on `port` (0: any), returning the child and the port.
pub(crate) fn rendezvous_process(binary: &Path, dir: &Path, port: u16) -> (RendezvousProcess, u16) {
    rendezvous_process_with_env(binary, dir, port, &[])
}

/// [`rendezvous_process`] with extra environment variables.
/// A rendezvous process that is killed when dropped, so a failing test leaves none behind
/// (tests stop it themselves with [`stop`] to see it exit cleanly).
pub(crate) struct RendezvousProcess(Child);

impl std::ops::Deref for RendezvousProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for RendezvousProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for RendezvousProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(crate) fn rendezvous_process_with_env(
    binary: &Path,
    dir: &Path,
    port: u16,
    env: &[(&str, &str)],
) -> (RendezvousProcess, u16) {
    let mut child = Command::new(binary)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--relay-listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected rendezvous output {line:?}"));
    (RendezvousProcess(child), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_busy_daemon_within_two_seconds_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice_dir = tmp.path().join("alice");
    let mut alice = Daemon::start(&alice_dir, &url);
    let mut bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    // Bob goes away: alice's messages wait in her outbox and in bob's mailbox.
    bob.terminate();
    let texts: Vec<String> = (0..5).map(|i| format!("while you were away {i}")).collect();
    for text in &texts {
        let out = alice.cli(&["send", "bob", text]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A window's event stream is open, and the mailbox long poll is waiting at the rendezvous:
    // neither may hold the shutdown.
    let (http, base, token) = alice.api();
    let events = http
        .get(format!("{base}/api/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(events.status().is_success());

    let status = alice.terminate_within(Duration::from_secs(2));

    let status = status.expect("the daemon still ran 2 s after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        !alice_dir.join("api.addr").exists(),
        "a stopped daemon leaves no API address behind"
    );
    drop(events);
    // Everything is there after a restart, and the messages still go out.
    let alice = Daemon::start(&alice_dir, &url);
    alice.wait_for("listening on");
    let history = alice.history_json("bob");
    assert_eq!(
        history.iter().map(|m| m.text.clone()).collect::<Vec<_>>(),
        texts
    );
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    bob.wait_for("listening on");
    bob.wait_for_history("alice", &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_comes_in_pages_before_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    for i in 1..=5 {
        let out = alice.cli(&["send", "bob", &format!("m{i}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (http, base, token) = alice.api();
    let page = |query: &str| {
        let request = http
            .get(format!("{base}/api/v1/conversations/bob{query}"))
            .bearer_auth(&token);
        async move { request.send().await.unwrap() }
    };
    let texts =
        |messages: Vec<MessageView>| messages.into_iter().map(|m| m.text).collect::<Vec<_>>();
    let latest: Vec<MessageView> = page("?limit=2").await.json().await.unwrap();
    assert_eq!(texts(latest.clone()), ["m4", "m5"]);
    let before: Vec<MessageView> = page(&format!("?before={}&limit=2", latest[0].id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(texts(before.clone()), ["m2", "m3"]);
    let first: Vec<MessageView> = page(&format!("?before={}&limit=2", before[0].id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(texts(first), ["m1"]);
    let all: Vec<MessageView> = page("").await.json().await.unwrap();
    assert_eq!(texts(all), ["m1", "m2", "m3", "m4", "m5"]);
    // The CLI pages through everything.
    assert_eq!(alice.history_json("bob").len(), 5);
    for bad in ["?before=nothex", "?limit=many"] {
        let response = page(bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_page", "{bad}");
    }
}

pub(crate) fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_an_offline_peer_survive_a_rendezvous_restart_and_arrive_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = rendezvous_binary();
    let rv_dir = tmp.path().join("rendezvous");
    let (mut rv, port) = rendezvous_process(&binary, &rv_dir, 0);
    let url = format!("https://localhost:{port}");
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let mut bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    bob.kill();

    let texts = [
        "first, while you were away",
        "second, after the rendezvous restarted",
        "third",
    ];
    for (i, text) in texts.iter().enumerate() {
        if i == 1 {
            stop(&mut rv);
            rv = rendezvous_process(&binary, &rv_dir, port).0;
        }
        let out = alice.cli(&["send", "bob", text]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).ends_with("sent\n"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let bob = {
        bob = Daemon::start(&tmp.path().join("bob"), &url);
        bob.wait_for("listening on");
        bob
    };
    // Alice wrote first: a request at bob's. He waits for all three without reading them,
    // accepts, then reads them (and read receipts go back).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let requests: Vec<peerchat::driving::api::RequestView> =
            serde_json::from_str(&ok(&bob.cli(&["requests", "--json"]))).unwrap();
        if requests.first().is_some_and(|r| r.messages == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "requests: {requests:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ok(&bob.cli(&["requests", "accept", "alice"]));
    let history = bob.history_json("alice");
    let received: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(received, texts, "all three, once each, in order");
    // Receipts: bob has stored them (delivered) and shown them (history: read).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut statuses = Vec::new();
    while Instant::now() < deadline {
        statuses = alice
            .history_json("bob")
            .into_iter()
            .map(|m| m.status)
            .collect::<Vec<_>>();
        if statuses.iter().all(|s| *s == MessageStatus::Read) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        statuses,
        [MessageStatus::Read; 3],
        "alice sees her messages read"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bob.history_json("alice").len(), 3, "nothing arrives twice");
    stop(&mut rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_appears_in_the_receivers_event_stream_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");

    let mut watch = Command::new(env!("CARGO_BIN_EXE_peerchat"))
        .arg("--data-dir")
        .arg(&bob.dir)
        .arg("watch")
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // the stream is open

    let sent_at = Instant::now();
    assert!(
        alice
            .cli(&["send", "bob", "ping in real time"])
            .status
            .success()
    );
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.ends_with("alice: ping in real time"))
    {
        let left = Duration::from_secs(1).saturating_sub(sent_at.elapsed());
        seen.push(
            lines
                .recv_timeout(left)
                .expect("no message event within one second"),
        );
    }
    assert!(seen.iter().any(|l| l == "alice is online"), "{seen:?}");
    eprintln!("event after {:?}", sent_at.elapsed());
    let _ = watch.kill();
    let _ = watch.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_is_visible_holds_sending_until_accepted_and_safety_numbers_then_match() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let mut bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    assert!(alice.cli(&["send", "bob", "before"]).status.success());
    let old_number = String::from_utf8(alice.cli(&["safety-number", "bob"]).stdout).unwrap();

    // Bob loses his device and logs in on a new install: a new identity key.
    bob.kill();
    let bob = Daemon::start(&tmp.path().join("bob-new"), &url);
    let out = bob.cli(&["login", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bob.wait_for("listening on");

    let out = alice.cli(&["send", "bob", "are you really bob?"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("held\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let contacts = String::from_utf8(alice.cli(&["contacts"]).stdout).unwrap();
    assert!(
        contacts.contains("WARNING: bob's key has changed"),
        "{contacts}"
    );
    assert!(
        contacts.contains("key changed") && !contacts.contains(" verified"),
        "{contacts}"
    );
    // Compare before accepting: alice's number is of bob's new key, and bob's new install
    // (alice is not its contact yet) shows the number of alice's certified key: they match.
    let pending = alice.cli(&["safety-number", "bob"]);
    assert!(
        String::from_utf8_lossy(&pending.stderr).contains("NEW key"),
        "{}",
        String::from_utf8_lossy(&pending.stderr)
    );
    let before_accept = String::from_utf8(pending.stdout).unwrap();
    let new_bob_sees = String::from_utf8(bob.cli(&["safety-number", "alice"]).stdout).unwrap();
    assert_eq!(before_accept, new_bob_sees);
    assert_ne!(before_accept, old_number);
    let history = String::from_utf8(alice.cli(&["history", "bob"]).stdout).unwrap();
    assert!(
        history.starts_with("WARNING: bob's key has changed"),
        "{history}"
    );
    assert!(
        bob.history_json("alice").is_empty(),
        "nothing reaches the new key before acceptance"
    );

    let out = alice.cli(&["accept-key", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut received = bob.history_json("alice");
    while received.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        received = bob.history_json("alice");
    }
    assert_eq!(
        received.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["are you really bob?"]
    );

    let at_alice = String::from_utf8(alice.cli(&["safety-number", "bob"]).stdout).unwrap();
    let at_bob = String::from_utf8(bob.cli(&["safety-number", "alice"]).stdout).unwrap();
    assert_eq!(at_alice, at_bob, "both sides see the same number");
    assert_ne!(at_alice, old_number, "the number changed with the key");
    assert_eq!(at_alice.trim().split(' ').count(), 12);

    assert!(
        !alice
            .cli(&["verify", "bob", &"1".repeat(60)])
            .status
            .success()
    );
    let out = alice.cli(&["verify", "bob", at_bob.trim()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let contacts = String::from_utf8(alice.cli(&["contacts"]).stdout).unwrap();
    assert!(contacts.contains("  verified"), "{contacts}");
}

/// Whether `peerchat send` reported the message acknowledged (sent, or already delivered or read:
/// receipts can overtake the answer).
fn reported_acknowledged(stdout: &[u8]) -> bool {
    let out = String::from_utf8_lossy(stdout);
    ["sent", "delivered", "read"]
        .iter()
        .any(|s| out.trim_end().ends_with(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_peer_is_refused_after_the_crl_refresh() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start_with(
        &tmp.path().join("alice"),
        &url,
        &["--crl-refresh-secs", "1"],
    );
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    assert!(reported_acknowledged(
        &alice
            .cli(&["send", "bob", "hello while bob is valid"])
            .stdout
    ));

    // Bob's certificate is revoked; alice's node learns it at its next CRL refresh.
    assert!(bob.cli(&["logout"]).status.success());
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let out = alice.cli(&["send", "bob", "after revocation"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !bob.history_json("alice")
            .iter()
            .any(|m| m.text == "after revocation"),
        "a revoked peer was reached directly"
    );
    let log = std::fs::read_to_string(tmp.path().join("alice.log")).unwrap_or_default();
    assert!(
        log.to_lowercase().contains("revoked"),
        "alice's node did not refuse bob's certificate as revoked"
    );
}

#[test]
fn the_demo_starts_alice_and_bob_who_can_chat_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let log = tmp.path().join("demo.log");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_peerchat"))
        .args(["demo", "--dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo never said it was ready");
        let ready = line.contains("alice and bob are online");
        printed.push(line);
        if ready {
            break;
        }
    }
    // The demo names the rendezvous's CA, and it is the one both nodes pinned.
    let fingerprint = printed[0]
        .split(", CA ")
        .nth(1)
        .unwrap_or_else(|| panic!("no CA fingerprint in {:?}", printed[0]))
        .to_owned();
    assert_eq!(
        printed
            .iter()
            .filter(|l| l.contains(&format!("rendezvous CA {fingerprint}")))
            .count(),
        2,
        "{printed:?}"
    );
    let cli = |who: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_peerchat"))
            .arg("--data-dir")
            .arg(dir.join(who))
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    let out = cli("alice", &["send", "bob", "hello from the demo"]);
    assert!(
        reported_acknowledged(&out.stdout),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history = String::from_utf8(cli("bob", &["history", "alice"]).stdout).unwrap();
    assert!(history.contains("alice: hello from the demo"), "{history}");

    let _ = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status();
    let status = demo.wait().unwrap();
    assert!(
        status.success(),
        "the demo exits cleanly on Ctrl-C: {status:?}"
    );
    let warnings = std::fs::read_to_string(&log).unwrap();
    assert!(
        warnings.trim().is_empty(),
        "Ctrl-C stops without warnings: {warnings}"
    );
}
