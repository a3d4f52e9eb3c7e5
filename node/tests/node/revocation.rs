//! The real binaries: revocation holds when the rendezvous is down, and reaches online peers at
//! once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use peerchat_pki::tls::{Credentials, rendezvous_client_config};
use peerchat_pki::{CaCertificate, Username, build_csr};
use peerchat_rendezvous::api;
use rand::rngs::OsRng;

use crate::binaries::{Daemon, rendezvous_binary, rendezvous_process, stop};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A user with no node: registered through the rendezvous API with a key the test holds, its
/// certificate and key written to files for `peerchat probe`.
pub(crate) struct Outsider {
    http: reqwest::Client,
    base: String,
    cert: PathBuf,
    key_file: PathBuf,
    /// Its certificate, DER.
    pub(crate) cert_der: peerchat_pki::CertificateDer<'static>,
    /// Its key.
    pub(crate) key: SigningKey,
}

impl Outsider {
    pub(crate) async fn register(name: &str, base: &str, ca: &CaCertificate, dir: &Path) -> Self {
        let key = SigningKey::generate(&mut OsRng);
        let username = Username::new(name).unwrap();
        let anonymous = reqwest::Client::builder()
            .use_preconfigured_tls(rendezvous_client_config(ca, None).unwrap())
            .build()
            .unwrap();
        let response = anonymous
            .post(format!("{base}/v1/accounts"))
            .json(&api::RegisterRequest {
                username: username.clone(),
                password: crate::binaries::PASSWORD.into(),
                csr: B64.encode(build_csr(&key, &username).unwrap()),
            })
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let issued: api::CertificateResponse = response.json().await.unwrap();
        let cert = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &issued.certificate).unwrap();
        std::fs::write(
            &key_file,
            key.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
        )
        .unwrap();
        let der = {
            use rustls::pki_types::pem::PemObject;
            peerchat_pki::CertificateDer::from_pem_slice(issued.certificate.as_bytes()).unwrap()
        };
        let der_for_self = der.clone();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(
                rendezvous_client_config(ca, Some(Credentials::new(vec![der], key.clone())))
                    .unwrap(),
            )
            .build()
            .unwrap();
        // A signed prekey, so that others can start a conversation (and so pin this key).
        let spk =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(OsRng));
        let signature = key.sign(&api::signed_prekey_message(1, spk.as_bytes()));
        let response = http
            .put(format!("{base}/v1/prekeys/signed"))
            .json(&api::SignedPreKeyWire {
                id: 1,
                public_key: B64.encode(spk.as_bytes()),
                signature: B64.encode(signature.to_bytes()),
            })
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        Self {
            http,
            base: base.to_owned(),
            cert,
            key_file,
            cert_der: der_for_self,
            key,
        }
    }

    /// Deposits `envelope` (already encoded) for `to` under `id`; returns the HTTP status.
    pub(crate) async fn deposit(&self, to: &str, id: &str, envelope: &[u8]) -> u16 {
        self.http
            .post(format!("{}/v1/mailbox/{to}", self.base))
            .json(&api::DepositRequest {
                id: id.to_owned(),
                envelope: B64.encode(envelope),
            })
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Fetches `target`'s prekey bundle; returns whether it held a one-time prekey.
    pub(crate) async fn bundle_has_one_time_prekey(&self, target: &str) -> bool {
        let response = self
            .http
            .post(format!("{}/v1/users/{target}/bundle", self.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let bundle: api::BundleResponse = response.json().await.unwrap();
        bundle.one_time_prekey.is_some()
    }

    async fn revoke(&self) {
        let response = self
            .http
            .delete(format!("{}/v1/certificates/current", self.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// Whether the node at `address` (named `name`) lets this certificate in.
    fn probe(&self, name: &str, address: &str, ca: &Path) -> bool {
        let out = Command::new(env!("CARGO_BIN_EXE_peerchat"))
            .args(["probe", name, address, "--cert"])
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key_file)
            .arg("--ca")
            .arg(ca)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        out.status.success()
    }
}

/// The `/…/p2p/<id>` address in a daemon's "listening on" line.
fn address_in(line: &str) -> String {
    line.rsplit("listening on ")
        .next()
        .unwrap()
        .split(", ")
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_crl_is_kept_across_a_restart_without_the_rendezvous_and_without_one_only_contacts_get_in()
 {
    let tmp = tempfile::tempdir().unwrap();
    let binary = rendezvous_binary();
    let rv_dir = tmp.path().join("rendezvous");
    let (mut rv, port) = rendezvous_process(&binary, &rv_dir, 0);
    let url = format!("https://localhost:{port}");
    let ca_file = rv_dir.join("ca.pem");
    let ca = CaCertificate::from_pem(&std::fs::read_to_string(&ca_file).unwrap()).unwrap();
    let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let alice_dir = tmp.path().join("alice");
    let alice_args = ["--listen", listen.as_str(), "--crl-refresh-secs", "1"];
    let mut alice = Daemon::start_with(&alice_dir, &url, &alice_args);
    alice.register("alice");
    let carol = Outsider::register("carol", &url, &ca, tmp.path()).await;
    let dave = Outsider::register("dave", &url, &ca, tmp.path()).await;

    // Carol becomes a pinned contact of alice; then her certificate is revoked, and alice's
    // node fetches (and keeps) the CRL that says so.
    let out = alice.cli(&["send", "carol", "hello carol"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    carol.revoke().await;
    let saved = alice_dir.join("crl.der");
    let revoked_at = std::time::SystemTime::now();
    eventually("a CRL fetched after the revocation", || {
        std::fs::metadata(&saved)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > revoked_at + Duration::from_millis(1100))
    })
    .await;

    // Alice restarts while the rendezvous is down.
    alice.kill();
    stop(&mut rv);
    let alice = Daemon::start_with(&alice_dir, &url, &alice_args);
    let address = address_in(&alice.wait_for("listening on"));
    assert!(
        !carol.probe("alice", &address, &ca_file),
        "a revoked certificate got in after a restart without the rendezvous"
    );
    assert!(
        dave.probe("alice", &address, &ca_file),
        "a valid certificate is let in: the saved CRL is in use"
    );

    // With no CRL at all (never fetched), only pinned contacts get in until one is fetched.
    drop(alice);
    std::fs::remove_file(&saved).unwrap();
    let alice = Daemon::start_with(&alice_dir, &url, &alice_args);
    let address = address_in(&alice.wait_for("listening on"));
    assert!(
        !dave.probe("alice", &address, &ca_file),
        "no CRL: a stranger is refused"
    );
    assert!(
        carol.probe("alice", &address, &ca_file),
        "no CRL: a pinned contact is let in (revocation cannot be checked)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_an_online_peer_at_once_and_the_old_install_gets_nothing_more() {
    let tmp = tempfile::tempdir().unwrap();
    let url = crate::binaries::rendezvous(&tmp.path().join("rendezvous")).await;
    let alice_dir = tmp.path().join("alice");
    // No periodic refresh during the test: only the rendezvous's signal can bring the CRL.
    let alice = Daemon::start_with(&alice_dir, &url, &["--crl-refresh-secs", "3600"]);
    let mut old_bob = Daemon::start(&tmp.path().join("bob"), &url);
    alice.register("alice");
    old_bob.register("bob");
    assert!(old_bob.cli(&["send", "alice", "hello"]).status.success());
    assert!(alice.cli(&["send", "bob", "hi bob"]).status.success());
    eventually("both messages", || {
        alice.history_json("bob").len() == 2 && old_bob.history_json("alice").len() == 2
    })
    .await;
    let saved = alice_dir.join("crl.der");
    let before = std::fs::metadata(&saved).unwrap().modified().unwrap();

    // Bob logs in on a new install: the old install's certificate is revoked.
    let new_bob = Daemon::start(&tmp.path().join("bob-new"), &url);
    let out = new_bob.cli(&["login", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("alice's node to take the new CRL", || {
        std::fs::metadata(&saved)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > before)
    })
    .await;

    // Alice's node still has the old install's address cached; it must not get through.
    let out = alice.cli(&["send", "bob", "after the revocation"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !old_bob
            .history_json("alice")
            .iter()
            .any(|m| m.text == "after the revocation"),
        "the revoked install received a message after the revocation was signalled"
    );
    old_bob.kill();
}
