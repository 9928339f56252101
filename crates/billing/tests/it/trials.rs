//! Trials and paid plan changes, tried as a customer who would rather not
//! pay: a trial is the price's own, once per plan; only an operator grants
//! another; an upgrade is in force only once paid.

use std::time::Duration;

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    Client, TestBilling, add_card, as_admin, as_user, assert_ledger_invariants, keyed, prices, reason,
};

const DAY: Duration = Duration::from_secs(86_400);

fn subscribe(price: &str, trial_days: Option<u32>) -> pb::CreateSubscriptionRequest {
    pb::CreateSubscriptionRequest { price_id: price.into(), trial_days, ..Default::default() }
}

fn change(sub: &str, price: &str) -> pb::ChangePlanRequest {
    pb::ChangePlanRequest {
        subscription_id: sub.into(),
        price_id: price.into(),
        timing: pb::ChangeTiming::Immediately as i32,
        ..Default::default()
    }
}

async fn subscription(client: &mut Client, user: Uuid, id: &str) -> anyhow::Result<pb::Subscription> {
    let request = pb::GetSubscriptionRequest { subscription_id: id.into() };
    client
        .get_subscription(as_user(user, request))
        .await?
        .into_inner()
        .subscription
        .ok_or_else(|| anyhow::anyhow!("none"))
}

fn trial_days(sub: &pb::Subscription) -> i64 {
    match (&sub.trial_start, &sub.trial_end) {
        (Some(start), Some(end)) => (end.seconds - start.seconds) / 86_400,
        _ => 0,
    }
}

#[tokio::test]
async fn a_customer_gets_the_prices_trial_once_per_plan_and_only_an_operator_grants_another()
-> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();

    // A self-granted two-year trial is refused, and writes nothing.
    let before = billing.count("subscriptions").await?;
    let refused = client
        .create_subscription(keyed(user, "long", subscribe(prices::PRO_MONTHLY_USD, Some(730))))
        .await
        .expect_err("not an operator");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("trial_days"), "{}", refused.message());
    assert_eq!(billing.count("subscriptions").await?, before);

    // The price's trial (14 days), with no card.
    let first = client
        .create_subscription(keyed(user, "first", subscribe(prices::PRO_MONTHLY_USD, None)))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    assert_eq!((first.status, trial_days(&first)), (pb::SubscriptionStatus::Trialing as i32, 14));

    // Cancel and subscribe again: no second trial of the plan, so a card is needed.
    let cancel = pb::CancelSubscriptionRequest {
        subscription_id: first.id.clone(),
        timing: pb::ChangeTiming::Immediately as i32,
        ..Default::default()
    };
    client.cancel_subscription(keyed(user, "cancel", cancel)).await?;
    let again = client
        .create_subscription(keyed(user, "again", subscribe(prices::PRO_MONTHLY_USD, None)))
        .await
        .expect_err("no trial, no card");
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::FailedPrecondition, "PAYMENT_METHOD_REQUIRED")
    );
    add_card(&mut client, user, "tok_success").await?;
    let paid = client
        .create_subscription(keyed(user, "again-2", subscribe(prices::PRO_MONTHLY_USD, None)))
        .await?
        .into_inner();
    assert_eq!(paid.subscription.map(|s| s.status), Some(pb::SubscriptionStatus::Active as i32));
    assert_eq!(paid.invoice.map(|i| (i.total_minor, i.status)), Some((2000, pb::InvoiceStatus::Paid as i32)));

    // An operator may grant a trial of any length, even to a returning customer.
    let operator = as_admin(user, subscribe(prices::PRO_YEARLY_USD, Some(30)));
    let mut operator = operator;
    operator.metadata_mut().insert("idempotency-key", "granted".parse()?);
    let granted =
        client.create_subscription(operator).await?.into_inner().subscription.expect("subscription");
    assert_eq!((granted.status, trial_days(&granted)), (pb::SubscriptionStatus::Trialing as i32, 30));
    // Declining a trial is anyone's right: 0 means pay now.
    let other = Uuid::now_v7();
    add_card(&mut client, other, "tok_success").await?;
    let now = client
        .create_subscription(keyed(other, "now", subscribe(prices::PRO_MONTHLY_USD, Some(0))))
        .await?
        .into_inner();
    assert_eq!(now.subscription.map(|s| s.status), Some(pb::SubscriptionStatus::Active as i32));
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn an_upgrade_during_a_trial_ends_it_and_is_charged_while_a_downgrade_keeps_it() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;

    // No card: the upgrade cannot be paid, so it is refused and nothing changes.
    let user = Uuid::now_v7();
    let sub = client
        .create_subscription(keyed(user, "sub", subscribe(prices::PRO_MONTHLY_USD, None)))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    billing.advance(3 * DAY).await?;
    let refused = client
        .change_plan(keyed(user, "up", change(&sub.id, prices::BUSINESS_MONTHLY_USD)))
        .await
        .expect_err("no card");
    assert_eq!(reason(&refused), "PAYMENT_METHOD_REQUIRED");
    let unchanged = subscription(&mut client, user, &sub.id).await?;
    assert_eq!(
        (unchanged.price_id.as_str(), unchanged.status),
        (prices::PRO_MONTHLY_USD, pb::SubscriptionStatus::Trialing as i32)
    );

    // With a card: the trial ends now and the new price's first period is paid.
    add_card(&mut client, user, "tok_success").await?;
    let upgraded = client
        .change_plan(keyed(user, "up-2", change(&sub.id, prices::BUSINESS_MONTHLY_USD)))
        .await?
        .into_inner();
    let invoice = upgraded.invoice.expect("invoice");
    assert_eq!((invoice.total_minor, invoice.status), (5000, pb::InvoiceStatus::Paid as i32));
    let s = upgraded.subscription.expect("subscription");
    assert_eq!(
        (s.price_id.as_str(), s.status),
        (prices::BUSINESS_MONTHLY_USD, pb::SubscriptionStatus::Active as i32)
    );
    assert_eq!(
        s.trial_end.map(|t| t.seconds),
        s.current_period_start.map(|t| t.seconds),
        "the trial ended at the change"
    );
    assert_eq!(trial_days(&s), 3);

    // A downgrade during a trial keeps it and bills nothing.
    let other = Uuid::now_v7();
    let sub = client
        .create_subscription(keyed(other, "sub", subscribe(prices::PRO_MONTHLY_USD, None)))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    let down = client
        .change_plan(keyed(other, "down", change(&sub.id, prices::FREE_MONTHLY_USD)))
        .await?
        .into_inner();
    assert!(down.invoice.is_none());
    let s = down.subscription.expect("subscription");
    assert_eq!(
        (s.price_id.as_str(), s.status),
        (prices::FREE_MONTHLY_USD, pb::SubscriptionStatus::Trialing as i32)
    );
    // That trial was of Pro, whatever price it ended on: no second one.
    let cancel = pb::CancelSubscriptionRequest {
        subscription_id: sub.id.clone(),
        timing: pb::ChangeTiming::Immediately as i32,
        ..Default::default()
    };
    client.cancel_subscription(keyed(other, "cancel", cancel)).await?;
    let again = client
        .create_subscription(keyed(other, "again", subscribe(prices::PRO_MONTHLY_USD, None)))
        .await
        .expect_err("no second trial of Pro");
    assert_eq!(reason(&again), "PAYMENT_METHOD_REQUIRED");
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn an_upgrade_whose_charge_fails_or_is_lost_is_never_kept_unpaid() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    add_card(&mut client, user, "tok_success").await?;
    let sub = client
        .create_subscription(keyed(user, "sub", subscribe(prices::PRO_MONTHLY_USD, Some(0))))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    billing.advance(10 * DAY).await?;
    let sql = billing.sql().await?;
    let dunning = || async { anyhow::Ok(billing.count("dunning_states").await?) };

    // Declined: the answer says so, the invoice is void, the price unchanged, no dunning.
    add_card(&mut client, user, "tok_declined").await?;
    let declined = client
        .change_plan(keyed(user, "up-1", change(&sub.id, prices::BUSINESS_MONTHLY_USD)))
        .await?
        .into_inner();
    assert_eq!(declined.payment_attempt.map(|a| a.status), Some(pb::PaymentAttemptStatus::Failed as i32));
    let invoice = declined.invoice.expect("invoice");
    let invoice = client
        .get_invoice(as_user(user, pb::GetInvoiceRequest { invoice_id: invoice.id }))
        .await?
        .into_inner()
        .invoice
        .expect("invoice");
    assert_eq!(invoice.status, pb::InvoiceStatus::Void as i32);
    assert_eq!(subscription(&mut client, user, &sub.id).await?.price_id, prices::PRO_MONTHLY_USD);
    assert_eq!(dunning().await?, 0, "a refused upgrade is not a debt");

    // Provider error: UNAVAILABLE; the retry learns the change was not paid.
    add_card(&mut client, user, "tok_provider_error").await?;
    let failed = client
        .change_plan(keyed(user, "up-2", change(&sub.id, prices::BUSINESS_MONTHLY_USD)))
        .await
        .expect_err("provider down");
    assert_eq!((failed.code(), reason(&failed).as_str()), (Code::Unavailable, "PROVIDER_ERROR"));
    let retried = client
        .change_plan(keyed(user, "up-2", change(&sub.id, prices::BUSINESS_MONTHLY_USD)))
        .await
        .expect_err("abandoned");
    assert_eq!((retried.code(), reason(&retried).as_str()), (Code::FailedPrecondition, "CHANGE_NOT_PAID"));
    assert_eq!(subscription(&mut client, user, &sub.id).await?.price_id, prices::PRO_MONTHLY_USD);

    // Lost answer: the change waits for the reconciler, which finds the
    // charge and only then puts the upgrade in force.
    add_card(&mut client, user, "tok_provider_timeout").await?;
    let lost = client
        .change_plan(keyed(user, "up-3", change(&sub.id, prices::BUSINESS_MONTHLY_USD)))
        .await
        .expect_err("timeout");
    assert_eq!(reason(&lost), "PROVIDER_TIMEOUT");
    assert_eq!(
        subscription(&mut client, user, &sub.id).await?.price_id,
        prices::PRO_MONTHLY_USD,
        "not yet paid"
    );
    let busy = client
        .change_plan(keyed(user, "down", change(&sub.id, prices::FREE_MONTHLY_USD)))
        .await
        .expect_err("one change at a time");
    assert_eq!((busy.code(), reason(&busy).as_str()), (Code::Aborted, "CHANGE_IN_PROGRESS"));
    let cancel = pb::CancelSubscriptionRequest {
        subscription_id: sub.id.clone(),
        timing: pb::ChangeTiming::Immediately as i32,
        ..Default::default()
    };
    let busy =
        client.cancel_subscription(keyed(user, "cancel", cancel)).await.expect_err("paying for a change");
    assert_eq!((busy.code(), reason(&busy).as_str()), (Code::Aborted, "CHANGE_IN_PROGRESS"));
    billing.advance(Duration::from_secs(61)).await?;
    assert_eq!(subscription(&mut client, user, &sub.id).await?.price_id, prices::BUSINESS_MONTHLY_USD);
    let (void, paid_changes): (i64, i64) = {
        let row = sql
            .query_one(
                "SELECT (SELECT count(*) FROM invoices WHERE status = 'void'), \
                        (SELECT count(*) FROM plan_changes WHERE status = 'applied')",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!((void, paid_changes), (2, 1));
    assert_eq!(dunning().await?, 0);
    assert_ledger_invariants(&billing).await
}
