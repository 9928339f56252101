//! The `tenx-auth` binary: migrate, rotate-keys, serve (health, reflection,
//! /metrics, SIGTERM), and a clear exit on bad configuration.

use tenx_test_support::binary::{ServiceBinary, free_port};
use tenx_test_support::{TestAmqp, TestDb, TestRedis};

const AUTH: ServiceBinary = ServiceBinary {
    path: env!("CARGO_BIN_EXE_tenx-auth"),
    env_prefix: "TENX_AUTH",
    service: "tenx.auth.v1.AuthService",
};

#[tokio::test]
async fn the_binary_migrates_rotates_keys_serves_and_stops_on_sigterm() -> anyhow::Result<()> {
    let db = TestDb::from_template("empty", "v1", |_| async { Ok(()) }).await?;
    let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
    let settings = tenx_auth::AuthSettings::isolated(
        &db.primary_url(),
        &db.replica_url(),
        redis.prefix(),
        amqp.prefix(),
    )?;
    // The binary reads its own settings, so it declares the default retry
    // tiers, not isolated()'s short ones: both sets are cleaned up.
    let mut served = settings.amqp.clone();
    served.retry_delays_ms = tenx_common::queue::default_retry_delays_ms();
    for amqp_settings in [&settings.amqp, &served] {
        let topology = tenx_common::queue::Topology::for_group(amqp_settings, tenx_auth::avatar::GROUP, &[]);
        amqp.track(topology.queue_names(), topology.exchange_names());
    }

    AUTH.migrates_serves_and_stops(&db, &redis, &amqp).await?;
    let (grpc, admin) = (free_port()?, free_port()?);
    let rotated = AUTH.command(&db, &redis, &amqp, grpc, admin).arg("rotate-keys").output()?;
    assert!(
        String::from_utf8_lossy(&rotated.stdout).starts_with("new signing key: "),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    Ok(())
}

#[test]
fn a_bad_setting_stops_startup_with_one_line_naming_it_and_no_secret() -> anyhow::Result<()> {
    AUTH.refuses_a_bad_setting_without_leaking_it()
}
