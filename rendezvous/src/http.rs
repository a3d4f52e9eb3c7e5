//! The HTTPS API: routes, extractors, metrics, and the TLS server loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use peerchat_pki::{Username, VerifiedPeer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api;
use crate::connections::{Activity, PerSource};
use crate::error::ApiError;
use crate::limits::Limits;
use crate::service::{Caller, Rendezvous};
use crate::store::Store;
use crate::wire;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; further ones wait in the accept queue.
const MAX_CONNECTIONS: usize = 4096;
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the TLS layer learnt about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client certificate's identity, if one was presented.
    pub peer: Option<VerifiedPeer>,
    /// The client's address.
    pub remote: SocketAddr,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    method: String,
}

struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    users: Gauge,
    envelopes: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("peerchat_rendezvous");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let users = Gauge::default();
        let envelopes = Gauge::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request",
            latency.clone(),
        );
        registry.register("registered_users", "Accounts", users.clone());
        registry.register(
            "mailbox_envelopes",
            "Envelopes waiting in mailboxes",
            envelopes.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            users,
            envelopes,
        }
    }
}

/// Shared state of the handlers (not `Debug`: it holds the metrics registry).
struct AppState<S: Store> {
    service: Arc<Rendezvous<S>>,
    metrics: Metrics,
    relay: Option<crate::relay::Relay>,
}

type Shared<S> = Arc<AppState<S>>;

/// The authenticated caller of a protected route.
struct Authenticated(Caller);

impl<S: Store> FromRequestParts<Shared<S>> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared<S>) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectionInfo>()
            .and_then(|c| c.peer.as_ref());
        Ok(Authenticated(state.service.authenticate(peer).await?))
    }
}

/// A JSON body read within the size limit; every failure is a JSON error.
struct ApiJson<T>(T);

impl<S: Store, T: DeserializeOwned> FromRequest<Shared<S>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Shared<S>) -> Result<Self, ApiError> {
        let limits = state.service.limits();
        let limit = limits.max_body_bytes;
        let read = axum::body::to_bytes(request.into_body(), limit);
        let bytes = tokio::time::timeout(limits.body_read_timeout, read)
            .await
            .map_err(|_| {
                ApiError::request_timeout(format!(
                    "the request body did not arrive within {} s",
                    limits.body_read_timeout.as_secs()
                ))
            })?
            .map_err(|_| ApiError::too_large(format!("a request body is at most {limit} bytes")))?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            // serde's "at line 1 column 20" means nothing to a person.
            let text = e.to_string();
            let reason = text
                .rfind(" at line ")
                .map_or(text.as_str(), |at| &text[..at]);
            ApiError::bad_request(
                "malformed_json",
                format!("the request body is not valid: {reason}"),
            )
        })
    }
}

fn client_ip(info: Option<&ConnectionInfo>) -> std::net::IpAddr {
    info.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.remote.ip())
}

fn username(raw: &str) -> Result<Username, ApiError> {
    Username::new(raw).map_err(|e| ApiError::bad_request("bad_username", e.to_string()))
}

/// The API router over `service`.
pub fn router<S: Store>(service: Arc<Rendezvous<S>>) -> Router {
    routers(service).0
}

/// The API router over `service`, and the operator's router (`GET /metrics`, Prometheus text)
/// that reports on it. The second is served on its own address, never beside the API.
pub fn routers<S: Store>(service: Arc<Rendezvous<S>>) -> (Router, Router) {
    routers_with_relay(service, None)
}

/// [`routers`] for a rendezvous that runs `relay` too: `GET /v1/relay` says where it is, and
/// `/metrics` counts its reservations and circuits.
pub fn routers_with_relay<S: Store>(
    service: Arc<Rendezvous<S>>,
    relay: Option<crate::relay::Relay>,
) -> (Router, Router) {
    let mut counters = Metrics::new();
    if let Some(relay) = &relay {
        relay.metrics().register(&mut counters.registry);
    }
    let state = Arc::new(AppState {
        service,
        metrics: counters,
        relay,
    });
    let operator = Router::new()
        .route("/metrics", get(metrics::<S>))
        .fallback(not_found)
        .with_state(state.clone());
    (api_router(state), operator)
}

fn api_router<S: Store>(state: Shared<S>) -> Router {
    Router::new()
        .route("/v1/healthz", get(health))
        .route("/v1/ca", get(ca::<S>))
        .route("/v1/crl", get(crl::<S>))
        .route("/v1/relay", get(relay::<S>))
        .route("/v1/accounts", post(register::<S>))
        .route("/v1/sessions", post(login::<S>))
        .route("/v1/totp", post(totp_enrol::<S>))
        .route("/v1/totp/confirm", post(totp_confirm::<S>))
        .route("/v1/certificates/renew", post(renew::<S>))
        .route("/v1/certificates/current", delete(revoke::<S>))
        .route("/v1/prekeys", get(prekey_status::<S>))
        .route("/v1/prekeys/signed", put(upload_signed_prekey::<S>))
        .route("/v1/prekeys/one-time", post(upload_one_time_prekeys::<S>))
        .route("/v1/users/{username}", get(lookup::<S>))
        .route("/v1/users/{username}/bundle", post(bundle::<S>))
        .route("/v1/presence", put(announce::<S>))
        .route("/v1/mailbox/{username}", get(fetch::<S>).post(deposit::<S>))
        .route("/v1/mailbox/{username}/{id}", delete(ack::<S>))
        .route("/v1/blobs/{id}", put(park::<S>).delete(unpark::<S>))
        .route(
            "/v1/blobs/{id}/{index}",
            put(park_chunk::<S>).get(parked_chunk::<S>),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe::<S>))
        .with_state(state)
}

async fn observe<S: Store>(
    State(state): State<Shared<S>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let span = tracing::info_span!("http", %method, %route);
    // The caller's trace goes on here: one message is one trace across processes.
    peerchat_telemetry::continue_trace(
        &span,
        request
            .headers()
            .get(peerchat_telemetry::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    state
        .metrics
        .latency
        .get_or_create(&LatencyLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RouteLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no_such_route", "no such route")
}

async fn health() -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
    })
}

async fn metrics<S: Store>(State(state): State<Shared<S>>) -> Result<Response, ApiError> {
    let store = state.service.store();
    state
        .metrics
        .users
        .set(store.count_accounts().await? as i64);
    state
        .metrics
        .envelopes
        .set(store.count_envelopes().await? as i64);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry)
        .map_err(|_| ApiError::internal())?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn ca<S: Store>(State(state): State<Shared<S>>) -> Json<api::CaResponse> {
    let ca = state.service.ca().certificate();
    Json(api::CaResponse {
        certificate: ca.to_pem(),
        fingerprint: ca.fingerprint().to_string(),
    })
}

async fn relay<S: Store>(
    State(state): State<Shared<S>>,
) -> Result<Json<api::RelayResponse>, ApiError> {
    let relay = state
        .relay
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no_relay", "this rendezvous runs no relay"))?;
    Ok(Json(api::RelayResponse {
        peer_id: relay.peer_id().to_string(),
        addresses: relay.addresses().iter().map(ToString::to_string).collect(),
    }))
}

async fn crl<S: Store>(State(state): State<Shared<S>>) -> Result<Response, ApiError> {
    let crl = state.service.crl().await?;
    Ok((
        [(header::CONTENT_TYPE, "application/pkix-crl")],
        Bytes::from(crl.der().to_vec()),
    )
        .into_response())
}

async fn register<S: Store>(
    State(state): State<Shared<S>>,
    info: Option<axum::Extension<ConnectionInfo>>,
    ApiJson(request): ApiJson<api::RegisterRequest>,
) -> Result<(StatusCode, Json<api::CertificateResponse>), ApiError> {
    let ip = client_ip(info.as_deref());
    let csr = wire::decode_b64("csr", &request.csr)?;
    let issued = state
        .service
        .register(ip, &request.username, request.password, &csr)
        .await?;
    Ok((StatusCode::CREATED, Json(wire::certificate(issued))))
}

async fn login<S: Store>(
    State(state): State<Shared<S>>,
    info: Option<axum::Extension<ConnectionInfo>>,
    ApiJson(request): ApiJson<api::LoginRequest>,
) -> Result<Json<api::CertificateResponse>, ApiError> {
    let ip = client_ip(info.as_deref());
    let csr = wire::decode_b64("csr", &request.csr)?;
    let issued = state
        .service
        .login(
            ip,
            &request.username,
            request.password,
            request.totp.as_deref(),
            &csr,
        )
        .await?;
    Ok(Json(wire::certificate(issued)))
}

async fn totp_enrol<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<api::TotpEnrolment>, ApiError> {
    let enrolment = state.service.totp_enrol(&caller).await?;
    Ok(Json(api::TotpEnrolment {
        secret: enrolment.secret,
        uri: enrolment.uri,
    }))
}

async fn totp_confirm<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<api::TotpConfirm>,
) -> Result<StatusCode, ApiError> {
    state.service.totp_confirm(&caller, &request.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn renew<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<api::RenewRequest>,
) -> Result<Json<api::CertificateResponse>, ApiError> {
    let csr = wire::decode_b64("csr", &request.csr)?;
    Ok(Json(wire::certificate(
        state.service.renew(&caller, &csr).await?,
    )))
}

async fn revoke<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
) -> Result<StatusCode, ApiError> {
    state.service.revoke(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn prekey_status<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<api::PreKeyStatus>, ApiError> {
    Ok(Json(wire::supply(
        state.service.prekey_status(&caller).await?,
    )))
}

async fn upload_signed_prekey<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<api::SignedPreKeyWire>,
) -> Result<Json<api::PreKeyStatus>, ApiError> {
    let record = wire::signed_prekey(&request)?;
    Ok(Json(wire::supply(
        state.service.upload_signed_prekey(&caller, record).await?,
    )))
}

async fn upload_one_time_prekeys<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<api::OneTimePreKeysUpload>,
) -> Result<Json<api::PreKeyStatus>, ApiError> {
    let keys = request
        .keys
        .iter()
        .map(wire::one_time_prekey)
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(wire::supply(
        state.service.upload_one_time_prekeys(&caller, keys).await?,
    )))
}

async fn lookup<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path(target): Path<String>,
) -> Result<Json<api::LookupResponse>, ApiError> {
    Ok(Json(wire::lookup(
        state.service.lookup(&caller, &username(&target)?).await?,
    )))
}

async fn bundle<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path(target): Path<String>,
) -> Result<Json<api::BundleResponse>, ApiError> {
    Ok(Json(wire::bundle(
        state.service.bundle(&caller, &username(&target)?).await?,
    )))
}

async fn announce<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<api::PresenceRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .service
        .announce(
            &caller,
            request.addresses,
            Duration::from_secs(request.ttl_secs),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deposit<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path(recipient): Path<String>,
    ApiJson(request): ApiJson<api::DepositRequest>,
) -> Result<(StatusCode, Json<api::DepositResponse>), ApiError> {
    let id = wire::envelope_id(&request.id)?;
    let envelope = wire::decode_b64("envelope", &request.envelope)?;
    let stored = state
        .service
        .deposit(&caller, &username(&recipient)?, id, envelope)
        .await?;
    let status = match stored {
        crate::service::Stored::New => api::DepositStatus::Stored,
        crate::service::Stored::Duplicate => api::DepositStatus::Duplicate,
    };
    Ok((StatusCode::ACCEPTED, Json(api::DepositResponse { status })))
}

async fn fetch<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path(owner): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<api::MailboxResponse>, ApiError> {
    let mut wait = Duration::ZERO;
    let mut known_crl = None;
    for pair in query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("wait", secs)) => {
                let secs: u64 = secs.parse().map_err(|_| {
                    ApiError::bad_request("bad_query", "`wait` is a number of seconds")
                })?;
                wait = Duration::from_secs(secs);
            }
            Some(("crl", number)) => {
                known_crl =
                    Some(number.parse().map_err(|_| {
                        ApiError::bad_request("bad_query", "`crl` is a CRL number")
                    })?);
            }
            _ => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    "the parameters are `wait` and `crl`",
                ));
            }
        }
    }
    Ok(Json(wire::mailbox(
        state
            .service
            .fetch(&caller, &username(&owner)?, wait, known_crl)
            .await?,
    )))
}

async fn ack<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path((owner, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = wire::envelope_id(&id)?;
    state.service.ack(&caller, &username(&owner)?, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn park<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<api::ParkRequest>,
) -> Result<StatusCode, ApiError> {
    let readers = request
        .readers
        .iter()
        .map(|r| username(r))
        .collect::<Result<_, _>>()?;
    let spec = crate::service::blobs::BlobSpec {
        size: request.size,
        chunks: request.chunks,
        readers,
    };
    state.service.park(&caller, &id, spec)?;
    Ok(StatusCode::CREATED)
}

fn chunk_index(raw: &str) -> Result<u32, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("bad_blob", "a chunk index is a number"))
}

async fn park_chunk<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path((id, index)): Path<(String, String)>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let index = chunk_index(&index)?;
    let limit = crate::service::blobs::MAX_BLOB_CHUNK_BYTES;
    let timeout = state.service.limits().body_read_timeout;
    let read = axum::body::to_bytes(request.into_body(), limit);
    let bytes = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| {
            ApiError::request_timeout(format!(
                "the chunk did not arrive within {} s",
                timeout.as_secs()
            ))
        })?
        .map_err(|_| ApiError::too_large(format!("a chunk is at most {limit} bytes")))?;
    let service = state.service.clone();
    tokio::task::spawn_blocking(move || service.park_chunk(&caller, &id, index, &bytes))
        .await
        .map_err(|_| ApiError::internal())??;
    Ok(StatusCode::NO_CONTENT)
}

async fn parked_chunk<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path((id, index)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let index = chunk_index(&index)?;
    let service = state.service.clone();
    let chunk = tokio::task::spawn_blocking(move || service.parked_chunk(&caller, &id, index))
        .await
        .map_err(|_| ApiError::internal())??;
    match chunk {
        Some(bytes) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Bytes::from(bytes),
        )
            .into_response()),
        None => Err(ApiError::not_found(
            "no_such_chunk",
            "that chunk is not parked here",
        )),
    }
}

async fn unpark<S: Store>(
    State(state): State<Shared<S>>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.unpark(&caller, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then lets requests in flight
/// finish (up to a grace period).
///
/// Connections are bounded per source ([`Limits::max_connections_per_source`]) from the TCP
/// accept on, and closed by the server once they idle ([`Limits::idle_timeout`]), so that clients
/// which open connections and send nothing cannot keep the service from others.
pub async fn serve<S: Store>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<Rendezvous<S>>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let limits = service.limits().clone();
    let per_source = PerSource::new(limits.max_connections_per_source);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Every connection task holds a receiver: `closed()` tells when the last one has ended.
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(source_slot) = per_source.admit(remote.ip()) else {
            tracing::debug!(%remote, "connection refused: its source holds its maximum");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            acceptor: acceptor.clone(),
            app: app.clone(),
            trust: service.trust(),
            limits: limits.clone(),
            remote,
            stopping: stopping.clone(),
        };
        tokio::spawn(async move {
            let _slots = (permit, source_slot);
            connection.serve(tcp).await;
        });
    }
    drop(listener);
    service.close();
    let _ = stop.send(true);
    drop(stopping);
    if tokio::time::timeout(SHUTDOWN_GRACE, stop.closed())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the grace period were dropped");
    }
    Ok(())
}

/// One accepted TCP connection and what serving it needs.
struct Connection {
    acceptor: TlsAcceptor,
    app: Router,
    trust: Arc<peerchat_pki::TrustStore>,
    limits: Limits,
    remote: SocketAddr,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, tcp: tokio::net::TcpStream) {
        let remote = self.remote;
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                return;
            }
        };
        let peer = tls.get_ref().1.peer_certificates().and_then(|certs| {
            peerchat_pki::tls::verified_peer(Some(certs), &self.trust, SystemTime::now()).ok()
        });
        let info = ConnectionInfo { peer, remote };
        let activity = Activity::new();
        let in_flight = activity.clone();
        let service = self
            .app
            .map_request(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(info.clone());
                    request.map(Body::new)
                },
            )
            .map_future(move |answer| {
                let request = in_flight.begin();
                async move {
                    let response = answer.await;
                    drop(request);
                    response
                }
            });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let idle_timeout = self.limits.idle_timeout;
        let mut closing = *self.stopping.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            // While a request is in flight, look again one idle period later.
            let check_at = activity
                .idle_since()
                .map_or(Instant::now() + idle_timeout, |since| since + idle_timeout);
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(%remote, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(check_at), if !closing => {
                    if activity.idle_since().is_some_and(|since| since.elapsed() >= idle_timeout) {
                        // No request is in flight, so nothing is lost by closing at once; a
                        // graceful close would wait for headers that may never come.
                        tracing::debug!(%remote, "closing an idle connection");
                        return;
                    }
                }
                changed = self.stopping.changed(), if !closing => {
                    let _ = changed;
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
