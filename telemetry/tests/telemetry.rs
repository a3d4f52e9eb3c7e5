//! Trace context leaves one span and is continued by another, as it does between processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanId, TracerProvider};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use peerchat_telemetry::{continue_trace, traceparent};
use tracing_subscriber::layer::SubscriberExt;

/// Keeps every exported span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// Runs `f` under a subscriber that exports to memory; returns the finished spans.
fn traced(f: impl FnOnce()) -> Vec<SpanData> {
    let collect = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collect.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, f);
    provider.force_flush().unwrap();
    collect.0.lock().unwrap().clone()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

#[test]
fn a_continued_trace_makes_the_remote_span_the_parent() {
    let mut carried = None;
    let spans = traced(|| {
        let send = tracing::info_span!("send");
        carried = send.in_scope(traceparent);
        let carried = carried.clone();
        drop(send);
        // The receiving side: a fresh root span, continued from the carried context.
        let receive = tracing::info_span!(parent: None, "receive");
        continue_trace(&receive, carried.as_deref());
        receive.in_scope(|| tracing::info_span!("store").in_scope(|| ()));
    });
    let send = named(&spans, "send");
    let receive = named(&spans, "receive");
    let store = named(&spans, "store");
    let traceparent = carried.expect("an exported span has a trace context");
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            send.span_context.trace_id(),
            send.span_context.span_id()
        )
    );
    assert_eq!(
        receive.span_context.trace_id(),
        send.span_context.trace_id()
    );
    assert_eq!(receive.parent_span_id, send.span_context.span_id());
    assert!(receive.parent_span_is_remote);
    assert_eq!(store.span_context.trace_id(), send.span_context.trace_id());
    assert_eq!(store.parent_span_id, receive.span_context.span_id());
}

#[test]
fn a_malformed_or_missing_context_starts_a_new_trace() {
    for carried in [Some("00-zz-not-a-traceparent"), Some(""), None] {
        let spans = traced(|| {
            let send = tracing::info_span!("send");
            send.in_scope(|| ());
            let receive = tracing::info_span!(parent: None, "receive");
            continue_trace(&receive, carried);
            receive.in_scope(|| ());
        });
        let send = named(&spans, "send");
        let receive = named(&spans, "receive");
        assert_ne!(
            receive.span_context.trace_id(),
            send.span_context.trace_id()
        );
        assert_eq!(receive.parent_span_id, SpanId::INVALID, "{carried:?}");
    }
}

#[test]
fn without_an_exporter_nothing_is_carried() {
    let subscriber = tracing_subscriber::registry();
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("send");
        assert_eq!(span.in_scope(traceparent), None);
    });
}
