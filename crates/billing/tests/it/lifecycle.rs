//! The whole life of a subscription with exact amounts: trial → active →
//! upgrade now with proration → downgrade at period end → cancel at period
//! end (docs/services/billing.md, "The lifecycle in entries").

use std::time::Duration;

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{TestBilling, as_user, assert_ledger_invariants, keyed, prices, reason};

const DAY: Duration = Duration::from_secs(86_400);

fn amounts(invoice: &pb::Invoice) -> Vec<i64> {
    invoice.lines.iter().map(|l| l.amount_minor).collect()
}

async fn balance(billing: &TestBilling, account: &str) -> anyhow::Result<i64> {
    Ok(billing
        .sql()
        .await?
        .query_one(
            "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM ledger_entries WHERE account = $1",
            &[&account],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn trial_upgrade_downgrade_and_cancel_bill_exact_amounts() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?; // 2026-01-01T00:00:00Z
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    client.add_payment_method(keyed(user, "card", card)).await?;
    let sub = client
        .create_subscription(keyed(
            user,
            "sub",
            pb::CreateSubscriptionRequest { price_id: prices::PRO_MONTHLY_USD.into(), ..Default::default() },
        ))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    assert_eq!(sub.status, pb::SubscriptionStatus::Trialing as i32);

    // Jan 15: the trial ends; invoice 0001, $20.00, paid.
    billing.advance(14 * DAY).await?;
    let list = |client: &mut crate::support::Client| {
        let mut client = client.clone();
        async move {
            Ok::<_, anyhow::Error>(
                client
                    .list_invoices(as_user(user, pb::ListInvoicesRequest::default()))
                    .await?
                    .into_inner()
                    .invoices,
            )
        }
    };
    let first = list(&mut client).await?;
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].total_minor, first[0].status), (2000, pb::InvoiceStatus::Paid as i32));

    // Feb 1: upgrade to Business now, 14 of 31 days left.
    billing.advance(17 * DAY).await?;
    let change = |price: &str, key: &str| {
        keyed(
            user,
            key,
            pb::ChangePlanRequest {
                subscription_id: sub.id.clone(),
                price_id: price.into(),
                ..Default::default()
            },
        )
    };
    let upgraded = client.change_plan(change(prices::BUSINESS_MONTHLY_USD, "up")).await?.into_inner();
    assert_eq!(upgraded.direction, pb::ChangeDirection::Upgrade as i32);
    let invoice = upgraded.invoice.expect("a proration invoice");
    assert_eq!(amounts(&invoice), vec![-903, 2258], "credit 2000×14/31, debit 5000×14/31, half-even");
    assert_eq!((invoice.total_minor, invoice.status), (1355, pb::InvoiceStatus::Paid as i32));
    assert_eq!(invoice.billing_reason, pb::BillingReason::SubscriptionUpdate as i32);
    assert!(invoice.number.ends_with("-0002"));
    assert_eq!(
        upgraded.subscription.as_ref().map(|s| s.price_id.as_str()),
        Some(prices::BUSINESS_MONTHLY_USD)
    );

    // A downgrade waits for the period end.
    let downgraded = client.change_plan(change(prices::PRO_MONTHLY_USD, "down")).await?.into_inner();
    assert_eq!(downgraded.direction, pb::ChangeDirection::Downgrade as i32);
    assert!(downgraded.invoice.is_none());
    let pending = downgraded.subscription.and_then(|s| s.pending_change).expect("pending change");
    assert_eq!(pending.price_id, prices::PRO_MONTHLY_USD);
    let yen = client.change_plan(change(prices::BUSINESS_MONTHLY_JPY, "yen")).await.expect_err("USD only");
    assert_eq!((yen.code(), reason(&yen).as_str()), (Code::FailedPrecondition, "CURRENCY_MISMATCH"));

    // Feb 15: the renewal bills Pro; the period Jan 15 – Feb 15 (2000 +
    // 1355 billed) is earned.
    billing.advance(14 * DAY).await?;
    let invoices = list(&mut client).await?;
    assert_eq!(invoices.len(), 3);
    assert_eq!((invoices[0].total_minor, invoices[0].status), (2000, pb::InvoiceStatus::Paid as i32));
    let renewed = client
        .get_subscription(as_user(user, pb::GetSubscriptionRequest { subscription_id: sub.id.clone() }))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    assert_eq!(renewed.price_id, prices::PRO_MONTHLY_USD, "the pending downgrade applied");
    assert!(renewed.pending_change.is_none());
    assert_eq!(balance(&billing, "revenue_subscriptions").await?, -3355);

    // Cancel at the period end: still active until Mar 15, then over.
    let cancel = pb::CancelSubscriptionRequest { subscription_id: sub.id.clone(), ..Default::default() };
    let canceled = client.cancel_subscription(keyed(user, "cancel", cancel.clone())).await?.into_inner();
    let s = canceled.subscription.expect("subscription");
    assert!(s.cancel_at_period_end && s.status == pb::SubscriptionStatus::Active as i32);
    let again =
        client.cancel_subscription(keyed(user, "cancel-2", cancel)).await.expect_err("already ending");
    assert_eq!(reason(&again), "SUBSCRIPTION_CANCELED");
    let refused = client.change_plan(change(prices::BUSINESS_MONTHLY_USD, "late")).await.expect_err("ending");
    assert_eq!(reason(&refused), "SUBSCRIPTION_NOT_CHANGEABLE");
    billing.advance(28 * DAY).await?;
    let ended = client
        .get_subscription(as_user(user, pb::GetSubscriptionRequest { subscription_id: sub.id.clone() }))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    assert_eq!(ended.status, pb::SubscriptionStatus::Canceled as i32);
    assert_eq!(ended.cancellation_reason, pb::CancellationReason::Requested as i32);
    assert_eq!(list(&mut client).await?.len(), 3, "no invoice after the end");

    assert_eq!(balance(&billing, "provider_clearing").await?, 2000 + 1355 + 2000);
    assert_eq!(
        balance(&billing, "revenue_subscriptions").await?,
        -(3355 + 2000),
        "everything billed was earned"
    );
    assert_eq!(balance(&billing, "deferred_revenue").await?, 0);
    assert_eq!(balance(&billing, "accounts_receivable").await?, 0);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn an_immediate_downgrade_with_proration_credits_the_customer_for_the_next_invoice()
-> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    client.add_payment_method(keyed(user, "card", card)).await?;
    let sub = client
        .create_subscription(keyed(
            user,
            "sub",
            pb::CreateSubscriptionRequest {
                price_id: prices::BUSINESS_MONTHLY_USD.into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    // Jan 1 – Feb 1 (31 days); on Jan 17, 15 days are left.
    billing.advance(16 * DAY).await?;
    let request = pb::ChangePlanRequest {
        subscription_id: sub.id.clone(),
        price_id: prices::PRO_MONTHLY_USD.into(),
        timing: pb::ChangeTiming::Immediately as i32,
        ..Default::default()
    };
    let changed = client.change_plan(keyed(user, "down-now", request)).await?.into_inner();
    let invoice = changed.invoice.expect("proration invoice");
    assert_eq!(amounts(&invoice), vec![-2419, 968], "−5000×15/31 and +2000×15/31");
    assert_eq!((invoice.total_minor, invoice.credit_added_minor, invoice.amount_due_minor), (-1451, 1451, 0));
    assert_eq!(invoice.status, pb::InvoiceStatus::Paid as i32, "nothing due");
    let customer = client.get_customer(as_user(user, pb::GetCustomerRequest::default())).await?.into_inner();
    assert_eq!(customer.customer.map(|c| c.credit_balance_minor), Some(1451));

    // The renewal (Feb 1, $20.00) is paid from the credit first.
    billing.advance(15 * DAY).await?;
    let renewal = client
        .list_invoices(as_user(user, pb::ListInvoicesRequest::default()))
        .await?
        .into_inner()
        .invoices
        .remove(0);
    assert_eq!(
        (renewal.total_minor, renewal.credit_applied_minor, renewal.amount_due_minor),
        (2000, 1451, 549)
    );
    assert_eq!(renewal.status, pb::InvoiceStatus::Paid as i32);
    let customer = client.get_customer(as_user(user, pb::GetCustomerRequest::default())).await?.into_inner();
    assert_eq!(customer.customer.map(|c| c.credit_balance_minor), Some(0));
    assert_ledger_invariants(&billing).await
}
