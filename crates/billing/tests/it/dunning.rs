//! The scheduler with a clock the tests move: trial ends, renewals, and
//! the dunning ladder to cancellation (or recovery).

use std::time::Duration;

use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::support::{TestBilling, as_user, assert_ledger_invariants, events, keyed, prices};

const DAY: Duration = Duration::from_secs(86_400);

async fn card(client: &mut crate::support::Client, user: Uuid, token: &str) -> anyhow::Result<()> {
    let request = pb::AddPaymentMethodRequest { token: token.into(), set_default: true };
    client.add_payment_method(keyed(user, &format!("card-{}", Uuid::new_v4()), request)).await?;
    Ok(())
}

async fn subscription(
    client: &mut crate::support::Client,
    user: Uuid,
    id: &str,
) -> anyhow::Result<pb::Subscription> {
    client
        .get_subscription(as_user(user, pb::GetSubscriptionRequest { subscription_id: id.into() }))
        .await?
        .into_inner()
        .subscription
        .ok_or_else(|| anyhow::anyhow!("no subscription"))
}

async fn invoices(client: &mut crate::support::Client, user: Uuid) -> anyhow::Result<Vec<pb::Invoice>> {
    Ok(client.list_invoices(as_user(user, pb::ListInvoicesRequest::default())).await?.into_inner().invoices)
}

#[tokio::test]
async fn a_trial_ends_into_a_paid_renewal_and_periods_roll_month_by_month() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    card(&mut client, user, "tok_success").await?;
    let created = client
        .create_subscription(keyed(
            user,
            "s",
            pb::CreateSubscriptionRequest { price_id: prices::PRO_MONTHLY_USD.into(), ..Default::default() },
        ))
        .await?
        .into_inner();
    let id = created.subscription.map(|s| s.id).unwrap_or_default();

    billing.advance(13 * DAY).await?;
    assert_eq!(subscription(&mut client, user, &id).await?.status, pb::SubscriptionStatus::Trialing as i32);
    billing.advance(DAY).await?;
    let sub = subscription(&mut client, user, &id).await?;
    assert_eq!(sub.status, pb::SubscriptionStatus::Active as i32, "the trial ended");
    let first = invoices(&mut client, user).await?;
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].status, first[0].amount_paid_minor), (pb::InvoiceStatus::Paid as i32, 2000));
    assert_eq!(first[0].billing_reason, pb::BillingReason::SubscriptionCycle as i32);
    assert_eq!(sub.current_period_start, sub.billing_cycle_anchor, "the anchor is the trial end");

    // Two more months: two more paid invoices, numbered in order; the
    // revenue of each ended period is recognized.
    billing.advance(31 * DAY).await?;
    billing.advance(28 * DAY).await?;
    let all = invoices(&mut client, user).await?;
    let numbers: Vec<_> =
        all.iter().rev().map(|i| i.number.rsplit('-').next().unwrap_or_default().to_owned()).collect();
    assert_eq!(numbers, vec!["0001", "0002", "0003"]);
    assert!(all.iter().all(|i| i.status == pb::InvoiceStatus::Paid as i32));
    let recognized: i64 = billing
        .sql()
        .await?
        .query_one("SELECT COALESCE(-sum(amount_minor), 0)::bigint FROM ledger_entries WHERE account = 'revenue_subscriptions'", &[])
        .await?
        .get(0);
    assert_eq!(recognized, 4000, "two finished paid periods earned");
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn a_failing_renewal_walks_the_dunning_ladder_to_cancellation() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    card(&mut client, user, "tok_success").await?;
    let created = client
        .create_subscription(keyed(
            user,
            "s",
            pb::CreateSubscriptionRequest {
                price_id: prices::BUSINESS_MONTHLY_USD.into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let id = created.subscription.map(|s| s.id).unwrap_or_default();
    card(&mut client, user, "tok_insufficient_funds").await?;

    // Day 0: the renewal fails → PAST_DUE, retry on day 1.
    billing.advance(31 * DAY).await?;
    assert_eq!(subscription(&mut client, user, &id).await?.status, pb::SubscriptionStatus::PastDue as i32);
    let renewal = invoices(&mut client, user).await?.remove(0);
    assert_eq!(renewal.status, pb::InvoiceStatus::Open as i32);
    assert!(renewal.next_payment_attempt_at.is_some());
    // Days 1 and 3: retries fail, still PAST_DUE.
    for days in [1, 2] {
        billing.advance(days * DAY).await?;
        assert_eq!(
            subscription(&mut client, user, &id).await?.status,
            pb::SubscriptionStatus::PastDue as i32
        );
    }
    // Day 5: the last retry fails → CANCELED, the invoice written off.
    billing.advance(2 * DAY).await?;
    let sub = subscription(&mut client, user, &id).await?;
    assert_eq!(sub.status, pb::SubscriptionStatus::Canceled as i32);
    assert_eq!(sub.cancellation_reason, pb::CancellationReason::PaymentFailed as i32);
    let renewal = client
        .get_invoice(as_user(user, pb::GetInvoiceRequest { invoice_id: renewal.id }))
        .await?
        .into_inner()
        .invoice
        .expect("invoice");
    assert_eq!(renewal.status, pb::InvoiceStatus::Uncollectible as i32);
    assert_eq!(renewal.payment_attempts.len(), 4, "the renewal charge and three retries");
    assert!(renewal.payment_attempts.iter().all(|a| a.initiated_by != pb::PaymentTrigger::Customer as i32));
    assert_eq!(events(&billing, "billing.payment.failed").await?, 4);
    assert_eq!(events(&billing, "billing.subscription.canceled").await?, 1);
    let last: Vec<u8> = billing
        .sql()
        .await?
        .query_one("SELECT payload FROM tenx_outbox WHERE event_type = 'billing.payment.failed' ORDER BY seq DESC LIMIT 1", &[])
        .await?
        .get(0);
    let last = <pb::PaymentFailed as prost::Message>::decode(last.as_slice())?;
    assert!(last.r#final && last.next_retry_at.is_none(), "the last notice says it was the last");
    // The amount travels as a number with its currency's exponent (USD: 2),
    // formatted the one way tenx_common::money does.
    assert_eq!(last.currency_exponent, Some(2));
    assert_eq!(last.amount_due_display, tenx_common::money::format(&last.currency, last.amount_due_minor, 2));
    // Nothing more happens to an ended subscription.
    assert_eq!(billing.advance(40 * DAY).await?, 0);
    let bad_debt: i64 = billing
        .sql()
        .await?
        .query_one(
            "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM ledger_entries WHERE account = 'bad_debt'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(bad_debt, 5000);
    let (_, metrics) = tenx_test_support::http_get(billing.running.admin_addr, "/metrics").await?;
    for line in [
        r#"tenx_billing_payment_attempts_total{outcome="insufficient_funds",initiated_by="automatic"} 1"#,
        r#"tenx_billing_payment_attempts_total{outcome="insufficient_funds",initiated_by="dunning"} 3"#,
        r#"tenx_billing_jobs_total{kind="dunning_retry",outcome="done"} 3"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from\n{metrics}");
    }
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn a_new_card_during_dunning_recovers_the_subscription_at_the_next_retry() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    card(&mut client, user, "tok_success").await?;
    let created = client
        .create_subscription(keyed(
            user,
            "s",
            pb::CreateSubscriptionRequest {
                price_id: prices::BUSINESS_MONTHLY_USD.into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let id = created.subscription.map(|s| s.id).unwrap_or_default();
    card(&mut client, user, "tok_declined").await?;
    billing.advance(31 * DAY).await?;
    assert_eq!(subscription(&mut client, user, &id).await?.status, pb::SubscriptionStatus::PastDue as i32);

    card(&mut client, user, "tok_success").await?;
    billing.advance(DAY).await?;
    assert_eq!(subscription(&mut client, user, &id).await?.status, pb::SubscriptionStatus::Active as i32);
    let renewal = invoices(&mut client, user).await?.remove(0);
    assert_eq!(renewal.status, pb::InvoiceStatus::Paid as i32);
    // The rest of the ladder is off.
    billing.advance(5 * DAY).await?;
    assert_eq!(events(&billing, "billing.payment.failed").await?, 1);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn an_incomplete_subscription_not_paid_in_time_is_canceled_and_its_invoice_voided() -> anyhow::Result<()>
{
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    card(&mut client, user, "tok_declined").await?;
    let created = client
        .create_subscription(keyed(
            user,
            "s",
            pb::CreateSubscriptionRequest {
                price_id: prices::BUSINESS_MONTHLY_USD.into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let id = created.subscription.map(|s| s.id).unwrap_or_default();
    billing.advance(Duration::from_secs(24 * 3600)).await?;
    let sub = subscription(&mut client, user, &id).await?;
    assert_eq!(sub.status, pb::SubscriptionStatus::Canceled as i32);
    assert_eq!(sub.cancellation_reason, pb::CancellationReason::IncompleteExpired as i32);
    let invoice = invoices(&mut client, user).await?.remove(0);
    assert_eq!(invoice.status, pb::InvoiceStatus::Void as i32);
    let receivable: i64 = billing
        .sql()
        .await?
        .query_one("SELECT COALESCE(sum(amount_minor), 0)::bigint FROM ledger_entries WHERE account = 'accounts_receivable'", &[])
        .await?
        .get(0);
    assert_eq!(receivable, 0, "the void reversed the receivable");
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn with_final_action_unpaid_the_subscription_waits_unpaid_and_a_payment_revives_it()
-> anyhow::Result<()> {
    let billing = TestBilling::start_with(|s| s.dunning.final_action = "unpaid".into()).await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    card(&mut client, user, "tok_success").await?;
    let created = client
        .create_subscription(keyed(
            user,
            "s",
            pb::CreateSubscriptionRequest {
                price_id: prices::BUSINESS_MONTHLY_USD.into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let id = created.subscription.map(|s| s.id).unwrap_or_default();
    card(&mut client, user, "tok_declined").await?;
    billing.advance(31 * DAY).await?;
    for days in [1, 2, 2] {
        billing.advance(days * DAY).await?;
    }
    assert_eq!(subscription(&mut client, user, &id).await?.status, pb::SubscriptionStatus::Unpaid as i32);
    let open = invoices(&mut client, user).await?.remove(0);
    assert_eq!(open.status, pb::InvoiceStatus::Open as i32, "the invoice stays owed");
    // Periods roll while UNPAID, without new invoices.
    billing.advance(28 * DAY).await?;
    assert_eq!(invoices(&mut client, user).await?.len(), 2);
    card(&mut client, user, "tok_success").await?;
    let pay = pb::PayInvoiceRequest { invoice_id: open.id, ..Default::default() };
    client.pay_invoice(keyed(user, "pay", pay)).await?;
    assert_eq!(subscription(&mut client, user, &id).await?.status, pb::SubscriptionStatus::Active as i32);
    assert_ledger_invariants(&billing).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_instances_issue_one_renewal_per_subscription() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let mut users = Vec::new();
    for _ in 0..12 {
        let user = Uuid::now_v7();
        card(&mut client, user, "tok_success").await?;
        client
            .create_subscription(keyed(
                user,
                "s",
                pb::CreateSubscriptionRequest {
                    price_id: prices::BUSINESS_MONTHLY_USD.into(),
                    ..Default::default()
                },
            ))
            .await?;
        users.push(user);
    }
    // A second instance of the service on the same database and clock.
    let other = tenx_billing::App::build_with_clock(
        billing.settings.clone(),
        tenx_common::metrics::Metrics::default(),
        std::sync::Arc::new(billing.clock.clone()),
    )
    .await?
    .scheduler();
    billing.clock.advance(31 * DAY);
    let (a, b) = tokio::join!(billing.scheduler.run_due(), other.run_due());
    let (a, b) = (a?, b?);
    assert!(a + b >= 24, "period ends and charges ran: {a} + {b}");
    for user in users {
        let all = invoices(&mut client, user).await?;
        assert_eq!(all.len(), 2, "one renewal, not two");
        assert!(all.iter().all(|i| i.status == pb::InvoiceStatus::Paid as i32));
    }
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn expired_idempotency_keys_and_old_finished_jobs_are_swept() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    card(&mut client, user, "tok_success").await?;
    client
        .create_subscription(keyed(
            user,
            "s",
            pb::CreateSubscriptionRequest {
                price_id: prices::BUSINESS_MONTHLY_USD.into(),
                ..Default::default()
            },
        ))
        .await?;
    billing.advance(31 * DAY).await?; // a renewal: two jobs done, one pending
    let (keys, jobs) = (billing.count("idempotency_keys").await?, billing.count("billing_jobs").await?);
    assert_eq!(keys, 2);
    assert!(jobs >= 3);
    // The keys expired after 24 h; finished jobs are kept for 30 days
    // (none is older: the charges' reconcile jobs were deleted when the
    // charges settled).
    assert_eq!(billing.scheduler.sweep().await?, (2, 0));
    billing.clock.advance(31 * DAY);
    let (_, swept_jobs) = billing.scheduler.sweep().await?;
    assert!(swept_jobs >= 2, "{swept_jobs}");
    let pending: i64 = billing
        .sql()
        .await?
        .query_one("SELECT count(*) FROM billing_jobs WHERE status = 'pending'", &[])
        .await?
        .get(0);
    assert_eq!(billing.count("billing_jobs").await?, pending, "only pending jobs are left");
    Ok(())
}
