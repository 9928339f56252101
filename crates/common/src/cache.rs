//! Multi-layer read-through cache: L1 in-process (bounded, TTL) → L2 Redis
//! (TTL) → the caller's loader (L3, usually Postgres).
//!
//! - Single-flight: concurrent misses for one key in one process run the
//!   loader once; the others wait for its result.
//! - Invalidation on write replaces the L2 entry with a short-lived
//!   tombstone and publishes the key on a Redis channel; every instance
//!   (every [`CacheLayer`]) drops its L1 entry. An instance that lost its
//!   subscription clears its whole L1 when it is back, because it may have
//!   missed invalidations.
//! - A read that began before an invalidation is returned to the callers
//!   that began with it, and to no one after: L1 keeps each value with its
//!   key's epoch (a count of the key's invalidations) when its read
//!   began, and serves it only to callers that began at that epoch or
//!   before; L2 is only
//!   set where nothing is, and the tombstone is something. Otherwise a
//!   read that began before a write could store the old value after the
//!   write dropped it, to be served until the TTL.
//! - Redis down means slower, never failing: L2 errors are counted and the
//!   read goes to the loader.
//!
//! Metrics: `tenx_cache_hits_total{cache,layer}`,
//! `tenx_cache_loads_total{cache}`, `tenx_cache_errors_total{cache,op}`.

mod epochs;
mod invalidation;
mod redis_conn;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use redis_conn::{Redis, RedisSettings};

use crate::db::WalPosition;
use crate::metrics::{MetricSet, Metrics};
use epochs::Epochs;
use invalidation::{Invalidation, Local};

/// What an invalidation leaves in L2 instead of the value. Not JSON, so
/// never a value.
const TOMBSTONE: &[u8] = b"\0invalidated";

/// How long a tombstone stays. A load slower than half of it is not
/// stored in L2, since it may have begun before a write whose tombstone
/// is gone.
const TOMBSTONE_TTL: Duration = Duration::from_secs(10);

/// Sizes and lifetimes of one cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Most entries kept in process memory.
    pub l1_capacity: u64,
    /// How long an L1 entry lives; bounds staleness if an invalidation is
    /// missed.
    pub l1_ttl: Duration,
    /// How long an L2 (Redis) entry lives.
    pub l2_ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self { l1_capacity: 10_000, l1_ttl: Duration::from_secs(30), l2_ttl: Duration::from_secs(300) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Layer {
    L1,
    L2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Get,
    Set,
    Invalidate,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HitLabels {
    cache: String,
    layer: Layer,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabel {
    cache: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    cache: String,
    op: Op,
}

#[derive(Clone, Default)]
struct CacheMetrics {
    hits: Family<HitLabels, Counter>,
    loads: Family<CacheLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
}

impl MetricSet for CacheMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register("cache_hits", "Cache hits by layer", set.hits.clone());
        metrics.register("cache_loads", "Cache misses that ran the loader", set.loads.clone());
        metrics.register("cache_errors", "Failed L2 (Redis) cache operations", set.errors.clone());
        set
    }
}

/// The process's caching: one Redis handle, one invalidation subscriber
/// and one set of metric families, shared by every [`Cache`] it makes.
#[derive(Clone)]
pub struct CacheLayer {
    redis: Option<Redis>,
    invalidation: Invalidation,
    metrics: CacheMetrics,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer").field("redis", &self.redis).finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// `redis: None` gives an L1-only cache (single instance, tests).
    pub fn new(redis: Option<Redis>, metrics: &Metrics) -> Self {
        let invalidation = Invalidation::start(redis.clone());
        Self { redis, invalidation, metrics: metrics.set() }
    }

    /// A typed cache named `name` (part of its Redis keys and metrics).
    pub fn cache<V>(&self, name: &str, options: CacheOptions) -> Cache<V>
    where
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let l1 = moka::future::Cache::builder()
            .max_capacity(options.l1_capacity)
            .time_to_live(options.l1_ttl)
            .build();
        let epochs = Arc::new(Epochs::default());
        self.invalidation.register(name, Arc::new(Local { l1: l1.clone(), epochs: epochs.clone() }));
        let hits = [Layer::L1, Layer::L2].map(|layer| {
            self.metrics.hits.get_or_create(&HitLabels { cache: name.to_owned(), layer }).clone()
        });
        Cache { name: name.to_owned(), l1, epochs, l2_ttl: options.l2_ttl, layer: self.clone(), hits }
    }

    /// Readiness: Redis answers (always true without Redis).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        match &self.redis {
            Some(redis) => redis.ping().await,
            None => Ok(()),
        }
    }

    /// Completes once this instance receives invalidations from the others
    /// (immediately when there is no Redis). Readiness waits on it.
    pub async fn subscribed(&self) {
        self.invalidation.subscribed().await;
    }
}

/// One named, typed cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache<V> {
    name: String,
    /// Each value with the epoch of its key when it was read.
    l1: moka::future::Cache<String, (V, u64)>,
    epochs: Arc<Epochs>,
    l2_ttl: Duration,
    layer: CacheLayer,
    /// This cache's hit counters (L1, L2), resolved once: a hit is the
    /// hot path, and finding them by labels costs an allocation each.
    hits: [Counter; 2],
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<V> Cache<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The value for `key`: from L1, else L2, else `load` (whose result is
    /// then stored in both). A loader error is returned, not cached.
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, load: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        self.cached(key, self.epochs.of(key), load).await
    }

    /// L1, else [`Cache::read_through`], for a caller that noted `key`'s
    /// `epoch` before it decided what to read.
    async fn cached<F, Fut, E>(&self, key: &str, epoch: u64, load: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(value) = self.l1_get(key, epoch).await {
            return Ok(value);
        }
        // Boxed: a miss's futures (Redis, the loader's queries) are many
        // times a hit's size, and every caller's future would carry them,
        // copied on each move, though a hit never runs them.
        Box::pin(self.read_through(key, epoch, load)).await
    }

    /// The L1 entry for `key` if it was read at `epoch` (the key's epoch
    /// when the caller began) or later; an entry read before that is
    /// dropped, and nothing is served from it.
    async fn l1_get(&self, key: &str, epoch: u64) -> Option<V> {
        let (value, read_at) = self.l1.get(key).await?;
        if read_at >= epoch {
            self.hit(Layer::L1);
            return Some(value);
        }
        // Boxed for the reason a miss is ([`Cache::cached`]).
        Box::pin(self.drop_older(key, epoch)).await;
        None
    }

    /// Drops `key`'s L1 entry if it was read before `epoch` (a fresher one
    /// stored by a load finishing at that moment may go too: a reload).
    async fn drop_older(&self, key: &str, epoch: u64) {
        self.l1
            .entry_by_ref(key)
            .and_compute_with(|entry| {
                let older = entry.is_some_and(|e| e.value().1 < epoch);
                std::future::ready(if older {
                    moka::ops::compute::Op::Remove
                } else {
                    moka::ops::compute::Op::Nop
                })
            })
            .await;
    }

    /// L2, else the loader, for a caller that noted `key`'s `epoch` before
    /// it decided what to read.
    async fn read_through<F, Fut, E>(&self, key: &str, epoch: u64, load: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        // Concurrent misses for this key join one future, which runs the
        // loader of the caller that started it (a joiner's stays here).
        // Its value is stored in L1 with the epoch it was read at, so a
        // read from before an invalidation is never served after it: not
        // from L1 ([`Cache::l1_get`]) and not to a caller that came later
        // and joined it. Such a caller drops the older entry and tries once
        // more, so the callers after a write share one load too.
        let mut unused = Some(load);
        for _ in 0..2 {
            let (value, read_at) =
                self.l1.try_get_with_by_ref(key, self.fill(key, epoch, &mut unused)).await?;
            // Read at this caller's epoch, or later (fresher still).
            if read_at >= epoch {
                return Ok(value);
            }
            self.drop_older(key, epoch).await;
        }
        // Still handed older reads (writes keep coming): read alone. The
        // loader is unused, since a caller that ran it got its own epoch.
        let load = unused.take().expect("a caller handed older reads did not load");
        self.count_load();
        load().await.map_err(Arc::new)
    }

    /// The single-flight future of [`Cache::read_through`]: L2, else the
    /// loader in `unused`; the value with the epoch its read began at.
    async fn fill<F, Fut, E>(&self, key: &str, epoch: u64, unused: &mut Option<F>) -> Result<(V, u64), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        if let Some(value) = self.l2_get(key).await {
            self.hit(Layer::L2);
            return Ok((value, epoch));
        }
        self.count_load();
        let started = tokio::time::Instant::now();
        // A caller's own future runs at most once, and only the first time
        // it is handed an older read does it try again, loader unused.
        let load = unused.take().expect("a cache load runs once per caller");
        let value = load().await?;
        // L2 has no epochs: a read that raced a write stays out (and the
        // write's tombstone refuses it if it comes in between).
        if self.epochs.of(key) == epoch && started.elapsed() < TOMBSTONE_TTL / 2 {
            self.l2_set(key, &value).await;
        }
        Ok((value, epoch))
    }

    /// Like [`Cache::get_or_load`], for data read from a replica, with
    /// read-your-writes. `after` is the caller's own last write (a WAL
    /// position from request metadata): then L1 and L2 are skipped, since
    /// this instance may not yet have heard of that write, and the loader
    /// gets the position. Otherwise the loader gets the position of the
    /// key's last invalidation, if recent, so a replica that has not
    /// replayed that write is not read.
    pub async fn get_or_load_fresh<F, Fut, E>(
        &self,
        key: &str,
        after: Option<WalPosition>,
        load: F,
    ) -> Result<V, Arc<E>>
    where
        F: FnOnce(Option<WalPosition>) -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        // The epoch before the write position: a write recorded after it
        // moves the epoch too, so a load that missed the position is not
        // kept (writers record the position before they bump).
        let epoch = self.epochs.of(key);
        let written = self.layer.invalidation.written_at(&self.name, key).await;
        let Some(after) = after else { return self.cached(key, epoch, || load(written)).await };
        // Boxed, as a miss is in [`Cache::cached`].
        Box::pin(async move {
            self.count_load();
            let started = tokio::time::Instant::now();
            let value = load(Some(written.map_or(after, |w| w.max(after)))).await.map_err(Arc::new)?;
            self.l1.insert(key.to_owned(), (value.clone(), epoch)).await;
            if self.epochs.of(key) == epoch && started.elapsed() < TOMBSTONE_TTL / 2 {
                self.l2_set(key, &value).await;
            }
            Ok(value)
        })
        .await
    }

    /// Call after changing the source of `key`: deletes it from L2 (a
    /// tombstone takes its place for a while) and from the L1 of every
    /// instance. Never fails; if Redis is down the tombstone and message
    /// are retried in the background until the L2 entry would expire.
    pub async fn invalidate(&self, key: &str) {
        self.invalidate_after(key, None).await;
    }

    /// [`Cache::invalidate`] for a change committed at `written` (the WAL
    /// position of the commit): every instance remembers it for a short
    /// while, so its next load of `key` does not read a lagging replica.
    pub async fn invalidate_after(&self, key: &str, written: Option<WalPosition>) {
        // The position first: a load that notes the epoch before reading it
        // then either sees the position or is not served.
        if let Some(position) = written {
            self.layer.invalidation.record_write(&self.name, key, position).await;
        }
        self.epochs.bump(key);
        self.l1.invalidate(key).await;
        let Some(redis) = &self.layer.redis else {
            return;
        };
        let (redis_key, message) = (self.redis_key(key), invalidation::message(&self.name, key, written));
        let (redis, errors, labels) = (
            redis.clone(),
            self.layer.metrics.errors.clone(),
            ErrorLabels { cache: self.name.clone(), op: Op::Invalidate },
        );
        let give_up = tokio::time::Instant::now() + self.l2_ttl;
        // A task of its own: a caller that goes away after its commit (a
        // dropped request) cannot drop the tombstone and the message, which
        // are retried while Redis is down, until the L2 entry would expire.
        let (first, first_tried) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let tombstoned = redis.invalidate(&redis_key, TOMBSTONE, TOMBSTONE_TTL, &message).await.is_ok();
            if !tombstoned {
                errors.get_or_create(&labels).inc();
            }
            let _ = first.send(());
            if tombstoned {
                return;
            }
            let mut delay = Duration::from_millis(100);
            while tokio::time::Instant::now() < give_up {
                tokio::time::sleep(delay).await;
                if redis.invalidate(&redis_key, TOMBSTONE, TOMBSTONE_TTL, &message).await.is_ok() {
                    return;
                }
                errors.get_or_create(&labels).inc();
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        let _ = first_tried.await;
        // A local read of the old L2 value between the bump above and the
        // tombstone was tagged with the new epoch: move the epoch on again.
        self.epochs.bump(key);
        self.l1.invalidate(key).await;
    }

    fn redis_key(&self, key: &str) -> String {
        format!("cache:{}:{key}", self.name)
    }

    async fn l2_get(&self, key: &str) -> Option<V> {
        let redis = self.layer.redis.as_ref()?;
        match redis.get(&self.redis_key(key)).await {
            Ok(Some(bytes)) if bytes == TOMBSTONE => None,
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(value) => Some(value),
                Err(error) => {
                    // A value written by an older version of the type.
                    tracing::warn!(cache = %self.name, %error, "undecodable L2 entry; reloading");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(cache = %self.name, %error, "L2 get failed");
                self.error(Op::Get);
                None
            }
        }
    }

    async fn l2_set(&self, key: &str, value: &V) {
        let Some(redis) = &self.layer.redis else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(value) else {
            return;
        };
        if let Err(error) = redis.set_if_absent(&self.redis_key(key), bytes, self.l2_ttl).await {
            tracing::debug!(cache = %self.name, %error, "L2 set failed");
            self.error(Op::Set);
        }
    }

    fn count_load(&self) {
        self.layer.metrics.loads.get_or_create(&CacheLabel { cache: self.name.clone() }).inc();
    }

    fn hit(&self, layer: Layer) {
        self.hits[layer as usize].inc();
    }

    fn error(&self, op: Op) {
        self.layer.metrics.errors.get_or_create(&ErrorLabels { cache: self.name.clone(), op }).inc();
    }
}

crate::metrics::label_values!(Layer { L1 => "l1", L2 => "l2" });
crate::metrics::label_values!(Op { Get => "get", Set => "set", Invalidate => "invalidate" });
