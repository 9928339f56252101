//! The exchanges and queues of one consumer group, declared idempotently.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::{AmqpSettings, QueueError};

/// How long an event nobody subscribed to is kept (7 days).
pub const UNROUTED_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Names and arguments of a consumer group's queues.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The topic exchange events are published to.
    pub exchange: String,
    /// Alternate exchange and queue of `exchange`: an event no queue is
    /// bound for (yet) lands here instead of being dropped, so a consumer
    /// group deployed after its publisher can be redriven what it missed.
    /// Kept for [`UNROUTED_TTL_MS`].
    pub unrouted: String,
    /// The work queue the group consumes.
    pub queue: String,
    /// Routing-key patterns bound to the work queue (`auth.user.*`, `#`).
    pub bindings: Vec<String>,
    /// One delay queue per retry tier, with its delay in milliseconds.
    pub retry_tiers: Vec<(String, u64)>,
    /// Where messages go after the last attempt.
    pub dead_letter: String,
    /// Broker-side redeliveries after which a message that keeps killing
    /// its consumer (so it is never acked or nacked) is dead-lettered.
    pub delivery_limit: i64,
}

impl Topology {
    /// The topology of consumer group `group` (a service or worker name).
    pub fn for_group(settings: &AmqpSettings, group: &str, bindings: &[&str]) -> Self {
        let queue = format!("{}{group}", settings.prefix);
        Self {
            exchange: settings.exchange_name(),
            unrouted: format!("{}.unrouted", settings.exchange_name()),
            // The delay is part of the name: changing a tier's delay makes
            // a new queue instead of a re-declare the broker would refuse.
            retry_tiers: settings
                .retry_delays_ms
                .iter()
                .map(|ms| (format!("{queue}.retry.{ms}ms"), *ms))
                .collect(),
            dead_letter: format!("{queue}.dlq"),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
            delivery_limit: 20,
            queue,
        }
    }

    /// Only the events exchange: what a publisher needs.
    pub fn exchange_only(settings: &AmqpSettings) -> Self {
        Self {
            exchange: settings.exchange_name(),
            unrouted: format!("{}.unrouted", settings.exchange_name()),
            queue: String::new(),
            bindings: Vec::new(),
            retry_tiers: Vec::new(),
            dead_letter: String::new(),
            delivery_limit: 0,
        }
    }

    /// Every queue name, e.g. to delete them in a test.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names = vec![self.unrouted.clone()];
        if !self.queue.is_empty() {
            names.extend([self.queue.clone(), self.dead_letter.clone()]);
            names.extend(self.retry_tiers.iter().map(|(n, _)| n.clone()));
        }
        names
    }

    /// Every exchange name.
    pub fn exchange_names(&self) -> Vec<String> {
        vec![self.exchange.clone(), self.unrouted.clone()]
    }

    /// The delay queue for the retry after `attempt` (1-based) failed,
    /// and its delay in milliseconds.
    pub fn retry_queue(&self, attempt: u32) -> (&str, u64) {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        let (name, delay) = &self.retry_tiers[index.min(self.retry_tiers.len() - 1)];
        (name, *delay)
    }

    /// Declares everything; safe to repeat.
    pub async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(
                self.unrouted.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut unrouted = quorum();
        unrouted.insert("x-message-ttl".into(), AMQPValue::LongLongInt(UNROUTED_TTL_MS));
        declare_queue(channel, &self.unrouted, unrouted).await?;
        channel
            .queue_bind(
                self.unrouted.as_str().into(),
                self.unrouted.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut events = FieldTable::default();
        events.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(LongString::from(self.unrouted.as_str())),
        );
        channel.exchange_declare(self.exchange.as_str().into(), ExchangeKind::Topic, durable, events).await?;
        if self.queue.is_empty() {
            return Ok(());
        }

        declare_queue(channel, &self.dead_letter, quorum()).await?;

        let mut work = quorum();
        dead_letter_to(&mut work, &self.dead_letter);
        work.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(self.delivery_limit));
        declare_queue(channel, &self.queue, work).await?;
        for pattern in &self.bindings {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.exchange.as_str().into(),
                    pattern.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        // A delay queue has no consumer: its messages expire after the
        // tier's TTL and are dead-lettered back to the work queue.
        for (name, delay_ms) in &self.retry_tiers {
            let mut args = quorum();
            dead_letter_to(&mut args, &self.queue);
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(*delay_ms).unwrap_or(i64::MAX)),
            );
            declare_queue(channel, name, args).await?;
        }
        Ok(())
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    args
}

/// Dead-letters to `queue` through the default exchange. At-least-once
/// dead-lettering (quorum queues only) needs `reject-publish` overflow;
/// without it the broker may drop a message on the way.
fn dead_letter_to(args: &mut FieldTable, queue: &str) {
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from("")));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(LongString::from(queue)));
    args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString(LongString::from("at-least-once")));
    args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
}

/// What the broker says of `queue` now (messages ready, consumers),
/// without declaring it: a missing queue is an error (and closes
/// `channel`), never created with the wrong arguments.
pub async fn inspect(channel: &Channel, queue: &str) -> Result<lapin::Queue, QueueError> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    Ok(channel.queue_declare(ShortString::from(queue), passive, FieldTable::default()).await?)
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), QueueError> {
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(ShortString::from(name), options, args).await?;
    Ok(())
}
