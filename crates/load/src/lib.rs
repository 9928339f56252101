//! `tenx-load`: load against a running tenx, by scenario, in closed or
//! open loop, with HDR histograms, a live progress line, a summary table,
//! JSON results and PNG plots. `compare` runs one scenario against two
//! targets in one invocation and prints what the second costs over the
//! first (e.g. gateway ÷ auth: the edge's price).
//!
//! Bounded by construction: every run stops at its duration or request
//! cap, and only loopback addresses (or hosts named with `--allow-host`)
//! are targets.

pub mod cli;
pub mod engine;
pub mod http;
pub mod plot;
pub mod report;
pub mod scenario;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use engine::Plan;
use report::Report;
use scenario::Target;

/// One run, as the command line asked for it.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: String,
    pub target: Target,
    pub addr: SocketAddr,
    pub plan: Plan,
    pub connections: usize,
    /// Where to write the JSON results.
    pub json: Option<PathBuf>,
    /// Where to write the PNG plots.
    pub plots: Option<PathBuf>,
    /// Hosts besides loopback that may be loaded.
    pub allow_hosts: Vec<IpAddr>,
}

/// Refuses a target that is neither loopback nor allowed.
pub fn check_target(addr: SocketAddr, allowed: &[IpAddr]) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback() || allowed.contains(&addr.ip()),
        "{addr} is not a loopback address; name it with --allow-host to load it"
    );
    Ok(())
}

/// Makes the users the scenario needs, runs it, and writes the JSON and
/// plots asked for.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    check_target(options.addr, &options.allow_hosts)?;
    let door = scenario::Door::connect(options.target, options.addr, options.connections).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let users = scenario::sign_up_users(&door, &run_id, scenario::users_needed(&options.scenario)).await?;
    let call = scenario::call(&options.scenario, door, users, run_id).ok_or_else(|| {
        anyhow::anyhow!("no scenario {:?}; there are {:?}", options.scenario, scenario::NAMES)
    })?;
    let label = format!("{} → {}", options.scenario, options.target.name());
    let recorded = engine::run(options.plan, &label, move |n| call(n)).await;
    let report =
        Report::new(&options.scenario, options.target.name(), &options.plan.mode.to_string(), &recorded);
    let stem = format!("{}-{}", options.scenario, options.target.name());
    if let Some(path) = &options.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    if let Some(dir) = &options.plots {
        std::fs::create_dir_all(dir)?;
        plot::write_all(&report, dir, &stem)?;
    }
    Ok(report)
}
