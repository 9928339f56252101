//! The host, as a fifth service would use it: a service that hands it
//! only its parts gets its outbox relayed, its consumer fed, its
//! readiness and health reported, and a drain on shutdown.

use std::time::Duration;

use tenx_common::authn::AuthnLayer;
use tenx_common::cache::RedisSettings;
use tenx_common::db::DbSettings;
use tenx_common::grpc::{ClientSettings, GrpcServer, ServerSettings, connect};
use tenx_common::host::{self, Backend, BackendSettings, HostError, Parts};
use tenx_common::metrics::Metrics;
use tenx_common::outbox::{self, NewEvent, RelaySettings};
use tenx_common::queue::{Handler, HandlerError, Message, Topology};
use tenx_common::retention::RetentionSettings;
use tenx_common::shutdown::Shutdown;
use tenx_test_support::{TestAmqp, TestRedis, http_get};
use tokio::sync::mpsc;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{SCHEMA, amqp_settings, declare, test_db};

/// The consumer of the hosted service: hands each event type on.
struct Seen(mpsc::UnboundedSender<String>);

impl Handler for Seen {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let _ = self.0.send(message.event_type().to_owned());
        Ok(())
    }
}

fn free_ports() -> ServerSettings {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    ServerSettings { listen: any, admin_listen: any, shutdown_delay_ms: 400, shutdown_grace_ms: 2_000 }
}

#[tokio::test]
async fn a_hosted_service_relays_its_events_feeds_its_consumer_reports_ready_and_drains() -> anyhow::Result<()>
{
    let (tdb, redis, test_amqp) = (test_db().await?, TestRedis::new(), TestAmqp::new());
    let metrics = Metrics::default();
    let settings = amqp_settings(&test_amqp);
    let mut database = DbSettings::new(&tdb.primary_url(), Some(&tdb.replica_url()), SCHEMA);
    database.connect_timeout_ms = 1_000;
    let sections = BackendSettings {
        database: &database,
        redis: &RedisSettings::new(redis.url(), redis.prefix()),
        amqp: &settings,
        outbox: &RelaySettings::default(),
        retention: &RetentionSettings::default(),
    };
    let backend = Backend::connect_as("host-test", sections, &metrics)?;
    let db = backend.db().clone();
    let topology = Topology::for_group(&settings, "widgets", &["test.widget_made"]);
    declare(&test_amqp, backend.amqp(), &topology).await?;
    let (seen, mut events) = mpsc::unbounded_channel();

    let grpc = GrpcServer::new(Duration::from_secs(1), &metrics, AuthnLayer::no_api());
    let router = grpc.router();
    let backend = backend.consumer(topology, Seen(seen));
    let server = free_ports();
    let parts = Parts::new("widgets", &server, &Default::default(), &metrics, grpc, router)
        .serving(&["tenx.test.v1.Widgets"])
        .ready_when("widgets", || async { Ok(()) })
        .backend(backend);
    let shutdown = Shutdown::new();
    let running = host::spawn(parts, shutdown.clone()).await?;

    // An event written in a business transaction reaches the consumer:
    // the host runs the relay and the consumer group.
    let conn = db.write().await?;
    let event = NewEvent {
        event_type: "test.widget_made".into(),
        aggregate_id: "widget-1".into(),
        payload: b"made".to_vec(),
        payload_type: "test".into(),
    };
    outbox::enqueue(&*conn, &event).await?;
    drop(conn);
    let delivered = tokio::time::timeout(Duration::from_secs(10), events.recv()).await?;
    assert_eq!(delivered.as_deref(), Some("test.widget_made"));

    // Ready with the backend's checks first, then its own; health serves
    // the names it gave.
    let (status, body) = http_get(running.admin_addr, "/readyz").await?;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body.lines().filter_map(|l| l.split(':').next()).collect();
    assert_eq!(names, ["postgres", "redis", "rabbitmq", "widgets"], "{body}");
    let channel = connect(&ClientSettings::new(&format!("http://{}", running.grpc_addr)))?;
    let request = HealthCheckRequest { service: "tenx.test.v1.Widgets".into() };
    assert_eq!(HealthClient::new(channel).check(request).await?.into_inner().status, 1);

    // A second instance on the same port says which setting it could not use.
    let taken = ServerSettings { listen: running.grpc_addr, ..free_ports() };
    let grpc = GrpcServer::new(Duration::from_secs(1), &metrics, AuthnLayer::no_api());
    let router = grpc.router();
    let clash = Parts::new("widgets", &taken, &Default::default(), &metrics, grpc, router);
    let refused = host::spawn(clash, Shutdown::new()).await.expect_err("the port is taken");
    assert!(matches!(refused, HostError::Bind { what: "server.listen", .. }), "{refused}");
    assert!(
        host::report(&refused).starts_with("cannot listen on server.listen"),
        "{}",
        host::report(&refused)
    );

    // On shutdown it stops being ready at once, keeps its ports for the
    // delay, then ends cleanly and closes them.
    shutdown.trigger();
    let (status, body) = http_get(running.admin_addr, "/readyz").await?;
    assert_eq!(status, 503, "{body}");
    tokio::time::timeout(Duration::from_secs(10), running.task).await???;
    assert!(tokio::net::TcpStream::connect(running.grpc_addr).await.is_err(), "gRPC port closed");
    assert!(tokio::net::TcpStream::connect(running.admin_addr).await.is_err(), "admin port closed");
    Ok(())
}
