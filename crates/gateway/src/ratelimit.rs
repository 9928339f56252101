//! Cluster-wide rate limits: GCRA (the generic cell rate algorithm) in one
//! Redis script, so every gateway instance draws from the same allowance.
//! When Redis cannot answer, an in-process limiter with the same algorithm
//! takes over: per-instance, so looser, but never open — and counted and
//! logged, so the fallback is visible.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tenx_common::cache::Redis;
use tenx_common::metrics::{MetricSet, Metrics};

use crate::settings::RoutePolicy;

/// The outcome of one check, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// When the next request may pass (zero when allowed).
    pub retry_after: Duration,
    /// When the allowance is full again.
    pub reset_after: Duration,
}

/// GCRA over microseconds, with Redis's clock. Returns
/// `{allowed, remaining, retry_after_us, reset_after_us}`.
const SCRIPT: &str = r"
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - emission * burst
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return {1, math.floor((now - allow_at) / emission), 0, new_tat - now}
";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabel {
    store: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Default)]
struct LimitMetrics {
    decisions: Family<DecisionLabel, Counter>,
}

impl MetricSet for LimitMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register(
            "gateway_ratelimit_decisions",
            "Rate-limit checks by store (redis, or local when Redis cannot answer) and outcome",
            set.decisions.clone(),
        );
        set
    }
}

pub struct RateLimiter {
    redis: Redis,
    /// The script's SHA once Redis has it (`SCRIPT LOAD`).
    sha: Mutex<Option<String>>,
    local: Mutex<Local>,
    metrics: LimitMetrics,
    /// Throttles the fallback warning to one per 10 s.
    warned: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(redis: Redis, metrics: &Metrics) -> Self {
        Self {
            redis,
            sha: Mutex::new(None),
            local: Mutex::new(Local::default()),
            metrics: metrics.set(),
            warned: Mutex::new(None),
        }
    }

    /// Counts one request of `subject` (e.g. `ip:10.0.0.1`) on route `op`.
    pub async fn check(&self, op: &str, subject: &str, policy: RoutePolicy) -> Decision {
        let emission = emission_us(policy);
        let key = self.redis.key(&format!("rl:{op}:{subject}"));
        let (store, decision) = match self.redis.bounded(self.gcra(&key, emission, policy.requests)).await {
            Ok(reply) if reply.len() == 4 => ("redis", decision(policy.requests, &reply)),
            other => {
                self.warn_fallback(&other.err().map(|e| format!("{:?}", e.kind())).unwrap_or_default());
                let decision =
                    self.local.lock().unwrap_or_else(|p| p.into_inner()).check(&key, emission, policy);
                ("local", decision)
            }
        };
        let outcome = if decision.allowed { "allowed" } else { "limited" };
        self.metrics.decisions.get_or_create(&DecisionLabel { store, outcome }).inc();
        decision
    }

    /// Runs the script by its SHA (Redis keeps it compiled; the request is
    /// a few bytes, not the script), loading it first when Redis does not
    /// know it (the first call, or after Redis restarted).
    async fn gcra(&self, key: &str, emission: i64, requests: u32) -> redis::RedisResult<Vec<i64>> {
        let mut conn = self.redis.connection();
        let known = self.sha.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(sha) = known {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&sha).arg(1).arg(key).arg(emission).arg(requests);
            match cmd.query_async::<Vec<i64>>(&mut conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {}
                other => return other,
            }
        }
        let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut conn).await?;
        *self.sha.lock().unwrap_or_else(|p| p.into_inner()) = Some(sha.clone());
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&sha).arg(1).arg(key).arg(emission).arg(requests);
        cmd.query_async(&mut conn).await
    }

    fn warn_fallback(&self, reason: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            *warned = Some(Instant::now());
            tracing::warn!(reason, "rate limits: Redis cannot answer; using this instance's local limiter");
        }
    }
}

fn emission_us(policy: RoutePolicy) -> i64 {
    let period = i64::try_from(policy.period.as_micros()).unwrap_or(i64::MAX);
    (period / i64::from(policy.requests.max(1))).max(1)
}

fn decision(limit: u32, reply: &[i64]) -> Decision {
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    Decision {
        allowed: reply[0] == 1,
        limit,
        remaining: u32::try_from(reply[1]).unwrap_or(0).min(limit),
        retry_after: us(reply[2]),
        reset_after: us(reply[3]),
    }
}

/// The same GCRA in process memory, on the monotonic clock.
#[derive(Default)]
struct Local {
    started: Option<Instant>,
    tat: HashMap<String, i64>,
}

impl Local {
    fn check(&mut self, key: &str, emission: i64, policy: RoutePolicy) -> Decision {
        let started = *self.started.get_or_insert_with(Instant::now);
        let now = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
        if self.tat.len() > 100_000 {
            self.tat.retain(|_, tat| *tat > now);
        }
        let burst = i64::from(policy.requests);
        let tat = self.tat.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + emission;
        let allow_at = new_tat - emission * burst;
        if now < allow_at {
            return decision(policy.requests, &[0, 0, allow_at - now, tat - now]);
        }
        self.tat.insert(key.to_owned(), new_tat);
        decision(policy.requests, &[1, (now - allow_at) / emission, 0, new_tat - now])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_limiter_allows_the_burst_then_one_per_emission_interval() {
        let policy =
            RoutePolicy { requests: 3, period: Duration::from_secs(60), timeout: Duration::from_secs(1) };
        let mut local = Local::default();
        let emission = emission_us(policy);
        let seen: Vec<(bool, u32)> =
            (0..4).map(|_| local.check("k", emission, policy)).map(|d| (d.allowed, d.remaining)).collect();
        assert_eq!(seen, vec![(true, 2), (true, 1), (true, 0), (false, 0)]);
        let limited = local.check("k", emission, policy);
        assert!(
            limited.retry_after > Duration::from_secs(19) && limited.retry_after <= Duration::from_secs(20)
        );
        assert!(local.check("other", emission, policy).allowed, "keys are independent");
    }
}
