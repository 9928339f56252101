//! Calls to the services behind the gateway: a deadline per call, a
//! circuit breaker per upstream (fail fast with 503 while it is down), and
//! one retry of idempotent calls drawn from a retry budget, so retries can
//! never multiply the load of an outage.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tenx_common::grpc::TracedChannel;
use tenx_common::metrics::{MetricSet, Metrics};
use tonic::Code;

use crate::error::EdgeError;
use crate::settings::BreakerSettings;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: &'static str,
}

#[derive(Debug, Clone, Default)]
struct UpstreamMetrics {
    open: Family<UpstreamLabel, Gauge>,
    rejected: Family<UpstreamLabel, Counter>,
    retries: Family<UpstreamLabel, Counter>,
}

impl MetricSet for UpstreamMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register("gateway_circuit_open", "1 while an upstream's circuit is open", set.open.clone());
        metrics.register(
            "gateway_circuit_rejected",
            "Calls failed fast because the upstream's circuit was open",
            set.rejected.clone(),
        );
        metrics.register("gateway_upstream_retries", "Retries of idempotent calls", set.retries.clone());
        set
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    /// A trial call is in flight after the open period.
    probing: bool,
}

/// Consecutive failures open the circuit for a while; then one trial call
/// decides whether it closes again.
#[derive(Debug)]
struct Breaker {
    settings: BreakerSettings,
    state: Mutex<BreakerState>,
    /// The state is the default one (closed, no failures, no trial): the
    /// usual case, in which a call is admitted and its success recorded
    /// without taking the lock every call would contend for.
    quiet: AtomicBool,
}

impl Breaker {
    fn new(settings: BreakerSettings) -> Self {
        Self { settings, state: Mutex::default(), quiet: AtomicBool::new(true) }
    }
}

impl Breaker {
    /// Lets a call through, or says how long the circuit stays open;
    /// `Ok(true)` when the call is the one trial after the open period.
    fn admit(&self) -> Result<bool, Duration> {
        if self.quiet.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.open_until {
            None => Ok(false),
            Some(until) if Instant::now() < until => Err(until - Instant::now()),
            Some(_) if s.probing => Err(Duration::from_secs(1)),
            Some(_) => {
                s.probing = true;
                Ok(true)
            }
        }
    }

    /// Records an outcome; returns whether the circuit is open after it.
    /// Records the outcome of a call (`probe`: the trial let through
    /// after the open period); returns whether the circuit is open after.
    /// While the circuit is open only the trial decides: a call admitted
    /// before it opened that answers late neither closes nor reopens it.
    fn record(&self, outcome: Outcome, probe: bool) -> bool {
        // Quiet, a success or a call that says nothing leaves it quiet.
        if !probe && outcome != Outcome::Unwell && self.quiet.load(Ordering::Acquire) {
            return false;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let open_for = Duration::from_secs(self.settings.open_seconds);
        match (s.open_until.is_some(), probe, outcome) {
            (true, false, _) => {}
            (true, true, Outcome::Healthy) | (false, _, Outcome::Healthy) => *s = BreakerState::default(),
            (true, true, Outcome::Unwell) => {
                s.open_until = Some(Instant::now() + open_for);
                s.probing = false;
            }
            // Says nothing about the upstream; the trial's place is free
            // for the next call.
            (true, true, Outcome::Unknown) => s.probing = false,
            (false, _, Outcome::Unwell) => {
                s.failures += 1;
                if s.failures >= self.settings.failure_threshold {
                    s.open_until = Some(Instant::now() + open_for);
                }
            }
            (false, _, Outcome::Unknown) => {}
        }
        self.quiet.store(s.failures == 0 && s.open_until.is_none() && !s.probing, Ordering::Release);
        s.open_until.is_some()
    }
}

/// What a finished call says about the upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It answered (an error it decided counts as an answer).
    Healthy,
    /// Unreachable, UNAVAILABLE, or too slow for the route's own deadline.
    Unwell,
    /// Nothing: the caller's own shorter deadline ran out, or the call was
    /// abandoned. A client in a hurry must not open the circuit for all.
    Unknown,
}

/// A call let through the breaker. Dropped without an outcome (the
/// client went away mid-call) it counts as [`Outcome::Unknown`], so a
/// cancelled trial can never leave the circuit open for good.
pub(crate) struct Admission<'a> {
    upstream: &'a Upstream,
    probe: bool,
    recorded: bool,
}

impl Admission<'_> {
    pub(crate) fn record(mut self, outcome: Outcome) -> bool {
        self.recorded = true;
        self.upstream.record_outcome(outcome, self.probe)
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.upstream.record_outcome(Outcome::Unknown, true);
        }
    }
}

/// Retries allowed: 10 to start with, then one per 10 calls.
#[derive(Debug)]
struct RetryBudget(Mutex<f64>);

impl RetryBudget {
    fn deposit(&self) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + 0.1).min(10.0);
    }

    fn withdraw(&self) -> bool {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One service behind the gateway.
#[derive(Debug)]
pub struct Upstream {
    pub name: &'static str,
    pub channel: TracedChannel,
    breaker: Breaker,
    budget: RetryBudget,
    metrics: UpstreamMetrics,
    /// This upstream's `gateway_circuit_open` gauge.
    open: Gauge,
}

/// A client-side CANCELLED is the transport's doing, not the caller's:
/// tonic's own deadline ("Timeout expired") or a connection that died
/// mid-call. Say which.
fn normalize(status: tonic::Status) -> tonic::Status {
    match status.code() {
        Code::Cancelled if status.message().contains("Timeout expired") => {
            tonic::Status::deadline_exceeded(status.message())
        }
        Code::Cancelled => tonic::Status::unavailable(format!("connection lost: {}", status.message())),
        _ => status,
    }
}

/// Whether an upstream failure says the upstream is unwell (not the
/// request): these open the circuit and may be retried. An UNAVAILABLE
/// that carries an ErrorInfo reason is a decided answer of a working
/// service about a dependency of its own (billing's `PROVIDER_ERROR` /
/// `PROVIDER_TIMEOUT`: one customer's card provider, not billing): it
/// neither opens the circuit for everyone nor is retried by the gateway.
pub(crate) fn unwell(status: &tonic::Status) -> bool {
    match status.code() {
        Code::DeadlineExceeded => true,
        Code::Unavailable => tonic_types::StatusExt::get_details_error_info(status).is_none(),
        _ => false,
    }
}

impl Upstream {
    pub fn new(
        name: &'static str,
        channel: TracedChannel,
        breaker: BreakerSettings,
        metrics: &Metrics,
    ) -> Self {
        let upstream_metrics: UpstreamMetrics = metrics.set();
        let open = upstream_metrics.open.get_or_create(&UpstreamLabel { upstream: name }).clone();
        Self {
            name,
            channel,
            breaker: Breaker::new(breaker),
            budget: RetryBudget(Mutex::new(10.0)),
            open,
            metrics: upstream_metrics,
        }
    }

    /// Whether the circuit is open now (calls fail fast), for the console.
    pub fn circuit_open(&self) -> bool {
        let state = self.breaker.state.lock().unwrap_or_else(|p| p.into_inner());
        state.open_until.is_some()
    }

    /// Fails fast while the circuit is open.
    pub(crate) fn admit_call(&self) -> Result<Admission<'_>, EdgeError> {
        match self.breaker.admit() {
            Ok(probe) => Ok(Admission { upstream: self, probe, recorded: false }),
            Err(wait) => {
                self.metrics.rejected.get_or_create(&UpstreamLabel { upstream: self.name }).inc();
                Err(EdgeError::unavailable(
                    format!("{} is unavailable (circuit open); try again shortly", self.name),
                    Some(wait),
                ))
            }
        }
    }

    fn record_outcome(&self, outcome: Outcome, probe: bool) -> bool {
        let open = self.breaker.record(outcome, probe);
        // Written only when it says something new: every call reading it
        // shares its cache line, writing it would not.
        if i64::from(open) != self.open.get() {
            self.open.set(i64::from(open));
        }
        open
    }

    /// Runs `call` within `deadline`, through the breaker; retries once
    /// when `idempotent` and the upstream was unavailable. Billing's
    /// mutations count as idempotent here because the HTTP API only sends
    /// them with their `idempotency-key`: billing answers a retry with the
    /// stored outcome, resumes the interrupted attempt, or says ABORTED
    /// while the first one still runs — the effect happens once.
    pub async fn call<T, F, Fut>(
        &self,
        idempotent: bool,
        deadline: Duration,
        call: F,
    ) -> Result<tonic::Response<T>, EdgeError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.budget.deposit();
        let label = UpstreamLabel { upstream: self.name };
        let mut retried = false;
        loop {
            let admission = self.admit_call()?;
            // The upstream enforces `grpc-timeout`; this bounds the wait
            // even when it cannot (a connection that hangs).
            let outcome = match tokio::time::timeout(deadline + Duration::from_millis(250), call()).await {
                Ok(outcome) => outcome.map_err(normalize),
                Err(_) => Err(tonic::Status::deadline_exceeded("no answer within the deadline")),
            };
            let failed = outcome.as_ref().err().is_some_and(unwell);
            let open = admission.record(if failed { Outcome::Unwell } else { Outcome::Healthy });
            match outcome {
                Ok(response) => return Ok(response),
                Err(status)
                    if idempotent
                        && !retried
                        && !open
                        && failed
                        && status.code() == Code::Unavailable
                        && self.budget.withdraw() =>
                {
                    retried = true;
                    self.metrics.retries.get_or_create(&label).inc();
                }
                Err(status) => {
                    if failed {
                        tracing::warn!(upstream = self.name, code = ?status.code(), message = status.message(), "upstream call failed");
                    }
                    return Err(status.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_threshold_and_one_trial_closes_it() {
        let breaker = Breaker::new(BreakerSettings { failure_threshold: 2, open_seconds: 0 });
        assert_eq!(breaker.admit(), Ok(false));
        assert!(!breaker.record(Outcome::Unwell, false));
        assert!(breaker.record(Outcome::Unwell, false), "open after two failures");
        // A call let in before it opened, answering late, changes nothing.
        assert!(breaker.record(Outcome::Healthy, false), "still open");
        // open_seconds = 0: the next call is the trial; others wait.
        assert_eq!(breaker.admit(), Ok(true));
        assert!(breaker.admit().is_err(), "one trial at a time");
        assert!(!breaker.record(Outcome::Healthy, true), "a successful trial closes it");
        assert_eq!(breaker.admit(), Ok(false));
        // Closed again, it counts failures from zero: a success between
        // two failures starts the count again.
        assert!(!breaker.record(Outcome::Unwell, false));
        assert!(!breaker.record(Outcome::Healthy, false));
        assert!(!breaker.record(Outcome::Unwell, false), "one failure since the success");
        assert!(breaker.record(Outcome::Unwell, false), "two in a row open it");
        assert!(breaker.admit().is_ok(), "open_seconds = 0: the trial");
    }

    #[test]
    fn callers_out_of_time_never_open_the_circuit_and_a_cancelled_trial_frees_its_place() {
        let breaker = Breaker::new(BreakerSettings { failure_threshold: 2, open_seconds: 0 });
        for _ in 0..30 {
            assert_eq!(breaker.admit(), Ok(false));
            assert!(
                !breaker.record(Outcome::Unknown, false),
                "a client's 5 ms deadline says nothing of auth"
            );
        }
        breaker.record(Outcome::Unwell, false);
        assert!(breaker.record(Outcome::Unwell, false));
        assert_eq!(breaker.admit(), Ok(true), "the trial");
        // Another call's client giving up frees no trial place.
        assert!(breaker.record(Outcome::Unknown, false));
        assert!(breaker.admit().is_err(), "the trial is still out");
        // The trial's client hangs up: Unknown (what a dropped Admission records).
        assert!(breaker.record(Outcome::Unknown, true), "still open: nothing was learnt");
        assert_eq!(breaker.admit(), Ok(true), "the next call is the new trial, not refused for good");
    }

    #[test]
    fn a_provider_failure_reported_by_a_working_service_does_not_count_against_it() {
        assert!(unwell(&tonic::Status::unavailable("database unavailable")));
        assert!(unwell(&tonic::Status::deadline_exceeded("slow")));
        let provider = <tonic::Status as tonic_types::StatusExt>::with_error_details(
            Code::Unavailable,
            "the payment provider failed",
            tonic_types::ErrorDetails::with_error_info(
                "PROVIDER_ERROR",
                "billing.tenx",
                std::collections::HashMap::<String, String>::new(),
            ),
        );
        assert!(!unwell(&provider), "one card's provider error must not open billing's circuit");
        // Billing unable to check a credential (auth or Redis trouble) is
        // not billing being down.
        let authn = tonic::Status::from(tenx_common::authn::AuthnError::Unavailable("auth is slow".into()));
        assert_eq!(authn.code(), Code::Unavailable);
        assert!(!unwell(&authn), "auth's trouble must not open billing's circuit");
        assert!(!unwell(&tonic::Status::failed_precondition("no")));
    }
}
