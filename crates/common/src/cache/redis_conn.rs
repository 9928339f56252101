//! The Redis handle the cache (and later the rate limiter) shares: one
//! multiplexed, self-reconnecting connection, keys under a prefix.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use serde::Deserialize;

use crate::config::{Invalid, Secret, Validate};

/// Settings under `redis.`.
#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`.
    pub url: Secret<String>,
    /// Prepended to every key and channel; lets services (or tests) share
    /// one Redis without collisions.
    #[serde(default)]
    pub key_prefix: String,
    /// A request waits this long for Redis before the cache gives up on it
    /// and reads from the loader.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_response_timeout_ms() -> u64 {
    250
}
fn default_connect_timeout_ms() -> u64 {
    500
}

impl RedisSettings {
    pub fn new(url: &str, key_prefix: &str) -> Self {
        Self {
            url: Secret::new(url.to_owned()),
            key_prefix: key_prefix.to_owned(),
            response_timeout_ms: default_response_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }
}

impl Validate for RedisSettings {
    fn validate(&self) -> Result<(), Invalid> {
        redis::Client::open(self.url.expose().as_str())
            .map(|_| ())
            .map_err(|e| Invalid::new("redis.url", format!("not a Redis URL: {}", e.kind_str())))
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    // The error's Display may echo the URL, password included.
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

/// A cloneable Redis handle. Connects lazily, so a service starts while
/// Redis is down, and reconnects by itself.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    manager: ConnectionManager,
    prefix: String,
    connect_timeout: Duration,
    /// Bound on a whole operation, reconnect included: Redis down must
    /// cost a request at most this much.
    op_timeout: Duration,
    /// After a failure, operations fail at once until then, instead of
    /// each waiting out a reconnect to a dead server.
    skip_until: Arc<Mutex<Option<Instant>>>,
}

/// How long Redis is skipped after a failed operation.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Redis {
    pub fn connect(settings: &RedisSettings) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(settings.url.expose().as_str())?;
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(settings.response_timeout_ms)))
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            client,
            manager,
            prefix: settings.key_prefix.clone(),
            connect_timeout,
            op_timeout: Duration::from_millis(settings.response_timeout_ms),
            skip_until: Arc::default(),
        })
    }

    /// Readiness: Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.manager.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.connect_timeout, ping.query_async::<String>(&mut conn)).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
        }
    }

    /// Runs `op` within the operation timeout, skipping Redis for a moment
    /// after a failure.
    pub async fn bounded<T, F>(&self, op: F) -> redis::RedisResult<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let skipping =
            self.skip_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| Instant::now() < t);
        if skipping {
            return Err(redis::RedisError::from((redis::ErrorKind::Io, "skipped after a recent failure")));
        }
        let result = match tokio::time::timeout(self.op_timeout, op).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
        };
        if result.is_err() {
            *self.skip_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + SKIP_AFTER_FAILURE);
        }
        result
    }

    /// The same connection with keys under another prefix (another
    /// service's keys in a shared Redis: auth's revocations).
    pub fn with_prefix(&self, prefix: &str) -> Self {
        Self { prefix: prefix.to_owned(), ..self.clone() }
    }

    /// The prefix of every key of this handle (see [`Redis::key`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `key` with this handle's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The multiplexed connection, for other components (rate limits).
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    pub(crate) fn invalidation_channel(&self) -> String {
        self.key("cache:invalidate")
    }

    pub(crate) async fn get(&self, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        let mut conn = self.manager.clone();
        self.bounded(conn.get(self.key(key))).await
    }

    /// Sets `key` unless it holds anything, a tombstone included.
    pub(crate) async fn set_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> redis::RedisResult<()> {
        let mut conn = self.manager.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("PX").arg(millis(ttl)).arg("NX");
        let _set: Option<String> = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Replaces `key` with `tombstone` for `tombstone_ttl` and tells every
    /// instance, in one round trip.
    pub(crate) async fn invalidate(
        &self,
        key: &str,
        tombstone: &[u8],
        tombstone_ttl: Duration,
        message: &str,
    ) -> redis::RedisResult<()> {
        let mut conn = self.manager.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.key(key))
            .arg(tombstone)
            .arg("PX")
            .arg(millis(tombstone_ttl))
            .ignore()
            .publish(self.invalidation_channel(), message)
            .ignore();
        self.bounded(pipe.query_async(&mut conn)).await
    }

    pub(crate) async fn pubsub(&self) -> redis::RedisResult<PubSub> {
        match tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub()).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))),
        }
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
