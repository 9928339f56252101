//! Payments whose request did not see them through: a caller that gives
//! up mid-charge, a provider answer that is lost, a charge the provider
//! never received. Each ends settled (by the detached charge or by the
//! attempt's reconcile job), with one success at most and the ledger
//! balanced.

use std::time::Duration;

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    Client, TestBilling, add_card, as_user, assert_ledger_invariants, events, eventually, keyed,
    open_invoice, prices, reason,
};

async fn invoice(client: &mut Client, user: Uuid, id: &str) -> anyhow::Result<pb::Invoice> {
    let request = pb::GetInvoiceRequest { invoice_id: id.into() };
    client
        .get_invoice(as_user(user, request))
        .await?
        .into_inner()
        .invoice
        .ok_or_else(|| anyhow::anyhow!("none"))
}

async fn attempts(billing: &TestBilling, invoice: &str, status: &str) -> anyhow::Result<i64> {
    Ok(billing
        .sql()
        .await?
        .query_one(
            "SELECT count(*) FROM payment_attempts WHERE invoice_id = $1 AND status = $2",
            &[&Uuid::parse_str(invoice)?, &status],
        )
        .await?
        .get(0))
}

/// A billing whose user has an open invoice and, as default, a card whose
/// charge takes 1.5 s: the billing, a client, the user, the invoice and
/// its PayInvoice request.
async fn slow_payment() -> anyhow::Result<(TestBilling, Client, Uuid, pb::Invoice, pb::PayInvoiceRequest)> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let open = open_invoice(&mut client, user).await?;
    add_card(&mut client, user, "tok_slow").await?;
    let pay = pb::PayInvoiceRequest { invoice_id: open.id.clone(), ..Default::default() };
    Ok((billing, client, user, open, pay))
}

#[tokio::test]
async fn a_caller_that_gives_up_mid_charge_cancels_only_its_wait_and_its_retry_replays_the_payment()
-> anyhow::Result<()> {
    let (billing, mut client, user, open, pay) = slow_payment().await?;
    // The caller waits 200 ms and goes.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), client.pay_invoice(keyed(user, "pay", pay.clone())))
            .await;
    assert!(gave_up.is_err(), "the caller left before the answer");

    // The charge and its settlement go on without the caller.
    eventually(Duration::from_secs(10), "the abandoned payment to be settled", || {
        let mut client = client.clone();
        let id = open.id.clone();
        async move { Ok(invoice(&mut client, user, &id).await?.status == pb::InvoiceStatus::Paid as i32) }
    })
    .await?;

    // The retry with the same key gets the stored answer, not a second charge.
    let retried = client.pay_invoice(keyed(user, "pay", pay)).await?;
    assert_eq!(retried.metadata().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    let retried = retried.into_inner();
    assert_eq!(retried.payment_attempt.map(|a| a.status), Some(pb::PaymentAttemptStatus::Succeeded as i32));
    assert_eq!(attempts(&billing, &open.id, "succeeded").await?, 1);
    assert_eq!(events(&billing, "billing.invoice.paid").await?, 1);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn a_lost_provider_answer_is_settled_by_the_reconciler_even_if_the_caller_never_retries()
-> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    // The provider charges this card, then its answer is lost.
    add_card(&mut client, user, "tok_provider_timeout").await?;
    let request =
        pb::CreateSubscriptionRequest { price_id: prices::BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    let lost = client.create_subscription(keyed(user, "sub", request.clone())).await.expect_err("timeout");
    assert_eq!((lost.code(), reason(&lost).as_str()), (Code::Unavailable, "PROVIDER_TIMEOUT"));
    let sql = billing.sql().await?;
    let invoice_id: Uuid = sql
        .query_one(
            "SELECT a.invoice_id FROM payment_attempts a JOIN customers c ON c.id = a.customer_id \
             WHERE c.user_id = $1 AND a.status = 'pending'",
            &[&user],
        )
        .await?
        .get(0);

    // Before its reconcile job is due, nothing is decided.
    billing.advance(Duration::from_secs(30)).await?;
    assert_eq!(attempts(&billing, &invoice_id.to_string(), "pending").await?, 1);
    // Once due, the reconciler asks the provider and records the charge.
    billing.advance(Duration::from_secs(31)).await?;
    assert_eq!(attempts(&billing, &invoice_id.to_string(), "pending").await?, 0);
    assert_eq!(attempts(&billing, &invoice_id.to_string(), "succeeded").await?, 1);
    let paid = invoice(&mut client, user, &invoice_id.to_string()).await?;
    assert_eq!(paid.status, pb::InvoiceStatus::Paid as i32);
    assert_eq!(events(&billing, "billing.invoice.paid").await?, 1);

    // A late retry of the request is answered from what was settled.
    let retried = client.create_subscription(keyed(user, "sub", request)).await?.into_inner();
    assert_eq!(retried.payment_attempt.map(|a| a.status), Some(pb::PaymentAttemptStatus::Succeeded as i32));
    assert_eq!(retried.subscription.map(|s| s.status), Some(pb::SubscriptionStatus::Active as i32));
    assert_eq!(attempts(&billing, &invoice_id.to_string(), "succeeded").await?, 1, "never charged twice");
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn an_attempt_left_pending_that_the_provider_never_saw_is_failed_and_the_invoice_payable_again()
-> anyhow::Result<()> {
    // A short provider bound: this card's charge never answers (as when
    // the process dies between recording the attempt and settling it).
    let billing = TestBilling::start_with(|s| s.provider.timeout_ms = 300).await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let open = open_invoice(&mut client, user).await?;
    add_card(&mut client, user, "tok_provider_hang").await?;
    let pay = pb::PayInvoiceRequest { invoice_id: open.id.clone(), ..Default::default() };
    let lost = client.pay_invoice(keyed(user, "pay-1", pay.clone())).await.expect_err("no answer");
    assert_eq!((lost.code(), reason(&lost).as_str()), (Code::Unavailable, "PROVIDER_TIMEOUT"));

    // While it is unknown, no second charge of the invoice may start.
    let second = client.pay_invoice(keyed(user, "pay-2", pay.clone())).await.expect_err("in flight");
    assert_eq!((second.code(), reason(&second).as_str()), (Code::Aborted, "PAYMENT_IN_PROGRESS"));

    billing.advance(Duration::from_secs(61)).await?;
    let failed = invoice(&mut client, user, &open.id).await?;
    let last = failed.payment_attempts.last().cloned().unwrap_or_default();
    assert_eq!(
        (last.status, last.failure_code),
        (pb::PaymentAttemptStatus::Failed as i32, pb::PaymentFailureCode::NotFoundAtProvider as i32)
    );
    assert_eq!(failed.status, pb::InvoiceStatus::Open as i32);

    add_card(&mut client, user, "tok_success").await?;
    let paid = client.pay_invoice(keyed(user, "pay-3", pay)).await?.into_inner();
    assert_eq!(paid.invoice.map(|i| i.status), Some(pb::InvoiceStatus::Paid as i32));
    assert_eq!(attempts(&billing, &open.id, "succeeded").await?, 1);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn an_incomplete_subscription_does_not_expire_while_its_first_payment_is_still_being_settled()
-> anyhow::Result<()> {
    // A payment whose outcome is known only later (a bank debit Stripe is
    // processing; here a lost answer found by a reconciler due in 2 days)
    // outlives billing.incomplete_expiry_hours (23 h).
    let billing = TestBilling::start_with(|s| s.provider.reconcile_after_seconds = 2 * 86_400).await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    add_card(&mut client, user, "tok_provider_timeout").await?;
    let request =
        pb::CreateSubscriptionRequest { price_id: prices::BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    let lost = client.create_subscription(keyed(user, "sub", request)).await.expect_err("timeout");
    assert_eq!(reason(&lost), "PROVIDER_TIMEOUT");
    async fn status(billing: &TestBilling) -> anyhow::Result<(String, String)> {
        let row = billing
            .sql()
            .await?
            .query_one(
                "SELECT s.status, i.status FROM subscriptions s JOIN invoices i ON i.subscription_id = s.id",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    // The expiry is due, but the charge may yet succeed: it waits.
    billing.advance(Duration::from_secs(24 * 3600)).await?;
    assert_eq!(status(&billing).await?, ("incomplete".to_owned(), "open".to_owned()));
    // The reconciler finds the charge: paid, active, and the expiry then
    // has nothing to do.
    billing.advance(Duration::from_secs(2 * 86_400)).await?;
    billing.advance(Duration::from_secs(3600)).await?;
    assert_eq!(status(&billing).await?, ("active".to_owned(), "paid".to_owned()));
    assert_eq!(events(&billing, "billing.invoice.paid").await?, 1);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn a_payment_that_waited_for_the_invoice_lock_ends_the_dunning_started_meanwhile() -> anyhow::Result<()>
{
    let (billing, client, user, open, pay) = slow_payment().await?;
    let mut payer = client.clone();
    let paying = tokio::spawn(async move { payer.pay_invoice(keyed(user, "pay", pay)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Meanwhile a writer (as the scheduler's failed automatic charge does)
    // holds the invoice's lock while it starts dunning, and commits only
    // after the settlement began waiting for that lock.
    let invoice_id = Uuid::parse_str(&open.id)?;
    let mut sql = billing.sql().await?;
    let tx = sql.transaction().await?;
    tx.execute("UPDATE invoices SET updated_at = now() WHERE id = $1", &[&invoice_id]).await?;
    tx.execute(
        "INSERT INTO dunning_states (invoice_id, subscription_id, status, started_at, next_retry_at) \
         SELECT id, subscription_id, 'active', now(), now() + interval '3 days' FROM invoices WHERE id = $1",
        &[&invoice_id],
    )
    .await?;
    tx.execute(
        "INSERT INTO billing_jobs (id, kind, dedupe_key, invoice_id, run_at, created_at) \
         VALUES ($1, 'dunning_retry', $2, $3, now() + interval '3 days', now())",
        &[&Uuid::now_v7(), &format!("dunning:{invoice_id}:1"), &invoice_id],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    tx.commit().await?;

    let paid = paying.await??.into_inner().invoice.unwrap_or_default();
    assert_eq!(paid.status, pb::InvoiceStatus::Paid as i32);
    // The payment saw the dunning committed before it could pay: over.
    let row = sql
        .query_one(
            "SELECT d.status, (SELECT status FROM billing_jobs WHERE dedupe_key = $2) \
             FROM dunning_states d WHERE d.invoice_id = $1",
            &[&invoice_id, &format!("dunning:{invoice_id}:1")],
        )
        .await?;
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("recovered".into(), "canceled".into()));
    assert_ledger_invariants(&billing).await
}
