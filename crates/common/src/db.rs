//! Postgres access with two pools: writes go to the primary, reads to the
//! replica — and every call states which it is ([`Intent`]).
//!
//! Reads fall back to the primary when the replica is unreachable (counted
//! in `tenx_db_replica_fallbacks_total`) or when it has not yet replayed
//! the caller's own last write: a write hands back the commit's
//! [`WalPosition`], and a read that carries it is served by the replica
//! only once `pg_last_wal_replay_lsn()` has reached it (read-your-writes).

mod migrate;
mod pipelined;
mod prepared;
pub mod wal;

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Deserialize;
use tokio_postgres::NoTls;

pub use migrate::{common_fingerprint, fingerprint, migrate, schema_ident};
pub use pipelined::Pipelined;
pub use prepared::{Prepared, sends_unnamed};
pub use wal::WalPosition;

use crate::config::{Invalid, Secret, Validate};
use crate::metrics::{MetricSet, Metrics};

/// Settings of a service's database (keys under `database.`).
#[derive(Debug, Clone, Deserialize)]
pub struct DbSettings {
    /// Primary (read-write) server, `postgres://user:password@host:port/db`.
    pub primary_url: Secret<String>,
    /// Streaming replica; without it every read goes to the primary.
    #[serde(default)]
    pub replica_url: Option<Secret<String>>,
    /// The service's own schema: its tables, outbox and inbox live here.
    pub schema: String,
    /// Connections per pool (each of primary and replica).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long to wait for a new server connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a caller waits for a free pooled connection.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// The longest one statement may run (`statement_timeout`), so a
    /// statement stuck behind a lock or a runaway plan frees its pooled
    /// connection and answers `UNAVAILABLE` instead of holding both for
    /// ever; 0 lets statements run unbounded. Behind a transaction pooler
    /// the pooler or the role sets it (startup options are refused there).
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// After the replica fails, reads skip it for this long before trying
    /// again, so a dead replica costs one failed connect, not one per read.
    #[serde(default = "default_replica_retry_ms")]
    pub replica_retry_ms: u64,
    /// What the URLs above reach: see [`Pooling`].
    #[serde(default)]
    pub pooling: Pooling,
    /// Where `migrate` connects; the primary URL when unset. Migrations
    /// hold a session (an advisory lock, `search_path`), so behind a
    /// transaction pooler this must reach Postgres directly.
    #[serde(default)]
    pub migrate_url: Option<Secret<String>>,
}

/// What kind of server `database.primary_url` and `replica_url` reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Postgres itself, or a pooler that keeps a session's state for it
    /// (PgBouncer in session mode, or in transaction mode from 1.21 with
    /// `max_prepared_statements` and `track_extra_parameters =
    /// search_path`): statements are prepared once per connection, and
    /// `search_path` is set when a connection starts.
    #[default]
    Session,
    /// A transaction pooler that keeps nothing between transactions
    /// (PgBouncer before 1.21): statements are sent unnamed, and the
    /// pooler must put each server connection in the service's schema
    /// (PgBouncer's `connect_query`, or the role's own `search_path`),
    /// which every new connection checks.
    Transaction,
}

fn default_max_connections() -> usize {
    16
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_acquire_timeout_ms() -> u64 {
    5_000
}
fn default_statement_timeout_ms() -> u64 {
    30_000
}
fn default_replica_retry_ms() -> u64 {
    1_000
}

impl DbSettings {
    /// Settings for `primary`/`replica` URLs with every other key at its default.
    pub fn new(primary_url: &str, replica_url: Option<&str>, schema: &str) -> Self {
        Self {
            primary_url: Secret::new(primary_url.to_owned()),
            replica_url: replica_url.map(|u| Secret::new(u.to_owned())),
            schema: schema.to_owned(),
            max_connections: default_max_connections(),
            connect_timeout_ms: default_connect_timeout_ms(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
            statement_timeout_ms: default_statement_timeout_ms(),
            replica_retry_ms: default_replica_retry_ms(),
            pooling: Pooling::Session,
            migrate_url: None,
        }
    }

    /// Where migrations connect: `migrate_url`, else the primary (which
    /// must then not be a transaction pooler).
    pub fn migrate_url(&self) -> Result<&str, DbError> {
        match (&self.migrate_url, self.pooling) {
            (Some(url), _) => Ok(url.expose()),
            (None, Pooling::Session) => Ok(self.primary_url.expose()),
            (None, Pooling::Transaction) => Err(DbError::Settings(
                "database.migrate_url is required when database.pooling = \"transaction\": migrations \
                 need a session of their own, straight to Postgres"
                    .into(),
            )),
        }
    }
}

impl Validate for DbSettings {
    fn validate(&self) -> Result<(), Invalid> {
        parse_url(self.primary_url.expose()).map_err(|r| Invalid::new("database.primary_url", r))?;
        if let Some(url) = &self.replica_url {
            parse_url(url.expose()).map_err(|r| Invalid::new("database.replica_url", r))?;
        }
        if let Some(url) = &self.migrate_url {
            parse_url(url.expose()).map_err(|r| Invalid::new("database.migrate_url", r))?;
        }
        schema_ident(&self.schema).map_err(|r| Invalid::new("database.schema", r))?;
        if self.max_connections == 0 {
            return Err(Invalid::new("database.max_connections", "must be at least 1"));
        }
        // Postgres takes the setting as a 32-bit count of milliseconds.
        if self.statement_timeout_ms > i32::MAX as u64 {
            return Err(Invalid::new(
                "database.statement_timeout_ms",
                "must be at most 2147483647 (about 24 days)",
            ));
        }
        Ok(())
    }
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    // The parser's message never echoes the URL, so no password leaks.
    url.parse::<tokio_postgres::Config>().map_err(|e| format!("not a Postgres URL: {e}"))
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database settings: {0}")]
    Settings(String),
    #[error("no database connection available: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    /// A read shared with other callers failed (its error, as text).
    #[error("the primary did not answer: {0}")]
    Shared(String),
}

/// What a call is about to do, which decides the server that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Changes data, or must see the latest committed state: the primary.
    Write,
    /// Reads; the replica serves it unless it is down or has not replayed
    /// `after` (the caller's last write), in which case the primary does.
    Read { after: Option<WalPosition> },
}

impl Intent {
    /// A read with no freshness requirement.
    pub const READ: Intent = Intent::Read { after: None };
}

/// Which server a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServedLabels {
    pool: String,
    role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FallbackReason {
    Unavailable,
    Lagging,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FallbackLabels {
    pool: String,
    reason: FallbackReason,
}

/// A pool of a service: `pool` is its application name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct PoolLabels {
    pub pool: String,
    pub role: Role,
}

#[derive(Clone)]
struct DbMetrics {
    reads: Family<ServedLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    /// Time to get a connection from a pool (a new one, or an idle one).
    wait: Family<PoolLabels, Histogram>,
}

impl Default for DbMetrics {
    fn default() -> Self {
        Self {
            reads: Family::default(),
            fallbacks: Family::default(),
            // 0.1 ms to 6.5 s.
            wait: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 4.0, 9))),
        }
    }
}

impl MetricSet for DbMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register("db_reads", "Reads by the server that served them", set.reads.clone());
        metrics.register(
            "db_replica_fallbacks",
            "Reads sent to the primary because the replica was unavailable or lagging",
            set.fallbacks.clone(),
        );
        metrics.register(
            "db_pool_wait_seconds",
            "Time callers waited for a connection of a Postgres pool",
            set.wait.clone(),
        );
        set
    }
}

/// Both pools of one service, and the routing between them.
pub struct Db {
    primary: Pool,
    replica: Option<Pool>,
    /// Set when the replica failed; reads skip it until then.
    replica_skip_until: Mutex<Option<Instant>>,
    replica_retry: Duration,
    /// Longest a read waits on the replica before going to the primary.
    replica_budget: Duration,
    /// Metric label: the application name the pools were built for.
    name: String,
    metrics: DbMetrics,
    /// The last position read by [`Db::position_after_commit`] and when
    /// its query was sent.
    last_position: tokio::sync::Mutex<Option<(Instant, Result<WalPosition, String>)>>,
    probe: Probes,
    /// The outbox relay's own connection to the primary: it never queues
    /// behind the service's requests for one, which under load held each
    /// batch (and every event in it) back by as long as the pool's queue.
    relay: Pool,
    /// Woken when a connection that saw an outbox write goes back to the
    /// pool: its transaction has ended, so what it committed is there for
    /// this process's relay ([`crate::outbox::Relay`]) to publish now.
    outbox_written: Arc<tokio::sync::Notify>,
}

/// One-connection pools of the metric probes ([`crate::probes`]).
struct Probes {
    primary: Pool,
    replica: Option<Pool>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("primary", &self.primary.status())
            .field("replica", &self.replica.as_ref().map(Pool::status))
            .finish()
    }
}

impl Db {
    /// Builds both pools. No connection is opened until first use, so a
    /// service starts even while the replica is down.
    pub fn connect(settings: &DbSettings, app_name: &str, metrics: &Metrics) -> Result<Self, DbError> {
        if settings.pooling == Pooling::Transaction {
            prepared::send_unnamed();
        }
        let primary = build_pool(settings, settings.primary_url.expose(), app_name, RecyclingMethod::Fast)?;
        // A replica connection is checked with a round trip before each
        // use (`replica_conn`: the replay position it asks for anyway): a
        // replica that went away (or a network that silently drops it)
        // must turn into a primary read, not a failed one. Writes need no
        // such check: with the primary gone they fail either way.
        let replica = settings
            .replica_url
            .as_ref()
            .map(|url| build_pool(settings, url.expose(), app_name, RecyclingMethod::Fast))
            .transpose()?;
        // The metric probes' own connection to each server
        // (`probes::watch_pools`). Opened at the first scrape.
        let mut one = settings.clone();
        one.max_connections = 1;
        let probe = Probes {
            primary: build_pool(&one, settings.primary_url.expose(), app_name, RecyclingMethod::Fast)?,
            replica: (settings.replica_url.as_ref())
                .map(|url| build_pool(&one, url.expose(), app_name, RecyclingMethod::Fast))
                .transpose()?,
        };
        // Two: a process runs one relay, but tests run two on one `Db`, and
        // those must overlap as relays in two processes do.
        let mut two = settings.clone();
        two.max_connections = 2;
        let relay = build_pool(&two, settings.primary_url.expose(), app_name, RecyclingMethod::Fast)?;
        Ok(Self {
            primary,
            replica,
            probe,
            relay,
            replica_skip_until: Mutex::new(None),
            replica_retry: Duration::from_millis(settings.replica_retry_ms),
            replica_budget: Duration::from_millis(settings.connect_timeout_ms),
            name: app_name.to_owned(),
            metrics: metrics.set(),
            last_position: tokio::sync::Mutex::new(None),
            outbox_written: Arc::default(),
        })
    }

    /// What [`crate::outbox::Relay`] waits on besides its poll interval:
    /// see `outbox_written`.
    pub(crate) fn outbox_written(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.outbox_written)
    }

    /// The primary's WAL position after the caller's commit (which must
    /// have returned): what [`Conn::commit_position`] gives, but one read
    /// serves every caller whose commit returned before that read was sent
    /// (its position is past all their commit records), so concurrent
    /// writers share round trips instead of making one each. A read that
    /// failed fails, at once, the callers it would have served (they do
    /// not each wait out the pool's timeout in turn).
    pub async fn position_after_commit(&self) -> Result<WalPosition, DbError> {
        let committed = Instant::now();
        let mut last = self.last_position.lock().await;
        // Strictly after: a read sent in the same clock tick as a commit
        // returned may have run before it.
        if let Some((sent, read)) = &*last
            && *sent > committed
        {
            return read.clone().map_err(DbError::Shared);
        }
        let sent = Instant::now();
        let read = async { self.write().await?.commit_position().await }.await;
        *last = Some((sent, read.as_ref().copied().map_err(ToString::to_string)));
        read
    }

    /// A connection for `intent`; see [`Intent`] for the routing.
    pub async fn get(&self, intent: Intent) -> Result<Conn, DbError> {
        match intent {
            Intent::Write => self.primary_conn().await,
            Intent::Read { after } => {
                if let Some(conn) = self.replica_conn(after).await {
                    self.count_read(Role::Replica);
                    return Ok(conn);
                }
                self.count_read(Role::Primary);
                self.primary_conn().await
            }
        }
    }

    /// A connection to the primary, for writes.
    pub async fn write(&self) -> Result<Conn, DbError> {
        self.get(Intent::Write).await
    }

    /// A connection for a read that must see `after` (or anything, if `None`).
    pub async fn read(&self, after: Option<WalPosition>) -> Result<Conn, DbError> {
        self.get(Intent::Read { after }).await
    }

    /// Readiness: the primary answers. (A down replica only slows reads.)
    pub async fn ping(&self) -> Result<(), DbError> {
        self.primary.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// The application name the pools were built for (the `pool` label of
    /// their metrics).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Each server's pools as `[the service's pool, the probes'
    /// one-connection pool]`: the first is reported, the second queried;
    /// and the relay's pool on the primary, reported too.
    #[allow(clippy::type_complexity)]
    pub(crate) fn pools_to_watch(&self) -> ([&Pool; 2], Option<(&Pool, &Pool)>, &Pool) {
        (
            [&self.primary, &self.probe.primary],
            self.replica.as_ref().zip(self.probe.replica.as_ref()),
            &self.relay,
        )
    }

    /// The metric probes' one-connection pool on the primary (in the
    /// service's schema).
    pub(crate) fn probe_pool(&self) -> &Pool {
        &self.probe.primary
    }

    /// The outbox relay's two-connection pool on the primary (see `relay`).
    pub(crate) fn relay_pool(&self) -> &Pool {
        &self.relay
    }

    /// The primary pool, for components (outbox replays, migrations) that
    /// hold a connection for a long time.
    pub fn primary_pool(&self) -> &Pool {
        &self.primary
    }

    async fn primary_conn(&self) -> Result<Conn, DbError> {
        let asked = Instant::now();
        let client = self.primary.get().await;
        self.waited(Role::Primary, asked);
        let outbox = Some(OutboxWatch::new(&self.outbox_written));
        Ok(Conn { client: client?, role: Role::Primary, outbox })
    }

    /// Records how long a caller waited for a connection (given or not).
    fn waited(&self, role: Role, asked: Instant) {
        let labels = PoolLabels { pool: self.name.clone(), role };
        self.metrics.wait.get_or_create(&labels).observe(asked.elapsed().as_secs_f64());
    }

    /// The replica connection if it may serve this read, else `None`.
    async fn replica_conn(&self, after: Option<WalPosition>) -> Option<Conn> {
        let pool = self.replica.as_ref()?;
        if self.replica_skipped() {
            self.fallback(FallbackReason::Unavailable);
            return None;
        }
        // Bounded: a new connection to a black-holed replica must not
        // stall the read.
        let asked = Instant::now();
        let got = tokio::time::timeout(self.replica_budget, pool.get()).await;
        self.waited(Role::Replica, asked);
        let client = match got {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                tracing::warn!(%error, "replica unavailable; reading from the primary");
                return self.replica_failed();
            }
            Err(_) => {
                tracing::warn!("replica did not answer in time; reading from the primary");
                return self.replica_failed();
            }
        };
        // One round trip on the very connection that will serve the read:
        // it proves the replica answers (its pool does not check a
        // connection it hands out) and, for a read that carries a
        // position, that it has replayed that far.
        let replayed = match tokio::time::timeout(self.replica_budget, replayed_position(&client)).await {
            Ok(Ok(replayed)) => replayed,
            Ok(Err(error)) => {
                tracing::warn!(%error, "replica check failed; reading from the primary");
                return self.replica_failed();
            }
            Err(_) => {
                tracing::warn!("replica did not answer its check in time; reading from the primary");
                return self.replica_failed();
            }
        };
        if let Some(needed) = after
            && replayed.is_none_or(|replayed| replayed < needed)
        {
            self.fallback(FallbackReason::Lagging);
            return None;
        }
        Some(Conn { client, role: Role::Replica, outbox: None })
    }

    fn count_read(&self, role: Role) {
        let labels = ServedLabels { pool: self.name.clone(), role };
        self.metrics.reads.get_or_create(&labels).inc();
    }

    fn fallback(&self, reason: FallbackReason) {
        let labels = FallbackLabels { pool: self.name.clone(), reason };
        self.metrics.fallbacks.get_or_create(&labels).inc();
    }

    fn replica_skipped(&self) -> bool {
        let guard = self.replica_skip_until.lock().unwrap_or_else(|p| p.into_inner());
        guard.is_some_and(|until| Instant::now() < until)
    }

    /// The replica failed this read: it goes to the primary, and so do
    /// the reads of the next `replica_retry`.
    fn replica_failed(&self) -> Option<Conn> {
        *self.replica_skip_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + self.replica_retry);
        self.fallback(FallbackReason::Unavailable);
        None
    }
}

async fn replayed_position(
    client: &deadpool_postgres::Client,
) -> Result<Option<WalPosition>, tokio_postgres::Error> {
    let row = client.query_one_cached("SELECT pg_last_wal_replay_lsn()::text", &[]).await?;
    let text: Option<String> = row.get(0);
    // NULL means this server is not in recovery: it is a primary, and has
    // everything that was committed.
    Ok(match text {
        None => Some(WalPosition::MAX),
        Some(t) => t.parse().ok(),
    })
}

fn build_pool(
    settings: &DbSettings,
    url: &str,
    app_name: &str,
    recycling_method: RecyclingMethod,
) -> Result<Pool, DbError> {
    let mut pg = parse_url(url).map_err(DbError::Settings)?;
    schema_ident(&settings.schema).map_err(DbError::Settings)?;
    // Every connection starts in the service's schema, so queries name
    // tables without a schema and a service cannot stray into another's.
    // A transaction pooler refuses (or drops) startup options: it sets the
    // schema itself, and each new connection checks that it did.
    let schema = settings.schema.clone();
    let check_schema = settings.pooling == Pooling::Transaction;
    if !check_schema {
        // Migrations connect on their own (`migrate`), without this
        // timeout: building an index may take as long as it takes.
        pg.options(format!(
            "-c search_path={schema},public -c statement_timeout={}",
            settings.statement_timeout_ms
        ));
    }
    pg.application_name(app_name);
    pg.connect_timeout(Duration::from_millis(settings.connect_timeout_ms));
    // Notice a server that vanished without closing the connection.
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(30));
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method });
    Pool::builder(manager)
        .max_size(settings.max_connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_millis(settings.acquire_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .recycle_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .post_create(Hook::async_fn(move |client, _| {
            let schema = schema.clone();
            Box::pin(async move {
                if check_schema {
                    in_schema(client, &schema).await.map_err(HookError::message)?;
                }
                Ok(())
            })
        }))
        .build()
        .map_err(|e| DbError::Settings(e.to_string()))
}

/// Behind a transaction pooler: that the pooler put this connection in
/// `schema`, or why it did not (no table of the service is reachable
/// otherwise, or worse, another schema's is).
async fn in_schema(client: &deadpool_postgres::ClientWrapper, schema: &str) -> Result<(), String> {
    let rows = client.simple_query("SELECT current_schema()").await.map_err(|e| e.to_string())?;
    let current = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("").to_owned()),
        _ => None,
    });
    match current {
        Some(current) if current == schema => Ok(()),
        current => Err(format!(
            "database.pooling = \"transaction\": the pooler must put each connection in schema `{schema}` \
             (PgBouncer: connect_query = 'SET search_path TO {schema}, public'), but it is in `{}`",
            current.unwrap_or_default()
        )),
    }
}

/// A pooled connection that knows which server it talks to.
#[derive(Debug)]
pub struct Conn {
    client: deadpool_postgres::Object,
    role: Role,
    /// A primary connection's: whom to wake when it goes back to the pool.
    outbox: Option<OutboxWatch>,
}

/// Wakes the relay when a connection goes back to the pool after outbox
/// events were written in this process while it was out (by it or by
/// another: the count is the process's, which a connection cannot tell
/// apart). By then the connection's transaction has ended, so an event it
/// wrote is committed; a wake for another's event still in flight only
/// costs the relay an early look, and that connection wakes it again.
#[derive(Debug)]
struct OutboxWatch {
    wake: Arc<tokio::sync::Notify>,
    written_before: u64,
}

impl OutboxWatch {
    fn new(wake: &Arc<tokio::sync::Notify>) -> Self {
        Self { wake: Arc::clone(wake), written_before: OUTBOX_WRITES.load(Ordering::Relaxed) }
    }
}

/// Outbox writes this process has sent ([`crate::outbox::enqueue`]): a
/// pooled connection that sees the count change while it is out wakes the
/// relay when it goes back, so an event is published right after its
/// commit rather than at the relay's next poll.
static OUTBOX_WRITES: AtomicU64 = AtomicU64::new(0);

/// Called by every outbox write (see [`OUTBOX_WRITES`]).
pub(crate) fn count_outbox_write() {
    OUTBOX_WRITES.fetch_add(1, Ordering::Relaxed);
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(watch) = &self.outbox
            && OUTBOX_WRITES.load(Ordering::Relaxed) != watch.written_before
        {
            watch.wake.notify_one();
        }
    }
}

impl Conn {
    pub fn role(&self) -> Role {
        self.role
    }

    /// The primary's WAL position right after the caller's commit: pass it
    /// to a later [`Db::read`] to read that write back. Call it after
    /// `commit()` on this same connection. The *insert* position is used
    /// because it is past the commit record even with
    /// `synchronous_commit = off`, when the flushed position may not be.
    pub async fn commit_position(&self) -> Result<WalPosition, DbError> {
        // Prepared once per connection: one round trip, not two.
        let row = self.client.query_one_cached("SELECT pg_current_wal_insert_lsn()::text", &[]).await?;
        let text: String = row.get(0);
        text.parse().map_err(|e: wal::ParseWalError| DbError::Settings(e.to_string()))
    }
}

impl Deref for Conn {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

crate::metrics::label_values!(Role { Primary => "primary", Replica => "replica" });
crate::metrics::label_values!(FallbackReason { Unavailable => "unavailable", Lagging => "lagging" });
