//! Events → email and in-app items: once, through failover, honouring
//! preferences.

use std::time::Duration;

use tenx_proto::auth::v1 as auth;
use tenx_proto::notification::v1 as pb;
use tenx_test_support::ChaosProxy;
use uuid::Uuid;

use tenx_common::metrics::exposition;
use tenx_notification::settings::SmtpTls;

use crate::support::{
    TestNotify, as_user, mails_to, relay, smtp_test_ca, subject, unique_email, wait_for_mails,
};

/// An operator's Send of `template` to `user`, in-app only.
fn in_app_send(user: Uuid, template: &str, data: &[(&str, &str)]) -> pb::SendRequested {
    let value =
        |v: &str| prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(v.to_owned())) };
    pb::SendRequested {
        notification_id: Uuid::now_v7().to_string(),
        user_id: user.to_string(),
        email: unique_email(),
        template: template.into(),
        channels: vec![pb::Channel::InApp.into()],
        data: Some(prost_types::Struct {
            fields: data.iter().map(|(k, v)| ((*k).to_owned(), value(v))).collect(),
        }),
    }
}

/// The consumer's count of messages that ended with `outcome`.
fn queue_outcome(metrics: &str, outcome: &str) -> u32 {
    let samples = exposition::parse(metrics);
    let mut counts = exposition::named(&samples, "tenx_queue_messages_total");
    counts.find(|s| s.label("outcome") == Some(outcome)).map_or(0, |s| s.value as u32)
}

#[tokio::test]
async fn a_signup_event_delivered_twice_sends_one_welcome_email_and_one_in_app_item() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event =
        auth::UserSignedUp { user_id: user.to_string(), email: email.clone(), display_name: "Ada".into() };
    let id = Uuid::now_v7().to_string();
    notify.publish(&id, "auth.user.signed_up", &event).await?;
    notify.publish(&id, "auth.user.signed_up", &event).await?; // a redelivery

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1, "exactly one welcome email");
    assert_eq!(subject(&mails[0]), "Welcome to tenx");
    assert!(mails[0].contains("Your tenx account for") && mails[0].contains(&email), "{}", mails[0]);
    assert!(mails[0].contains("text/html"), "a text and an HTML part");

    let inbox = notify
        .client()
        .await?
        .list_notifications(as_user(&user, pb::ListNotificationsRequest::default()))
        .await?
        .into_inner();
    assert_eq!(inbox.notifications.len(), 1);
    assert_eq!(inbox.notifications[0].title, "Welcome to tenx");
    assert_eq!(inbox.unread_count, 1);
    Ok(())
}

#[tokio::test]
async fn with_the_first_relay_down_the_email_goes_through_the_second() -> anyhow::Result<()> {
    let mut notify = TestNotify::new().await?;
    let dead = ChaosProxy::start("127.0.0.1:2525".parse()?).await?;
    dead.cut();
    notify.settings.smtp.relays = vec![
        relay("127.0.0.1", dead.port(), 1_000, SmtpTls::None),
        relay("127.0.0.1", 2525, 5_000, SmtpTls::None),
    ];
    let notify = notify.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = notify.reset_event(user, &email, "ABCD2345");
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_reset_requested", &event).await?;

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("ABCD2345"));
    let relay: String =
        notify.sql().await?.query_one("SELECT relay FROM email_deliveries", &[]).await?.get(0);
    assert_eq!(relay, "127.0.0.1:2525");
    Ok(())
}

#[tokio::test]
async fn a_relay_that_requires_tls_gets_starttls_and_one_without_it_is_skipped() -> anyhow::Result<()> {
    let mut notify = TestNotify::new().await?;
    // The plain sink offers no STARTTLS: with TLS required, that relay
    // fails before any mail is handed over; the TLS sink (a certificate
    // from the local test CA) takes the message.
    notify.settings.smtp.relays = vec![
        relay("127.0.0.1", 2525, 5_000, SmtpTls::Starttls),
        relay("localhost", 2587, 5_000, SmtpTls::Starttls),
    ];
    notify.settings.smtp.ca_file = Some(smtp_test_ca());
    let notify = notify.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = notify.reset_event(user, &email, "TLSC0DE9");
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_reset_requested", &event).await?;

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("TLSC0DE9"));
    let relay: String =
        notify.sql().await?.query_one("SELECT relay FROM email_deliveries", &[]).await?.get(0);
    assert_eq!(relay, "localhost:2587");
    Ok(())
}

#[tokio::test]
async fn a_tls_relay_whose_certificate_is_not_trusted_is_never_given_the_mail() -> anyhow::Result<()> {
    let mut notify = TestNotify::new().await?;
    // No ca_file: the local test CA is not among Mozilla's roots.
    notify.settings.smtp.relays = vec![relay("localhost", 2587, 5_000, SmtpTls::Starttls)];
    let notify = notify.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = auth::PasswordChanged { user_id: user.to_string(), email: email.clone() };
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_changed", &event).await?;

    let sql = notify.sql().await?;
    crate::support::eventually(Duration::from_secs(15), "a failed attempt recorded", || async {
        let row = sql.query_opt("SELECT last_error FROM email_deliveries", &[]).await?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)).is_some())
    })
    .await?;
    let error: String = sql.query_one("SELECT last_error FROM email_deliveries", &[]).await?.get(0);
    assert!(error.to_ascii_lowercase().contains("certificate"), "{error}");
    // Three attempts (amqp.max_attempts in tests), then the dead-letter queue.
    let admin =
        notify.running.as_ref().map(|r| r.admin_addr).ok_or_else(|| anyhow::anyhow!("not running"))?;
    crate::support::eventually(Duration::from_secs(15), "the email dead-lettered", || async {
        let (_, metrics) = tenx_test_support::http_get(admin, "/metrics").await?;
        Ok(metrics.lines().any(|l| l == "tenx_notification_dead_lettered_total{channel=\"email\"} 1"))
    })
    .await?;
    let (_, metrics) = tenx_test_support::http_get(admin, "/metrics").await?;
    assert!(
        metrics.lines().any(|l| l == "tenx_notification_retried_total{channel=\"email\"} 2"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l == "tenx_notification_failed_total{channel=\"email\"} 3"), "{metrics}");
    assert!(mails_to(&email)?.is_empty(), "nothing may reach an unverified relay");
    Ok(())
}

#[tokio::test]
async fn a_muted_category_is_not_emailed_but_a_critical_one_is() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let mut client = notify.client().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let mute = pb::Preference {
        category: "account".into(),
        channel: pb::Channel::Email as i32,
        enabled: false,
        critical: false,
    };
    client
        .update_preferences(as_user(&user, pb::UpdatePreferencesRequest { preferences: vec![mute] }))
        .await?;
    let critical = pb::Preference {
        category: "security".into(),
        channel: pb::Channel::Email as i32,
        enabled: false,
        critical: false,
    };
    let refused = client
        .update_preferences(as_user(&user, pb::UpdatePreferencesRequest { preferences: vec![critical] }))
        .await;
    assert_eq!(refused.expect_err("critical").code(), tonic::Code::FailedPrecondition);

    let welcome =
        auth::UserSignedUp { user_id: user.to_string(), email: email.clone(), display_name: "Ada".into() };
    notify.publish(&Uuid::now_v7().to_string(), "auth.user.signed_up", &welcome).await?;
    let reset = notify.reset_event(user, &email, "WXYZ2345");
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_reset_requested", &reset).await?;

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1, "only the critical email");
    assert!(mails[0].contains("WXYZ2345"));
    // The in-app channel of the muted category still works.
    let inbox = client
        .list_notifications(as_user(&user, pb::ListNotificationsRequest::default()))
        .await?
        .into_inner();
    assert_eq!(inbox.notifications.len(), 1);
    let prefs =
        client.get_preferences(as_user(&user, pb::GetPreferencesRequest {})).await?.into_inner().preferences;
    assert!(
        prefs.iter().any(|p| p.category == "account" && p.channel == pb::Channel::Email as i32 && !p.enabled)
    );
    assert!(prefs.iter().all(|p| !p.critical || p.enabled));
    Ok(())
}

#[tokio::test]
async fn a_job_delivered_again_after_it_was_sent_sends_nothing_more() -> anyhow::Result<()> {
    // What a consumer that died after sending but before acking sees on
    // redelivery: the same job again.
    let notify = TestNotify::new().await?;
    let app_settings = notify.settings.clone();
    let db = std::sync::Arc::new(tenx_common::db::Db::connect(
        &app_settings.database,
        "test",
        &Default::default(),
    )?);
    let layer = tenx_common::cache::CacheLayer::new(None, &Default::default());
    let deliverer = tenx_notification::deliver::Deliverer::new(
        db,
        std::sync::Arc::new(tenx_notification::templates::Templates::load(None).map_err(anyhow::Error::msg)?),
        tenx_notification::mailer::Mailer::new(&app_settings.smtp).map_err(anyhow::Error::msg)?,
        layer.cache("prefs", Default::default()),
        &Default::default(),
    );
    let email = unique_email();
    let job = tenx_notification::deliver::Job {
        dedupe: Uuid::now_v7().to_string(),
        user_id: Uuid::now_v7(),
        email: email.clone(),
        template: "password_changed".into(),
        data: serde_json::json!({ "email": email }),
        channels: vec![pb::Channel::Email, pb::Channel::InApp],
        last_attempt: false,
    };
    let (a, b) = tokio::join!(deliverer.deliver(&job), deliverer.deliver(&job));
    a?;
    b?;
    deliverer.deliver(&job).await?;
    assert_eq!(wait_for_mails(&email, 1).await?.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mails_to(&email)?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_consumer_whose_channel_dies_mid_message_gets_it_again_and_sends_once() -> anyhow::Result<()> {
    let mut notify = TestNotify::new().await?;
    // A slow relay keeps the handler busy; the broker connection dies meanwhile.
    let slow_smtp = ChaosProxy::start("127.0.0.1:2525".parse()?).await?;
    slow_smtp.set_delay(Duration::from_millis(1_500));
    notify.settings.smtp.relays = vec![relay("127.0.0.1", slow_smtp.port(), 10_000, SmtpTls::None)];
    let broker =
        ChaosProxy::start(tenx_test_support::addr_of(&notify.settings.amqp.url.expose().clone())?).await?;
    let direct = notify.settings.amqp.clone();
    notify.settings.amqp.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port()).into();
    let notify = notify.start().await?;

    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = auth::PasswordChanged { user_id: user.to_string(), email: email.clone() };
    let envelope = tenx_proto::events::v1::Envelope {
        id: Uuid::now_v7().to_string(),
        r#type: "auth.password_changed".into(),
        payload: prost::Message::encode_to_vec(&event),
        ..Default::default()
    };
    let publisher = tenx_common::queue::Publisher::new(tenx_common::queue::Amqp::new(&direct, "test-direct"));
    publisher.publish(&[tenx_common::queue::Outgoing::event(&direct.exchange_name(), &envelope)]).await?;

    // Mid-message: the handler has reached the relay, which has not
    // answered yet (it holds each connection 1.5 s). The email is sent
    // after the broker connection died, so its ack cannot go through.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow_smtp.accepted() == 0 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the handler never reached the relay");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill_connections();
    let sql = notify.sql().await?;
    assert_eq!(wait_for_mails(&email, 1).await?.len(), 1);
    // The redelivery (after the reconnect) finds the email sent and acks.
    let seen = std::sync::Mutex::new((u32::MAX, 0u32));
    let depth_zero = async {
        let amqp = tenx_common::queue::Amqp::new(&direct, "test-depth");
        let queue = tenx_notification::app::topology(&notify.settings).queue;
        loop {
            let channel = amqp.channel().await?;
            let q = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                    Default::default(),
                )
                .await?;
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = (q.message_count(), q.consumer_count());
            if q.message_count() == 0 && q.consumer_count() > 0 {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let Ok(drained) = tokio::time::timeout(Duration::from_secs(20), depth_zero).await else {
        let (ready, consumers) = *seen.lock().unwrap_or_else(|p| p.into_inner());
        anyhow::bail!("after 20 s the queue holds {ready} ready message(s) and {consumers} consumer(s)");
    };
    drained?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mails_to(&email)?.len(), 1, "sent once");
    let (status, attempts): (String, i32) = {
        let row = sql
            .query_one("SELECT status, attempts FROM email_deliveries WHERE to_address = $1", &[&email])
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!((status.as_str(), attempts), ("sent", 1));
    Ok(())
}

#[tokio::test]
async fn a_code_opens_only_with_auths_key_and_an_unsealed_one_from_an_older_auth_still_goes_out()
-> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    // Sealed with another key (auth and notification disagree): a dead
    // letter, kept sealed for a redrive once the keys agree; no email.
    let (user, email) = (Uuid::now_v7(), unique_email());
    let other = tenx_common::sealed::SealKey::parse("b3RoZXItZGV2ZWxvcG1lbnQta2V5LTMyLWJ5dGVzISE=")
        .map_err(anyhow::Error::msg)?;
    let mut forged = notify.reset_event(user, &email, "ABCD2345");
    forged.sealed_code = other.seal(b"ABCD2345", format!("password_reset:{user}:{email}").as_bytes());
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_reset_requested", &forged).await?;
    // A victim's sealed code copied into an event for the attacker's
    // address: it does not open either.
    let mut redirected = notify.reset_event(user, &email, "VICT1M23");
    redirected.email = unique_email();
    let attacker = redirected.email.clone();
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_reset_requested", &redirected).await?;
    let admin =
        notify.running.as_ref().map(|r| r.admin_addr).ok_or_else(|| anyhow::anyhow!("not running"))?;
    let queue = tenx_notification::app::topology(&notify.settings).queue;
    let dead = format!("tenx_queue_messages_total{{queue=\"{queue}\",outcome=\"dead_lettered\"}} 2");
    crate::support::eventually(Duration::from_secs(10), "the unopenable event dead-lettered", || async {
        let (_, metrics) = tenx_test_support::http_get(admin, "/metrics").await?;
        Ok(metrics.lines().any(|l| l == dead))
    })
    .await?;
    assert!(crate::support::mails_to(&email)?.is_empty(), "no email with a code nobody could read");
    assert!(crate::support::mails_to(&attacker)?.is_empty(), "no victim's code to another address");

    // An event written before sealing existed carries its code plain.
    let (user, email) = (Uuid::now_v7(), unique_email());
    #[allow(deprecated)]
    let legacy = auth::PasswordResetRequested {
        user_id: user.to_string(),
        email: email.clone(),
        code: "LEGACY23".into(),
        expires_in_minutes: 30,
        ..Default::default()
    };
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_reset_requested", &legacy).await?;
    assert!(wait_for_mails(&email, 1).await?[0].contains("LEGACY23"));
    Ok(())
}

#[tokio::test]
async fn emails_share_one_open_relay_connection_and_one_the_relay_dropped_is_replaced() -> anyhow::Result<()>
{
    let mut notify = TestNotify::new().await?;
    let relay_proxy = ChaosProxy::start("127.0.0.1:2525".parse()?).await?;
    notify.settings.smtp.relays = vec![relay("127.0.0.1", relay_proxy.port(), 5_000, SmtpTls::None)];
    let notify = notify.start().await?;
    let send = |code: &'static str| {
        let notify = &notify;
        async move {
            let (user, email) = (Uuid::now_v7(), unique_email());
            let event = notify.reset_event(user, &email, code);
            notify.publish(&Uuid::now_v7().to_string(), "auth.password_reset_requested", &event).await?;
            let mails = wait_for_mails(&email, 1).await?;
            anyhow::ensure!(mails[0].contains(code), "{}", mails[0]);
            anyhow::Ok(())
        }
    };
    // One after another: the first opens a connection, the rest reuse it.
    for code in ["REUSE001", "REUSE002", "REUSE003"] {
        send(code).await?;
    }
    assert_eq!(relay_proxy.accepted(), 1, "one connection for three emails");

    // The relay drops it while idle: the next email notices and opens another.
    relay_proxy.kill_connections();
    send("REUSE004").await?;
    assert_eq!(relay_proxy.accepted(), 2);
    let failed: i64 = notify
        .sql()
        .await?
        .query_one("SELECT count(*) FROM email_deliveries WHERE attempts <> 1 OR status <> 'sent'", &[])
        .await?
        .get(0);
    assert_eq!(failed, 0, "every email went on its first attempt");
    Ok(())
}

/// Publishes `sends` in one burst, each as `copies` messages with one
/// event id (a redelivery arriving at once).
async fn publish_sends(
    notify: &TestNotify,
    sends: &[pb::SendRequested],
    copies: usize,
) -> anyhow::Result<()> {
    let ids: Vec<String> = sends.iter().map(|_| Uuid::now_v7().to_string()).collect();
    let events: Vec<(&str, &str, &pb::SendRequested)> = ids
        .iter()
        .zip(sends)
        .flat_map(|(id, send)| {
            std::iter::repeat_n((id.as_str(), pb::SendRequested::EVENT_TYPE, send), copies)
        })
        .collect();
    notify.publish_all(&events).await
}

/// Waits until the consumer has acked `acked` messages and dead-lettered
/// `dead_lettered`; then the service's metrics.
async fn settled(notify: &TestNotify, acked: u32, dead_lettered: u32) -> anyhow::Result<String> {
    let admin =
        notify.running.as_ref().map(|r| r.admin_addr).ok_or_else(|| anyhow::anyhow!("not running"))?;
    let metrics = || async move { anyhow::Ok(tenx_test_support::http_get(admin, "/metrics").await?.1) };
    crate::support::eventually(Duration::from_secs(20), "the burst settled", || async {
        let metrics = metrics().await?;
        Ok(queue_outcome(&metrics, "acked") == acked
            && queue_outcome(&metrics, "dead_lettered") == dead_lettered)
    })
    .await?;
    metrics().await
}

/// `user`'s inbox, up to 100 items.
async fn inbox(notify: &TestNotify, user: &Uuid) -> anyhow::Result<pb::ListNotificationsResponse> {
    let request = pb::ListNotificationsRequest { page_size: 100, ..Default::default() };
    Ok(notify.client().await?.list_notifications(as_user(user, request)).await?.into_inner())
}

#[tokio::test]
async fn a_burst_with_every_event_delivered_twice_at_once_writes_and_counts_each_in_app_item_once()
-> anyhow::Result<()> {
    // In-app items of concurrent deliveries share one INSERT: a key asked
    // for twice in one batch, or once in each of two, must still be one
    // row, one unread item and one "sent".
    let notify = TestNotify::new().await?.start().await?;
    let user = Uuid::now_v7();
    let sends: Vec<pb::SendRequested> = (0..40)
        .map(|i| {
            let name = format!("User {i}");
            in_app_send(user, "welcome", &[("email", "burst@example.com"), ("display_name", &name)])
        })
        .collect();
    publish_sends(&notify, &sends, 2).await?;

    let metrics = settled(&notify, 80, 0).await?;
    assert!(metrics.lines().any(|l| l == "tenx_notification_sent_total{channel=\"in_app\"} 40"), "{metrics}");
    let inbox = inbox(&notify, &user).await?;
    assert_eq!(inbox.notifications.len(), 40, "one item per event");
    assert_eq!(inbox.unread_count, 40);
    Ok(())
}

#[tokio::test]
async fn an_item_the_database_refuses_fails_alone_and_the_rest_of_its_burst_is_written_once()
-> anyhow::Result<()> {
    // Items of a burst share one INSERT; a NUL character (which Postgres
    // text refuses) in one of them must fail only that one, straight to
    // the dead-letter queue, and not send its neighbours round the retries.
    let notify = TestNotify::new().await?.start().await?;
    let user = Uuid::now_v7();
    let sends: Vec<pb::SendRequested> = (0..11)
        .map(|i| {
            let role = if i == 5 { "admin\u{0}".to_owned() } else { format!("role {i}") };
            in_app_send(user, "org_role_changed", &[("role", &role), ("organization_name", "Acme")])
        })
        .collect();
    publish_sends(&notify, &sends, 1).await?;

    let metrics = settled(&notify, 10, 1).await?;
    assert_eq!(queue_outcome(&metrics, "retried"), 0, "nothing was retried: {metrics}");
    assert!(metrics.lines().any(|l| l == "tenx_notification_sent_total{channel=\"in_app\"} 10"), "{metrics}");
    let inbox = inbox(&notify, &user).await?;
    assert_eq!(inbox.notifications.len(), 10);
    assert!(inbox.notifications.iter().all(|n| !n.body.contains("admin")), "the refused one is not there");
    Ok(())
}

#[tokio::test]
async fn a_burst_to_many_users_honours_each_ones_own_preferences() -> anyhow::Result<()> {
    // Preferences of users notified at the same moment are read in one
    // query: each must still get exactly their own switches.
    let notify = TestNotify::new().await?.start().await?;
    let mut client = notify.client().await?;
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let mute = pb::Preference {
        category: "account".into(),
        channel: pb::Channel::InApp as i32,
        enabled: false,
        critical: false,
    };
    for user in users.iter().skip(1).step_by(2) {
        let muted = pb::UpdatePreferencesRequest { preferences: vec![mute.clone()] };
        client.update_preferences(as_user(user, muted)).await?;
    }
    let sends: Vec<pb::SendRequested> = users
        .iter()
        .map(|user| in_app_send(*user, "welcome", &[("email", "many@example.com"), ("display_name", "Ada")]))
        .collect();
    publish_sends(&notify, &sends, 1).await?;

    let metrics = settled(&notify, 20, 0).await?;
    assert!(metrics.lines().any(|l| l == "tenx_notification_sent_total{channel=\"in_app\"} 10"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l == "tenx_notification_skipped_total{channel=\"in_app\"} 10"),
        "{metrics}"
    );
    for (i, user) in users.iter().enumerate() {
        let inbox = inbox(&notify, user).await?;
        assert_eq!(inbox.notifications.len(), usize::from(i % 2 == 0), "user {i} (muted: {})", i % 2 == 1);
    }
    Ok(())
}
