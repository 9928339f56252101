//! The gauges sampled at each scrape: pools, replica lag, the outbox's
//! backlog, the inbox and RabbitMQ's queues, read from the real servers;
//! and what a scrape shows when one of them does not answer.

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use tenx_common::metrics::Metrics;
use tenx_common::outbox::{self, NewEvent, Relay, RelaySettings};
use tenx_common::queue::{Amqp, Consumer, Handler, HandlerError, Message, Topology, inbox};
use tenx_test_support::{ChaosProxy, TestAmqp, addr_of};

use crate::support::{amqp_settings, connect, declare, eventually, test_db};

const POOL: &str = "pool=\"tenx-common-tests\"";

/// The value of the series whose line starts with `series` in a fresh
/// scrape (probes run), or `None` when the scrape has no such series.
async fn scraped(metrics: &Metrics, series: &str) -> Option<f64> {
    metrics
        .scrape()
        .await
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn failures(probe: &str) -> String {
    format!("tenx_probe_failures_total{{probe=\"{probe}\"}}")
}

struct Ignore;

impl Handler for Ignore {
    async fn handle(&self, _: &Message) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_scrape_shows_the_outbox_backlog_and_its_age_the_inbox_and_the_pool_s_waiters() -> anyhow::Result<()>
{
    let tdb = test_db().await?;
    let metrics = Metrics::default();
    let mut settings = tenx_common::db::DbSettings::new(&tdb.primary_url(), None, crate::support::SCHEMA);
    settings.max_connections = 2;
    let db = Arc::new(tenx_common::db::Db::connect(&settings, "tenx-common-tests", &metrics)?);
    // What the host does for every service's database.
    tenx_common::probes::watch_pools(&metrics, &db);
    let test_amqp = TestAmqp::new();
    // Built, not run: its events stay pending.
    let _relay =
        Relay::new(&db, Amqp::new(&amqp_settings(&test_amqp), "relay"), RelaySettings::default(), &metrics);

    let outbox_pending = "tenx_outbox_pending{service=\"tenx-common-tests\"}";
    let outbox_age = "tenx_outbox_oldest_pending_age_seconds{service=\"tenx-common-tests\"}";
    let inbox_size = "tenx_inbox_messages{service=\"tenx-common-tests\"}";
    assert_eq!(scraped(&metrics, outbox_pending).await, Some(0.0));
    assert_eq!(scraped(&metrics, outbox_age).await, Some(0.0), "nothing pending is no age");
    assert_eq!(scraped(&metrics, inbox_size).await, Some(0.0));

    {
        let mut conn = db.write().await?;
        let tx = conn.transaction().await?;
        let events: Vec<_> = (0..5)
            .map(|i| NewEvent {
                event_type: "test.probe".into(),
                aggregate_id: format!("agg-{i}"),
                payload: vec![],
                payload_type: String::new(),
            })
            .collect();
        outbox::enqueue_all(&tx, &events).await?;
        for id in ["m1", "m2", "m3"] {
            assert!(inbox::claim(&tx, "probe", id).await?);
        }
        tx.commit().await?;
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(scraped(&metrics, outbox_pending).await, Some(5.0));
    let age = scraped(&metrics, outbox_age).await.unwrap_or_default();
    assert!((1.0..60.0).contains(&age), "the oldest pending event is about a second old: {age}");
    assert_eq!(scraped(&metrics, inbox_size).await, Some(3.0));

    // The pool: both connections held, a third caller waits.
    let held = (db.write().await?, db.write().await?);
    let waiter = tokio::spawn({
        let db = db.clone();
        async move { db.write().await.map(drop) }
    });
    let primary = |what: &str| format!("tenx_db_pool_{what}{{{POOL},role=\"primary\"}}");
    eventually(Duration::from_secs(5), "the third caller to wait", || async {
        Ok(scraped(&metrics, &primary("waiting")).await == Some(1.0))
    })
    .await?;
    let in_use = format!("tenx_db_pool_connections{{{POOL},role=\"primary\",state=\"in_use\"}}");
    assert_eq!(scraped(&metrics, &in_use).await, Some(2.0));
    assert_eq!(scraped(&metrics, &primary("max_connections")).await, Some(2.0));
    // The relay's own connections are a pool of their own, beside it.
    let relay = "tenx_db_pool_max_connections{pool=\"tenx-common-tests.relay\",role=\"primary\"}";
    assert_eq!(scraped(&metrics, relay).await, Some(2.0));
    drop(held);
    waiter.await??;
    assert_eq!(scraped(&metrics, &primary("waiting")).await, Some(0.0));
    let waits =
        scraped(&metrics, &format!("tenx_db_pool_wait_seconds_count{{{POOL},role=\"primary\"}}")).await;
    assert!(waits.unwrap_or_default() >= 4.0, "every get is timed: {waits:?}");

    // Published: no backlog, no age.
    db.write().await?.batch_execute("DELETE FROM tenx_outbox_pending").await?;
    assert_eq!(scraped(&metrics, outbox_pending).await, Some(0.0));
    assert_eq!(scraped(&metrics, outbox_age).await, Some(0.0));
    Ok(())
}

#[tokio::test]
async fn a_scrape_shows_the_replica_s_lag_and_no_lag_at_all_when_the_replica_does_not_answer()
-> anyhow::Result<()> {
    let tdb = test_db().await?;
    tdb.wait_for_replica().await?;
    let proxy = ChaosProxy::start(addr_of(&tdb.replica_url())?).await?;
    let metrics = Metrics::default();
    let db = connect(&tdb, Some(&tdb.url_via(proxy.port())), &metrics)?;
    tenx_common::probes::watch_pools(&metrics, &db);
    let bytes = format!("tenx_db_replica_lag_bytes{{{POOL}}}");
    let seconds = format!("tenx_db_replica_lag_seconds{{{POOL}}}");
    // Other tests write meanwhile, so the real replica is a little behind
    // or not at all; never by much on loopback.
    let lag = scraped(&metrics, &bytes).await.ok_or_else(|| anyhow::anyhow!("no lag series"))?;
    assert!(lag < 64.0 * 1024.0 * 1024.0, "lag of {lag} bytes");
    let behind = scraped(&metrics, &seconds).await.ok_or_else(|| anyhow::anyhow!("no lag series"))?;
    assert!(behind < 60.0, "{behind} s behind");
    assert_eq!(scraped(&metrics, &failures("replica_lag")).await, None);

    // The replica out of reach: no lag to report (the last one, or 0,
    // would say it is fine), one failure per scrape.
    proxy.cut();
    assert_eq!(scraped(&metrics, &bytes).await, None);
    assert_eq!(scraped(&metrics, &seconds).await, None);
    assert_eq!(scraped(&metrics, &failures("replica_lag")).await, Some(3.0), "one per scrape, three scrapes");
    let max = format!("tenx_db_pool_max_connections{{{POOL},role=\"primary\"}}");
    assert!(scraped(&metrics, &max).await.is_some(), "the primary's pool is still reported");
    Ok(())
}

#[tokio::test]
async fn a_scrape_shows_each_queue_s_depth_by_kind_and_nothing_while_the_broker_is_unreachable()
-> anyhow::Result<()> {
    let test_amqp = TestAmqp::new();
    let settings = amqp_settings(&test_amqp);
    let proxy = ChaosProxy::start(addr_of(test_amqp.url())?).await?;
    let mut proxied = settings.clone();
    proxied.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()).into();
    let amqp = Amqp::new(&proxied, "probed");
    let topology = Topology::for_group(&settings, "probed", &["test.#"]);
    declare(&test_amqp, &amqp, &topology).await?;
    let metrics = Metrics::default();
    // Built, not run: what is published stays in its queues.
    let _consumer = Consumer::new(amqp.clone(), topology.clone(), Ignore, &metrics);

    let channel = amqp.channel().await?;
    channel.confirm_select(Default::default()).await?;
    let publish = |exchange: String, key: String| {
        let channel = channel.clone();
        async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default(),
                )
                .await?
                .await?;
            anyhow::Ok(())
        }
    };
    for _ in 0..3 {
        publish(topology.exchange.clone(), "test.work".into()).await?;
    }
    for _ in 0..2 {
        publish(String::new(), topology.dead_letter.clone()).await?;
    }
    publish(topology.exchange.clone(), "nobody.listens".into()).await?;

    let depth = |queue: &str, kind: &str| format!("tenx_queue_depth{{queue=\"{queue}\",kind=\"{kind}\"}}");
    let work = depth(&topology.queue, "work");
    let dead = depth(&topology.dead_letter, "dead_letter");
    let unrouted = depth(&topology.unrouted, "unrouted");
    eventually(Duration::from_secs(5), "the depths the broker reports", || async {
        Ok(scraped(&metrics, &work).await == Some(3.0)
            && scraped(&metrics, &dead).await == Some(2.0)
            && scraped(&metrics, &unrouted).await == Some(1.0))
    })
    .await?;
    for (retry, _) in &topology.retry_tiers {
        assert_eq!(scraped(&metrics, &depth(retry, "retry")).await, Some(0.0));
    }
    let consumers = format!("tenx_queue_consumers{{queue=\"{}\",kind=\"work\"}}", topology.queue);
    assert_eq!(scraped(&metrics, &consumers).await, Some(0.0));

    // The broker out of reach: no depth at all rather than the last one.
    proxy.cut();
    assert_eq!(scraped(&metrics, &work).await, None);
    assert_eq!(scraped(&metrics, &dead).await, None);
    assert!(scraped(&metrics, &failures("queues")).await.unwrap_or_default() >= 1.0);
    proxy.restore();
    eventually(Duration::from_secs(10), "the depths back once the broker is", || async {
        Ok(scraped(&metrics, &dead).await == Some(2.0))
    })
    .await?;
    Ok(())
}
