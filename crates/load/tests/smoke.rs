//! A few seconds of each scenario against a real auth (its own database,
//! Redis prefix and broker names): no errors, the figures add up, and the
//! JSON and the three plots are written. `make test` runs it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tenx_load::engine::{Mode, Plan};
use tenx_load::scenario::{NAMES, Target};
use tenx_load::{Options, cli};

fn options(scenario: &str, addr: SocketAddr, mode: Mode, dir: &Path) -> Options {
    Options {
        scenario: scenario.into(),
        target: Target::Auth,
        addr,
        plan: Plan { mode, duration: Duration::from_millis(1_500), max_requests: 100_000 },
        connections: 2,
        json: Some(dir.join(format!("{scenario}.json"))),
        plots: Some(dir.to_path_buf()),
        allow_hosts: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_auth_without_errors_and_writes_its_json_and_plots() -> anyhow::Result<()>
{
    let auth = tenx_auth::testing::TestAuth::start().await?;
    let addr = auth.running.grpc_addr;
    let dir = std::env::temp_dir().join(format!("tenx-load-{}", uuid::Uuid::new_v4().simple()));
    for (scenario, mode) in NAMES.iter().zip([
        Mode::Open { rate: 400.0, max_in_flight: 1_000 },
        Mode::Closed { in_flight: 8 },
        Mode::Closed { in_flight: 4 },
    ]) {
        let report = tenx_load::run(&options(scenario, addr, mode, &dir)).await?;
        assert_eq!(report.errors, 0, "{scenario}: {:?}", report.error_kinds);
        assert!(report.requests > 0, "{scenario} made no request");
        let per_second: u64 = report.timeline.iter().map(|t| t.ok + t.errors).sum();
        assert_eq!(per_second, report.requests, "{scenario}: the timeline counts every answer");
        assert!(report.latency_ms["p50"] <= report.latency_ms["p99"]);
        if let Mode::Open { rate, .. } = mode {
            // An open loop sends at its rate whatever the answers do.
            let expected = rate * 1.5;
            assert!(
                (report.requests as f64) > expected * 0.8,
                "{scenario}: {} of {expected}",
                report.requests
            );
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{scenario}.json")))?)?;
        assert_eq!(json["requests"], report.requests);
        for plot in ["latency", "spectrum", "throughput"] {
            let png = std::fs::read(dir.join(format!("{scenario}-auth-{plot}.png")))?;
            assert!(png.starts_with(b"\x89PNG"), "{scenario}-{plot} is a PNG");
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn only_loopback_is_loaded_unless_a_host_is_allowed() -> anyhow::Result<()> {
    let Ok(cli::Command::Run(mut o)) =
        cli::parse(["run", "me", "--addr", "10.1.2.3:50051", "--duration", "1s"].map(String::from))
    else {
        panic!("a valid command line");
    };
    let refused = tenx_load::run(&o).await.expect_err("not loopback");
    assert!(refused.to_string().contains("--allow-host"), "{refused}");
    o.allow_hosts.push("10.1.2.3".parse()?);
    assert!(tenx_load::check_target(o.addr, &o.allow_hosts).is_ok());
    Ok(())
}
