//! Channels to other tenx services: balanced over every endpoint the URL
//! names (see [`super::balance`]), connect/request timeouts, and the
//! caller's trace context in every request's metadata.

use std::time::Duration;

use opentelemetry::propagation::Injector;
use serde::Deserialize;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::balance::{Balanced, Resolve, system_resolver};
use super::link::{BadUrl, LinkSettings};
use crate::telemetry::propagation::inject;

/// How to reach one upstream service (keys under e.g. `upstreams.auth.`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClientSettings {
    /// `http://auth:50051`, or several instances comma-separated
    /// (`http://10.0.0.5:50051,http://10.0.0.6:50051`): calls are balanced
    /// over them and an instance that fails is left out for a while.
    pub url: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Default deadline of a call (sent as `grpc-timeout`).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How often a name in `url` is looked up again (its instances
    /// change as pods come and go).
    #[serde(default = "default_resolve_interval_ms")]
    pub resolve_interval_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_request_timeout_ms() -> u64 {
    5_000
}
fn default_resolve_interval_ms() -> u64 {
    5_000
}

impl ClientSettings {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            resolve_interval_ms: default_resolve_interval_ms(),
        }
    }
}

/// A channel whose requests carry the caller's trace context.
pub type TracedChannel = InterceptedService<Balanced, TraceInterceptor>;

impl ClientSettings {
    /// Each endpoint `url` names.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty())
    }
}

/// Builds a lazily-connecting channel over every endpoint of the upstream:
/// the caller starts even while the upstream is down, and each call
/// connects (or fails) within the connect timeout.
pub fn connect(settings: &ClientSettings) -> Result<TracedChannel, BadUrl> {
    connect_with(settings, system_resolver())
}

/// [`connect`] with another resolver (tests).
pub fn connect_with(settings: &ClientSettings, resolve: Resolve) -> Result<TracedChannel, BadUrl> {
    let mut urls: Vec<&str> = settings.urls().collect();
    if urls.is_empty() {
        // Nothing but commas or blanks: as one URL, refused as such.
        urls.push(&settings.url);
    }
    let link = LinkSettings {
        connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
        timeout: Duration::from_millis(settings.request_timeout_ms),
    };
    let every = Duration::from_millis(settings.resolve_interval_ms);
    Ok(InterceptedService::new(Balanced::new(&urls, link, resolve, every)?, TraceInterceptor))
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
