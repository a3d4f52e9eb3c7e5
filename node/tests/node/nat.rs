//! Peers behind NATs, in network namespaces this test builds itself: a "public" segment with the
//! rendezvous (API and relay), and alice and bob each behind a NAT router of their own (nftables
//! masquerade; `random` for a symmetric NAT). Every address is in 198.18.0.0/15, no namespace has
//! a route off the machine, and everything is deleted at the end, also when the test fails.
//!
//! Needs root (CI has it). When namespaces cannot be made the test fails saying so; only
//! `PEERCHAT_SKIP_NETNS=1` skips it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::{Daemon, command_in, rendezvous_binary};

/// The rendezvous's address on the public segment.
const PUBLIC: &str = "198.18.0.1";
/// The relay's port there.
const RELAY_PORT: u16 = 4001;

/// How a NAT router maps its inside ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nat {
    /// Endpoint-independent mapping that keeps the port where it can (Linux's masquerade), and
    /// no unsolicited inbound connection: a port-restricted cone NAT.
    Cone,
    /// A new random port for every connection (`masquerade random`): hole punching cannot
    /// guess it.
    Symmetric,
}

/// Whether this run skips the namespace tests (`PEERCHAT_SKIP_NETNS=1`), saying so.
pub(crate) fn skipped(test: &str) -> bool {
    if std::env::var("PEERCHAT_SKIP_NETNS").is_ok_and(|v| v == "1") {
        eprintln!("{test}: SKIPPED because PEERCHAT_SKIP_NETNS=1");
        return true;
    }
    false
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?}: {e} (the NAT tests need iproute2 and nftables, and root; \
             PEERCHAT_SKIP_NETNS=1 skips them)",
                args[0]
            )
        });
    assert!(
        out.status.success(),
        "{} failed: {} (the NAT tests need root, iproute2 and nftables; PEERCHAT_SKIP_NETNS=1 \
         skips them)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn nft(ns: &str, ruleset: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one topology; deleted when dropped.
pub(crate) struct Topology {
    names: Vec<String>,
    pub(crate) public: String,
    pub(crate) alice: String,
    pub(crate) bob: String,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

impl Topology {
    /// The public segment with alice behind `alice_nat` and bob behind `bob_nat`.
    pub(crate) fn behind_nats(alice_nat: Nat, bob_nat: Nat) -> Self {
        let tag = format!("pc{}x{}", std::process::id(), next_id());
        let name = |role: &str| format!("{tag}{role}");
        let mut topology = Self {
            names: Vec::new(),
            public: name("pub"),
            alice: name("a"),
            bob: name("b"),
        };
        for role in ["pub", "ra", "rb", "a", "b"] {
            let ns = name(role);
            run(&["ip", "netns", "add", &ns]);
            // Recorded at once: deleted even if a later step fails.
            topology.names.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let public = &topology.public;
        run(&[
            "ip",
            "-n",
            public,
            "addr",
            "add",
            &format!("{PUBLIC}/32"),
            "dev",
            "lo",
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            public,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for (i, (router, host, nat)) in [
            (name("ra"), name("a"), alice_nat),
            (name("rb"), name("b"), bob_nat),
        ]
        .into_iter()
        .enumerate()
        {
            let n = i + 1;
            // The router's outside link to the public segment: 198.18.N.2 ↔ 198.18.N.1.
            let wan = format!("w{n}");
            run(&[
                "ip", "link", "add", &wan, "netns", public, "type", "veth", "peer", "name", "wan",
                "netns", &router,
            ]);
            run(&[
                "ip",
                "-n",
                public,
                "addr",
                "add",
                &format!("198.18.{n}.1/24"),
                "dev",
                &wan,
            ]);
            run(&["ip", "-n", public, "link", "set", &wan, "up"]);
            run(&[
                "ip",
                "-n",
                &router,
                "addr",
                "add",
                &format!("198.18.{n}.2/24"),
                "dev",
                "wan",
            ]);
            run(&["ip", "-n", &router, "link", "set", "wan", "up"]);
            run(&[
                "ip",
                "-n",
                &router,
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{n}.1"),
            ]);
            // The inside link: the host 198.19.N.2 behind the router 198.19.N.1.
            run(&[
                "ip", "link", "add", "lan", "netns", &router, "type", "veth", "peer", "name",
                "eth0", "netns", &host,
            ]);
            run(&[
                "ip",
                "-n",
                &router,
                "addr",
                "add",
                &format!("198.19.{n}.1/24"),
                "dev",
                "lan",
            ]);
            run(&["ip", "-n", &router, "link", "set", "lan", "up"]);
            run(&[
                "ip",
                "-n",
                &host,
                "addr",
                "add",
                &format!("198.19.{n}.2/24"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &host, "link", "set", "eth0", "up"]);
            run(&[
                "ip",
                "-n",
                &host,
                "route",
                "add",
                "default",
                "via",
                &format!("198.19.{n}.1"),
            ]);
            run(&[
                "ip",
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
            let masquerade = match nat {
                Nat::Cone => "masquerade",
                Nat::Symmetric => "masquerade random",
            };
            // Outgoing connections are masqueraded; nothing from outside gets in unless it
            // belongs to one of them, and the router does not answer for itself (no RST that
            // would kill a hole punch's first SYN).
            nft(
                &router,
                &format!(
                    "table ip nat {{\n\
                       chain post {{\n\
                         type nat hook postrouting priority srcnat\n\
                         oifname \"wan\" {masquerade}\n\
                       }}\n\
                     }}\n\
                     table inet fw {{\n\
                       chain input {{\n\
                         type filter hook input priority filter\n\
                         iifname \"wan\" ct state new drop\n\
                       }}\n\
                       chain forward {{\n\
                         type filter hook forward priority filter\n\
                         iifname \"wan\" ct state new drop\n\
                       }}\n\
                     }}\n"
                ),
            );
        }
        topology
    }
}

impl Topology {
    /// The rendezvous, alice and bob on one segment (a bridge), no NAT: 198.18.10.1, .2 and .3.
    pub(crate) fn one_segment() -> Self {
        let tag = format!("pc{}x{}", std::process::id(), next_id());
        let name = |role: &str| format!("{tag}{role}");
        let mut topology = Self {
            names: Vec::new(),
            public: name("pub"),
            alice: name("a"),
            bob: name("b"),
        };
        let switch = name("sw");
        for ns in [&switch, &topology.public, &topology.alice, &topology.bob] {
            run(&["ip", "netns", "add", ns]);
            topology.names.push(ns.clone());
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        for (i, host) in [&topology.public, &topology.alice, &topology.bob]
            .into_iter()
            .enumerate()
        {
            let port = format!("p{i}");
            run(&[
                "ip", "link", "add", &port, "netns", &switch, "type", "veth", "peer", "name",
                "eth0", "netns", host,
            ]);
            run(&["ip", "-n", &switch, "link", "set", &port, "master", "br0"]);
            run(&["ip", "-n", &switch, "link", "set", &port, "up"]);
            run(&[
                "ip",
                "-n",
                host,
                "addr",
                "add",
                &format!("198.18.10.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", host, "link", "set", "eth0", "up"]);
        }
        // The rendezvous's address as on the NAT topology.
        run(&[
            "ip",
            "-n",
            &topology.public,
            "addr",
            "add",
            &format!("{PUBLIC}/32"),
            "dev",
            "lo",
        ]);
        for host in [&topology.alice, &topology.bob] {
            run(&[
                "ip",
                "-n",
                host,
                "route",
                "add",
                &format!("{PUBLIC}/32"),
                "via",
                "198.18.10.1",
            ]);
        }
        topology
    }
}

fn next_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The rendezvous binary in the public namespace: its URL and metrics address; killed when
/// dropped.
pub(crate) struct PublicRendezvous {
    child: Child,
    pub(crate) url: String,
    metrics: String,
    netns: String,
}

impl Drop for PublicRendezvous {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PublicRendezvous {
    /// Stops it (SIGKILL: the rendezvous goes away at once).
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn start(topology: &Topology, dir: &Path, extra: &[&str]) -> Self {
        let mut child = command_in(Some(&topology.public), &rendezvous_binary())
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", &format!("{PUBLIC}:0")])
            .args(["--hostname", PUBLIC])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--relay-listen", &format!("/ip4/{PUBLIC}/tcp/{RELAY_PORT}")])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log(&dir.with_extension("log")))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split(&format!("https://{PUBLIC}:"))
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected rendezvous output {line:?}"))
            .to_owned();
        let metrics = line
            .split("metrics on ")
            .nth(1)
            .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
            .trim()
            .to_owned();
        Self {
            child,
            url: format!("https://{PUBLIC}:{port}"),
            metrics,
            netns: topology.public.clone(),
        }
    }

    /// The sum of a counter's samples whose labels contain all of `labels`.
    pub(crate) fn counter(&self, name: &str, labels: &[&str]) -> f64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-sf", &self.metrics])
            .output()
            .unwrap();
        assert!(out.status.success(), "scraping {} failed", self.metrics);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Circuits the relay closed.
    pub(crate) fn closed_circuits(&self) -> f64 {
        self.counter(
            "peerchat_rendezvous_relay_circuits_total",
            &["outcome=\"closed\""],
        )
    }

    /// Envelopes deposited in mailboxes (`POST /v1/mailbox/…`), whatever the answer.
    pub(crate) fn deposits(&self) -> f64 {
        self.counter(
            "peerchat_rendezvous_http_requests_total",
            &["route=\"/v1/mailbox/{username}\"", "method=\"POST\""],
        )
    }
}

fn log(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).unwrap())
}

/// A daemon listening on every interface of its namespace.
pub(crate) fn daemon_in(netns: &str, dir: &Path, url: &str) -> Daemon {
    Daemon::start_in(
        Some(netns),
        dir,
        url,
        &["--listen", "/ip4/0.0.0.0/tcp/0"],
        &[(
            "RUST_LOG",
            "info,peerchat::driven::p2p=debug,libp2p_dcutr=debug",
        )],
    )
}

pub(crate) fn send(from: &Daemon, to: &str, text: &str) {
    let out = from.cli(&["send", to, text]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The path `peerchat contacts --json` shows for `peer` (`None` when offline).
pub(crate) fn path(daemon: &Daemon, peer: &str) -> Option<String> {
    let out = daemon.cli(&["contacts", "--json"]);
    let contacts: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    contacts
        .as_array()?
        .iter()
        .find(|c| c["username"] == peer)?["path"]
        .as_str()
        .map(str::to_owned)
}

/// Waits until `daemon` shows `peer` on `want`; how long that took.
pub(crate) fn wait_for_path(daemon: &Daemon, peer: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now = path(daemon, peer);
        if now.as_deref() == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "the path to {peer} is {now:?}, not {want:?}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 90 s: DCUtR gives up after three dials of up to 20 s) until the log of the
/// daemon in `dir` holds `needle`.
pub(crate) fn wait_for_log(dir: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let log = dir.with_extension("log");
    while !std::fs::read_to_string(&log).is_ok_and(|text| text.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "{} never said {needle:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Alice and bob registered behind their NATs, each with a reservation on the relay announced.
pub(crate) fn alice_and_bob(
    topology: &Topology,
    dir: &Path,
    rendezvous: &PublicRendezvous,
) -> (Daemon, Daemon) {
    let alice = daemon_in(&topology.alice, &dir.join("alice"), &rendezvous.url);
    let bob = daemon_in(&topology.bob, &dir.join("bob"), &rendezvous.url);
    alice.register("alice");
    bob.register("bob");
    // Reachable through the relay before anyone writes: the relayed address is announced.
    alice.wait_for("/p2p-circuit");
    bob.wait_for("/p2p-circuit");
    (alice, bob)
}

/// Alice behind `alice_nat`, bob behind `bob_nat`, registered and reachable through the relay of
/// a rendezvous started with `flags`. Dropped in field order: daemons, rendezvous, namespaces,
/// files.
pub(crate) struct Scene {
    pub(crate) alice: Daemon,
    pub(crate) bob: Daemon,
    pub(crate) rendezvous: PublicRendezvous,
    pub(crate) topology: Topology,
    pub(crate) tmp: tempfile::TempDir,
}

impl Scene {
    pub(crate) fn behind(alice_nat: Nat, bob_nat: Nat, flags: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let topology = Topology::behind_nats(alice_nat, bob_nat);
        let rendezvous = PublicRendezvous::start(&topology, &tmp.path().join("rendezvous"), flags);
        let (alice, bob) = alice_and_bob(&topology, tmp.path(), &rendezvous);
        Self {
            alice,
            bob,
            rendezvous,
            topology,
            tmp,
        }
    }
}

#[test]
fn behind_two_cone_nats_messages_go_peer_to_peer_and_the_path_becomes_direct() {
    if skipped("behind_two_cone_nats") {
        return;
    }
    let scene = Scene::behind(Nat::Cone, Nat::Cone, &[]);
    let alice = &scene.alice;
    let bob = &scene.bob;
    let rendezvous = &scene.rendezvous;
    let tmp = &scene.tmp;

    // Neither can dial the other's private address: the first message goes relayed, and DCUtR
    // punches a direct connection beside it.
    let first_send = Instant::now();
    send(alice, "bob", "one");
    bob.wait_for_history("alice", &["one"]);
    wait_for_path(alice, "bob", "direct", Duration::from_secs(60));
    let to_direct = first_send.elapsed();
    eprintln!("time from the first send to a direct connection: {to_direct:?}");
    wait_for_path(bob, "alice", "direct", Duration::from_secs(30));
    let remote = alice.cli(&["contacts", "--json"]);
    let remote: serde_json::Value = serde_json::from_slice(&remote.stdout).unwrap();
    let address = remote[0]["remote_address"].as_str().unwrap().to_owned();
    assert!(
        address.starts_with("/ip4/198.18.2.2/tcp/"),
        "alice reaches bob at his NAT's public address, not {address}"
    );

    let mut texts = vec!["one".to_owned()];
    for i in 0..5 {
        let (a, b) = (format!("alice {i}"), format!("bob {i}"));
        send(alice, "bob", &a);
        bob.wait_for_history("alice", &[texts.clone(), vec![a.clone()]].concat());
        texts.push(a);
        send(bob, "alice", &b);
        alice.wait_for_history("bob", &[texts.clone(), vec![b.clone()]].concat());
        texts.push(b);
    }
    bob.wait_for_history("alice", &texts);
    assert_eq!(
        rendezvous.deposits(),
        0.0,
        "every message went peer to peer: nothing was deposited in a mailbox"
    );
    // Behind the NAT, AutoNAT never confirmed an address as reachable from outside (on one
    // segment it does, in the mDNS test).
    let log = std::fs::read_to_string(tmp.path().join("alice.log")).unwrap();
    assert!(!log.contains("confirmed reachable from outside"));
}

#[test]
fn behind_a_symmetric_nat_hole_punching_fails_and_messages_stay_relayed() {
    if skipped("behind_a_symmetric_nat") {
        return;
    }
    let scene = Scene::behind(Nat::Cone, Nat::Symmetric, &[]);
    let alice = &scene.alice;
    let bob = &scene.bob;
    let rendezvous = &scene.rendezvous;
    let tmp = &scene.tmp;

    send(alice, "bob", "one");
    bob.wait_for_history("alice", &["one"]);
    assert_eq!(path(alice, "bob").as_deref(), Some("relayed"));
    // DCUtR tries and gives up; the relayed connection carries on.
    wait_for_log(&tmp.path().join("bob"), "hole punch failed");
    send(bob, "alice", "two");
    send(alice, "bob", "three");
    alice.wait_for_history("bob", &["one", "two", "three"]);
    bob.wait_for_history("alice", &["one", "two", "three"]);
    assert_eq!(path(alice, "bob").as_deref(), Some("relayed"));
    assert_eq!(path(bob, "alice").as_deref(), Some("relayed"));
    assert_eq!(
        rendezvous.deposits(),
        0.0,
        "relayed, not through the mailbox"
    );
}

/// Alice and bob behind symmetric NATs, a rendezvous started with `flags`, and `first` sent
/// from alice to bob over the relay (not the mailbox).
fn relayed_after(first: &str, flags: &[&str]) -> Scene {
    let scene = Scene::behind(Nat::Symmetric, Nat::Symmetric, flags);
    send(&scene.alice, "bob", first);
    scene.bob.wait_for_history("alice", &[first]);
    assert_eq!(path(&scene.alice, "bob").as_deref(), Some("relayed"));
    assert_eq!(scene.rendezvous.deposits(), 0.0);
    scene
}

#[test]
fn a_circuit_past_its_byte_limit_is_closed_and_the_message_goes_to_the_mailbox() {
    if skipped("a_circuit_past_its_byte_limit") {
        return;
    }
    let scene = relayed_after("small", &["--relay-max-circuit-bytes", "12288"]);
    let (alice, bob, rendezvous) = (&scene.alice, &scene.bob, &scene.rendezvous);
    // More than the circuit may carry: the relay closes it mid-envelope, a new circuit meets the
    // same limit, and the message goes to bob's mailbox, from which he gets it once.
    let big = "x".repeat(15 * 1024);
    send(alice, "bob", &big);
    bob.wait_for_history("alice", &["small", big.as_str()]);
    assert!(
        rendezvous.deposits() >= 1.0,
        "the big message went through the mailbox"
    );
    assert!(
        rendezvous.closed_circuits() >= 1.0,
        "the relay closed the circuit"
    );
}

#[test]
fn a_circuit_past_its_time_limit_is_closed_and_messages_still_arrive() {
    if skipped("a_circuit_past_its_time_limit") {
        return;
    }
    let scene = relayed_after("before", &["--relay-max-circuit-secs", "3"]);
    let (alice, bob, rendezvous) = (&scene.alice, &scene.bob, &scene.rendezvous);
    // The relay ends the circuit after 3 s: the connection is gone.
    let closed = Instant::now();
    while path(alice, "bob").is_some() {
        assert!(
            closed.elapsed() < Duration::from_secs(30),
            "the relay never closed the circuit"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rendezvous.closed_circuits() >= 1.0);
    // The next message opens a new circuit (or, failing that, goes through the mailbox): it
    // arrives once.
    send(alice, "bob", "after");
    bob.wait_for_history("alice", &["before", "after"]);
}

#[test]
fn with_mdns_a_contact_who_moved_to_another_port_is_found_on_the_lan_without_the_rendezvous() {
    if skipped("with_mdns") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let topology = Topology::one_segment();
    let mut rendezvous = PublicRendezvous::start(&topology, &tmp.path().join("rendezvous"), &[]);
    let (alice_dir, bob_dir) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let url = rendezvous.url.clone();
    let mdns = |netns: &str, dir: &Path, port: u16| {
        Daemon::start_in(
            Some(netns),
            dir,
            &url,
            &["--mdns", "--listen", &format!("/ip4/0.0.0.0/tcp/{port}")],
            &[("RUST_LOG", "info,peerchat::driven::p2p=debug")],
        )
    };
    let alice = mdns(&topology.alice, &alice_dir, 47001);
    let mut bob = mdns(&topology.bob, &bob_dir, 47002);
    alice.register("alice");
    bob.register("bob");
    send(&alice, "bob", "one");
    bob.wait_for_history("alice", &["one"]);
    // No NAT in the way: the relay's AutoNAT server dials alice back at the address it saw.
    wait_for_log(&alice_dir, "confirmed reachable from outside (AutoNAT)");

    // The rendezvous goes away, and bob comes back on another port: the address alice keeps
    // for him is stale, and nobody can tell her the new one but bob himself, on the LAN.
    rendezvous.stop();
    bob.terminate();
    let bob = mdns(&topology.bob, &bob_dir, 47003);
    bob.wait_for("listening on");
    send(&alice, "bob", "two");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let acknowledged = alice
            .history_json("bob")
            .into_iter()
            .any(|m| m.text == "two" && m.status.is_acknowledged());
        if acknowledged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob, found by mDNS at his new port, never acknowledged"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    bob.wait_for_history("alice", &["one", "two"]);
    assert_eq!(path(&alice, "bob").as_deref(), Some("direct"));
}

/// Runs `work` on a thread of its own inside the network namespace `netns`, with a runtime of its
/// own (sockets it opens live in that namespace).
fn in_netns<T: Send + 'static>(netns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
        work()
    })
    .join()
    .unwrap()
}

/// Sends `count` messages from `from` to `peer` through the local API, `parallel` at a time:
/// each answer comes after the peer's acknowledgement. Messages per second, and the median and
/// 95th percentile time of one send (a round trip to the peer and back) with one at a time.
fn measure(
    from: &Daemon,
    netns: &str,
    peer: &str,
    count: usize,
    parallel: usize,
) -> (f64, Duration, Duration) {
    use peerchat::driving::api::{SendAnswer, SendBody};
    // Built here (with the TLS provider); its sockets are opened in the namespace's thread.
    let (http, base, token) = from.api();
    let peer = peerchat_pki::Username::new(peer).unwrap();
    in_netns(netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let send = |i: usize| {
                let (http, base, token, to) =
                    (http.clone(), base.clone(), token.clone(), peer.clone());
                async move {
                    let started = Instant::now();
                    let answer: SendAnswer = http
                        .post(format!("{base}/api/v1/messages"))
                        .bearer_auth(&token)
                        .json(&SendBody {
                            to,
                            text: format!("measure {i}"),
                            id: None,
                            reply_to: None,
                        })
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert!(
                        answer.status.is_acknowledged(),
                        "message {i} not acknowledged"
                    );
                    started.elapsed()
                }
            };
            let mut times = Vec::new();
            for i in 0..count.min(100) {
                times.push(send(i).await);
            }
            times.sort();
            let median = times[times.len() / 2];
            let p95 = times[times.len() * 95 / 100];
            let started = Instant::now();
            let mut sent = 0;
            while sent < count {
                let batch: Vec<_> = (sent..(sent + parallel).min(count))
                    .map(|i| send(1000 + i))
                    .collect();
                sent += batch.len();
                futures::future::join_all(batch).await;
            }
            (count as f64 / started.elapsed().as_secs_f64(), median, p95)
        })
    })
}

/// One trial: alice and bob behind fresh NATs; how the path ends up, and how long to direct.
fn trial(alice_nat: Nat, bob_nat: Nat) -> (&'static str, Option<Duration>) {
    let scene = Scene::behind(alice_nat, bob_nat, &[]);
    let alice = &scene.alice;
    let bob = &scene.bob;
    let rendezvous = &scene.rendezvous;
    let started = Instant::now();
    send(alice, "bob", "one");
    bob.wait_for_history("alice", &["one"]);
    let outcome = loop {
        let now = path(alice, "bob");
        if now.as_deref() == Some("direct") {
            break ("direct", Some(started.elapsed()));
        }
        if started.elapsed() > Duration::from_secs(15) {
            break (if now.is_some() { "relayed" } else { "failed" }, None);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if rendezvous.deposits() > 0.0 {
        return ("failed", None);
    }
    outcome
}

/// The figures of README's NAT section (run by hand: `scripts/nat-figures`). Trials per pair of
/// NATs from PEERCHAT_NAT_TRIALS (default 10).
#[test]
#[ignore = "figures, run by scripts/nat-figures"]
fn nat_figures() {
    if skipped("nat_figures") {
        return;
    }
    let trials: usize = std::env::var("PEERCHAT_NAT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("| alice / bob | direct | relayed | failed | time to direct (median, max) |");
    println!("|---|---|---|---|---|");
    let pairs = if trials == 0 {
        vec![]
    } else {
        vec![
            (Nat::Cone, Nat::Cone),
            (Nat::Cone, Nat::Symmetric),
            (Nat::Symmetric, Nat::Symmetric),
        ]
    };
    for (a, b) in pairs {
        let mut counts = std::collections::BTreeMap::new();
        let mut times = Vec::new();
        for _ in 0..trials {
            let (outcome, time) = trial(a, b);
            *counts.entry(outcome).or_insert(0) += 1;
            times.extend(time);
        }
        times.sort();
        let time = match (times.get(times.len() / 2), times.last()) {
            (Some(median), Some(max)) => format!("{median:.0?}, {max:.0?}"),
            _ => "–".into(),
        };
        println!(
            "| {a:?} / {b:?} | {} | {} | {} | {time} |",
            counts.get("direct").unwrap_or(&0),
            counts.get("relayed").unwrap_or(&0),
            counts.get("failed").unwrap_or(&0),
        );
    }

    // Relayed against direct in the same run: bob behind the symmetric NAT stays relayed; behind
    // the cone NAT, the path is direct after the hole punch.
    println!();
    println!("| path | messages/s (16 at a time) | one send, median | one send, p95 |");
    println!("|---|---|---|---|");
    for (label, bob_nat) in [("relayed", Nat::Symmetric), ("direct", Nat::Cone)] {
        let scene = Scene::behind(Nat::Cone, bob_nat, &[]);
        let alice = &scene.alice;
        let bob = &scene.bob;
        let rendezvous = &scene.rendezvous;
        let topology = &scene.topology;
        send(alice, "bob", "hello");
        bob.wait_for_history("alice", &["hello"]);
        if label == "direct" {
            wait_for_path(alice, "bob", "direct", Duration::from_secs(30));
        }
        let (rate, median, p95) = measure(alice, &topology.alice, "bob", 500, 16);
        assert_eq!(path(alice, "bob").as_deref(), Some(label));
        assert_eq!(rendezvous.deposits(), 0.0);
        println!("| {label} | {rate:.0} | {median:.1?} | {p95:.1?} |");
    }
}

/// `len` random bytes in a file under `dir`; their SHA-256.
fn random_file(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, [u8; 32]) {
    use rand::RngCore;
    use sha2::Digest;
    use std::io::Write;
    let path = dir.join(name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut digest = sha2::Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        rand::rngs::OsRng.fill_bytes(&mut block[..n]);
        digest.update(&block[..n]);
        out.write_all(&block[..n]).unwrap();
        left -= n;
    }
    out.flush().unwrap();
    (path, digest.finalize().into())
}

/// `daemon`'s view of file `id` (`files --json`).
fn file_state(daemon: &Daemon, id: &str) -> Option<serde_json::Value> {
    let out = daemon.cli(&["files", "--json"]);
    let files: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    files.as_array()?.iter().find(|f| f["id"] == id).cloned()
}

/// Alice offers a file of `len` bytes to bob, who fetches it; how long from his accept to the
/// last chunk stored, checked against the bytes sent.
fn transfer(scene: &Scene, len: usize) -> Duration {
    let (path, digest) = random_file(scene.tmp.path(), "payload.bin", len);
    let out = scene
        .alice
        .cli(&["send-file", "bob", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while file_state(&scene.bob, &id).is_none() {
        assert!(Instant::now() < deadline, "bob never got the offer");
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    let accepted = scene.bob.cli(&["file", "accept", &id]);
    assert!(accepted.status.success());
    let done = loop {
        let state = file_state(&scene.bob, &id).unwrap();
        if state["state"] == "complete" {
            break state;
        }
        assert_ne!(state["state"], "failed");
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "never complete: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = start.elapsed();
    let saved = std::fs::read(done["saved_as"].as_str().unwrap()).unwrap();
    let got: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        &saved,
    ))
    .into();
    assert_eq!(got, digest, "the same bytes");
    took
}

#[test]
fn behind_symmetric_nats_a_file_goes_over_the_relay() {
    if skipped("a_file_goes_over_the_relay") {
        return;
    }
    let scene = relayed_after("here comes a file", &[]);
    transfer(&scene, 5 * 1024 * 1024 + 3);
    assert_eq!(path(&scene.alice, "bob").as_deref(), Some("relayed"));
    assert_eq!(
        scene.rendezvous.deposits(),
        0.0,
        "nothing went to the mailbox"
    );
}

#[test]
#[ignore = "figures, run by scripts/nat-figures"]
fn nat_file_figures() {
    if skipped("nat_file_figures") {
        return;
    }
    let mib: usize = std::env::var("FILE_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    println!();
    println!("| path | {mib} MiB file | MiB/s | circuits closed by the relay |");
    println!("|---|---|---|---|");
    for (label, bob_nat) in [("relayed", Nat::Symmetric), ("direct", Nat::Cone)] {
        let scene = Scene::behind(Nat::Cone, bob_nat, &[]);
        send(&scene.alice, "bob", "hello");
        scene.bob.wait_for_history("alice", &["hello"]);
        if label == "direct" {
            wait_for_path(&scene.alice, "bob", "direct", Duration::from_secs(30));
        }
        let took = transfer(&scene, mib << 20);
        assert_eq!(path(&scene.alice, "bob").as_deref(), Some(label));
        println!(
            "| {label} | {took:.2?} | {:.0} | {} |",
            mib as f64 / took.as_secs_f64(),
            scene.rendezvous.closed_circuits()
        );
    }
}
