//! The end-to-end slice through the gateway, as the README's session does
//! it: signup over HTTP → welcome email in the SMTP sink → login →
//! GET /v1/me → update → GET /v1/me shows it; and the signup is one trace
//! (gateway → auth → outbox relay → RabbitMQ → notification and billing),
//! checked at a real OTLP receiver running in the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tenx_common::telemetry::{self, LogFormat, TelemetrySettings};
use tenx_test_support::eventually;
use tokio::net::TcpListener;

use crate::support::{PASSWORD, Platform, bearer, send, unique_email};

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

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_to_welcome_email_to_profile_update_is_one_trace_across_every_service() -> anyhow::Result<()> {
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
        // Spans are filtered like logs: the services' spans are at info.
        log_filter: "warn,tenx_common=info,tenx_gateway=info".into(),
        otlp_endpoint: Some(format!("http://{otlp_addr}")),
        ..TelemetrySettings::default()
    };
    let guard = telemetry::init("tenx-e2e", &settings)?;

    let platform = Platform::start().await?;
    let gw = platform.gateway().await?.http_addr;
    let email = unique_email();

    // The client starts the trace (W3C traceparent); every hop continues it.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let body = serde_json::json!({ "email": email, "password": PASSWORD, "display_name": "Ada" }).to_string();
    let signup = send(gw, "POST", "/v1/auth/signup", &[("traceparent", &traceparent)], Some(&body)).await?;
    assert_eq!(signup.status, 201, "{}", signup.text);

    // The welcome email reaches the SMTP sink.
    let maildir = std::path::PathBuf::from(
        std::env::var("TENX_TEST_SMTP_MAILDIR").unwrap_or_else(|_| "/tmp/tenx-smtp-sink/maildir".into()),
    );
    eventually(Duration::from_secs(15), "the welcome email", || {
        let (maildir, email) = (maildir.clone(), email.clone());
        async move {
            let found = std::fs::read_dir(maildir.join("new"))?.filter_map(Result::ok).any(|entry| {
                std::fs::read_to_string(entry.path())
                    .is_ok_and(|mail| mail.contains(&format!("To: {email}")) && mail.contains("Welcome"))
            });
            Ok(found)
        }
    })
    .await?;

    let login_body = serde_json::json!({ "email": email, "password": PASSWORD }).to_string();
    let login = send(gw, "POST", "/v1/auth/login", &[], Some(&login_body)).await?;
    assert_eq!(login.status, 200, "{}", login.text);
    let auth = bearer(login.json["tokens"]["access_token"].as_str().unwrap_or_default());
    let me = send(gw, "GET", "/v1/me", &[("authorization", &auth)], None).await?;
    assert_eq!(me.json["user"]["email"], email.as_str());
    let updated =
        send(gw, "PATCH", "/v1/me", &[("authorization", &auth)], Some(r#"{"display_name":"Ada Lovelace"}"#))
            .await?;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let me = send(gw, "GET", "/v1/me", &[("authorization", &auth)], None).await?;
    assert_eq!(me.json["user"]["display_name"], "Ada Lovelace");

    // One trace: the gateway's HTTP span, auth's RPC, the relay's publish,
    // and the consumption of the signup event by notification and by
    // billing (which publishes `billing.customer.created` in it too).
    let in_trace = |spans: &[Span]| -> Vec<Span> {
        spans.iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect()
    };
    let consumed_by = |s: &Span, queue: &str| {
        s.name == "queue.consume"
            && text(s, "messaging.destination").is_some_and(|q| q.ends_with(queue))
            && text(s, "event.type") == Some("auth.user.signed_up")
    };
    let hops = |spans: &[Span]| -> Option<(Span, Span, Span, Span, Span)> {
        let find = |f: &dyn Fn(&Span) -> bool| spans.iter().find(|s| f(s)).cloned();
        let http = find(&|s| s.name == "POST /v1/auth/signup")?;
        let rpc = find(&|s| s.name == "/tenx.auth.v1.AuthService/SignUp")?;
        let consume = find(&|s| consumed_by(s, "notification"))?;
        let billing = find(&|s| consumed_by(s, "billing.customers"))?;
        let publish = find(&|s| s.name == "outbox.publish" && s.span_id == consume.parent_span_id)?;
        Some((http, rpc, publish, consume, billing))
    };
    let complete = eventually(Duration::from_secs(15), "the whole trace at the OTLP receiver", || async {
        guard.flush().await;
        Ok(hops(&in_trace(&receiver.spans.lock().unwrap_or_else(|p| p.into_inner()))).is_some())
    })
    .await;
    if let Err(error) = complete {
        let all = receiver.spans.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let seen: Vec<String> = all
            .iter()
            .map(|s| format!("{} {} {:?}", hex(&s.trace_id), s.name, text(s, "messaging.destination")))
            .collect();
        anyhow::bail!("{error}; trace {trace_id}; spans received:\n{}", seen.join("\n"));
    }
    let (http, rpc, publish, consume, billing) =
        hops(&in_trace(&receiver.spans.lock().unwrap_or_else(|p| p.into_inner())))
            .ok_or_else(|| anyhow::anyhow!("the trace lost a hop"))?;
    assert_eq!(hex(&http.parent_span_id), "00f067aa0ba902b7", "the gateway continues the client's trace");
    assert_eq!(rpc.parent_span_id, http.span_id, "auth continues the gateway's span (gRPC metadata)");
    assert_eq!(text(&consume, "event.type"), Some("auth.user.signed_up"));
    assert_eq!(consume.parent_span_id, publish.span_id, "notification continues through the AMQP headers");
    assert_eq!(billing.parent_span_id, publish.span_id, "billing consumes the same published event");
    assert!(
        rpc.start_time_unix_nano >= http.start_time_unix_nano
            && rpc.end_time_unix_nano <= http.end_time_unix_nano
    );
    guard.shutdown().await;
    Ok(())
}
