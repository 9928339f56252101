//! Driving a scenario: closed loop (N calls in flight, each sent when the
//! last returns) or open loop (a fixed arrival rate, each call's latency
//! counted from when it was *due*, so a stall shows as the queue behind
//! it, not as a pause in sending — the coordinated omission a closed loop
//! hides). Every run stops by itself: at its duration or its request cap.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `in_flight` calls at all times.
    Closed { in_flight: usize },
    /// `rate` calls per second whatever the answers do; at most
    /// `max_in_flight` outstanding (the rest wait, and their wait counts).
    Open { rate: f64, max_in_flight: usize },
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Closed { in_flight } => write!(f, "closed loop, {in_flight} in flight"),
            Mode::Open { rate, .. } => write!(f, "open loop, {rate}/s"),
        }
    }
}

/// One run's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub mode: Mode,
    pub duration: Duration,
    /// The run also stops after this many requests.
    pub max_requests: u64,
}

/// Latencies are recorded in microseconds, 1 µs to 60 s, 3 significant
/// digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One second of a run.
#[derive(Debug, Clone)]
pub struct Second {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// Everything a run observed.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    /// Each distinct error message (trimmed) and how often it came.
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    /// Indexed by the second (from the start) the call completed in.
    pub seconds: Vec<Second>,
    pub elapsed: Duration,
}

impl Recorded {
    fn new() -> Self {
        Self {
            latency: histogram(),
            ok: 0,
            errors: 0,
            error_kinds: Default::default(),
            seconds: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn record(&mut self, since_start: Duration, latency: Duration, outcome: Result<(), String>) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        let second = since_start.as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push(Second { ok: 0, errors: 0, latency: histogram() });
        }
        let slot = &mut self.seconds[second];
        self.latency.saturating_record(micros);
        slot.latency.saturating_record(micros);
        match outcome {
            Ok(()) => {
                self.ok += 1;
                slot.ok += 1;
            }
            Err(error) => {
                self.errors += 1;
                slot.errors += 1;
                let kind: String = error.chars().take(120).collect();
                *self.error_kinds.entry(kind).or_default() += 1;
            }
        }
    }
}

/// Runs `call(n)` for n = 0, 1, … under `plan`, with a live progress bar
/// on a terminal (rate, errors, p99). `call` returns `Err` with what was
/// wrong when an answer is not the right one.
pub async fn run<F, Fut>(plan: Plan, label: &str, call: F) -> Recorded
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let call = Arc::new(call);
    let recorded = Arc::new(Mutex::new(Recorded::new()));
    let started = Instant::now();
    let deadline = started + plan.duration;
    let progress = Progress::start(label, plan.duration, recorded.clone(), started);
    match plan.mode {
        Mode::Closed { in_flight } => {
            // The next request's number, shared by the workers.
            let next = Arc::new(AtomicU64::new(0));
            let workers: Vec<_> = (0..in_flight.max(1))
                .map(|_| {
                    let (call, recorded, next) = (call.clone(), recorded.clone(), next.clone());
                    tokio::spawn(async move {
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= plan.max_requests || Instant::now() >= deadline {
                                break;
                            }
                            let sent = Instant::now();
                            let outcome = call(n).await;
                            let done = Instant::now();
                            lock(&recorded).record(done - started, done - sent, outcome);
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.await;
            }
        }
        Mode::Open { rate, max_in_flight } => {
            let permits = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..plan.max_requests {
                let due = started + interval.mul_f64(n as f64);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let (call, recorded, permits) = (call.clone(), recorded.clone(), permits.clone());
                tasks.spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else { return };
                    let outcome = call(n).await;
                    let done = Instant::now();
                    // From when it was due: waiting for a permit counts.
                    lock(&recorded).record(done - started, done - due, outcome);
                });
                // Finished tasks are reaped as we go, so a long run holds
                // only the calls still out.
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    progress.finish();
    let mut recorded = lock(&recorded).clone();
    recorded.elapsed = started.elapsed();
    recorded
}

fn lock(recorded: &Mutex<Recorded>) -> std::sync::MutexGuard<'_, Recorded> {
    recorded.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live line: elapsed of planned, requests, rate over the last
/// second, errors and p99 so far. Hidden when stderr is not a terminal.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(label: &str, duration: Duration, recorded: Arc<Mutex<Recorded>>, started: Instant) -> Self {
        let bar = ProgressBar::new(duration.as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let (done, errors, p99) = {
                    let r = lock(&recorded);
                    (r.ok + r.errors, r.errors, r.latency.value_at_quantile(0.99))
                };
                let now = Instant::now();
                let rate = (done - last.0) as f64 / (now - last.1).as_secs_f64();
                last = (done, now);
                ticking.set_position(started.elapsed().as_millis() as u64);
                ticking.set_message(format!(
                    "{done} requests, {rate:.0}/s, {errors} errors, p99 {:.2} ms",
                    p99 as f64 / 1e3
                ));
            }
        });
        Self { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
