//! The revocation set a service follows: when it may trust it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tenx_common::authn::{AuthnError, RevocationLookup, Revocations, Revoked, heartbeat};
use tenx_common::cache::{Redis, RedisSettings};
use tenx_test_support::TestRedis;

/// Auth's `CheckRevoked` as a follower that does not trust its set asks
/// it: here everything is revoked, and each question is counted.
#[derive(Default)]
struct Asked(AtomicUsize);

impl RevocationLookup for Asked {
    fn is_revoked<'a>(&'a self, _: Revoked, _: &'a str) -> BoxFuture<'a, Result<bool, AuthnError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(true) })
    }
}

/// Publishes a heartbeat every 100 ms until dropped (one alone might come
/// before the follower has subscribed).
fn beating(redis: &Redis, drained: bool) -> tokio::task::JoinHandle<()> {
    let redis = redis.clone();
    tokio::spawn(async move {
        loop {
            let _ = heartbeat(&redis, drained).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// After a load (a start, or Redis back after an outage) the set may lack
/// what auth committed meanwhile and has yet to publish from its outbox.
/// Auth says "drained" in its heartbeat once its outbox is empty; only from
/// then is the set trusted. Until then a credential it does not list is
/// asked about.
#[tokio::test]
async fn a_loaded_set_is_trusted_only_once_auth_says_its_outbox_is_drained() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let redis = Redis::connect(&RedisSettings::new(test_redis.url(), test_redis.prefix()))?;
    let asked = Arc::new(Asked::default());
    let revocations = Revocations::start(Some(redis.clone()), asked.clone());

    // Auth is there but its outbox is not empty (say Redis just came back).
    subscribed(&redis).await?;
    let alive = beating(&redis, false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!revocations.is_current(), "trusted before auth's outbox was drained");
    assert!(revocations.is_revoked(Revoked::Session, "s1").await?, "not asked: {asked:?}");
    assert_eq!(asked.0.load(Ordering::SeqCst), 1);
    alive.abort();

    let drained = beating(&redis, true);
    tokio::time::timeout(Duration::from_secs(5), revocations.synced()).await?;
    drained.abort();
    assert!(revocations.is_current());
    assert!(!revocations.is_revoked(Revoked::Session, "s2").await?, "a session the set does not list");
    assert_eq!(asked.0.load(Ordering::SeqCst), 1, "a trusted set asks no one");

    // Once trusted, plain heartbeats keep it trusted past the 3 s silence.
    let alive = beating(&redis, false);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(revocations.is_current(), "plain heartbeats did not keep a trusted set");
    alive.abort();
    Ok(())
}

/// Waits until the follower has subscribed to the feed.
async fn subscribed(redis: &Redis) -> anyhow::Result<()> {
    let channel = redis.key("auth:revoked");
    for _ in 0..500 {
        let mut conn = redis.connection();
        let counts: Vec<(String, u64)> =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(&mut conn).await?;
        if counts.iter().any(|(_, n)| *n > 0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("the follower never subscribed to {channel}")
}

impl std::fmt::Debug for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} questions", self.0.load(Ordering::SeqCst))
    }
}
