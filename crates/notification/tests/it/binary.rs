//! The `tenx-notification` binary: migrate, serve (health, reflection,
//! /metrics, SIGTERM), and a clear exit on bad configuration.

use tenx_test_support::binary::ServiceBinary;
use tenx_test_support::{TestAmqp, TestDb, TestRedis};

const NOTIFICATION: ServiceBinary = ServiceBinary {
    path: env!("CARGO_BIN_EXE_tenx-notification"),
    env_prefix: "TENX_NOTIFICATION",
    service: "tenx.notification.v1.NotificationService",
};

#[tokio::test]
async fn the_binary_migrates_serves_health_reflection_and_metrics_and_stops_on_sigterm() -> anyhow::Result<()>
{
    let db = TestDb::from_template("empty", "v1", |_| async { Ok(()) }).await?;
    let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
    let settings = tenx_notification::NotificationSettings::isolated(
        &db.primary_url(),
        &db.replica_url(),
        redis.prefix(),
        amqp.prefix(),
    )?;
    // The binary reads its own settings, so it declares the default retry
    // tiers, not isolated()'s short ones: both sets are cleaned up.
    let mut served = settings.clone();
    served.amqp.retry_delays_ms = tenx_common::queue::default_retry_delays_ms();
    for s in [&settings, &served] {
        for topology in [tenx_notification::app::topology(s), tenx_notification::app::webhook_topology(s)] {
            amqp.track(topology.queue_names(), topology.exchange_names());
        }
    }
    // Every call is verified with auth's keys: a real auth beside it.
    let auth = tenx_auth::testing::TestAuth::start().await?;
    let env = [
        ("TENX_NOTIFICATION__UPSTREAMS__AUTH__URL".to_owned(), auth.url()),
        (
            "TENX_NOTIFICATION__AUTHN__CLIENT_SECRET".to_owned(),
            tenx_auth::testing::client_secret("notification"),
        ),
        ("TENX_NOTIFICATION__AUTHN__REVOCATION_PREFIX".to_owned(), auth.redis.prefix().to_owned()),
    ];
    NOTIFICATION.migrates_serves_and_stops_with(&db, &redis, &amqp, &env).await
}

#[test]
fn a_bad_setting_stops_startup_with_one_line_naming_it_and_no_secret() -> anyhow::Result<()> {
    NOTIFICATION.refuses_a_bad_setting_without_leaking_it()
}
