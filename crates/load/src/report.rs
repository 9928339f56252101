//! What a run found, as a table for people and JSON for machines.

use serde::Serialize;

use crate::engine::Recorded;

/// The percentiles of the summary and the JSON.
const QUANTILES: [(&str, f64); 5] =
    [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)];

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub mode: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Answered requests per second.
    pub rate: f64,
    /// Milliseconds, by name (`p50` … `max`).
    pub latency_ms: std::collections::BTreeMap<String, f64>,
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    /// Per second of the run: answers, errors, p50 and p99 (ms).
    pub timeline: Vec<Tick>,
    /// The percentile spectrum: (percentile, ms), for the plot.
    pub spectrum: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    pub second: usize,
    /// How much of this second the run covered (less than 1 for the last).
    pub span_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1e3
}

impl Report {
    pub fn new(scenario: &str, target: &str, mode: &str, recorded: &Recorded) -> Self {
        let h = &recorded.latency;
        let latency_ms = QUANTILES
            .iter()
            .map(|(name, q)| {
                (name.to_string(), if *q >= 1.0 { ms(h.max()) } else { ms(h.value_at_quantile(*q)) })
            })
            .collect();
        let timeline = recorded
            .seconds
            .iter()
            .enumerate()
            .map(|(second, s)| Tick {
                second,
                span_s: (recorded.elapsed.as_secs_f64() - second as f64).clamp(0.001, 1.0),
                ok: s.ok,
                errors: s.errors,
                p50_ms: ms(s.latency.value_at_quantile(0.5)),
                p99_ms: ms(s.latency.value_at_quantile(0.99)),
            })
            .collect();
        // 0, 90, 99, 99.9, … by tenths of a nine, up to what was seen.
        let mut spectrum = Vec::new();
        if !h.is_empty() {
            let mut nines = 0.0_f64;
            while nines <= 5.0 {
                let q = 1.0 - 10f64.powf(-nines);
                spectrum.push((q * 100.0, ms(h.value_at_quantile(q))));
                if (h.len() as f64) * (1.0 - q) < 1.0 {
                    break;
                }
                nines += 0.1;
            }
        }
        let requests = recorded.ok + recorded.errors;
        let seconds = recorded.elapsed.as_secs_f64();
        Self {
            scenario: scenario.into(),
            target: target.into(),
            mode: mode.into(),
            requests,
            errors: recorded.errors,
            seconds,
            rate: if seconds > 0.0 { recorded.ok as f64 / seconds } else { 0.0 },
            latency_ms,
            error_kinds: recorded.error_kinds.clone(),
            timeline,
            spectrum,
        }
    }

    fn latency(&self, name: &str) -> f64 {
        self.latency_ms.get(name).copied().unwrap_or_default()
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} → {} ({})\n  requests {:>10}   errors {:>8}   {:.1} s   {:.0}/s\n  latency  ",
            self.scenario, self.target, self.mode, self.requests, self.errors, self.seconds, self.rate
        );
        for (name, _) in QUANTILES {
            out.push_str(&format!("{name} {:.2} ms   ", self.latency(name)));
        }
        out.push('\n');
        for (kind, n) in &self.error_kinds {
            out.push_str(&format!("  {n} × {kind}\n"));
        }
        out
    }

    /// `b ÷ a` for rate and each percentile: how much the second target
    /// costs over the first.
    pub fn ratios(a: &Report, b: &Report) -> String {
        let ratio = |x: f64, y: f64| if x > 0.0 { y / x } else { f64::NAN };
        let mut out = format!("{} ÷ {}\n  rate {:.2}×\n", b.target, a.target, ratio(a.rate, b.rate));
        for (name, _) in QUANTILES {
            out.push_str(&format!("  {name} {:.2}×\n", ratio(a.latency(name), b.latency(name))));
        }
        out
    }
}
