//! Printing benchmark figures beside a committed baseline.
//!
//! A bench binary collects [`Figure`]s and calls [`report`] with its
//! `baseline.json`; `TENX_BENCH_SAVE=1` rewrites the baseline. Changes
//! within [`NOISE_PERCENT`] are shown as noise (`≈`).

use std::collections::BTreeMap;
use std::time::Duration;

/// µs in one tick of `/proc`'s CPU times (USER_HZ, 100 a second on Linux).
const MICROS_PER_TICK: u64 = 10_000;

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
    // iowait, in ticks.
    let busy: u64 =
        fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy * MICROS_PER_TICK
}

/// Where the machine's busy CPU went between [`CpuByProcess::start`] and
/// [`CpuByProcess::split`], by kind of process (Postgres's connections,
/// its replication, the broker, this process…), read from
/// `/proc/<pid>/stat`: a figure from [`busy_cpu_us`] says how much, this
/// says whose. A process that starts and ends in between is missed; one
/// that starts in between counts whole.
#[derive(Debug)]
pub struct CpuByProcess {
    start: std::collections::HashMap<u32, u64>,
}

impl CpuByProcess {
    pub fn start() -> Self {
        Self { start: processes().into_iter().map(|(pid, (_, ticks))| (pid, ticks)).collect() }
    }

    /// µs of CPU (user + system) per kind of process since the start,
    /// most first.
    pub fn split(&self) -> Vec<(String, u64)> {
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for (pid, (kind, ticks)) in processes() {
            let before = self.start.get(&pid).copied().unwrap_or(0);
            *by_kind.entry(kind).or_default() += ticks.saturating_sub(before) * MICROS_PER_TICK;
        }
        let mut split: Vec<_> = by_kind.into_iter().filter(|(_, us)| *us > 0).collect();
        split.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        split
    }

    /// [`CpuByProcess::split`] per operation, in ms, on one line:
    /// `postgres connections 2.94 ms, this process 0.68 ms, …, other
    /// 0.05 ms` (kinds under 2 % of the whole, kernel threads among
    /// them, are summed as `other`).
    pub fn per_op_line(&self, ops: usize) -> String {
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1e3 / ops.max(1) as f64);
        let split = self.split();
        let total: u64 = split.iter().map(|(_, us)| us).sum();
        let (shown, rest): (Vec<_>, Vec<_>) = split.into_iter().partition(|(_, us)| us * 50 >= total);
        let mut parts: Vec<String> = shown.iter().map(|(kind, us)| format!("{kind} {}", ms(*us))).collect();
        let other: u64 = rest.iter().map(|(_, us)| us).sum();
        if other > 0 {
            parts.push(format!("other {}", ms(other)));
        }
        parts.join(", ")
    }
}

/// Every process's kind and busy time so far, in ticks.
fn processes() -> std::collections::HashMap<u32, (String, u64)> {
    let me = std::process::id();
    let mut found = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // Gone meanwhile: nothing to count.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state …`: the name may hold spaces and parentheses,
        // so the fields are counted from its last `)`; utime and stime
        // are the 14th and 15th.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let kind = if pid == me { "this process".to_owned() } else { kind(&stat[open + 1..close], &cmdline) };
        found.insert(pid, (kind, field(11) + field(12)));
    }
    found
}

/// A process's kind: Postgres's by the role its title shows
/// (`postgres: 15/main: walsender …` on Debian, `postgres: walsender …`
/// without a cluster name), any other by its command name.
fn kind(comm: &str, cmdline: &str) -> String {
    const REPLICATION: [&str; 3] = ["walsender", "walreceiver", "startup"];
    const SERVER: [&str; 7] =
        ["checkpointer", "background", "walwriter", "autovacuum", "logical", "archiver", "stats"];
    let Some(title) = cmdline.strip_prefix("postgres: ") else { return comm.to_owned() };
    let role: Vec<&str> = title.split_whitespace().take(2).collect();
    if role.iter().any(|w| REPLICATION.contains(w)) {
        "postgres replication".into()
    } else if role.iter().any(|w| SERVER.contains(w)) {
        "postgres background".into()
    } else {
        "postgres connections".into()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_processes_are_told_apart_by_their_role() {
        let cases = [
            (
                "postgres: 15/main: walsender postgres 127.0.0.1(50984) streaming 0/EAB63F8",
                "postgres replication",
            ),
            ("postgres: walreceiver streaming 0/EAB63F8", "postgres replication"),
            ("postgres: 15/replica: startup recovering 00000001000000000000000E", "postgres replication"),
            ("postgres: 15/main: checkpointer ", "postgres background"),
            ("postgres: autovacuum launcher ", "postgres background"),
            ("postgres: 15/main: root tenx_test_1 127.0.0.1(40112) idle", "postgres connections"),
            ("postgres: root tenx_test_1 127.0.0.1(40112) UPDATE", "postgres connections"),
            ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", "postgres"),
            ("/usr/lib/erlang/erts-13.1.5/bin/beam.smp -W w -- -root /usr/lib/erlang", "beam.smp"),
        ];
        for (cmdline, expected) in cases {
            let comm = if cmdline.contains("beam.smp") { "beam.smp" } else { "postgres" };
            assert_eq!(kind(comm, cmdline), expected, "{cmdline}");
        }
    }

    #[test]
    fn this_process_is_credited_with_the_cpu_it_burns() {
        let split = CpuByProcess::start();
        // Spin for half a second of wall time: even on a busy machine this
        // process gets far more than the 20 ms asserted.
        let until = std::time::Instant::now() + Duration::from_millis(500);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let mine = split.split().into_iter().find(|(kind, _)| kind == "this process").map_or(0, |(_, us)| us);
        assert!(mine >= 20_000, "this process burnt {mine} µs by its own count");
        assert!(split.per_op_line(1).contains("this process"));
    }
}
