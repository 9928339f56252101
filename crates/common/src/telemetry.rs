//! Logs, traces and trace-context propagation.
//!
//! [`init`] installs one `tracing` subscriber: JSON (or pretty) logs with
//! an env-filter, plus OpenTelemetry export over OTLP/gRPC when
//! `telemetry.otlp_endpoint` is set. It returns a guard that flushes
//! pending spans when dropped, so the last requests before a shutdown are
//! not lost from the trace backend.

mod log_ids;
pub mod propagation;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use propagation::TraceHeaders;

use crate::config::{Invalid, Validate};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, with the current span's fields and, inside
    /// a span, its `trace_id` and `span_id`: what log pipelines ingest.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Settings under `telemetry.`.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    #[serde(default = "default_log_format")]
    pub log_format: LogFormat,
    /// `tracing` env-filter directives, e.g. `info,tenx_auth=debug`.
    #[serde(default = "default_log_filter")]
    pub log_filter: String,
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`; no export
    /// when unset.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled (0.0–1.0); a request that arrives
    /// with a sampled parent is always sampled.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Requests slower than this are flagged `slow_request` and logged.
    #[serde(default = "default_slow_request_ms")]
    pub slow_request_ms: u64,
    /// With `otlp_endpoint`, the metrics are pushed there too, this often
    /// (`tenx_common::metrics::otlp`); 0: traces only. Prometheus's scrape
    /// of `/metrics` works either way.
    #[serde(default = "default_metrics_export_seconds")]
    pub metrics_export_seconds: u64,
}

fn default_log_format() -> LogFormat {
    LogFormat::Json
}
fn default_log_filter() -> String {
    "info".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}
fn default_slow_request_ms() -> u64 {
    1_000
}
fn default_metrics_export_seconds() -> u64 {
    60
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: default_log_format(),
            log_filter: default_log_filter(),
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            slow_request_ms: default_slow_request_ms(),
            metrics_export_seconds: default_metrics_export_seconds(),
        }
    }
}

impl TelemetrySettings {
    pub fn slow_request(&self) -> Duration {
        Duration::from_millis(self.slow_request_ms)
    }
}

impl Validate for TelemetrySettings {
    fn validate(&self) -> Result<(), Invalid> {
        EnvFilter::try_new(&self.log_filter)
            .map_err(|e| Invalid::new("telemetry.log_filter", format!("not a tracing filter: {e}")))?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(Invalid::new("telemetry.sample_ratio", "must be between 0.0 and 1.0"));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(Invalid::new("telemetry.otlp_endpoint", "must start with http:// or https://"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: {0}")]
    Init(String),
}

/// Flushes and stops trace export: call [`TelemetryGuard::shutdown`] at
/// the end of `main`; dropping it does the same, blocking.
///
/// The exporter's gRPC client runs on the Tokio runtime, so flushing
/// blocks a thread while the runtime drives the export: use a
/// multi-threaded runtime (the services' default).
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }

    /// Exports what is pending and stops the exporter.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            match tokio::task::spawn_blocking(move || provider.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("telemetry: flushing spans at shutdown failed: {error}"),
                Err(error) => eprintln!("telemetry: flushing spans at shutdown panicked: {error}"),
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans at shutdown failed: {error}");
        }
    }
}

/// Installs the process-wide subscriber for `service` (the OTel
/// `service.name`), logging to stdout. Call once, first thing in `main`,
/// inside a Tokio runtime.
pub fn init(service: &str, settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let (dispatch, guard) = subscriber(service, settings, std::io::stdout)?;
    dispatch.try_init().map_err(|e| TelemetryError::Init(e.to_string()))?;
    Ok(guard)
}

/// The subscriber [`init`] installs, logging to `writer`, not installed
/// (a test runs code under it with `tracing::dispatcher::with_default`).
///
/// Spans always get OpenTelemetry ids (the W3C trace context of a request
/// is continued even when nothing is exported), so log lines can carry
/// them; they are exported only with `otlp_endpoint`.
pub fn subscriber<W>(
    service: &str,
    settings: &TelemetrySettings,
    writer: W,
) -> Result<(Dispatch, TelemetryGuard), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&settings.log_filter).map_err(|e| TelemetryError::Init(e.to_string()))?;
    let mut provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio))))
        .with_resource(Resource::builder().with_service_name(service.to_owned()).build());
    let exporting = settings.otlp_endpoint.is_some();
    if let Some(endpoint) = &settings.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| TelemetryError::Init(format!("OTLP exporter: {e}")))?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("tenx"));
    let dispatch_of_json = Arc::new(OnceLock::new());
    let (json, pretty) = match settings.log_format {
        LogFormat::Json => {
            let format =
                tracing_subscriber::fmt::format().json().with_current_span(true).with_span_list(false);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .event_format(log_ids::WithTraceIds::new(format, dispatch_of_json.clone()))
                .with_writer(writer);
            (Some(layer), None)
        }
        LogFormat::Pretty => (None, Some(tracing_subscriber::fmt::layer().with_writer(writer))),
    };
    let dispatch =
        Dispatch::new(tracing_subscriber::registry().with(filter).with(otel).with(json).with(pretty));
    let _ = dispatch_of_json.set(dispatch.downgrade());
    Ok((dispatch, TelemetryGuard { provider: exporting.then_some(provider) }))
}
