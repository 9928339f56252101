//! Notification figures against the real broker and Postgres, with
//! Postfix's `smtp-sink` as the relay (a sink that is not the bottleneck:
//! the Python sink of the tests takes ≈ 180 messages/s by itself):
//!
//! - event → email accepted by the relay, p50/p99, one event at a time;
//! - the same at a steady 200 events/s, p99;
//! - emails per second from a burst of 10,000 events;
//! - in-app notifications per second from a burst of 10,000 `Send`s;
//! - the machine's CPU per email and per in-app notification, and its
//!   split by process (this one, Postgres, RabbitMQ, Redis) for the bursts.
//!
//! `cargo bench -p tenx-notification` (`make bench` installs smtp-sink);
//! `TENX_BENCH_SAVE=1` rewrites the baseline; `TENX_BENCH_PERF=DIR`
//! profiles each burst (`bench::Profile`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use tenx_common::metrics::{Metrics, exposition};
use tenx_common::queue::{Amqp, Outgoing, Publisher};
use tenx_common::sealed::SealKey;
use tenx_common::shutdown::Shutdown;
use tenx_notification::settings::{RelaySettingsSmtp, SmtpTls};
use tenx_notification::{App, NotificationSettings};
use tenx_proto::auth::v1 as auth;
use tenx_proto::events::v1::Envelope;
use tenx_proto::notification::v1::{Channel, SendRequested};
use tenx_test_support::bench::{self, Figure, busy_cpu_us, percentile};
use tenx_test_support::{TestAmqp, TestDb, TestRedis};
use uuid::Uuid;

const SEQUENTIAL: usize = 100;
const PACED: usize = 1_000;
const PACED_PER_SECOND: u64 = 200;
const BURST: usize = 10_000;

/// A verification event as auth writes it (the code sealed).
fn verification(email: &str, key: &SealKey) -> Envelope {
    let user = Uuid::now_v7();
    let payload = auth::EmailVerificationRequested {
        user_id: user.to_string(),
        email: email.to_owned(),
        expires_in_minutes: 30,
        sealed_code: key.seal(b"ABCD2345", format!("verify_email:{user}:{email}").as_bytes()),
        ..Default::default()
    };
    envelope("auth.email_verification_requested", &payload)
}

/// An operator's Send of an in-app notification only.
fn in_app(user: Uuid) -> Envelope {
    let payload = SendRequested {
        notification_id: Uuid::now_v7().to_string(),
        user_id: user.to_string(),
        email: format!("{user}@example.com"),
        template: "welcome".into(),
        channels: vec![Channel::InApp.into()],
        // The email's variables too, though only the in-app part is
        // rendered, as an operator's Send of a shared template carries them.
        data: Some(prost_types::Struct {
            fields: [("email", format!("{user}@example.com")), ("display_name", "Ada".to_owned())]
                .map(|(k, v)| {
                    (
                        k.to_owned(),
                        prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(v)) },
                    )
                })
                .into(),
        }),
    };
    envelope(SendRequested::EVENT_TYPE, &payload)
}

fn envelope(event_type: &str, payload: &impl prost::Message) -> Envelope {
    Envelope {
        id: Uuid::now_v7().to_string(),
        r#type: event_type.into(),
        payload: payload.encode_to_vec(),
        ..Default::default()
    }
}

/// Postfix's smtp-sink on a free loopback port, discarding every message.
fn smtp_sink() -> anyhow::Result<(std::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // As root it must be told whom to run as once its socket is open.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let mut args = if root { vec!["-u".to_owned(), "nobody".to_owned()] } else { Vec::new() };
    args.extend([format!("127.0.0.1:{port}"), "1024".to_owned()]);
    let child = std::process::Command::new("smtp-sink")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("smtp-sink: {e}; install it with `deploy/local/tools.sh bench` (Debian postfix)")
        })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "smtp-sink did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, port))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (mut sink, port) = smtp_sink()?;
    let result = run(port).await;
    let _ = sink.kill();
    let _ = sink.wait();
    result
}

async fn run(port: u16) -> anyhow::Result<()> {
    let db = TestDb::of_service::<tenx_notification::App>("notification").await?;
    let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
    let mut settings =
        NotificationSettings::isolated(&db.primary_url(), &db.replica_url(), redis.prefix(), amqp.prefix())?;
    settings.smtp.relays = vec![RelaySettingsSmtp {
        host: "127.0.0.1".into(),
        port,
        timeout_ms: 5_000,
        tls: SmtpTls::None,
        username: None,
        password: None,
    }];
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
    let metrics = Metrics::default();
    tenx_common::host::start::<App>(settings.clone(), metrics.clone(), shutdown.child()).await?;
    let (sql, conn) = tokio_postgres::connect(&db.primary_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    sql.batch_execute("SET search_path TO notification").await?;
    let publisher = Publisher::new(broker);
    let exchange = settings.amqp.exchange_name();
    let address = |kind: &str, i: usize| format!("bench-{kind}-{i}-{}@example.com", Uuid::new_v4().simple());
    // When each address's email was accepted by the relay.
    let sent_at = |like: &'static str| {
        let sql = &sql;
        async move {
            let rows = sql
                .query(
                    "SELECT to_address, sent_at FROM email_deliveries WHERE to_address LIKE $1 AND status = 'sent'",
                    &[&like],
                )
                .await?;
            anyhow::Ok(
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, SystemTime>(1)))
                    .collect::<HashMap<_, _>>(),
            )
        }
    };
    let count = |table_sql: &'static str| {
        let sql = &sql;
        async move { anyhow::Ok(sql.query_one(table_sql, &[]).await?.get::<_, i64>(0) as usize) }
    };
    let wait_for = |what: &'static str, target: usize, table_sql: &'static str| async move {
        let started = Instant::now();
        loop {
            let done = count(table_sql).await?;
            if done >= target {
                return anyhow::Ok(());
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "{what}: only {done} of {target}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // `TENX_BENCH_ONLY=emails` (or latency, paced, in-app) measures only those.
    let only = std::env::var("TENX_BENCH_ONLY").unwrap_or_default();
    let phase = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let mut figures = BTreeMap::new();
    // Each figure printed as soon as it is measured, for a run cut short.
    let mut record = |name: &'static str, figure: Figure| {
        println!("{name}: {:.2} {}", figure.value, figure.unit);
        figures.insert(name, figure);
    };

    if phase("latency") {
        // One at a time.
        let mut latencies = Vec::with_capacity(SEQUENTIAL);
        for i in 0..SEQUENTIAL {
            let email = address("seq", i);
            let started = SystemTime::now();
            publisher.publish(&[Outgoing::event(&exchange, &verification(&email, &key))]).await?;
            let sql = &sql;
            let sent = tokio::time::timeout(Duration::from_secs(30), async {
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
            })
            .await??;
            latencies.push(sent.duration_since(started).unwrap_or_default());
        }
        record("event -> email accepted, p50", Figure::ms(percentile(&mut latencies, 50.0)));
        record("event -> email accepted, p99", Figure::ms(percentile(&mut latencies, 99.0)));
    }
    if phase("paced") {
        // A steady 200 a second.
        let mut published = HashMap::with_capacity(PACED);
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PACED_PER_SECOND));
        for i in 0..PACED {
            tick.tick().await;
            let email = address("paced", i);
            published.insert(email.clone(), SystemTime::now());
            publisher.publish(&[Outgoing::event(&exchange, &verification(&email, &key))]).await?;
        }
        wait_for(
            "paced",
            PACED,
            "SELECT count(*) FROM email_deliveries WHERE to_address LIKE 'bench-paced-%' AND status = 'sent'",
        )
        .await?;
        let sent = sent_at("bench-paced-%").await?;
        let mut latencies: Vec<Duration> = published
            .iter()
            .filter_map(|(email, at)| sent.get(email).map(|s| s.duration_since(*at).unwrap_or_default()))
            .collect();
        record("event -> email accepted at 200/s, p99", Figure::ms(percentile(&mut latencies, 99.0)));
    }
    if phase("emails") {
        // A burst of emails.
        let events: Vec<_> = (0..BURST).map(|i| verification(&address("burst", i), &key)).collect();
        let profile = bench::Profile::start("emails")?;
        let by_process = bench::CpuByProcess::start();
        let (started, cpu) = (Instant::now(), busy_cpu_us());
        for chunk in events.chunks(500) {
            let batch: Vec<_> = chunk.iter().map(|e| Outgoing::event(&exchange, e)).collect();
            publisher.publish(&batch).await?;
        }
        wait_for(
            "burst",
            BURST,
            "SELECT count(*) FROM email_deliveries WHERE to_address LIKE 'bench-burst-%' AND status = 'sent'",
        )
        .await?;
        let elapsed = started.elapsed();
        drop(profile);
        println!("CPU per email, by process: {}", by_process.per_op_line(BURST));
        record("emails/s, burst of 10000 events", Figure::per_second(BURST, elapsed));
        record("CPU per email (machine, µs)", cpu_per(busy_cpu_us() - cpu, BURST));
    }
    if phase("in-app") {
        // A burst of in-app notifications.
        let events: Vec<_> = (0..BURST).map(|_| in_app(Uuid::now_v7())).collect();
        let profile = bench::Profile::start("in-app")?;
        let by_process = bench::CpuByProcess::start();
        let (started, cpu) = (Instant::now(), busy_cpu_us());
        for chunk in events.chunks(500) {
            let batch: Vec<_> = chunk.iter().map(|e| Outgoing::event(&exchange, e)).collect();
            publisher.publish(&batch).await?;
        }
        // Watched through the service's own counter, not by counting the
        // table: a `count(*)` of a growing table every few milliseconds
        // was a sixth of the primary's work during the burst.
        let sent = || {
            let samples = exposition::parse(&metrics.render());
            let mut sent = exposition::named(&samples, "tenx_notification_sent_total");
            sent.find(|s| s.label("channel") == Some("in_app")).map_or(0, |s| s.value as usize)
        };
        while sent() < BURST {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "in-app burst: only {} of {BURST}",
                sent()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        drop(profile);
        println!("CPU per in-app notification, by process: {}", by_process.per_op_line(BURST));
        // Counted as sent only once committed: the rows are all there.
        anyhow::ensure!(count("SELECT count(*) FROM notifications").await? == BURST, "in-app rows missing");
        record("in-app notifications/s, burst of 10000", Figure::per_second(BURST, elapsed));
        record("CPU per in-app notification (machine, µs)", cpu_per(busy_cpu_us() - cpu, BURST));
    }
    shutdown.trigger();

    let figure = |name: &str| figures.get(name).map(|f| f.value);
    for (target, met) in [
        ("emails/s ≥ 1,000", figure("emails/s, burst of 10000 events").map(|v| v >= 1_000.0)),
        (
            "in-app notifications/s ≥ 5,000",
            figure("in-app notifications/s, burst of 10000").map(|v| v >= 5_000.0),
        ),
        (
            "event -> email at 200/s, p99 ≤ 50 ms",
            figure("event -> email accepted at 200/s, p99").map(|v| v <= 50.0),
        ),
    ] {
        let verdict = match met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "not measured",
        };
        println!("target {target:<40} {verdict}");
    }
    bench::report(&figures, concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json"))
}

/// Microseconds of the machine's CPU per operation.
fn cpu_per(busy_us: u64, ops: usize) -> Figure {
    Figure { value: busy_us as f64 / ops as f64, unit: "µs", higher_is_better: false }
}
