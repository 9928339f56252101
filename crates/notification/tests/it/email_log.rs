//! The email delivery log and the redrive of a failed email: with the
//! relay unreachable an email fails every attempt and is logged FAILED
//! with its error; an operator finds it (by status, by user, page by page)
//! and redrives it once the relay is back; it is sent once, on the same
//! row, and its in-app item is not repeated. Who may do it, and what a
//! bad or repeated redrive gets.

use std::time::Duration;

use tenx_proto::auth::v1 as auth;
use tenx_proto::notification::v1 as pb;
use tenx_proto::notification::v1::email_delivery::Status;
use tenx_test_support::ChaosProxy;
use tonic::Code;
use uuid::Uuid;

use tenx_notification::settings::SmtpTls;

use crate::support::{AdminClient, TestNotify, as_user, mails_to, relay, unique_email, wait_for_mails};

async fn deliveries(
    admin: &mut AdminClient,
    status: Status,
    user: Option<Uuid>,
    limit: u32,
    page_token: &str,
) -> anyhow::Result<pb::ListEmailDeliveriesResponse> {
    let request = pb::ListEmailDeliveriesRequest {
        status: status as i32,
        user_id: user.map(|u| u.to_string()).unwrap_or_default(),
        limit,
        page_token: page_token.to_owned(),
    };
    Ok(admin.list_email_deliveries(request).await?.into_inner())
}

#[tokio::test]
async fn an_email_that_failed_every_attempt_is_logged_failed_and_an_operator_redrives_it_once()
-> anyhow::Result<()> {
    // The only relay is the SMTP sink behind a proxy the test cuts.
    let smtp = ChaosProxy::start("127.0.0.1:2525".parse()?).await?;
    let mut notify = TestNotify::new().await?;
    notify.settings.smtp.relays = vec![relay("127.0.0.1", smtp.port(), 2_000, SmtpTls::None)];
    let notify = notify.start().await?;
    let mut admin = notify.admin_client().await?;

    // One email goes through first, so the log holds a sent one too.
    let (sent_user, sent_email) = (Uuid::now_v7(), unique_email());
    let event = auth::PasswordChanged { user_id: sent_user.to_string(), email: sent_email.clone() };
    notify.publish(&Uuid::now_v7().to_string(), "auth.password_changed", &event).await?;
    wait_for_mails(&sent_email, 1).await?;

    smtp.cut();
    let (user, email, event_id) = (Uuid::now_v7(), unique_email(), Uuid::now_v7().to_string());
    let event = auth::PasswordChanged { user_id: user.to_string(), email: email.clone() };
    notify.publish(&event_id, "auth.password_changed", &event).await?;
    // Three attempts (amqp.max_attempts in tests), then FAILED.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let page = deliveries(&mut admin, Status::Failed, None, 0, "").await?;
        if let Some(failed) = page.deliveries.into_iter().next() {
            break failed;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the email never failed for good");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (failed.user_id.as_str(), failed.to_address.as_str(), failed.message_id.as_str(), failed.attempts),
        (user.to_string().as_str(), email.as_str(), event_id.as_str(), 3)
    );
    assert_eq!((failed.template.as_str(), failed.relay.as_str()), ("password_changed", ""));
    assert!(!failed.last_error.is_empty() && failed.sent_at.is_none(), "{failed:?}");
    // Its in-app item was delivered once already.
    let sql = notify.sql().await?;
    let in_app = "SELECT count(*) FROM notifications WHERE user_id = $1";
    assert_eq!(sql.query_one(in_app, &[&user]).await?.get::<_, i64>(0), 1);

    // The log, newest first, by user and page by page.
    let all = deliveries(&mut admin, Status::Unspecified, None, 0, "").await?;
    let ids: Vec<&str> = all.deliveries.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{all:?}");
    assert_eq!(ids[0], failed.id, "newest first");
    assert_eq!(all.deliveries[1].status(), Status::Sent);
    assert_eq!(all.deliveries[1].relay, format!("127.0.0.1:{}", smtp.port()));
    let first = deliveries(&mut admin, Status::Unspecified, None, 1, "").await?;
    assert_eq!((first.deliveries.len(), first.next_page_token.as_str()), (1, failed.id.as_str()));
    let second = deliveries(&mut admin, Status::Unspecified, None, 1, &first.next_page_token).await?;
    assert_eq!(second.deliveries[0].id, ids[1]);
    assert!(second.next_page_token.is_empty(), "the last page");
    let theirs = deliveries(&mut admin, Status::Unspecified, Some(sent_user), 0, "").await?;
    assert_eq!(
        theirs.deliveries.iter().map(|d| d.user_id.clone()).collect::<Vec<_>>(),
        [sent_user.to_string()]
    );

    // Redriving what did not fail, what is not there, or with a bad id.
    let sent_id = all.deliveries[1].id.clone();
    let refused = admin.redrive_email(pb::RedriveEmailRequest { id: sent_id }).await.expect_err("sent");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let missing = admin.redrive_email(pb::RedriveEmailRequest { id: Uuid::now_v7().to_string() }).await;
    assert_eq!(missing.expect_err("unknown").code(), Code::NotFound);
    let bad = admin.redrive_email(pb::RedriveEmailRequest { id: "x".into() }).await.expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("id"), "{bad:?}");
    let bad = admin
        .list_email_deliveries(pb::ListEmailDeliveriesRequest { limit: 101, ..Default::default() })
        .await
        .expect_err("limit");
    assert!(bad.code() == Code::InvalidArgument && bad.message().contains("limit"), "{bad:?}");
    // A user may neither read the log nor redrive.
    let mut client = notify.client().await?;
    let denied = client
        .redrive_email(as_user(&user, pb::RedriveEmailRequest { id: failed.id.clone() }))
        .await
        .expect_err("a user");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = client
        .list_email_deliveries(as_user(&user, pb::ListEmailDeliveriesRequest::default()))
        .await
        .expect_err("a user");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(mails_to(&email)?.is_empty());

    // The relay is back: the redrive sends it, once, on the same row.
    smtp.restore();
    admin.redrive_email(pb::RedriveEmailRequest { id: failed.id.clone() }).await?;
    wait_for_mails(&email, 1).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let sent = loop {
        let page = deliveries(&mut admin, Status::Unspecified, Some(user), 0, "").await?;
        let row = page.deliveries.into_iter().next().ok_or_else(|| anyhow::anyhow!("the row is gone"))?;
        if row.status() == Status::Sent {
            break row;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never marked sent: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((sent.id.as_str(), sent.attempts), (failed.id.as_str(), 4));
    assert!(sent.sent_at.is_some());
    // A second redrive finds nothing to do; nothing is sent twice.
    let again =
        admin.redrive_email(pb::RedriveEmailRequest { id: failed.id.clone() }).await.expect_err("again");
    assert_eq!(again.code(), Code::FailedPrecondition);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mails_to(&email)?.len(), 1);
    assert_eq!(sql.query_one(in_app, &[&user]).await?.get::<_, i64>(0), 1, "the in-app item is not repeated");
    Ok(())
}
