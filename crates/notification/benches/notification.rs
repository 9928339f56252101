//! Notification figures against the real broker, Postgres and the local
//! SMTP sink: event → email accepted by the relay, latency p50/p99 (one
//! event at a time) and throughput (a burst of events).
//!
//! `cargo bench -p tenx-notification`; `TENX_BENCH_SAVE=1` rewrites the baseline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use tenx_common::metrics::Metrics;
use tenx_common::queue::{Amqp, Outgoing, Publisher};
use tenx_common::sealed::SealKey;
use tenx_common::shutdown::Shutdown;
use tenx_notification::{App, NotificationSettings};
use tenx_proto::auth::v1 as auth;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::bench::{self, Figure, percentile};
use tenx_test_support::{TestAmqp, TestDb, TestRedis};
use uuid::Uuid;

const SEQUENTIAL: usize = 100;
const BURST: usize = 1_000;

/// A verification event as auth writes it (the code sealed).
fn event(email: &str, key: &SealKey) -> Envelope {
    let user = Uuid::now_v7();
    let payload = auth::EmailVerificationRequested {
        user_id: user.to_string(),
        email: email.to_owned(),
        expires_in_minutes: 30,
        sealed_code: key.seal(b"ABCD2345", format!("verify_email:{user}:{email}").as_bytes()),
        ..Default::default()
    };
    Envelope {
        id: Uuid::now_v7().to_string(),
        r#type: "auth.email_verification_requested".into(),
        payload: prost::Message::encode_to_vec(&payload),
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let db = TestDb::of_service::<tenx_notification::App>("notification").await?;
    let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
    let settings =
        NotificationSettings::isolated(&db.primary_url(), &db.replica_url(), redis.prefix(), amqp.prefix())?;
    let key = SealKey::parse(settings.codes.seal_key.expose()).map_err(anyhow::Error::msg)?;
    let broker = Amqp::new(&settings.amqp, "bench");
    let channel = broker.channel().await?;
    for topology in
        [tenx_notification::app::topology(&settings), tenx_notification::app::webhook_topology(&settings)]
    {
        amqp.track(topology.queue_names(), topology.exchange_names());
        topology.declare(&channel).await?;
    }
    let shutdown = Shutdown::new();
    tenx_common::host::start::<App>(settings.clone(), Metrics::default(), shutdown.child()).await?;
    let (sql, conn) = tokio_postgres::connect(&db.primary_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    sql.batch_execute("SET search_path TO notification").await?;
    let publisher = Publisher::new(broker);
    let exchange = settings.amqp.exchange_name();
    let sent_at = |email: String| {
        let sql = &sql;
        async move {
            loop {
                let row = sql
                    .query_opt(
                        "SELECT sent_at FROM email_deliveries WHERE to_address = $1 AND status = 'sent'",
                        &[&email],
                    )
                    .await?;
                if let Some(row) = row {
                    return anyhow::Ok(row.get::<_, SystemTime>(0));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };

    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let email = format!("bench-seq-{i}-{}@example.com", Uuid::new_v4().simple());
        let started = SystemTime::now();
        publisher.publish(&[Outgoing::event(&exchange, &event(&email, &key))]).await?;
        let sent = tokio::time::timeout(Duration::from_secs(30), sent_at(email)).await??;
        latencies.push(sent.duration_since(started).unwrap_or_default());
    }

    let emails: Vec<String> =
        (0..BURST).map(|i| format!("bench-burst-{i}-{}@example.com", Uuid::new_v4().simple())).collect();
    let started = Instant::now();
    for chunk in emails.chunks(100) {
        let batch: Vec<_> = chunk.iter().map(|e| Outgoing::event(&exchange, &event(e, &key))).collect();
        publisher.publish(&batch).await?;
    }
    loop {
        let sent: i64 = sql
            .query_one("SELECT count(*) FROM email_deliveries WHERE to_address LIKE 'bench-burst-%' AND status = 'sent'", &[])
            .await?
            .get(0);
        if sent as usize >= BURST {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "only {sent} of {BURST} sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let burst = started.elapsed();
    shutdown.trigger();

    let mut figures = BTreeMap::new();
    figures.insert("event -> email accepted, p50", Figure::ms(percentile(&mut latencies, 50.0)));
    figures.insert("event -> email accepted, p99", Figure::ms(percentile(&mut latencies, 99.0)));
    figures.insert("emails/s, burst of 1000 events", Figure::per_second(BURST, burst));
    bench::report(&figures, concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json"))
}
