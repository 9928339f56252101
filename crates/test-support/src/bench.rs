//! Printing benchmark figures beside a committed baseline.
//!
//! A bench binary collects [`Figure`]s and calls [`report`] with its
//! `baseline.json`; `TENX_BENCH_SAVE=1` rewrites the baseline. Changes
//! within [`NOISE_PERCENT`] are shown as noise (`≈`).

use std::collections::BTreeMap;
use std::time::Duration;

/// The machine's busy CPU time so far (all processes), in µs: per call,
/// it shows a change even when wall-clock figures are noisy.
pub fn busy_cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and
    // iowait, in USER_HZ (100 per second on Linux).
    let busy: u64 =
        fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy * 10_000
}

/// Run-to-run noise on a shared 2-core machine is about ±15 %.
pub const NOISE_PERCENT: f64 = 15.0;

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub value: f64,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

impl Figure {
    /// Mean microseconds per operation.
    pub fn per_op_us(elapsed: Duration, ops: usize) -> Self {
        Self { value: elapsed.as_secs_f64() * 1e6 / ops as f64, unit: "µs/op", higher_is_better: false }
    }

    /// Operations per second.
    pub fn per_second(ops: usize, elapsed: Duration) -> Self {
        Self { value: ops as f64 / elapsed.as_secs_f64(), unit: "/s", higher_is_better: true }
    }

    /// A latency in milliseconds.
    pub fn ms(latency: Duration) -> Self {
        Self { value: latency.as_secs_f64() * 1e3, unit: "ms", higher_is_better: false }
    }
}

/// The `p`-th percentile (0–100) of `samples` (sorted here).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Prints `figures` beside the baseline at `baseline_path`; rewrites it
/// when `TENX_BENCH_SAVE` is set.
pub fn report(figures: &BTreeMap<&str, Figure>, baseline_path: &str) -> anyhow::Result<()> {
    let baseline: BTreeMap<String, f64> =
        std::fs::read(baseline_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    println!("\n{:<48} {:>16} {:>16} {:>12}", "benchmark", "now", "baseline", "change");
    for (name, figure) in figures {
        let now = format!("{:.2} {}", figure.value, figure.unit);
        let (then, change) = match baseline.get(*name) {
            Some(base) => {
                let change = (figure.value - base) / base * 100.0;
                let better = if figure.higher_is_better { change >= 0.0 } else { change <= 0.0 };
                let verdict = if change.abs() < NOISE_PERCENT {
                    "≈"
                } else if better {
                    "better"
                } else {
                    "WORSE"
                };
                (format!("{base:.2} {}", figure.unit), format!("{change:+.0}% {verdict}"))
            }
            None => ("-".into(), "new".into()),
        };
        println!("{name:<48} {now:>16} {then:>16} {change:>12}");
    }
    if std::env::var_os("TENX_BENCH_SAVE").is_some() {
        let values: BTreeMap<&str, f64> =
            figures.iter().map(|(k, f)| (*k, (f.value * 100.0).round() / 100.0)).collect();
        std::fs::write(baseline_path, serde_json::to_string_pretty(&values)? + "\n")?;
        println!("\nbaseline written to {baseline_path}");
    }
    Ok(())
}

/// A profile of the whole machine (`perf record -a -g`) while it lives,
/// when `TENX_BENCH_PERF` names a directory: only the measured section,
/// without the setup around it, which otherwise fills most of a profile.
/// The file is `<dir>/<label>.perf.data`; read it with
/// `perf report -i FILE --sort comm,sym`. Without the variable it does
/// nothing.
#[derive(Debug)]
pub struct Profile {
    child: Option<std::process::Child>,
}

impl Profile {
    /// Whether this run profiles (`TENX_BENCH_PERF` is set).
    pub fn enabled() -> bool {
        std::env::var_os("TENX_BENCH_PERF").is_some()
    }

    /// Starts `perf` (and gives it a moment to attach) if asked to.
    pub fn start(label: &str) -> anyhow::Result<Self> {
        let Some(dir) = std::env::var_os("TENX_BENCH_PERF") else { return Ok(Self { child: None }) };
        let name: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect();
        let out = std::path::Path::new(&dir).join(format!("{name}.perf.data"));
        std::fs::create_dir_all(&dir)?;
        let child = std::process::Command::new("perf")
            .args(["record", "-a", "-g", "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("perf: {e} (Debian package linux-perf)"))?;
        std::thread::sleep(Duration::from_millis(300));
        eprintln!("profiling {label} into {}", out.display());
        Ok(Self { child: Some(child) })
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // INT, not KILL: perf writes its file on the way out.
            let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}
