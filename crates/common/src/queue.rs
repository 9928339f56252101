//! RabbitMQ through lapin: a supervised connection, the topology of a
//! consumer group, a publisher with confirms and a consumer with manual
//! acks, tiered retry delays, a dead-letter queue and an inbox.
//!
//! Delivery is at-least-once end to end: a message is acked only after its
//! handler succeeded or after it was safely moved (with a publisher
//! confirm) to a retry or dead-letter queue. A consumer that dies before
//! acking gets the message again; [`inbox`] makes that harmless.
//!
//! Names, for a consumer group `notification` and `amqp.prefix = ""`:
//! `tenx.events` (topic exchange) → `notification` (quorum work queue) →
//! on failure `notification.retry.<n>` (quorum, per-tier TTL, dead-letters
//! back to the work queue) → after the last attempt `notification.dlq`.

mod acks;
mod connection;
mod consumer;
pub mod dead_letters;
pub mod inbox;
mod message;
mod publisher;
mod topology;

use serde::Deserialize;

pub use connection::{Amqp, Backoff, WeakAmqp, close_quietly};
pub use consumer::{Consumer, Handler, HandlerError};
pub use message::{HEADER_ATTEMPT, HEADER_LAST_ERROR, Message, Outgoing};
pub use publisher::Publisher;
pub use topology::{Topology, inspect};

use crate::config::{Invalid, Secret, Validate};

/// Settings under `amqp.`.
#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`.
    pub url: Secret<String>,
    /// The topic exchange every domain event is published to.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Prepended to every exchange and queue name (test isolation, or
    /// several installations on one broker).
    #[serde(default)]
    pub prefix: String,
    /// Unacked messages a consumer holds at once (and handles in parallel).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Delay before each retry; the last tier repeats. Growing delays let a
    /// failing dependency recover instead of being hammered.
    #[serde(default = "default_retry_delays_ms")]
    pub retry_delays_ms: Vec<u64>,
    /// Handler attempts before a message goes to the dead-letter queue.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long to wait for the broker to accept a TCP + AMQP connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_exchange() -> String {
    "tenx.events".into()
}
fn default_prefetch() -> u16 {
    32
}
/// The retry tiers a service waits through unless `amqp.retry_delays_ms`
/// says otherwise (a test that runs a service's binary declares these).
pub fn default_retry_delays_ms() -> Vec<u64> {
    vec![1_000, 10_000, 60_000, 300_000]
}
fn default_max_attempts() -> u32 {
    6
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}

impl AmqpSettings {
    pub fn new(url: &str, prefix: &str) -> Self {
        Self {
            url: Secret::new(url.to_owned()),
            exchange: default_exchange(),
            prefix: prefix.to_owned(),
            prefetch: default_prefetch(),
            retry_delays_ms: default_retry_delays_ms(),
            max_attempts: default_max_attempts(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }

    /// The events exchange with the prefix applied.
    pub fn exchange_name(&self) -> String {
        format!("{}{}", self.prefix, self.exchange)
    }
}

impl Validate for AmqpSettings {
    fn validate(&self) -> Result<(), Invalid> {
        self.url.expose().parse::<lapin::uri::AMQPUri>().map_err(|_| {
            Invalid::new("amqp.url", "not an AMQP URL (amqp://user:password@host:port/vhost)")
        })?;
        if self.prefetch == 0 {
            return Err(Invalid::new("amqp.prefetch", "must be at least 1"));
        }
        if self.retry_delays_ms.is_empty() || self.retry_delays_ms.contains(&0) {
            return Err(Invalid::new("amqp.retry_delays_ms", "needs at least one delay, each above 0"));
        }
        if self.max_attempts == 0 {
            return Err(Invalid::new("amqp.max_attempts", "must be at least 1"));
        }
        Ok(())
    }
}

/// Broker errors, as the queue's callers see them.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("RabbitMQ unavailable: {0}")]
    Unavailable(String),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("no queue took a message routed by {0:?}")]
    Unroutable(String),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("undecodable message: {0}")]
    Decode(#[from] prost::DecodeError),
}
