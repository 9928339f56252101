//! The shared gRPC server: health, reflection, graceful shutdown, the
//! admin port, and the one error mapping.

use std::time::Duration;

use tenx_common::admin::{self, Readiness};
use tenx_common::grpc::{ApiError, ClientSettings, GrpcServer, ServerSettings, connect};
use tenx_common::metrics::Metrics;
use tenx_common::shutdown::Shutdown;
use tenx_test_support::http_get;
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_types::StatusExt;

fn settings(addr: std::net::SocketAddr) -> ServerSettings {
    ServerSettings { listen: addr, admin_listen: addr, shutdown_delay_ms: 300, shutdown_grace_ms: 2_000 }
}

#[tokio::test]
async fn serves_health_and_reflection_and_reports_not_serving_while_it_shuts_down() -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let server = GrpcServer::new(Duration::from_secs(1), &metrics, tenx_common::authn::AuthnLayer::no_api());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let task = {
        let (server, shutdown) = (server.clone(), shutdown.clone());
        tokio::spawn(async move {
            server
                .serve(server.router(), listener, &["tenx.test.v1.Widgets"], &settings(addr), shutdown)
                .await
        })
    };

    let channel = connect(&ClientSettings::new(&format!("http://{addr}")))?;
    let mut health = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest { service: service.to_owned() };
    let status = health.check(check("tenx.test.v1.Widgets")).await?.into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let unknown = health.check(check("tenx.nope.v1.Nope")).await.expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream_once(request)).await?.into_inner();
    let listed = match responses.message().await?.and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => anyhow::bail!("unexpected reflection answer {other:?}"),
    };
    assert!(listed.contains(&"grpc.health.v1.Health".to_owned()), "{listed:?}");

    shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = health.check(check("")).await?.into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32, "during the shutdown delay health says NOT_SERVING");

    tokio::time::timeout(Duration::from_secs(5), task).await???;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
    assert!(
        metrics
            .render()
            .contains("tenx_grpc_server_requests_total{method=\"/grpc.health.v1.Health/Check\",code=\"0\"}")
    );
    Ok(())
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::iter([item])
}

#[tokio::test]
async fn the_admin_port_serves_metrics_and_a_readiness_that_fails_with_a_dependency() -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let widgets = prometheus_client::metrics::counter::Counter::<u64>::default();
    metrics.register("test_widgets", "Widgets made", widgets.clone());
    widgets.inc_by(3);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let readiness = Readiness::new()
        .check("postgres", || async { Ok(()) })
        .check("rabbitmq", || async { Err("connection refused".to_owned()) });
    let shutdown = Shutdown::new();
    let task =
        tokio::spawn(admin::serve(listener, metrics.clone(), readiness, shutdown.clone(), Duration::ZERO));

    let (status, body) = http_get(addr, "/readyz").await?;
    assert_eq!(status, 503);
    assert!(body.contains("postgres: ok") && body.contains("rabbitmq: connection refused"), "{body}");
    let (status, _) = http_get(addr, "/healthz").await?;
    assert_eq!(status, 200);
    let (status, body) = http_get(addr, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(body.contains("tenx_test_widgets_total 3"), "{body}");
    shutdown.trigger();
    task.await??;
    Ok(())
}

#[test]
fn api_errors_map_to_the_right_code_with_details_and_hide_internals() {
    let status: tonic::Status = ApiError::invalid("email", "must contain @").into();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "invalid email: must contain @");
    let violations = status.get_details_bad_request().map(|b| b.field_violations).unwrap_or_default();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "email");

    let status: tonic::Status =
        ApiError::ResourceExhausted { message: "slow down".into(), retry_after: Duration::from_secs(7) }
            .into();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
    assert_eq!(retry, Some(Duration::from_secs(7)));

    let secret_cause = std::io::Error::other("password=hunter2 at db:5432");
    let status: tonic::Status = ApiError::internal(secret_cause).into();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "internal error");
    assert!(!format!("{status:?}").contains("hunter2"));

    for (error, code) in [
        (ApiError::NotFound("no such user".into()), Code::NotFound),
        (ApiError::AlreadyExists("taken".into()), Code::AlreadyExists),
        (ApiError::Unauthenticated("bad token".into()), Code::Unauthenticated),
        (ApiError::PermissionDenied("not yours".into()), Code::PermissionDenied),
        (ApiError::FailedPrecondition("key reused".into()), Code::FailedPrecondition),
        (ApiError::Unavailable("db down".into()), Code::Unavailable),
    ] {
        assert_eq!(tonic::Status::from(error).code(), code);
    }
}

#[tokio::test]
async fn several_components_on_one_registry_render_each_metric_family_once() -> anyhow::Result<()> {
    use tenx_common::cache::CacheLayer;
    use tenx_common::db::{Db, DbSettings};
    let metrics = Metrics::default();
    for name in ["auth", "billing"] {
        let layer = CacheLayer::new(None, &metrics);
        let cache = layer.cache::<String>(name, Default::default());
        cache.get_or_load("k", || async { Ok::<_, std::convert::Infallible>("v".to_owned()) }).await.ok();
        Db::connect(
            &DbSettings::new("postgres://postgres@127.0.0.1:5432/postgres", None, name),
            name,
            &metrics,
        )?;
        let _server =
            GrpcServer::new(Duration::from_secs(1), &metrics, tenx_common::authn::AuthnLayer::no_api());
    }
    let rendered = metrics.render();
    let mut types: Vec<&str> = rendered.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let total = types.len();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), total, "duplicate families:\n{rendered}");
    assert!(rendered.contains("tenx_cache_loads_total{cache=\"auth\"} 1"));
    assert!(rendered.contains("tenx_cache_loads_total{cache=\"billing\"} 1"));
    Ok(())
}

#[tokio::test]
async fn a_failed_call_counts_under_its_code_and_methods_the_server_lacks_share_one_unknown_series()
-> anyhow::Result<()> {
    let (addr, metrics, shutdown, task) = instance().await?;
    let channel = connect(&ClientSettings::new(&format!("http://{addr}")))?;
    let mut health = HealthClient::new(channel.clone());
    health.check(HealthCheckRequest::default()).await?;
    for _ in 0..2 {
        let missing = HealthCheckRequest { service: "tenx.nope.v1.Nope".to_owned() };
        assert_eq!(health.check(missing).await.expect_err("no such service").code(), Code::NotFound);
    }
    // The path is the caller's to choose: each invented one would be a
    // metric series of its own, without end.
    let mut grpc = tonic::client::Grpc::new(channel);
    for path in
        ["/tenx.nope.v1.Nope/InventedA", "/tenx.nope.v1.Nope/InventedB", "/grpc.health.v1.Health/InventedC"]
    {
        grpc.ready().await.map_err(|e| anyhow::anyhow!(e))?;
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
        let path = http::uri::PathAndQuery::from_static(path);
        let refused = grpc.unary(tonic::Request::new(HealthCheckRequest::default()), path, codec).await;
        assert_eq!(refused.expect_err("not served").code(), Code::Unimplemented);
    }
    let series = |labels: &str| {
        crate::support::metric(&metrics, &format!("tenx_grpc_server_requests_total{{{labels}}}"))
    };
    let check = "method=\"/grpc.health.v1.Health/Check\"";
    assert_eq!(series(&format!("{check},code=\"0\"")), 1.0);
    assert_eq!(series(&format!("{check},code=\"5\"")), 2.0, "NOT_FOUND is 5");
    assert_eq!(series("method=\"unknown\",code=\"12\""), 3.0, "UNIMPLEMENTED is 12");
    let rendered = metrics.render();
    assert!(!rendered.contains("Invented"), "{rendered}");
    shutdown.trigger();
    task.await?;
    Ok(())
}

/// One health server on its own port and metrics: its address, how many
/// Check calls it answered (so far), and its shutdown.
async fn instance() -> anyhow::Result<(std::net::SocketAddr, Metrics, Shutdown, tokio::task::JoinHandle<()>)>
{
    let metrics = Metrics::default();
    let server = GrpcServer::new(Duration::from_secs(1), &metrics, tenx_common::authn::AuthnLayer::no_api());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut settings = settings(addr);
    settings.shutdown_delay_ms = 0;
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let _ = server.serve(server.router(), listener, &[], &settings, stop).await;
    });
    Ok((addr, metrics, shutdown, task))
}

fn checks(metrics: &Metrics) -> f64 {
    crate::support::metric(metrics, "tenx_grpc_server_requests_total{method=\"/grpc.health.v1.Health/Check\"")
}

#[tokio::test]
async fn a_client_balances_over_every_instance_and_leaves_out_one_that_is_gone() -> anyhow::Result<()> {
    let (a, a_metrics, _a_stop, _a) = instance().await?;
    let (b, b_metrics, b_stop, b_task) = instance().await?;
    let channel = connect(&ClientSettings::new(&format!("http://{a}, http://{b}")))?;
    let mut health = HealthClient::new(channel);
    let check = || HealthCheckRequest { service: String::new() };
    for _ in 0..100 {
        health.check(check()).await?;
    }
    let (on_a, on_b) = (checks(&a_metrics), checks(&b_metrics));
    assert_eq!(on_a + on_b, 100.0);
    assert!((40.0..=60.0).contains(&on_a), "split {on_a}/{on_b}, not within 60/40");

    // B goes away: the call that finds its connection refused is sent to
    // A at once (it never reached B, so it cannot run twice, whatever it
    // is), so no call fails; then B is out of rotation and A answers all.
    b_stop.trigger();
    b_task.await?;
    let before = checks(&a_metrics);
    for i in 0..100 {
        if let Err(status) = health.check(check()).await {
            panic!("call {i} after B left failed: {status:?}");
        }
    }
    assert_eq!(checks(&a_metrics) - before, 100.0, "A answered every call");
    Ok(())
}

#[tokio::test]
async fn a_named_upstream_follows_what_its_name_resolves_to() -> anyhow::Result<()> {
    // A resolver the test controls, as a headless Service's DNS answers
    // with the pods that are ready now.
    let (a, a_metrics, _a_stop, _a) = instance().await?;
    let (b, b_metrics, _b_stop, _b) = instance().await?;
    let answer = std::sync::Arc::new(std::sync::Mutex::new(vec![a]));
    let resolve: tenx_common::grpc::Resolve = {
        let answer = answer.clone();
        std::sync::Arc::new(move |_name| {
            let addrs = answer.lock().map(|a| a.clone()).unwrap_or_default();
            Box::pin(async move { Ok(addrs) })
        })
    };
    let mut settings = ClientSettings::new("http://auth.tenx.internal:50051");
    settings.resolve_interval_ms = 50;
    let mut health = HealthClient::new(tenx_common::grpc::connect_with(&settings, resolve)?);
    let check = || HealthCheckRequest { service: String::new() };
    let mut calls = async |n: usize| -> anyhow::Result<(f64, f64)> {
        let (a0, b0) = (checks(&a_metrics), checks(&b_metrics));
        for _ in 0..n {
            health.check(check()).await?;
        }
        Ok((checks(&a_metrics) - a0, checks(&b_metrics) - b0))
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls(20).await?, (20.0, 0.0), "one instance: all to it");

    *answer.lock().map_err(|e| anyhow::anyhow!("{e}"))? = vec![a, b];
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (on_a, on_b) = calls(100).await?;
    assert!(on_a >= 40.0 && on_b >= 40.0, "a new instance joins: {on_a}/{on_b}");

    *answer.lock().map_err(|e| anyhow::anyhow!("{e}"))? = vec![b];
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(calls(20).await?, (0.0, 20.0), "a vanished instance leaves");
    Ok(())
}
