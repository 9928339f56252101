//! Transactional outbox: an event is a row written in the caller's own
//! transaction, so it exists exactly when the business change does; a
//! relay publishes pending rows to RabbitMQ with publisher confirms and
//! marks them published only after the broker confirmed them.
//!
//! A row is pending while its marker, a narrow `(partition, seq)` row in
//! `tenx_outbox_pending` that a trigger inserts with it, exists; marking
//! it published deletes the marker and leaves the event's own row as it
//! was written (an update of that row rewrote it whole, payload and all).
//!
//! Several relays (one per service replica) run at once safely. Rows are
//! spread over 16 partitions by aggregate id, and a relay publishes only
//! partitions it holds a transaction-scoped advisory lock on: no row is
//! published by two relays, and one aggregate's events go out in the order
//! they were written. (That order is commit order when writers of one
//! aggregate are serialised, e.g. by locking the aggregate's row.)
//!
//! Each relay remembers, per partition, a floor below which everything
//! is published, and reads only above it: a busy outbox leaves thousands
//! of index entries of deleted markers that a streaming replica's
//! `hot_standby_feedback` keeps alive for seconds, and reading past them
//! cost more than the rest of the batch. A floor only passes a seq once
//! no transaction that could still commit it is running ([`Floors`]).
//!
//! A broker outage delays events and never drops them: the rows stay
//! pending and the relay retries with backoff. A crash after the confirm
//! but before the commit publishes a batch twice; consumers dedupe by id.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tenx_proto::events::v1::{Envelope, TraceContext};
use tokio_postgres::types::ToSql;
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
    /// `payload` about `aggregate_id`, under the type its message declares
    /// in the contract (`tenx_proto::Event`), so a payload cannot go out
    /// under another event's name.
    pub fn of<M: tenx_proto::Event>(aggregate_id: &str, payload: &M) -> Self {
        Self {
            event_type: M::TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            payload: payload.encode_to_vec(),
            payload_type: M::full_name(),
        }
    }
}

/// Records `event` in the caller's transaction (connection with
/// `search_path` at the service schema), with the current trace context.
/// Returns the event id.
pub async fn enqueue<C: Prepared>(tx: &C, event: &NewEvent) -> Result<Uuid, tokio_postgres::Error> {
    crate::db::count_outbox_write();
    let id = Uuid::now_v7();
    let trace = TraceHeaders::current();
    // The transaction gets its id before the row its seq: the relay's
    // floors ([`Floors`]) rely on every seq being taken by a transaction
    // whose id is already assigned.
    tx.execute_cached(
        "WITH xid AS MATERIALIZED (SELECT pg_current_xact_id()) \
         INSERT INTO tenx_outbox \
           (seq, id, event_type, aggregate_id, partition, payload, payload_type, traceparent, tracestate) \
         SELECT nextval('tenx_outbox_seq_seq'), $1, $2, $3, (hashtext($3) & 15)::smallint, $4, $5, $6, $7 \
         FROM xid",
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

/// Records `events`, in this order, in the caller's transaction, in one
/// statement (as [`enqueue`] each). Returns their ids.
pub async fn enqueue_all<C: Prepared>(
    tx: &C,
    events: &[NewEvent],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    match events {
        [] => Ok(Vec::new()),
        [one] => enqueue(tx, one).await.map(|id| vec![id]),
        _ => insert_all(tx, EventsWith::build(events, concat!("WITH ", insert_events!()).into(), &[])).await,
    }
}

/// [`enqueue_all`] and a write of the caller's in one statement: one
/// executor start, and one message each way, fewer than sending the two
/// apart. `companion` is a data-modifying CTE (`name AS (UPDATE …)`, a
/// constant) whose parameters are numbered from `$8`; it runs whether or
/// not there are events. Returns the events' ids.
pub async fn enqueue_all_with<C: Prepared>(
    tx: &C,
    events: &[NewEvent],
    companion: &'static str,
    companion_params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    insert_all(tx, EventsWith::new(events, companion, companion_params)).await
}

/// The statement [`enqueue_all_with`] runs, built and not yet run: for a
/// caller that sends it its own way, such as the last statement of a
/// [`crate::db::Pipelined`] transaction, which commits with it. Built
/// means about to be sent: it counts as an outbox write, so the relay is
/// woken when the connection goes back to its pool.
pub struct EventsWith<'a> {
    sql: String,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    aggregates: Vec<&'a str>,
    payloads: Vec<&'a [u8]>,
    payload_types: Vec<&'a str>,
    trace: TraceHeaders,
    more: &'a [&'a (dyn ToSql + Sync)],
}

impl<'a> EventsWith<'a> {
    /// `events` and `companion`, as [`enqueue_all_with`] takes them.
    pub fn new(
        events: &'a [NewEvent],
        companion: &'static str,
        companion_params: &'a [&'a (dyn ToSql + Sync)],
    ) -> Self {
        Self::build(events, format!(concat!("WITH {}, ", insert_events!()), companion), companion_params)
    }

    /// `sql` (built on [`insert_events`]) with `events` as `$1`…`$7` and
    /// `more` after them.
    fn build(events: &'a [NewEvent], sql: String, more: &'a [&'a (dyn ToSql + Sync)]) -> Self {
        if !events.is_empty() {
            crate::db::count_outbox_write();
        }
        Self {
            sql,
            ids: events.iter().map(|_| Uuid::now_v7()).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            aggregates: events.iter().map(|e| e.aggregate_id.as_str()).collect(),
            payloads: events.iter().map(|e| e.payload.as_slice()).collect(),
            payload_types: events.iter().map(|e| e.payload_type.as_str()).collect(),
            trace: TraceHeaders::current(),
            more,
        }
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let own: [&(dyn ToSql + Sync); 7] = [
            &self.ids,
            &self.types,
            &self.aggregates,
            &self.payloads,
            &self.payload_types,
            &self.trace.traceparent,
            &self.trace.tracestate,
        ];
        [&own[..], self.more].concat()
    }

    /// The events' ids, in their order.
    pub fn into_ids(self) -> Vec<Uuid> {
        self.ids
    }
}

impl std::fmt::Debug for EventsWith<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsWith").field("ids", &self.ids).finish_non_exhaustive()
    }
}

/// What follows `WITH` in a statement that records events: events
/// `$1`…`$5` (arrays, in order), trace context `$6`, `$7`. As in
/// [`enqueue`]: the transaction's id first, then the seqs, taken in the
/// events' order (a volatile target is computed after the sort).
macro_rules! insert_events {
    () => {
        "xid AS MATERIALIZED (SELECT pg_current_xact_id()) \
         INSERT INTO tenx_outbox \
           (seq, id, event_type, aggregate_id, partition, payload, payload_type, traceparent, tracestate) \
         SELECT nextval('tenx_outbox_seq_seq'), e.id, e.event_type, e.aggregate_id, \
                (hashtext(e.aggregate_id) & 15)::smallint, e.payload, e.payload_type, $6, $7 \
         FROM xid CROSS JOIN unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[]) \
           WITH ORDINALITY AS e (id, event_type, aggregate_id, payload, payload_type, ord) \
         ORDER BY e.ord"
    };
}
use insert_events;

async fn insert_all<C: Prepared>(tx: &C, batch: EventsWith<'_>) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    tx.execute_cached(batch.sql(), &batch.params()).await?;
    Ok(batch.into_ids())
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
    /// Pause between polls when nothing is pending. Events this process
    /// commits wake the relay sooner (see [`Relay::run`]); the poll finds
    /// what other processes wrote.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Least time from one batch's start to the next when woken by a
    /// commit: under load, events gather into batches instead of costing
    /// a relay transaction each.
    #[serde(default = "default_wake_spacing_ms")]
    pub wake_spacing_ms: u64,
    /// Published rows are deleted this long after their event occurred.
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
fn default_wake_spacing_ms() -> u64 {
    5
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
            wake_spacing_ms: default_wake_spacing_ms(),
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
    floors: tokio::sync::Mutex<Option<Floors>>,
    /// Notified after a commit in this process wrote events.
    written: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("exchange", &self.exchange).finish_non_exhaustive()
    }
}

/// Partitions rows are spread over (`hashtext(aggregate_id) & 15`).
const PARTITIONS: usize = 16;

/// The oldest pending rows of up to `$1` partitions this relay could lock,
/// at most `$2` rows, in seq order. A row is pending while its marker in
/// `tenx_outbox_pending` exists (common's migration V2). Each partition
/// is read above its floor (`$3[partition + 1]`): below it every row is
/// published, so the scan skips the index entries deleted markers leave
/// behind, which a replica's `hot_standby_feedback` keeps from being
/// cleaned for seconds and which otherwise cost a heap visit each, every
/// batch. Candidates are found before any lock is tried, so only
/// partitions with work are locked, by one index probe each: as an
/// `EXISTS`, the planner made it a semi-join over every pending row of
/// every partition (5 ms a batch under load). The markers are locked
/// first and the rows read after, so the lock's recheck carries only
/// the narrow markers, not every payload. A marker whose row is gone (an
/// event deleted by hand, to drop it) comes back without one, so that
/// its marker goes with the batch's instead of being claimed forever.
const CLAIM_BATCH: &str = "\
WITH floors AS (
    SELECT (ord - 1)::smallint AS p, f AS floor FROM unnest($3::bigint[]) WITH ORDINALITY AS t (f, ord)
), candidates AS MATERIALIZED (
    SELECT p, floor FROM floors CROSS JOIN LATERAL (
        SELECT FROM tenx_outbox_pending q WHERE q.partition = floors.p AND q.seq > floors.floor
        LIMIT 1) AS any_pending
), mine AS (
    SELECT p, floor FROM candidates
    WHERE pg_try_advisory_xact_lock(hashtext('tenx.outbox.' || current_schema()), p)
    LIMIT $1
), claimed AS MATERIALIZED (
    SELECT q.seq, q.partition FROM tenx_outbox_pending q JOIN mine ON q.partition = mine.p AND q.seq > mine.floor
    ORDER BY q.seq
    LIMIT $2
    FOR UPDATE OF q
)
SELECT claimed.seq, claimed.partition, o.id, o.event_type, o.aggregate_id, o.payload, o.payload_type,
       o.traceparent, o.tracestate, o.occurred_at
FROM claimed LEFT JOIN tenx_outbox o ON o.seq = claimed.seq
ORDER BY claimed.seq";

/// Publishing done: the batch's markers go (`$1` partitions, `$2` seqs,
/// pairwise).
const MARK_PUBLISHED: &str = "\
DELETE FROM tenx_outbox_pending q USING unnest($1::smallint[], $2::bigint[]) AS done (p, s)
WHERE q.partition = done.p AND q.seq = done.s";

/// The condition, over a `tenx_outbox` row named `tenx_outbox`, that its
/// event is published: it has no pending marker. One definition for the
/// replay and retention (a macro, so it can go into `concat!`).
macro_rules! published {
    () => {
        "NOT EXISTS (SELECT FROM tenx_outbox_pending q \
         WHERE q.partition = tenx_outbox.partition AND q.seq = tenx_outbox.seq)"
    };
}
pub(crate) use published;

/// Where each partition's scan starts: below `floor[p]`, every row of
/// partition p is published.
///
/// A floor may pass a seq only when no transaction can still commit a row
/// with it. Seqs come from a sequence without a per-session cache, each
/// taken by a transaction that already has its id ([`enqueue`]). A batch
/// reads the sequence's last value `L`, then takes an id X for its own
/// transaction: every seq up to L belongs to a transaction with an id
/// below X. Once that batch has ended and a later snapshot's `xmin`
/// reaches X, all of those have ended too, and a claim that reads every
/// visible pending row of a partition up to L leaves nothing unpublished
/// below L. (A snapshot's `xmax` would not do: ids still running above
/// the last completed one are not in it.) Until then the floor waits, so
/// a transaction that stays open only makes scans longer, never loses a
/// row.
#[derive(Debug)]
struct Floors {
    /// Per partition; 0 at start (the first batch reads everything).
    floor: [i64; PARTITIONS],
    /// `(L, X)` samples, oldest first, not yet known safe.
    samples: std::collections::VecDeque<(i64, i64)>,
    /// False when the sequence caches values per session, where a seq can
    /// be taken long before it is used: then every scan starts at 0.
    enabled: bool,
    /// Empty batches since the last sample: an idle relay samples only
    /// every [`Self::IDLE_SAMPLE_EVERY`] polls, as each sample takes a
    /// transaction id.
    idle: u32,
}

impl Floors {
    /// Samples kept; a long transaction only delays floors meanwhile.
    const SAMPLES: usize = 256;
    const IDLE_SAMPLE_EVERY: u32 = 20;

    fn new(enabled: bool) -> Self {
        Self { floor: [0; PARTITIONS], samples: Default::default(), enabled, idle: 0 }
    }

    /// Whether this batch takes a sample (see `idle`).
    fn sampling(&mut self) -> bool {
        self.idle += 1;
        self.enabled && (self.idle == 1 || self.idle.is_multiple_of(Self::IDLE_SAMPLE_EVERY))
    }

    /// Returns the highest `L` of earlier batches whose writers have all
    /// ended by `xmin` (0 if none), then records this batch's sample
    /// (`last_value`, this batch's own transaction id), which only a later
    /// batch can use: until this one ends, its id holds `xmin` below it.
    fn safe_limit(&mut self, last_value: i64, own_xid: i64, xmin: i64) -> i64 {
        let mut safe = 0;
        while let Some(&(l, x)) = self.samples.front() {
            if x > xmin {
                break;
            }
            safe = l;
            self.samples.pop_front();
        }
        // The newest safe sample stays safe for later batches (`xmin` only
        // grows).
        if safe > 0 {
            self.samples.push_front((safe, xmin));
        }
        while self.samples.len() >= Self::SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((last_value, own_xid));
        safe
    }

    fn params(&self) -> Vec<i64> {
        if self.enabled { self.floor.to_vec() } else { vec![0; PARTITIONS] }
    }

    /// After a batch's publish was confirmed: each claimed partition read
    /// every visible pending row up to `through` (the whole partition when
    /// the batch was not full, else up to the batch's last seq), so its
    /// floor rises to there, but never past `safe`.
    fn advance(&mut self, partitions: &[i16], through: i64, safe: i64) {
        let to = through.min(safe);
        for &p in partitions {
            if let Some(floor) = self.floor.get_mut(p as usize) {
                *floor = (*floor).max(to);
            }
        }
    }
}

impl Relay {
    pub fn new(db: &Db, amqp: Amqp, settings: RelaySettings, metrics: &Metrics) -> Self {
        amqp.register(Topology::exchange_only(amqp.settings()));
        crate::probes::watch_outbox(metrics, db.name(), db.probe_pool());
        Self {
            pool: db.relay_pool().clone(),
            exchange: amqp.settings().exchange_name(),
            publisher: Publisher::new(amqp),
            settings,
            metrics: metrics.set(),
            floors: tokio::sync::Mutex::new(None),
            written: db.outbox_written(),
        }
    }

    /// Relays until `shutdown`: immediately again while batches come back
    /// full; when idle, as soon as this process commits events (at most
    /// one batch per `wake_spacing_ms`) or else every `poll_interval_ms`;
    /// again after `wake_spacing_ms` when a batch took as many partitions
    /// as it may (others may have events waiting); with backoff on errors.
    pub async fn run(self, shutdown: Shutdown) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms);
        // A wake never waits longer than the poll would have.
        let spacing = Duration::from_millis(self.settings.wake_spacing_ms).min(idle);
        let mut backoff = Backoff::new();
        while !shutdown.is_triggered() {
            let started = tokio::time::Instant::now();
            let pause = match self.relay_once().await {
                Ok(Batch { full: true, .. }) => {
                    backoff.reset();
                    continue;
                }
                Ok(Batch { all_partitions_taken, .. }) => {
                    backoff.reset();
                    if all_partitions_taken { spacing } else { idle }
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay batch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.wait() => break,
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.written.notified() => {}
                _ = shutdown.wait() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + spacing) => {}
                _ = shutdown.wait() => break,
            }
        }
    }

    /// Publishes one batch; returns how many events it confirmed.
    pub async fn relay_batch(&self) -> Result<usize, OutboxError> {
        Ok(self.relay_once().await?.published)
    }

    async fn relay_once(&self) -> Result<Batch, OutboxError> {
        // One batch at a time per relay: the floors are this relay's.
        let mut floors = self.floors.lock().await;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let floors = match &mut *floors {
            Some(floors) => floors,
            None => floors.insert(Floors::new(sequence_is_uncached(&tx).await?)),
        };
        // In this order (see [`Floors`]): the sequence's last value, then
        // this transaction's id (which it needs anyway to mark rows
        // published); the materialized CTE is read before the id is taken.
        // The snapshot's xmin is older than both, which is all it needs.
        let safe = if floors.sampling() {
            let sample = tx
                .query_one_cached(
                    "WITH l AS MATERIALIZED (SELECT coalesce(pg_sequence_last_value('tenx_outbox_seq_seq'), 0) AS v) \
                     SELECT l.v, pg_current_xact_id()::text::bigint, \
                            pg_snapshot_xmin(pg_current_snapshot())::text::bigint FROM l",
                    &[],
                )
                .await?;
            floors.safe_limit(sample.get(0), sample.get(1), sample.get(2))
        } else {
            0
        };
        let rows = tx
            .query_cached(
                CLAIM_BATCH,
                &[&self.settings.partitions_per_batch, &self.settings.batch_size, &floors.params()],
            )
            .await?;
        if rows.is_empty() {
            return Ok(Batch::default());
        }
        floors.idle = 0;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut row_partitions: Vec<i16> = Vec::with_capacity(rows.len());
        let mut partitions: Vec<i16> = Vec::new();
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            seqs.push(row.get::<_, i64>("seq"));
            let partition: i16 = row.get("partition");
            row_partitions.push(partition);
            if !partitions.contains(&partition) {
                partitions.push(partition);
            }
            // Without a row (deleted by hand): only its marker goes.
            if row.get::<_, Option<Uuid>>("id").is_some() {
                messages.push(Outgoing::event(&self.exchange, &envelope_of(row)));
            }
        }
        let full = rows.len() as i64 >= self.settings.batch_size;
        let through = if full { seqs.last().copied().unwrap_or(0) } else { i64::MAX };
        // Bounded: a blocked broker (memory alarm) or a half-open
        // connection must not hold this transaction and its locks open.
        let published = if messages.is_empty() {
            Ok(())
        } else {
            match tokio::time::timeout(PUBLISH_TIMEOUT, self.publisher.publish(&messages)).await {
                Ok(result) => result,
                Err(_) => Err(QueueError::Unavailable(format!("no confirms within {PUBLISH_TIMEOUT:?}"))),
            }
        };
        match published {
            Ok(()) => {
                tx.execute_cached(MARK_PUBLISHED, &[&row_partitions, &seqs]).await?;
                tx.commit().await?;
                floors.advance(&partitions, through, safe);
                self.metrics.published.inc_by(messages.len() as u64);
                let all_partitions_taken = partitions.len() as i64 >= self.settings.partitions_per_batch;
                Ok(Batch { published: messages.len(), full, all_partitions_taken })
            }
            Err(error) => {
                self.metrics.failures.inc();
                let reason = error.to_string();
                tx.execute_cached(
                    "UPDATE tenx_outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = ANY($1)",
                    &[&seqs, &reason],
                )
                .await?;
                tx.commit().await?;
                Err(error.into())
            }
        }
    }
}

/// What one batch did.
#[derive(Debug, Default)]
struct Batch {
    /// Events the broker confirmed.
    published: usize,
    /// It took `batch_size` events: more are waiting.
    full: bool,
    /// It took `partitions_per_batch` partitions: others may have events.
    all_partitions_taken: bool,
}

/// Which published events [`Replayer::replay`] sends again.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Events that occurred at or after this…
    pub from: SystemTime,
    /// …and before this.
    pub to: SystemTime,
    /// Only this type; `None`: every type.
    pub event_type: Option<String>,
    /// Continue after this seq (0: from the start of the window).
    pub after_seq: i64,
    /// At most this many events.
    pub limit: i64,
}

/// What one page of a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Events published again, confirmed by the broker.
    pub count: usize,
    /// The seq to continue after, when the page was full (more may follow).
    pub next_after: Option<i64>,
    /// When the oldest published event still kept occurred.
    pub oldest_retained: Option<SystemTime>,
}

/// Publishes events the relay already published again, as the same
/// messages (same id, so every consumer's inbox applies each at most once).
pub struct Replayer {
    pool: deadpool_postgres::Pool,
    publisher: Publisher,
    exchange: String,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer").field("exchange", &self.exchange).finish_non_exhaustive()
    }
}

/// One page of published rows of the window, in seq order (so each
/// aggregate's events go out in the order they were written), walking
/// the primary key from the cursor.
const REPLAY_PAGE: &str = concat!(
    "\
SELECT seq, id, event_type, aggregate_id, payload, payload_type, traceparent, tracestate, occurred_at
FROM tenx_outbox
WHERE seq > $1 AND occurred_at >= $2 AND occurred_at < $3
  AND ($4::text = '' OR event_type = $4)
  AND ",
    published!(),
    "
ORDER BY seq
LIMIT $5"
);

impl Replayer {
    pub fn new(db: &Db, amqp: Amqp) -> Self {
        amqp.register(Topology::exchange_only(amqp.settings()));
        Self {
            pool: db.primary_pool().clone(),
            exchange: amqp.settings().exchange_name(),
            publisher: Publisher::new(amqp),
        }
    }

    /// Publishes one page of `window` and waits for the broker's confirms.
    pub async fn replay(&self, window: &ReplayWindow) -> Result<Replayed, OutboxError> {
        // From the primary: a replay up to "now" must see the rows the
        // relay marked published a moment ago, which a replica may not yet.
        let conn = self.pool.get().await?;
        let oldest = conn
            .query_opt_cached(
                concat!("SELECT occurred_at FROM tenx_outbox WHERE ", published!(), " ORDER BY seq LIMIT 1"),
                &[],
            )
            .await?
            .map(|row| row.get::<_, SystemTime>(0));
        let event_type = window.event_type.as_deref().unwrap_or("");
        let rows = conn
            .query_cached(
                REPLAY_PAGE,
                &[&window.after_seq, &window.from, &window.to, &event_type, &window.limit],
            )
            .await?;
        drop(conn);
        let messages: Vec<Outgoing> =
            rows.iter().map(|row| Outgoing::event(&self.exchange, &envelope_of(row))).collect();
        if !messages.is_empty() {
            match tokio::time::timeout(PUBLISH_TIMEOUT, self.publisher.publish(&messages)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(
                        QueueError::Unavailable(format!("no confirms within {PUBLISH_TIMEOUT:?}")).into()
                    );
                }
            }
        }
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= window.limit;
        let next_after = rows.last().filter(|_| full).map(|row| row.get::<_, i64>("seq"));
        Ok(Replayed { count: rows.len(), next_after, oldest_retained: oldest })
    }
}

/// Whether `tenx_outbox`'s sequence hands out one value at a time (the
/// default), which [`Floors`] need.
async fn sequence_is_uncached<C: Prepared>(tx: &C) -> Result<bool, tokio_postgres::Error> {
    let row = tx
        .query_opt_cached(
            "SELECT cache_size FROM pg_sequences WHERE schemaname = current_schema() \
             AND sequencename = 'tenx_outbox_seq_seq'",
            &[],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get::<_, i64>(0) == 1))
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

#[cfg(test)]
mod tests {
    use super::Floors;

    #[test]
    fn a_floor_waits_for_every_writer_older_than_the_batch_that_sampled_it() {
        let mut floors = Floors::new(true);
        // Batch 1 (id 100) saw seqs up to 50; a writer with id 90 is open.
        assert_eq!(floors.safe_limit(50, 100, 90), 0);
        // Batch 2 (id 110): xmin 90, the writer is still open.
        assert_eq!(floors.safe_limit(60, 110, 90), 0);
        floors.advance(&[3], i64::MAX, 0);
        assert_eq!(floors.params()[3], 0, "nothing is safe yet");
        // Batch 3: everything below 105 has ended, so batch 1's seqs are safe.
        assert_eq!(floors.safe_limit(70, 120, 105), 50);
        floors.advance(&[3], i64::MAX, 50);
        // A full batch only vouches for what it read.
        floors.advance(&[4], 20, 50);
        assert_eq!((floors.params()[3], floors.params()[4]), (50, 20));
        // Later batches keep the safe value while xmin holds.
        assert_eq!(floors.safe_limit(80, 130, 105), 50);
        assert_eq!(floors.safe_limit(90, 140, 125), 70);
    }

    #[test]
    fn a_cached_sequence_turns_floors_off() {
        let mut floors = Floors::new(false);
        assert!(!floors.sampling());
        floors.advance(&[0], i64::MAX, 10);
        assert_eq!(floors.params(), vec![0; super::PARTITIONS]);
    }
}
