//! The operator console on the gateway's admin port, in a real headless
//! Chromium: an operator opens it with their token, sees every service
//! ready, finds a dead letter in billing's queue, redrives it with the
//! page's button, and billing processes it (the customer it creates
//! exists). A screenshot is kept in `target/test-artifacts/console.png`.
//! Beside it, its API as an attacker meets it: no token, a user's token,
//! a forged one, and bad input all refused, nothing moved.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prost::Message;
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::TestAmqp;
use tenx_test_support::browser::{Browser, artifact};

use crate::support::{Platform, Reply, bearer, send, sign_up, unique_email};

/// A token of the `operator` service client, as `tenx-admin token` prints.
async fn operator_token(platform: &Platform) -> anyhow::Result<String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", platform.auth.grpc_addr))?
        .connect()
        .await?;
    let request = auth::IssueServiceTokenRequest {
        service: "operator".into(),
        secret: tenx_auth::testing::client_secret("operator"),
    };
    Ok(AuthServiceClient::new(channel).issue_service_token(request).await?.into_inner().access_token)
}

/// billing's dead-letter queue, as the console's API names it.
async fn billing_dlq(admin: std::net::SocketAddr, token: &str) -> anyhow::Result<(String, u64)> {
    let reply = get(admin, "/console/api/dead-letters?service=billing", Some(token)).await?;
    anyhow::ensure!(reply.status == 200, "{} {}", reply.status, reply.text);
    let queue = &reply.json["queues"][0];
    Ok((queue["queue"].as_str().unwrap_or_default().to_owned(), queue["depth"].as_u64().unwrap_or(u64::MAX)))
}

async fn get(admin: std::net::SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<Reply> {
    let authorization = token.map(bearer);
    let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("authorization", a.as_str())).collect();
    send(admin, "GET", path, &headers, None).await
}

/// A valid `auth.user.signed_up` for a user billing has never seen, put
/// straight into billing's dead-letter queue as if its consumer had given
/// up on it (attempts and reason in the headers).
async fn dead_letter(dlq: &str, message_id: &str, user: uuid::Uuid) -> anyhow::Result<()> {
    let envelope = Envelope {
        id: message_id.to_owned(),
        r#type: "auth.user.signed_up".into(),
        aggregate_id: user.to_string(),
        payload: auth::UserSignedUp {
            user_id: user.to_string(),
            email: format!("{}@console.tenx.test", user.simple()),
            display_name: "Dee".into(),
        }
        .encode_to_vec(),
        ..Default::default()
    };
    let mut headers = FieldTable::default();
    headers.insert("x-tenx-attempt".into(), AMQPValue::LongString("5".into()));
    headers.insert("x-tenx-last-error".into(), AMQPValue::LongString("database unavailable".into()));
    let broker = Connection::connect(TestAmqp::new().url(), ConnectionProperties::default()).await?;
    let channel = broker.create_channel().await?;
    channel
        .basic_publish(
            "".into(),
            dlq.into(),
            BasicPublishOptions::default(),
            &envelope.encode_to_vec(),
            BasicProperties::default()
                .with_message_id(message_id.into())
                .with_type("auth.user.signed_up".into())
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await?
        .await?;
    broker.close(0, "done".into()).await?;
    Ok(())
}

async fn customers_of(platform: &Platform, user: uuid::Uuid) -> anyhow::Result<i64> {
    let (client, connection) =
        tokio_postgres::connect(&platform.billing_db_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client.query_one("SELECT count(*) FROM billing.customers WHERE user_id = $1", &[&user]).await?.get(0))
}

#[tokio::test]
async fn an_operator_redrives_a_dead_letter_from_the_console_in_chromium_and_billing_processes_it()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let admin = platform.gateway().await?.admin_addr;
    let token = operator_token(&platform).await?;
    let (dlq, depth) = billing_dlq(admin, &token).await?;
    assert_eq!(depth, 0);
    let (message_id, user) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7());
    dead_letter(&dlq, &message_id, user).await?;
    assert_eq!(customers_of(&platform, user).await?, 0, "dead-lettered: not processed yet");

    let browser = Browser::start().await?;
    let outcome = async {
        browser.goto(&format!("http://{admin}/console")).await?;
        let field = browser.wait_for("#token", Duration::from_secs(10)).await?;
        browser.type_into(&field, &token).await?;
        browser.click(&browser.wait_for("#sign-in", Duration::from_secs(5)).await?).await?;
        // Every service answered, and each is ready.
        for service in ["auth", "billing", "notification"] {
            browser
                .wait_for(
                    &format!("#services tr[data-service={service}][data-ok=true]"),
                    Duration::from_secs(15),
                )
                .await?;
        }
        let row = format!("tr[data-message-id=\"{message_id}\"]");
        browser.wait_for(&row, Duration::from_secs(15)).await?;
        let page = browser.page_text().await?;
        assert!(page.contains("database unavailable"), "the reason is shown: {page}");
        assert!(page.contains(&dlq), "the queue is named: {page}");
        std::fs::write(artifact("console.png")?, browser.screenshot().await?)?;

        browser
            .click(&browser.wait_for(&format!("{row} button.redrive"), Duration::from_secs(5)).await?)
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let notice = browser.text(&browser.wait_for("#notice", Duration::from_secs(5)).await?).await?;
            if notice.starts_with(&format!("{dlq}: redriven 1")) {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no redrive outcome shown: {notice:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        browser.wait_gone(&row, Duration::from_secs(15)).await?;
        std::fs::write(artifact("console-after-redrive.png")?, browser.screenshot().await?)?;
        anyhow::Ok(())
    }
    .await;
    browser.close().await?;
    outcome?;

    // Billing's consumer got it and created the customer, once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while customers_of(&platform, user).await? != 1 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the redriven event was never processed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(billing_dlq(admin, &token).await?.1, 0, "it left the dead-letter queue");
    Ok(())
}

#[tokio::test]
async fn the_console_api_refuses_anyone_but_an_operator_and_bad_input_moves_nothing() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gateway = platform.gateway().await?;
    let admin = gateway.admin_addr;
    let operator = operator_token(&platform).await?;
    let (dlq, _) = billing_dlq(admin, &operator).await?;
    let message_id = uuid::Uuid::now_v7().to_string();
    dead_letter(&dlq, &message_id, uuid::Uuid::now_v7()).await?;

    // The page itself is public and locked down: its own script only.
    let page = get(admin, "/console", None).await?;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    let (user_token, _, _) = sign_up(gateway.http_addr, &unique_email()).await?;
    let redrive = format!(r#"{{"service":"billing","queue":"{dlq}","all":true}}"#);
    for (who, authorization, status) in [
        ("nobody", None, 401),
        ("a forged token", Some("Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2lnbmF0dXJl".to_owned()), 401),
        ("a user without the admin role", Some(bearer(&user_token)), 403),
        ("not a bearer", Some(format!("Basic {operator}")), 401),
    ] {
        let headers: Vec<(&str, &str)> =
            authorization.iter().map(|a| ("authorization", a.as_str())).collect();
        for (method, path, body) in [
            ("GET", "/console/api/status", None),
            ("GET", "/console/api/dead-letters?service=billing", None),
            ("POST", "/console/api/dead-letters/redrive", Some(redrive.as_str())),
        ] {
            let reply = send(admin, method, path, &headers, body).await?;
            assert_eq!(reply.status, status, "{who}: {method} {path}: {}", reply.text);
            reply.error_code();
        }
    }

    // An operator's mistakes are named, and move nothing.
    let auth = bearer(&operator);
    let headers = [("authorization", auth.as_str())];
    for (body, field) in [
        (r#"{"service":"payments","queue":"x","all":true}"#.to_owned(), "service"),
        (format!(r#"{{"service":"billing","queue":"{dlq}"}}"#), "selection"),
        (format!(r#"{{"service":"billing","queue":"{dlq}","all":true,"event_type":"x"}}"#), "selection"),
        (r#"{"service":"billing","queue":"tenx.not-a-dlq","all":true}"#.to_owned(), "queue"),
        (r#"{"service":"billing","all":true"#.to_owned(), "body"),
    ] {
        let reply = send(admin, "POST", "/console/api/dead-letters/redrive", &headers, Some(&body)).await?;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert!(
            reply.json["error"]["message"].as_str().unwrap_or_default().contains(field),
            "{body}: {}",
            reply.text
        );
    }
    assert_eq!(billing_dlq(admin, &operator).await?.1, 1, "the dead letter is still there");

    // The status an operator sees: every service, with its checks.
    let status = get(admin, "/console/api/status", Some(&operator)).await?;
    assert_eq!(status.status, 200, "{}", status.text);
    let services = status.json["services"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = services.iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(names, ["auth", "billing", "notification"]);
    for service in &services {
        assert_eq!(service["ok"], true, "{service}");
        let checks = service["status"]["checks"].as_array().cloned().unwrap_or_default();
        assert!(checks.iter().any(|c| c["name"] == "postgres" && c["ok"] == true), "{service}");
    }
    let billing = &services[1]["status"];
    let dead = billing["queues"].as_array().cloned().unwrap_or_default();
    assert!(
        dead.iter().any(|q| q["queue"] == dlq.as_str() && q["kind"] == "dead_letter" && q["depth"] == 1),
        "billing's dead-letter depth is shown: {billing}"
    );
    Ok(())
}
