//! The slow fault scenarios, run by `make chaos` (this test target needs
//! the `chaos` feature: `cargo nextest run -p tenx-load --features chaos
//! --test chaos`): RabbitMQ away 30 s, the replica paused then gone,
//! PgBouncer restarted, each with tenx-load traffic through a gateway, and
//! each printing its row of docs/RELIABILITY.md.

mod support;

use std::time::{Duration, Instant};

use tenx_test_platform::{Platform, Setup};

use support::{assert_none_failed, column, gateway, mails_to, reports, row, signed_up, traffic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_away_30_s_during_signups_fails_none_and_every_welcome_email_arrives_once()
-> anyhow::Result<()> {
    let shared = tenx_test_support::TestAmqp::new();
    let broker = tenx_test_support::ChaosProxy::start(tenx_test_support::addr_of(shared.url())?).await?;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port());
    let platform =
        Platform::start_setup(Setup { instances: 2, amqp_url: Some(url), ..Setup::default() }).await?;
    let (gateway, _) = gateway(&platform).await?;
    let loads = traffic(&platform, &gateway, &["signup", "me"], Duration::from_secs(40));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every connection to the broker dies and none is let in for 30 s.
    broker.cut();
    tokio::time::sleep(Duration::from_secs(30)).await;
    broker.restore();
    let restored = Instant::now();
    let reports = reports(loads).await?;
    // Every user auth created (the signups, the scenarios' own users) gets
    // the welcome email, once, and its in-app item, once.
    let users: std::collections::BTreeSet<String> =
        column(&platform.auth_db_url(), "SELECT lower(email) FROM auth.users").await?.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrived = mails_to(&users)?.len();
        if arrived == users.len() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{arrived} of {} welcome emails arrived", users.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovery = restored.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let twice = mails_to(&users)?.values().filter(|n| **n > 1).count();
    let in_app = column(
        &platform.notify_db_url(),
        "SELECT count(*)::text FROM notification.notifications GROUP BY user_id HAVING count(*) > 1",
    )
    .await?;
    row(
        "RabbitMQ away 30 s (every connection cut, none let in)",
        &reports,
        "0",
        &twice.to_string(),
        recovery,
    );
    assert_none_failed(&reports, "with the broker away");
    assert_eq!(twice, 0, "a welcome email arrived twice");
    assert!(in_app.is_empty(), "an in-app item twice: {in_app:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_restarted_under_load_fails_clearly_and_writes_nothing_by_half() -> anyhow::Result<()> {
    let mut platform =
        Platform::start_setup(Setup { instances: 2, pgbouncer: true, ..Setup::default() }).await?;
    let (gateway, _) = gateway(&platform).await?;
    let loads =
        traffic(&platform, &gateway, &["me", "login", "signup", "subscribe"], Duration::from_secs(12));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    platform.pgbouncer.as_mut().expect("behind PgBouncer").restart().await?;
    let recovery = restarted.elapsed();
    let reports = reports(loads).await?;
    row("PgBouncer killed and restarted", &reports, "0", "0", recovery);
    for report in &reports {
        assert!(report.requests > 0, "{}: no request", report.scenario);
        // A call whose transaction the restart cut fails, clearly, and may
        // be retried; nothing else.
        for kind in report.error_kinds.keys() {
            assert!(kind.starts_with("Unavailable"), "{}: {kind}", report.scenario);
        }
    }
    // Nothing by half: every active subscription has its paid invoice, and
    // every customer billing knows is a user auth knows.
    let unpaid = column(
        &platform.billing_db_url(),
        "SELECT s.id::text FROM billing.subscriptions s WHERE s.status = 'active' AND NOT EXISTS \
         (SELECT 1 FROM billing.invoices i WHERE i.subscription_id = s.id AND i.status = 'paid')",
    )
    .await?;
    assert!(unpaid.is_empty(), "active subscriptions without a paid invoice: {unpaid:?}");
    Ok(())
}

/// Writes then reads back, again and again, straight to auth: the name
/// set by UpdateProfile must come back from GetUser when the read carries
/// the write's `x-tenx-wal-position`. Returns (checks, wrong, failed).
async fn read_your_writes(
    auth: std::net::SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(u64, u64, u64)> {
    use tenx_proto::auth::v1 as pb;
    let channel =
        tenx_common::grpc::connect(&tenx_common::grpc::ClientSettings::new(&format!("http://{auth}")))?;
    let mut client = pb::auth_service_client::AuthServiceClient::new(channel);
    let (id, bearer) = signed_up(&mut client, "ryw").await?;
    let (mut checks, mut wrong, mut failed) = (0, 0, 0);
    while !*stop.borrow() {
        let name = format!("name {checks}");
        let mut update = tonic::Request::new(pb::UpdateProfileRequest { display_name: name.clone() });
        update.metadata_mut().insert("authorization", bearer.clone());
        let position = match client.update_profile(update).await {
            Ok(response) => response.metadata().get("x-tenx-wal-position").cloned(),
            Err(_) => {
                failed += 1;
                continue;
            }
        };
        let mut read = tonic::Request::new(pb::GetUserRequest { user_id: id.clone() });
        read.metadata_mut().insert("authorization", bearer.clone());
        if let Some(position) = position {
            read.metadata_mut().insert("x-tenx-wal-position", position);
        }
        match client.get_user(read).await {
            Ok(user) if user.get_ref().user.as_ref().is_some_and(|u| u.display_name == name) => {}
            Ok(_) => wrong += 1,
            Err(_) => failed += 1,
        }
        checks += 1;
    }
    Ok((checks, wrong, failed))
}

async fn set_replay(paused: bool) -> anyhow::Result<()> {
    let (client, connection) =
        tokio_postgres::connect(&tenx_test_support::pg_url(true, "postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let sql = if paused { "SELECT pg_wal_replay_pause()" } else { "SELECT pg_wal_replay_resume()" };
    client.simple_query(sql).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_paused_then_stopped_fails_no_read_and_every_read_sees_its_write() -> anyhow::Result<()> {
    let replica = tenx_test_support::ChaosProxy::start(tenx_test_support::addr_of(
        &tenx_test_support::pg_url(true, "x"),
    )?)
    .await?;
    let platform =
        Platform::start_setup(Setup { instances: 2, replica_port: Some(replica.port()), ..Setup::default() })
            .await?;
    let (gateway, _) = gateway(&platform).await?;
    let loads = traffic(&platform, &gateway, &["me", "login"], Duration::from_secs(18));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ryw = tokio::spawn(read_your_writes(platform.auth.grpc_addr, stopped));
    let faults = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        set_replay(true).await?; // the replica falls behind
        tokio::time::sleep(Duration::from_secs(6)).await;
        replica.cut(); // then it is gone
        tokio::time::sleep(Duration::from_secs(6)).await;
        anyhow::Ok(())
    }
    .await;
    // Always undone: the replica is shared.
    set_replay(false).await?;
    replica.restore();
    let back = Instant::now();
    faults?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true)?;
    let (checks, wrong, failed) = ryw.await??;
    let reports = reports(loads).await?;
    row("Replica replay paused 6 s, then the replica gone 6 s", &reports, "0", "0", back.elapsed());
    println!("read-your-writes: {checks} write-then-read pairs, {wrong} stale, {failed} failed");
    assert_none_failed(&reports, "with the replica behind or gone");
    assert!(checks > 10, "only {checks} write-then-read pairs");
    assert_eq!((wrong, failed), (0, 0), "a read missed its own write, or failed");
    Ok(())
}
