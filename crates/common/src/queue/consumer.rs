//! The consumer loop: manual acks after the handler succeeds, tiered
//! retries, dead letters, reconnection.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::Instrument;

use super::acks::Acks;
use super::connection::{Backoff, close_quietly};
use super::message::decode;
use super::{Amqp, HEADER_ATTEMPT, HEADER_LAST_ERROR, Message, Outgoing, Publisher, QueueError, Topology};
use crate::metrics::{MetricSet, Metrics};
use crate::shutdown::Shutdown;
use crate::telemetry::propagation::set_remote_parent;

/// Why a handler did not finish a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later (a dependency was down): goes through the
    /// retry tiers, then to the dead-letter queue.
    #[error("{0}")]
    Retry(String),
    /// Will never succeed (bad input): straight to the dead-letter queue.
    #[error("{0}")]
    Reject(String),
}

/// What a consumer group does with each message. It must be idempotent
/// (see [`super::inbox`]): a message can arrive more than once.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: &Message) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Acked,
    Retried,
    DeadLettered,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    queue: String,
    outcome: Outcome,
}

#[derive(Clone, Default)]
struct ConsumerMetrics {
    messages: Family<OutcomeLabels, Counter>,
}

impl MetricSet for ConsumerMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register("queue_messages", "Consumed messages by outcome", set.messages.clone());
        set
    }
}

/// One consumer group's consumer. Run several (in one process or many)
/// to share the work queue.
pub struct Consumer<H> {
    amqp: Amqp,
    topology: Topology,
    handler: Arc<H>,
    /// Moves failed messages to retry/dead-letter queues, with confirms.
    mover: Publisher,
    metrics: ConsumerMetrics,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("queue", &self.topology.queue).finish_non_exhaustive()
    }
}

impl<H: Handler> Consumer<H> {
    pub fn new(amqp: Amqp, topology: Topology, handler: H, metrics: &Metrics) -> Self {
        amqp.register(topology.clone());
        crate::probes::watch_queues(metrics, &amqp, &topology);
        Self {
            mover: Publisher::new(amqp.clone()),
            amqp,
            topology,
            handler: Arc::new(handler),
            metrics: metrics.set(),
        }
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the
    /// connection or channel dies. On shutdown, stops taking messages and
    /// finishes the ones in hand; unstarted prefetched ones go back to the
    /// queue when the channel closes.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Backoff::new();
        while !shutdown.is_triggered() {
            match self.consume(&shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(queue = %self.topology.queue, %error, "consumer interrupted; reconnecting");
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.wait() => break,
                    }
                }
            }
        }
    }

    async fn consume(&self, shutdown: &Shutdown, backoff: &mut Backoff) -> Result<(), QueueError> {
        let channel = self.amqp.channel().await?;
        // Told to stop while connecting: declare nothing more.
        if shutdown.is_triggered() {
            return Ok(());
        }
        self.topology.declare(&channel).await?;
        let prefetch = self.amqp.settings().prefetch;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let deliveries = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        backoff.reset();
        // One delivery's failure must not cancel the others in flight, so
        // `process` settles its own errors; a broken channel ends the
        // stream, and then this returns to reconnect.
        let broken = std::sync::Mutex::new(None);
        let acks = Acks::default();
        deliveries
            .take_until(shutdown.wait())
            .take_while(|item| {
                if let Err(error) = item {
                    *broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
                }
                std::future::ready(item.is_ok())
            })
            .for_each_concurrent(usize::from(prefetch), |item| {
                // Noted here, in the channel's order, before any handler
                // runs: a group ack never reaches a delivery in hand.
                if let Ok(delivery) = &item {
                    acks.arrived(delivery.delivery_tag);
                }
                let acks = &acks;
                async move {
                    if let Ok(delivery) = item {
                        self.process(delivery, acks).await;
                    }
                }
            })
            .await;
        close_quietly(&channel, "consumer stopping").await;
        match broken.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(error) => Err(QueueError::Unavailable(error)),
            None if shutdown.is_triggered() => Ok(()),
            None => Err(QueueError::Unavailable("the broker ended the consumer".into())),
        }
    }

    /// Handles one delivery. If it cannot be settled (acked, or moved with
    /// a confirm) it is nacked back, or, with the channel gone, simply
    /// redelivered by the broker.
    async fn process(&self, delivery: Delivery, acks: &Acks) {
        if let Err(error) = self.try_process(&delivery, acks).await {
            tracing::warn!(queue = %self.topology.queue, %error, "could not settle a message; it will be redelivered");
            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        }
        acks.settled(delivery.delivery_tag).await;
    }

    async fn try_process(&self, delivery: &Delivery, acks: &Acks) -> Result<(), QueueError> {
        let message = match decode(delivery) {
            Ok(message) => message,
            Err(error) => {
                return self.dead_letter(delivery, 1, &format!("undecodable envelope: {error}")).await;
            }
        };
        let span = tracing::info_span!(
            "queue.consume",
            otel.kind = "consumer",
            messaging.destination = %self.topology.queue,
            event.id = %message.id(),
            event.r#type = %message.event_type(),
            attempt = message.attempt,
        );
        set_remote_parent(&span, message.trace.to_context());
        let outcome = self.handler.handle(&message).instrument(span.clone()).await;
        self.settle(delivery, acks, &message, outcome).instrument(span).await
    }

    /// Acks a handled message (with others: see [`Acks`]); moves a failed
    /// one to its retry tier or the dead-letter queue, then acks it alone.
    async fn settle(
        &self,
        delivery: &Delivery,
        acks: &Acks,
        message: &Message,
        outcome: Result<(), HandlerError>,
    ) -> Result<(), QueueError> {
        match outcome {
            Ok(()) => {
                if !acks.ack(delivery.delivery_tag, &delivery.acker).await {
                    return Err(QueueError::Unavailable("ack not delivered: channel closed".into()));
                }
                self.count(Outcome::Acked);
                Ok(())
            }
            Err(HandlerError::Retry(reason)) if message.attempt < self.amqp.settings().max_attempts => {
                tracing::warn!(%reason, "handler failed; will retry");
                let next = (message.attempt + 1).to_string();
                let (queue, delay_ms) = self.topology.retry_queue(message.attempt);
                let mut copy = Outgoing::copy_of(
                    delivery,
                    queue,
                    &[(HEADER_ATTEMPT, next), (HEADER_LAST_ERROR, reason)],
                );
                // "Equal jitter": wait between half and all of the tier's
                // delay, so failures that happened together (an outage) do
                // not all retry at the same instant. The queue's TTL is the
                // upper bound; a shorter per-message TTL waits at most that
                // long behind a longer one.
                copy.expiration_ms = Some(delay_ms / 2 + fastrand::u64(0..=delay_ms / 2));
                // Confirmed before the ack: a crash in between redelivers
                // the original, it is never lost.
                self.mover.publish(std::slice::from_ref(&copy)).await?;
                ack(delivery).await?;
                self.count(Outcome::Retried);
                Ok(())
            }
            Err(HandlerError::Retry(reason) | HandlerError::Reject(reason)) => {
                self.dead_letter(delivery, message.attempt, &reason).await
            }
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, attempt: u32, reason: &str) -> Result<(), QueueError> {
        tracing::error!(queue = %self.topology.queue, %reason, attempt, "message dead-lettered");
        let copy = Outgoing::copy_of(
            delivery,
            &self.topology.dead_letter,
            &[(HEADER_ATTEMPT, attempt.to_string()), (HEADER_LAST_ERROR, reason.to_owned())],
        );
        self.mover.publish(std::slice::from_ref(&copy)).await?;
        ack(delivery).await?;
        self.count(Outcome::DeadLettered);
        Ok(())
    }

    fn count(&self, outcome: Outcome) {
        self.metrics
            .messages
            .get_or_create(&OutcomeLabels { queue: self.topology.queue.clone(), outcome })
            .inc();
    }
}

/// Acks, failing when lapin could not (the channel is gone): then the
/// broker redelivers, and the caller must not count it as acked.
async fn ack(delivery: &Delivery) -> Result<(), QueueError> {
    if delivery.acker.ack(BasicAckOptions::default()).await? {
        Ok(())
    } else {
        Err(QueueError::Unavailable("ack not delivered: channel closed".into()))
    }
}

crate::metrics::label_values!(Outcome { Acked => "acked", Retried => "retried", DeadLettered => "dead_lettered" });
