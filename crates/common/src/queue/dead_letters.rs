//! The dead letters of a service's consumer groups, and the events no
//! queue was bound for (the exchange's unrouted queue): look at them, send
//! them back, or drop them.
//!
//! RabbitMQ has no "browse": a listing takes the first messages with
//! `basic.get` and never acknowledges them, so closing its channel returns
//! them, unchanged, to the queue. A redrive takes each selected message,
//! publishes a copy to the work queue (same message id, so the consumer's
//! inbox still applies it once; attempt 1 again) and acknowledges the dead
//! letter only once the broker confirmed the copy: a failure in between
//! leaves it in both queues, never in neither. An unrouted event is
//! published to the exchange again with its routing key instead, for a
//! consumer group deployed after its publisher (one still unbound lands in
//! the unrouted queue again). It looks at most at the
//! messages that were there when it started, so a message that fails
//! again meanwhile is not redriven twice in one call.

use std::collections::HashSet;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};

use super::connection::close_quietly;
use super::message::header_str;
use super::{Amqp, HEADER_ATTEMPT, HEADER_LAST_ERROR, Outgoing, Publisher, QueueError, Topology};

/// One dead letter, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub event_type: String,
    /// Attempts made before it was dead-lettered.
    pub attempts: u32,
    pub last_error: String,
    pub size_bytes: usize,
}

/// Where a parked queue's messages go when redriven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A consumer group's work queue (its dead letters), as first attempts.
    WorkQueue(String),
    /// The events exchange, with each message's own routing key (the
    /// unrouted queue).
    Exchange(String),
}

/// A queue of messages that wait for an operator: a group's dead-letter
/// queue, or the exchange's unrouted queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub queue: String,
    pub target: Target,
}

impl Parked {
    /// The queue or exchange a redrive sends to.
    pub fn target_name(&self) -> &str {
        match &self.target {
            Target::WorkQueue(name) | Target::Exchange(name) => name,
        }
    }

    /// The message a redrive publishes for `delivery`.
    fn copy(&self, delivery: &Delivery) -> Outgoing {
        match &self.target {
            Target::WorkQueue(queue) => {
                Outgoing::copy_of(delivery, queue, &[(HEADER_ATTEMPT, "1".to_owned())])
            }
            Target::Exchange(exchange) => {
                let mut copy = Outgoing::copy_of(delivery, delivery.routing_key.as_str(), &[]);
                copy.exchange.clone_from(exchange);
                copy
            }
        }
    }
}

/// A parked queue and its first messages.
#[derive(Debug, Clone)]
pub struct Listing {
    pub queue: String,
    /// Where a redrive sends them ([`Parked::target_name`]).
    pub work_queue: String,
    /// Every message in it.
    pub depth: u32,
    /// The first ones, oldest first.
    pub messages: Vec<DeadLetter>,
}

/// Which dead letters a redrive or a purge takes.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(HashSet<String>),
    EventType(String),
    All,
}

impl Selection {
    fn takes(&self, delivery: &Delivery) -> bool {
        match self {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(&message_id(delivery)),
            Selection::EventType(kind) => &event_type(delivery) == kind,
        }
    }
}

/// What a redrive or a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Messages redriven (or purged).
    pub taken: u32,
    /// Messages left in the dead-letter queue.
    pub remaining: u32,
}

/// The parked queues of one service: its consumer groups' dead-letter
/// queues, then the unrouted queue of the exchange they share.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    amqp: Amqp,
    parked: Vec<Parked>,
}

impl DeadLetters {
    /// Over `groups` (the topologies its consumers use); those without a
    /// work queue (publishers only) have no dead letters of their own.
    pub fn new(amqp: Amqp, groups: Vec<Topology>) -> Self {
        let mut parked: Vec<Parked> = groups
            .iter()
            .filter(|t| !t.queue.is_empty())
            .map(|t| Parked { queue: t.dead_letter.clone(), target: Target::WorkQueue(t.queue.clone()) })
            .collect();
        for topology in &groups {
            if !parked.iter().any(|p| p.queue == topology.unrouted) {
                parked.push(Parked {
                    queue: topology.unrouted.clone(),
                    target: Target::Exchange(topology.exchange.clone()),
                });
            }
        }
        Self { amqp, parked }
    }

    /// The parked queue named `queue`.
    pub fn find(&self, queue: &str) -> Option<&Parked> {
        self.parked.iter().find(|p| p.queue == queue)
    }

    pub fn queues(&self) -> &[Parked] {
        &self.parked
    }

    /// The first `limit` messages of `parked`, left in it.
    pub async fn list(&self, parked: &Parked, limit: usize) -> Result<Listing, QueueError> {
        let channel = self.amqp.channel().await?;
        let depth = depth(&channel, &parked.queue).await;
        let mut messages = Vec::new();
        let listed = async {
            while messages.len() < limit {
                let Some(got) = get(&channel, &parked.queue).await? else { break };
                messages.push(describe(&got));
            }
            Ok::<_, QueueError>(())
        }
        .await;
        // Unacknowledged: closing the channel puts them all back.
        close_quietly(&channel, "listed").await;
        listed?;
        let depth = depth?;
        self.returned(&parked.queue, depth).await?;
        let work_queue = parked.target_name().to_owned();
        Ok(Listing { queue: parked.queue.clone(), work_queue, depth, messages })
    }

    /// Sends the `selection` of `parked` back: dead letters to their work
    /// queue as first attempts, unrouted events to the exchange.
    pub async fn redrive(&self, parked: &Parked, selection: &Selection) -> Result<Moved, QueueError> {
        let publisher = &Publisher::new(self.amqp.clone());
        self.take(parked, selection, |delivery| {
            let copy = parked.copy(delivery);
            async move { publisher.publish(std::slice::from_ref(&copy)).await }
        })
        .await
    }

    /// Drops the `selection` of `parked`.
    pub async fn purge(&self, parked: &Parked, selection: &Selection) -> Result<Moved, QueueError> {
        self.take(parked, selection, |_| async { Ok(()) }).await
    }

    /// Runs `then` on each selected dead letter among those there now, and
    /// acknowledges it (takes it off the queue) once `then` succeeded.
    async fn take<F, Fut>(&self, parked: &Parked, selection: &Selection, then: F) -> Result<Moved, QueueError>
    where
        F: Fn(&Delivery) -> Fut,
        Fut: std::future::Future<Output = Result<(), QueueError>>,
    {
        let channel = self.amqp.channel().await?;
        let there = depth(&channel, &parked.queue).await?;
        let mut taken = 0;
        let outcome = async {
            for _ in 0..there {
                let Some(delivery) = get(&channel, &parked.queue).await? else { break };
                if selection.takes(&delivery) {
                    then(&delivery).await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    taken += 1;
                }
            }
            Ok::<_, QueueError>(())
        }
        .await;
        // The ones not selected go back.
        close_quietly(&channel, "taken").await;
        outcome?;
        let remaining = self.returned(&parked.queue, there.saturating_sub(taken)).await?;
        Ok(Moved { taken, remaining })
    }

    /// Waits until the messages a closed channel held are back in `queue`
    /// (the broker returns them after the close, not with it), so the next
    /// call sees them and a count is right: until it holds at least
    /// `expected` (nothing else takes dead letters), at most 2 s. Its depth.
    async fn returned(&self, queue: &str, expected: u32) -> Result<u32, QueueError> {
        let channel = self.amqp.channel().await?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        let counted = loop {
            let now = depth(&channel, queue).await;
            match now {
                Ok(n) if n < expected && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                other => break other,
            }
        };
        close_quietly(&channel, "counted").await;
        counted
    }
}

async fn get(channel: &Channel, queue: &str) -> Result<Option<Delivery>, QueueError> {
    let got = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await?;
    Ok(got.map(|g| g.delivery))
}

/// Messages ready in `queue`.
async fn depth(channel: &Channel, queue: &str) -> Result<u32, QueueError> {
    Ok(super::inspect(channel, queue).await?.message_count())
}

fn message_id(delivery: &Delivery) -> String {
    delivery.properties.message_id().as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default()
}

fn event_type(delivery: &Delivery) -> String {
    delivery.properties.kind().as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default()
}

fn describe(delivery: &Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    DeadLetter {
        message_id: message_id(delivery),
        event_type: event_type(delivery),
        attempts: header_str(&headers, HEADER_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(1),
        last_error: header_str(&headers, HEADER_LAST_ERROR).unwrap_or_default(),
        size_bytes: delivery.data.len(),
    }
}
