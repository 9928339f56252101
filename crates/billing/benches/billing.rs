//! Billing figures against the real servers, through the gRPC API:
//! RecordUsage throughput (one record per call, and batches of 100) and
//! PayInvoice latency (p50/p99, 16 at a time) and throughput, with the
//! simulator (`tok_success`) and with the Stripe provider against an
//! empty localstripe of the bench's own (`make deps` installs it).
//!
//! `cargo bench -p tenx-billing`; `TENX_BENCH_SAVE=1` rewrites the baseline;
//! `TENX_BENCH_ONLY=simulator` runs only the sections so named;
//! `TENX_BENCH_PERF=DIR` profiles each paying phase (`bench::Profile`).

#[path = "../tests/it/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tenx_proto::billing::v1 as pb;
use tenx_test_support::bench::{self, Figure, percentile};
use uuid::Uuid;

use support::{TestBilling, bearer, localstripe, usage};

const CONCURRENCY: usize = 16;
const SINGLE_RECORDS: usize = 8_000;
const BATCHES: usize = 200;
const INVOICES: usize = 1_000;
/// Paid before the clock starts, so the figures are billing's steady
/// state: each of its pooled connections has prepared the payment's
/// statements and settled on their plans by then (Postgres plans a
/// prepared statement afresh for each of its first five runs on a
/// connection, which at 1,000 payments over 16 connections was about a
/// tenth of Postgres's time). 16 per connection of the pool.
const WARM_UP: usize = 256;
/// Fewer through localstripe: it is a Python process that rewrites its
/// whole store on every change, so it, not billing, sets that pace.
const STRIPE_INVOICES: usize = 64;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `TENX_BENCH_ONLY=simulator` measures only the sections whose name
    // has that in it (to profile one path); such a run saves no baseline.
    let only = std::env::var("TENX_BENCH_ONLY").unwrap_or_default();
    anyhow::ensure!(
        only.is_empty() || std::env::var_os("TENX_BENCH_SAVE").is_none(),
        "a baseline is saved from a whole run only"
    );
    let measures = |section: &str| section.contains(only.as_str());
    let billing = TestBilling::start().await?;
    let client = billing.client().await?;
    let mut figures = BTreeMap::new();
    if measures("RecordUsage") {
        record_usage(&billing, &client, &mut figures).await?;
    }
    if measures("PayInvoice, simulator") {
        // Open invoices (a first charge declined, then a working card),
        // paid 16 at a time.
        let cards = |_| async { Ok(("tok_declined".to_owned(), "tok_success".to_owned())) };
        let invoices = open_invoices(&client, WARM_UP + INVOICES, cards).await?;
        let (warm_up, invoices) = invoices.split_at(WARM_UP);
        run_payments(&client, warm_up).await?;
        let names = [
            "PayInvoice p50, 16 concurrent",
            "PayInvoice p99, 16 concurrent",
            "PayInvoice, payments/s, 16 concurrent",
            "PayInvoice, machine CPU per payment, 16 concurrent",
        ];
        pay(&client, invoices, names, &mut figures).await?;
        support::assert_ledger_invariants(&billing).await?;
    }
    if measures("PayInvoice, Stripe (localstripe)") {
        // A localstripe of its own, empty: the shared one's cost per call
        // grows with everything earlier runs left in it.
        let _localstripe = localstripe::Fresh::start().await?;
        let stripe = localstripe::with_stripe("whsec_bench").await?;
        let stripe_client = stripe.client().await?;
        let cards = |_| async {
            Ok((localstripe::card("4000000000000341").await?, localstripe::card("4242424242424242").await?))
        };
        let invoices = open_invoices(&stripe_client, STRIPE_INVOICES, cards).await?;
        let names = [
            "PayInvoice p50, Stripe (localstripe), 16 concurrent",
            "PayInvoice p99, Stripe (localstripe), 16 concurrent",
            "PayInvoice, payments/s, Stripe (localstripe), 16 concurrent",
            "PayInvoice, machine CPU per payment, Stripe (localstripe), 16 concurrent",
        ];
        pay(&stripe_client, &invoices, names, &mut figures).await?;
        support::assert_ledger_invariants(&stripe).await?;
        drop(stripe_client);
        stripe.stop().await?;
    }
    drop(client);
    billing.stop().await?;
    bench::report(&figures, concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json"))
}

/// RecordUsage against a metered subscription: one record per call, then
/// batches of 100.
async fn record_usage(
    billing: &TestBilling,
    client: &support::Client,
    figures: &mut BTreeMap<&'static str, Figure>,
) -> anyhow::Result<()> {
    // A metered subscription to report usage against.
    let user = Customer::new();
    let mut c = client.clone();
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    c.add_payment_method(user.keyed("card", card)).await?;
    let request = pb::CreateSubscriptionRequest {
        price_id: "20000000-0000-4000-8000-000000000010".into(),
        ..Default::default()
    };
    let sub =
        c.create_subscription(user.keyed("sub", request)).await?.into_inner().subscription.expect("sub").id;

    let started = Instant::now();
    run(SINGLE_RECORDS, |i| {
        let (mut c, request) = (client.clone(), usage(billing, &sub, &[(&format!("single-{i}"), 1)]));
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
        let (mut c, request) = (client.clone(), usage(billing, &sub, &records));
        async move { c.record_usage(request).await.map(drop).map_err(Into::into) }
    })
    .await?;
    figures.insert(
        "RecordUsage, batches of 100, 16 concurrent (records)",
        Figure::per_second(BATCHES * 100, started.elapsed()),
    );

    Ok(())
}

/// `n` customers, each with an open invoice (its first charge declined by
/// the first card) and a working second card as default: `(customer, invoice)`.
async fn open_invoices<F, Fut>(
    client: &support::Client,
    n: usize,
    cards: F,
) -> anyhow::Result<Vec<(Customer, String)>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(String, String)>>,
{
    use futures_util::StreamExt;
    // Set up 16 at a time too (the figures come from the paying below).
    let cards = &cards;
    let open = futures_util::stream::iter(0..n).map(|i| async move {
        let (declined, working) = cards(i).await?;
        let user = Customer::new();
        let mut c = client.clone();
        let declined = pb::AddPaymentMethodRequest { token: declined, set_default: true };
        c.add_payment_method(user.keyed("declined", declined)).await?;
        let request = pb::CreateSubscriptionRequest {
            price_id: "20000000-0000-4000-8000-000000000004".into(),
            ..Default::default()
        };
        let invoice = c
            .create_subscription(user.keyed("sub", request))
            .await?
            .into_inner()
            .invoice
            .ok_or_else(|| anyhow::anyhow!("no invoice"))?
            .id;
        let card = pb::AddPaymentMethodRequest { token: working, set_default: true };
        c.add_payment_method(user.keyed("card", card)).await?;
        anyhow::Ok((user, invoice))
    });
    open.buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await.into_iter().collect()
}

/// Pays every invoice, `CONCURRENCY` at a time: figures `names` = p50,
/// p99, payments/s and the whole machine's busy CPU per payment
/// (Postgres, its replica, RabbitMQ and the client included), whose split
/// by process is printed beside them.
async fn pay(
    client: &support::Client,
    invoices: &[(Customer, String)],
    names: [&'static str; 4],
    figures: &mut BTreeMap<&'static str, Figure>,
) -> anyhow::Result<()> {
    let [p50, p99, rate, per_payment] = names;
    let profile = bench::Profile::start(rate)?;
    let by_process = bench::CpuByProcess::start();
    let cpu = bench::busy_cpu_us();
    let (paying, mut latencies) = run_payments(client, invoices).await?;
    let cpu_ms = bench::busy_cpu_us().saturating_sub(cpu) as f64 / 1e3 / invoices.len() as f64;
    drop(profile);
    // Whose CPU it was: Postgres's connections and replication, the
    // broker, this process (billing and the client) and the rest.
    println!("{per_payment}, by process: {}", by_process.per_op_line(invoices.len()));
    figures.insert(p50, Figure::ms(percentile(&mut latencies, 50.0)));
    figures.insert(p99, Figure::ms(percentile(&mut latencies, 99.0)));
    figures.insert(rate, Figure::per_second(invoices.len(), paying));
    figures.insert(per_payment, Figure { value: cpu_ms, unit: "ms", higher_is_better: false });
    Ok(())
}

/// Pays every invoice, `CONCURRENCY` at a time, each checked paid: how
/// long it took and each payment's latency.
async fn run_payments(
    client: &support::Client,
    invoices: &[(Customer, String)],
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let latencies = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(invoices.len())));
    let paying = run(invoices.len(), |i| {
        let (mut c, (user, invoice), latencies) = (client.clone(), invoices[i].clone(), latencies.clone());
        async move {
            let request = pb::PayInvoiceRequest { invoice_id: invoice, ..Default::default() };
            let at = Instant::now();
            let paid = c.pay_invoice(user.keyed("pay", request)).await?.into_inner();
            latencies.lock().unwrap_or_else(|p| p.into_inner()).push(at.elapsed());
            anyhow::ensure!(
                paid.invoice.map(|i| i.status) == Some(pb::InvoiceStatus::Paid as i32),
                "not paid"
            );
            Ok(())
        }
    })
    .await?;
    let latencies = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((paying, latencies))
}

/// A customer's client: one access token for all its calls, as a real
/// client keeps it (the service verifies its signature once).
#[derive(Clone)]
struct Customer {
    token: String,
}

impl Customer {
    fn new() -> Self {
        Self { token: tenx_auth::testing::user_token(Uuid::now_v7(), &[]) }
    }

    /// `message` with the token and an idempotency key.
    fn keyed<T>(&self, key: &str, message: T) -> tonic::Request<T> {
        let mut request = bearer(&self.token, message);
        request.metadata_mut().insert("idempotency-key", key.parse().expect("a valid key"));
        request
    }
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
