//! RefundPayment: operators give back money of a succeeded payment, in
//! full or in parts, never more than it; through the provider (the
//! simulator, and Stripe's Refunds against localstripe); the ledger
//! records a credit note and the refund, and the customer is told.

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::localstripe::{self, stripe_api};
use crate::support::{
    Client, TestBilling, add_card, as_admin, assert_ledger_invariants, events, keyed, prices, reason,
};

/// A paid subscription's payment: (attempt id, amount).
async fn paid(client: &mut Client, user: Uuid, token: &str) -> anyhow::Result<pb::PaymentAttempt> {
    add_card(client, user, token).await?;
    let request =
        pb::CreateSubscriptionRequest { price_id: prices::BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    let created = client.create_subscription(keyed(user, "sub", request)).await?.into_inner();
    let attempt = created.payment_attempt.unwrap_or_default();
    anyhow::ensure!(attempt.status == pb::PaymentAttemptStatus::Succeeded as i32, "not paid: {attempt:?}");
    Ok(attempt)
}

fn refund(
    operator: Uuid,
    key: &str,
    attempt: &str,
    amount: i64,
    why: &str,
) -> tonic::Request<pb::RefundPaymentRequest> {
    let message = pb::RefundPaymentRequest {
        payment_attempt_id: attempt.into(),
        amount_minor: amount,
        reason: why.into(),
    };
    let mut request = as_admin(operator, message);
    if let Ok(key) = key.parse() {
        request.metadata_mut().insert("idempotency-key", key);
    }
    request
}

/// Σ of an account's entries about one payment.
async fn balance(billing: &TestBilling, account: &str, attempt: &str) -> anyhow::Result<i64> {
    Ok(billing
        .sql()
        .await?
        .query_one(
            "SELECT COALESCE(sum(e.amount_minor), 0)::bigint FROM ledger_entries e \
             JOIN ledger_transactions t ON t.id = e.transaction_id \
             WHERE e.account = $1 AND t.payment_attempt_id = $2",
            &[&account, &Uuid::parse_str(attempt)?],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn a_payment_is_refunded_in_parts_up_to_its_amount_and_never_beyond() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let (user, operator) = (Uuid::now_v7(), Uuid::now_v7());
    let payment = paid(&mut client, user, "tok_success").await?;
    assert_eq!(payment.amount_minor, 5000);

    let part =
        client.refund_payment(refund(operator, "r1", &payment.id, 2000, "goodwill")).await?.into_inner();
    let part = part.refund.unwrap_or_default();
    assert_eq!((part.status, part.amount_minor), (pb::RefundStatus::Succeeded as i32, 2000));
    assert!(part.provider_refund_id.starts_with("re_sim_"), "{part:?}");
    // The same key again: the same refund, not a second one.
    let again = client.refund_payment(refund(operator, "r1", &payment.id, 2000, "goodwill")).await?;
    assert_eq!(again.metadata().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(again.into_inner().refund.map(|r| r.id), Some(part.id.clone()), "the same refund");
    // 0: all that is left.
    let rest =
        client.refund_payment(refund(operator, "r2", &payment.id, 0, "canceled order")).await?.into_inner();
    assert_eq!(rest.refund.map(|r| r.amount_minor), Some(3000));
    let beyond =
        client.refund_payment(refund(operator, "r3", &payment.id, 1, "more")).await.expect_err("beyond");
    assert_eq!(
        (beyond.code(), reason(&beyond).as_str()),
        (Code::FailedPrecondition, "REFUND_EXCEEDS_PAYMENT")
    );

    // The ledger: what the provider took is back out of clearing; the
    // credit notes' customer credit went back with the refunds.
    assert_eq!(balance(&billing, "provider_clearing", &payment.id).await?, 0);
    assert_eq!(balance(&billing, "customer_credit", &payment.id).await?, 0);
    assert_eq!(balance(&billing, "revenue_subscriptions", &payment.id).await?, 5000);
    assert_eq!(events(&billing, "billing.payment.refunded").await?, 2);
    assert_ledger_invariants(&billing).await
}

/// The status of the one refund in `billing`.
async fn only_refund_status(billing: &TestBilling) -> anyhow::Result<String> {
    Ok(billing.sql().await?.query_one("SELECT status FROM refunds", &[]).await?.get(0))
}

#[tokio::test]
async fn a_refund_whose_answer_is_lost_is_settled_by_its_reconcile_job_though_nobody_retries()
-> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let (user, operator) = (Uuid::now_v7(), Uuid::now_v7());
    // The provider makes this card's refunds, then their answers are lost.
    let payment = paid(&mut client, user, "tok_refund_answer_lost").await?;
    let lost =
        client.refund_payment(refund(operator, "r1", &payment.id, 1500, "goodwill")).await.expect_err("lost");
    assert_eq!((lost.code(), reason(&lost).as_str()), (Code::Unavailable, "PROVIDER_TIMEOUT"));
    assert_eq!(only_refund_status(&billing).await?, "pending");
    // While unknown, it holds its amount: no more than the rest is refundable.
    let beyond =
        client.refund_payment(refund(operator, "r2", &payment.id, 3600, "more")).await.expect_err("beyond");
    assert_eq!(reason(&beyond), "REFUND_EXCEEDS_PAYMENT");

    // Not yet due: nothing is decided. Once due, the scheduler asks the
    // provider and records the refund it made, once.
    billing.advance(std::time::Duration::from_secs(30)).await?;
    assert_eq!(only_refund_status(&billing).await?, "pending");
    billing.advance(std::time::Duration::from_secs(31)).await?;
    assert_eq!(only_refund_status(&billing).await?, "succeeded");
    assert_eq!(balance(&billing, "provider_clearing", &payment.id).await?, 5000 - 1500);
    assert_eq!(events(&billing, "billing.payment.refunded").await?, 1);

    // The operator's late retry is answered with the settled refund; no
    // second refund is made or recorded.
    let retried = client.refund_payment(refund(operator, "r1", &payment.id, 1500, "goodwill")).await?;
    let retried = retried.into_inner().refund.unwrap_or_default();
    assert_eq!((retried.status, retried.amount_minor), (pb::RefundStatus::Succeeded as i32, 1500));
    billing.advance(std::time::Duration::from_secs(120)).await?;
    assert_eq!(events(&billing, "billing.payment.refunded").await?, 1);
    assert_eq!(balance(&billing, "provider_clearing", &payment.id).await?, 5000 - 1500);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn only_operators_refund_and_bad_or_unrefundable_requests_change_nothing() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let (user, operator) = (Uuid::now_v7(), Uuid::now_v7());
    let payment = paid(&mut client, user, "tok_success").await?;
    // The customer themselves may not.
    let message = pb::RefundPaymentRequest {
        payment_attempt_id: payment.id.clone(),
        amount_minor: 0,
        reason: "mine".into(),
    };
    let denied = client.refund_payment(keyed(user, "self", message)).await.expect_err("not an operator");
    assert_eq!(denied.code(), Code::PermissionDenied);
    for (request, field) in [
        (refund(operator, "b1", &payment.id, -1, "x"), "amount_minor"),
        (refund(operator, "b2", &payment.id, 10, " "), "reason"),
        (refund(operator, "b3", "nope", 10, "x"), "payment_attempt_id"),
        (refund(operator, "b4", &payment.id, 10, &"x".repeat(501)), "reason"),
    ] {
        let refused = client.refund_payment(request).await.expect_err("invalid");
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}: {refused:?}");
        assert!(refused.message().contains(field), "{refused:?}");
    }
    let missing = client.refund_payment(refund(operator, "b5", &Uuid::now_v7().to_string(), 10, "x")).await;
    assert_eq!(missing.expect_err("unknown").code(), Code::NotFound);
    // A declined payment took nothing: nothing to give back.
    let other = Uuid::now_v7();
    add_card(&mut client, other, "tok_declined").await?;
    let request =
        pb::CreateSubscriptionRequest { price_id: prices::BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    let declined = client.create_subscription(keyed(other, "sub", request)).await?.into_inner();
    let attempt = declined.payment_attempt.unwrap_or_default().id;
    let refused =
        client.refund_payment(refund(operator, "b6", &attempt, 0, "x")).await.expect_err("declined");
    assert_eq!(reason(&refused), "PAYMENT_NOT_REFUNDABLE");
    assert_eq!(billing.count("refunds").await?, 0);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn a_stripe_payment_is_refunded_through_a_refund_of_its_payment_intent() -> anyhow::Result<()> {
    let billing = localstripe::with_stripe("whsec_unused").await?;
    let mut client = billing.client().await?;
    let (user, operator) = (Uuid::now_v7(), Uuid::now_v7());
    let payment = paid(&mut client, user, &localstripe::card("4242424242424242").await?).await?;
    let done =
        client.refund_payment(refund(operator, "s1", &payment.id, 1500, "late delivery")).await?.into_inner();
    let done = done.refund.unwrap_or_default();
    assert_eq!(done.status, pb::RefundStatus::Succeeded as i32, "{done:?}");
    assert!(done.provider_refund_id.starts_with("re_"), "{done:?}");

    // At Stripe: one refund of that amount on the payment's intent, ours.
    let intent: String = billing
        .sql()
        .await?
        .query_one(
            "SELECT provider_intent_id FROM payment_attempts WHERE id = $1",
            &[&Uuid::parse_str(&payment.id)?],
        )
        .await?
        .get(0);
    let (_, listed) = stripe_api("GET", &format!("/v1/refunds?payment_intent={intent}"), &[]).await?;
    let refunds = listed["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(refunds.len(), 1, "{listed}");
    assert_eq!(refunds[0]["amount"].as_i64(), Some(1500));
    assert_eq!(refunds[0]["id"].as_str(), Some(done.provider_refund_id.as_str()));
    assert_eq!(refunds[0]["metadata"]["tenx_refund_id"].as_str(), Some(done.id.as_str()));
    assert_eq!(balance(&billing, "provider_clearing", &payment.id).await?, 5000 - 1500);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn concurrent_refunds_of_a_whole_payment_give_it_back_once() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let (user, operator) = (Uuid::now_v7(), Uuid::now_v7());
    let payment = paid(&mut client, user, "tok_success").await?;
    // Eight operators' tools, each with its own key, all asking for it all.
    let calls = (0..8).map(|i| {
        let (mut client, id) = (client.clone(), payment.id.clone());
        async move {
            client.refund_payment(refund(operator, &format!("all-{i}"), &id, 0, "duplicate order")).await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let refunded: Vec<i64> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .filter_map(|r| r.get_ref().refund.as_ref())
        .map(|r| r.amount_minor)
        .collect();
    assert_eq!(refunded, vec![5000], "one refund of the whole payment");
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(reason(refused), "REFUND_EXCEEDS_PAYMENT", "{refused:?}");
    }
    assert_eq!(balance(&billing, "provider_clearing", &payment.id).await?, 0);
    assert_ledger_invariants(&billing).await
}
