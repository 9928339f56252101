//! Send (idempotent, validated up front), the inbox, and bad input.

use prost_types::{Struct, Value, value::Kind};
use tenx_proto::notification::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::support::{TestNotify, as_user, subject, unique_email, wait_for_mails};

fn data(pairs: &[(&str, &str)]) -> Option<Struct> {
    Some(Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value { kind: Some(Kind::StringValue((*v).to_owned())) }))
            .collect(),
    })
}

fn send(user: Uuid, email: &str, key: &str) -> pb::SendRequest {
    pb::SendRequest {
        user_id: user.to_string(),
        email: email.to_owned(),
        template: "welcome".into(),
        channels: vec![pb::Channel::Email as i32, pb::Channel::InApp as i32],
        data: data(&[("email", email), ("display_name", "Grace")]),
        idempotency_key: key.to_owned(),
    }
}

#[tokio::test]
async fn send_is_idempotent_by_key_and_refuses_a_reused_key_with_another_request() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let mut client = notify.client().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let first = client.send(send(user, &email, "k1")).await?.into_inner();
    let again = client.send(send(user, &email, "k1")).await?.into_inner();
    assert_eq!(first.notification_id, again.notification_id);
    assert_eq!(first.channels.len(), 2);
    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1);
    assert_eq!(subject(&mails[0]), "Welcome to tenx");

    let mut other = send(user, &email, "k1");
    other.template = "password_changed".into();
    let reused = client.send(other).await.expect_err("reused key");
    assert_eq!(reused.code(), Code::FailedPrecondition);
    Ok(())
}

/// Only the parts of the channels asked for are rendered: an in-app
/// notification needs none of its email's variables.
#[tokio::test]
async fn an_in_app_only_send_needs_no_email_variables() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let mut client = notify.client().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let mut r = send(user, &email, "in-app-only");
    (r.channels, r.data) = (vec![pb::Channel::InApp as i32], data(&[]));
    assert_eq!(client.send(r).await?.into_inner().channels.len(), 1);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = pb::ListNotificationsRequest::default();
        let got = client.list_notifications(as_user(&user, list)).await?.into_inner();
        if let Some(item) = got.notifications.first() {
            assert_eq!(item.title, "Welcome to tenx");
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the in-app notification never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn the_inbox_pages_newest_first_and_marks_read() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let mut client = notify.client().await?;
    let user = Uuid::now_v7();
    let sql = notify.sql().await?;
    for i in 0..5 {
        sql.execute(
            "INSERT INTO notifications (id, user_id, category, title, body, dedupe_key, created_at) \
             VALUES ($1, $2, 'account', $3, 'b', $3, now() + make_interval(secs => $4))",
            &[&Uuid::now_v7(), &user, &format!("n{i}"), &f64::from(i)],
        )
        .await?;
    }
    let page =
        |token: String| pb::ListNotificationsRequest { page_size: 2, page_token: token, unread_only: false };
    let mut titles = Vec::new();
    let mut token = String::new();
    loop {
        let got = client.list_notifications(as_user(&user, page(token))).await?.into_inner();
        titles.extend(got.notifications.iter().map(|n| n.title.clone()));
        if got.next_page_token.is_empty() {
            break;
        }
        token = got.next_page_token;
    }
    assert_eq!(titles, ["n4", "n3", "n2", "n1", "n0"]);
    let first = client.list_notifications(as_user(&user, page(String::new()))).await?.into_inner();
    let ids: Vec<String> = first.notifications.iter().map(|n| n.id.clone()).collect();
    let marked = client
        .mark_read(as_user(&user, pb::MarkReadRequest { notification_ids: ids.clone() }))
        .await?
        .into_inner();
    assert_eq!(marked.updated, 2);
    let stranger = client
        .mark_read(as_user(&Uuid::now_v7(), pb::MarkReadRequest { notification_ids: ids }))
        .await?
        .into_inner();
    assert_eq!(stranger.updated, 0, "only the owner's notifications");
    let unread = client
        .list_notifications(as_user(
            &user,
            pb::ListNotificationsRequest { unread_only: true, ..Default::default() },
        ))
        .await?
        .into_inner();
    assert_eq!((unread.notifications.len(), unread.unread_count), (3, 3));
    Ok(())
}

fn invalid<T: std::fmt::Debug>(case: &str, result: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert_eq!(fields, vec![field.to_owned()], "{case}: {status:?}");
}

#[tokio::test]
async fn bad_input_to_every_rpc_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let mut c = notify.client().await?;
    let user = Uuid::now_v7();
    let email = unique_email();
    let sql_text = "'); DROP TABLE sends; --";
    let huge = "x".repeat(100_000);

    let mut r = send(user, &email, "k");
    r.user_id = sql_text.into();
    invalid("Send user_id", c.send(r).await, "user_id");
    for key in ["", huge.as_str()] {
        invalid("Send idempotency_key", c.send(send(user, &email, key)).await, "idempotency_key");
    }
    let mut r = send(user, &email, "k");
    r.channels = vec![];
    invalid("Send no channels", c.send(r).await, "channels");
    let mut r = send(user, &email, "k");
    r.channels = vec![0, 99];
    invalid("Send bad channel", c.send(r).await, "channels");
    for bad in ["", "not-an-email", sql_text] {
        invalid("Send email", c.send(send(user, bad, "k")).await, "email");
    }
    let mut r = send(user, &email, "k");
    r.data = data(&[("email", &email)]);
    invalid("Send missing variable", c.send(r).await, "data");
    let mut r = send(user, &email, "k");
    r.data = data(&[("email", &email), ("display_name", "x"), ("blob", &huge)]);
    invalid("Send huge data", c.send(r).await, "data");
    // A template without an in-app part cannot be sent in-app (it would
    // do nothing).
    let mut r = send(user, &email, "k");
    (r.template, r.channels) = ("verify_email".into(), vec![pb::Channel::InApp as i32]);
    invalid("Send in-app of an email-only template", c.send(r).await, "channels");
    let mut r = send(user, &email, "k");
    r.template = sql_text.into();
    assert_eq!(c.send(r).await.expect_err("unknown template").code(), Code::NotFound);

    invalid(
        "List page_size",
        c.list_notifications(as_user(
            &user,
            pb::ListNotificationsRequest { page_size: 1000, ..Default::default() },
        ))
        .await,
        "page_size",
    );
    invalid(
        "List page_token",
        c.list_notifications(as_user(
            &user,
            pb::ListNotificationsRequest { page_token: sql_text.into(), ..Default::default() },
        ))
        .await,
        "page_token",
    );
    invalid(
        "MarkRead empty",
        c.mark_read(as_user(&user, pb::MarkReadRequest::default())).await,
        "notification_ids",
    );
    invalid(
        "MarkRead bad id",
        c.mark_read(as_user(&user, pb::MarkReadRequest { notification_ids: vec![sql_text.into()] })).await,
        "notification_ids[0]",
    );
    let pref = |category: &str, channel: i32| pb::Preference {
        category: category.into(),
        channel,
        enabled: false,
        critical: false,
    };
    invalid(
        "UpdatePreferences empty",
        c.update_preferences(as_user(&user, pb::UpdatePreferencesRequest::default())).await,
        "preferences",
    );
    invalid(
        "UpdatePreferences category",
        c.update_preferences(as_user(
            &user,
            pb::UpdatePreferencesRequest { preferences: vec![pref(sql_text, 1)] },
        ))
        .await,
        "preferences[0].category",
    );
    invalid(
        "UpdatePreferences channel",
        c.update_preferences(as_user(
            &user,
            pb::UpdatePreferencesRequest { preferences: vec![pref("account", 7)] },
        ))
        .await,
        "preferences[0].channel",
    );
    let mut anonymous = notify.anonymous_client().await?;
    for call in [
        anonymous.list_notifications(pb::ListNotificationsRequest::default()).await.map(|_| ()),
        anonymous.get_preferences(pb::GetPreferencesRequest {}).await.map(|_| ()),
        anonymous.send(send(user, &email, "anonymous")).await.map(|_| ()),
    ] {
        assert_eq!(call.expect_err("no caller").code(), Code::Unauthenticated);
    }

    let sql = notify.sql().await?;
    for table in ["sends", "notifications", "preferences", "email_deliveries", "tenx_outbox"] {
        let n: i64 = sql.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0);
        assert_eq!(n, 0, "{table} written by a bad request");
    }
    Ok(())
}
