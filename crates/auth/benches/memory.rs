//! Auth's memory under a login burst: the real `tenx-auth` binary, 10,000
//! logins (TENX_BENCH_LOGINS) at 64 in flight (far past
//! `password.max_concurrent_hashes`), then its resident memory, which must
//! stay under `max_concurrent_hashes × memory_kib + 64 MiB`: argon2's
//! memory is allocated once per hash worker and reused, so a burst leaves
//! nothing behind for the allocator to keep. Exits non-zero over the bound.
//!
//! `cargo bench -p tenx-auth --bench memory`; `TENX_BENCH_SAVE=1` rewrites
//! the baseline.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenx_auth::AuthSettings;
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_test_support::bench::{self, Figure};
use tenx_test_support::binary::free_port;
use tenx_test_support::{TestAmqp, TestDb, TestRedis, eventually};

const ACCOUNTS: usize = 64;
const IN_FLIGHT: usize = 64;
const PASSWORD: &str = "correct horse battery";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let logins: usize =
        std::env::var("TENX_BENCH_LOGINS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let db = TestDb::of_service::<tenx_auth::App>("auth").await?;
    let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
    let defaults = AuthSettings::load_from(Default::default())?;
    let (grpc, admin) = (free_port()?, free_port()?);
    let mut server = Command::new(env!("CARGO_BIN_EXE_tenx-auth"))
        .env("TENX_AUTH__DATABASE__PRIMARY_URL", db.primary_url())
        .env("TENX_AUTH__DATABASE__REPLICA_URL", db.replica_url())
        .env("TENX_AUTH__REDIS__KEY_PREFIX", redis.prefix())
        .env("TENX_AUTH__AMQP__PREFIX", amqp.prefix())
        .env("TENX_AUTH__SERVER__LISTEN", format!("127.0.0.1:{grpc}"))
        .env("TENX_AUTH__SERVER__ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("TENX_AUTH__TELEMETRY__LOG_FILTER", "warn")
        .arg("serve")
        .stdout(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{grpc}");
    eventually(Duration::from_secs(30), "tenx-auth to serve", || {
        let url = url.clone();
        async move { Ok(AuthServiceClient::connect(url).await.is_ok()) }
    })
    .await?;
    let client = AuthServiceClient::connect(url).await?;
    let started_rss = rss_kib(server.id(), "VmRSS")?;

    let mut emails = Vec::new();
    for i in 0..ACCOUNTS {
        let email = format!("memory-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
        let request = pb::SignUpRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            display_name: "Bench".into(),
            device_name: String::new(),
        };
        client.clone().sign_up(request).await?;
        emails.push(email);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..IN_FLIGHT {
        let (client, emails) = (client.clone(), emails.clone());
        tasks.spawn(async move {
            for i in (lane..logins).step_by(IN_FLIGHT) {
                let request = pb::LoginRequest {
                    email: emails[i % emails.len()].clone(),
                    password: PASSWORD.into(),
                    device_name: String::new(),
                };
                client.clone().login(request).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let (rss, peak) = (rss_kib(server.id(), "VmRSS")?, rss_kib(server.id(), "VmHWM")?);
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();

    let bound_kib =
        defaults.password.max_concurrent_hashes as u64 * u64::from(defaults.password.memory_kib) + 64 * 1024;
    let mib = |kib: u64| Figure { value: kib as f64 / 1024.0, unit: "MiB", higher_is_better: false };
    let mut figures = BTreeMap::new();
    figures.insert("auth RSS at start", mib(started_rss));
    figures.insert("auth RSS after the logins", mib(rss));
    figures.insert("auth peak RSS during the logins", mib(peak));
    figures.insert("logins per second, 64 in flight", Figure::per_second(logins, elapsed));
    println!(
        "{logins} logins; bound max_concurrent_hashes ({}) × {} KiB + 64 MiB = {:.1} MiB",
        defaults.password.max_concurrent_hashes,
        defaults.password.memory_kib,
        bound_kib as f64 / 1024.0
    );
    bench::report(&figures, concat!(env!("CARGO_MANIFEST_DIR"), "/benches/memory_baseline.json"))?;
    anyhow::ensure!(peak <= bound_kib, "auth's peak RSS {peak} KiB is over the bound {bound_kib} KiB");
    Ok(())
}

/// A field of /proc/<pid>/status, in KiB.
fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}
