//! Channels to other tenx services: connect/request timeouts, and the
//! caller's trace context in every request's metadata.

use std::time::Duration;

use opentelemetry::propagation::Injector;
use serde::Deserialize;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::propagation::inject;

/// How to reach one upstream service (keys under e.g. `upstreams.auth.`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClientSettings {
    /// `http://auth:50051`.
    pub url: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Default deadline of a call (sent as `grpc-timeout`).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_request_timeout_ms() -> u64 {
    5_000
}

impl ClientSettings {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

/// A channel whose requests carry the caller's trace context.
pub type TracedChannel = InterceptedService<Channel, TraceInterceptor>;

/// Builds a lazily-connecting channel: the caller starts even while the
/// upstream is down, and each call connects (or fails) within the
/// connect timeout.
pub fn connect(settings: &ClientSettings) -> Result<TracedChannel, tonic::transport::Error> {
    let channel = Endpoint::from_shared(settings.url.clone())?
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .timeout(Duration::from_millis(settings.request_timeout_ms))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(InterceptedService::new(channel, TraceInterceptor))
}

/// Writes the current span's W3C trace context into request metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

impl Interceptor for TraceInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        inject(&cx, &mut MetadataWriter(request.metadata_mut()));
        Ok(request)
    }
}

struct MetadataWriter<'a>(&'a mut MetadataMap);

impl Injector for MetadataWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value))
        {
            self.0.insert(key, value);
        }
    }
}
