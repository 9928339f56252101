//! Gauges of state that lives outside the process: the Postgres pools and
//! the replica's lag, the outbox's backlog and the inbox, RabbitMQ's queues.
//! Each is sampled when Prometheus scrapes ([`Metrics::probe`]), so it is as
//! fresh as the scrape and costs nothing between scrapes.
//!
//! A sample that fails (the broker is down, a query timed out) removes its
//! series rather than leaving the last value, which would say all is well,
//! and counts `tenx_probe_failures_total{probe}`, on which the chart's
//! `TenxProbeFailing` alert fires (the alerts on the missing gauges cannot).

use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::FutureExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

use crate::db::{Db, PoolLabels, Prepared, Role, WalPosition};
use crate::metrics::{MetricSet, Metrics};
use crate::queue::{Amqp, Topology, close_quietly, inspect};

/// Longest one sample may take; past it the sample counts as failed. Below
/// [`crate::metrics::PROBE_TIMEOUT`], so the failure is seen and recorded.
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(1_500);

/// The outbox's pending rows are counted up to this many (a count of a
/// backlog of millions would outlast the scrape); a gauge at this value
/// means "this many or more".
pub const OUTBOX_COUNT_CAP: i64 = 1_000_000;

/// The inbox is counted exactly up to this many rows, estimated from
/// Postgres's statistics (`pg_class.reltuples`) above.
pub const INBOX_EXACT_BELOW: i64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProbeLabel {
    probe: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ConnState {
    Idle,
    InUse,
}
crate::metrics::label_values!(ConnState { Idle => "idle", InUse => "in_use" });

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnLabels {
    pool: String,
    role: Role,
    state: ConnState,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolName {
    pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// What a queue is for, so an alert can select the dead-letter queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum QueueKind {
    Work,
    Retry,
    DeadLetter,
    Unrouted,
}
crate::metrics::label_values!(QueueKind {
    Work => "work",
    Retry => "retry",
    DeadLetter => "dead_letter",
    Unrouted => "unrouted",
});

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
    kind: QueueKind,
}

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Default)]
struct ProbeMetrics {
    failures: Family<ProbeLabel, Counter>,
    connections: Family<ConnLabels, Gauge>,
    max_connections: Family<PoolLabels, Gauge>,
    waiting: Family<PoolLabels, Gauge>,
    lag_bytes: Family<PoolName, Gauge>,
    lag_seconds: Family<PoolName, FloatGauge>,
    outbox_pending: Family<ServiceLabel, Gauge>,
    outbox_age: Family<ServiceLabel, FloatGauge>,
    inbox: Family<ServiceLabel, Gauge>,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_consumers: Family<QueueLabels, Gauge>,
}

impl MetricSet for ProbeMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register(
            "probe_failures",
            "Scrape-time samples that failed; their series are left out until one succeeds",
            set.failures.clone(),
        );
        metrics.register(
            "db_pool_connections",
            "Open connections of a Postgres pool, idle or in use",
            set.connections.clone(),
        );
        metrics.register(
            "db_pool_max_connections",
            "Size limit of a Postgres pool",
            set.max_connections.clone(),
        );
        metrics.register(
            "db_pool_waiting",
            "Callers waiting for a connection of a Postgres pool",
            set.waiting.clone(),
        );
        metrics.register(
            "db_replica_lag_bytes",
            "WAL the primary has written that the read replica has not replayed",
            set.lag_bytes.clone(),
        );
        metrics.register("db_replica_lag_seconds", "Age of the last transaction the replica replayed while it has WAL left to replay (0 when caught up)", set.lag_seconds.clone());
        metrics.register(
            "outbox_pending",
            "Outbox events not yet published (counted up to 1,000,000)",
            set.outbox_pending.clone(),
        );
        metrics.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox event not yet published (0 when none is)",
            set.outbox_age.clone(),
        );
        metrics.register(
            "inbox_messages",
            "Message ids in the inbox (exact below 100,000 rows, Postgres's estimate above)",
            set.inbox.clone(),
        );
        metrics.register(
            "queue_depth",
            "Messages ready in a RabbitMQ queue (not counting those delivered and unacknowledged)",
            set.queue_depth.clone(),
        );
        metrics.register("queue_consumers", "Consumers of a RabbitMQ queue", set.queue_consumers.clone());
        set
    }
}

impl ProbeMetrics {
    fn failed(&self, probe: &'static str, error: &dyn std::fmt::Display) {
        tracing::debug!(probe, %error, "metric probe failed");
        self.failures.get_or_create(&ProbeLabel { probe }).inc();
    }
}

/// Runs `sample` bounded by [`SAMPLE_TIMEOUT`]; on failure, counts it and
/// runs `forget` (which removes the series the sample would have set).
async fn sampled<F>(set: &ProbeMetrics, probe: &'static str, sample: F, forget: impl FnOnce())
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let outcome = match tokio::time::timeout(SAMPLE_TIMEOUT, sample).await {
        Ok(outcome) => outcome,
        Err(_) => Err("timed out".into()),
    };
    if let Err(error) = outcome {
        set.failed(probe, &error);
        forget();
    }
}

/// The pools' connections and waiters, and how far the replica is behind
/// the primary, sampled at each scrape from the probes' own one-connection
/// pools (a scrape neither waits behind the service's callers nor shows
/// up among the waiters it reports). The outbox relay's own connections
/// to the primary are the pool `<service>.relay`, so every connection a
/// process holds is counted. The host starts them for every service's
/// database.
pub fn watch_pools(metrics: &Metrics, db: &Db) {
    let (primary, replica, relay) = db.pools_to_watch();
    let name = db.name().to_owned();
    let set: ProbeMetrics = metrics.set();
    let primary = primary.map(Pool::weak);
    let replica = replica.map(|(pool, probe)| [pool.weak(), probe.weak()]);
    let relay = relay.weak();
    metrics.probe(move || {
        let [primary, primary_probe] = [primary[0].upgrade()?, primary[1].upgrade()?];
        let relay = relay.upgrade()?;
        let replica = match &replica {
            Some([pool, probe]) => Some([pool.upgrade()?, probe.upgrade()?]),
            None => None,
        };
        let (set, name) = (set.clone(), name.clone());
        Some(
            async move {
                pool_gauges(&set, &name, Role::Primary, &primary);
                pool_gauges(&set, &format!("{name}.relay"), Role::Primary, &relay);
                let Some([replica, replica_probe]) = replica else { return };
                pool_gauges(&set, &name, Role::Replica, &replica);
                let label = PoolName { pool: name };
                let forget = || {
                    set.lag_bytes.remove(&label);
                    set.lag_seconds.remove(&label);
                };
                let sample = async {
                    let (bytes, seconds) = replica_lag(&primary_probe, &replica_probe).await?;
                    set.lag_bytes.get_or_create(&label).set(i64::try_from(bytes).unwrap_or(i64::MAX));
                    set.lag_seconds.get_or_create(&label).set(seconds);
                    Ok(())
                };
                sampled(&set, "replica_lag", sample, forget).await;
            }
            .boxed(),
        )
    });
}

fn pool_gauges(set: &ProbeMetrics, name: &str, role: Role, pool: &Pool) {
    let status = pool.status();
    let labels = PoolLabels { pool: name.to_owned(), role };
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let state = |state| ConnLabels { pool: name.to_owned(), role, state };
    set.connections.get_or_create(&state(ConnState::Idle)).set(count(status.available));
    set.connections
        .get_or_create(&state(ConnState::InUse))
        .set(count(status.size.saturating_sub(status.available)));
    set.max_connections.get_or_create(&labels).set(count(status.max_size));
    set.waiting.get_or_create(&labels).set(count(status.waiting));
}

/// Bytes of WAL the replica has not replayed, and the age of the last
/// transaction it replayed while it has more to replay (0 when it has
/// replayed all it received: an idle primary is not a lagging replica).
/// A "replica" that is a primary (a test, or a failover) lags by nothing.
async fn replica_lag(primary: &Pool, replica: &Pool) -> Result<(u64, f64), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let replica = replica.get().await.map_err(|e| text(&e))?;
    let row = replica
        .query_one_cached(
            "SELECT pg_last_wal_replay_lsn()::text, \
                    CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                         ELSE COALESCE(EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8",
            &[],
        )
        .await
        .map_err(|e| text(&e))?;
    let Some(replayed) = row.get::<_, Option<String>>(0) else {
        return Ok((0, 0.0));
    };
    let replayed: WalPosition = replayed.parse().map_err(|e| text(&e))?;
    let seconds: f64 = row.get(1);
    let primary = primary.get().await.map_err(|e| text(&e))?;
    let row =
        primary.query_one_cached("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(|e| text(&e))?;
    let written: WalPosition = row.get::<_, String>(0).parse().map_err(|e| text(&e))?;
    Ok((written.bytes_after(replayed), seconds.max(0.0)))
}

/// The outbox's backlog and the inbox's size, in the schema `pool`'s
/// connections work in, labelled `service`.
pub(crate) fn watch_outbox(metrics: &Metrics, service: &str, pool: &Pool) {
    let set: ProbeMetrics = metrics.set();
    let (label, pool) = (ServiceLabel { service: service.to_owned() }, pool.weak());
    metrics.probe(move || {
        let pool = pool.upgrade()?;
        let (set, label) = (set.clone(), label.clone());
        Some(
            async move {
                let forget = || {
                    set.outbox_pending.remove(&label);
                    set.outbox_age.remove(&label);
                    set.inbox.remove(&label);
                };
                let sample = async {
                    let conn = pool.get().await.map_err(|e| e.to_string())?;
                    let row = conn
                        .query_one_cached(OUTBOX_AND_INBOX, &[&OUTBOX_COUNT_CAP, &INBOX_EXACT_BELOW])
                        .await
                        .map_err(|e| e.to_string())?;
                    set.outbox_pending.get_or_create(&label).set(row.get("pending"));
                    set.outbox_age.get_or_create(&label).set(row.get("oldest_age"));
                    set.inbox.get_or_create(&label).set(row.get("inbox"));
                    Ok(())
                };
                sampled(&set, "outbox", sample, forget).await;
            }
            .boxed(),
        )
    });
}

/// One query: pending rows (their markers, up to `$1`); the oldest
/// pending event's age, from the first marker of each of the 16
/// partitions (the relay's own index, so a backlog costs 16 probes, not a
/// scan); the inbox's rows (exact below `$2`).
const OUTBOX_AND_INBOX: &str = "\
    SELECT (SELECT count(*) FROM (SELECT 1 FROM tenx_outbox_pending LIMIT $1::bigint) p) AS pending, \
           COALESCE(EXTRACT(epoch FROM now() - ( \
             SELECT min(o.occurred_at) FROM generate_series(0, 15) AS g (p) CROSS JOIN LATERAL ( \
               SELECT seq FROM tenx_outbox_pending WHERE partition = g.p \
               ORDER BY seq LIMIT 1) q JOIN tenx_outbox o ON o.seq = q.seq)), 0)::float8 AS oldest_age, \
           (SELECT CASE WHEN c.reltuples < $2::bigint THEN (SELECT count(*) FROM tenx_inbox) ELSE c.reltuples::bigint END \
            FROM pg_class c WHERE c.oid = 'tenx_inbox'::regclass) AS inbox";

/// The depth and consumers of every queue of `topology` (work, retry
/// tiers, dead letters, and the exchange's unrouted queue).
pub(crate) fn watch_queues(metrics: &Metrics, amqp: &Amqp, topology: &Topology) {
    let set: ProbeMetrics = metrics.set();
    let mut queues = vec![(topology.unrouted.clone(), QueueKind::Unrouted)];
    if !topology.queue.is_empty() {
        queues.push((topology.queue.clone(), QueueKind::Work));
        queues.push((topology.dead_letter.clone(), QueueKind::DeadLetter));
        queues.extend(topology.retry_tiers.iter().map(|(name, _)| (name.clone(), QueueKind::Retry)));
    }
    let labels: Vec<QueueLabels> =
        queues.into_iter().map(|(queue, kind)| QueueLabels { queue, kind }).collect();
    let amqp = amqp.downgrade();
    metrics.probe(move || {
        let amqp = amqp.upgrade()?;
        let (set, labels) = (set.clone(), labels.clone());
        Some(
            async move {
                let forget = || {
                    for label in &labels {
                        set.queue_depth.remove(label);
                        set.queue_consumers.remove(label);
                    }
                };
                let sample = async {
                    let channel = amqp.channel().await.map_err(|e| e.to_string())?;
                    let mut outcome = Ok(());
                    for label in &labels {
                        match inspect(&channel, &label.queue).await {
                            Ok(queue) => {
                                set.queue_depth.get_or_create(label).set(i64::from(queue.message_count()));
                                set.queue_consumers
                                    .get_or_create(label)
                                    .set(i64::from(queue.consumer_count()));
                            }
                            Err(error) => {
                                outcome = Err(format!("{}: {error}", label.queue));
                                break;
                            }
                        }
                    }
                    close_quietly(&channel, "probe").await;
                    outcome
                };
                sampled(&set, "queues", sample, forget).await;
            }
            .boxed(),
        )
    });
}
