//! Cluster-wide rate limits: GCRA (the generic cell rate algorithm) kept in
//! Redis, so every gateway instance draws from the same allowance — but
//! not one Redis call per busy caller's request. An instance *leases*
//! tokens from the shared allowance in batches (one script call takes up
//! to [`lease_size`] tokens) and spends them in process memory; when a
//! lease runs half empty it is topped up in the background, so a busy
//! caller's requests rarely wait on Redis. A key seen for the first time
//! in a while takes one token (one call per request, nothing to give
//! back); only one asked for again while its last grant is fresh leases.
//! Refusals are remembered until their `Retry-After`. Leased tokens are
//! spent within [`LEASE_TTL`] of the last grant; the unspent ones go back.
//!
//! What that costs in precision, with N instances: never more admitted
//! than GCRA allows (every token came from Redis, and what goes back is
//! discounted by the time it was held — see [`Lease::give_back`]), shifted
//! by the time tokens are held; a caller can be refused early by the
//! unspent tokens other instances hold — at most about N × 1.5 ×
//! `lease_size` — until they go back, within about two seconds. Limits
//! under 64 requests per period lease one token at a time, i.e. stay exact.
//!
//! When Redis cannot answer, an in-process limiter with the same algorithm
//! takes over: per-instance, so looser, but never open — and counted and
//! logged, so the fallback is visible.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tenx_common::cache::Redis;
use tenx_common::metrics::{MetricSet, Metrics};

use crate::settings::RoutePolicy;

/// How long leased tokens may be spent after the last grant.
pub const LEASE_TTL: Duration = Duration::from_secs(1);
/// The most tokens one lease takes.
const MAX_LEASE: u32 = 64;
/// The most keys an instance keeps leases for; past it, new keys are
/// checked one token at a time (exact, one Redis call each).
const MAX_KEYS: usize = 100_000;
/// How long a lease request counts as outstanding (a request cancelled
/// half-way leaves its mark; after this, another may ask).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Unspent tokens of this many keys go back in one pipeline.
const RETURN_BATCH: usize = 500;

/// How many tokens an instance leases at once for `policy`: a 32nd of the
/// allowance (one for limits under 64, which therefore stay exact), at
/// most [`MAX_LEASE`].
pub fn lease_size(policy: RoutePolicy) -> u32 {
    (policy.requests / 32).clamp(1, MAX_LEASE)
}

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

impl Decision {
    /// A refusal: nothing remains until `retry_after`.
    fn refused(limit: u32, retry_after: Duration, reset_after: Duration) -> Self {
        Self { allowed: false, limit, remaining: 0, retry_after, reset_after }
    }
}

/// GCRA over microseconds, with Redis's clock, taking up to `want`
/// requests' worth of the allowance at once after giving back `returned`
/// microseconds of it. `ARGV`: emission interval (µs), burst, want,
/// returned (µs). Returns `{granted, remaining, retry_after_us,
/// reset_after_us}`; `granted = 0` is a refusal (or, with `want = 0`, a
/// pure return). A bucket that the return fills again is deleted.
const SCRIPT: &str = r"
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local returned = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') - returned
if tat < now then tat = now end
local fit = math.floor((now + emission * burst - tat) / emission)
local granted = math.min(want, fit)
if granted < 1 then
  if returned > 0 then
    if tat > now then
      redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
    else
      redis.call('DEL', KEYS[1])
    end
  end
  return {0, 0, tat + emission - emission * burst - now, tat - now}
end
local new_tat = tat + granted * emission
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return {granted, fit - granted, 0, new_tat - now}
";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabel {
    store: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LeaseLabel {
    kind: &'static str,
}

#[derive(Clone, Default)]
struct LimitMetrics {
    decisions: Family<DecisionLabel, Counter>,
    leases: Family<LeaseLabel, Counter>,
}

impl MetricSet for LimitMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register(
            "gateway_ratelimit_decisions",
            "Rate-limit checks by store (lease: from tokens this instance holds; redis: asked Redis; \
             local: Redis cannot answer) and outcome",
            set.decisions.clone(),
        );
        metrics.register(
            "gateway_ratelimit_redis_calls",
            "Calls to the shared allowance in Redis by kind (take: a request waited for it; top_up: \
             in the background; return: unspent tokens given back)",
            set.leases.clone(),
        );
        set
    }
}

/// What this instance knows and holds of one key's allowance.
#[derive(Debug)]
struct Lease {
    tokens: u32,
    /// The shared allowance Redis had left at the last grant.
    pool: u32,
    reset_at: Instant,
    /// Until when the tokens held may be spent.
    expires: Instant,
    /// Since when tokens have been held without running out.
    held_since: Instant,
    /// A request for a full lease (a request's own or a top-up) is
    /// outstanding until then; meanwhile others ask for one token.
    asking_until: Option<Instant>,
    /// Redis refused: every request is refused until then.
    refused_until: Option<Instant>,
    /// The key's policy (fixed for the process's life: settings are read
    /// at start), for giving tokens back.
    emission: i64,
    burst: u32,
}

impl Lease {
    fn new(now: Instant, emission: i64, burst: u32) -> Self {
        Self {
            tokens: 0,
            pool: 0,
            reset_at: now,
            expires: now + LEASE_TTL,
            held_since: now,
            asking_until: None,
            refused_until: None,
            emission,
            burst,
        }
    }

    fn asking(&self, now: Instant) -> bool {
        self.asking_until.is_some_and(|at| at > now)
    }

    /// Takes the unspent tokens out of the lease; returns the allowance
    /// (µs) they may give back: their emission intervals less the time
    /// they were held. While this instance held them, the bucket may have
    /// been full without them and thrown refill away; crediting them whole
    /// would count that refill twice and could admit more than GCRA allows.
    fn give_back(&mut self, now: Instant) -> i64 {
        let tokens = std::mem::take(&mut self.tokens);
        let held =
            i64::try_from(now.saturating_duration_since(self.held_since).as_micros()).unwrap_or(i64::MAX);
        i64::from(tokens).saturating_mul(self.emission).saturating_sub(held).max(0)
    }

    /// Adds `granted` tokens from a reply of the script.
    fn add(&mut self, now: Instant, granted: u32, reply: &[i64]) {
        if self.tokens == 0 {
            self.held_since = now;
        }
        self.tokens += granted;
        self.pool = u32::try_from(reply[1]).unwrap_or(0);
        self.expires = now + LEASE_TTL;
        self.reset_at = now + micros(reply[3]);
        self.refused_until = None;
    }

    fn allowed(&self, now: Instant, policy: RoutePolicy) -> Decision {
        Decision {
            allowed: true,
            limit: policy.requests,
            remaining: self.pool.saturating_add(self.tokens).min(policy.requests),
            retry_after: Duration::ZERO,
            reset_after: until(self.reset_at, now),
        }
    }
}

/// What a check does after looking at this instance's lease.
enum Take {
    Spent(Decision, bool),
    Refused(Decision),
    /// Ask Redis for `want` tokens, giving back `returned_us` of allowance;
    /// `leader`: this request marked the lease as being asked for.
    Ask {
        want: u32,
        returned_us: i64,
        leader: bool,
    },
}

/// The limiter every door shares; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    /// The decisions counted on every call spent from a lease, resolved
    /// once (no label lookup per call).
    lease_allowed: Counter,
    lease_limited: Counter,
    /// The script's SHA once Redis has it (`SCRIPT LOAD`).
    sha: Mutex<Option<String>>,
    leases: Mutex<HashMap<String, Lease>>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn until(at: Instant, now: Instant) -> Duration {
    at.saturating_duration_since(now)
}

impl RateLimiter {
    /// A limiter on `redis`; inside a Tokio runtime it also starts the task
    /// that gives expired leases' unspent tokens back.
    pub fn new(redis: Redis, metrics: &Metrics) -> Self {
        let metrics: LimitMetrics = metrics.set();
        let decided =
            |outcome| metrics.decisions.get_or_create(&DecisionLabel { store: "lease", outcome }).clone();
        let inner = Arc::new(Inner {
            redis,
            lease_allowed: decided("allowed"),
            lease_limited: decided("limited"),
            sha: Mutex::new(None),
            leases: Mutex::new(HashMap::new()),
            local: Mutex::new(Local::default()),
            metrics,
            warned: Mutex::new(None),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// Counts one request of `subject`, given in two parts (`["ip:",
    /// "10.0.0.1"]`, `["user:", id]`), on route `op`.
    pub async fn check(&self, op: &str, subject: [&str; 2], policy: RoutePolicy) -> Decision {
        let inner = &self.inner;
        // The key is joined on the stack: a call spent from the lease
        // allocates nothing for it.
        let parts = [inner.redis.prefix(), "rl:", op, ":", subject[0], subject[1]];
        let mut buffer = [0u8; 256];
        let key = tenx_common::joined::joined_or_owned(&mut buffer, &parts);
        let key = &*key;
        let emission = emission_us(policy);
        let (store, decision) = match inner.take(key, policy, emission) {
            Take::Spent(decision, top_up) => {
                if top_up {
                    self.top_up(key.to_owned(), policy, emission);
                }
                inner.spent(&decision);
                return decision;
            }
            Take::Refused(decision) => {
                inner.spent(&decision);
                return decision;
            }
            Take::Ask { want, returned_us, leader } => {
                inner.metrics.leases.get_or_create(&LeaseLabel { kind: "take" }).inc();
                let asked = inner.gcra(key, emission, policy.requests, want, returned_us);
                match inner.redis.bounded(asked).await {
                    Ok(reply) if reply.len() == 4 => {
                        ("redis", inner.granted(key, policy, emission, &reply, leader))
                    }
                    other => {
                        // What was given back with the request is lost:
                        // fewer admitted, never more.
                        if leader && let Some(lease) = lock(&inner.leases).get_mut(key) {
                            lease.asking_until = None;
                        }
                        inner.warn_fallback(
                            &other.err().map(|e| format!("{:?}", e.kind())).unwrap_or_default(),
                        );
                        ("local", lock(&inner.local).check(key, emission, policy))
                    }
                }
            }
        };
        let outcome = if decision.allowed { "allowed" } else { "limited" };
        inner.metrics.decisions.get_or_create(&DecisionLabel { store, outcome }).inc();
        decision
    }

    /// Leases more tokens for `key` without holding up the request that
    /// found its lease half spent.
    fn top_up(&self, key: String, policy: RoutePolicy, emission: i64) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.metrics.leases.get_or_create(&LeaseLabel { kind: "top_up" }).inc();
            let want = lease_size(policy);
            let reply = inner.redis.bounded(inner.gcra(&key, emission, policy.requests, want, 0)).await;
            let now = Instant::now();
            let mut leases = lock(&inner.leases);
            let Some(lease) = leases.get_mut(&key) else { return };
            lease.asking_until = None;
            // Refused or failed: the lease runs out and the next request
            // asks Redis itself.
            if let Ok(reply) = reply
                && reply.len() == 4
                && reply[0] > 0
            {
                lease.add(now, u32::try_from(reply[0]).unwrap_or(0), &reply);
            }
        });
    }
}

impl Inner {
    /// Counts a decision taken from this instance's lease.
    fn spent(&self, decision: &Decision) {
        if decision.allowed { &self.lease_allowed } else { &self.lease_limited }.inc();
    }

    /// Spends a token of this instance's lease for `key`, or says what to
    /// ask Redis for.
    fn take(&self, key: &str, policy: RoutePolicy, emission: i64) -> Take {
        let now = Instant::now();
        let size = lease_size(policy);
        let mut leases = lock(&self.leases);
        let Some(lease) = leases.get_mut(key) else {
            // Not seen lately: one token, nothing to give back later.
            if leases.len() < MAX_KEYS {
                leases.insert(key.to_owned(), Lease::new(now, emission, policy.requests));
            }
            return Take::Ask { want: 1, returned_us: 0, leader: false };
        };
        if lease.expires > now && lease.tokens > 0 {
            lease.tokens -= 1;
            let top_up = size > 1 && lease.tokens <= size / 2 && !lease.asking(now);
            if top_up {
                lease.asking_until = Some(now + ASK_TIMEOUT);
            }
            return Take::Spent(lease.allowed(now, policy), top_up);
        }
        if let Some(refused_until) = lease.refused_until.filter(|at| *at > now) {
            return Take::Refused(Decision::refused(
                policy.requests,
                until(refused_until, now),
                until(lease.reset_at, now),
            ));
        }
        // Expired tokens go back with the request for new ones. A key
        // asked for again is busy: it leases — one request at a time; the
        // others meanwhile take one token each.
        let returned_us = if lease.tokens > 0 { lease.give_back(now) } else { 0 };
        let leader = !lease.asking(now);
        if leader {
            lease.asking_until = Some(now + ASK_TIMEOUT);
        }
        Take::Ask { want: if leader { size } else { 1 }, returned_us, leader }
    }

    /// Records what Redis granted for `key` and spends one token of it.
    fn granted(
        &self,
        key: &str,
        policy: RoutePolicy,
        emission: i64,
        reply: &[i64],
        leader: bool,
    ) -> Decision {
        let now = Instant::now();
        let granted = u32::try_from(reply[0]).unwrap_or(0);
        let mut leases = lock(&self.leases);
        if !leases.contains_key(key) && leases.len() < MAX_KEYS {
            leases.insert(key.to_owned(), Lease::new(now, emission, policy.requests));
        }
        let mut unkept = Lease::new(now, emission, policy.requests);
        let lease = leases.get_mut(key).unwrap_or(&mut unkept);
        if leader {
            lease.asking_until = None;
        }
        if granted == 0 {
            let retry_after = micros(reply[2]);
            lease.refused_until = Some(now + retry_after);
            lease.reset_at = now + micros(reply[3]);
            return Decision::refused(policy.requests, retry_after, micros(reply[3]));
        }
        lease.add(now, granted - 1, reply);
        lease.allowed(now, policy)
    }

    /// Runs the script by its SHA (Redis keeps it compiled; the request is
    /// a few bytes, not the script), loading it first when Redis does not
    /// know it (the first call, or after Redis restarted).
    async fn gcra(
        &self,
        key: &str,
        emission: i64,
        burst: u32,
        want: u32,
        returned_us: i64,
    ) -> redis::RedisResult<Vec<i64>> {
        let mut conn = self.redis.connection();
        let run = |sha: &str| script_call(sha, key, emission, burst, want, returned_us);
        let known = lock(&self.sha).clone();
        if let Some(sha) = known {
            match run(&sha).query_async::<Vec<i64>>(&mut conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {}
                other => return other,
            }
        }
        let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut conn).await?;
        *lock(&self.sha) = Some(sha.clone());
        run(&sha).query_async(&mut conn).await
    }

    /// Gives `unspent` (key, emission, burst, µs) back, in pipelines.
    async fn give_back(&self, unspent: Vec<(String, i64, u32, i64)>) {
        let Some(sha) = lock(&self.sha).clone() else { return };
        for batch in unspent.chunks(RETURN_BATCH) {
            let mut pipe = redis::pipe();
            for (key, emission, burst, returned_us) in batch {
                pipe.add_command(script_call(&sha, key, *emission, *burst, 0, *returned_us)).ignore();
            }
            self.metrics.leases.get_or_create(&LeaseLabel { kind: "return" }).inc_by(batch.len() as u64);
            let mut conn = self.redis.connection();
            if let Err(error) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(kind = ?error.kind(), "could not give unspent rate-limit tokens back");
            }
        }
    }

    fn warn_fallback(&self, reason: &str) {
        let mut warned = lock(&self.warned);
        if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            *warned = Some(Instant::now());
            tracing::warn!(reason, "rate limits: Redis cannot answer; using this instance's local limiter");
        }
    }
}

/// Every [`LEASE_TTL`], forgets the leases that expired and gives their
/// unspent tokens back to Redis, so other instances can use them; ends
/// with the limiter.
async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(LEASE_TTL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let mut unspent = Vec::new();
        lock(&inner.leases).retain(|key, lease| {
            let idle =
                lease.expires <= now && !lease.asking(now) && lease.refused_until.is_none_or(|at| at <= now);
            if idle && lease.tokens > 0 {
                let (emission, burst) = (lease.emission, lease.burst);
                let returned_us = lease.give_back(now);
                if returned_us > 0 {
                    unspent.push((key.clone(), emission, burst, returned_us));
                }
            }
            !idle
        });
        inner.give_back(unspent).await;
    }
}

/// One call of [`SCRIPT`] by its SHA (see there for the arguments).
fn script_call(sha: &str, key: &str, emission: i64, burst: u32, want: u32, returned_us: i64) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(1).arg(key).arg(emission).arg(burst).arg(want).arg(returned_us);
    cmd
}

fn micros(v: i64) -> Duration {
    Duration::from_micros(u64::try_from(v).unwrap_or(0))
}

fn emission_us(policy: RoutePolicy) -> i64 {
    let period = i64::try_from(policy.period.as_micros()).unwrap_or(i64::MAX);
    (period / i64::from(policy.requests.max(1))).max(1)
}

fn decision(limit: u32, reply: &[i64]) -> Decision {
    Decision {
        allowed: reply[0] == 1,
        limit,
        remaining: u32::try_from(reply[1]).unwrap_or(0).min(limit),
        retry_after: micros(reply[2]),
        reset_after: micros(reply[3]),
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
    fn unspent_tokens_give_back_their_intervals_less_the_time_they_were_held() {
        let leased = Instant::now();
        let mut lease = Lease::new(leased, 1_000_000, 600);
        lease.add(leased, 9, &[10, 500, 0, 10_000_000]);
        assert_eq!(
            lease.give_back(leased + Duration::from_secs(2)),
            7_000_000,
            "9 s of allowance less 2 s held"
        );
        assert_eq!(lease.tokens, 0, "taken out of the lease");
        lease.add(leased, 3, &[3, 500, 0, 3_000_000]);
        assert_eq!(lease.give_back(leased + Duration::from_secs(5)), 0, "held longer than they are worth");
    }

    #[test]
    fn leases_are_a_32nd_of_the_limit_and_small_limits_take_one_token() {
        let policy = |requests| RoutePolicy {
            requests,
            period: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(lease_size(policy(63)), 1);
        assert_eq!(lease_size(policy(600)), 18);
        assert_eq!(lease_size(policy(1_000_000)), MAX_LEASE);
    }

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
