//! Test isolation for tenx, against the real servers on loopback.
//!
//! - [`TestDb`]: a fresh database per test, copied from a migrated
//!   template (built once per migration set, shared across processes),
//!   dropped when the test ends.
//! - [`TestRedis`]: a key prefix per test, its keys deleted at the end.
//! - [`TestAmqp`]: a name prefix per test; the queues and exchanges it
//!   is told about are deleted at the end.
//! - [`ChaosProxy`]: a TCP proxy a test can cut, to fail a server for
//!   itself without stopping the one other tests share.
//! - [`TestRedisServer`]: a Redis of the test's own, to kill and restart.
//! - [`TestPgBouncer`]: a PgBouncer of the test's own, in transaction
//!   mode, in front of its databases.
//! - [`mails`]: what the local SMTP sink kept.
//! - [`browser`]: a headless Chromium over WebDriver, for page tests.
//! - [`bench`]: benchmark figures printed beside a committed baseline.
//! - [`binary`]: checks every service binary must pass (migrate, serve with
//!   health, reflection and metrics, SIGTERM, a bad setting).
//!
//! Server addresses default to the local dependencies `make deps` starts
//! and can be moved with `TENX_TEST_PG_HOST`, `TENX_TEST_PG_PORT`,
//! `TENX_TEST_PG_REPLICA_PORT`, `TENX_TEST_REDIS_URL`, `TENX_TEST_AMQP_URL`.

mod amqp;
pub mod bench;
pub mod binary;
pub mod browser;
mod chaos;
mod pg;
mod pgbouncer;
mod redis_prefix;
mod redis_server;
mod service;
mod smtp_sink;
mod wait;

pub use amqp::TestAmqp;
pub use chaos::ChaosProxy;
pub use pg::{TestDb, pg_url};
pub use pgbouncer::{Bounced, TestPgBouncer};
pub use redis_prefix::TestRedis;
pub use redis_server::TestRedisServer;
pub use service::stopped;
pub use smtp_sink::{Mail, mails, text_part};
pub use wait::{eventually, http_get};

/// A short unique name part for this test: `t<pid hex><random hex>`.
pub fn unique_suffix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{:x}{}", std::process::id(), &id[..10])
}

/// The `host:port` of a server URL (`scheme://[user@]host:port/...`),
/// e.g. to put a [`ChaosProxy`] in front of it.
pub fn addr_of(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split('/').next().unwrap_or(host_port);
    Ok(host_port.parse()?)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Runs async cleanup from a `Drop`, on its own thread and runtime, so it
/// works whether the test's runtime is still alive or not.
fn cleanup_blocking<F, Fut>(what: &str, work: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let what = what.to_owned();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(work())
    });
    match handle.join() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("test cleanup of {what} failed: {error:#}"),
        Err(_) => eprintln!("test cleanup of {what} panicked"),
    }
}
