//! The libp2p transport with CA-verified mutual TLS, swarms on 127.0.0.1.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use peerchat::domain::{Ack, Envelope, IdentityKey, MessageId};
use peerchat::driven::p2p::{P2pConfig, P2pNetwork, WithoutCrl, start};
use peerchat::ports::{
    AuthenticatedPeer, DeliveryError, EnvelopeFn, Inbound, Messages, Path, PeerStream,
    Reachability, ReachabilityEvent, Recipient, Streams,
};
use peerchat_pki::tls::Credentials;
use peerchat_pki::{CertificateAuthority, RevokedEntry, Serial, TrustStore, Username, build_csr};
use rand::rngs::OsRng;

struct Node {
    name: Username,
    key: SigningKey,
    serial: Serial,
    trust: Arc<TrustStore>,
    net: P2pNetwork,
    received: Arc<Mutex<Vec<(Username, Envelope)>>>,
    streams: Arc<Mutex<Vec<Username>>>,
}

/// A stream protocol the test nodes serve: every byte read is written back.
const ECHO: &str = "/peerchat/test-echo/1";

/// The test nodes' inbound side: envelopes recorded and acknowledged, echo streams answered.
struct Recorder {
    received: Arc<Mutex<Vec<(Username, Envelope)>>>,
    streams: Arc<Mutex<Vec<Username>>>,
}

impl Inbound for Recorder {
    async fn envelope(&self, from: AuthenticatedPeer, envelope: Envelope) -> Ack {
        self.received
            .lock()
            .unwrap()
            .push((from.username, envelope));
        Ack::Stored
    }

    async fn stream(&self, stream: PeerStream) {
        use futures::{AsyncReadExt, AsyncWriteExt};
        self.streams.lock().unwrap().push(stream.peer.username);
        let (mut reader, mut writer) = stream.io.split();
        let _ = futures::io::copy(&mut reader, &mut writer).await;
        let _ = writer.close().await;
    }
}

impl Node {
    fn recipient(&self) -> Recipient {
        Recipient {
            username: self.name.clone(),
            identity_key: IdentityKey::from_verifying_key(self.key.verifying_key()),
            addresses: self
                .net
                .listen_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
        }
    }

    fn received(&self) -> Vec<(Username, Envelope)> {
        self.received.lock().unwrap().clone()
    }
}

/// A node named `name` with a certificate from `issuer`, trusting `trusted`.
async fn node(
    name: &str,
    issuer: &CertificateAuthority,
    trusted: &CertificateAuthority,
    max_envelope: usize,
) -> Node {
    node_with(name, issuer, trusted, max_envelope, |_| {}).await
}

/// [`node`], with its configuration changed by `tweak` before it starts.
async fn node_with(
    name: &str,
    issuer: &CertificateAuthority,
    trusted: &CertificateAuthority,
    max_envelope: usize,
    tweak: impl FnOnce(&mut P2pConfig),
) -> Node {
    let key = SigningKey::generate(&mut OsRng);
    let username = Username::new(name).unwrap();
    let cert = issuer
        .issue_peer(
            &build_csr(&key, &username).unwrap(),
            &username,
            SystemTime::now(),
            peerchat_pki::DEFAULT_PEER_VALIDITY,
            &mut OsRng,
        )
        .unwrap();
    let trust = Arc::new(TrustStore::new(trusted.certificate().clone()));
    let mut config = P2pConfig::new(
        key.clone(),
        Credentials::new(vec![cert.der], key.clone()),
        trust.clone(),
        vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
    );
    config.max_envelope_bytes = max_envelope;
    config.request_timeout = Duration::from_secs(5);
    config.stream_protocols = vec![ECHO];
    tweak(&mut config);
    let received = Arc::new(Mutex::new(Vec::new()));
    let streams = Arc::new(Mutex::new(Vec::new()));
    let inbound = Recorder {
        received: received.clone(),
        streams: streams.clone(),
    };
    let net = start(config, Arc::new(inbound)).await.unwrap();
    Node {
        name: username,
        key,
        serial: cert.serial,
        trust,
        net,
        received,
        streams,
    }
}

fn envelope(payload: Vec<u8>) -> Envelope {
    Envelope {
        id: MessageId::random(&mut OsRng),
        trace: None,
        payload,
    }
}

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("p2p test CA", SystemTime::now(), &mut OsRng).unwrap()
}

const MAX: usize = 256 * 1024;

#[tokio::test]
async fn an_envelope_is_delivered_and_acknowledged() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    let e = envelope(b"sealed".to_vec());

    assert_eq!(
        alice.net.deliver(&bob.recipient(), e.clone()).await,
        Ok(Ack::Stored)
    );

    let got = bob.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0.as_str(),
        "alice",
        "the sender comes from alice's certificate"
    );
    assert_eq!(got[0].1, e);
    let seen = bob.net.registry().get(&alice.net.local_peer_id()).unwrap();
    assert_eq!(seen.username.as_str(), "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_envelopes_both_ways_arrive_intact() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    let n = 200;
    let mut tasks = Vec::new();
    let mut sent_to_bob = HashSet::new();
    let mut sent_to_alice = HashSet::new();
    for i in 0..n {
        let (a, b) = (alice.net.clone(), bob.net.clone());
        let (to_bob, to_alice) = (bob.recipient(), alice.recipient());
        let e1 = envelope(format!("a→b {i}").repeat(i % 50 + 1).into_bytes());
        let e2 = envelope(format!("b→a {i}").repeat(i % 50 + 1).into_bytes());
        sent_to_bob.insert(e1.clone().payload);
        sent_to_alice.insert(e2.clone().payload);
        tasks.push(tokio::spawn(async move { a.deliver(&to_bob, e1).await }));
        tasks.push(tokio::spawn(async move { b.deliver(&to_alice, e2).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(Ack::Stored));
    }
    let at_bob: HashSet<Vec<u8>> = bob.received().into_iter().map(|(_, e)| e.payload).collect();
    let at_alice: HashSet<Vec<u8>> = alice
        .received()
        .into_iter()
        .map(|(_, e)| e.payload)
        .collect();
    assert_eq!(at_bob, sent_to_bob);
    assert_eq!(at_alice, sent_to_alice);
}

#[tokio::test]
async fn a_peer_with_a_foreign_ca_certificate_is_refused_whichever_side_dials() {
    let ca = ca();
    let foreign = CertificateAuthority::generate("foreign", SystemTime::now(), &mut OsRng).unwrap();
    let bob = node("bob", &ca, &ca, MAX).await;
    // Mallory trusts our CA but holds a certificate from another one.
    let mallory = node("mallory", &foreign, &ca, MAX).await;

    let dialled = mallory
        .net
        .deliver(&bob.recipient(), envelope(b"hi".to_vec()))
        .await;
    // TLS 1.3: mallory's handshake completes on her side before bob refuses her certificate;
    // that is never taken as acceptance.
    assert!(
        matches!(dialled, Err(DeliveryError::Refused(_))),
        "mallory got through to bob: {dialled:?}"
    );
    let dialling = bob
        .net
        .deliver(&mallory.recipient(), envelope(b"hi".to_vec()))
        .await;
    assert!(
        matches!(dialling, Err(DeliveryError::Unreachable(_))),
        "bob accepted mallory as a server: {dialling:?}"
    );
    assert!(bob.received().is_empty());
    assert!(mallory.received().is_empty());
}

#[tokio::test]
async fn a_peer_revoked_by_a_crl_swap_is_refused_on_its_next_connection() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    assert_eq!(
        alice
            .net
            .deliver(&bob.recipient(), envelope(b"1".to_vec()))
            .await,
        Ok(Ack::Stored)
    );

    revoke(&ca, &bob, &alice).await;
    let again = alice
        .net
        .deliver(&bob.recipient(), envelope(b"2".to_vec()))
        .await;
    assert!(
        matches!(again, Err(DeliveryError::Refused(_))),
        "a revoked peer got through: {again:?}"
    );
    assert_eq!(bob.received().len(), 1);
}

#[tokio::test]
async fn dialling_an_address_with_the_wrong_peer_id_fails_with_wrong_peer() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    let mut wrong = bob.recipient();
    wrong.identity_key =
        IdentityKey::from_verifying_key(SigningKey::generate(&mut OsRng).verifying_key());
    assert_eq!(
        alice.net.deliver(&wrong, envelope(b"x".to_vec())).await,
        Err(DeliveryError::WrongPeer)
    );
    assert!(bob.received().is_empty());
}

#[tokio::test]
async fn a_valid_peer_mallory_cannot_be_taken_for_bob() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    let mallory = node("mallory", &ca, &ca, MAX).await;
    // Bob's name and key, mallory's address.
    let mut spoofed = bob.recipient();
    spoofed.addresses = mallory.recipient().addresses;
    assert_eq!(
        alice
            .net
            .deliver(&spoofed, envelope(b"for bob".to_vec()))
            .await,
        Err(DeliveryError::WrongPeer)
    );
    // Mallory's key under bob's name: the certificate names mallory.
    let mut renamed = mallory.recipient();
    renamed.username = bob.name.clone();
    assert_eq!(
        alice
            .net
            .deliver(&renamed, envelope(b"for bob".to_vec()))
            .await,
        Err(DeliveryError::WrongPeer)
    );
    assert!(
        mallory.received().is_empty()
            || mallory
                .received()
                .iter()
                .all(|(from, _)| from.as_str() == "alice")
    );
}

#[tokio::test]
async fn an_oversized_envelope_is_refused_without_taking_the_node_down() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, 4 * 1024 * 1024).await;
    let bob = node("bob", &ca, &ca, 64 * 1024).await;

    let big = alice
        .net
        .deliver(&bob.recipient(), envelope(vec![7; 1024 * 1024]))
        .await;
    assert!(
        matches!(big, Err(DeliveryError::Refused(_))),
        "bob accepted 1 MiB over his 64 KiB limit: {big:?}"
    );
    assert!(bob.received().is_empty());
    // Bob is still up and still talks.
    assert_eq!(
        alice
            .net
            .deliver(&bob.recipient(), envelope(vec![1; 1000]))
            .await,
        Ok(Ack::Stored)
    );
    // Over the sender's own limit: refused before any network.
    assert_eq!(
        bob.net
            .deliver(&alice.recipient(), envelope(vec![0; 65 * 1024]))
            .await,
        Err(DeliveryError::TooLarge)
    );
}

#[tokio::test]
async fn an_unreachable_peer_is_reported() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let mut nobody = alice.recipient();
    nobody.username = Username::new("nobody").unwrap();
    nobody.identity_key =
        IdentityKey::from_verifying_key(SigningKey::generate(&mut OsRng).verifying_key());
    nobody.addresses = vec!["/ip4/127.0.0.1/tcp/1".into()];
    assert!(matches!(
        alice.net.deliver(&nobody, envelope(b"x".to_vec())).await,
        Err(DeliveryError::Unreachable(_))
    ));
    nobody.addresses.clear();
    assert!(
        alice
            .net
            .deliver(&nobody, envelope(b"x".to_vec()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_certificate_must_certify_the_identity_key() {
    let ca = ca();
    let key = SigningKey::generate(&mut OsRng);
    let other = SigningKey::generate(&mut OsRng);
    let name = Username::new("alice").unwrap();
    let cert = ca
        .issue_peer(
            &build_csr(&other, &name).unwrap(),
            &name,
            SystemTime::now(),
            peerchat_pki::DEFAULT_PEER_VALIDITY,
            &mut OsRng,
        )
        .unwrap();
    let config = P2pConfig::new(
        key,
        Credentials::new(vec![cert.der], other),
        Arc::new(TrustStore::new(ca.certificate().clone())),
        vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
    );
    assert!(matches!(
        start(config, Arc::new(EnvelopeFn(|_, _| async { Ack::Stored }))).await,
        Err(peerchat::driven::p2p::StartError::Certificate(_))
    ));
}

/// A sender that announces a full-size envelope, sends 1 KiB of it, then trickles a byte every
/// 100 ms and never finishes: each such request holds one stream of the receiver.
#[derive(Clone, Default)]
pub(crate) struct HalfSend;

impl libp2p::request_response::Codec for HalfSend {
    type Protocol = libp2p::StreamProtocol;
    type Request = ();
    type Response = ();

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
    ) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
    ) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        (): (),
    ) -> std::io::Result<()> {
        use futures::AsyncWriteExt;
        io.write_all(&(MAX as u32).to_be_bytes()).await?;
        io.write_all(&[0u8; 1024]).await?;
        io.flush().await?;
        // A reset stream fails the next write: that is how the test sees a refusal.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            io.write_all(&[0]).await?;
            io.flush().await?;
        }
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        (): (),
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// Mallory: a peer with a valid certificate of `ca` whose swarm speaks `/peerchat/msg/1` with
/// [`HalfSend`], without any of the sender's own bounds.
fn mallory(ca: &CertificateAuthority) -> Mallory {
    let key = SigningKey::generate(&mut OsRng);
    let username = Username::new("mallory").unwrap();
    let cert = ca
        .issue_peer(
            &build_csr(&key, &username).unwrap(),
            &username,
            SystemTime::now(),
            peerchat_pki::DEFAULT_PEER_VALIDITY,
            &mut OsRng,
        )
        .unwrap();
    half_sender(cert.der, key, ca.certificate().clone())
}

/// A swarm that speaks `/peerchat/msg/1` with [`HalfSend`], presenting `cert` (for `key`) and
/// trusting `ca`.
pub(crate) fn half_sender(
    cert: peerchat_pki::CertificateDer<'static>,
    key: SigningKey,
    ca: peerchat_pki::CaCertificate,
) -> Mallory {
    use libp2p::Transport as _;
    let upgrade = peerchat::driven::p2p::upgrade::MtlsUpgrade::new(
        Credentials::new(vec![cert], key.clone()),
        Arc::new(TrustStore::new(ca)),
        Arc::default(),
    )
    .unwrap();
    let mut seed = key.to_bytes();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).unwrap();
    libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(move |_| {
            libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default())
                .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                .authenticate(upgrade)
                .multiplex(libp2p::yamux::Config::default())
        })
        .unwrap()
        .with_behaviour(|_| {
            libp2p::request_response::Behaviour::with_codec(
                HalfSend,
                [(
                    libp2p::StreamProtocol::new("/peerchat/msg/1"),
                    libp2p::request_response::ProtocolSupport::Outbound,
                )],
                libp2p::request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(10_000),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Mallory's swarm.
pub(crate) type Mallory = libp2p::Swarm<libp2p::request_response::Behaviour<HalfSend>>;

/// Dials `target` five times at once and waits 3 s; returns how many connections are still
/// open and how many the target closed.
pub(crate) async fn dial_five_times(
    mallory: &mut Mallory,
    target: libp2p::PeerId,
    address: libp2p::Multiaddr,
) -> (i32, i32) {
    use futures::StreamExt as _;
    use libp2p::swarm::SwarmEvent;
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    for _ in 0..5 {
        mallory
            .dial(
                DialOpts::peer_id(target)
                    .addresses(vec![address.clone()])
                    .condition(PeerCondition::Always)
                    .build(),
            )
            .unwrap();
    }
    let (mut open, mut closed) = (0, 0);
    let settle = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(settle);
    loop {
        tokio::select! {
            () = &mut settle => return (open, closed),
            event = mallory.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { .. } => open += 1,
                SwarmEvent::ConnectionClosed { .. } => { open -= 1; closed += 1; }
                _ => {}
            }
        }
    }
}

/// Drives mallory for 4 s, calling `on_tick` every 250 ms; returns how many of her requests
/// failed (were refused by the target) meanwhile.
pub(crate) async fn count_refused(mallory: &mut Mallory, mut on_tick: impl FnMut()) -> usize {
    use futures::StreamExt as _;
    use libp2p::request_response::Event;
    use libp2p::swarm::SwarmEvent;
    let mut refused = 0;
    let settle = tokio::time::sleep(Duration::from_secs(4));
    tokio::pin!(settle);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = &mut settle => return refused,
            _ = tick.tick() => on_tick(),
            event = mallory.select_next_some() => {
                if let SwarmEvent::Behaviour(Event::OutboundFailure { .. }) = event {
                    refused += 1;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_half_sent_envelopes_and_extra_connections_is_bounded_and_others_get_through()
 {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    let bob_addr = bob.net.listen_addrs()[0].clone();
    let bob_id = bob.net.local_peer_id();
    let mut mallory = mallory(&ca);

    // Five connections to bob at once: he keeps three (his per-peer bound) and closes the rest.
    let (open, closed_by_bob) = dial_five_times(&mut mallory, bob_id, bob_addr).await;
    assert_eq!(open, 3, "bob keeps at most three connections per peer");
    assert_eq!(closed_by_bob, 2);

    // 400 half-sent envelopes: bob holds at most 64 streams per connection and resets the rest.
    let requests = 400;
    for _ in 0..requests {
        mallory.behaviour_mut().send_request(&bob_id, ());
    }
    let alice_to_bob = {
        let (net, to) = (alice.net.clone(), bob.recipient());
        tokio::spawn(async move { net.deliver(&to, envelope(b"real mail".to_vec())).await })
    };
    let refused = count_refused(&mut mallory, || {}).await;
    let held = requests - refused;
    assert!(
        (1..=3 * 64).contains(&held),
        "bob holds {held} half-sent envelopes of one peer, more than 3 connections × 64 streams"
    );
    // Meanwhile another peer's envelope was received and acknowledged.
    assert_eq!(alice_to_bob.await.unwrap(), Ok(Ack::Stored));
    assert!(
        bob.received()
            .iter()
            .any(|(from, e)| from.as_str() == "alice" && e.payload == b"real mail")
    );
}

/// Alice, mallory, and bob, who has no CRL and has pinned only alice.
async fn alice_mallory_and_bob_without_a_crl(ca: &CertificateAuthority) -> (Node, Node, Node) {
    let alice = node("alice", ca, ca, MAX).await;
    let mallory = node("mallory", ca, ca, MAX).await;
    let pinned = alice.key.verifying_key();
    let bob = node_with("bob", ca, ca, MAX, move |config| {
        config.without_crl = WithoutCrl::OnlyPinned(Arc::new(move |name, key| {
            name.as_str() == "alice" && *key == pinned
        }));
    })
    .await;
    (alice, mallory, bob)
}

#[tokio::test]
async fn without_a_crl_only_pinned_contacts_get_in_and_everyone_once_one_is_installed() {
    let ca = ca();
    let (alice, mallory, bob) = alice_mallory_and_bob_without_a_crl(&ca).await;
    assert!(bob.trust.crl().is_none());

    assert_eq!(
        alice
            .net
            .deliver(&bob.recipient(), envelope(b"from a contact".to_vec()))
            .await,
        Ok(Ack::Stored)
    );
    assert!(
        mallory
            .net
            .deliver(&bob.recipient(), envelope(b"from a stranger".to_vec()))
            .await
            .is_err(),
        "no CRL: a peer that is not a pinned contact is refused"
    );
    // Bob dialling out is held to the same rule: an answer from a stranger does not count.
    assert!(
        bob.net
            .deliver(&mallory.recipient(), envelope(b"to a stranger".to_vec()))
            .await
            .is_err()
    );
    assert_eq!(
        bob.received()
            .iter()
            .map(|(from, _)| from.as_str())
            .collect::<Vec<_>>(),
        ["alice"]
    );
    assert!(mallory.received().is_empty());

    let now = SystemTime::now();
    bob.trust
        .set_crl(
            ca.sign_crl(&[], 1, now, now + Duration::from_secs(3600))
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        mallory
            .net
            .deliver(&bob.recipient(), envelope(b"now checked".to_vec()))
            .await,
        Ok(Ack::Stored),
        "with a CRL, revocation is checked and every valid peer gets in"
    );
}

/// Sends `payload` on a new echo stream from `from` to `to` and returns what came back.
async fn echo(from: &Node, to: &Recipient, payload: &[u8]) -> Result<Vec<u8>, DeliveryError> {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let stream = from.net.open_stream(to, ECHO).await?;
    assert_eq!(
        stream.peer.username, to.username,
        "the stream names its peer"
    );
    let (mut reader, mut writer) = stream.io.split();
    let write = async {
        writer.write_all(payload).await?;
        writer.close().await
    };
    let read = async {
        let mut back = Vec::new();
        reader.read_to_end(&mut back).await.map(|_| back)
    };
    let (written, back) = tokio::join!(write, read);
    let broken = |e: std::io::Error| DeliveryError::Refused(e.to_string());
    written.map_err(broken)?;
    back.map_err(broken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_bytes_both_ways_between_authenticated_peers() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    // Four times the largest envelope, in one stream.
    let payload: Vec<u8> = (0..4 * MAX).map(|i| (i % 251) as u8).collect();

    let back = echo(&alice, &bob.recipient(), &payload).await.unwrap();

    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the bytes come back intact");
    assert_eq!(
        *bob.streams.lock().unwrap(),
        vec![alice.name.clone()],
        "bob's side names alice, from her certificate"
    );
    // Several at once, on the same connection.
    let to = bob.recipient();
    let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1000]).collect();
    let many = futures::future::join_all(payloads.iter().map(|p| echo(&alice, &to, p))).await;
    for (back, sent) in many.into_iter().zip(&payloads) {
        assert_eq!(&back.unwrap(), sent);
    }
}

#[tokio::test]
async fn a_stream_goes_only_to_the_expected_peer_and_an_unserved_protocol_is_refused() {
    let ca = ca();
    let alice = node("alice", &ca, &ca, MAX).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    let mallory = node("mallory", &ca, &ca, MAX).await;
    // Bob's name and key, mallory's address.
    let mut spoofed = bob.recipient();
    spoofed.addresses = mallory.recipient().addresses;
    assert_eq!(
        echo(&alice, &spoofed, b"for bob").await.unwrap_err(),
        DeliveryError::WrongPeer
    );
    // Mallory's key under bob's name: the certificate names mallory.
    let mut renamed = mallory.recipient();
    renamed.username = bob.name.clone();
    assert_eq!(
        echo(&alice, &renamed, b"for bob").await.unwrap_err(),
        DeliveryError::WrongPeer
    );
    assert!(mallory.streams.lock().unwrap().is_empty());
    // A protocol bob does not serve.
    assert!(matches!(
        alice
            .net
            .open_stream(&bob.recipient(), "/peerchat/unknown/1")
            .await,
        Err(DeliveryError::Refused(_))
    ));
    // A peer that does not listen.
    let gone = Recipient {
        username: Username::new("nobody").unwrap(),
        identity_key: IdentityKey::from_verifying_key(
            SigningKey::generate(&mut OsRng).verifying_key(),
        ),
        addresses: vec!["/ip4/127.0.0.1/tcp/9".into()],
    };
    assert!(matches!(
        alice.net.open_stream(&gone, ECHO).await,
        Err(DeliveryError::Unreachable(_))
    ));
}

#[tokio::test]
async fn without_a_crl_a_stranger_cannot_open_a_stream() {
    let ca = ca();
    let (alice, mallory, bob) = alice_mallory_and_bob_without_a_crl(&ca).await;

    let refused = echo(&mallory, &bob.recipient(), b"stranger").await;
    assert!(
        !matches!(&refused, Ok(back) if !back.is_empty()),
        "nothing comes back to a stranger: {refused:?}"
    );
    assert_eq!(
        echo(&alice, &bob.recipient(), b"contact").await.unwrap(),
        b"contact"
    );
    assert_eq!(*bob.streams.lock().unwrap(), vec![alice.name.clone()]);
}

#[tokio::test]
async fn reachability_tells_our_addresses_and_each_peers_connection() {
    let ca = ca();
    let bob = node("bob", &ca, &ca, MAX).await;
    assert_eq!(
        bob.net.own_addresses(),
        bob.net
            .listen_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
    );
    let mut changes = bob.net.reachability();
    let alice = node("alice", &ca, &ca, MAX).await;

    alice
        .net
        .deliver(&bob.recipient(), envelope(b"hello".to_vec()))
        .await
        .unwrap();
    let online = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .unwrap()
        .unwrap();
    let ReachabilityEvent::PeerOnline {
        peer,
        path,
        remote_address,
    } = online
    else {
        panic!("not an online event: {online:?}");
    };
    assert_eq!((peer, path), (alice.name.clone(), Path::Direct));
    assert!(
        remote_address.starts_with("/ip4/127.0.0.1/tcp/"),
        "{remote_address}"
    );
    // The same is there to ask for, and only one event per peer.
    let connection = bob.net.connection(&alice.name).unwrap();
    assert_eq!(
        (connection.path, connection.remote_address),
        (Path::Direct, remote_address)
    );
    alice
        .net
        .deliver(&bob.recipient(), envelope(b"again".to_vec()))
        .await
        .unwrap();
    assert!(
        changes.try_recv().is_err(),
        "no news on the same connection"
    );
    // Alice's node stops: her connection closes.
    let alice_name = alice.name.clone();
    drop(alice);
    let offline = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        offline,
        ReachabilityEvent::PeerOffline {
            peer: alice_name.clone()
        }
    );
    assert_eq!(bob.net.connection(&alice_name), None);
}

/// Installs at `at` a CRL of `ca` that revokes `who`, has `at` close `who`'s connections, and
/// waits until they are gone.
async fn revoke(ca: &CertificateAuthority, at: &Node, who: &Node) {
    let now = SystemTime::now();
    let crl = ca
        .sign_crl(
            &[RevokedEntry {
                serial: who.serial.clone(),
                revoked_at: now,
            }],
            1,
            now,
            now + Duration::from_secs(86400),
        )
        .unwrap();
    at.trust.set_crl(crl).unwrap();
    at.net.drop_revoked().await;
    for _ in 0..50 {
        if peerchat::ports::Reachability::connection(&at.net, &who.name).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relay of `ca` on loopback.
async fn loopback_relay(ca: &CertificateAuthority) -> peerchat_rendezvous::relay::Relay {
    use peerchat_rendezvous::relay::{self, RelayConfig};
    relay::start(
        &RelayConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..RelayConfig::default()
        },
        SigningKey::generate(&mut OsRng),
        ca,
        Arc::new(TrustStore::new(ca.certificate().clone())),
        SystemTime::now(),
    )
    .await
    .unwrap()
}

/// `node`'s relayed address, once its reservation on `relay` is announced.
async fn reserved_on(node: &Node, relay: &peerchat_rendezvous::relay::Relay) -> String {
    reserved_at(
        node,
        peerchat::driven::p2p::RelayServer {
            peer_id: relay.peer_id(),
            addresses: relay.addresses(),
        },
    )
    .await
}

/// `node`'s relayed address, once its reservation on `relay` is announced.
async fn reserved_at(node: &Node, relay: peerchat::driven::p2p::RelayServer) -> String {
    use peerchat::ports::Reachability as _;
    node.net.use_relay(relay).await;
    for _ in 0..100 {
        if let Some(address) = node
            .net
            .own_addresses()
            .into_iter()
            .find(|a| a.contains("/p2p-circuit"))
        {
            return address;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} got no reservation", node.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_relay_the_peers_check_each_other_so_a_revoked_peer_is_refused_end_to_end() {
    let ca = ca();
    // The relay itself never learns of the revocation: only bob's own check can refuse alice.
    let relay = loopback_relay(&ca).await;
    let bob = node("bob", &ca, &ca, MAX).await;
    let through_relay = Recipient {
        addresses: vec![reserved_on(&bob, &relay).await],
        ..bob.recipient()
    };
    let alice = node("alice", &ca, &ca, MAX).await;
    assert_eq!(
        alice
            .net
            .deliver(&through_relay, envelope(b"1".to_vec()))
            .await,
        Ok(Ack::Stored)
    );
    assert_eq!(relay.metrics().circuits("accepted"), 1);

    revoke(&ca, &bob, &alice).await;
    // Every attempt fails. The first may fail on the connection bob is closing, before reaching
    // the relay, and the relay counts a circuit when its own task gets to it: alice tries until
    // the relay has let a new circuit through, so bob's own handshake is what refused her.
    let mut attempts = 0;
    loop {
        let again = alice
            .net
            .deliver(&through_relay, envelope(b"2".to_vec()))
            .await;
        assert!(
            again.is_err(),
            "a revoked peer got through the relay: {again:?}"
        );
        attempts += 1;
        if relay.metrics().circuits("accepted") >= 2 {
            break;
        }
        assert!(
            attempts < 50,
            "the relay let none of alice's new circuits through: bob's own handshake refused her"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received: Vec<Vec<u8>> = bob.received().into_iter().map(|(_, e)| e.payload).collect();
    assert_eq!(received, vec![b"1".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_a_certificate_of_this_ca_reserve_a_relay_slot_or_open_a_circuit() {
    use peerchat::driven::p2p::RelayServer;
    use peerchat::ports::Reachability as _;

    let ca = ca();
    let foreign =
        CertificateAuthority::generate("another CA", SystemTime::now(), &mut OsRng).unwrap();
    let relay = loopback_relay(&ca).await;
    let server = RelayServer {
        peer_id: relay.peer_id(),
        addresses: relay.addresses(),
    };
    let relayed = |net: &P2pNetwork| {
        net.own_addresses()
            .into_iter()
            .find(|a| a.contains("/p2p-circuit"))
    };

    // Bob, a user of this CA, holds a slot; alice reaches him through it alone.
    let bob = node("bob", &ca, &ca, MAX).await;
    let circuit = reserved_on(&bob, &relay).await;
    assert_eq!(relay.metrics().reservations("accepted"), 1);
    let through_relay = Recipient {
        addresses: vec![circuit],
        ..bob.recipient()
    };
    let alice = node("alice", &ca, &ca, MAX).await;
    assert_eq!(
        alice
            .net
            .deliver(&through_relay, envelope(b"relayed".to_vec()))
            .await,
        Ok(Ack::Stored)
    );
    assert_eq!(relay.metrics().circuits("accepted"), 1);

    // Mallory's certificate is of another CA (she trusts ours, so only the relay can refuse her).
    let mallory = node("mallory", &foreign, &ca, MAX).await;
    mallory.net.use_relay(server).await;
    let refused = mallory
        .net
        .deliver(&through_relay, envelope(b"from mallory".to_vec()))
        .await;
    assert!(refused.is_err(), "mallory opened a circuit: {refused:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(relayed(&mallory.net), None, "mallory holds no slot");
    assert_eq!(relay.metrics().reservations("accepted"), 1);
    assert_eq!(relay.metrics().circuits("accepted"), 1);
    assert!(
        relay.metrics().refused_handshakes() >= 1,
        "the relay refused her handshake"
    );
    let received: Vec<Vec<u8>> = bob.received().into_iter().map(|(_, e)| e.payload).collect();
    assert_eq!(received, vec![b"relayed".to_vec()]);
}

/// What reservations cost the relay: the real rendezvous binary's RSS before and after
/// PEERCHAT_RELAY_PEERS (default 200) nodes each hold a slot. Run by `scripts/nat-figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures, run by scripts/nat-figures"]
async fn relay_memory_figures() {
    use std::io::BufRead as _;
    let peers: usize = std::env::var("PEERCHAT_RELAY_PEERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rendezvous");
    let mut child = std::process::Command::new(crate::binaries::rendezvous_binary())
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--relay-listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address: libp2p::Multiaddr = line
        .split("relay on ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("no relay in {line:?}"))
        .trim()
        .parse()
        .unwrap();
    let Some(libp2p::multiaddr::Protocol::P2p(peer_id)) = address.iter().last() else {
        panic!("{address} names no peer");
    };
    let relay = peerchat::driven::p2p::RelayServer {
        peer_id,
        addresses: vec![address],
    };
    let ca = CertificateAuthority::load(&dir).unwrap();
    let rss = || crate::floods::rss_kib(child.id());
    let before = rss();
    let mut nodes = Vec::new();
    for i in 0..peers {
        let node = node(&format!("user{i:04}"), &ca, &ca, MAX).await;
        reserved_at(&node, relay.clone()).await;
        nodes.push(node);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    println!("| reservations | relay RSS | per reservation |");
    println!("|---|---|---|");
    println!("| 0 | {:.1} MiB | |", before as f64 / 1024.0);
    println!(
        "| {peers} | {:.1} MiB | {:.0} KiB |",
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / peers as f64
    );
    let _ = child.kill();
    let _ = child.wait();
}
