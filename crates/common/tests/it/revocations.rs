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

/// After a load (a start, or Redis back after an outage) the set may lack
/// what auth committed meanwhile and has yet to publish from its outbox;
/// auth's heartbeat comes after it has. So the set is trusted only once a
/// heartbeat has been heard since the load.
#[tokio::test]
async fn a_loaded_set_is_trusted_only_once_auth_has_beaten_since() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let redis = Redis::connect(&RedisSettings::new(test_redis.url(), test_redis.prefix()))?;
    let asked = Arc::new(Asked::default());
    let revocations = Revocations::start(Some(redis.clone()), asked.clone());

    // Long enough to subscribe and load an empty set.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!revocations.is_current(), "trusted before auth said anything");
    assert!(revocations.is_revoked(Revoked::Session, "s1").await?, "not asked: {asked:?}");
    assert_eq!(asked.0.load(Ordering::SeqCst), 1);

    heartbeat(&redis).await?;
    tokio::time::timeout(Duration::from_secs(5), revocations.synced()).await?;
    assert!(revocations.is_current());
    assert!(!revocations.is_revoked(Revoked::Session, "s2").await?, "a session the set does not list");
    assert_eq!(asked.0.load(Ordering::SeqCst), 1, "a trusted set asks no one");
    Ok(())
}

impl std::fmt::Debug for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} questions", self.0.load(Ordering::SeqCst))
    }
}
