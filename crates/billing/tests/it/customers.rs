//! Customers from auth's events, payment methods, and idempotency keys.

use std::time::Duration;

use tenx_proto::auth::v1 as auth;
use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{TestBilling, as_admin, as_user, eventually, keyed, reason};

async fn customer_of(billing: &TestBilling, user: Uuid) -> anyhow::Result<Option<pb::Customer>> {
    let mut client = billing.client().await?;
    match client.get_customer(as_user(user, pb::GetCustomerRequest::default())).await {
        Ok(r) => Ok(r.into_inner().customer),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

#[tokio::test]
async fn a_signed_up_user_becomes_one_customer_even_when_the_event_comes_twice() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let user = Uuid::now_v7();
    let event = auth::UserSignedUp {
        user_id: user.to_string(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    };
    billing.publish("auth.user.signed_up", &event).await?;
    billing.publish("auth.user.signed_up", &event).await?;
    eventually(Duration::from_secs(10), "the customer", || async {
        Ok(customer_of(&billing, user).await?.is_some())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(billing.count("customers").await?, 1);
    let created: i64 = billing
        .sql()
        .await?
        .query_one("SELECT count(*) FROM tenx_outbox WHERE event_type = 'billing.customer.created'", &[])
        .await?
        .get(0);
    assert_eq!(created, 1, "one billing.customer.created");
    let customer = customer_of(&billing, user).await?.expect("customer");
    assert_eq!(customer.email, "ada@example.com");
    assert_eq!(customer.invoice_prefix.len(), 8);
    assert_eq!((customer.currency.as_str(), customer.credit_balance_minor), ("", 0));

    let updated = auth::UserUpdated {
        user_id: user.to_string(),
        email: "ada@lovelace.dev".into(),
        display_name: "Ada".into(),
    };
    billing.publish("auth.user.updated", &updated).await?;
    eventually(Duration::from_secs(10), "the new email", || async {
        Ok(customer_of(&billing, user).await?.is_some_and(|c| c.email == "ada@lovelace.dev"))
    })
    .await?;

    // Another user cannot see this customer; an operator can.
    let mut client = billing.client().await?;
    let other = client
        .get_customer(as_user(Uuid::now_v7(), pb::GetCustomerRequest { customer_id: customer.id.clone() }))
        .await;
    assert_eq!(other.expect_err("not theirs").code(), Code::NotFound);
    let seen = client
        .get_customer(as_admin(Uuid::now_v7(), pb::GetCustomerRequest { customer_id: customer.id.clone() }))
        .await?
        .into_inner();
    assert_eq!(seen.customer.map(|c| c.id), Some(customer.id));
    let anonymous = client.get_customer(pb::GetCustomerRequest::default()).await;
    assert_eq!(anonymous.expect_err("no caller").code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn payment_methods_are_added_once_per_idempotency_key_and_a_reused_key_is_refused() -> anyhow::Result<()>
{
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    // No signup event yet: the first mutating call creates the customer.
    let user = Uuid::now_v7();
    let add = |token: &str| pb::AddPaymentMethodRequest { token: token.into(), set_default: false };

    let first = client.add_payment_method(keyed(user, "k-1", add("tok_success"))).await?;
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let method = first.into_inner().payment_method.expect("a method");
    assert_eq!((method.brand, method.last4.as_str()), (pb::CardBrand::Visa as i32, "4242"));
    assert!(method.is_default, "the first method becomes the default");

    let again = client.add_payment_method(keyed(user, "k-1", add("tok_success"))).await?;
    assert_eq!(again.metadata().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert_eq!(again.into_inner().payment_method, Some(method.clone()), "the stored answer, unchanged");

    let reused =
        client.add_payment_method(keyed(user, "k-1", add("tok_declined"))).await.expect_err("reused");
    assert_eq!(
        (reused.code(), reason(&reused).as_str()),
        (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED")
    );

    let second = client
        .add_payment_method(keyed(
            user,
            "k-2",
            pb::AddPaymentMethodRequest { token: "tok_insufficient_funds".into(), set_default: true },
        ))
        .await?
        .into_inner()
        .payment_method
        .expect("a method");
    let shown = client.get_customer(as_user(user, pb::GetCustomerRequest::default())).await?.into_inner();
    assert_eq!(shown.payment_methods.len(), 2);
    assert_eq!(shown.payment_methods[0].id, second.id, "newest first");
    assert_eq!(shown.customer.map(|c| c.default_payment_method_id), Some(second.id), "set_default moved it");
    assert_eq!(billing.count("customers").await?, 1);

    // The same key from many callers at once: one effect.
    let calls = (0..20).map(|_| {
        let mut client = client.clone();
        async move { client.add_payment_method(keyed(user, "k-3", add("tok_success"))).await }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let added: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert!(!added.is_empty());
    for outcome in &outcomes {
        if let Err(status) = outcome {
            assert_eq!((status.code(), reason(status).as_str()), (Code::Aborted, "IDEMPOTENCY_KEY_IN_USE"));
            assert!(tonic_types::StatusExt::get_details_retry_info(status).is_some());
        }
    }
    let ids: std::collections::BTreeSet<_> =
        added.iter().map(|r| r.get_ref().payment_method.clone().map(|m| m.id)).collect();
    assert_eq!(ids.len(), 1, "every success is the same stored answer");
    assert_eq!(billing.count("payment_methods").await?, 3);

    // After idempotency.ttl_hours (24) a key is new again.
    billing.clock.advance(Duration::from_secs(25 * 3600));
    let fresh = client.add_payment_method(keyed(user, "k-1", add("tok_declined"))).await?;
    assert!(fresh.metadata().get("idempotent-replayed").is_none());
    assert_eq!(fresh.into_inner().payment_method.map(|m| m.last4), Some("0002".into()));
    Ok(())
}

#[tokio::test]
async fn bad_input_to_add_payment_method_is_refused_and_writes_nothing() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    let request = |token: &str| pb::AddPaymentMethodRequest { token: token.into(), set_default: false };
    let cases: Vec<(tonic::Request<pb::AddPaymentMethodRequest>, Code, &str)> = vec![
        (as_user(user, request("tok_success")), Code::InvalidArgument, "idempotency-key"),
        (keyed(user, "", request("tok_success")), Code::InvalidArgument, "idempotency-key"),
        (keyed(user, &"k".repeat(256), request("tok_success")), Code::InvalidArgument, "idempotency-key"),
        (keyed(user, "k", request("")), Code::InvalidArgument, "token"),
        (keyed(user, "k", request("tok stolen")), Code::InvalidArgument, "token"),
        // Well formed, but not the provider's: nothing to attach.
        (keyed(user, "k", request("tok_stolen")), Code::NotFound, ""),
        (tonic::Request::new(request("tok_success")), Code::Unauthenticated, ""),
    ];
    for (call, code, field) in cases {
        let refused = client.add_payment_method(call).await.expect_err(field);
        assert_eq!(refused.code(), code, "{field}: {refused:?}");
        if !field.is_empty() {
            let bad = tonic_types::StatusExt::get_details_bad_request(&refused).expect("BadRequest");
            assert_eq!(bad.field_violations[0].field, field);
        }
    }
    for table in ["customers", "payment_methods", "idempotency_keys", "tenx_outbox"] {
        assert_eq!(billing.count(table).await?, 0, "{table} untouched");
    }
    // The key was never claimed: it still works.
    client.add_payment_method(keyed(user, "k", request("tok_success"))).await?;
    Ok(())
}
