//! One trace across gRPC metadata and AMQP headers, exported over OTLP to
//! a real OTLP/gRPC receiver running in the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tenx_common::grpc::{ClientSettings, GrpcServer, ServerSettings, connect};
use tenx_common::metrics::Metrics;
use tenx_common::outbox::{self, NewEvent, Relay, RelaySettings};
use tenx_common::queue::{Amqp, Consumer, Handler, HandlerError, Message, Topology};
use tenx_common::shutdown::Shutdown;
use tenx_common::telemetry::{self, LogFormat, TelemetrySettings};
use tenx_test_support::TestAmqp;
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::{amqp_settings, connect as connect_db, declare, eventually, test_db};

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Message>>>,
}

impl Handler for Recorder {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).push(message.clone());
        Ok(())
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_grpc_metadata_and_amqp_headers_and_reaches_an_otlp_receiver() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let otlp = TcpListener::bind("127.0.0.1:0").await?;
    let otlp_addr = otlp.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(otlp)),
    );
    let settings = TelemetrySettings {
        log_format: LogFormat::Pretty,
        otlp_endpoint: Some(format!("http://{otlp_addr}")),
        slow_request_ms: 0, // every request counts as slow here
        ..TelemetrySettings::default()
    };
    let guard = telemetry::init("tenx-common-test", &settings)?;

    // A gRPC server, and the outbox → RabbitMQ → consumer path.
    let (metrics, shutdown) = (Metrics::default(), Shutdown::new());
    let server = GrpcServer::new(settings.slow_request(), &metrics, tenx_common::authn::AuthnLayer::no_api());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server_settings =
        ServerSettings { listen: addr, admin_listen: addr, shutdown_delay_ms: 0, shutdown_grace_ms: 1_000 };
    {
        let (server, shutdown) = (server.clone(), shutdown.clone());
        tokio::spawn(async move {
            server.serve(server.router(), listener, &[], &server_settings, shutdown).await
        });
    }
    let tdb = test_db().await?;
    let db = connect_db(&tdb, None, &metrics)?;
    let test_amqp = TestAmqp::new();
    let amqp_settings = amqp_settings(&test_amqp);
    let amqp = Amqp::new(&amqp_settings, "traced");
    let topology = Topology::for_group(&amqp_settings, "traced", &["test.#"]);
    declare(&test_amqp, &amqp, &topology).await?;
    let recorder = Recorder::default();
    tokio::spawn(Consumer::new(amqp.clone(), topology, recorder.clone(), &metrics).run(shutdown.child()));
    tokio::spawn(Relay::new(&db, amqp.clone(), RelaySettings::default(), &metrics).run(shutdown.child()));

    let root = tracing::info_span!("test.request");
    let trace_id = root.context().span().span_context().trace_id();
    async {
        let mut health = HealthClient::new(connect(&ClientSettings::new(&format!("http://{addr}")))?);
        health.check(HealthCheckRequest { service: String::new() }).await?;
        let mut conn = db.write().await?;
        let tx = conn.transaction().await?;
        let event = NewEvent {
            event_type: "test.traced".into(),
            aggregate_id: "a1".into(),
            payload: b"hello".to_vec(),
            payload_type: "test".into(),
        };
        outbox::enqueue(&tx, &event).await?;
        tx.commit().await?;
        anyhow::Ok(())
    }
    .instrument(root.clone())
    .await?;
    drop(root);

    eventually(Duration::from_secs(10), "the consumer to get the event", || async {
        Ok(!recorder.seen.lock().unwrap_or_else(|p| p.into_inner()).is_empty())
    })
    .await?;
    let delivered = recorder.seen.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
    assert!(delivered.trace.traceparent.contains(&trace_id.to_string()), "AMQP headers carry the trace");

    let find = |spans: &[Span], name: &str| spans.iter().find(|s| s.name == name).cloned();
    let names = ["test.request", "/grpc.health.v1.Health/Check", "outbox.publish", "queue.consume"];
    eventually(Duration::from_secs(10), "every span at the OTLP receiver", || async {
        guard.flush().await;
        let spans = receiver.spans.lock().unwrap_or_else(|p| p.into_inner());
        Ok(names.iter().all(|name| spans.iter().any(|s| s.name == *name)))
    })
    .await?;
    let spans = receiver.spans.lock().unwrap_or_else(|p| p.into_inner()).clone();

    let root = find(&spans, "test.request").ok_or_else(|| anyhow::anyhow!("no root span"))?;
    let rpc =
        find(&spans, "/grpc.health.v1.Health/Check").ok_or_else(|| anyhow::anyhow!("no server span"))?;
    let publish = find(&spans, "outbox.publish").ok_or_else(|| anyhow::anyhow!("no publish span"))?;
    let consume = find(&spans, "queue.consume").ok_or_else(|| anyhow::anyhow!("no consume span"))?;
    for span in [&rpc, &publish, &consume] {
        assert_eq!(span.trace_id, root.trace_id, "{} is in the request's trace", span.name);
    }
    assert_eq!(rpc.parent_span_id.len(), 8, "the server span has the client's span as parent");
    assert_eq!(publish.parent_span_id, root.span_id, "publish continues the request that wrote the event");
    assert_eq!(consume.parent_span_id, publish.span_id, "consume continues through the AMQP headers");
    assert!(matches!(attribute(&rpc, "slow_request"), Some(Value::BoolValue(true))));
    assert!(matches!(attribute(&rpc, "rpc.grpc.status_code"), Some(Value::IntValue(0))));
    assert!(attribute(&rpc, "duration_ms").is_some());
    shutdown.trigger();
    guard.shutdown().await;
    Ok(())
}

/// Log lines written into a buffer instead of stdout.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes)?.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
    }
}

#[test]
fn a_json_log_line_inside_a_span_carries_its_trace_and_span_ids_even_with_no_exporter() -> anyhow::Result<()>
{
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let captured = Captured::default();
    let settings = TelemetrySettings {
        log_format: LogFormat::Json,
        log_filter: "info".into(),
        otlp_endpoint: None,
        ..Default::default()
    };
    let (dispatch, _guard) = telemetry::subscriber("tenx-log-test", &settings, captured.clone())?;
    // A request that arrived with a W3C traceparent from its caller.
    let caller = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736")?,
        SpanId::from_hex("00f067aa0ba902b7")?,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let (request_id, query_id) = tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!("before any request");
        let request = tracing::info_span!("request");
        let _ = request.set_parent(opentelemetry::Context::new().with_remote_span_context(caller.clone()));
        let _in_request = request.enter();
        tracing::info!("inside the request");
        let query = tracing::info_span!("query");
        let _in_query = query.enter();
        tracing::warn!("inside a span under it");
        let id = |span: &tracing::Span| span.context().span().span_context().span_id();
        (id(&request), id(&query))
    });
    let lines = captured.lines()?;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["fields"]["message"], "before any request");
    assert!(lines[0].get("trace_id").is_none() && lines[0].get("span_id").is_none(), "{}", lines[0]);
    for line in &lines[1..] {
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "the caller's trace: {line}");
    }
    assert_eq!(lines[1]["span_id"], request_id.to_string(), "the request's own span, not its caller's");
    assert_ne!(request_id, SpanId::from_hex("00f067aa0ba902b7")?);
    assert_eq!(lines[2]["span_id"], query_id.to_string(), "the innermost span the line was written in");
    assert_eq!(lines[2]["level"], "WARN");
    assert_eq!(lines[2]["span"]["name"], "query", "the usual JSON fields are still there");
    Ok(())
}
