//! Figures for the foundation's hot paths, against the real servers:
//! cache L1 hit, L2 hit and loader (L3 = a Postgres point read) latency;
//! outbox relay throughput; publish-with-confirm throughput.
//!
//! `make bench` (= `cargo bench -p tenx-common`) prints each figure next
//! to the committed baseline in `benches/baseline.json`;
//! `TENX_BENCH_SAVE=1 make bench` rewrites the baseline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenx_common::cache::{CacheLayer, CacheOptions, Redis, RedisSettings};
use tenx_common::db::{self, Db, DbSettings};
use tenx_common::metrics::Metrics;
use tenx_common::outbox::{self, NewEvent, Relay, RelaySettings};
use tenx_common::queue::{Amqp, AmqpSettings, Outgoing, Publisher, Topology};
use tenx_proto::events::v1::Envelope;
use tenx_test_support::{TestAmqp, TestDb, TestRedis};

const SCHEMA: &str = "bench";
/// Changes smaller than this are within run-to-run noise.
const NOISE_PERCENT: f64 = 15.0;

/// One figure: a value, its unit, and whether higher is better.
struct Figure {
    value: f64,
    unit: &'static str,
    higher_is_better: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut figures: BTreeMap<&str, Figure> = BTreeMap::new();
    let tdb = TestDb::from_template("bench", &db::common_fingerprint(), |url| async move {
        db::migrate(&url, SCHEMA, None).await?;
        Ok(())
    })
    .await?;
    let metrics = Metrics::default();
    let db = Arc::new(Db::connect(&DbSettings::new(&tdb.primary_url(), None, SCHEMA), "bench", &metrics)?);

    cache_figures(&db, &metrics, &mut figures).await?;
    let test_amqp = TestAmqp::new();
    publish_figures(&test_amqp, &mut figures).await?;
    relay_figures(&db, &test_amqp, &metrics, &mut figures).await?;

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
    out.insert("cache loader (L3 Postgres) latency", per_op_us(started.elapsed(), keys));

    // L2 hit: the reader's L1 is empty, Redis has every key.
    let started = Instant::now();
    for id in 1..=keys {
        reader.get_or_load(&id.to_string(), || load(id)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    out.insert("cache L2 (Redis) hit latency", per_op_us(started.elapsed(), keys));

    // L1 hit: the same hot key, in process.
    let hits = 200_000;
    let started = Instant::now();
    for _ in 0..hits {
        reader.get_or_load("1", || load(1)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    out.insert("cache L1 hit latency", per_op_us(started.elapsed(), hits));
    Ok(())
}

fn per_op_us(elapsed: Duration, ops: i32) -> Figure {
    Figure { value: elapsed.as_secs_f64() * 1e6 / f64::from(ops), unit: "µs/op", higher_is_better: false }
}

fn per_second(count: usize, elapsed: Duration) -> Figure {
    Figure { value: count as f64 / elapsed.as_secs_f64(), unit: "/s", higher_is_better: true }
}

fn amqp_for(test_amqp: &TestAmqp) -> AmqpSettings {
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
    out.insert("publish with confirm, one at a time", per_second(single, started.elapsed()));

    let (batches, size) = (100, 100);
    let started = Instant::now();
    for b in 0..batches {
        let batch: Vec<_> = (0..size).map(|i| message(b * size + i)).collect();
        publisher.publish(&batch).await?;
    }
    out.insert("publish with confirm, batches of 100", per_second(batches * size, started.elapsed()));
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
    out.insert("outbox relay, one relay", per_second(relayed, started.elapsed()));
    Ok(())
}

fn report(figures: &BTreeMap<&str, Figure>) -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json");
    let baseline: BTreeMap<String, f64> =
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    println!("\n{:<42} {:>16} {:>16} {:>12}", "benchmark", "now", "baseline", "change");
    for (name, figure) in figures {
        let now = format!("{:.2} {}", figure.value, figure.unit);
        let (then, change) = match baseline.get(*name) {
            Some(base) => {
                let change = (figure.value - base) / base * 100.0;
                let better = if figure.higher_is_better { change >= 0.0 } else { change <= 0.0 };
                // Run-to-run noise on a shared 2-core machine is about ±15 %.
                let verdict = if change.abs() < NOISE_PERCENT {
                    "≈"
                } else if better {
                    "better"
                } else {
                    "WORSE"
                };
                (format!("{base:.2} {}", figure.unit), format!("{change:+.0}% {verdict}"))
            }
            None => ("-".into(), "new".into()),
        };
        println!("{name:<42} {now:>16} {then:>16} {change:>12}");
    }
    if std::env::var_os("TENX_BENCH_SAVE").is_some() {
        let values: BTreeMap<&str, f64> =
            figures.iter().map(|(k, f)| (*k, (f.value * 100.0).round() / 100.0)).collect();
        std::fs::write(path, serde_json::to_string_pretty(&values)? + "\n")?;
        println!("\nbaseline written to {path}");
    }
    Ok(())
}
