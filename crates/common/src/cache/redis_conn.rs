//! The Redis handle the cache (and later the rate limiter) shares: one
//! multiplexed, self-reconnecting connection, keys under a prefix.

use std::time::Duration;

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
}

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
        Ok(Self { client, manager, prefix: settings.key_prefix.clone(), connect_timeout })
    }

    /// Readiness: Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING").query_async::<String>(&mut self.manager.clone()).await.map(|_| ())
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
        self.manager.clone().get(self.key(key)).await
    }

    pub(crate) async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> redis::RedisResult<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(ms)
            .query_async(&mut self.manager.clone())
            .await
    }

    /// Deletes `key` and tells every instance, in one round trip.
    pub(crate) async fn invalidate(&self, key: &str, message: &str) -> redis::RedisResult<()> {
        redis::pipe()
            .atomic()
            .del(self.key(key))
            .ignore()
            .publish(self.invalidation_channel(), message)
            .ignore()
            .query_async(&mut self.manager.clone())
            .await
    }

    pub(crate) async fn pubsub(&self) -> redis::RedisResult<PubSub> {
        match tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub()).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))),
        }
    }
}
