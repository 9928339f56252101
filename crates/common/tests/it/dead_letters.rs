//! Dead letters on the real broker: listed without being taken, redriven
//! (by id, by type, all) to a consumer that now succeeds and applies each
//! once, purged; what is not selected stays where it was. Events no queue
//! was bound for wait in the unrouted queue until a late consumer group
//! exists, then are redriven to it through the exchange.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenx_common::metrics::Metrics;
use tenx_common::queue::dead_letters::{DeadLetters, Moved, Selection};
use tenx_common::queue::{Amqp, Consumer, Handler, HandlerError, Message, Outgoing, Publisher, Topology};
use tenx_common::shutdown::Shutdown;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::TestAmqp;

use crate::support::observe;

use crate::support::{amqp_settings, declare, eventually, queue_depth};

/// Fails every message while `broken`, then applies each message id once
/// (a set, like an inbox) and counts every delivery it saw.
#[derive(Clone, Default)]
struct Recovering {
    broken: Arc<Mutex<bool>>,
    applied: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<HashSet<String>>>,
    /// The attempt number of every delivery that succeeded.
    attempts: Arc<Mutex<Vec<u32>>>,
}

impl Handler for Recovering {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        if *self.broken.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(HandlerError::Retry(format!("the mail relay is down ({})", message.id())));
        }
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).push(message.attempt);
        if self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(message.id().to_owned()) {
            self.applied.lock().unwrap_or_else(|p| p.into_inner()).push(message.id().to_owned());
        }
        Ok(())
    }
}

fn event(id: &str, event_type: &str) -> Envelope {
    Envelope { id: id.to_owned(), r#type: event_type.to_owned(), ..Default::default() }
}

#[tokio::test]
async fn dead_letters_are_listed_in_place_redriven_once_to_a_recovered_consumer_and_purged()
-> anyhow::Result<()> {
    let test_amqp = TestAmqp::new();
    let settings = amqp_settings(&test_amqp);
    let amqp = Amqp::new(&settings, "test");
    let topology = Topology::for_group(&settings, "mailer", &["test.#"]);
    declare(&test_amqp, &amqp, &topology).await?;
    let handler = Recovering { broken: Arc::new(Mutex::new(true)), ..Recovering::default() };
    let shutdown = Shutdown::new();
    let consumer = Consumer::new(amqp.clone(), topology.clone(), handler.clone(), &Metrics::default());
    let task = tokio::spawn(consumer.run(shutdown.child()));

    // Five events fail every attempt: five dead letters.
    let events = [
        ("w1", "test.welcome"),
        ("w2", "test.welcome"),
        ("r1", "test.reset"),
        ("r2", "test.reset"),
        ("x1", "test.other"),
    ];
    let outgoing: Vec<_> =
        events.iter().map(|(id, kind)| Outgoing::event(&topology.exchange, &event(id, kind))).collect();
    Publisher::new(amqp.clone()).publish(&outgoing).await?;
    eventually(Duration::from_secs(15), "five dead letters", || async {
        Ok(queue_depth(&amqp, &topology.dead_letter).await? == 5)
    })
    .await?;

    let letters = DeadLetters::new(amqp.clone(), vec![topology.clone(), Topology::exchange_only(&settings)]);
    let queues: Vec<&str> = letters.queues().iter().map(|p| p.queue.as_str()).collect();
    assert_eq!(
        queues,
        [topology.dead_letter.as_str(), topology.unrouted.as_str()],
        "a publisher-only topology has no dead letters; the shared unrouted queue is listed once"
    );
    let group = letters.find(&topology.dead_letter).ok_or_else(|| anyhow::anyhow!("no group"))?.clone();

    // Listed: the first three, with why and after how many attempts; all
    // five still there afterwards, in their order.
    let listing = letters.list(&group, 3).await?;
    assert_eq!((listing.depth, listing.messages.len()), (5, 3));
    assert_eq!(listing.work_queue, topology.queue);
    let first = &listing.messages[0];
    assert_eq!(
        (first.message_id.as_str(), first.event_type.as_str(), first.attempts),
        ("w1", "test.welcome", 3)
    );
    assert_eq!(first.last_error, "the mail relay is down (w1)");
    assert!(first.size_bytes > 0);
    let again = letters.list(&group, 10).await?;
    let ids: Vec<_> = again.messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["w1", "w2", "r1", "r2", "x1"], "a listing takes nothing and keeps the order");

    // The relay is back: redrive one by id, then a type; the consumer
    // applies each once, as a first attempt; the rest stay.
    *handler.broken.lock().unwrap_or_else(|p| p.into_inner()) = false;
    let one = letters.redrive(&group, &Selection::Ids(HashSet::from(["r2".to_owned()]))).await?;
    assert_eq!(one, Moved { taken: 1, remaining: 4 });
    let welcomes = letters.redrive(&group, &Selection::EventType("test.welcome".into())).await?;
    assert_eq!(welcomes, Moved { taken: 2, remaining: 2 });
    eventually(Duration::from_secs(10), "three redriven events applied", || async {
        Ok(handler.applied.lock().unwrap_or_else(|p| p.into_inner()).len() == 3)
    })
    .await?;
    let left: Vec<_> = letters.list(&group, 10).await?.messages.into_iter().map(|m| m.message_id).collect();
    assert_eq!(left, ["r1", "x1"]);

    // Redriving an id again (an operator's double click) is harmless:
    // nothing left to take.
    let twice = letters.redrive(&group, &Selection::Ids(HashSet::from(["r2".to_owned()]))).await?;
    assert_eq!(twice, Moved { taken: 0, remaining: 2 });

    // Purged: gone for good, never applied.
    let purged = letters.purge(&group, &Selection::All).await?;
    assert_eq!(purged, Moved { taken: 2, remaining: 0 });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut applied = handler.applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
    applied.sort();
    assert_eq!(applied, ["r2", "w1", "w2"]);
    let attempts = handler.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(attempts, [1, 1, 1], "a redriven message starts its attempts over");
    assert_eq!(queue_depth(&amqp, &topology.queue).await?, 0);
    shutdown.trigger();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn events_nobody_was_bound_for_wait_unrouted_until_redriven_to_a_group_deployed_later()
-> anyhow::Result<()> {
    let test_amqp = TestAmqp::new();
    let settings = amqp_settings(&test_amqp);
    let amqp = Amqp::new(&settings, "test");
    let early = Topology::for_group(&settings, "early", &["test.early.#"]);
    declare(&test_amqp, &amqp, &early).await?;

    // Two events no queue is bound for yet: kept in the unrouted queue.
    let outgoing = [
        Outgoing::event(&early.exchange, &event("late-1", "test.late.created")),
        Outgoing::event(&early.exchange, &event("never-1", "test.nobody.created")),
    ];
    Publisher::new(amqp.clone()).publish(&outgoing).await?;
    eventually(Duration::from_secs(10), "two unrouted events", || async {
        Ok(queue_depth(&amqp, &early.unrouted).await? == 2)
    })
    .await?;
    let letters = DeadLetters::new(amqp.clone(), vec![early.clone()]);
    let unrouted = letters.find(&early.unrouted).ok_or_else(|| anyhow::anyhow!("not served"))?.clone();
    let listing = letters.list(&unrouted, 10).await?;
    assert_eq!(listing.work_queue, early.exchange, "redriven through the exchange");
    let listed: Vec<_> =
        listing.messages.iter().map(|m| (m.message_id.as_str(), m.event_type.as_str())).collect();
    assert_eq!(listed, [("late-1", "test.late.created"), ("never-1", "test.nobody.created")]);

    // The group that wanted it is deployed; a redrive of the type reaches
    // it with its id, and the early group gets nothing.
    let late = Topology::for_group(&settings, "late", &["test.late.#"]);
    declare(&test_amqp, &amqp, &late).await?;
    let mut received = observe(&amqp, &late.queue).await?;
    let moved = letters.redrive(&unrouted, &Selection::EventType("test.late.created".into())).await?;
    assert_eq!(moved, Moved { taken: 1, remaining: 1 });
    let got = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("observer stopped"))?;
    assert_eq!((got.id.as_str(), got.r#type.as_str()), ("late-1", "test.late.created"));
    assert_eq!(queue_depth(&amqp, &early.queue).await?, 0);

    // One still nobody's: redriven, it is unrouted again, not lost.
    let again = letters.redrive(&unrouted, &Selection::All).await?;
    assert_eq!(again.taken, 1);
    eventually(Duration::from_secs(10), "the unbound event back in the unrouted queue", || async {
        Ok(queue_depth(&amqp, &early.unrouted).await? == 1)
    })
    .await?;
    assert_eq!(letters.purge(&unrouted, &Selection::All).await?, Moved { taken: 1, remaining: 0 });
    Ok(())
}
