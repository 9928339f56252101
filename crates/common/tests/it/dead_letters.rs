//! Dead letters on the real broker: listed without being taken, redriven
//! (by id, by type, all) to a consumer that now succeeds and applies each
//! once, purged; what is not selected stays where it was.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenx_common::metrics::Metrics;
use tenx_common::queue::dead_letters::{DeadLetters, Moved, Selection};
use tenx_common::queue::{Amqp, Consumer, Handler, HandlerError, Message, Outgoing, Publisher, Topology};
use tenx_common::shutdown::Shutdown;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::TestAmqp;

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
    assert_eq!(letters.groups().len(), 1, "a publisher-only topology has no dead letters");
    let group = letters.group(&topology.dead_letter).ok_or_else(|| anyhow::anyhow!("no group"))?.clone();

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
