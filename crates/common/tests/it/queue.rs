//! Retries with growing delays, the dead-letter queue, redelivery + inbox.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenx_common::db::Db;
use tenx_common::metrics::Metrics;
use tenx_common::queue::{
    Amqp, Consumer, HEADER_ATTEMPT, HEADER_LAST_ERROR, Handler, HandlerError, Message, Outgoing, Publisher,
    Topology, inbox,
};
use tenx_common::shutdown::Shutdown;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::{ChaosProxy, TestAmqp, addr_of};

use crate::support::{amqp_settings, connect, declare, eventually, metric, queue_depth, test_db};

fn event(id: &str, event_type: &str) -> Envelope {
    Envelope { id: id.to_owned(), r#type: event_type.to_owned(), ..Default::default() }
}

/// Fails the first `failures` calls, records when each attempt came.
#[derive(Clone)]
struct Flaky {
    failures: usize,
    seen: Arc<Mutex<Vec<(u32, Instant)>>>,
}

impl Handler for Flaky {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.push((message.attempt, Instant::now()));
        if seen.len() <= self.failures {
            Err(HandlerError::Retry(format!("boom #{}", seen.len())))
        } else {
            Ok(())
        }
    }
}

async fn start_consumer<H: Handler>(
    amqp: &Amqp,
    topology: &Topology,
    handler: H,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let consumer = Consumer::new(amqp.clone(), topology.clone(), handler, metrics);
    tokio::spawn(consumer.run(shutdown.child()))
}

#[tokio::test]
async fn a_handler_that_fails_twice_is_retried_with_growing_delays_and_acked_once() -> anyhow::Result<()> {
    let test_amqp = TestAmqp::new();
    let settings = amqp_settings(&test_amqp);
    let amqp = Amqp::new(&settings, "test");
    let topology = Topology::for_group(&settings, "flaky", &["test.#"]);
    declare(&test_amqp, &amqp, &topology).await?;
    let (metrics, shutdown) = (Metrics::default(), Shutdown::new());
    let handler = Flaky { failures: 2, seen: Arc::default() };
    let task = start_consumer(&amqp, &topology, handler.clone(), &metrics, &shutdown).await;

    Publisher::new(amqp.clone())
        .publish(&[Outgoing::event(&topology.exchange, &event("m1", "test.flaky"))])
        .await?;

    let acked = format!("tenx_queue_messages_total{{queue=\"{}\",outcome=\"acked\"}}", topology.queue);
    eventually(Duration::from_secs(10), "the third attempt to succeed", || async {
        Ok(metric(&metrics, &acked) == 1.0)
    })
    .await?;
    let seen = handler.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(seen.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![1, 2, 3]);
    let first_gap = seen[1].1 - seen[0].1;
    let second_gap = seen[2].1 - seen[1].1;
    // Tiers of 150 and 450 ms with equal jitter: 75-150 ms, then 225-450 ms.
    assert!(first_gap >= Duration::from_millis(75), "first retry waited its tier: {first_gap:?}");
    assert!(second_gap >= Duration::from_millis(225), "second retry waited the longer tier: {second_gap:?}");
    assert!(second_gap > first_gap);

    // Acked once: nothing left anywhere, nothing dead-lettered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handler.seen.lock().unwrap_or_else(|p| p.into_inner()).len(), 3);
    for queue in topology.queue_names() {
        assert_eq!(queue_depth(&amqp, &queue).await?, 0, "{queue} must be empty");
    }
    shutdown.trigger();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_handler_that_always_fails_lands_in_the_dead_letter_queue_after_the_last_attempt()
-> anyhow::Result<()> {
    let test_amqp = TestAmqp::new();
    let settings = amqp_settings(&test_amqp);
    let amqp = Amqp::new(&settings, "test");
    let topology = Topology::for_group(&settings, "doomed", &["test.#"]);
    declare(&test_amqp, &amqp, &topology).await?;
    let (metrics, shutdown) = (Metrics::default(), Shutdown::new());
    let handler = Flaky { failures: usize::MAX, seen: Arc::default() };
    let task = start_consumer(&amqp, &topology, handler.clone(), &metrics, &shutdown).await;

    Publisher::new(amqp.clone())
        .publish(&[Outgoing::event(&topology.exchange, &event("m2", "test.doomed"))])
        .await?;

    eventually(Duration::from_secs(10), "a dead letter", || async {
        Ok(queue_depth(&amqp, &topology.dead_letter).await? == 1)
    })
    .await?;
    shutdown.trigger();
    task.await?;

    assert_eq!(handler.seen.lock().unwrap_or_else(|p| p.into_inner()).len(), 3, "max_attempts = 3");
    let channel = amqp.channel().await?;
    let dead = channel
        .basic_get(topology.dead_letter.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
        .await?
        .ok_or_else(|| anyhow::anyhow!("dead letter vanished"))?;
    let headers = dead.properties.headers().clone().unwrap_or_default();
    let header = |k: &str| match headers.inner().get(k) {
        Some(lapin::types::AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    assert_eq!(header(HEADER_ATTEMPT), "3");
    assert_eq!(header(HEADER_LAST_ERROR), "boom #3");
    assert_eq!(dead.properties.message_id().as_ref().map(|s| s.as_str()), Some("m2"));
    for queue in [&topology.queue, &topology.retry_tiers[0].0, &topology.retry_tiers[1].0] {
        assert_eq!(queue_depth(&amqp, queue).await?, 0);
    }
    Ok(())
}

/// Applies each message in Postgres with an inbox claim; on its first
/// call it kills the broker connection after committing, before the ack.
#[derive(Clone)]
struct CrashBeforeAck {
    db: Arc<Db>,
    proxy: Arc<ChaosProxy>,
    calls: Arc<Mutex<Vec<bool>>>,
}

impl Handler for CrashBeforeAck {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let apply = async {
            let mut conn = self.db.write().await?;
            let tx = conn.transaction().await?;
            if inbox::claim(&tx, "effects", message.id()).await? {
                tx.execute("INSERT INTO effects (message_id) VALUES ($1)", &[&message.id()]).await?;
            }
            tx.commit().await?;
            anyhow::Ok(())
        };
        apply.await.map_err(|e| HandlerError::Retry(e.to_string()))?;
        let first = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.push(message.redelivered);
            calls.len() == 1
        };
        if first {
            self.proxy.kill_connections();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_message_whose_channel_dies_before_the_ack_is_redelivered_and_applied_once() -> anyhow::Result<()> {
    let test_amqp = TestAmqp::new();
    let tdb = test_db().await?;
    let db = Arc::new(connect(&tdb, None, &Metrics::default())?);
    db.write().await?.batch_execute("CREATE TABLE effects (message_id text NOT NULL)").await?;

    let proxy = Arc::new(ChaosProxy::start(addr_of(test_amqp.url())?).await?);
    let mut settings = amqp_settings(&test_amqp);
    let direct = Amqp::new(&settings, "test-direct");
    settings.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()).into();
    let via_proxy = Amqp::new(&settings, "test-proxied");
    let topology = Topology::for_group(&settings, "effects", &["test.#"]);
    declare(&test_amqp, &direct, &topology).await?;

    let (metrics, shutdown) = (Metrics::default(), Shutdown::new());
    let handler = CrashBeforeAck { db: db.clone(), proxy: proxy.clone(), calls: Arc::default() };
    let task = start_consumer(&via_proxy, &topology, handler.clone(), &metrics, &shutdown).await;

    Publisher::new(direct.clone())
        .publish(&[Outgoing::event(&topology.exchange, &event("m3", "test.effect"))])
        .await?;

    eventually(Duration::from_secs(15), "the redelivery", || async {
        Ok(handler.calls.lock().unwrap_or_else(|p| p.into_inner()).len() >= 2)
    })
    .await?;
    let acked = format!("tenx_queue_messages_total{{queue=\"{}\",outcome=\"acked\"}}", topology.queue);
    eventually(Duration::from_secs(5), "the ack", || async { Ok(metric(&metrics, &acked) >= 1.0) }).await?;
    shutdown.trigger();
    task.await?;

    let calls = handler.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(calls, vec![false, true], "delivered, then redelivered by the broker");
    let applied: i64 = db.write().await?.query_one("SELECT count(*) FROM effects", &[]).await?.get(0);
    assert_eq!(applied, 1, "the inbox let the effect happen once");
    assert_eq!(queue_depth(&direct, &topology.queue).await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_event_no_queue_is_bound_for_is_kept_in_the_unrouted_queue() -> anyhow::Result<()> {
    let test_amqp = TestAmqp::new();
    let settings = amqp_settings(&test_amqp);
    let amqp = Amqp::new(&settings, "test");
    let topology = Topology::exchange_only(&settings);
    declare(&test_amqp, &amqp, &topology).await?;
    Publisher::new(amqp.clone())
        .publish(&[Outgoing::event(&topology.exchange, &event("m4", "nobody.listens"))])
        .await?;
    eventually(Duration::from_secs(5), "the unrouted copy", || async {
        Ok(queue_depth(&amqp, &topology.unrouted).await? == 1)
    })
    .await
}

/// Records every message it is handed; holds the one with id "slow" until
/// released, and sleeps up to `jitter_ms` on the others, so handlers finish
/// out of the order they started in.
#[derive(Clone, Default)]
struct Recording {
    seen: Arc<Mutex<Vec<String>>>,
    release_slow: Arc<tokio::sync::Notify>,
    jitter_ms: u64,
}

impl Recording {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Handler for Recording {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).push(message.id().to_owned());
        if message.id() == "slow" {
            self.release_slow.notified().await;
        } else if self.jitter_ms > 0 {
            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..self.jitter_ms * 1_000))).await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_message_stuck_in_its_handler_does_not_hold_back_the_acks_of_those_after_it() -> anyhow::Result<()>
{
    // Acks go out in groups below the oldest message still in a handler;
    // if the ones after a stuck message waited for it, they would fill the
    // prefetch window and the consumer would stop.
    let test_amqp = TestAmqp::new();
    let mut settings = amqp_settings(&test_amqp);
    settings.prefetch = 4;
    let amqp = Amqp::new(&settings, "test");
    let topology = Topology::for_group(&settings, "stuck", &["test.#"]);
    declare(&test_amqp, &amqp, &topology).await?;
    let (metrics, shutdown) = (Metrics::default(), Shutdown::new());
    let handler = Recording::default();
    let task = start_consumer(&amqp, &topology, handler.clone(), &metrics, &shutdown).await;

    let mut events = vec![event("slow", "test.stuck")];
    events.extend((0..20).map(|i| event(&format!("m{i}"), "test.stuck")));
    let outgoing: Vec<_> = events.iter().map(|e| Outgoing::event(&topology.exchange, e)).collect();
    Publisher::new(amqp.clone()).publish(&outgoing).await?;

    // Four at a time (the prefetch): the 20 get through only if their acks
    // do, while the stuck one is still in its handler.
    let acked = format!("tenx_queue_messages_total{{queue=\"{}\",outcome=\"acked\"}}", topology.queue);
    eventually(Duration::from_secs(10), "all 20 after the stuck one acked", || async {
        Ok(metric(&metrics, &acked) == 20.0)
    })
    .await?;
    handler.release_slow.notify_one();
    eventually(Duration::from_secs(10), "the stuck one acked too", || async {
        Ok(metric(&metrics, &acked) == 21.0)
    })
    .await?;
    shutdown.trigger();
    task.await?;
    // Nothing went back to the queue: every ack reached the broker.
    assert_eq!(queue_depth(&amqp, &topology.queue).await?, 0);
    assert_eq!(handler.seen().len(), 21, "nothing was handled twice");
    Ok(())
}

#[tokio::test]
async fn a_burst_finishing_out_of_order_is_acked_once_each_and_nothing_comes_back() -> anyhow::Result<()> {
    // Many handlers finishing in a shuffled order: a group ack must never
    // reach a message still in hand (it would be lost on a crash), and no
    // tag may be acked twice (the broker would close the channel and
    // redeliver everything unacked).
    let test_amqp = TestAmqp::new();
    let mut settings = amqp_settings(&test_amqp);
    settings.prefetch = 32;
    let amqp = Amqp::new(&settings, "test");
    let topology = Topology::for_group(&settings, "burst", &["test.#"]);
    declare(&test_amqp, &amqp, &topology).await?;
    let (metrics, shutdown) = (Metrics::default(), Shutdown::new());
    let handler = Recording { jitter_ms: 3, ..Recording::default() };
    let task = start_consumer(&amqp, &topology, handler.clone(), &metrics, &shutdown).await;

    const BURST: usize = 2_000;
    let events: Vec<_> = (0..BURST).map(|i| event(&format!("m{i}"), "test.burst")).collect();
    let outgoing: Vec<_> = events.iter().map(|e| Outgoing::event(&topology.exchange, e)).collect();
    Publisher::new(amqp.clone()).publish(&outgoing).await?;

    let acked = format!("tenx_queue_messages_total{{queue=\"{}\",outcome=\"acked\"}}", topology.queue);
    eventually(Duration::from_secs(30), "the whole burst acked", || async {
        Ok(metric(&metrics, &acked) == BURST as f64)
    })
    .await?;
    shutdown.trigger();
    task.await?;
    assert_eq!(queue_depth(&amqp, &topology.queue).await?, 0, "every ack reached the broker");
    let mut seen = handler.seen();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), BURST, "each message handled once");
    assert_eq!(handler.seen().len(), BURST, "and none twice");
    Ok(())
}
