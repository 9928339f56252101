//! `tenx-admin` against a running platform: a poison message in billing's
//! queue found, redriven (and dead-lettered again by the consumer, so it
//! did reach it) and purged, with the operator's secret; refused without
//! an operator's credential.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tenx_admin::{Credential, run};
use tenx_proto::auth::v1::SignUpRequest;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_test_platform::Platform;
use tenx_test_support::{TestAmqp, eventually};

fn args(line: &str, platform: &Platform) -> Vec<String> {
    let mut args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    for (flag, addr) in [
        ("--auth-addr", platform.auth.grpc_addr),
        ("--billing-addr", platform.billing.grpc_addr),
        ("--notification-addr", platform.notification.grpc_addr),
    ] {
        args.extend([flag.to_owned(), addr.to_string()]);
    }
    args
}

async fn admin(line: &str, platform: &Platform, credential: Credential) -> anyhow::Result<String> {
    let mut out = Vec::new();
    run(&args(line, platform), credential, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

/// A new user's access token (no role).
async fn signed_up(platform: &Platform) -> anyhow::Result<String> {
    Ok(signed_up_as(platform).await?.0)
}

/// A new user's access token (no role) and email.
async fn signed_up_as(platform: &Platform) -> anyhow::Result<(String, String)> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", platform.auth.grpc_addr))?
        .connect()
        .await?;
    let request = SignUpRequest {
        email: format!("{}@admin-cli.tenx.test", uuid::Uuid::now_v7().simple()),
        password: "a password long enough".into(),
        ..Default::default()
    };
    let email = request.email.clone();
    let tokens = AuthServiceClient::new(channel).sign_up(request).await?.into_inner().tokens;
    Ok((tokens.ok_or_else(|| anyhow::anyhow!("no tokens"))?.access_token, email))
}

fn operator() -> Credential {
    Credential::Secret(tenx_auth::testing::client_secret("operator"))
}

/// billing's dead-letter queue and the depth `list` shows for it.
fn billing_dlq(listing: &str) -> anyhow::Result<(String, String, u32)> {
    let line =
        listing.lines().find(|l| l.starts_with("billing  ")).ok_or_else(|| anyhow::anyhow!("{listing}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    // billing <dlq> depth <n> (redrives to <work>)
    let work = words[6].trim_end_matches(')').to_owned();
    Ok((words[1].to_owned(), work, words[3].parse()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_redrives_and_purges_a_dead_letter_and_a_user_cannot() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let listing = admin("dead-letters list --service billing", &platform, operator()).await?;
    let (dlq, work, depth) = billing_dlq(&listing)?;
    assert_eq!(depth, 0, "{listing}");
    // Every service serves the unrouted queue they share; shown once.
    let everything = admin("dead-letters list", &platform, operator()).await?;
    let unrouted: Vec<&str> = everything.lines().filter(|l| l.contains(".unrouted  depth ")).collect();
    assert_eq!(unrouted.len(), 1, "{everything}");
    assert!(unrouted[0].starts_with("auth  ") && unrouted[0].ends_with(".events)"), "{everything}");

    // Bytes that are no event: billing's consumer dead-letters them.
    let broker = Connection::connect(TestAmqp::new().url(), ConnectionProperties::default()).await?;
    let channel = broker.create_channel().await?;
    channel
        .basic_publish(
            "".into(),
            work.as_str().into(),
            BasicPublishOptions::default(),
            b"poison",
            BasicProperties::default()
                .with_message_id("poison-cli".into())
                .with_type("auth.user.signed_up".into()),
        )
        .await?
        .await?;
    let dead_lettered = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listing =
                admin("dead-letters list --service billing --limit 5", &platform, operator()).await?;
            if billing_dlq(&listing)?.2 == 1 {
                return anyhow::Ok(listing);
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "never dead-lettered: {listing}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let listing = dead_lettered().await?;
    let message =
        listing.lines().find(|l| l.contains("poison-cli")).ok_or_else(|| anyhow::anyhow!("{listing}"))?;
    assert!(message.contains("auth.user.signed_up") && message.contains("undecodable"), "{message}");

    // Redriven: it leaves the dead-letter queue, reaches the consumer,
    // which dead-letters it again (it is still poison).
    let redriven = admin(
        &format!("dead-letters redrive --service billing --queue {dlq} --id poison-cli"),
        &platform,
        operator(),
    )
    .await?;
    // (remaining: 0, or 1 if the consumer has already sent it back.)
    assert!(redriven.starts_with(&format!("{dlq}: redriven 1, remaining ")), "{redriven}");
    dead_lettered().await?;

    // A purge must be confirmed; then it is gone.
    let unconfirmed =
        admin(&format!("dead-letters purge --service billing --queue {dlq} --all"), &platform, operator())
            .await;
    let error = unconfirmed.expect_err("purge without --yes");
    assert!(error.is::<tenx_admin::Usage>() && error.to_string().contains("--yes"), "{error}");
    let purged = admin(
        &format!("dead-letters purge --service billing --queue {dlq} --all --yes"),
        &platform,
        operator(),
    )
    .await?;
    assert_eq!(purged.trim(), format!("{dlq}: purged 1, remaining 0"));

    // A user without the admin role, a wrong secret, no credential at all.
    let user = Credential::Token(signed_up(&platform).await?);
    let error = admin("dead-letters list --service billing", &platform, user).await.expect_err("a user");
    assert!(error.to_string().contains("PermissionDenied"), "{error}");
    let wrong = Credential::Secret("not-the-operators-secret-at-all".into());
    let error = admin("dead-letters list", &platform, wrong).await.expect_err("a wrong secret");
    assert!(error.to_string().contains("operator's secret"), "{error}");
    let error = admin("dead-letters list", &platform, Credential::None).await.expect_err("no credential");
    assert!(error.to_string().contains("TENX_ADMIN_SECRET"), "{error}");
    Ok(())
}

#[tokio::test]
async fn mistakes_on_the_command_line_are_usage_errors_that_contact_nothing() -> anyhow::Result<()> {
    for (line, says) in [
        ("dead-letters redrive --service billing --queue q", "exactly one of"),
        ("dead-letters redrive --service billing --queue q --all --type t", "exactly one of"),
        ("dead-letters redrive --queue q --all", "needs --service"),
        ("dead-letters purge --service billing --all --yes", "needs --queue"),
        ("dead-letters list --service gateway", "one of auth, billing, notification"),
        ("dead-letters list --limit 0", "--limit"),
        ("dead-letters list --limit", "needs a value"),
        ("dead-letters peek", "unknown command"),
        ("dead-letters list --force", "unknown option"),
        ("status --service gateway", "one of auth, billing, notification"),
        ("user", "needs an email or a user id"),
    ] {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        // A credential that would fail if anything were contacted.
        let error = run(&args, Credential::None, &mut Vec::new()).await.expect_err(line);
        assert!(error.is::<tenx_admin::Usage>(), "{line}: {error}");
        assert!(error.to_string().contains(says), "{line}: {error}");
    }
    let mut out = Vec::new();
    run(&["--help".to_owned()], Credential::None, &mut out).await?;
    assert!(String::from_utf8(out)?.starts_with("usage: tenx-admin status"));
    Ok(())
}

#[tokio::test]
async fn status_keys_and_user_show_what_an_operator_checks_first_and_only_to_an_operator()
-> anyhow::Result<()> {
    // Every call to auth counts as slow, so its status lists some.
    let platform = Platform::start_with(|auth| auth.telemetry.slow_request_ms = 0).await?;

    // `token` prints the operator's token; it is what status accepts.
    let token = admin("token", &platform, operator()).await?;
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let status = admin("status", &platform, Credential::Token(token.to_owned())).await?;
    for service in ["auth", "billing", "notification"] {
        let head = status
            .lines()
            .find(|l| l.starts_with(&format!("{service}  ")))
            .ok_or_else(|| anyhow::anyhow!("no {service}: {status}"))?;
        assert!(head.ends_with("  ready"), "{head}");
    }
    assert_eq!(status.matches("  outbox  pending 0  oldest 0.0 s").count(), 3, "{status}");
    assert!(
        status.lines().any(|l| l.contains(".billing.customers.dlq  dead_letter  ready 0  consumers 0")),
        "{status}"
    );
    assert!(status.lines().any(|l| l.starts_with("  pool  ") && l.contains(" primary ")), "{status}");
    // The token's own issuing was a slow call to auth.
    assert!(
        status.lines().any(|l| l.starts_with("  slow  /tenx.auth.v1.AuthService/IssueServiceToken  code 0")),
        "{status}"
    );

    // auth's signing key, and when the schedule makes the next one.
    let keys = admin("keys", &platform, operator()).await?;
    let lines: Vec<&str> = keys.lines().collect();
    assert!(lines[0].starts_with("rotation: every 2592000 s; next key due 20"), "{keys}");
    assert!(lines[1].starts_with("current  ") && lines[1].contains("  signing since 20"), "{keys}");
    assert_eq!(lines.len(), 2, "one key: {keys}");

    // One account: looked up by the email it signed up with.
    let (token, email) = signed_up_as(&platform).await?;
    let shown = admin(&format!("user {email}"), &platform, operator()).await?;
    let lines: Vec<&str> = shown.lines().collect();
    assert!(lines[0].ends_with(&format!("  {email}  unverified  roles -")), "{shown}");
    assert!(
        lines[2].starts_with("  sessions 1  last login 20") && lines[2].ends_with("  api keys 0"),
        "{shown}"
    );
    assert_eq!(lines[3], "  logins not locked", "{shown}");
    let missing = admin("user nobody@admin-cli.tenx.test", &platform, operator()).await.expect_err("none");
    assert!(missing.to_string().contains("NotFound"), "{missing}");

    let user = Credential::Token(token);
    let error = admin(&format!("user {email}"), &platform, user.clone()).await.expect_err("a user");
    assert!(error.to_string().contains("PermissionDenied"), "{error}");
    let error = admin("keys", &platform, user.clone()).await.expect_err("a user");
    assert!(error.to_string().contains("PermissionDenied"), "{error}");
    let error = admin("status --service auth", &platform, user).await.expect_err("a user");
    assert!(error.to_string().contains("PermissionDenied"), "{error}");
    Ok(())
}

/// One number from a platform database.
async fn count(url: &str, sql: &str, email: &str) -> anyhow::Result<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client.query_one(sql, &[&email]).await?.get(0))
}

const CUSTOMERS: &str = "SELECT count(*) FROM billing.customers WHERE email = $1";
const WELCOMES: &str =
    "SELECT count(*) FROM notification.email_deliveries WHERE to_address = $1 AND template = 'welcome'";

/// billing loses a customer (as if its database came back from a backup
/// taken before the sign-up); replaying auth's events gives it back, and
/// notification, which already had the event, does not send the welcome
/// email twice.
#[tokio::test]
async fn a_replayed_window_restores_what_a_consumer_lost_and_changes_nothing_for_one_that_has_it()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let (token, email) = signed_up_as(&platform).await?;
    let (billing, notify) = (platform.billing_db_url(), platform.notify_db_url());
    eventually(Duration::from_secs(20), "billing's customer and the welcome email", || async {
        Ok(count(&billing, CUSTOMERS, &email).await? == 1 && count(&notify, WELCOMES, &email).await? == 1)
    })
    .await?;

    let (client, connection) = tokio_postgres::connect(&billing, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DELETE FROM billing.invoice_number_counters WHERE customer_id IN \
               (SELECT id FROM billing.customers WHERE email = '{email}'); \
             DELETE FROM billing.customers WHERE email = '{email}'; \
             DELETE FROM billing.tenx_inbox WHERE consumer = 'billing.customers'"
        ))
        .await?;
    assert_eq!(count(&billing, CUSTOMERS, &email).await?, 0);

    // Only an operator may replay.
    let refused = admin("replay --service auth --from 1h", &platform, Credential::Token(token)).await;
    assert!(refused.expect_err("a user").to_string().contains("PermissionDenied"));
    // A window with no event in it sends nothing.
    let empty = "replay --service auth --from 2099-01-01T00:00:00Z --to 2099-01-02T00:00:00Z";
    assert!(admin(empty, &platform, operator()).await?.starts_with("auth  replayed 0 events\n"));
    let replayed =
        admin("replay --service auth --from 1h --type auth.user.signed_up", &platform, operator()).await?;
    let lines: Vec<&str> = replayed.lines().collect();
    // This platform's auth published one sign-up (this test's), the oldest
    // event it keeps, so the hour before it is reported as not kept.
    assert_eq!(lines[0], "auth  replayed 1 auth.user.signed_up events", "{replayed}");
    assert!(lines[1].starts_with("  the outbox keeps events from 20"), "{replayed}");
    eventually(Duration::from_secs(20), "billing's customer back", || async {
        Ok(count(&billing, CUSTOMERS, &email).await? == 1)
    })
    .await?;
    // notification got the same message id: still one welcome email.
    assert_eq!(count(&notify, WELCOMES, &email).await?, 1);
    Ok(())
}

#[tokio::test]
async fn an_operator_grants_and_revokes_admin_from_the_command_line() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let (token, email) = signed_up_as(&platform).await?;
    let user = Credential::Token(token.clone());
    let refused = admin(&format!("grant-role {email} admin"), &platform, user.clone()).await;
    assert!(refused.expect_err("a user").to_string().contains("PermissionDenied"));

    let granted = admin(&format!("grant-role {email} admin"), &platform, operator()).await?;
    assert_eq!(granted.trim(), format!("{email}  roles admin  (admin granted; in the account's next token)"));
    let again = admin(&format!("grant-role {email} admin"), &platform, operator()).await?;
    assert_eq!(again.trim(), format!("{email}  roles admin  (admin already held)"));
    let revoked = admin(&format!("revoke-role {email} admin"), &platform, operator()).await?;
    assert_eq!(revoked.trim(), format!("{email}  roles -  (admin revoked; 1 session(s) ended)"));
    // The sign-up's session ended with the role: its token is refused.
    let error = admin("keys", &platform, user).await.expect_err("session ended");
    assert!(error.to_string().contains("Unauthenticated"), "{error}");
    let error =
        admin(&format!("grant-role {email} root"), &platform, operator()).await.expect_err("no such role");
    assert!(error.to_string().contains("InvalidArgument") && error.to_string().contains("role"), "{error}");
    Ok(())
}
