//! A notification worker killed with SIGKILL in the middle of a batch (the
//! real binary, its prefetched messages unacknowledged, an email possibly
//! half sent): another instance takes what it held. No email is lost;
//! every in-app item exists once; an email whose SMTP send the kill cut
//! may arrive twice, and then only with the same Message-ID (the
//! receiving side can drop the second).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tenx_proto::auth::v1 as auth;
use tenx_test_support::binary::{ServiceBinary, free_port};
use uuid::Uuid;

use crate::support::TestNotify;

const NOTIFICATION: ServiceBinary = ServiceBinary {
    path: env!("CARGO_BIN_EXE_tenx-notification"),
    env_prefix: "TENX_NOTIFICATION",
    service: "tenx.notification.v1.NotificationService",
};

/// Recipient → the Message-IDs of every email the SMTP sink kept for an
/// address ending in `domain`.
fn mails_for(domain: &str) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for mail in tenx_test_support::mails()?.into_iter().filter(|m| m.to.contains(domain)) {
        found.entry(mail.to).or_default().push(mail.message_id);
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_no_email_and_shows_each_in_app_item_once() -> anyhow::Result<()> {
    let mut notify = TestNotify::new().await?;
    // The binary declares its default retry tiers: so does the instance
    // that takes over, so both consume the very same queue.
    notify.settings.amqp.retry_delays_ms = tenx_common::queue::default_retry_delays_ms();
    for topology in [
        tenx_notification::app::topology(&notify.settings),
        tenx_notification::app::webhook_topology(&notify.settings),
    ] {
        notify.amqp.track(topology.queue_names(), topology.exchange_names());
    }
    let (grpc, admin) = (free_port()?, free_port()?);
    let mut worker = NOTIFICATION
        .command(&notify.db, &notify.redis, &notify.amqp, grpc, admin)
        .env("TENX_NOTIFICATION__UPSTREAMS__AUTH__URL", notify.settings.upstreams.auth.url.clone())
        .env("TENX_NOTIFICATION__AUTHN__CLIENT_SECRET", notify.settings.authn.client_secret.expose())
        .env("TENX_NOTIFICATION__AUTHN__REVOCATION_PREFIX", notify.settings.authn.revocation_prefix.clone())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let admin_addr = format!("127.0.0.1:{admin}").parse()?;
    tenx_test_support::eventually(Duration::from_secs(20), "the worker is ready", || async move {
        Ok(tenx_test_support::http_get(admin_addr, "/readyz").await.is_ok_and(|(status, _)| status == 200))
    })
    .await?;

    // A batch of signups: each wants a welcome email and an in-app item.
    const USERS: usize = 150;
    let domain = format!("kill-{}.example.com", Uuid::new_v4().simple());
    let publisher =
        tenx_common::queue::Publisher::new(tenx_common::queue::Amqp::new(&notify.settings.amqp, "test"));
    let mut batch = Vec::new();
    for i in 0..USERS {
        let event = auth::UserSignedUp {
            user_id: Uuid::now_v7().to_string(),
            email: format!("user{i}@{domain}"),
            display_name: format!("User {i}"),
        };
        let envelope = tenx_proto::events::v1::Envelope {
            id: Uuid::now_v7().to_string(),
            r#type: "auth.user.signed_up".into(),
            payload: prost::Message::encode_to_vec(&event),
            ..Default::default()
        };
        batch.push(tenx_common::queue::Outgoing::event(&notify.settings.amqp.exchange_name(), &envelope));
    }
    publisher.publish(&batch).await?;

    // Mid-batch: some emails out, most not; then SIGKILL. Watched in the
    // worker's database (a delivery row commits once the relay took the
    // email): reading the whole shared SMTP sink takes longer the more it
    // holds, and the batch could end meanwhile.
    let sql = notify.sql().await?;
    let sent = "SELECT count(*) FROM email_deliveries WHERE status = 'sent'";
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql.query_one(sent, &[]).await?.get::<_, i64>(0) < 10 {
        anyhow::ensure!(Instant::now() < deadline, "the worker sent nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.kill()?;
    worker.wait()?;
    let at_kill = mails_for(&domain)?.len();
    anyhow::ensure!(at_kill < USERS, "the worker finished the batch before the kill: make it bigger");

    // Another instance takes over what the dead one held.
    let killed = Instant::now();
    let _taking_over = notify.start().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while mails_for(&domain)?.len() < USERS {
        anyhow::ensure!(Instant::now() < deadline, "{} of {USERS} welcome emails", mails_for(&domain)?.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mails = mails_for(&domain)?;
    assert_eq!(mails.len(), USERS, "every user got the welcome email");
    let twice: Vec<_> = mails.iter().filter(|(_, ids)| ids.len() > 1).collect();
    for (to, ids) in &twice {
        assert!(ids.iter().all(|id| *id == ids[0]), "{to} got two different emails: {ids:?}");
    }
    let (items, users): (i64, i64) = {
        let row = sql.query_one("SELECT count(*), count(DISTINCT user_id) FROM notifications", &[]).await?;
        (row.get(0), row.get(1))
    };
    assert_eq!((items, users), (USERS as i64, USERS as i64), "one in-app item per user");
    println!(
        "| Notification worker SIGKILL mid-batch ({at_kill} of {USERS} emails out) | {USERS} signup events | 0 | 0 | \
         {} emails twice, same Message-ID; in-app once | {:.1} s |",
        twice.len(),
        recovered.as_secs_f64()
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_stopped_mid_message_finishes_it_before_it_exits() -> anyhow::Result<()> {
    use tenx_notification::settings::SmtpTls;
    use tenx_test_support::ChaosProxy;

    use crate::support::{mails_to, relay, unique_email};
    // A slow relay keeps the handler busy when the shutdown (SIGTERM's
    // signal) comes: the consumer takes nothing more, finishes the email
    // in hand, acknowledges it, and only then does the service end.
    let mut notify = TestNotify::new().await?;
    let slow_smtp = ChaosProxy::start("127.0.0.1:2525".parse()?).await?;
    slow_smtp.set_delay(Duration::from_millis(1_500));
    notify.settings.smtp.relays = vec![relay("127.0.0.1", slow_smtp.port(), 10_000, SmtpTls::None)];
    let mut notify = notify.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = auth::PasswordChanged { user_id: user.to_string(), email: email.clone() };
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_changed", &event).await?;
    let sql = notify.sql().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The in-app item is written first, then the email goes to the relay
    // (its delivery row commits once the relay took it).
    while sql.query_opt("SELECT 1 FROM notifications WHERE user_id = $1", &[&user]).await?.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the handler never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = "SELECT status FROM email_deliveries WHERE to_address = $1";
    assert!(sql.query_opt(status, &[&email]).await?.is_none(), "mid-message: the email is not out yet");
    notify.shutdown.trigger();
    let running = notify.running.take().expect("started");
    tokio::time::timeout(Duration::from_secs(15), running.task).await???;
    // Ended: the email went out once and is recorded as sent.
    assert_eq!(mails_to(&email)?.len(), 1, "the email in hand was sent before the exit");
    let after: String = sql.query_one(status, &[&email]).await?.get(0);
    assert_eq!(after, "sent");
    Ok(())
}
