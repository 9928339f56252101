//! Cross-instance L1 invalidation over Redis pub/sub.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::Redis;
use super::epochs::Epochs;
use crate::db::WalPosition;

/// Separates the parts of a message; cannot occur in a cache name.
const SEP: char = '\u{1f}';

/// How long an instance remembers a key's last write position: longer
/// than any replica lag worth serving reads through.
const WRITES_REMEMBERED: Duration = Duration::from_secs(30);

/// `cache SEP key [SEP wal-position]`.
pub(super) fn message(cache: &str, key: &str, written: Option<WalPosition>) -> String {
    match written {
        Some(position) => format!("{cache}{SEP}{key}{SEP}{position}"),
        None => format!("{cache}{SEP}{key}"),
    }
}

fn parse(payload: &str) -> Option<(&str, &str, Option<WalPosition>)> {
    let (cache, rest) = payload.split_once(SEP)?;
    match rest.rsplit_once(SEP) {
        Some((key, position)) => Some((cache, key, position.parse().ok())),
        None => Some((cache, rest, None)),
    }
}

/// The L1 side of a cache, type-erased so one subscriber serves them all.
pub(super) trait LocalEntries: Send + Sync {
    fn drop_key<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
    fn drop_all(&self);
}

/// One cache's L1 with the epochs its loads check (see [`Epochs`]).
pub(super) struct Local<V> {
    pub(super) l1: moka::future::Cache<String, (V, u64)>,
    pub(super) epochs: Arc<Epochs>,
}

impl<V: Clone + Send + Sync + 'static> LocalEntries for Local<V> {
    fn drop_key<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        // The bump comes first, so a load that began before it is not served.
        self.epochs.bump(key);
        Box::pin(self.l1.invalidate(key))
    }
    fn drop_all(&self) {
        self.epochs.bump_all();
        self.l1.invalidate_all();
    }
}

type Registry = Arc<RwLock<HashMap<String, Vec<Arc<dyn LocalEntries>>>>>;

/// The subscriber task of one [`super::CacheLayer`]; stops when the last
/// clone is dropped.
#[derive(Clone)]
pub(super) struct Invalidation {
    caches: Registry,
    /// `cache SEP key` → WAL position of its last write, from this
    /// instance's writes and every other instance's invalidations.
    writes: moka::future::Cache<String, WalPosition>,
    subscribed: watch::Receiver<bool>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

impl Invalidation {
    pub(super) fn start(redis: Option<Redis>) -> Self {
        let caches: Registry = Arc::default();
        let writes =
            moka::future::Cache::builder().max_capacity(100_000).time_to_live(WRITES_REMEMBERED).build();
        let (tx, subscribed) = watch::channel(redis.is_none());
        let task = redis.map(|redis| tokio::spawn(listen(redis, caches.clone(), writes.clone(), tx)));
        Self { caches, writes, subscribed, _task: Arc::new(AbortOnDrop(task)) }
    }

    pub(super) async fn record_write(&self, cache: &str, key: &str, position: WalPosition) {
        remember(&self.writes, cache, key, position).await;
    }

    pub(super) async fn written_at(&self, cache: &str, key: &str) -> Option<WalPosition> {
        // Asked on every cache read: the key is joined on the stack.
        let (mut buffer, mut sep) = ([0u8; 128], [0u8; 4]);
        let joined = crate::joined::joined_or_owned(&mut buffer, &[cache, SEP.encode_utf8(&mut sep), key]);
        self.writes.get(&*joined).await
    }

    pub(super) fn register(&self, name: &str, entries: Arc<dyn LocalEntries>) {
        let mut caches = self.caches.write().unwrap_or_else(|p| p.into_inner());
        caches.entry(name.to_owned()).or_default().push(entries);
    }

    pub(super) async fn subscribed(&self) {
        let mut rx = self.subscribed.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

async fn remember(
    writes: &moka::future::Cache<String, WalPosition>,
    cache: &str,
    key: &str,
    position: WalPosition,
) {
    // One atomic step: a remote write's older position arriving at once
    // must not replace this instance's newer one.
    writes
        .entry(format!("{cache}{SEP}{key}"))
        .and_upsert_with(|known| std::future::ready(known.map_or(position, |k| (*k.value()).max(position))))
        .await;
}

async fn listen(
    redis: Redis,
    caches: Registry,
    writes: moka::future::Cache<String, WalPosition>,
    subscribed: watch::Sender<bool>,
) {
    let channel = redis.invalidation_channel();
    let mut delay = Duration::from_millis(50);
    loop {
        let connected = async {
            let mut pubsub = redis.pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        }
        .await;
        match connected {
            Ok(pubsub) => {
                // Invalidations sent while we were not subscribed are lost,
                // so nothing in L1 can be trusted any more.
                for entries in caches.read().unwrap_or_else(|p| p.into_inner()).values().flatten() {
                    entries.drop_all();
                }
                delay = Duration::from_millis(50);
                subscribed.send_replace(true);
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let Some((cache, key, written)) = parse(&payload) else {
                        continue;
                    };
                    if let Some(position) = written {
                        remember(&writes, cache, key, position).await;
                    }
                    let targets: Vec<_> = caches
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(cache)
                        .cloned()
                        .unwrap_or_default();
                    for entries in targets {
                        entries.drop_key(key).await;
                    }
                }
                subscribed.send_replace(false);
                tracing::warn!("cache invalidation subscription lost; reconnecting");
            }
            Err(error) => tracing::debug!(%error, "cache invalidation subscribe failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
