//! The catalog: plans and prices per currency, paging, one plan.

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{TestBilling, as_user};

fn codes(plans: &[pb::Plan]) -> Vec<String> {
    plans.iter().map(|p| p.code.clone()).collect()
}

#[tokio::test]
async fn plans_are_listed_in_one_currency_or_all_and_page_through() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;

    let usd = client.list_plans(pb::ListPlansRequest::default()).await?.into_inner();
    assert_eq!(codes(&usd.plans), vec!["free", "pro", "business", "api"], "billing.currency_default = USD");
    assert!(usd.plans.iter().flat_map(|p| &p.prices).all(|price| price.currency == "USD"));
    let pro = &usd.plans[1];
    let monthly = pro.prices.iter().find(|p| p.lookup_key == "pro_monthly_usd").expect("pro monthly");
    assert_eq!((monthly.unit_amount_minor, monthly.trial_days), (2000, 14), "trial from billing.trial_days");
    assert_eq!(monthly.interval, pb::BillingInterval::Month as i32);
    let api = &usd.plans[3].prices[0];
    let metered = api.metered.clone().expect("a metered price");
    assert_eq!(
        (metered.meter.as_str(), metered.unit_amount_minor, metered.package_size),
        ("api_calls", 50, 1000)
    );

    let jpy = client
        .list_plans(pb::ListPlansRequest { currency: "JPY".into(), ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(codes(&jpy.plans), vec!["pro", "business"]);
    assert_eq!(jpy.plans[0].prices[0].unit_amount_minor, 1490, "zero-decimal: whole yen");

    let all = client
        .list_plans(pb::ListPlansRequest { all_currencies: true, ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(all.plans.iter().map(|p| p.prices.len()).sum::<usize>(), 10);

    let first =
        client.list_plans(pb::ListPlansRequest { page_size: 3, ..Default::default() }).await?.into_inner();
    assert_eq!(codes(&first.plans), vec!["free", "pro", "business"]);
    let second = client
        .list_plans(pb::ListPlansRequest {
            page_size: 3,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(codes(&second.plans), vec!["api"]);
    assert!(second.next_page_token.is_empty());

    // Anonymous callers may read the catalog; a user may too.
    client.list_plans(as_user(Uuid::now_v7(), pb::ListPlansRequest::default())).await?;
    Ok(())
}

#[tokio::test]
async fn one_plan_shows_every_price_and_bad_input_is_refused() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut client = billing.client().await?;
    let pro = client
        .get_plan(pb::GetPlanRequest { plan_id: "10000000-0000-4000-8000-000000000002".into() })
        .await?
        .into_inner()
        .plan
        .expect("a plan");
    let mut keys: Vec<_> = pro.prices.iter().map(|p| p.lookup_key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, vec!["pro_monthly_clp", "pro_monthly_jpy", "pro_monthly_usd", "pro_yearly_usd"]);

    let missing = client.get_plan(pb::GetPlanRequest { plan_id: Uuid::now_v7().to_string() }).await;
    assert_eq!(missing.expect_err("unknown").code(), Code::NotFound);
    for (request, field) in [
        (pb::ListPlansRequest { currency: "usd".into(), ..Default::default() }, "currency"),
        (pb::ListPlansRequest { page_size: 101, ..Default::default() }, "page_size"),
        (pb::ListPlansRequest { page_token: "!!".into(), ..Default::default() }, "page_token"),
    ] {
        let refused = client.list_plans(request).await.expect_err(field);
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        let violation = tonic_types::StatusExt::get_details_bad_request(&refused).expect("BadRequest");
        assert_eq!(violation.field_violations[0].field, field);
    }
    let bad = client.get_plan(pb::GetPlanRequest { plan_id: "pro".into() }).await.expect_err("not a UUID");
    assert_eq!(bad.code(), Code::InvalidArgument);
    Ok(())
}
