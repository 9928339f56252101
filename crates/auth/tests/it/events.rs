//! Signup never waits on RabbitMQ: with the broker unreachable it still
//! succeeds, and the event is delivered once the broker is back.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use prost::Message as _;
use tenx_common::queue::{Amqp, Topology};
use tenx_proto::auth::v1 as pb;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::{ChaosProxy, addr_of};

use crate::support::{TestAuth, sign_up, unique_email};

#[tokio::test]
async fn signup_succeeds_with_rabbitmq_down_and_the_event_arrives_when_it_is_back() -> anyhow::Result<()> {
    let mut auth = TestAuth::start().await?;
    // An observer bound to the events exchange, directly on the broker.
    let direct = Amqp::new(&auth.settings.amqp, "observer");
    let observer = Topology::for_group(&auth.settings.amqp, "observer", &["auth.user.signed_up"]);
    auth.amqp.track(observer.queue_names(), []);
    observer.declare(&direct.channel().await?).await?;
    let channel = direct.channel().await?;
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut deliveries = channel
        .basic_consume(observer.queue.as_str().into(), "".into(), no_ack, FieldTable::default())
        .await?;

    // A second instance whose broker connection goes through a cut proxy.
    let proxy = ChaosProxy::start(addr_of(auth.amqp.url())?).await?;
    proxy.cut();
    let mut cut_off = auth.settings.clone();
    cut_off.amqp.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()).into();
    auth.shutdown.trigger(); // only the cut-off instance may relay
    auth.shutdown = tenx_common::shutdown::Shutdown::new();
    let i = auth.start_instance_with(cut_off).await?;
    let mut client = auth.client(i).await?;

    let email = unique_email();
    let created = tokio::time::timeout(Duration::from_secs(5), sign_up(&mut client, &email)).await??;
    assert!(created.tokens.is_some(), "signup answered without the broker");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending: i64 =
        auth.sql().await?.query_one("SELECT count(*) FROM tenx_outbox_pending", &[]).await?.get(0);
    assert_eq!(pending, 1, "the event waits in the outbox");

    proxy.restore();
    let delivery = tokio::time::timeout(Duration::from_secs(20), deliveries.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("observer closed"))??;
    let envelope = Envelope::decode(delivery.data.as_slice())?;
    assert_eq!(envelope.r#type, "auth.user.signed_up");
    let event = pb::UserSignedUp::decode(envelope.payload.as_slice())?;
    assert_eq!(event.email, email);
    Ok(())
}
