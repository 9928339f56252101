//! Organizations through the HTTP API alone: create one, invite a
//! colleague, who accepts by the emailed link and acts in it with the
//! role the invitation gave.

use std::time::Duration;

use serde_json::{Value, json};
use tenx_test_support::{eventually, mails};

use crate::support::{Platform, bearer, send, sign_up, unique_email};

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_person_creates_an_organization_and_a_colleague_joins_by_the_emailed_link() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?.http_addr;
    let (founder, _, _) = sign_up(gw, &unique_email()).await?;
    let created =
        send(gw, "POST", "/v1/orgs", &[("authorization", &bearer(&founder))], Some(r#"{"name":"Acme"}"#))
            .await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let org = text(&created.json["organization"]["organization_id"]);
    let body = json!({ "organization_id": org }).to_string();
    let switched =
        send(gw, "POST", "/v1/orgs/switch", &[("authorization", &bearer(&founder))], Some(&body)).await?;
    assert_eq!(switched.status, 200, "{}", switched.text);
    let owner = bearer(&text(&switched.json["access_token"]));

    let colleague = unique_email();
    let body = json!({ "email": colleague, "role": "billing" }).to_string();
    let invited = send(gw, "POST", "/v1/org/invitations", &[("authorization", &owner)], Some(&body)).await?;
    assert_eq!(invited.status, 201, "{}", invited.text);

    // The colleague's mailbox: the link to the app's page, with the token.
    let invitation = || -> anyhow::Result<Option<String>> {
        let mail = mails()?.into_iter().find(|m| m.to == colleague && m.raw.contains("invited"));
        Ok(mail.map(|m| m.text()))
    };
    eventually(Duration::from_secs(15), "the invitation email", || async { Ok(invitation()?.is_some()) })
        .await?;
    let text_part = invitation()?.unwrap_or_default();
    let start = text_part.find("http://localhost:3000/invitations/accept?token=").unwrap_or_default();
    let link = text_part[start..].split_whitespace().next().unwrap_or_default().to_owned();
    let token = link.split("token=").nth(1).unwrap_or_default().to_owned();
    assert!(token.starts_with("inv_"), "{link}");

    let (joined, _, _) = sign_up(gw, &colleague).await?;
    let body = json!({ "token": token }).to_string();
    let accepted =
        send(gw, "POST", "/v1/invitations/accept", &[("authorization", &bearer(&joined))], Some(&body))
            .await?;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    assert_eq!(accepted.json["membership"]["role"], "billing");
    let body = json!({ "organization_id": org }).to_string();
    let switched =
        send(gw, "POST", "/v1/orgs/switch", &[("authorization", &bearer(&joined))], Some(&body)).await?;
    let billing = bearer(&text(&switched.json["access_token"]));
    let members = send(gw, "GET", "/v1/org/members", &[("authorization", &billing)], None).await?;
    assert_eq!(members.status, 200, "{}", members.text);
    assert_eq!(members.json["members"].as_array().map(Vec::len), Some(2));
    // A billing member does not manage members (refused at the edge).
    let body = json!({ "email": unique_email(), "role": "member" }).to_string();
    let refused =
        send(gw, "POST", "/v1/org/invitations", &[("authorization", &billing)], Some(&body)).await?;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let log = send(gw, "GET", "/v1/org/audit-log", &[("authorization", &owner)], None).await?;
    assert_eq!(log.json["entries"][0]["action"], "member.joined", "{}", log.text);

    // The billing member pays for the organization, not for themselves.
    let card = [("authorization", billing.as_str()), ("idempotency-key", "org-card")];
    let added =
        send(gw, "POST", "/v1/billing/payment-methods", &card, Some(r#"{"token":"tok_success"}"#)).await?;
    assert_eq!(added.status, 201, "{}", added.text);
    let subscribe = json!({ "price_id": BUSINESS_MONTHLY_USD }).to_string();
    let headers = [("authorization", billing.as_str()), ("idempotency-key", "org-sub")];
    let created = send(gw, "POST", "/v1/billing/subscriptions", &headers, Some(&subscribe)).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json["invoice"]["status"], "paid", "{}", created.text);
    // Another person reads it: with the write's position, or a lagging
    // replica may not have it yet.
    let position = created.header("x-tenx-wal-position").unwrap_or_default().to_owned();
    assert!(position.starts_with("billing:"), "{position:?}");
    let read = [("authorization", owner.as_str()), ("x-tenx-wal-position", position.as_str())];
    let theirs = send(gw, "GET", "/v1/billing/subscriptions", &read, None).await?;
    assert_eq!(theirs.json["subscriptions"].as_array().map(Vec::len), Some(1), "{}", theirs.text);
    // Their own account (a new session, acting in no organization) pays for nothing.
    let login = json!({ "email": colleague, "password": crate::support::PASSWORD }).to_string();
    let own = send(gw, "POST", "/v1/auth/login", &[], Some(&login)).await?;
    let own = bearer(&text(&own.json["tokens"]["access_token"]));
    let personal = send(gw, "GET", "/v1/billing/subscriptions", &[("authorization", &own)], None).await?;
    assert_eq!(personal.status, 200, "{}", personal.text);
    assert!(personal.json["subscriptions"].as_array().is_none_or(Vec::is_empty), "{}", personal.text);

    // An organization's API key, made by the billing member, reads the
    // organization's billing (not its maker's own) until an owner revokes it.
    let key = json!({
        "name": "books",
        "scopes": ["billing:read"],
        "current_password": crate::support::PASSWORD,
        "organization_id": org,
    })
    .to_string();
    let made = send(gw, "POST", "/v1/me/api-keys", &[("authorization", &billing)], Some(&key)).await?;
    assert_eq!(made.status, 201, "{}", made.text);
    assert_eq!(made.json["api_key"]["organization_id"], org.as_str(), "{}", made.text);
    let secret = bearer(&text(&made.json["secret"]));
    let read = [("authorization", secret.as_str()), ("x-tenx-wal-position", position.as_str())];
    let by_key = send(gw, "GET", "/v1/billing/subscriptions", &read, None).await?;
    assert_eq!(by_key.json["subscriptions"].as_array().map(Vec::len), Some(1), "{}", by_key.text);
    let wider = json!({
        "name": "inbox",
        "scopes": ["notifications:read"],
        "current_password": crate::support::PASSWORD,
        "organization_id": org,
    })
    .to_string();
    let refused = send(gw, "POST", "/v1/me/api-keys", &[("authorization", &billing)], Some(&wider)).await?;
    assert_eq!(refused.status, 400, "{}", refused.text);
    let keys = send(gw, "GET", "/v1/org/api-keys", &[("authorization", &owner)], None).await?;
    assert_eq!(keys.json["api_keys"].as_array().map(Vec::len), Some(1), "{}", keys.text);
    let path = format!("/v1/org/api-keys/{}", text(&made.json["api_key"]["id"]));
    let revoked = send(gw, "DELETE", &path, &[("authorization", &owner)], None).await?;
    assert_eq!(revoked.status, 204, "{}", revoked.text);
    eventually(Duration::from_secs(1), "the revoked key refused", || async {
        Ok(send(gw, "GET", "/v1/billing/subscriptions", &read, None).await?.status == 401)
    })
    .await?;

    // An admin sees the organization's billing but does not change it.
    let (_, admin) = join(gw, &owner, "admin").await?;
    let seen = send(gw, "GET", "/v1/billing/subscriptions", &[("authorization", &admin)], None).await?;
    assert_eq!(seen.status, 200, "{}", seen.text);
    let headers = [("authorization", admin.as_str()), ("idempotency-key", "admin-card")];
    let refused =
        send(gw, "POST", "/v1/billing/payment-methods", &headers, Some(r#"{"token":"tok_success"}"#)).await?;
    assert_eq!(refused.status, 403, "{}", refused.text);

    // A plain member neither sees nor changes the organization's billing.
    let (_, member) = join(gw, &owner, "member").await?;
    let hidden = send(gw, "GET", "/v1/billing/subscriptions", &[("authorization", &member)], None).await?;
    assert_eq!(hidden.status, 403, "{}", hidden.text);
    let headers = [("authorization", member.as_str()), ("idempotency-key", "member-sub")];
    let refused = send(gw, "POST", "/v1/billing/subscriptions", &headers, Some(&subscribe)).await?;
    assert_eq!(refused.status, 403, "{}", refused.text);

    // Deleting the organization ends its subscription (billing consumes
    // `auth.org.deleted`).
    let deleted = send(gw, "DELETE", "/v1/org", &[("authorization", &owner)], None).await?;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let (db, conn) = tokio_postgres::connect(&platform.billing_db_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let org_id = uuid::Uuid::parse_str(&org)?;
    eventually(Duration::from_secs(15), "the organization's subscription canceled", || {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT count(*) FILTER (WHERE s.status = 'canceled'), count(*) FROM billing.subscriptions s \
                     JOIN billing.customers c ON c.id = s.customer_id WHERE c.user_id = $1",
                    &[&org_id],
                )
                .await?;
            Ok(row.get::<_, i64>(1) == 1 && row.get::<_, i64>(0) == 1)
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_person_pays_as_their_personal_organization_which_cannot_be_left_or_deleted() -> anyhow::Result<()>
{
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?.http_addr;
    let (token, _, user) = sign_up(gw, &unique_email()).await?;
    let person = bearer(&token);
    let card = [("authorization", person.as_str()), ("idempotency-key", "own-card")];
    let added =
        send(gw, "POST", "/v1/billing/payment-methods", &card, Some(r#"{"token":"tok_success"}"#)).await?;
    assert_eq!(added.status, 201, "{}", added.text);
    let subscribe = json!({ "price_id": BUSINESS_MONTHLY_USD }).to_string();
    let headers = [("authorization", person.as_str()), ("idempotency-key", "own-sub")];
    let created = send(gw, "POST", "/v1/billing/subscriptions", &headers, Some(&subscribe)).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let position = created.header("x-tenx-wal-position").unwrap_or_default().to_owned();

    // Their organizations: the personal one, whose id is their own.
    let mine = send(gw, "GET", "/v1/orgs", &[("authorization", &person)], None).await?;
    assert_eq!(
        mine.json["memberships"][0]["organization"]["organization_id"],
        user.as_str(),
        "{}",
        mine.text
    );
    assert_eq!(mine.json["memberships"][0]["organization"]["personal"], true, "{}", mine.text);
    assert_eq!(mine.json["memberships"][0]["role"], "owner", "{}", mine.text);
    // Acting in it is paying as themselves: the same subscription.
    let body = json!({ "organization_id": user }).to_string();
    let switched = send(gw, "POST", "/v1/orgs/switch", &[("authorization", &person)], Some(&body)).await?;
    assert_eq!(switched.status, 200, "{}", switched.text);
    let acting = bearer(&text(&switched.json["access_token"]));
    let read = [("authorization", acting.as_str()), ("x-tenx-wal-position", position.as_str())];
    let seen = send(gw, "GET", "/v1/billing/subscriptions", &read, None).await?;
    assert_eq!(seen.json["subscriptions"].as_array().map(Vec::len), Some(1), "{}", seen.text);
    assert_eq!(seen.json["subscriptions"][0]["id"], created.json["subscription"]["id"], "{}", seen.text);

    // An organization of one: nobody is invited into it, and it is neither
    // left nor deleted (its subscription is untouched).
    let invite = json!({ "email": unique_email(), "role": "member" }).to_string();
    let invited =
        send(gw, "POST", "/v1/org/invitations", &[("authorization", &acting)], Some(&invite)).await?;
    assert_eq!(
        (invited.status, invited.json["error"]["details"][0]["reason"].as_str()),
        (409, Some("PERSONAL_ORGANIZATION")),
        "{}",
        invited.text
    );
    let deleted = send(gw, "DELETE", "/v1/org", &[("authorization", &acting)], None).await?;
    assert_eq!(
        (deleted.status, deleted.json["error"]["details"][0]["reason"].as_str()),
        (409, Some("PERSONAL_ORGANIZATION")),
        "{}",
        deleted.text
    );
    let left = send(gw, "POST", "/v1/org/leave", &[("authorization", &acting)], Some("{}")).await?;
    assert_eq!(left.json["error"]["details"][0]["reason"], "PERSONAL_ORGANIZATION", "{}", left.text);
    let guard = send(
        gw,
        "PUT",
        "/v1/org/mfa-requirement",
        &[("authorization", &acting)],
        Some(r#"{"require_mfa":true}"#),
    )
    .await?;
    assert_eq!(guard.json["error"]["details"][0]["reason"], "PERSONAL_ORGANIZATION", "{}", guard.text);
    let still = send(gw, "GET", "/v1/billing/subscriptions", &read, None).await?;
    assert_eq!(still.json["subscriptions"][0]["status"], "active", "{}", still.text);
    Ok(())
}

pub(crate) const BUSINESS_MONTHLY_USD: &str = "20000000-0000-4000-8000-000000000004";

/// Invites a new account with `role` as `owner` (acting in the
/// organization), which signs up, takes the token from the email and
/// accepts; its sign-up token and its token acting in the organization.
pub(crate) async fn join(
    gw: std::net::SocketAddr,
    owner: &str,
    role: &str,
) -> anyhow::Result<(String, String)> {
    let email = unique_email();
    let body = json!({ "email": email, "role": role }).to_string();
    let invited = send(gw, "POST", "/v1/org/invitations", &[("authorization", owner)], Some(&body)).await?;
    anyhow::ensure!(invited.status == 201, "invite: {}", invited.text);
    let token = || -> anyhow::Result<Option<String>> {
        let mail = mails()?.into_iter().find(|m| m.to == email && m.raw.contains("invited"));
        Ok(mail.and_then(|m| {
            let text = m.text();
            let at = text.find("?token=")? + "?token=".len();
            text[at..].split_whitespace().next().map(str::to_owned)
        }))
    };
    eventually(Duration::from_secs(15), "the invitation email", || async { Ok(token()?.is_some()) }).await?;
    let token = token()?.unwrap_or_default();
    let (joined, _, _) = sign_up(gw, &email).await?;
    let body = json!({ "token": token }).to_string();
    let accepted =
        send(gw, "POST", "/v1/invitations/accept", &[("authorization", &bearer(&joined))], Some(&body))
            .await?;
    anyhow::ensure!(accepted.status == 200, "accept: {}", accepted.text);
    let org = text(&accepted.json["membership"]["organization"]["organization_id"]);
    let body = json!({ "organization_id": org }).to_string();
    let switched =
        send(gw, "POST", "/v1/orgs/switch", &[("authorization", &bearer(&joined))], Some(&body)).await?;
    Ok((joined, bearer(&text(&switched.json["access_token"]))))
}
