//! Figures for the foundation's hot paths, against the real servers:
//! cache L1 hit, L2 hit and loader (L3 = a Postgres point read) latency;
//! outbox relay throughput; publish-with-confirm throughput; the job
//! pipeline end to end ([`pipeline`]), with #17's targets.
//!
//! `make bench` (= `cargo bench -p tenx-common`) prints each figure next
//! to the committed baseline in `benches/baseline.json`;
//! `TENX_BENCH_SAVE=1 make bench` rewrites the baseline;
//! `TENX_BENCH_ONLY=pipeline` (or cache, publish, relay) measures only
//! that part (and saves no baseline).

#[path = "foundation/pipeline.rs"]
mod pipeline;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tenx_common::cache::{CacheLayer, CacheOptions, Redis, RedisSettings};
use tenx_common::db::{self, Db, DbSettings};
use tenx_common::metrics::Metrics;
use tenx_common::outbox::{self, NewEvent, Relay, RelaySettings};
use tenx_common::queue::{Amqp, AmqpSettings, Outgoing, Publisher, Topology};
use tenx_proto::events::v1::Envelope;
use tenx_test_support::bench::{self, Figure};
use tenx_test_support::{TestAmqp, TestDb, TestRedis};

const SCHEMA: &str = "bench";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let only = std::env::var("TENX_BENCH_ONLY").unwrap_or_default();
    anyhow::ensure!(
        only.is_empty() || std::env::var_os("TENX_BENCH_SAVE").is_none(),
        "a baseline is saved from a whole run only"
    );
    let measures = |part: &str| part.contains(only.as_str());
    let mut figures: BTreeMap<&str, Figure> = BTreeMap::new();
    let tdb = TestDb::from_template("bench", &db::common_fingerprint(), |url| async move {
        db::migrate(&url, SCHEMA, None).await?;
        Ok(())
    })
    .await?;
    let metrics = Metrics::default();
    let db = Arc::new(Db::connect(&DbSettings::new(&tdb.primary_url(), None, SCHEMA), "bench", &metrics)?);

    if measures("cache") {
        cache_figures(&db, &metrics, &mut figures).await?;
    }
    let test_amqp = TestAmqp::new();
    if measures("publish") {
        publish_figures(&test_amqp, &mut figures).await?;
    }
    if measures("relay") {
        relay_figures(&db, &test_amqp, &metrics, &mut figures).await?;
    }
    if measures("pipeline") {
        pipeline::figures(&db, &test_amqp, &mut figures).await?;
    }

    let figure = |name: &str| figures.get(name).map(|f| f.value);
    for (target, met) in [
        ("pipeline / raw confirms, events/s ≥ 0.80", figure(pipeline::RATIO).map(|v| v >= 0.8)),
        ("commit -> handler at 1000/s, p99 ≤ 20 ms", figure(pipeline::PACED_P99).map(|v| v <= 20.0)),
    ] {
        let verdict = match met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "not measured",
        };
        println!("target {target:<44} {verdict}");
    }
    report(&figures)
}

async fn cache_figures(
    db: &Arc<Db>,
    metrics: &Metrics,
    out: &mut BTreeMap<&str, Figure>,
) -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let redis = || Redis::connect(&RedisSettings::new(test_redis.url(), test_redis.prefix()));
    let writer = CacheLayer::new(Some(redis()?), metrics).cache::<String>("bench", CacheOptions::default());
    let reader = CacheLayer::new(Some(redis()?), metrics).cache::<String>("bench", CacheOptions::default());
    db.write()
        .await?
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5000) g",
        )
        .await?;
    let load = |id: i32| {
        let db = db.clone();
        async move {
            let conn = db.read(None).await?;
            let row = conn.query_one("SELECT body FROM items WHERE id = $1", &[&id]).await?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };

    // Loader path: L1 and L2 miss, a Postgres read, an L2 write.
    let keys = 2_000;
    let started = Instant::now();
    for id in 1..=keys {
        writer.get_or_load(&id.to_string(), || load(id)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    out.insert("cache loader (L3 Postgres) latency", Figure::per_op_us(started.elapsed(), keys as usize));

    // L2 hit: the reader's L1 is empty, Redis has every key.
    let started = Instant::now();
    for id in 1..=keys {
        reader.get_or_load(&id.to_string(), || load(id)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    out.insert("cache L2 (Redis) hit latency", Figure::per_op_us(started.elapsed(), keys as usize));

    // L1 hit: the same hot key, in process.
    let hits = 200_000;
    let started = Instant::now();
    for _ in 0..hits {
        reader.get_or_load("1", || load(1)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    out.insert("cache L1 hit latency", Figure::per_op_us(started.elapsed(), hits as usize));
    Ok(())
}

pub(crate) fn amqp_for(test_amqp: &TestAmqp) -> AmqpSettings {
    AmqpSettings::new(test_amqp.url(), test_amqp.prefix())
}

async fn publish_figures(test_amqp: &TestAmqp, out: &mut BTreeMap<&str, Figure>) -> anyhow::Result<()> {
    let settings = amqp_for(test_amqp);
    let amqp = Amqp::new(&settings, "bench-publish");
    let topology = Topology::for_group(&settings, "bench-publish", &["bench.#"]);
    test_amqp.track(topology.queue_names(), topology.exchange_names());
    topology.declare(&amqp.channel().await?).await?;
    let publisher = Publisher::new(amqp);
    let message = |i: usize| {
        let envelope = Envelope {
            id: format!("m{i}"),
            r#type: "bench.published".into(),
            payload: vec![7; 256],
            ..Default::default()
        };
        Outgoing::event(&topology.exchange, &envelope)
    };

    let single = 1_000;
    let started = Instant::now();
    for i in 0..single {
        publisher.publish(&[message(i)]).await?;
    }
    out.insert("publish with confirm, one at a time", Figure::per_second(single, started.elapsed()));

    let (batches, size) = (100, 100);
    let started = Instant::now();
    for b in 0..batches {
        let batch: Vec<_> = (0..size).map(|i| message(b * size + i)).collect();
        publisher.publish(&batch).await?;
    }
    out.insert("publish with confirm, batches of 100", Figure::per_second(batches * size, started.elapsed()));
    Ok(())
}

async fn relay_figures(
    db: &Arc<Db>,
    test_amqp: &TestAmqp,
    metrics: &Metrics,
    out: &mut BTreeMap<&str, Figure>,
) -> anyhow::Result<()> {
    let settings = amqp_for(test_amqp);
    let topology = Topology::for_group(&settings, "bench-relay", &["bench.#"]);
    test_amqp.track(topology.queue_names(), topology.exchange_names());
    let amqp = Amqp::new(&settings, "bench-relay");
    topology.declare(&amqp.channel().await?).await?;

    let events = 20_000;
    let mut conn = db.write().await?;
    for chunk in 0..events / 100 {
        let tx = conn.transaction().await?;
        for i in 0..100 {
            let event = NewEvent {
                event_type: "bench.relayed".into(),
                aggregate_id: format!("agg-{}", (chunk * 100 + i) % 500),
                payload: vec![7; 256],
                payload_type: "bench".into(),
            };
            outbox::enqueue(&tx, &event).await?;
        }
        tx.commit().await?;
    }
    drop(conn);

    let relay = Relay::new(db, amqp, RelaySettings::default(), metrics);
    let started = Instant::now();
    let mut relayed = 0;
    while relayed < events {
        relayed += relay.relay_batch().await?;
    }
    out.insert("outbox relay, one relay", Figure::per_second(relayed, started.elapsed()));
    Ok(())
}

fn report(figures: &BTreeMap<&str, Figure>) -> anyhow::Result<()> {
    bench::report(figures, concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json"))
}
