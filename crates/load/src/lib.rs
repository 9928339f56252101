//! `tenx-load`: load against a running tenx, by scenario, in closed or
//! open loop, with HDR histograms, a live progress line, a summary table,
//! JSON results and PNG plots. `compare` runs one scenario against two
//! targets in one invocation and prints what the second costs over the
//! first (e.g. gateway ÷ direct: the edge's price).
//!
//! Bounded by construction: every run stops at its duration or request
//! cap, and only loopback addresses (or hosts named with `--allow-host`)
//! are targets.

pub mod cli;
pub mod door;
pub mod engine;
pub mod http;
pub mod operator;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod seed;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use door::{Services, Target};
use engine::Plan;
use report::Report;

/// One run, as the command line asked for it.
#[derive(Clone)]
pub struct Options {
    pub scenario: String,
    pub target: Target,
    /// The gateway's door (gRPC or HTTP); `Direct` uses `services`.
    pub addr: SocketAddr,
    /// Each service's own gRPC: the `Direct` target, and the operator's
    /// calls.
    pub services: Services,
    /// The `operator` client's secret, for `notify` and `mixed`.
    pub operator_secret: Option<String>,
    /// How many users the run signs up (or logs in, with `seeded`) first.
    pub users: u64,
    /// Use the users `tenx-load seed` made (this many) instead of new ones.
    pub seeded: Option<u64>,
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

impl std::fmt::Debug for Options {
    /// Everything but the operator's secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("scenario", &self.scenario)
            .field("target", &self.target)
            .field("addr", &self.addr)
            .field("services", &self.services)
            .field("operator_secret", &self.operator_secret.as_ref().map(|_| "<redacted>"))
            .field("plan", &self.plan)
            .field("users", &self.users)
            .field("seeded", &self.seeded)
            .finish_non_exhaustive()
    }
}

/// Makes the users the scenario needs, runs it, and writes the JSON and
/// plots asked for.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let Services { auth, billing, notification } = options.services;
    for addr in [options.addr, auth, billing, notification] {
        check_target(addr, &options.allow_hosts)?;
    }
    anyhow::ensure!(
        scenario::NAMES.contains(&options.scenario.as_str()),
        "no scenario {:?}; there are {:?}",
        options.scenario,
        scenario::NAMES
    );
    let operator = match (&options.operator_secret, scenario::needs_operator(&options.scenario)) {
        (Some(secret), true) => Some(operator::Operator::connect(options.services, secret).await?),
        (None, true) => anyhow::bail!(
            "{} sends as the operator: set {} to auth's service_clients.operator secret",
            options.scenario,
            operator::SECRET_ENV
        ),
        (_, false) => None,
    };
    let door =
        door::Door::connect(options.target, options.addr, options.services, options.connections).await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let users = match (scenario::needs_users(&options.scenario), options.seeded) {
        (false, _) => Vec::new(),
        (true, None) => scenario::sign_up_users(&door, &run, options.users).await?,
        (true, Some(seeded)) => scenario::log_in_seeded(&door, seeded, options.users).await?,
    };
    let setup = scenario::Setup { door, users: users.into(), operator, run, seeded: options.seeded };
    let call = scenario::call(&options.scenario, setup).expect("a known scenario with what it needs");
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
