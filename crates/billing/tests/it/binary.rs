//! The `tenx-billing` binary: migrate, serve (health, reflection, /metrics,
//! SIGTERM), and a clear exit on bad configuration.

use tenx_test_support::binary::ServiceBinary;
use tenx_test_support::{TestAmqp, TestDb, TestRedis};

const BILLING: ServiceBinary = ServiceBinary {
    path: env!("CARGO_BIN_EXE_tenx-billing"),
    env_prefix: "TENX_BILLING",
    service: "tenx.billing.v1.BillingService",
};

#[tokio::test]
async fn the_binary_migrates_serves_health_reflection_and_metrics_and_stops_on_sigterm() -> anyhow::Result<()>
{
    let db = TestDb::from_template("empty", "v1", |_| async { Ok(()) }).await?;
    let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
    let settings = tenx_billing::BillingSettings::isolated(
        &db.primary_url(),
        &db.replica_url(),
        redis.prefix(),
        amqp.prefix(),
    )?;
    let topology = tenx_billing::app::customers_topology(&settings);
    amqp.track(topology.queue_names(), topology.exchange_names());
    // Every call is verified with auth's keys: a real auth beside it.
    let auth = tenx_auth::testing::TestAuth::start().await?;
    let env = [
        ("TENX_BILLING__UPSTREAMS__AUTH__URL".to_owned(), auth.url()),
        ("TENX_BILLING__AUTHN__CLIENT_SECRET".to_owned(), tenx_auth::testing::client_secret("billing")),
        ("TENX_BILLING__AUTHN__REVOCATION_PREFIX".to_owned(), auth.redis.prefix().to_owned()),
        ("TENX_BILLING__DEPLOYMENT__ENVIRONMENT".to_owned(), "test".to_owned()),
        ("TENX_BILLING__PROVIDER__KIND".to_owned(), "simulated".to_owned()),
    ];
    BILLING.migrates_serves_and_stops_with(&db, &redis, &amqp, &env).await
}

#[test]
fn a_bad_setting_stops_startup_with_one_line_naming_it_and_no_secret() -> anyhow::Result<()> {
    BILLING.refuses_a_bad_setting_without_leaking_it()
}

/// Starts the binary with `env` (and nothing else of ours) and returns its
/// exit code and standard error.
fn start_with(env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let mut command = std::process::Command::new(BILLING.path);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENX_")) {
        command.env_remove(key);
    }
    let output = command.envs(env.iter().copied()).arg("serve").output()?;
    Ok((output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned()))
}

#[test]
fn production_refuses_the_simulator_and_test_keys_without_leaking_them() -> anyhow::Result<()> {
    // The defaults are production's: the simulator (whose test cards always
    // pay) does not start there, whatever else is right.
    let (code, stderr) = start_with(&[("TENX_BILLING__PROVIDER__KIND", "simulated")])?;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("provider.kind") && stderr.contains("production"), "{stderr}");
    // Stripe without a key, or with a test-mode key in production: refused,
    // and the key is never printed.
    let (code, stderr) = start_with(&[])?;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("provider.stripe_secret_key"), "{stderr}");
    let test_key = "sk_test_51SecretThatMustNotLeak";
    let (code, stderr) = start_with(&[
        ("TENX_BILLING__PROVIDER__STRIPE_SECRET_KEY", test_key),
        ("TENX_BILLING__PROVIDER__STRIPE_WEBHOOK_SECRET", "whsec_x"),
    ])?;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("live key"), "{stderr}");
    assert!(!stderr.contains(test_key), "the key leaked: {stderr}");
    // A live key sent anywhere but Stripe: refused.
    let (code, stderr) = start_with(&[
        ("TENX_BILLING__PROVIDER__STRIPE_SECRET_KEY", "sk_live_x"),
        ("TENX_BILLING__PROVIDER__STRIPE_WEBHOOK_SECRET", "whsec_x"),
        ("TENX_BILLING__PROVIDER__STRIPE_API_BASE", "https://stripe.attacker.example"),
    ])?;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("provider.stripe_api_base"), "{stderr}");
    // A live key without the webhook's signing secret: refused too.
    let (code, stderr) = start_with(&[("TENX_BILLING__PROVIDER__STRIPE_SECRET_KEY", "sk_live_x")])?;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("provider.stripe_webhook_secret"), "{stderr}");
    Ok(())
}
