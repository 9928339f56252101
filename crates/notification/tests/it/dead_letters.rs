//! The operator's dead-letter RPCs on a running notification service:
//! who may call them, what a bad request gets, and a poison message
//! listed and purged through the generated client.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use tenx_common::queue::Amqp;
use tenx_proto::ops::v1 as ops;
use tenx_proto::ops::v1::dead_letter_service_client::DeadLetterServiceClient;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::support::TestNotify;

/// Adds the caller's bearer token, if any, to every call.
type WithToken = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = DeadLetterServiceClient<InterceptedService<Channel, WithToken>>;

async fn client(notify: &TestNotify, token: Option<String>) -> anyhow::Result<Client> {
    let addr = notify.running.as_ref().map(|r| r.grpc_addr).ok_or_else(|| anyhow::anyhow!("not started"))?;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let bearer: Option<tonic::metadata::MetadataValue<_>> =
        token.map(|t| format!("Bearer {t}").parse()).transpose()?;
    let interceptor: WithToken = Box::new(move |mut request: tonic::Request<()>| {
        if let Some(bearer) = &bearer {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        Ok(request)
    });
    Ok(DeadLetterServiceClient::with_interceptor(channel, interceptor))
}

async fn depth(amqp: &Amqp, queue: &str) -> anyhow::Result<u32> {
    Ok(tenx_common::queue::inspect(&amqp.channel().await?, queue).await?.message_count())
}

#[tokio::test]
async fn an_operator_lists_and_purges_a_poison_message_and_nobody_else_may_touch_dead_letters()
-> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let topology = tenx_notification::app::topology(&notify.settings);
    let hooks = tenx_notification::app::webhook_topology(&notify.settings);
    // Bytes that are no event at all: the consumer dead-letters them at once.
    let amqp = Amqp::new(&notify.settings.amqp, "test-poison");
    let channel = amqp.channel().await?;
    channel
        .basic_publish(
            "".into(),
            topology.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"not an envelope",
            BasicProperties::default()
                .with_message_id("poison-1".into())
                .with_type("auth.user.registered".into()),
        )
        .await?
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while depth(&amqp, &topology.dead_letter).await? != 1 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the poison message was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An operator (a user with the admin role) sees both groups' queues
    // and the unrouted queue of the exchange, and why the message is there.
    let admin = tenx_auth::testing::user_token(uuid::Uuid::now_v7(), &["admin"]);
    let mut operator = client(&notify, Some(admin)).await?;
    let listed = operator.list_dead_letters(ops::ListDeadLettersRequest::default()).await?.into_inner();
    let queues: Vec<&str> = listed.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(
        queues,
        [topology.dead_letter.as_str(), hooks.dead_letter.as_str(), topology.unrouted.as_str()]
    );
    let mine = &listed.queues[0];
    assert_eq!((mine.depth, mine.work_queue.as_str()), (1, topology.queue.as_str()));
    let poison = &mine.messages[0];
    assert_eq!(
        (poison.message_id.as_str(), poison.event_type.as_str()),
        ("poison-1", "auth.user.registered")
    );
    assert!(poison.last_error.contains("undecodable"), "{}", poison.last_error);

    // Bad requests name the field and change nothing.
    let request = ops::ListDeadLettersRequest { queue: "tenx.billing.dlq".into(), limit: 0 };
    let refused = operator.list_dead_letters(request).await.expect_err("not this service's queue");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("queue") && refused.message().contains(&topology.dead_letter));
    let request = ops::ListDeadLettersRequest { queue: String::new(), limit: 501 };
    assert_eq!(
        operator.list_dead_letters(request).await.expect_err("too many").code(),
        Code::InvalidArgument
    );
    let vague = ops::PurgeDeadLettersRequest { queue: topology.dead_letter.clone(), selection: None };
    let refused = operator.purge_dead_letters(vague).await.expect_err("no selection");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("selection"));
    let both = ops::Selection { message_ids: vec!["poison-1".into()], all: true, ..Default::default() };
    let request =
        ops::RedriveDeadLettersRequest { queue: topology.dead_letter.clone(), selection: Some(both) };
    assert_eq!(
        operator.redrive_dead_letters(request).await.expect_err("two selections").code(),
        Code::InvalidArgument
    );
    assert_eq!(depth(&amqp, &topology.dead_letter).await?, 1);

    // A user without the role, an API-key-less anonymous caller, and one
    // of the platform's own services are all refused, and nothing moves.
    let user = tenx_auth::testing::user_token(uuid::Uuid::now_v7(), &[]);
    let billing_service = notify.auth.service_token("billing").await?;
    for (token, code) in [
        (Some(user), Code::PermissionDenied),
        (None, Code::Unauthenticated),
        (Some(billing_service), Code::PermissionDenied),
    ] {
        let mut caller = client(&notify, token).await?;
        let request = ops::PurgeDeadLettersRequest {
            queue: topology.dead_letter.clone(),
            selection: Some(ops::Selection { all: true, ..Default::default() }),
        };
        assert_eq!(caller.purge_dead_letters(request).await.expect_err("not an operator").code(), code);
        let listing = caller.list_dead_letters(ops::ListDeadLettersRequest::default()).await;
        assert_eq!(listing.expect_err("not an operator").code(), code);
    }
    assert_eq!(depth(&amqp, &topology.dead_letter).await?, 1);

    // The operator purges it by id.
    let selection = ops::Selection { message_ids: vec!["poison-1".into()], ..Default::default() };
    let request =
        ops::PurgeDeadLettersRequest { queue: topology.dead_letter.clone(), selection: Some(selection) };
    let purged = operator.purge_dead_letters(request).await?.into_inner();
    assert_eq!((purged.purged, purged.remaining), (1, 0));
    assert_eq!(depth(&amqp, &topology.dead_letter).await?, 0);
    Ok(())
}
