//! A tower layer around every gRPC server call: a span that joins the
//! caller's trace (W3C `traceparent` in the metadata), with the method,
//! status code, duration and a `slow_request` flag; and RED metrics.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{MetricSet, Metrics};
use crate::telemetry::propagation::{extract, set_remote_parent};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone)]
struct RpcMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<MethodLabels, Histogram>,
    slow: Family<MethodLabels, Counter>,
    recent_slow: Arc<Mutex<VecDeque<SlowRequest>>>,
    /// Each served method's series, found by its path without building
    /// labels: a call then allocates nothing for its metrics.
    methods: Arc<RwLock<HashMap<Box<str>, Arc<MethodSeries>>>>,
}

/// One method's series in the families above, resolved once.
struct MethodSeries {
    method: Box<str>,
    ok: Counter,
    duration: Histogram,
    slow: Counter,
}

/// The label every method the server does not serve shares.
const UNKNOWN_METHOD: &str = "unknown";

impl RpcMetrics {
    /// The series of a method called before (no allocation).
    fn known(&self, path: &str) -> Option<Arc<MethodSeries>> {
        self.methods.read().unwrap_or_else(PoisonError::into_inner).get(path).cloned()
    }

    /// `method`'s series, created at its first call. A method the server
    /// does not serve (`UNIMPLEMENTED`) gets the shared `unknown` series:
    /// the path is client-chosen, and each would be a series of its own.
    fn series(&self, method: &str, code: i32) -> Arc<MethodSeries> {
        let method = if code == 12 { UNKNOWN_METHOD } else { method };
        if let Some(series) = self.known(method) {
            return series;
        }
        let labels = MethodLabels { method: method.to_owned() };
        let series = Arc::new(MethodSeries {
            method: method.into(),
            ok: self
                .requests
                .get_or_create(&RequestLabels { method: method.to_owned(), code: "0".to_owned() })
                .clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            slow: self.slow.get_or_create(&labels).clone(),
        });
        let mut methods = self.methods.write().unwrap_or_else(PoisonError::into_inner);
        methods.entry(method.into()).or_insert(series).clone()
    }

    fn count(&self, series: &MethodSeries, code: i32) {
        if code == 0 {
            series.ok.inc();
        } else {
            let labels = RequestLabels { method: series.method.to_string(), code: code.to_string() };
            self.requests.get_or_create(&labels).inc();
        }
    }
}

/// Slow calls kept for the operator's status (`tenx.ops.v1.StatusService`):
/// enough to see a pattern, bounded so a slow day costs no memory.
pub const RECENT_SLOW_REQUESTS: usize = 20;

/// A call over the slow-request threshold, as the operator's status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowRequest {
    pub method: String,
    pub code: i32,
    pub duration: Duration,
    pub finished_at: SystemTime,
    /// Empty when the call was not traced.
    pub trace_id: String,
}

/// The server's most recent slow calls, newest first.
pub fn recent_slow_requests(metrics: &Metrics) -> Vec<SlowRequest> {
    let set: RpcMetrics = metrics.set();
    let recent = set.recent_slow.lock().unwrap_or_else(PoisonError::into_inner);
    recent.iter().rev().cloned().collect()
}

impl MetricSet for RpcMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14))),
            slow: Family::default(),
            recent_slow: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT_SLOW_REQUESTS))),
            methods: Arc::default(),
        };
        metrics.register(
            "grpc_server_requests",
            "gRPC requests by method and status code",
            set.requests.clone(),
        );
        metrics.register(
            "grpc_server_request_duration_seconds",
            "gRPC request latency until response headers",
            set.duration.clone(),
        );
        metrics.register(
            "grpc_server_slow_requests",
            "Requests over the slow-request threshold",
            set.slow.clone(),
        );
        set
    }
}

/// Wraps a gRPC server's routes; see the module docs.
#[derive(Clone)]
pub struct RpcLayer {
    slow_request: Duration,
    metrics: Arc<RpcMetrics>,
}

impl std::fmt::Debug for RpcLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcLayer").field("slow_request", &self.slow_request).finish_non_exhaustive()
    }
}

impl RpcLayer {
    pub fn new(slow_request: Duration, metrics: &Metrics) -> Self {
        Self { slow_request, metrics: Arc::new(metrics.set()) }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

impl<S> std::fmt::Debug for RpcService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcService").finish_non_exhaustive()
    }
}

struct HeaderReader<'a>(&'a http::HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl<S, B, R> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = path,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            slow_request = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        // A method seen before is found without copying its path.
        let metrics = self.layer.metrics.clone();
        let known = metrics.known(path);
        let first_call = known.is_none().then(|| path.to_owned());
        set_remote_parent(&span, extract(&HeaderReader(request.headers())));
        let trace_id = span.context().span().span_context().trace_id();
        let traced = trace_id != opentelemetry::trace::TraceId::INVALID;
        if traced {
            span.record("trace_id", tracing::field::display(trace_id));
        }
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let slow_request = self.layer.slow_request;
        Box::pin(async move {
            let result = future.instrument(span.clone()).await;
            let elapsed = started.elapsed();
            // Errors arrive "trailers-only", with grpc-status in the
            // headers; a response without it is OK so far (streaming
            // errors in trailers are not seen here).
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                Err(_) => 2, // UNKNOWN: the transport failed
            };
            span.record("rpc.grpc.status_code", code);
            span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
            if code != 0 {
                span.record("otel.status_code", "ERROR");
            }
            let series = match (known, first_call) {
                (Some(series), _) if code != 12 => series,
                (_, first_call) => metrics.series(first_call.as_deref().unwrap_or(UNKNOWN_METHOD), code),
            };
            metrics.count(&series, code);
            series.duration.observe(elapsed.as_secs_f64());
            if elapsed > slow_request {
                span.record("slow_request", true);
                series.slow.inc();
                tracing::warn!(parent: &span, elapsed_ms = elapsed.as_millis() as u64, "slow request");
                let mut recent = metrics.recent_slow.lock().unwrap_or_else(PoisonError::into_inner);
                if recent.len() == RECENT_SLOW_REQUESTS {
                    recent.pop_front();
                }
                recent.push_back(SlowRequest {
                    method: series.method.to_string(),
                    code,
                    duration: elapsed,
                    finished_at: SystemTime::now(),
                    trace_id: if traced { trace_id.to_string() } else { String::new() },
                });
            }
            result
        })
    }
}
