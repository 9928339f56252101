//! Reads from the streaming replica, with read-your-writes: every mutation
//! answers with the primary's WAL position past its write, and a read that
//! carries it is served by the replica only once it has replayed that far.

use tenx_proto::billing::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{TestBilling, add_card, as_user, keyed, prices};

const POSITION: &str = "x-tenx-wal-position";
const REPLICA_READS: &str = "tenx_db_reads_total{pool=\"tenx-billing\",role=\"replica\"}";
const PRIMARY_READS: &str = "tenx_db_reads_total{pool=\"tenx-billing\",role=\"primary\"}";
const LAGGING: &str = "tenx_db_replica_fallbacks_total{pool=\"tenx-billing\",reason=\"lagging\"}";

#[tokio::test]
async fn reads_go_to_the_replica_and_a_write_position_is_read_back_however_far_it_is() -> anyhow::Result<()> {
    let billing = TestBilling::start_on_replica().await?;
    billing.db.wait_for_replica().await?;
    let mut client = billing.client().await?;
    let user = Uuid::now_v7();
    add_card(&mut client, user, "tok_success").await?;
    let request =
        pb::CreateSubscriptionRequest { price_id: prices::BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    let created = client.create_subscription(keyed(user, "sub", request)).await?;
    let position = created.metadata().get(POSITION).cloned().expect("a mutation answers with its position");
    let sub = created.into_inner().subscription.unwrap_or_default();

    // With the write's position: the subscription, from whichever server
    // has it (the replica once it has replayed that far).
    let mut read = as_user(user, pb::GetSubscriptionRequest { subscription_id: sub.id.clone() });
    read.metadata_mut().insert(POSITION, position.clone());
    let seen = client.get_subscription(read).await?.into_inner().subscription.unwrap_or_default();
    assert_eq!((seen.id.as_str(), seen.status), (sub.id.as_str(), pb::SubscriptionStatus::Active as i32));

    // Without one: the replica serves reads (eventually consistent: so
    // first wait until it has replayed the write).
    billing.db.wait_for_replay(position.to_str()?).await?;
    let replica_before = billing.metric(REPLICA_READS);
    client.list_invoices(as_user(user, pb::ListInvoicesRequest::default())).await?;
    assert_eq!(billing.metric(REPLICA_READS), replica_before + 2.0, "the customer and the invoices");

    // A position the replica has not reached (far ahead of anything
    // written): the primary serves it, and the fallback is counted.
    let (primary_before, lagging_before) = (billing.metric(PRIMARY_READS), billing.metric(LAGGING));
    let mut ahead = as_user(user, pb::GetSubscriptionRequest { subscription_id: sub.id.clone() });
    ahead.metadata_mut().insert(POSITION, "FFFFFF/0".parse()?);
    let seen = client.get_subscription(ahead).await?.into_inner().subscription.unwrap_or_default();
    assert_eq!(seen.id, sub.id);
    assert_eq!(billing.metric(PRIMARY_READS), primary_before + 1.0);
    assert_eq!(billing.metric(LAGGING), lagging_before + 1.0);

    // A malformed one is the caller's error, named.
    let mut bad = as_user(user, pb::GetSubscriptionRequest { subscription_id: sub.id });
    bad.metadata_mut().insert(POSITION, "DROP TABLE".parse()?);
    let refused = client.get_subscription(bad).await.expect_err("malformed");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains(POSITION), "{refused:?}");
    Ok(())
}
