//! The three layers, single-flight, cross-instance invalidation, Redis down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tenx_common::cache::{Cache, CacheLayer, CacheOptions, Redis, RedisSettings};
use tenx_common::metrics::Metrics;
use tenx_test_support::{ChaosProxy, TestRedis, addr_of};

use crate::support::{eventually, metric};

fn instance(redis_url: &str, prefix: &str, metrics: &Metrics) -> anyhow::Result<(CacheLayer, Cache<String>)> {
    let redis = Redis::connect(&RedisSettings::new(redis_url, prefix))?;
    let layer = CacheLayer::new(Some(redis), metrics);
    let cache = layer.cache("users", CacheOptions::default());
    Ok((layer, cache))
}

async fn load(value: &str, calls: &AtomicUsize) -> Result<String, std::convert::Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(value.to_owned())
}

#[tokio::test]
async fn each_layer_is_observed_in_the_metrics() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let (metrics_a, metrics_b) = (Metrics::default(), Metrics::default());
    let (la, a) = instance(test_redis.url(), test_redis.prefix(), &metrics_a)?;
    let (lb, b) = instance(test_redis.url(), test_redis.prefix(), &metrics_b)?;
    // Subscribing clears L1 (and drops the loads in flight), as readiness
    // waits for it.
    la.subscribed().await;
    lb.subscribed().await;
    let calls = AtomicUsize::new(0);

    assert_eq!(a.get_or_load("u1", || load("ada", &calls)).await?, "ada");
    assert_eq!(metric(&metrics_a, "tenx_cache_loads_total{cache=\"users\"}"), 1.0);

    assert_eq!(a.get_or_load("u1", || load("wrong", &calls)).await?, "ada");
    assert_eq!(metric(&metrics_a, "tenx_cache_hits_total{cache=\"users\",layer=\"l1\"}"), 1.0);

    // Instance B has an empty L1, but A's load filled Redis.
    assert_eq!(b.get_or_load("u1", || load("wrong", &calls)).await?, "ada");
    assert_eq!(metric(&metrics_b, "tenx_cache_hits_total{cache=\"users\",layer=\"l2\"}"), 1.0);
    assert_eq!(metric(&metrics_b, "tenx_cache_loads_total{cache=\"users\"}"), 0.0);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the first read ran the loader");
    Ok(())
}

#[tokio::test]
async fn a_hundred_concurrent_misses_run_the_loader_once() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let (_layer, cache) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("hot", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::convert::Infallible>("value".to_owned())
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await?.map_err(|e| anyhow::anyhow!("{e:?}"))?, "value");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn an_invalidation_on_one_instance_reaches_another_within_100ms() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let (la, a) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    let (lb, b) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    la.subscribed().await;
    lb.subscribed().await;
    let calls = AtomicUsize::new(0);

    assert_eq!(b.get_or_load("u1", || load("v1", &calls)).await?, "v1");
    assert_eq!(b.get_or_load("u1", || load("v2", &calls)).await?, "v1", "served from B's L1");

    // The source changes on A's side; A invalidates.
    let started = Instant::now();
    a.invalidate("u1").await;
    loop {
        let seen = b.get_or_load("u1", || load("v2", &calls)).await?;
        if seen == "v2" {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_millis(100),
            "B still serves the old value after 100 ms"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    Ok(())
}

#[tokio::test]
async fn with_redis_unreachable_reads_still_succeed_from_the_loader() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let proxy = ChaosProxy::start(addr_of(test_redis.url())?).await?;
    proxy.cut();
    let metrics = Metrics::default();
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let (_layer, cache) = instance(&url, test_redis.prefix(), &metrics)?;
    let calls = AtomicUsize::new(0);

    assert_eq!(cache.get_or_load("u1", || load("ada", &calls)).await?, "ada");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(metric(&metrics, "tenx_cache_errors_total{cache=\"users\",op=\"get\"}") >= 1.0);
    // Writes must not fail either.
    cache.invalidate("u1").await;
    assert_eq!(cache.get_or_load("u1", || load("grace", &calls)).await?, "grace");
    Ok(())
}

#[tokio::test]
async fn a_read_carrying_a_write_position_skips_l1_and_the_position_reaches_the_loader() -> anyhow::Result<()>
{
    use tenx_common::db::WalPosition;
    let test_redis = TestRedis::new();
    let (la, a) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    let (lb, b) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    la.subscribed().await;
    lb.subscribed().await;
    let seen = std::sync::Mutex::new(Vec::new());
    let load = |value: &'static str| {
        let seen = &seen;
        move |after: Option<WalPosition>| async move {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(after);
            Ok::<_, std::convert::Infallible>(value.to_owned())
        }
    };
    assert_eq!(b.get_or_load_fresh("u1", None, load("old")).await?, "old");
    let written: WalPosition = "0/16B3748".parse()?;
    // The caller's own write: B has not heard of it, but must not serve L1.
    assert_eq!(b.get_or_load_fresh("u1", Some(written), load("new")).await?, "new");
    // Another instance's write: its position travels with the invalidation.
    let later: WalPosition = "0/16B4000".parse()?;
    a.invalidate_after("u1", Some(later)).await;
    eventually(Duration::from_millis(500), "B to drop u1", || async {
        Ok(b.get_or_load_fresh("u1", None, load("newer")).await? == "newer")
    })
    .await?;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(seen, vec![None, Some(written), Some(later)]);
    Ok(())
}

/// A loader that holds its value until released, and says when it began.
struct HeldLoad {
    began: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl HeldLoad {
    fn new() -> Arc<Self> {
        Arc::new(Self { began: tokio::sync::Notify::new(), release: tokio::sync::Notify::new() })
    }

    /// Reads `key` on `cache` in a task whose loader returns "old" once released.
    fn spawn(self: &Arc<Self>, cache: &Cache<String>, key: &'static str) -> tokio::task::JoinHandle<String> {
        let (held, cache) = (self.clone(), cache.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(key, || async {
                    held.began.notify_one();
                    held.release.notified().await;
                    Ok::<_, std::convert::Infallible>("old".to_owned())
                })
                .await
                .unwrap_or_else(|e| match *e {})
        })
    }
}

#[tokio::test]
async fn a_read_that_began_before_an_invalidation_is_not_kept_by_either_layer() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let (la, a) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    let (lb, b) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    la.subscribed().await;
    lb.subscribed().await;
    let calls = AtomicUsize::new(0);

    // A reads the old row; the write and its invalidation land meanwhile.
    let held = HeldLoad::new();
    let read = held.spawn(&a, "u1");
    held.began.notified().await;
    a.invalidate("u1").await;
    held.release.notify_one();
    assert_eq!(read.await?, "old", "a read that began first may see the old value");

    assert_eq!(a.get_or_load("u1", || load("new", &calls)).await?, "new", "A kept the old value in L1");
    // The tombstone keeps even the new value out of L2 for a while: B loads.
    assert_eq!(b.get_or_load("u1", || load("new", &calls)).await?, "new", "A's old value reached L2");
    Ok(())
}

#[tokio::test]
async fn a_read_that_raced_another_instances_invalidation_is_not_kept() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let (la, a) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    let (lb, b) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    let (lc, c) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    for layer in [&la, &lb, &lc] {
        layer.subscribed().await;
    }
    let calls = AtomicUsize::new(0);
    assert_eq!(a.get_or_load("probe", || load("before", &calls)).await?, "before");

    let held = HeldLoad::new();
    let read = held.spawn(&a, "u1");
    held.began.notified().await;
    // B writes u1, then the probe; messages arrive in order, so once A has
    // dropped the probe it has heard of u1 too.
    b.invalidate("u1").await;
    b.invalidate("probe").await;
    eventually(Duration::from_secs(5), "A to hear of B's invalidations", || async {
        Ok(a.get_or_load("probe", || load("after", &calls)).await? == "after")
    })
    .await?;
    held.release.notify_one();
    assert_eq!(read.await?, "old");

    assert_eq!(a.get_or_load("u1", || load("new", &calls)).await?, "new", "A kept the old value in L1");
    assert_eq!(c.get_or_load("u1", || load("new", &calls)).await?, "new", "A's old value reached L2");
    Ok(())
}

#[tokio::test]
async fn a_read_that_joins_a_load_from_before_an_invalidation_reads_for_itself() -> anyhow::Result<()> {
    let test_redis = TestRedis::new();
    let (layer, a) = instance(test_redis.url(), test_redis.prefix(), &Metrics::default())?;
    layer.subscribed().await;
    let calls = Arc::new(AtomicUsize::new(0));

    let held = HeldLoad::new();
    let early = held.spawn(&a, "u1");
    held.began.notified().await;
    a.invalidate("u1").await;
    // A read after the write, while the early load is still in flight: it
    // joins that load (single-flight) unless told apart.
    let late = {
        let (a, calls) = (a.clone(), calls.clone());
        tokio::spawn(async move { a.get_or_load("u1", || load("new", &calls)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.release.notify_one();
    assert_eq!(early.await?, "old");
    assert_eq!(late.await??, "new", "a read that began after the write got the value from before it");
    Ok(())
}
