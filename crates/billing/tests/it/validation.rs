//! Bad input to every RPC: the right code, the field named, nothing written,
//! the idempotency key still free.

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{TestBilling, as_admin, as_user, keyed};

const TABLES: [&str; 10] = [
    "customers",
    "payment_methods",
    "subscriptions",
    "invoices",
    "payment_attempts",
    "usage_records",
    "ledger_transactions",
    "idempotency_keys",
    "billing_jobs",
    "tenx_outbox",
];

#[tokio::test]
async fn bad_input_to_every_rpc_is_refused_with_the_field_named_and_nothing_written() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut c = billing.client().await?;
    let user = Uuid::now_v7();
    let mut before = Vec::new();
    for table in TABLES {
        before.push(billing.count(table).await?);
    }
    let sub = |price: &str, method: &str, trial: Option<u32>| pb::CreateSubscriptionRequest {
        price_id: price.into(),
        payment_method_id: method.into(),
        trial_days: trial,
    };
    let price = "20000000-0000-4000-8000-000000000004";
    let id = Uuid::now_v7().to_string();
    let outcomes: Vec<(&str, Result<(), tonic::Status>)> = vec![
        ("idempotency-key", c.create_subscription(as_user(user, sub(price, "", None))).await.map(drop)),
        ("price_id", c.create_subscription(keyed(user, "k", sub("pro", "", None))).await.map(drop)),
        ("payment_method_id", c.create_subscription(keyed(user, "k", sub(price, "x", None))).await.map(drop)),
        ("trial_days", c.create_subscription(keyed(user, "k", sub(price, "", Some(731)))).await.map(drop)),
        (
            "subscription_id",
            c.get_subscription(as_user(user, pb::GetSubscriptionRequest::default())).await.map(drop),
        ),
        (
            "page_size",
            c.list_subscriptions(as_user(
                user,
                pb::ListSubscriptionsRequest { page_size: 101, ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        (
            "statuses[0]",
            c.list_subscriptions(as_user(
                user,
                pb::ListSubscriptionsRequest { statuses: vec![99], ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        (
            "subscription_id",
            c.change_plan(keyed(
                user,
                "k",
                pb::ChangePlanRequest {
                    subscription_id: "x".into(),
                    price_id: price.into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        (
            "price_id",
            c.change_plan(keyed(
                user,
                "k",
                pb::ChangePlanRequest {
                    subscription_id: id.clone(),
                    price_id: "x".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        (
            "timing",
            c.change_plan(keyed(
                user,
                "k",
                pb::ChangePlanRequest {
                    subscription_id: id.clone(),
                    price_id: price.into(),
                    timing: 9,
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        (
            "proration_behavior",
            c.cancel_subscription(keyed(
                user,
                "k",
                pb::CancelSubscriptionRequest {
                    subscription_id: id.clone(),
                    proration_behavior: 9,
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        (
            "subscription_id",
            c.list_invoices(as_user(
                user,
                pb::ListInvoicesRequest { subscription_id: "x".into(), ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        (
            "page_token",
            c.list_invoices(as_user(
                user,
                pb::ListInvoicesRequest { page_token: "x".into(), ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        (
            "invoice_id",
            c.get_invoice(as_user(user, pb::GetInvoiceRequest { invoice_id: "1".into() })).await.map(drop),
        ),
        (
            "invoice_id",
            c.pay_invoice(keyed(
                user,
                "k",
                pb::PayInvoiceRequest { invoice_id: "1".into(), ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        (
            "payment_method_id",
            c.pay_invoice(keyed(
                user,
                "k",
                pb::PayInvoiceRequest { invoice_id: id.clone(), payment_method_id: "x".into() },
            ))
            .await
            .map(drop),
        ),
        (
            "idempotency-key",
            c.pay_invoice(as_user(
                user,
                pb::PayInvoiceRequest { invoice_id: id.clone(), ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        ("records", c.record_usage(as_admin(user, pb::RecordUsageRequest::default())).await.map(drop)),
        (
            "page_size",
            c.list_ledger_entries(as_admin(
                user,
                pb::ListLedgerEntriesRequest { page_size: 501, ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        (
            "account",
            c.list_ledger_entries(as_admin(
                user,
                pb::ListLedgerEntriesRequest { account: 99, ..Default::default() },
            ))
            .await
            .map(drop),
        ),
    ];
    for (field, outcome) in outcomes {
        let status = outcome.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let bad = tonic_types::StatusExt::get_details_bad_request(&status).expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, field);
    }
    // No caller at all.
    let anonymous = c.create_subscription(tonic::Request::new(sub(price, "", None))).await;
    assert_eq!(anonymous.expect_err("anonymous").code(), Code::Unauthenticated);
    for (table, count) in TABLES.iter().zip(before) {
        assert_eq!(billing.count(table).await?, count, "{table} untouched");
    }
    // The key "k" was never claimed: a valid request with it runs.
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    c.add_payment_method(keyed(user, "k", card)).await?;
    Ok(())
}
