//! Billing through the gateway: the HTTP routes (idempotency keys,
//! replays, reasons of refusals, ownership) and the gRPC door.

use serde_json::{Value, json};
use tenx_proto::billing::v1 as pb;
use tenx_proto::billing::v1::billing_service_client::BillingServiceClient;
use tenx_test_support::eventually;
use tonic::Code;

use crate::support::{Platform, Reply, bearer, send, sign_up, unique_email};

const BUSINESS_MONTHLY_USD: &str = "20000000-0000-4000-8000-000000000004";
const PRO_MONTHLY_USD: &str = "20000000-0000-4000-8000-000000000002";
const BUSINESS_MONTHLY_JPY: &str = "20000000-0000-4000-8000-000000000007";

/// How many calls of `method` billing's gRPC server has received.
fn billing_calls(platform: &Platform, method: &str) -> f64 {
    platform
        .billing_metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("grpc_server_requests") && l.contains(method))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `reason`s of an error's details.
fn reasons(reply: &Reply) -> Vec<String> {
    reply.json["error"]["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["reason"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn signup_card_subscribe_replay_conflict_and_ownership_over_http() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let addr = gw.http_addr;
    let email = unique_email();
    let (token, _, user_id) = sign_up(addr, &email).await?;
    let auth = bearer(&token);

    // The catalog, anonymously: USD by default, money in minor units.
    let plans = send(addr, "GET", "/v1/billing/plans", &[], None).await?;
    assert_eq!(plans.status, 200, "{}", plans.text);
    let prices: Vec<&Value> = plans.json["plans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["prices"].as_array().into_iter().flatten())
        .collect();
    assert!(!prices.is_empty(), "{}", plans.text);
    assert!(prices.iter().all(|p| p["currency"] == "USD"), "{}", plans.text);
    let business = prices.iter().find(|p| p["id"] == BUSINESS_MONTHLY_USD).expect("business_monthly_usd");
    assert_eq!(business["unit_amount_minor"], 5000);
    assert_eq!(business["interval"], "month");
    let jpy = send(addr, "GET", "/v1/billing/plans?currency=JPY", &[], None).await?;
    assert_eq!(jpy.status, 200, "{}", jpy.text);
    assert!(jpy.text.contains(BUSINESS_MONTHLY_JPY), "{}", jpy.text);

    // Billing consumed auth's signup event (shared broker prefix).
    eventually(std::time::Duration::from_secs(20), "billing customer from the signup event", || {
        let (auth, email, user_id) = (auth.clone(), email.clone(), user_id.clone());
        async move {
            let c = send(addr, "GET", "/v1/billing/customer", &[("authorization", &auth)], None).await?;
            let found = c.status == 200
                && c.json["customer"]["email"] == email.as_str()
                && c.json["customer"]["user_id"] == user_id.as_str();
            if !found {
                // Within the caller's rate limit.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(found)
        }
    })
    .await?;

    let card = send(
        addr,
        "POST",
        "/v1/billing/payment-methods",
        &[("authorization", &auth), ("idempotency-key", "card-1")],
        Some(r#"{"token":"tok_success"}"#),
    )
    .await?;
    assert_eq!(card.status, 201, "{}", card.text);
    assert_eq!(card.json["payment_method"]["last4"], "4242");
    assert_eq!(card.json["payment_method"]["brand"], "visa");
    assert_eq!(card.json["payment_method"]["is_default"], true);

    let subscribe = json!({ "price_id": BUSINESS_MONTHLY_USD }).to_string();
    let headers = [("authorization", auth.as_str()), ("idempotency-key", "sub-1")];
    let created = send(addr, "POST", "/v1/billing/subscriptions", &headers, Some(&subscribe)).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("idempotent-replayed"), None);
    let sub = &created.json["subscription"];
    assert_eq!(sub["status"], "active", "{}", created.text);
    assert_eq!(sub["currency"], "USD");
    assert_eq!(sub["trial_end"], Value::Null, "no trial");
    let invoice = &created.json["invoice"];
    assert_eq!(invoice["status"], "paid", "{}", created.text);
    assert_eq!(invoice["billing_reason"], "subscription_create");
    assert_eq!(invoice["total_minor"], 5000);
    assert_eq!(invoice["amount_paid_minor"], 5000);
    assert_eq!(invoice["amount_remaining_minor"], 0);
    assert_eq!(invoice["currency"], "USD");
    assert!(invoice["paid_at"].as_str().is_some_and(|t| t.ends_with('Z')), "RFC 3339: {invoice}");
    assert_eq!(created.json["payment_attempt"]["status"], "succeeded");
    assert_eq!(created.json["payment_attempt"]["failure_code"], Value::Null);
    let invoice_id = invoice["id"].as_str().unwrap_or_default().to_owned();
    let subscription_id = sub["id"].as_str().unwrap_or_default().to_owned();

    // Read-your-writes across gateway instances: billing's position comes
    // back tagged as billing's, and another gateway given it reads the
    // write back (billing's reads go to the replica).
    let written = created.header("x-tenx-wal-position").unwrap_or_default().to_owned();
    assert!(written.starts_with("billing:"), "{written:?}");
    let other_gateway = platform.gateway().await?;
    let path = format!("/v1/billing/invoices/{invoice_id}");
    let read_headers = [("authorization", auth.as_str()), ("x-tenx-wal-position", written.as_str())];
    let read = send(other_gateway.http_addr, "GET", &path, &read_headers, None).await?;
    assert_eq!((read.status, &read.json["invoice"]["status"]), (200, &json!("paid")), "{}", read.text);

    // billing.invoice.paid travels through RabbitMQ to notification, which
    // emails the receipt (to the address auth's signup event gave billing).
    let number = invoice["number"].as_str().unwrap_or_default().to_owned();
    let maildir = std::path::PathBuf::from(
        std::env::var("TENX_TEST_SMTP_MAILDIR").unwrap_or_else(|_| "/tmp/tenx-smtp-sink/maildir".into()),
    );
    tenx_test_support::eventually(std::time::Duration::from_secs(20), "the receipt email", || {
        let (maildir, email, number) = (maildir.clone(), email.clone(), number.clone());
        async move {
            Ok(std::fs::read_dir(maildir.join("new"))?.filter_map(Result::ok).any(|entry| {
                std::fs::read_to_string(entry.path()).is_ok_and(|mail| {
                    mail.contains(&format!("To: {email}"))
                        && mail.contains(&format!("Receipt for invoice {number}"))
                })
            }))
        }
    })
    .await?;

    // The same key and request: the stored answer, marked as a replay.
    let replay = send(addr, "POST", "/v1/billing/subscriptions", &headers, Some(&subscribe)).await?;
    assert_eq!(replay.status, 201, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json, created.json, "a replay returns the same body");

    // The same key with another request: refused with its reason.
    let other = json!({ "price_id": PRO_MONTHLY_USD }).to_string();
    let reused = send(addr, "POST", "/v1/billing/subscriptions", &headers, Some(&other)).await?;
    assert_eq!(reused.status, 409, "{}", reused.text);
    assert_eq!(reused.error_code(), "failed_precondition");
    assert_eq!(reasons(&reused), ["IDEMPOTENCY_KEY_REUSED"], "{}", reused.text);
    assert_eq!(reused.json["error"]["details"][0]["domain"], "billing.tenx");

    // A state refusal carries billing's reason too.
    let yen = json!({ "price_id": BUSINESS_MONTHLY_JPY }).to_string();
    let mismatch = send(
        addr,
        "POST",
        "/v1/billing/subscriptions",
        &[("authorization", &auth), ("idempotency-key", "sub-jpy")],
        Some(&yen),
    )
    .await?;
    assert_eq!(mismatch.status, 409, "{}", mismatch.text);
    assert_eq!(reasons(&mismatch), ["CURRENCY_MISMATCH"], "{}", mismatch.text);

    let one =
        send(addr, "GET", &format!("/v1/billing/invoices/{invoice_id}"), &[("authorization", &auth)], None)
            .await?;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json["invoice"]["lines"][0]["kind"], "subscription");
    assert_eq!(one.json["invoice"]["lines"][0]["amount_minor"], 5000);
    assert_eq!(one.json["invoice"]["payment_attempts"].as_array().map(Vec::len), Some(1));
    let listed =
        send(addr, "GET", "/v1/billing/invoices?status=paid,open", &[("authorization", &auth)], None).await?;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.json["invoices"][0]["id"], invoice_id.as_str());
    let got = send(
        addr,
        "GET",
        &format!("/v1/billing/subscriptions/{subscription_id}"),
        &[("authorization", &auth)],
        None,
    )
    .await?;
    assert_eq!(got.json["subscription"]["status"], "active", "{}", got.text);
    let pay_again = send(
        addr,
        "POST",
        &format!("/v1/billing/invoices/{invoice_id}/pay"),
        &[("authorization", &auth), ("idempotency-key", "pay-1")],
        Some("{}"),
    )
    .await?;
    assert_eq!(pay_again.status, 409, "{}", pay_again.text);
    assert_eq!(reasons(&pay_again), ["INVOICE_NOT_PAYABLE"]);

    // Another user: A's invoice does not exist for them, whatever
    // identity or roles headers they add.
    let (other_token, _, _) = sign_up(addr, &unique_email()).await?;
    let other_auth = bearer(&other_token);
    let foreign = send(
        addr,
        "GET",
        &format!("/v1/billing/invoices/{invoice_id}"),
        &[("authorization", &other_auth), ("x-tenx-user-id", &user_id), ("x-tenx-roles", "admin")],
        None,
    )
    .await?;
    assert_eq!(foreign.status, 404, "{}", foreign.text);
    assert_eq!(foreign.error_code(), "not_found");

    // A mutation without its key: 400 at the edge, billing never called.
    let before = billing_calls(&platform, "CreateSubscription");
    assert!(before >= 3.0, "billing's counter sees the calls above: {before}");
    let keyless =
        send(addr, "POST", "/v1/billing/subscriptions", &[("authorization", &other_auth)], Some(&subscribe))
            .await?;
    assert_eq!(keyless.status, 400, "{}", keyless.text);
    assert_eq!(keyless.error_code(), "invalid_argument");
    assert_eq!(keyless.json["error"]["details"][0]["field"], "Idempotency-Key", "{}", keyless.text);
    let empty_key = send(
        addr,
        "POST",
        "/v1/billing/subscriptions",
        &[("authorization", &other_auth), ("idempotency-key", "")],
        Some(&subscribe),
    )
    .await?;
    assert_eq!(empty_key.status, 400, "{}", empty_key.text);
    assert_eq!(billing_calls(&platform, "CreateSubscription"), before, "billing was not called");

    // Anonymous callers reach the catalog only.
    let anonymous = send(addr, "GET", "/v1/billing/customer", &[], None).await?;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text);
    Ok(())
}

fn authed<T>(token: &str, key: Option<&str>, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer(token).parse()?);
    if let Some(key) = key {
        request.metadata_mut().insert("idempotency-key", key.parse()?);
    }
    Ok(request)
}

#[tokio::test]
async fn billing_over_grpc_catalog_is_anonymous_mutations_need_a_token_operator_rpcs_do_not_exist()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let mut billing = BillingServiceClient::connect(format!("http://{}", gw.grpc_addr)).await?;

    let plans = billing.list_plans(pb::ListPlansRequest::default()).await?.into_inner();
    assert!(plans.plans.iter().flat_map(|p| &p.prices).any(|p| p.id == BUSINESS_MONTHLY_USD));

    let create = || pb::CreateSubscriptionRequest { price_id: PRO_MONTHLY_USD.into(), ..Default::default() };
    let mut spoofed = tonic::Request::new(create());
    spoofed.metadata_mut().insert("x-tenx-user-id", uuid::Uuid::now_v7().to_string().parse()?);
    spoofed.metadata_mut().insert("idempotency-key", "k".parse()?);
    let refused = billing.create_subscription(spoofed).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let keyless = billing.create_subscription(authed(&token, None, create())?).await.expect_err("no key");
    assert_eq!(keyless.code(), Code::InvalidArgument, "{keyless:?}");
    let trial = billing.create_subscription(authed(&token, Some("trial-1"), create())?).await?;
    // Billing's write position, for the read below (reads go to the replica).
    let written =
        trial.metadata().get("x-tenx-wal-position").cloned().expect("a write answers with its position");
    let subscription = trial.into_inner().subscription.unwrap_or_default();
    assert_eq!(subscription.status, pb::SubscriptionStatus::Trialing as i32);
    let replay = billing.create_subscription(authed(&token, Some("trial-1"), create())?).await?;
    assert_eq!(replay.metadata().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    let mut read = authed(&token, None, pb::GetCustomerRequest::default())?;
    read.metadata_mut().insert("x-tenx-wal-position", written);
    let mine = billing.get_customer(read).await?;
    let customer_id = mine.into_inner().customer.unwrap_or_default().id;

    // Roles never come from clients: "admin" would let another user read
    // this customer by id.
    let (other, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let mut as_admin = authed(&other, None, pb::GetCustomerRequest { customer_id })?;
    as_admin.metadata_mut().insert("x-tenx-roles", "admin".parse()?);
    let hidden = billing.get_customer(as_admin).await.expect_err("not theirs");
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");

    // Operator and service-to-service RPCs are not public.
    let mut usage = authed(&token, Some("u-1"), pb::RecordUsageRequest::default())?;
    usage.metadata_mut().insert("x-tenx-roles", "admin".parse()?);
    assert_eq!(billing.record_usage(usage).await.expect_err("not public").code(), Code::Unimplemented);
    let ledger = authed(&token, None, pb::ListLedgerEntriesRequest::default())?;
    assert_eq!(
        billing.list_ledger_entries(ledger).await.expect_err("not public").code(),
        Code::Unimplemented
    );
    Ok(())
}

#[tokio::test]
async fn stripes_webhook_reaches_billing_untouched_and_only_a_true_signature_is_taken() -> anyhow::Result<()>
{
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let addr = gw.http_addr;
    let path = "/v1/billing/webhooks/stripe";
    let event =
        json!({"id": format!("evt_{}", uuid::Uuid::new_v4().simple()), "type": "payment_intent.succeeded",
        "data": {"object": {"object": "payment_intent", "id": "pi_unknown",
            "metadata": {"tenx_attempt_id": uuid::Uuid::now_v7().to_string()}}}})
        .to_string();
    let now = std::time::SystemTime::now();
    let signed =
        tenx_billing::webhook::sign(event.as_bytes(), tenx_test_platform::STRIPE_WEBHOOK_SECRET, now);

    // No signature, another secret's, or the body changed under it: 401.
    let forged = tenx_billing::webhook::sign(event.as_bytes(), "whsec_attacker", now);
    let altered = event.replace("succeeded", "canceled");
    for (signature, body) in [(None, &event), (Some(&forged), &event), (Some(&signed), &altered)] {
        let headers: Vec<(&str, &str)> = signature.iter().map(|s| ("stripe-signature", s.as_str())).collect();
        let refused = send(addr, "POST", path, &headers, Some(body)).await?;
        assert_eq!(
            (refused.status, refused.error_code().as_str()),
            (401, "unauthenticated"),
            "{}",
            refused.text
        );
    }
    // Signed by the endpoint's secret, the bytes exactly as sent: taken
    // (about no attempt of billing's: ignored), once.
    let taken = send(addr, "POST", path, &[("stripe-signature", &signed)], Some(&event)).await?;
    assert_eq!((taken.status, taken.json["outcome"].as_str()), (200, Some("ignored")), "{}", taken.text);
    let again = send(addr, "POST", path, &[("stripe-signature", &signed)], Some(&event)).await?;
    assert_eq!(again.json["outcome"], "duplicate", "{}", again.text);
    Ok(())
}
