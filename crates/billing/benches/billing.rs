//! Billing figures against the real servers, through the gRPC API:
//! RecordUsage throughput (one record per call, and batches of 100) and
//! PayInvoice latency (p50/p99, 16 at a time, `tok_success`) and
//! throughput.
//!
//! `cargo bench -p tenx-billing`; `TENX_BENCH_SAVE=1` rewrites the baseline.

#[path = "../tests/it/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tenx_proto::billing::v1 as pb;
use tenx_test_support::bench::{self, Figure, percentile};
use uuid::Uuid;

use support::{TestBilling, keyed, usage};

const CONCURRENCY: usize = 16;
const SINGLE_RECORDS: usize = 8_000;
const BATCHES: usize = 200;
const INVOICES: usize = 320;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let client = billing.client().await?;
    let mut figures = BTreeMap::new();

    // A metered subscription to report usage against.
    let user = Uuid::now_v7();
    let mut c = client.clone();
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    c.add_payment_method(keyed(user, "card", card)).await?;
    let request = pb::CreateSubscriptionRequest {
        price_id: "20000000-0000-4000-8000-000000000010".into(),
        ..Default::default()
    };
    let sub =
        c.create_subscription(keyed(user, "sub", request)).await?.into_inner().subscription.expect("sub").id;

    let started = Instant::now();
    run(SINGLE_RECORDS, |i| {
        let (mut c, request) = (client.clone(), usage(&billing, &sub, &[(&format!("single-{i}"), 1)]));
        async move { c.record_usage(request).await.map(drop).map_err(Into::into) }
    })
    .await?;
    figures.insert(
        "RecordUsage, 1 record per call, 16 concurrent",
        Figure::per_second(SINGLE_RECORDS, started.elapsed()),
    );

    let started = Instant::now();
    run(BATCHES, |i| {
        let events: Vec<String> = (0..100).map(|j| format!("batch-{i}-{j}")).collect();
        let records: Vec<(&str, i64)> = events.iter().map(|e| (e.as_str(), 1)).collect();
        let (mut c, request) = (client.clone(), usage(&billing, &sub, &records));
        async move { c.record_usage(request).await.map(drop).map_err(Into::into) }
    })
    .await?;
    figures.insert(
        "RecordUsage, batches of 100, 16 concurrent (records)",
        Figure::per_second(BATCHES * 100, started.elapsed()),
    );

    // Open invoices: a first charge declined, then a working card.
    let mut invoices = Vec::new();
    for _ in 0..INVOICES {
        let user = Uuid::now_v7();
        let mut c = client.clone();
        let declined = pb::AddPaymentMethodRequest { token: "tok_declined".into(), set_default: true };
        c.add_payment_method(keyed(user, "declined", declined)).await?;
        let request = pb::CreateSubscriptionRequest {
            price_id: "20000000-0000-4000-8000-000000000004".into(),
            ..Default::default()
        };
        let invoice = c
            .create_subscription(keyed(user, "sub", request))
            .await?
            .into_inner()
            .invoice
            .expect("invoice")
            .id;
        let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
        c.add_payment_method(keyed(user, "card", card)).await?;
        invoices.push((user, invoice));
    }
    let latencies = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(INVOICES)));
    let paying = run(INVOICES, |i| {
        let (mut c, (user, invoice), latencies) = (client.clone(), invoices[i].clone(), latencies.clone());
        async move {
            let request = pb::PayInvoiceRequest { invoice_id: invoice, ..Default::default() };
            let at = Instant::now();
            let paid = c.pay_invoice(keyed(user, "pay", request)).await?.into_inner();
            latencies.lock().unwrap_or_else(|p| p.into_inner()).push(at.elapsed());
            anyhow::ensure!(
                paid.invoice.map(|i| i.status) == Some(pb::InvoiceStatus::Paid as i32),
                "not paid"
            );
            Ok(())
        }
    })
    .await?;
    figures.insert("PayInvoice, payments/s, 16 concurrent", Figure::per_second(INVOICES, paying));
    let mut latencies = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    figures.insert("PayInvoice p50, 16 concurrent", Figure::ms(percentile(&mut latencies, 50.0)));
    figures.insert("PayInvoice p99, 16 concurrent", Figure::ms(percentile(&mut latencies, 99.0)));
    support::assert_ledger_invariants(&billing).await?;
    bench::report(&figures, concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json"))
}

/// Calls `call(i)` for i in 0..n, `CONCURRENCY` at a time.
async fn run<F, Fut>(n: usize, call: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use futures_util::StreamExt;
    let started = Instant::now();
    let mut calls = futures_util::stream::iter((0..n).map(call)).buffer_unordered(CONCURRENCY);
    while let Some(outcome) = calls.next().await {
        outcome?;
    }
    Ok(started.elapsed())
}
