//! The organization's billing, role by role: every billing RPC a user may
//! call × every organization role, through the gateway's gRPC door to the
//! real billing service, expected from the one role table (an RPC's scope
//! names the permission it needs: `billing:read` → `org.billing.read`,
//! `billing:write` → `org.billing.manage`, as for organizations' keys).

use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};
use tenx_common::authn::{ORG_KEY_SCOPES, OrgRole};
use tenx_proto::access::Caller;
use tenx_proto::billing::v1 as pb;
use tenx_proto::billing::v1::billing_service_client::BillingServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::orgs::{BUSINESS_MONTHLY_USD, join};
use crate::support::{Platform, bearer, send, sign_up, unique_email};

type Answer = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// `message` with the acting token and a fresh idempotency key.
fn call<T>(authorization: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("authorization", authorization.parse().expect("ascii token"));
    metadata.insert("idempotency-key", uuid::Uuid::now_v7().to_string().parse().expect("ascii key"));
    request
}

#[tokio::test]
async fn every_role_reaches_exactly_the_billing_its_permissions_allow() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let http = gw.http_addr;
    let (founder, _, _) = sign_up(http, &unique_email()).await?;
    let created =
        send(http, "POST", "/v1/orgs", &[("authorization", &bearer(&founder))], Some(r#"{"name":"Acme"}"#))
            .await?;
    let org = text(&created.json["organization"]["organization_id"]);
    let body = json!({ "organization_id": org }).to_string();
    let switched =
        send(http, "POST", "/v1/orgs/switch", &[("authorization", &bearer(&founder))], Some(&body)).await?;
    let owner = bearer(&text(&switched.json["access_token"]));
    let mut tokens = vec![(OrgRole::Owner, owner.clone())];
    for role in [OrgRole::Admin, OrgRole::Billing, OrgRole::Member] {
        tokens.push((role, join(http, &owner, role.as_str()).await?.1));
    }

    // The organization's card, subscription and first invoice, bought by
    // its owner: what the reads and changes below act on.
    let billing =
        BillingServiceClient::new(Channel::from_shared(format!("http://{}", gw.grpc_addr))?.connect().await?);
    let card = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: true };
    billing.clone().add_payment_method(call(&owner, card)).await?;
    let subscribe =
        pb::CreateSubscriptionRequest { price_id: BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    let bought = billing.clone().create_subscription(call(&owner, subscribe)).await?.into_inner();
    let subscription = bought.subscription.map(|s| s.id).unwrap_or_default();
    let invoice = bought.invoice.map(|i| i.id).unwrap_or_default();
    anyhow::ensure!(!subscription.is_empty() && !invoice.is_empty(), "the owner's purchase");

    let mut checked = Vec::new();
    for (role, token) in &tokens {
        let b = billing.clone();
        let t = token.clone();
        let (sub, inv) = (subscription.clone(), invoice.clone());
        let calls: Vec<(&str, Answer)> = vec![
            ("GetCustomer", {
                let (mut b, t) = (b.clone(), t.clone());
                Box::pin(async move {
                    b.get_customer(call(&t, pb::GetCustomerRequest::default())).await.map(drop)
                })
            }),
            ("ListSubscriptions", {
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::ListSubscriptionsRequest::default();
                Box::pin(async move { b.list_subscriptions(call(&t, request)).await.map(drop) })
            }),
            ("GetSubscription", {
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::GetSubscriptionRequest { subscription_id: sub.clone() };
                Box::pin(async move { b.get_subscription(call(&t, request)).await.map(drop) })
            }),
            ("ListInvoices", {
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::ListInvoicesRequest::default();
                Box::pin(async move { b.list_invoices(call(&t, request)).await.map(drop) })
            }),
            ("GetInvoice", {
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::GetInvoiceRequest { invoice_id: inv.clone() };
                Box::pin(async move { b.get_invoice(call(&t, request)).await.map(drop) })
            }),
            ("AddPaymentMethod", {
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::AddPaymentMethodRequest { token: "tok_success".into(), set_default: false };
                Box::pin(async move { b.add_payment_method(call(&t, request)).await.map(drop) })
            }),
            ("PayInvoice", {
                // Paid already: an allowed caller is told so, not refused.
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::PayInvoiceRequest { invoice_id: inv.clone(), ..Default::default() };
                Box::pin(async move { b.pay_invoice(call(&t, request)).await.map(drop) })
            }),
            ("CreateSubscription", {
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::CreateSubscriptionRequest {
                    price_id: BUSINESS_MONTHLY_USD.into(),
                    ..Default::default()
                };
                Box::pin(async move { b.create_subscription(call(&t, request)).await.map(drop) })
            }),
            ("ChangePlan", {
                // To the plan it has: nothing to change for an allowed caller.
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::ChangePlanRequest {
                    subscription_id: sub.clone(),
                    price_id: BUSINESS_MONTHLY_USD.into(),
                    ..Default::default()
                };
                Box::pin(async move { b.change_plan(call(&t, request)).await.map(drop) })
            }),
            ("CancelSubscription", {
                let (mut b, t) = (b.clone(), t.clone());
                let request = pb::CancelSubscriptionRequest {
                    subscription_id: sub.clone(),
                    timing: pb::ChangeTiming::PeriodEnd.into(),
                    ..Default::default()
                };
                Box::pin(async move { b.cancel_subscription(call(&t, request)).await.map(drop) })
            }),
        ];
        for (method, answer) in calls {
            let rule = tenx_proto::access::rule(&format!("/tenx.billing.v1.BillingService/{method}"))
                .ok_or_else(|| anyhow::anyhow!("{method} has no rule"))?;
            let permission = ORG_KEY_SCOPES
                .iter()
                .find(|(scope, _)| *scope == rule.scope)
                .map(|(_, permission)| *permission)
                .ok_or_else(|| anyhow::anyhow!("{method}: scope {} names no permission", rule.scope))?;
            let allowed = role.permits(permission);
            match answer.await {
                Ok(()) => assert!(allowed, "{} may not {method} ({permission}) but did", role.as_str()),
                Err(status) if allowed => assert!(
                    !matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated),
                    "{} may {method} ({permission}) but got {status:?}",
                    role.as_str()
                ),
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        Code::PermissionDenied,
                        "{} {method}: {status:?}",
                        role.as_str()
                    );
                    assert!(status.message().contains(permission), "{} {method}: {status:?}", role.as_str());
                }
            }
            checked.push((*role, method));
        }
    }
    // Every billing RPC a user may call is in the matrix, for every role.
    let named: Vec<&str> = tenx_proto::access::METHODS
        .iter()
        .filter(|(path, rule)| {
            path.starts_with("/tenx.billing.v1.BillingService/") && rule.caller == Caller::User
        })
        .filter_map(|(path, _)| path.rsplit('/').next())
        .collect();
    assert_eq!(named.len(), 10, "{named:?}");
    for method in named {
        assert_eq!(checked.iter().filter(|(_, m)| *m == method).count(), 4, "{method} × every role");
    }
    Ok(())
}
