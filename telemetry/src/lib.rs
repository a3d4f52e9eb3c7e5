//! Tracing for every peerchat process.
//!
//! Logs always go to stderr, filtered by `RUST_LOG`. Spans are exported over OTLP only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the standard
//! `OTEL_EXPORTER_OTLP_*` variables choose the protocol (`grpc` or `http/protobuf`, the default),
//! headers and timeout, and `OTEL_SERVICE_NAME` overrides the process's own service name. When
//! nothing is set, no exporter exists and spans cost what plain `tracing` spans cost.
//!
//! The W3C `traceparent` of the current span can be taken out with [`traceparent`] (to travel in
//! an HTTP header or an envelope) and continued on the receiving side with [`continue_trace`], so
//! that one message is one trace across processes. A `traceparent` carries random ids and flags
//! only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The HTTP header (and envelope field) carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Crates whose own spans would trace the exporter exporting (a feedback loop).
const EXPORTER_CRATES: [&str; 5] = ["h2", "hyper", "hyper_util", "tonic", "tower"];

/// The process's tracing, installed once with [`Telemetry::init`].
pub struct Telemetry {
    /// While spans are exported: the provider, and where a new service name goes.
    exporting: Option<(SdkTracerProvider, Arc<Mutex<Option<Resource>>>)>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.exporting.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Installs the global subscriber: logs to stderr, filtered by `RUST_LOG` or else
    /// `default_filter` (e.g. `"info"`); and, when the environment asks for it, spans exported
    /// over OTLP as `service` (unless `OTEL_SERVICE_NAME` names it). Spans are exported at info
    /// level whatever `RUST_LOG` says about logs. Call it inside the Tokio runtime the process
    /// runs on, which must outlive [`Telemetry::shutdown`]. A failure to set up the exporter is
    /// reported on stderr and leaves logging working.
    pub fn init(default_filter: &str, service: &str) -> Telemetry {
        let logs = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(default_filter))
            .unwrap_or_else(|_| EnvFilter::new("info"));
        let exporting = if Self::export_requested() {
            match provider(service) {
                Ok(exporting) => Some(exporting),
                Err(e) => {
                    eprintln!("spans are not exported: {e}");
                    None
                }
            }
        } else {
            None
        };
        let spans = exporting.as_ref().map(|(provider, _)| {
            // The exporter's own transport crates are never traced (a feedback loop).
            let targets = EXPORTER_CRATES.iter().fold(
                Targets::new().with_default(Level::INFO),
                |targets, krate| targets.with_target(*krate, LevelFilter::OFF),
            );
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("peerchat"))
                .with_tracked_inactivity(false)
                .with_filter(targets)
        });
        let _ = tracing_subscriber::registry()
            .with(spans)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(logs),
            )
            .try_init();
        Telemetry { exporting }
    }

    /// Whether the environment asks for span export.
    fn export_requested() -> bool {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled =
            std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        !disabled
            && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    }

    /// Exports spans from now on as `service` (unless `OTEL_SERVICE_NAME` names it), e.g. once a
    /// node knows its user. Spans still buffered go out under the new name too.
    pub fn rename(&self, service: &str) {
        if let Some((_, pending)) = &self.exporting
            && let Ok(mut pending) = pending.lock()
        {
            *pending = Some(resource(service));
        }
    }

    /// Exports the spans still buffered and stops exporting. Call it before the runtime stops.
    pub async fn shutdown(&self) {
        let Some((provider, _)) = &self.exporting else {
            return;
        };
        let provider = provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
    }
}

/// Why spans cannot be exported.
#[derive(Debug, thiserror::Error)]
enum TelemetryError {
    /// Exporting needs a Tokio runtime (the OTLP clients run on it).
    #[error("span export needs a Tokio runtime")]
    NoRuntime,
    /// The OTLP exporter could not be built from the `OTEL_EXPORTER_OTLP_*` settings.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The service's resource: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` win over `service`.
fn resource(service: &str) -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty());
    if named_by_env {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(service.to_owned())
            .build()
    }
}

/// The OTLP pipeline: the exporter chosen by the `OTEL_EXPORTER_OTLP_*` variables, behind a
/// batch processor.
#[allow(clippy::type_complexity)]
fn provider(
    service: &str,
) -> Result<(SdkTracerProvider, Arc<Mutex<Option<Resource>>>), TelemetryError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let pending = Arc::new(Mutex::new(None));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(tokio::sync::Mutex::new(exporter)),
            pending: pending.clone(),
            runtime,
        })
        .with_resource(resource(service))
        .build();
    Ok((provider, pending))
}

/// The W3C `traceparent` of the current span, or `None` when no span is being exported.
pub fn traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span named by `traceparent`. Does nothing for `None` or a
/// malformed value (the span stays in the local trace), or when spans are not exported. Call it
/// before the span is first entered.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Runs each export on the Tokio runtime the exporter was built on: the batch processor exports
/// from its own thread, while the OTLP clients (tonic, hyper) need a runtime's reactor and timers.
/// Also hands the exporter a new resource when the service is renamed.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<tokio::sync::Mutex<E>>,
    pending: Arc<Mutex<Option<Resource>>>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let renamed = self.pending.lock().ok().and_then(|mut p| p.take());
        let task = self.runtime.spawn(async move {
            let mut exporter = inner.lock().await;
            if let Some(resource) = renamed {
                exporter.set_resource(&resource);
            }
            exporter.export(batch).await
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self.inner.try_lock() {
            Ok(exporter) => exporter.shutdown_with_timeout(timeout),
            Err(_) => Ok(()),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        match self.inner.try_lock() {
            Ok(exporter) => exporter.force_flush(),
            Err(_) => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Ok(mut exporter) = self.inner.try_lock() {
            exporter.set_resource(resource);
        }
    }
}
