//! Shared setup for the integration tests.

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use prost::Message as _;
use tenx_common::db::{self, Db, DbSettings};
use tenx_common::metrics::Metrics;
use tenx_common::queue::{Amqp, AmqpSettings, Topology};
use tenx_proto::events::v1::Envelope;
use tenx_test_support::{TestAmqp, TestDb};
use tokio::sync::mpsc;

/// The schema every common test works in.
pub const SCHEMA: &str = "svc";

/// A fresh database with `common`'s tables migrated into [`SCHEMA`].
pub async fn test_db() -> anyhow::Result<TestDb> {
    let fingerprint = db::common_fingerprint();
    TestDb::from_template("common", &fingerprint, |url| async move {
        db::migrate(&url, SCHEMA, None).await?;
        Ok(())
    })
    .await
}

/// Pools on the test database: the real replica, or `replica_url` instead.
pub fn connect(test_db: &TestDb, replica_url: Option<&str>, metrics: &Metrics) -> anyhow::Result<Db> {
    let replica = replica_url.map(str::to_owned).unwrap_or_else(|| test_db.replica_url());
    let mut settings = DbSettings::new(&test_db.primary_url(), Some(&replica), SCHEMA);
    settings.connect_timeout_ms = 1_000;
    Ok(Db::connect(&settings, "tenx-common-tests", metrics)?)
}

/// The value of the metric line starting with `prefix`, or 0 if absent.
pub fn metric(metrics: &Metrics, prefix: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Queue settings for a test: its own name prefix, short retry delays.
pub fn amqp_settings(test_amqp: &TestAmqp) -> AmqpSettings {
    let mut settings = AmqpSettings::new(test_amqp.url(), test_amqp.prefix());
    settings.retry_delays_ms = vec![150, 450];
    settings.max_attempts = 3;
    settings.prefetch = 16;
    settings
}

/// Declares `topology` now and deletes it when the test ends.
pub async fn declare(test_amqp: &TestAmqp, amqp: &Amqp, topology: &Topology) -> anyhow::Result<()> {
    test_amqp.track(topology.queue_names(), topology.exchange_names());
    topology.declare(&amqp.channel().await?).await?;
    Ok(())
}

/// Every envelope arriving on `queue`, in broker order (auto-ack).
pub async fn observe(amqp: &Amqp, queue: &str) -> anyhow::Result<mpsc::UnboundedReceiver<Envelope>> {
    let channel = amqp.channel().await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = deliveries.next().await {
            let Ok(envelope) = Envelope::decode(delivery.data.as_slice()) else { continue };
            if tx.send(envelope).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Messages waiting in `queue` right now.
pub async fn queue_depth(amqp: &Amqp, queue: &str) -> anyhow::Result<u32> {
    Ok(tenx_common::queue::inspect(&amqp.channel().await?, queue).await?.message_count())
}

pub use tenx_test_support::eventually;
