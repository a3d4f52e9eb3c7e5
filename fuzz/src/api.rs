//! The rendezvous's and the node's HTTP APIs, each its real router over an in-memory world: the
//! first byte of an input picks a route that takes a JSON body, the rest is the body. No input
//! may crash a handler or get a 500 (an internal error); the world persists across inputs, as a
//! server's does, so limits such as a full mailbox are reached and must answer as designed.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use peerchat::daemon::{BroadcastNotifier, LateNetwork};
use peerchat::driven::memory::MemoryStore;
use peerchat::driven::rendezvous_inprocess::InProcessDirectory;
use peerchat::driving::api::{ApiState, router};
use peerchat::ports::SystemClock;
use peerchat::usecases::Node;
use peerchat_pki::{CertificateAuthority, SigningKey, Username, VerifiedPeer};
use peerchat_rendezvous::http::ConnectionInfo;
use peerchat_rendezvous::limits::{Limits, Rate};
use peerchat_rendezvous::memory_store::MemoryStore as RendezvousMemory;
use peerchat_rendezvous::service::Rendezvous;
use tower::ServiceExt;

const PASSWORD: &str = "correct horse battery";
const TOKEN: &str = "fuzz-token";

/// Routes of the rendezvous that read a JSON body, and whether they are called as alice (with
/// her verified client certificate) or anonymously.
const RENDEZVOUS_ROUTES: &[(Method, &str, bool)] = &[
    (Method::POST, "/v1/accounts", false),
    (Method::POST, "/v1/sessions", false),
    (Method::POST, "/v1/totp/confirm", true),
    (Method::POST, "/v1/certificates/renew", true),
    (Method::PUT, "/v1/prekeys/signed", true),
    (Method::POST, "/v1/prekeys/one-time", true),
    (Method::POST, "/v1/users/bob/bundle", true),
    (Method::PUT, "/v1/presence", true),
    (Method::POST, "/v1/mailbox/bob", true),
    (
        Method::PUT,
        "/v1/blobs/00000000000000000000000000000009",
        true,
    ),
];

/// Routes of the node's local API that read a JSON body. Those that name files on this machine
/// (backups, sending a file by path) are left out: a fuzzer must not write or read the host's
/// files.
const NODE_ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/api/v1/register"),
    (Method::POST, "/api/v1/login"),
    (Method::POST, "/api/v1/totp/confirm"),
    (Method::POST, "/api/v1/contacts"),
    (Method::POST, "/api/v1/messages"),
    (Method::POST, "/api/v1/groups"),
    (Method::PUT, "/api/v1/profile"),
    (Method::PUT, "/api/v1/settings"),
    (Method::POST, "/api/v1/conversations/bob/typing"),
    (Method::POST, "/api/v1/contacts/bob/verify"),
];

type NodePorts = (
    MemoryStore,
    InProcessDirectory<RendezvousMemory>,
    LateNetwork,
    BroadcastNotifier,
    SystemClock,
);

struct World {
    runtime: tokio::runtime::Runtime,
    rendezvous: Router,
    alice: VerifiedPeer,
    node: Router,
}

fn limits() -> Limits {
    let generous = Rate {
        burst: 1_000_000,
        period: Duration::from_millis(1),
    };
    Limits {
        argon2_memory_kib: 256,
        auth_per_prefix: generous,
        registrations: generous,
        login_per_account_prefix: generous,
        login_per_account: generous,
        lookups_per_user: generous,
        one_time_prekeys_per_pair: generous,
        deposits_per_user: generous,
        ..Limits::default()
    }
}

async fn new_service() -> Arc<Rendezvous<RendezvousMemory>> {
    let fixture = crate::Fixture::get();
    let ca =
        CertificateAuthority::generate("peerchat fuzz rendezvous", fixture.now, &mut fixture.rng())
            .expect("CA");
    Arc::new(
        Rendezvous::new(RendezvousMemory::default(), ca, limits())
            .await
            .expect("service"),
    )
}

async fn registered(service: &Rendezvous<RendezvousMemory>, name: &str, seed: u8) -> VerifiedPeer {
    let username = Username::new(name).expect("a username");
    let key = SigningKey::from_bytes(&[seed; 32]);
    let csr = peerchat_pki::build_csr(&key, &username).expect("CSR");
    let issued = service
        .register([127, 0, 0, 1].into(), &username, PASSWORD.into(), &csr)
        .await
        .expect("register");
    let der = pem::parse(&issued.certificate_pem).expect("PEM");
    peerchat_pki::verify(
        &[der.contents().to_vec().into()],
        &service.ca().certificate().clone(),
        None,
        std::time::SystemTime::now(),
    )
    .expect("verifies")
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (rendezvous, alice, node) = runtime.block_on(async {
            let service = new_service().await;
            let alice = registered(&service, "alice", 1).await;
            registered(&service, "bob", 2).await;
            let rendezvous = peerchat_rendezvous::http::router(service);

            let directory_service = new_service().await;
            registered(&directory_service, "bob", 2).await;
            let node = Arc::new(Node::new(
                MemoryStore::default(),
                InProcessDirectory::new(directory_service),
                LateNetwork::default(),
                BroadcastNotifier::default(),
                SystemClock,
            ));
            node.register(&Username::new("alice").expect("a username"), PASSWORD)
                .await
                .expect("register");
            let events = BroadcastNotifier::default();
            let state_dir =
                std::env::temp_dir().join(format!("peerchat-fuzz-{}", std::process::id()));
            let api = router::<NodePorts>(ApiState {
                node,
                token: TOKEN.into(),
                subscribe: Box::new(move || events.0.subscribe()),
                ui: peerchat::driving::ui::Sessions::persistent(state_dir.join("ui-sessions")),
                closing: tokio_util::sync::CancellationToken::new(),
                uploads: state_dir.join("uploads"),
            });
            (rendezvous, alice, api)
        });
        World {
            runtime,
            rendezvous,
            alice,
            node,
        }
    })
}

/// `request` through `router`, which must not answer 500. Other 5xx answers are designed ones
/// (507 when bob's mailbox is full); a 500 is an internal error, a bug.
fn answer(runtime: &tokio::runtime::Runtime, router: &Router, request: Request<Body>) {
    let route = format!("{} {}", request.method(), request.uri());
    let response = runtime
        .block_on(router.clone().oneshot(request))
        .expect("the router answers");
    assert!(
        response.status().as_u16() != 500,
        "{route} answered {}",
        response.status()
    );
}

/// A JSON body to one of the rendezvous's routes.
pub fn rendezvous(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let world = world();
    let (method, path, as_alice) = &RENDEZVOUS_ROUTES[selector as usize % RENDEZVOUS_ROUTES.len()];
    let mut request = Request::builder()
        .method(method.clone())
        .uri(*path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    request.extensions_mut().insert(ConnectionInfo {
        peer: as_alice.then(|| world.alice.clone()),
        remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
    });
    answer(&world.runtime, &world.rendezvous, request);
}

/// A JSON body to one of the node's local API routes, with the bearer token.
pub fn node(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let world = world();
    let (method, path) = &NODE_ROUTES[selector as usize % NODE_ROUTES.len()];
    let request = Request::builder()
        .method(method.clone())
        .uri(*path)
        .header(header::HOST, "127.0.0.1")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    answer(&world.runtime, &world.node, request);
}
