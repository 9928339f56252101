//! Metered usage: every accepted record is billed exactly once, however
//! many arrive at once and whenever the invoice is cut.

use std::time::Duration;

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{TestBilling, as_admin, as_user, assert_ledger_invariants, keyed, reason, usage};

const API_MONTHLY_USD: &str = "20000000-0000-4000-8000-000000000010";
const DAY: Duration = Duration::from_secs(86_400);

async fn metered(billing: &TestBilling, user: Uuid) -> anyhow::Result<String> {
    let mut client = billing.client().await?;
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    client.add_payment_method(keyed(user, "card", card)).await?;
    let request = pb::CreateSubscriptionRequest { price_id: API_MONTHLY_USD.into(), ..Default::default() };
    let sub = client
        .create_subscription(keyed(user, "sub", request))
        .await?
        .into_inner()
        .subscription
        .expect("sub");
    assert_eq!(sub.status, pb::SubscriptionStatus::Active as i32, "a $0 base needs no first charge");
    Ok(sub.id)
}

/// (recorded, billed on invoices, unbilled) quantities of a subscription.
async fn quantities(billing: &TestBilling, sub: &str) -> anyhow::Result<(i64, i64, i64)> {
    let sub = Uuid::parse_str(sub)?;
    let row = billing
        .sql()
        .await?
        .query_one(
            "SELECT (SELECT COALESCE(sum(quantity), 0)::bigint FROM usage_records WHERE subscription_id = $1), \
                    (SELECT COALESCE(sum(l.quantity), 0)::bigint FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
                       WHERE i.subscription_id = $1 AND l.kind = 'usage'), \
                    (SELECT COALESCE(sum(quantity), 0)::bigint FROM usage_records WHERE subscription_id = $1 AND invoice_id IS NULL)",
            &[&sub],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_records_are_all_billed_once_even_with_a_renewal_in_the_middle()
-> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let user = Uuid::now_v7();
    let sub = metered(&billing, user).await?;
    let client = billing.client().await?;
    billing.clock.advance(30 * DAY);

    let workers = (0..64).map(|w| {
        let (mut client, sub) = (client.clone(), sub.clone());
        let billing = &billing;
        async move {
            let mut accepted = 0_i64;
            for i in 0..157 {
                let quantity = 1 + (i % 3);
                let reply =
                    client.record_usage(usage(billing, &sub, &[(&format!("w{w}-e{i}"), quantity)])).await?;
                if reply.into_inner().results[0].outcome == pb::UsageRecordOutcome::Accepted as i32 {
                    accepted += quantity;
                }
            }
            anyhow::Ok(accepted)
        }
    });
    // The period ends (Feb 1) while the records stream in.
    let renewal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        billing.clock.advance(DAY);
        billing.scheduler.run_due().await
    };
    let (counted, renewed) = tokio::join!(futures_util::future::join_all(workers), renewal);
    renewed?;
    let accepted: i64 = counted.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().sum();
    let (recorded, billed, unbilled) = quantities(&billing, &sub).await?;
    assert_eq!(recorded, accepted, "every accepted record is stored");
    assert_eq!(billed + unbilled, recorded, "nothing is lost: billed + unbilled = recorded");
    assert!(billed > 0, "the renewal billed what came before it");

    // The next period end bills the rest: everything recorded is invoiced.
    billing.clock.advance(29 * DAY);
    billing.scheduler.run_due().await?;
    let (recorded, billed, unbilled) = quantities(&billing, &sub).await?;
    assert_eq!((billed, unbilled), (recorded, 0));
    let mut client = billing.client().await?;
    let invoices =
        client.list_invoices(as_user(user, pb::ListInvoicesRequest::default())).await?.into_inner().invoices;
    let charged: i64 = invoices.iter().map(|i| i.total_minor).sum();
    let lines: i64 = {
        let mut total = 0;
        for invoice in &invoices {
            let full = client
                .get_invoice(as_user(user, pb::GetInvoiceRequest { invoice_id: invoice.id.clone() }))
                .await?
                .into_inner()
                .invoice
                .expect("invoice");
            // $0.50 per started 1,000 calls, per invoice.
            for line in full.lines {
                assert_eq!(line.amount_minor, (line.quantity + 999) / 1000 * 50);
                total += line.amount_minor;
            }
        }
        total
    };
    assert_eq!(charged, lines);
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn duplicates_conflicts_and_bad_usage_are_told_apart_and_change_nothing() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let user = Uuid::now_v7();
    let sub = metered(&billing, user).await?;
    let mut client = billing.client().await?;

    let first = client.record_usage(usage(&billing, &sub, &[("a", 5), ("b", 7)])).await?.into_inner();
    let outcomes = |r: &pb::RecordUsageResponse| r.results.iter().map(|x| x.outcome).collect::<Vec<_>>();
    let accepted = pb::UsageRecordOutcome::Accepted as i32;
    assert_eq!(outcomes(&first), vec![accepted, accepted]);
    let again =
        client.record_usage(usage(&billing, &sub, &[("a", 5), ("b", 8), ("c", 1)])).await?.into_inner();
    assert_eq!(
        outcomes(&again),
        vec![pb::UsageRecordOutcome::Duplicate as i32, pb::UsageRecordOutcome::Conflict as i32, accepted]
    );
    assert_eq!(quantities(&billing, &sub).await?.0, 13, "5 + 7 (the first b stands) + 1");

    let before = billing.count("usage_records").await?;
    let bad = [
        (usage(&billing, "not-a-uuid", &[("x", 1)]), "records[0].subscription_id"),
        (usage(&billing, &sub, &[("x", 0)]), "records[0].quantity"),
        (usage(&billing, &sub, &[("ok", 1), ("", 1)]), "records[1].event_id"),
    ];
    for (request, field) in bad {
        let refused = client.record_usage(request).await.expect_err(field);
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        let violation = tonic_types::StatusExt::get_details_bad_request(&refused).expect("BadRequest");
        assert_eq!(violation.field_violations[0].field, field);
    }
    let mut future = usage(&billing, &sub, &[("f", 1)]);
    future.get_mut().records[0].timestamp =
        Some((tenx_billing::clock::Clock::now(&billing.clock) + Duration::from_secs(3600)).into());
    assert_eq!(client.record_usage(future).await.expect_err("future").code(), Code::InvalidArgument);
    let not_admin = as_user(user, usage(&billing, &sub, &[("n", 1)]).into_inner());
    assert_eq!(client.record_usage(not_admin).await.expect_err("customer").code(), Code::PermissionDenied);
    let unknown = client.record_usage(usage(&billing, &Uuid::now_v7().to_string(), &[("u", 1)])).await;
    assert_eq!(unknown.expect_err("unknown").code(), Code::NotFound);
    assert_eq!(billing.count("usage_records").await?, before, "nothing written");

    // A non-metered subscription refuses usage; an ended one too.
    let request = pb::CancelSubscriptionRequest {
        subscription_id: sub.clone(),
        timing: pb::ChangeTiming::Immediately as i32,
        ..Default::default()
    };
    let canceled = client.cancel_subscription(keyed(user, "cancel", request)).await?.into_inner();
    let last = canceled.invoice.expect("a final invoice for the unbilled usage");
    assert_eq!(last.lines.iter().map(|l| l.quantity).sum::<i64>(), 13);
    let refused = client.record_usage(usage(&billing, &sub, &[("late", 1)])).await.expect_err("canceled");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "SUBSCRIPTION_NOT_BILLABLE")
    );
    assert_eq!(quantities(&billing, &sub).await?, (13, 13, 0));
    assert_ledger_invariants(&billing).await
}

#[tokio::test]
async fn the_ledger_is_listed_for_operators_and_every_transaction_balances() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let user = Uuid::now_v7();
    let mut client = billing.client().await?;
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    client.add_payment_method(keyed(user, "card", card)).await?;
    let request = pb::CreateSubscriptionRequest {
        price_id: "20000000-0000-4000-8000-000000000004".into(),
        ..Default::default()
    };
    client.create_subscription(keyed(user, "sub", request)).await?;

    let denied = client.list_ledger_entries(as_user(user, pb::ListLedgerEntriesRequest::default())).await;
    assert_eq!(denied.expect_err("not an operator").code(), Code::PermissionDenied);
    let page = |token: String| {
        as_admin(user, pb::ListLedgerEntriesRequest { page_size: 2, page_token: token, ..Default::default() })
    };
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let reply = client.list_ledger_entries(page(token)).await?.into_inner();
        entries.extend(reply.entries);
        if reply.next_page_token.is_empty() {
            break;
        }
        token = reply.next_page_token;
    }
    assert_eq!(
        entries.len(),
        4,
        "invoice: Dr receivable / Cr deferred; payment: Dr clearing / Cr receivable"
    );
    let mut by_transaction = std::collections::BTreeMap::<String, i64>::new();
    for e in &entries {
        let signed =
            if e.direction == pb::EntryDirection::Debit as i32 { e.amount_minor } else { -e.amount_minor };
        *by_transaction.entry(e.transaction_id.clone()).or_default() += signed;
    }
    assert!(by_transaction.values().all(|sum| *sum == 0), "{by_transaction:?}");
    let receivable = client
        .list_ledger_entries(as_admin(
            user,
            pb::ListLedgerEntriesRequest {
                account: pb::LedgerAccount::AccountsReceivable as i32,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .entries;
    assert_eq!(receivable.len(), 2);
    assert!(receivable.iter().all(|e| e.amount_minor == 5000));
    Ok(())
}

#[tokio::test]
async fn usage_that_would_overflow_an_amount_is_refused_naming_the_field_and_writes_nothing()
-> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    // The dearest unit a price may have ($999,999,999.99 per call): a
    // billion calls is 10^20 cents, past what an i64 holds.
    let price = Uuid::now_v7();
    billing
        .sql()
        .await?
        .execute(
            "INSERT INTO prices (id, plan_id, lookup_key, currency, unit_amount_minor, billing_interval, trial_days, \
               meter, usage_unit_amount_minor, usage_package_size, created_at) \
             VALUES ($1, '10000000-0000-4000-8000-000000000004', 'dear_calls_usd', 'USD', 0, 'month', 0, \
               'dear_calls', 99999999999, 1, '2026-01-01T00:00:00Z')",
            &[&price],
        )
        .await?;
    let user = Uuid::now_v7();
    let mut client = billing.client().await?;
    let request = pb::CreateSubscriptionRequest { price_id: price.to_string(), ..Default::default() };
    let sub = client.create_subscription(keyed(user, "sub", request)).await?.into_inner().subscription;
    let sub = sub.map(|s| s.id).unwrap_or_default();

    let refused = client.record_usage(usage(&billing, &sub, &[("ok", 5), ("huge", 1_000_000_000)])).await;
    let refused = refused.expect_err("an amount past i64");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let violation = tonic_types::StatusExt::get_details_bad_request(&refused).expect("BadRequest");
    assert_eq!(violation.field_violations[0].field, "records.quantity");
    assert_eq!(quantities(&billing, &sub).await?, (0, 0, 0), "the whole batch was refused");

    // What fits is billed at the period end, exactly.
    client.record_usage(usage(&billing, &sub, &[("ok", 5)])).await?;
    billing.advance(32 * DAY).await?;
    assert_eq!(quantities(&billing, &sub).await?, (5, 5, 0));
    let billed: i64 = billing
        .sql()
        .await?
        .query_one("SELECT amount_minor FROM invoice_lines WHERE kind = 'usage' AND price_id = $1", &[&price])
        .await?
        .get(0);
    assert_eq!(billed, 5 * 99_999_999_999);
    assert_ledger_invariants(&billing).await
}
