//! The Stripe provider against localstripe (a stateful Stripe emulator
//! from PyPI, started by `make deps` on 127.0.0.1:8420): cards made as
//! Stripe.js makes them, PaymentIntents in two steps, declines, a crash
//! between the steps, and an asynchronous outcome settled by Stripe's
//! signed webhook.

use std::time::Duration;

use serde_json::Value;
use tenx_billing::provider::{ChargeOutcome, ChargeRequest, Owner, PaymentProvider};
use tenx_billing::stripe::StripeProvider;
use tenx_proto::billing::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;
use uuid::Uuid;

use crate::support::localstripe::{SECRET_KEY, address, card, sepa, stripe_api, with_stripe};
use crate::support::{TestBilling, as_user, assert_ledger_invariants, keyed, prices};

async fn add_method(
    client: &mut crate::support::Client,
    user: Uuid,
    token: &str,
) -> Result<pb::PaymentMethod, tonic::Status> {
    let request = pb::AddPaymentMethodRequest { token: token.into(), set_default: true };
    let added = client.add_payment_method(keyed(user, &format!("pm-{}", Uuid::new_v4()), request)).await?;
    Ok(added.into_inner().payment_method.unwrap_or_default())
}

async fn subscribe(
    client: &mut crate::support::Client,
    user: Uuid,
) -> anyhow::Result<pb::CreateSubscriptionResponse> {
    let request =
        pb::CreateSubscriptionRequest { price_id: prices::BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    Ok(client.create_subscription(keyed(user, "sub", request)).await?.into_inner())
}

async fn attempt_status(billing: &TestBilling, attempt: &str) -> anyhow::Result<(String, Option<String>)> {
    let row = billing
        .sql()
        .await?
        .query_one(
            "SELECT status, failure_code FROM payment_attempts WHERE id = $1",
            &[&Uuid::parse_str(attempt)?],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn intent_of(billing: &TestBilling, attempt: &str) -> anyhow::Result<Option<String>> {
    Ok(billing
        .sql()
        .await?
        .query_one(
            "SELECT provider_intent_id FROM payment_attempts WHERE id = $1",
            &[&Uuid::parse_str(attempt)?],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn a_card_from_stripe_js_pays_through_a_payment_intent_of_the_customers_own_stripe_customer()
-> anyhow::Result<()> {
    let billing = with_stripe("whsec_unused").await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let method = add_method(&mut client, user, &card("4242424242424242").await?).await?;
    assert_eq!((method.brand, method.last4.as_str()), (pb::CardBrand::Visa as i32, "4242"));
    assert_eq!((method.exp_month, method.exp_year), (12, 2034));

    let created = subscribe(&mut client, user).await?;
    let sub = created.subscription.unwrap_or_default();
    assert_eq!(sub.status, pb::SubscriptionStatus::Active as i32);
    let attempt = created.payment_attempt.unwrap_or_default();
    assert_eq!(attempt.status, pb::PaymentAttemptStatus::Succeeded as i32);

    // Stripe has the charge, for the invoice's amount, under the attempt.
    let intent =
        intent_of(&billing, &attempt.id).await?.ok_or_else(|| anyhow::anyhow!("no intent stored"))?;
    let (_, pi) = stripe_api("GET", &format!("/v1/payment_intents/{intent}"), &[]).await?;
    assert_eq!(pi["status"], "succeeded", "{pi}");
    assert_eq!(pi["amount"].as_i64(), Some(attempt.amount_minor));
    assert_eq!(pi["currency"], "usd");
    assert_eq!(pi["metadata"]["tenx_attempt_id"].as_str(), Some(attempt.id.as_str()));
    assert_eq!(pi["latest_charge"]["id"].as_str(), Some(attempt.provider_charge_id.as_str()));

    // A second card joins the same Stripe customer.
    add_method(&mut client, user, &card("5555555555554444").await?).await?;
    let refs: Vec<String> = billing
        .sql()
        .await?
        .query("SELECT provider_ref FROM payment_methods WHERE provider = 'stripe'", &[])
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let customers: std::collections::BTreeSet<&str> =
        refs.iter().filter_map(|r| r.split_once(':').map(|(c, _)| c)).collect();
    assert_eq!((refs.len(), customers.len()), (2, 1), "{refs:?}");
    let customer = customers.first().copied().unwrap_or_default();
    let (_, stripe_customer) = stripe_api("GET", &format!("/v1/customers/{customer}"), &[]).await?;
    assert_eq!(stripe_customer["metadata"]["tenx_customer_id"].as_str(), Some(sub.customer_id.as_str()));
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn stripes_declines_are_the_customers_and_unknown_or_refused_cards_are_invalid() -> anyhow::Result<()> {
    let billing = with_stripe("whsec_unused").await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    // Refused when attached (Stripe's 4000 0000 0000 0002), or unknown to Stripe.
    for token in [card("4000000000000002").await?, "pm_NoSuchMethod".to_owned()] {
        let refused = add_method(&mut client, user, &token).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{token}: {refused:?}");
        assert!(refused.message().contains("token"), "{refused:?}");
    }
    // Not a PaymentMethod id at all: no such method at the provider.
    let unknown = add_method(&mut client, user, "tok_visa").await.expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    // Attaches, then declines when charged (4000 0000 0000 0341).
    add_method(&mut client, user, &card("4000000000000341").await?).await?;
    let created = subscribe(&mut client, user).await?;
    let attempt = created.payment_attempt.unwrap_or_default();
    assert_eq!(attempt.status, pb::PaymentAttemptStatus::Failed as i32);
    assert_eq!(attempt.failure_code, pb::PaymentFailureCode::CardDeclined as i32);
    assert_eq!(created.subscription.map(|s| s.status), Some(pb::SubscriptionStatus::Incomplete as i32));
    let intent = intent_of(&billing, &attempt.id).await?.unwrap_or_default();
    let (_, pi) = stripe_api("GET", &format!("/v1/payment_intents/{intent}"), &[]).await?;
    assert_eq!(pi["status"], "requires_payment_method", "nothing captured: {pi}");

    // A card that needs 3-D Secure cannot be charged with the customer
    // away: declined, and its intent canceled so it can never complete later.
    let other = Uuid::now_v7();
    add_method(&mut client, other, &card("4000002500003155").await?).await?;
    let created = subscribe(&mut client, other).await?;
    let attempt = created.payment_attempt.unwrap_or_default();
    assert_eq!(attempt.failure_code, pb::PaymentFailureCode::CardDeclined as i32, "{attempt:?}");
    let intent = intent_of(&billing, &attempt.id).await?.unwrap_or_default();
    let (_, pi) = stripe_api("GET", &format!("/v1/payment_intents/{intent}"), &[]).await?;
    assert_eq!(pi["status"], "canceled", "{pi}");
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn an_intent_left_unconfirmed_by_a_crash_is_canceled_and_counts_as_not_charged() -> anyhow::Result<()> {
    let stripe = StripeProvider::new(
        &format!("http://{}", address()),
        SECRET_KEY.to_owned().into(),
        Duration::from_secs(2),
    )
    .map_err(anyhow::Error::msg)?;
    let owner = Owner { customer_id: Uuid::now_v7(), earlier_ref: None };
    let method = stripe.attach(owner, &card("4242424242424242").await?).await?;
    let request = |attempt_id, intent| ChargeRequest {
        attempt_id,
        provider_ref: &method.provider_ref,
        amount_minor: 1999,
        currency: "EUR",
        intent,
    };

    // The process stopped after the intent was stored, before confirming.
    let stranded = Uuid::now_v7();
    let intent = stripe.prepare(request(stranded, None)).await?.unwrap_or_default();
    assert_eq!(stripe.retrieve(stranded, Some(&intent)).await?, None, "not charged");
    let (_, pi) = stripe_api("GET", &format!("/v1/payment_intents/{intent}"), &[]).await?;
    assert_eq!(pi["status"], "canceled", "it can never be confirmed late: {pi}");
    // Stopped before even that was stored: nothing to find, nothing charged.
    assert_eq!(stripe.retrieve(Uuid::now_v7(), None).await?, None);

    // A confirmed one is found as it is.
    let paid = Uuid::now_v7();
    let intent = stripe.prepare(request(paid, None)).await?.unwrap_or_default();
    let charged = stripe.charge(request(paid, Some(&intent))).await?;
    assert!(matches!(charged, ChargeOutcome::Succeeded { .. }), "{charged:?}");
    assert_eq!(stripe.retrieve(paid, Some(&intent)).await?, Some(charged));
    Ok(())
}

/// Takes webhook deliveries on a port of its own and hands each (body,
/// `Stripe-Signature`) to the test, answering 200.
async fn webhook_receiver()
-> anyhow::Result<(String, tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, String)>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    // A path of its own: localstripe keeps every registration it was ever
    // given, so an earlier run's endpoint (another secret) may have had
    // this port; its deliveries are answered and dropped.
    let path = format!("/stripe/{}", Uuid::new_v4().simple());
    let url = format!("http://{}{path}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (tx, path) = (tx.clone(), path.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()))
                    };
                    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    if buffer.len() < end + 4 + length {
                        continue;
                    }
                    let body = buffer[end + 4..end + 4 + length].to_vec();
                    // Header values are case-sensitive: read the original.
                    let original = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    let signature = original
                        .lines()
                        .find_map(|l| {
                            l.split_once(':')
                                .filter(|(k, _)| k.eq_ignore_ascii_case("stripe-signature"))
                                .map(|(_, v)| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    if original.split_whitespace().nth(1) == Some(path.as_str()) {
                        let _ = tx.send((body, signature));
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
                    return;
                }
            });
        }
    });
    Ok((url, rx))
}

#[tokio::test]
async fn a_debit_that_fails_later_is_settled_when_stripes_signed_webhook_arrives() -> anyhow::Result<()> {
    let secret = format!("whsec_{}", Uuid::new_v4().simple());
    let (url, mut deliveries) = webhook_receiver().await?;
    let hook = format!("/_config/webhooks/tenx-{}", Uuid::new_v4().simple());
    let (status, _) = stripe_api("POST", &hook, &[("url", &url), ("secret", &secret)]).await?;
    assert_eq!(status, 200);
    let billing = with_stripe(&secret).await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    // localstripe's IBAN whose debit is refused by the bank, later.
    add_method(&mut client, user, &sepa("DE62370400440532013001").await?).await?;
    let created = subscribe(&mut client, user).await?;
    let attempt = created.payment_attempt.unwrap_or_default();
    assert_eq!(attempt.status, pb::PaymentAttemptStatus::Pending as i32, "accepted, outcome later");
    assert_eq!(
        created.subscription.as_ref().map(|s| s.status),
        Some(pb::SubscriptionStatus::Incomplete as i32)
    );
    // Nothing settles it before the webhook: its reconcile job is not due.
    billing.scheduler.run_due().await?;
    assert_eq!(attempt_status(&billing, &attempt.id).await?.0, "pending");

    // Stripe's event about it (others' events reach this endpoint too).
    let (payload, signature) = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (payload, signature) = deliveries.recv().await.expect("the receiver runs");
            let event: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            if event["type"] == "payment_intent.payment_failed"
                && event["data"]["object"]["metadata"]["tenx_attempt_id"].as_str()
                    == Some(attempt.id.as_str())
            {
                return (payload, signature);
            }
        }
    })
    .await?;
    let event = |payload: &[u8], signature: &str| pb::ReceiveProviderEventRequest {
        provider: "stripe".into(),
        payload: payload.to_vec(),
        signature: signature.to_owned(),
    };
    // Forged (the body changed under the signature): refused, nothing moves.
    let mut forged = payload.clone();
    let at = forged.iter().position(|b| *b == b'{').unwrap_or(0);
    forged.insert(at + 1, b' ');
    let refused = client.receive_provider_event(event(&forged, &signature)).await.expect_err("forged");
    assert_eq!(refused.code(), Code::Unauthenticated);
    billing.scheduler.run_due().await?;
    assert_eq!(attempt_status(&billing, &attempt.id).await?.0, "pending", "a forged event wakes nothing");

    let handled = client.receive_provider_event(event(&payload, &signature)).await?.into_inner();
    assert_eq!(handled.outcome, "handled");
    // The webhook made the attempt's reconcile job due now (the clock has
    // not moved): it asks Stripe, and settles.
    billing.scheduler.run_due().await?;
    let again = client.receive_provider_event(event(&payload, &signature)).await?.into_inner();
    assert_eq!(again.outcome, "duplicate", "each event is handled once");

    let sub = created.subscription.unwrap_or_default();
    let request = pb::GetSubscriptionRequest { subscription_id: sub.id.clone() };
    let now =
        client.get_subscription(as_user(user, request)).await?.into_inner().subscription.unwrap_or_default();
    assert_eq!(now.status, pb::SubscriptionStatus::Incomplete as i32, "unpaid: still incomplete");
    assert_eq!(
        attempt_status(&billing, &attempt.id).await?,
        ("failed".to_owned(), Some("card_declined".to_owned()))
    );
    assert_ledger_invariants(&billing).await
}
