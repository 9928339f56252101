//! A payment made while RabbitMQ is unreachable is committed with its
//! event; the event is delivered once the broker is back.

use std::time::Duration;

use tenx_proto::billing::v1 as pb;
use tenx_test_support::{ChaosProxy, addr_of};
use uuid::Uuid;

use crate::support::{TestBilling, eventually, keyed, prices};

#[tokio::test]
async fn a_payment_with_the_broker_down_commits_and_its_event_goes_out_after() -> anyhow::Result<()> {
    let broker = ChaosProxy::start(addr_of("amqp://127.0.0.1:5672")?).await?;
    let billing = TestBilling::start_with(|settings| {
        settings.amqp.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port()).into();
    })
    .await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    client.add_payment_method(keyed(user, "card", card)).await?;

    broker.cut();
    let request =
        pb::CreateSubscriptionRequest { price_id: prices::BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    let paid = client.create_subscription(keyed(user, "sub", request)).await?.into_inner();
    assert_eq!(
        paid.invoice.map(|i| i.status),
        Some(pb::InvoiceStatus::Paid as i32),
        "paid without the broker"
    );
    let unsent = || async {
        let row = billing
            .sql()
            .await?
            .query_one(
                "SELECT count(q.seq), count(*) FROM tenx_outbox o \
                 LEFT JOIN tenx_outbox_pending q ON q.partition = o.partition AND q.seq = o.seq \
                 WHERE o.event_type = 'billing.invoice.paid'",
                &[],
            )
            .await?;
        Ok::<_, anyhow::Error>((row.get::<_, i64>(0), row.get::<_, i64>(1)))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(unsent().await?, (1, 1), "committed with the payment, waiting for the broker");

    broker.restore();
    eventually(Duration::from_secs(20), "billing.invoice.paid published", || async {
        Ok(unsent().await? == (0, 1))
    })
    .await?;
    Ok(())
}
