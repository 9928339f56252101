//! Messages as handlers see them, and as publishers send them.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::Injector;
use prost::Message as _;
use tenx_proto::events::v1::{Envelope, TraceContext};

use crate::telemetry::TraceHeaders;

/// 1-based attempt number of a delivery (absent = 1).
pub const HEADER_ATTEMPT: &str = "x-tenx-attempt";
/// Why the previous attempt failed (on retries and dead letters).
pub const HEADER_LAST_ERROR: &str = "x-tenx-last-error";

/// A delivered event.
#[derive(Debug, Clone)]
pub struct Message {
    pub envelope: Envelope,
    /// 1 on first delivery, then 2, 3, … through the retry tiers.
    pub attempt: u32,
    /// The broker redelivered it (a consumer died before acking).
    pub redelivered: bool,
    /// Trace context from the AMQP headers.
    pub trace: TraceHeaders,
}

impl Message {
    /// The event id, for inbox dedupe.
    pub fn id(&self) -> &str {
        &self.envelope.id
    }

    pub fn event_type(&self) -> &str {
        &self.envelope.r#type
    }
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    /// Encoded [`Envelope`] (or, when moving an undecodable delivery to
    /// the dead-letter queue, its original bytes).
    pub body: Vec<u8>,
    pub message_id: String,
    pub event_type: String,
    /// AMQP headers: trace context, attempt number, last error.
    pub headers: FieldTable,
    /// The broker must route it to a queue or return it (then `publish`
    /// fails). Set when moving a message to a named queue; events rely on
    /// the exchange's alternate exchange instead.
    pub mandatory: bool,
    /// Per-message TTL (the retry delay with jitter); `None` for events.
    pub expiration_ms: Option<u64>,
}

impl Outgoing {
    /// An event for `exchange`, routed by its type, carrying its trace
    /// context in the headers as well as in the envelope.
    pub fn event(exchange: &str, envelope: &Envelope) -> Self {
        let mut headers = FieldTable::default();
        if let Some(tc) = &envelope.trace_context {
            let mut carrier = HeaderCarrier(&mut headers);
            if !tc.traceparent.is_empty() {
                carrier.set("traceparent", tc.traceparent.clone());
            }
            if !tc.tracestate.is_empty() {
                carrier.set("tracestate", tc.tracestate.clone());
            }
        }
        Self {
            exchange: exchange.to_owned(),
            routing_key: envelope.r#type.clone(),
            body: envelope.encode_to_vec(),
            message_id: envelope.id.clone(),
            event_type: envelope.r#type.clone(),
            headers,
            mandatory: false,
            expiration_ms: None,
        }
    }

    /// A copy of `delivery` for `queue` (through the default exchange),
    /// with `extra` headers set over its own.
    pub(crate) fn copy_of(
        delivery: &lapin::message::Delivery,
        queue: &str,
        extra: &[(&str, String)],
    ) -> Self {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        for (k, v) in extra {
            headers.insert(ShortString::from(*k), AMQPValue::LongString(LongString::from(v.as_str())));
        }
        let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default();
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body: delivery.data.clone(),
            message_id: text(delivery.properties.message_id()),
            event_type: text(delivery.properties.kind()),
            headers,
            mandatory: true,
            expiration_ms: None,
        }
    }

    pub(crate) fn properties(&self) -> BasicProperties {
        let properties = BasicProperties::default()
            .with_message_id(self.message_id.as_str().into())
            .with_type(self.event_type.as_str().into())
            .with_content_type("application/protobuf".into())
            .with_delivery_mode(2) // persistent
            .with_headers(self.headers.clone());
        match self.expiration_ms {
            Some(ms) => properties.with_expiration(ms.to_string().into()),
            None => properties,
        }
    }
}

/// Decodes a delivery; an undecodable body is a permanent failure.
pub(crate) fn decode(delivery: &lapin::message::Delivery) -> Result<Message, prost::DecodeError> {
    let mut envelope = Envelope::decode(delivery.data.as_slice())?;
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let attempt = header_str(&headers, HEADER_ATTEMPT).and_then(|s| s.parse().ok()).unwrap_or(1);
    let trace = TraceHeaders {
        traceparent: header_str(&headers, "traceparent").unwrap_or_default(),
        tracestate: header_str(&headers, "tracestate").unwrap_or_default(),
    };
    if envelope.trace_context.is_none() && !trace.is_empty() {
        envelope.trace_context = Some(TraceContext {
            traceparent: trace.traceparent.clone(),
            tracestate: trace.tracestate.clone(),
        });
    }
    Ok(Message { envelope, attempt, redelivered: delivery.redelivered, trace })
}

pub(crate) fn header_str(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// AMQP headers as an OpenTelemetry carrier.
pub struct HeaderCarrier<'a>(pub &'a mut FieldTable);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(ShortString::from(key), AMQPValue::LongString(LongString::from(value)));
    }
}
