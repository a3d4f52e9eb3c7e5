//! One send is one trace: the real rendezvous and two real daemons export their spans over OTLP
//! (grpc and http/protobuf) to a receiver in this test, which checks that alice's send, the
//! rendezvous's handling of her lookup and bob's receive, store and acknowledgement share one
//! trace id with the right parents, and that no span carries the text, password or API token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use peerchat::driving::api::{SendAnswer, SendBody};
use peerchat::ports::MessageStatus;
use peerchat_pki::Username;
use prost::Message as _;

use crate::binaries::{Daemon, PASSWORD, rendezvous_binary, rendezvous_process_with_env, stop};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    protocol: &'static str,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// Everything the OTLP endpoints received.
#[derive(Debug, Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Received {
    fn take(&self, request: &ExportTraceServiceRequest, protocol: &'static str) {
        self.raw
            .lock()
            .unwrap()
            .extend_from_slice(&request.encode_to_vec());
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                            _ => None,
                        })
                        .collect();
                    spans.push(Span {
                        service: service.clone(),
                        protocol,
                        name: span.name.clone(),
                        trace_id: span.trace_id.clone(),
                        span_id: span.span_id.clone(),
                        parent_span_id: span.parent_span_id.clone(),
                        attributes,
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

#[derive(Debug)]
struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.take(request.get_ref(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(State(received): State<Received>, body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            received.take(&request, "http/protobuf");
            (
                [("content-type", "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
                .into_response()
        }
        Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
    }
}

/// An OTLP receiver on 127.0.0.1: gRPC on one port, HTTP on another.
async fn receiver() -> (Received, String, String) {
    let received = Received::default();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let http_url = format!("http://{}", http.local_addr().unwrap());
    let grpc_app = tonic::service::Routes::new(TraceServiceServer::new(Grpc(received.clone())))
        .into_axum_router();
    let http_app = axum::Router::new()
        .route("/v1/traces", post(http_export))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(grpc, grpc_app).await });
    tokio::spawn(async move { axum::serve(http, http_app).await });
    (received, grpc_url, http_url)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn find<'a>(spans: &'a [Span], service: &str, name: &str, trace: &[u8]) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name && s.trace_id == trace)
}

fn parent_of<'a>(spans: &'a [Span], child: &Span) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.trace_id == child.trace_id && s.span_id == child.parent_span_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_send_is_one_trace_from_alice_through_the_rendezvous_to_bobs_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (received, grpc, http) = receiver().await;
    let grpc_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", grpc.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let http_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", http.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let binary = rendezvous_binary();
    // The standard OTEL_SERVICE_NAME overrides a process's own name; the daemons keep theirs
    // (`peerchat-<user>` once registered).
    let rendezvous_env = [
        grpc_env.as_slice(),
        &[("OTEL_SERVICE_NAME", "rendezvous-east")],
    ]
    .concat();
    let (mut rendezvous, port) =
        rendezvous_process_with_env(&binary, &tmp.path().join("rendezvous"), 0, &rendezvous_env);
    let url = format!("https://localhost:{port}");
    let alice = Daemon::start_with_env(&tmp.path().join("alice"), &url, &[], &grpc_env);
    let bob = Daemon::start_with_env(&tmp.path().join("bob"), &url, &[], &http_env);
    alice.register("alice");
    bob.register("bob");

    let text = "a text no collector may see";
    let (client, base, token) = alice.api();
    let answer: SendAnswer = client
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(&token)
        .json(&SendBody {
            to: Username::new("bob").unwrap(),
            text: text.into(),
            id: None,
            reply_to: None,
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer.status, MessageStatus::Sent, "delivered directly");
    let id = answer.id.to_string();

    // Spans arrive in batches; wait until bob's side of this message is in.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (spans, send) = loop {
        let spans = received.spans();
        let send = spans
            .iter()
            .find(|s| {
                s.service == "peerchat-alice"
                    && s.name == "usecase.send"
                    && s.attributes.get("id") == Some(&id)
            })
            .cloned();
        if let Some(send) = &send
            && find(&spans, "peerchat-bob", "store.commit", &send.trace_id).is_some()
            && find(&spans, "rendezvous-east", "http", &send.trace_id).is_some()
        {
            break (spans, send.clone());
        }
        assert!(
            Instant::now() < deadline,
            "the trace never completed; spans so far: {:#?}",
            spans
                .iter()
                .map(|s| (
                    &s.service,
                    &s.name,
                    hex(&s.trace_id),
                    hex(&s.span_id),
                    hex(&s.parent_span_id)
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let trace = send.trace_id.clone();

    // Alice: send → deliver → p2p.deliver.
    let deliver = find(&spans, "peerchat-alice", "usecase.deliver", &trace).unwrap();
    assert_eq!(deliver.parent_span_id, send.span_id);
    let p2p_deliver = find(&spans, "peerchat-alice", "p2p.deliver", &trace).unwrap();
    assert_eq!(p2p_deliver.parent_span_id, deliver.span_id);

    // The rendezvous: its handler is a child of alice's call, in the same trace.
    let handler = find(&spans, "rendezvous-east", "http", &trace).unwrap();
    let call = parent_of(&spans, handler).expect("the handler's parent was exported");
    assert_eq!(
        (call.service.as_str(), call.name.as_str()),
        ("peerchat-alice", "rendezvous.call")
    );
    assert!(
        spans.iter().any(|s| s.service == "rendezvous-east"
            && s.trace_id == trace
            && s.parent_span_id == handler.span_id),
        "the rendezvous's service spans sit under its handler"
    );
    assert!(
        !spans.iter().any(|s| s.service == "rendezvous"),
        "OTEL_SERVICE_NAME names the rendezvous"
    );

    // Bob: p2p.inbound is a child of alice's p2p.deliver; receive and store under it.
    let inbound = find(&spans, "peerchat-bob", "p2p.inbound", &trace).unwrap();
    assert_eq!(inbound.parent_span_id, p2p_deliver.span_id);
    assert_eq!(
        inbound.attributes.get("ack").map(String::as_str),
        Some("Stored")
    );
    let receive = find(&spans, "peerchat-bob", "usecase.receive", &trace).unwrap();
    assert_eq!(receive.parent_span_id, inbound.span_id);
    let stored = find(&spans, "peerchat-bob", "store.commit", &trace).unwrap();
    let mut ancestor = parent_of(&spans, stored).unwrap();
    while ancestor.span_id != receive.span_id {
        ancestor = parent_of(&spans, ancestor).expect("store.commit under receive");
    }

    // Both protocols carried spans.
    assert!(
        spans
            .iter()
            .any(|s| s.protocol == "grpc" && s.service == "peerchat-alice")
    );
    assert!(
        spans
            .iter()
            .any(|s| s.protocol == "http/protobuf" && s.service == "peerchat-bob")
    );

    // No secret in any span.
    let raw = received.raw.lock().unwrap().clone();
    for secret in [text, PASSWORD, token.as_str()] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a span carried a secret"
        );
    }
    drop((alice, bob));
    stop(&mut rendezvous);
}
