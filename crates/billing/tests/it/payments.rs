//! Subscribing and paying: trials, free and paid prices, every simulated
//! card outcome, idempotent payments, and who may see what.

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    TestBilling, add_card, as_user, assert_ledger_invariants, events, keyed, open_invoice, prices, reason,
};

fn subscribe(price: &str) -> pb::CreateSubscriptionRequest {
    pb::CreateSubscriptionRequest { price_id: price.into(), ..Default::default() }
}

#[tokio::test]
async fn a_trial_bills_nothing_a_free_price_is_active_and_a_paid_one_is_charged_at_once() -> anyhow::Result<()>
{
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();

    let trial =
        client.create_subscription(keyed(user, "t", subscribe(prices::PRO_MONTHLY_USD))).await?.into_inner();
    let sub = trial.subscription.expect("subscription");
    assert_eq!(sub.status, pb::SubscriptionStatus::Trialing as i32);
    assert!(trial.invoice.is_none() && trial.payment_attempt.is_none());
    let days = |a: &Option<prost_types::Timestamp>, b: &Option<prost_types::Timestamp>| {
        b.as_ref().map_or(0, |b| b.seconds) - a.as_ref().map_or(0, |a| a.seconds)
    };
    assert_eq!(days(&sub.trial_start, &sub.trial_end), 14 * 86_400, "the price's trial: billing.trial_days");
    assert_eq!(sub.current_period_end, sub.trial_end);

    let free =
        client.create_subscription(keyed(user, "f", subscribe(prices::FREE_MONTHLY_USD))).await?.into_inner();
    let sub = free.subscription.expect("subscription");
    assert_eq!(sub.status, pb::SubscriptionStatus::Active as i32);
    assert!(free.invoice.is_none(), "nothing to bill, no invoice");
    // 2026-01-01 + one calendar month.
    assert_eq!(days(&sub.current_period_start, &sub.current_period_end), 31 * 86_400);

    add_card(&mut client, user, "tok_success").await?;
    let paid = client
        .create_subscription(keyed(user, "p", subscribe(prices::BUSINESS_MONTHLY_USD)))
        .await?
        .into_inner();
    let sub = paid.subscription.expect("subscription");
    let invoice = paid.invoice.expect("the first invoice");
    let attempt = paid.payment_attempt.expect("its charge");
    assert_eq!(sub.status, pb::SubscriptionStatus::Active as i32);
    assert_eq!(invoice.status, pb::InvoiceStatus::Paid as i32);
    assert_eq!(
        (invoice.total_minor, invoice.amount_paid_minor, invoice.amount_remaining_minor),
        (5000, 5000, 0)
    );
    assert_eq!(invoice.billing_reason, pb::BillingReason::SubscriptionCreate as i32);
    assert!(invoice.number.ends_with("-0001"), "{}", invoice.number);
    assert_eq!(invoice.lines.len(), 1);
    assert_eq!(invoice.lines[0].kind, pb::InvoiceLineKind::Subscription as i32);
    assert_eq!(attempt.status, pb::PaymentAttemptStatus::Succeeded as i32);
    assert_eq!(sub.latest_invoice_id, invoice.id);

    let balances: Vec<(String, i64)> = billing
        .sql()
        .await?
        .query(
            "SELECT account, sum(amount_minor)::bigint FROM ledger_entries GROUP BY account ORDER BY account",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        balances,
        vec![
            ("accounts_receivable".into(), 0),
            ("deferred_revenue".into(), -5000),
            ("provider_clearing".into(), 5000)
        ]
    );
    for (event, count) in [
        ("billing.subscription.created", 3),
        ("billing.invoice.finalized", 1),
        ("billing.invoice.paid", 1),
        ("billing.subscription.updated", 1),
        ("billing.payment.failed", 0),
    ] {
        assert_eq!(events(&billing, event).await?, count, "{event}");
    }
    // One currency per customer.
    let yen = client
        .create_subscription(keyed(user, "y", subscribe(prices::BUSINESS_MONTHLY_JPY)))
        .await
        .expect_err("USD customer");
    assert_eq!((yen.code(), reason(&yen).as_str()), (Code::FailedPrecondition, "CURRENCY_MISMATCH"));
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn every_simulated_card_outcome_is_recorded_and_a_declined_subscription_can_be_paid_later()
-> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;

    // Declined and insufficient funds: OK with a FAILED attempt, INCOMPLETE.
    for (token, code) in [
        ("tok_declined", pb::PaymentFailureCode::CardDeclined),
        ("tok_insufficient_funds", pb::PaymentFailureCode::InsufficientFunds),
    ] {
        let user = Uuid::now_v7();
        add_card(&mut client, user, token).await?;
        let created = client
            .create_subscription(keyed(user, "s", subscribe(prices::BUSINESS_MONTHLY_JPY)))
            .await?
            .into_inner();
        let attempt = created.payment_attempt.expect("attempt");
        assert_eq!(
            (attempt.status, attempt.failure_code),
            (pb::PaymentAttemptStatus::Failed as i32, code as i32),
            "{token}"
        );
        assert_eq!(created.subscription.map(|s| s.status), Some(pb::SubscriptionStatus::Incomplete as i32));
        let invoice = created.invoice.expect("invoice");
        assert_eq!(
            (invoice.status, invoice.amount_remaining_minor),
            (pb::InvoiceStatus::Open as i32, 4980),
            "whole yen"
        );

        // A working card, then PayInvoice: paid, and the subscription is active.
        add_card(&mut client, user, "tok_success").await?;
        let paid = client
            .pay_invoice(keyed(
                user,
                "pay",
                pb::PayInvoiceRequest { invoice_id: invoice.id.clone(), ..Default::default() },
            ))
            .await?
            .into_inner();
        assert_eq!(paid.invoice.as_ref().map(|i| i.status), Some(pb::InvoiceStatus::Paid as i32));
        assert_eq!(paid.invoice.map(|i| i.payment_attempts.len()), Some(2));
        let sub = client
            .get_subscription(as_user(
                user,
                pb::GetSubscriptionRequest { subscription_id: invoice.subscription_id },
            ))
            .await?
            .into_inner()
            .subscription
            .expect("subscription");
        assert_eq!(sub.status, pb::SubscriptionStatus::Active as i32, "{token}");
        // Its reactivation is announced with the subscription as it is
        // now and the status it had.
        let updated: Vec<u8> = billing
            .sql()
            .await?
            .query_one(
                "SELECT payload FROM tenx_outbox WHERE event_type = 'billing.subscription.updated' \
                 AND aggregate_id = $1",
                &[&sub.id],
            )
            .await?
            .get(0);
        let updated = <pb::SubscriptionUpdated as prost::Message>::decode(updated.as_slice())?;
        assert_eq!(updated.previous_status, pb::SubscriptionStatus::Incomplete as i32, "{token}");
        assert_eq!(updated.previous_price_id, sub.price_id);
        assert_eq!(updated.subscription.as_ref(), Some(&sub), "{token}");
        assert_eq!(updated.plan_name, "Business");
    }
    assert_eq!(events(&billing, "billing.payment.failed").await?, 2);

    // Provider error: UNAVAILABLE, nothing charged, not the customer's fault.
    let user = Uuid::now_v7();
    add_card(&mut client, user, "tok_provider_error").await?;
    for _ in 0..2 {
        let failed = client
            .create_subscription(keyed(user, "s", subscribe(prices::BUSINESS_MONTHLY_CLP)))
            .await
            .expect_err("provider down");
        assert_eq!((failed.code(), reason(&failed).as_str()), (Code::Unavailable, "PROVIDER_ERROR"));
    }
    let sql = billing.sql().await?;
    let subs: i64 = sql
        .query_one("SELECT count(*) FROM subscriptions s JOIN customers c ON c.id = s.customer_id WHERE c.user_id = $1", &[&user])
        .await?
        .get(0);
    assert_eq!(subs, 1, "a retry with the same key resumes the same subscription");
    assert_eq!(events(&billing, "billing.payment.failed").await?, 2, "provider errors are not announced");

    // Timeout: the answer is lost; a retry with the same key finds the
    // charge at the provider instead of charging again.
    let user = Uuid::now_v7();
    add_card(&mut client, user, "tok_provider_timeout").await?;
    let lost = client
        .create_subscription(keyed(user, "s", subscribe(prices::BUSINESS_MONTHLY_USD)))
        .await
        .expect_err("timeout");
    assert_eq!((lost.code(), reason(&lost).as_str()), (Code::Unavailable, "PROVIDER_TIMEOUT"));
    let found = client
        .create_subscription(keyed(user, "s", subscribe(prices::BUSINESS_MONTHLY_USD)))
        .await?
        .into_inner();
    assert_eq!(found.payment_attempt.map(|a| a.status), Some(pb::PaymentAttemptStatus::Succeeded as i32));
    assert_eq!(found.subscription.map(|s| s.status), Some(pb::SubscriptionStatus::Active as i32));
    let charges: i64 = sql
        .query_one(
            "SELECT count(*) FROM payment_attempts a JOIN customers c ON c.id = a.customer_id WHERE c.user_id = $1",
            &[&user],
        )
        .await?
        .get(0);
    assert_eq!(charges, 1, "one attempt, resolved by lookup");

    // No card at all for a paid price without trial: refused, nothing written.
    let user = Uuid::now_v7();
    let before = billing.count("subscriptions").await?;
    let refused = client
        .create_subscription(keyed(user, "s", subscribe(prices::BUSINESS_MONTHLY_USD)))
        .await
        .expect_err("no card");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "PAYMENT_METHOD_REQUIRED")
    );
    assert_eq!(billing.count("subscriptions").await?, before);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn fifty_concurrent_pay_invoice_calls_with_one_key_make_one_payment() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let invoice = open_invoice(&mut client, user).await?;
    add_card(&mut client, user, "tok_success").await?;

    let pay = pb::PayInvoiceRequest { invoice_id: invoice.id.clone(), ..Default::default() };
    let calls = (0..50).map(|_| {
        let (mut client, pay) = (client.clone(), pay.clone());
        async move { client.pay_invoice(keyed(user, "one-key", pay)).await }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let mut succeeded = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(r) => succeeded.push(r.into_inner().payment_attempt.map(|a| a.id)),
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert!(!succeeded.is_empty());
    assert!(succeeded.windows(2).all(|w| w[0] == w[1]), "every answer is the one payment");
    let sql = billing.sql().await?;
    let (attempts, payments): (i64, i64) = {
        let row = sql
            .query_one(
                "SELECT (SELECT count(*) FROM payment_attempts WHERE invoice_id = $1 AND status = 'succeeded'), \
                        (SELECT count(*) FROM ledger_transactions WHERE invoice_id = $1 AND kind = 'payment_succeeded')",
                &[&Uuid::parse_str(&invoice.id)?],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!((attempts, payments), (1, 1));
    assert_eq!(events(&billing, "billing.invoice.paid").await?, 1);
    // Once it has finished, the key replays the answer.
    let replay = client.pay_invoice(keyed(user, "one-key", pay.clone())).await?;
    assert!(replay.metadata().get("idempotent-replayed").is_some());
    // The same key for another invoice is refused, not replayed.
    let other = pb::PayInvoiceRequest { invoice_id: Uuid::now_v7().to_string(), ..Default::default() };
    let reused = client.pay_invoice(keyed(user, "one-key", other)).await.expect_err("another request");
    assert_eq!(
        (reused.code(), reason(&reused).as_str()),
        (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED")
    );
    // Another key: nothing left to pay, an answer its key keeps.
    let again = client.pay_invoice(keyed(user, "other-key", pay.clone())).await.expect_err("paid");
    assert_eq!((again.code(), reason(&again).as_str()), (Code::FailedPrecondition, "INVOICE_NOT_PAYABLE"));
    let stored: (String, Option<i16>) = {
        let row = sql
            .query_one("SELECT status, response_code FROM idempotency_keys WHERE key = 'other-key'", &[])
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!(stored, ("completed".into(), Some(Code::FailedPrecondition as i16)));
    let replayed = client.pay_invoice(keyed(user, "other-key", pay)).await.expect_err("still paid");
    assert_eq!(reason(&replayed), "INVOICE_NOT_PAYABLE");
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn a_user_cannot_see_or_pay_another_users_invoices() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    add_card(&mut client, bob, "tok_declined").await?;
    let created = client
        .create_subscription(keyed(bob, "s", subscribe(prices::BUSINESS_MONTHLY_USD)))
        .await?
        .into_inner();
    let invoice = created.invoice.expect("invoice");
    let sub = created.subscription.expect("subscription");

    let listed =
        client.list_invoices(as_user(bob, pb::ListInvoicesRequest::default())).await?.into_inner().invoices;
    assert_eq!(listed.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), vec![invoice.id.clone()]);

    add_card(&mut client, alice, "tok_success").await?;
    let steal = [
        client
            .get_invoice(as_user(alice, pb::GetInvoiceRequest { invoice_id: invoice.id.clone() }))
            .await
            .err(),
        client
            .list_invoices(as_user(
                alice,
                pb::ListInvoicesRequest { customer_id: invoice.customer_id.clone(), ..Default::default() },
            ))
            .await
            .err(),
        client
            .get_subscription(as_user(alice, pb::GetSubscriptionRequest { subscription_id: sub.id.clone() }))
            .await
            .err(),
        client
            .pay_invoice(keyed(
                alice,
                "k",
                pb::PayInvoiceRequest { invoice_id: invoice.id.clone(), ..Default::default() },
            ))
            .await
            .err(),
    ];
    for refused in steal {
        assert_eq!(refused.map(|s| s.code()), Some(Code::NotFound));
    }
    // Refused without a trace: bob's invoice has only his own declined
    // attempt; alice's key keeps her answer.
    let sql = billing.sql().await?;
    let row = sql
        .query_one(
            "SELECT (SELECT count(*) FROM payment_attempts WHERE invoice_id = $1), \
                    (SELECT response_code FROM idempotency_keys WHERE caller = $2 AND key = 'k')",
            &[&Uuid::parse_str(&invoice.id)?, &alice.to_string()],
        )
        .await?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, Option<i16>>(1)), (1, Some(Code::NotFound as i16)));
    let mine = client.list_invoices(as_user(alice, pb::ListInvoicesRequest::default())).await?.into_inner();
    assert!(mine.invoices.is_empty(), "alice sees only her own (none)");
    Ok(())
}

/// A payment stuck behind a lock held elsewhere (a stuck job, an
/// operator's open transaction) gives up at `database.statement_timeout_ms`
/// with a retryable UNAVAILABLE instead of holding the caller and a pooled
/// connection, records nothing, and goes through once the lock is gone.
#[tokio::test]
async fn a_payment_stuck_behind_a_held_invoice_answers_unavailable_and_records_nothing() -> anyhow::Result<()>
{
    let billing = TestBilling::start_with(|s| s.database.statement_timeout_ms = 2_000).await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let invoice = open_invoice(&mut client, user).await?.id;
    add_card(&mut client, user, "tok_success").await?;
    let attempts = billing.count("payment_attempts").await?;

    let holder = billing.sql().await?;
    holder.batch_execute(&format!("BEGIN; SELECT 1 FROM invoices WHERE id = '{invoice}' FOR UPDATE")).await?;
    let pay =
        || keyed(user, "pay", pb::PayInvoiceRequest { invoice_id: invoice.clone(), ..Default::default() });
    let stuck = tokio::time::timeout(std::time::Duration::from_secs(20), client.pay_invoice(pay()))
        .await
        .expect("answered at the statement timeout, not left waiting for the lock")
        .expect_err("the invoice is held");
    assert_eq!(stuck.code(), Code::Unavailable, "{stuck:?}");
    assert_eq!(billing.count("payment_attempts").await?, attempts, "no attempt recorded");

    // Released: the same request (same key) pays, once.
    holder.batch_execute("COMMIT").await?;
    let paid = client.pay_invoice(pay()).await?.into_inner();
    assert_eq!(paid.invoice.map(|i| i.status), Some(pb::InvoiceStatus::Paid as i32));
    assert_eq!(billing.count("payment_attempts").await?, attempts + 1);
    assert_ledger_invariants(&billing).await?;
    Ok(())
}
