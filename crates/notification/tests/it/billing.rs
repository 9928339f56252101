//! Billing's events → receipts and payment-failed notices, as the
//! customer gets them.

use prost_types::Timestamp;
use tenx_proto::billing::v1 as billing;
use tenx_proto::notification::v1 as pb;
use uuid::Uuid;

use crate::support::{TestNotify, as_user, mails_to, subject, text_part, unique_email, wait_for_mails};

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

const MAR_1: i64 = 1_772_323_200; // 2026-03-01T00:00:00Z
const APR_1: i64 = 1_775_001_600; // 2026-04-01T00:00:00Z

/// What billing publishes after charging a Pro renewal with a proration
/// credit: USD 20.00 − 0.17 = 19.83 to Visa •••• 4242.
fn invoice_paid(user: Uuid, email: &str, number: &str, paid_minor: i64) -> billing::InvoicePaid {
    let line = |description: &str, amount_minor| billing::InvoiceLine {
        id: Uuid::now_v7().to_string(),
        description: description.into(),
        quantity: 1,
        amount_minor,
        period_start: at(MAR_1),
        period_end: at(APR_1),
        ..Default::default()
    };
    billing::InvoicePaid {
        invoice: Some(billing::Invoice {
            id: Uuid::now_v7().to_string(),
            number: number.into(),
            status: billing::InvoiceStatus::Paid as i32,
            currency: "USD".into(),
            total_minor: paid_minor,
            amount_due_minor: paid_minor,
            amount_paid_minor: paid_minor,
            period_start: at(MAR_1),
            period_end: at(APR_1),
            paid_at: at(MAR_1 + 50_700), // 14:05 UTC
            lines: vec![line("Pro (monthly)", 2000), line("Unused time on Basic", -17)],
            ..Default::default()
        }),
        user_id: user.to_string(),
        email: email.into(),
        amount_paid_display: format!("USD {}.{:02}", paid_minor / 100, paid_minor % 100),
        payment_attempt_id: Uuid::now_v7().to_string(),
        card_brand: billing::CardBrand::Visa as i32,
        card_last4: "4242".into(),
        plan_name: "Pro".into(),
        currency_exponent: Some(2),
    }
}

/// A declined dunning retry of a JPY invoice: its amount is formatted
/// from the number and the exponent the event carries, not its display
/// string.
fn payment_failed(user: Uuid, email: &str, number: &str) -> billing::PaymentFailed {
    billing::PaymentFailed {
        invoice_id: Uuid::now_v7().to_string(),
        invoice_number: number.into(),
        user_id: user.to_string(),
        email: email.into(),
        payment_attempt_id: Uuid::now_v7().to_string(),
        amount_due_minor: 1490,
        currency: "JPY".into(),
        amount_due_display: String::new(),
        currency_exponent: Some(0),
        failure_code: billing::PaymentFailureCode::CardDeclined as i32,
        failure_message: "the card was declined".into(),
        initiated_by: billing::PaymentTrigger::Dunning as i32,
        attempt_count: 2,
        next_retry_at: at(1_772_667_000), // 2026-03-04T23:30:00Z
        r#final: false,
        plan_name: "Pro".into(),
        card_last4: "0002".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_paid_invoice_delivered_twice_sends_one_receipt_with_its_number_amount_and_lines()
-> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = invoice_paid(user, &email, "7QX2KM4B-0001", 1983);
    let id = Uuid::now_v7().to_string();
    notify.publish(&id, "billing.invoice.paid", &event).await?;
    notify.publish(&id, "billing.invoice.paid", &event).await?; // a redelivery

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1, "exactly one receipt");
    assert_eq!(subject(&mails[0]), "Receipt for invoice 7QX2KM4B-0001");
    let text = text_part(&mails[0]);
    for expected in [
        "Amount paid: USD 19.83",
        "Paid on: 2026-03-01",
        "Plan: Pro",
        "Period: 2026-03-01 to 2026-04-01",
        "Charged to: Visa ending in 4242",
        "Pro (monthly): USD 20.00",
        "Unused time on Basic: USD -0.17",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    assert!(mails[0].contains("text/html"), "a text and an HTML part");

    let inbox = notify
        .client()
        .await?
        .list_notifications(as_user(&user, pb::ListNotificationsRequest::default()))
        .await?
        .into_inner();
    assert_eq!(inbox.notifications.len(), 1);
    assert_eq!(inbox.notifications[0].title, "Payment received");
    assert_eq!(inbox.notifications[0].category, "billing");
    Ok(())
}

#[tokio::test]
async fn a_failed_payment_says_how_much_why_and_when_it_is_retried() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = payment_failed(user, &email, "7QX2KM4B-0002");
    notify.publish(&Uuid::now_v7().to_string(), "billing.payment.failed", &event).await?;

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1);
    assert_eq!(subject(&mails[0]), "Payment failed for invoice 7QX2KM4B-0002");
    let text = text_part(&mails[0]);
    assert!(
        text.contains(
            "We could not collect JPY 1,490 for invoice 7QX2KM4B-0002 (Pro plan): your card was declined \
             (card ending in 0002)."
        ),
        "{text}"
    );
    assert!(text.contains("We will try again on 2026-03-04."), "{text}");
    assert!(!text.contains("last automatic attempt"), "{text}");
    Ok(())
}

#[tokio::test]
async fn the_last_failed_retry_sends_a_final_notice() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = billing::PaymentFailed {
        next_retry_at: None,
        r#final: true,
        attempt_count: 4,
        failure_code: billing::PaymentFailureCode::InsufficientFunds as i32,
        ..payment_failed(user, &email, "7QX2KM4B-0003")
    };
    notify.publish(&Uuid::now_v7().to_string(), "billing.payment.failed", &event).await?;

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1);
    assert_eq!(subject(&mails[0]), "Final notice: payment for invoice 7QX2KM4B-0003 failed");
    let text = text_part(&mails[0]);
    assert!(text.contains("your card has insufficient funds"), "{text}");
    assert!(
        text.contains("This was our last automatic attempt, so your subscription has been stopped."),
        "{text}"
    );
    assert!(!text.contains("try again"), "{text}");
    Ok(())
}

#[tokio::test]
async fn billing_events_without_an_email_or_a_charge_are_acked_without_sending() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    // Billing has not learnt the address yet.
    let no_address = invoice_paid(user, "", "7QX2KM4B-0004", 1983);
    notify.publish(&Uuid::now_v7().to_string(), "billing.invoice.paid", &no_address).await?;
    let failed = payment_failed(user, "", "7QX2KM4B-0004");
    notify.publish(&Uuid::now_v7().to_string(), "billing.payment.failed", &failed).await?;
    // A free plan's renewal: paid, nothing charged.
    let free = billing::InvoicePaid {
        card_brand: 0,
        card_last4: String::new(),
        payment_attempt_id: String::new(),
        ..invoice_paid(user, &email, "7QX2KM4B-0005", 0)
    };
    notify.publish(&Uuid::now_v7().to_string(), "billing.invoice.paid", &free).await?;
    // Then a real charge: the only email.
    let paid = invoice_paid(user, &email, "7QX2KM4B-0006", 1983);
    notify.publish(&Uuid::now_v7().to_string(), "billing.invoice.paid", &paid).await?;

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(mails.len(), 1, "only the charged invoice's receipt");
    assert_eq!(subject(&mails[0]), "Receipt for invoice 7QX2KM4B-0006");
    let sent: i64 = notify.sql().await?.query_one("SELECT count(*) FROM email_deliveries", &[]).await?.get(0);
    assert_eq!(sent, 1);

    // Acknowledged, not retried or dead-lettered: nothing would change on
    // a retry.
    let admin =
        notify.running.as_ref().map(|r| r.admin_addr).ok_or_else(|| anyhow::anyhow!("not running"))?;
    let queue = tenx_notification::app::topology(&notify.settings).queue;
    let acked = format!("tenx_queue_messages_total{{queue=\"{queue}\",outcome=\"acked\"}} 4");
    crate::support::eventually(std::time::Duration::from_secs(10), "four events acked", || async {
        let (_, metrics) = tenx_test_support::http_get(admin, "/metrics").await?;
        Ok(metrics.lines().any(|l| l == acked))
    })
    .await?;
    let (_, metrics) = tenx_test_support::http_get(admin, "/metrics").await?;
    assert!(
        !metrics.lines().any(|l| l.starts_with("tenx_queue_messages_total")
            && l.contains(&format!("queue=\"{queue}\""))
            && (l.contains("retried") || l.contains("dead_lettered"))),
        "{metrics}"
    );
    assert!(mails_to(&email)?.len() == 1);
    Ok(())
}

#[tokio::test]
async fn a_refund_tells_the_customer_how_much_came_back_to_which_card() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let (user, email) = (Uuid::now_v7(), unique_email());
    let event = billing::PaymentRefunded {
        refund: Some(billing::Refund {
            id: Uuid::now_v7().to_string(),
            amount_minor: 1500,
            currency: "USD".into(),
            status: billing::RefundStatus::Succeeded as i32,
            ..Default::default()
        }),
        invoice_number: "7QX2KM4B-0005".into(),
        user_id: user.to_string(),
        email: email.clone(),
        // An event from a billing older than `currency_exponent`: the
        // exponent is read from its display string.
        amount_display: "USD 15.00".into(),
        card_last4: "4242".into(),
        currency_exponent: None,
    };
    // Delivered twice (the relay's at-least-once): one email.
    let id = Uuid::now_v7().to_string();
    notify.publish(&id, "billing.payment.refunded", &event).await?;
    notify.publish(&id, "billing.payment.refunded", &event).await?;

    let mails = wait_for_mails(&email, 1).await?;
    assert_eq!(subject(&mails[0]), "Refund for invoice 7QX2KM4B-0005");
    let text = text_part(&mails[0]);
    assert!(
        text.contains("We refunded USD 15.00 of invoice 7QX2KM4B-0005 to your card ending in 4242."),
        "{text}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(mails_to(&email)?.len(), 1, "one email for one refund");
    Ok(())
}
