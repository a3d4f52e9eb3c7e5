//! The real binaries under floods: many sends to an offline peer, junk in a mailbox, a drain of
//! one-time prekeys.

use peerchat::driving::api::{SendAnswer, SendBody};
use peerchat::ports::MessageStatus;
use peerchat_pki::Username;
use std::time::Duration;

use crate::binaries::{Daemon, rendezvous};
use crate::revocation::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fast_sends_to_an_offline_peer_are_all_queued_none_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let mut bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    assert!(alice.cli(&["send", "bob", "first"]).status.success());
    bob.kill();

    // 200 sends, 20 at a time, through the local API: more lookups and deposits than the
    // rendezvous allows a user at once.
    let (http, base, token) = alice.api();
    let mut refused = Vec::new();
    for batch in 0..10 {
        let sends = (0..20).map(|i| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            tokio::spawn(async move {
                http.post(format!("{base}/api/v1/messages"))
                    .bearer_auth(&token)
                    .json(&SendBody {
                        to: Username::new("bob").unwrap(),
                        text: format!("message {}", batch * 20 + i),
                        id: None,
                        reply_to: None,
                    })
                    .send()
                    .await
                    .unwrap()
            })
        });
        for send in sends {
            let response = send.await.unwrap();
            let status = response.status();
            if status.is_success() {
                let answer: SendAnswer = response.json().await.unwrap();
                assert!(
                    matches!(answer.status, MessageStatus::Pending | MessageStatus::Sent),
                    "{:?}",
                    answer.status
                );
            } else {
                refused.push((status, response.text().await.unwrap()));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "{} sends refused, the first: {:?}",
        refused.len(),
        refused.first()
    );
    let history = alice.history_json("bob");
    assert_eq!(history.len(), 201, "every message is stored and queued");
}

/// The real rendezvous binary on 127.0.0.1:0; returns it, its URL and its metrics URL.
fn rendezvous_with_metrics(dir: &std::path::Path) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(crate::binaries::rendezvous_binary())
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--relay-listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_owned();
    let metrics = line.split("metrics on ").nth(1).unwrap().trim().to_owned();
    (child, format!("https://localhost:{port}"), metrics)
}

/// Lookups answered by the rendezvous so far (any status), from its metrics.
async fn lookups(metrics: &str) -> u64 {
    let tls = rustls::ClientConfig::builder_with_provider(peerchat_pki::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let text = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .build()
        .unwrap()
        .get(metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("peerchat_rendezvous_http_requests_total{")
                && l.contains(r#"route="/v1/users/{username}""#)
                && l.contains(r#"method="GET""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_in_a_mailbox_takes_one_senders_share_and_costs_no_lookups() {
    use peerchat::domain::{Envelope, MessageId};
    let tmp = tempfile::tempdir().unwrap();
    let rv_dir = tmp.path().join("rendezvous");
    let (mut rv, url, metrics) = rendezvous_with_metrics(&rv_dir);
    let ca = peerchat_pki::CaCertificate::from_pem(
        &std::fs::read_to_string(rv_dir.join("ca.pem")).unwrap(),
    )
    .unwrap();
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let mut bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    // Alice is bob's contact already, so looking at his history costs no lookup either.
    assert!(bob.cli(&["send", "alice", "before"]).status.success());
    bob.kill();

    // Mallory fills bob's mailbox with well-formed envelopes that decrypt for nobody: only her
    // share (250) is taken.
    let mallory = crate::revocation::Outsider::register("mallory", &url, &ca, tmp.path()).await;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..260 {
        let envelope = Envelope {
            id: MessageId::random(&mut rand::rngs::OsRng),
            trace: None,
            payload: vec![7; 512],
        };
        // Past her deposit rate she is told to slow down (429); she does.
        let status = loop {
            let status = mallory
                .deposit("bob", &envelope.id.to_string(), &envelope.encode())
                .await;
            if status != 429 {
                break status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(
        statuses,
        [(202, 250), (507, 10)].into_iter().collect(),
        "one sender's share of the mailbox"
    );
    // Real mail still gets in.
    let out = alice.cli(&["send", "bob", "real mail"]);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("sent\n"));

    let before = lookups(&metrics).await;
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    eventually("the real mail", || {
        bob.history_json("alice")
            .iter()
            .any(|m| m.text == "real mail")
    })
    .await;
    let spent = lookups(&metrics).await - before;
    assert!(
        spent < 10,
        "emptying a mailbox of 251 envelopes cost {spent} lookups"
    );
    crate::binaries::stop(&mut rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_drain_anothers_prekeys_and_a_low_supply_is_topped_up_at_once() {
    use peerchat_rendezvous::limits::{Limits, Rate};
    use peerchat_rendezvous::store::Store as _;
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        argon2_memory_kib: 1024,
        // Many registrations from this one host, so that many users can each take their share.
        auth_per_prefix: Rate {
            burst: 1000,
            period: Duration::from_millis(1),
        },
        ..Limits::default()
    };
    let (url, service) = crate::binaries::rendezvous_with(&tmp.path().join("rv"), limits).await;
    let ca = service.ca().certificate().clone();
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    bob.register("bob");
    let bob_name = Username::new("bob").unwrap();
    let supply =
        || futures::executor::block_on(service.store().count_one_time_prekeys(&bob_name)).unwrap();
    let full = supply();
    assert_eq!(full, 100);

    // Mallory asks for bob's bundle again and again: a few carry a one-time prekey, the rest
    // the signed prekey only.
    let mallory = crate::revocation::Outsider::register("mallory", &url, &ca, tmp.path()).await;
    let mut with_one_time = 0;
    for _ in 0..10 {
        if mallory.bundle_has_one_time_prekey("bob").await {
            with_one_time += 1;
        }
    }
    assert_eq!(
        with_one_time, 3,
        "one caller takes at most 3 of one target's prekeys"
    );
    assert_eq!(supply(), full - 3);

    // Many callers together bring bob's supply below 20; his node is told at once (its long
    // poll answers) and tops it up, without waiting for its 10-minute refresh.
    // 26 callers × 3 = 78 more: 19 left, below the threshold of 20.
    for n in 0..26 {
        let user =
            crate::revocation::Outsider::register(&format!("drainer{n}"), &url, &ca, tmp.path())
                .await;
        for _ in 0..3 {
            user.bundle_has_one_time_prekey("bob").await;
        }
    }
    eventually("bob's node to top up its one-time prekeys", || {
        supply() >= 20
    })
    .await;
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_a_daemon_with_connections_and_half_sent_envelopes_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, service) = crate::binaries::rendezvous_with(
        &tmp.path().join("rv"),
        peerchat_rendezvous::limits::Limits {
            argon2_memory_kib: 1024,
            ..Default::default()
        },
    )
    .await;
    let ca = service.ca().certificate().clone();
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    bob.register("bob");
    // Bob's address, as he announced it (`register` waited until he listens).
    let address: libp2p::Multiaddr = {
        use peerchat_rendezvous::store::Store as _;
        let presence = service
            .store()
            .presence(&Username::new("bob").unwrap())
            .await
            .unwrap()
            .expect("bob announced his addresses");
        presence.addresses[0].parse().unwrap()
    };
    let bob_id = match address.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(id)) => id,
        _ => panic!("no peer id in {address}"),
    };

    // Mallory holds a certificate of this CA, like every user.
    let mallory_user =
        crate::revocation::Outsider::register("mallory", &url, &ca, tmp.path()).await;
    let mut mallory = crate::p2p::half_sender(
        mallory_user.cert_der.clone(),
        mallory_user.key.clone(),
        ca.clone(),
    );
    let before = rss_kib(bob.pid());
    let (open, _) = crate::p2p::dial_five_times(&mut mallory, bob_id, address).await;
    assert_eq!(open, 3, "the daemon keeps three connections per peer");

    let requests = 400;
    for _ in 0..requests {
        mallory.behaviour_mut().send_request(&bob_id, ());
    }
    let mut peak = before;
    let refused =
        crate::p2p::count_refused(&mut mallory, || peak = peak.max(rss_kib(bob.pid()))).await;
    let held = requests - refused;
    assert!(
        (1..=3 * 64).contains(&held),
        "the daemon holds {held} half-sent envelopes of one peer"
    );
    // Meanwhile alice's message gets through.
    let out = alice.cli(&["send", "bob", "still here"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("alice's message", || {
        bob.history_json("alice")
            .iter()
            .any(|m| m.text == "still here")
    })
    .await;
    eprintln!(
        "bob's RSS: {} KiB before, {} KiB at most during the flood ({held} envelopes held)",
        before, peak
    );
    // What one peer can make the daemon hold is bounded by its streams (3 × 64) times what it
    // sent (1 KiB and a trickle each), far below the 128 × 256 KiB a full announcement names.
    assert!(
        peak.saturating_sub(before) < 32 * 1024,
        "bob grew by {} KiB under one peer's flood",
        peak.saturating_sub(before)
    );
}
