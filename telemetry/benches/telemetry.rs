//! What tracing costs a message's hot path: a span, and taking out its trace context (done once
//! per envelope and per rendezvous call), with no exporter (the default) and with one.
//!
//!   cargo bench -p peerchat-telemetry --bench telemetry

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use peerchat_telemetry::{continue_trace, traceparent};
use tracing_subscriber::layer::SubscriberExt;

/// Drops every span (the cost measured is the SDK's, not a network's).
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

fn hot_path() -> Option<String> {
    let span = tracing::info_span!("usecase.send", peer = "bob");
    let _entered = span.enter();
    let carried = traceparent();
    let receive = tracing::info_span!(parent: None, "p2p.inbound");
    continue_trace(&receive, carried.as_deref());
    receive.in_scope(|| ());
    carried
}

/// The same spans without taking out or continuing a trace context: the baseline.
fn plain_spans() {
    let span = tracing::info_span!("usecase.send", peer = "bob");
    let _entered = span.enter();
    let receive = tracing::info_span!(parent: None, "p2p.inbound");
    receive.in_scope(|| ());
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("span + trace context");
    // No subscriber at all.
    group.bench_function("no subscriber", |b| b.iter(hot_path));
    // Logs only: what a process runs when OTEL_EXPORTER_OTLP_ENDPOINT is unset.
    let logs_only = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    tracing::subscriber::with_default(logs_only, || {
        group.bench_function("export off: plain spans (baseline)", |b| {
            b.iter(plain_spans)
        });
        group.bench_function("export off: spans + trace context", |b| {
            b.iter(|| assert!(hot_path().is_none()))
        });
    });
    // Exporting: the OpenTelemetry layer and a batch processor.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    let exporting = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
    tracing::subscriber::with_default(exporting, || {
        group.bench_function("export on", |b| b.iter(|| assert!(hot_path().is_some())));
    });
    group.finish();
    provider.shutdown().unwrap();
}

use tracing_subscriber::Layer as _;

criterion_group!(benches, bench);
criterion_main!(benches);
