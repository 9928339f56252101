//! Transactional outbox: an event is a row written in the caller's own
//! transaction, so it exists exactly when the business change does; a
//! relay publishes pending rows to RabbitMQ with publisher confirms and
//! marks them published only after the broker confirmed them.
//!
//! Several relays (one per service replica) run at once safely. Rows are
//! spread over 16 partitions by aggregate id, and a relay publishes only
//! partitions it holds a transaction-scoped advisory lock on: no row is
//! published by two relays, and one aggregate's events go out in the order
//! they were written. (That order is commit order when writers of one
//! aggregate are serialised, e.g. by locking the aggregate's row.)
//!
//! A broker outage delays events and never drops them: the rows stay
//! pending and the relay retries with backoff. A crash after the confirm
//! but before the commit publishes a batch twice; consumers dedupe by id.

use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tenx_proto::events::v1::{Envelope, TraceContext};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::db::{Db, DbError, Prepared};
use crate::metrics::{MetricSet, Metrics};
use crate::queue::{Amqp, Backoff, Outgoing, Publisher, QueueError, Topology};
use crate::shutdown::Shutdown;
use crate::telemetry::TraceHeaders;
use crate::telemetry::propagation::set_remote_parent;

/// Longest wait for a batch's confirms before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// An event to record with [`enqueue`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `<service>.<entity>.<verb>`; also the routing key.
    pub event_type: String,
    /// What the event is about; events of one aggregate stay in order.
    pub aggregate_id: String,
    /// The encoded event message.
    pub payload: Vec<u8>,
    /// Its fully-qualified protobuf name.
    pub payload_type: String,
}

impl NewEvent {
    pub fn new<M: prost::Name>(event_type: &str, aggregate_id: &str, payload: &M) -> Self {
        Self {
            event_type: event_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            payload: payload.encode_to_vec(),
            payload_type: M::full_name(),
        }
    }
}

/// Records `event` in the caller's transaction (connection with
/// `search_path` at the service schema), with the current trace context.
/// Returns the event id.
pub async fn enqueue<C: GenericClient>(tx: &C, event: &NewEvent) -> Result<Uuid, tokio_postgres::Error> {
    let id = Uuid::now_v7();
    let trace = TraceHeaders::current();
    tx.execute_cached(
        "INSERT INTO tenx_outbox \
           (id, event_type, aggregate_id, partition, payload, payload_type, traceparent, tracestate) \
         VALUES ($1, $2, $3, (hashtext($3) & 15)::smallint, $4, $5, $6, $7)",
        &[
            &id,
            &event.event_type,
            &event.aggregate_id,
            &event.payload,
            &event.payload_type,
            &trace.traceparent,
            &trace.tracestate,
        ],
    )
    .await?;
    Ok(id)
}

/// Relay settings (keys under `outbox.`).
#[derive(Debug, Clone, Deserialize)]
pub struct RelaySettings {
    /// Most events published per transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: i64,
    /// Most partitions one relay takes per batch, leaving the others to
    /// other relays.
    #[serde(default = "default_partitions_per_batch")]
    pub partitions_per_batch: i64,
    /// Pause between polls when nothing is pending.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Published rows are deleted after this long.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u32,
}

fn default_batch_size() -> i64 {
    500
}
fn default_partitions_per_batch() -> i64 {
    8
}
fn default_poll_interval_ms() -> u64 {
    50
}
fn default_retention_hours() -> u32 {
    72
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: default_batch_size(),
            partitions_per_batch: default_partitions_per_batch(),
            poll_interval_ms: default_poll_interval_ms(),
            retention_hours: default_retention_hours(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

#[derive(Clone, Default)]
struct RelayMetrics {
    published: Counter,
    failures: Counter,
}

impl MetricSet for RelayMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register("outbox_published", "Outbox events confirmed by the broker", set.published.clone());
        metrics.register(
            "outbox_publish_failures",
            "Outbox batches the broker did not confirm",
            set.failures.clone(),
        );
        set
    }
}

/// Publishes one service's outbox. Cheap to run one per replica.
pub struct Relay {
    pool: deadpool_postgres::Pool,
    publisher: Publisher,
    exchange: String,
    settings: RelaySettings,
    metrics: RelayMetrics,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("exchange", &self.exchange).finish_non_exhaustive()
    }
}

const CLAIM_BATCH: &str = "\
WITH mine AS (
    SELECT p FROM (
        SELECT DISTINCT partition AS p FROM tenx_outbox WHERE published_at IS NULL
    ) AS pending
    WHERE pg_try_advisory_xact_lock(hashtext('tenx.outbox.' || current_schema()), p)
    LIMIT $1
)
SELECT seq, id, event_type, aggregate_id, payload, payload_type, traceparent, tracestate, occurred_at
FROM tenx_outbox
WHERE published_at IS NULL AND partition IN (SELECT p FROM mine)
ORDER BY seq
LIMIT $2
FOR UPDATE OF tenx_outbox SKIP LOCKED";

impl Relay {
    pub fn new(db: &Db, amqp: Amqp, settings: RelaySettings, metrics: &Metrics) -> Self {
        amqp.register(Topology::exchange_only(amqp.settings()));
        Self {
            pool: db.primary_pool().clone(),
            exchange: amqp.settings().exchange_name(),
            publisher: Publisher::new(amqp),
            settings,
            metrics: metrics.set(),
        }
    }

    /// Relays until `shutdown`: immediately again while batches come back
    /// full, every `poll_interval_ms` when idle, with backoff on errors.
    pub async fn run(self, shutdown: Shutdown) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms);
        let mut backoff = Backoff::new();
        let mut last_prune = tokio::time::Instant::now();
        while !shutdown.is_triggered() {
            let pause = match self.relay_batch().await {
                Ok(n) if n >= self.settings.batch_size as usize => {
                    backoff.reset();
                    continue;
                }
                Ok(_) => {
                    backoff.reset();
                    if last_prune.elapsed() > Duration::from_secs(60) {
                        last_prune = tokio::time::Instant::now();
                        self.prune().await;
                    }
                    idle
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay batch failed; retrying");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait() => break,
            }
        }
    }

    /// Publishes one batch; returns how many events it confirmed.
    pub async fn relay_batch(&self) -> Result<usize, OutboxError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query_cached(CLAIM_BATCH, &[&self.settings.partitions_per_batch, &self.settings.batch_size])
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            seqs.push(row.get::<_, i64>("seq"));
            messages.push(Outgoing::event(&self.exchange, &envelope_of(row)));
        }
        // Bounded: a blocked broker (memory alarm) or a half-open
        // connection must not hold this transaction and its locks open.
        let published = match tokio::time::timeout(PUBLISH_TIMEOUT, self.publisher.publish(&messages)).await {
            Ok(result) => result,
            Err(_) => Err(QueueError::Unavailable(format!("no confirms within {PUBLISH_TIMEOUT:?}"))),
        };
        match published {
            Ok(()) => {
                tx.execute_cached(
                    "UPDATE tenx_outbox SET published_at = now() WHERE seq = ANY($1)",
                    &[&seqs],
                )
                .await?;
                tx.commit().await?;
                self.metrics.published.inc_by(seqs.len() as u64);
                Ok(seqs.len())
            }
            Err(error) => {
                self.metrics.failures.inc();
                let reason = error.to_string();
                tx.execute(
                    "UPDATE tenx_outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = ANY($1)",
                    &[&seqs, &reason],
                )
                .await?;
                tx.commit().await?;
                Err(error.into())
            }
        }
    }

    async fn prune(&self) {
        let Ok(client) = self.pool.get().await else { return };
        let hours = f64::from(self.settings.retention_hours);
        let deleted = client
            .execute(
                "DELETE FROM tenx_outbox WHERE published_at < now() - make_interval(hours => $1::float8::int)",
                &[&hours],
            )
            .await;
        if let Err(error) = deleted {
            tracing::warn!(%error, "outbox prune failed");
        }
    }
}

/// The envelope of one outbox row. The relay's publish span becomes the
/// parent of the consumer's span, joining the request's trace.
fn envelope_of(row: &tokio_postgres::Row) -> Envelope {
    let event_type: String = row.get("event_type");
    let stored = TraceHeaders { traceparent: row.get("traceparent"), tracestate: row.get("tracestate") };
    let span = tracing::info_span!("outbox.publish", otel.kind = "producer", event.r#type = %event_type);
    set_remote_parent(&span, stored.to_context());
    let published = TraceHeaders::from_context(&span.context());
    let trace = if published.is_empty() { stored } else { published };
    let occurred: SystemTime = row.get("occurred_at");
    Envelope {
        id: row.get::<_, Uuid>("id").to_string(),
        r#type: event_type,
        occurred_at: Some(occurred.into()),
        aggregate_id: row.get("aggregate_id"),
        trace_context: Some(TraceContext { traceparent: trace.traceparent, tracestate: trace.tracestate }),
        payload: row.get("payload"),
        payload_type: row.get("payload_type"),
    }
}
