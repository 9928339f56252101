//! W3C trace context (`traceparent`, `tracestate`) in and out of the
//! carriers tenx uses: gRPC metadata, AMQP headers and outbox rows.
//!
//! The W3C propagator is used directly rather than through the global one,
//! because it is our wire contract whatever else a deployment configures.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Trace context as two strings; both empty outside a sampled trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: String,
    pub tracestate: String,
}

impl TraceHeaders {
    /// The context of the current `tracing` span.
    pub fn current() -> Self {
        Self::from_context(&tracing::Span::current().context())
    }

    pub fn from_context(cx: &Context) -> Self {
        if !cx.span().span_context().is_valid() {
            return Self::default();
        }
        let mut map = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut map);
        Self {
            traceparent: map.remove("traceparent").unwrap_or_default(),
            tracestate: map.remove("tracestate").unwrap_or_default(),
        }
    }

    /// The remote context these headers describe (empty if they are).
    pub fn to_context(&self) -> Context {
        let mut map = HashMap::new();
        if !self.traceparent.is_empty() {
            map.insert("traceparent".to_owned(), self.traceparent.clone());
        }
        if !self.tracestate.is_empty() {
            map.insert("tracestate".to_owned(), self.tracestate.clone());
        }
        extract(&map)
    }

    pub fn is_empty(&self) -> bool {
        self.traceparent.is_empty()
    }
}

/// Writes `cx` into any carrier.
pub fn inject(cx: &Context, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(cx, carrier);
}

/// Reads a context from any carrier (empty context if none).
pub fn extract(carrier: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract(carrier)
}

/// Makes `span` a child of the remote context `cx`, if `cx` has one.
pub fn set_remote_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: then there
        // is no trace to join, which is fine.
        let _ = span.set_parent(cx);
    }
}
