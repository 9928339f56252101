//! The metrics pushed over OTLP to a real OTLP/gRPC receiver running in
//! the test: counters as cumulative monotonic sums, gauges, histograms
//! with their buckets, the labels as attributes, the service as the
//! resource; and a last export at shutdown carrying the final counts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tenx_common::metrics::{Metrics, otlp};
use tenx_common::shutdown::Shutdown;
use tenx_common::telemetry::TelemetrySettings;
use tokio::net::TcpListener;

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

fn text<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

fn metric<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Metric> {
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == name)
}

/// The value of the sum `name` at attribute `key` = `value`.
fn sum_at(request: &ExportMetricsServiceRequest, name: &str, key: &str, value: &str) -> Option<f64> {
    let Some(metric::Data::Sum(sum)) = metric(request, name)?.data.as_ref() else { return None };
    assert!(sum.is_monotonic && sum.aggregation_temporality == 2, "a cumulative monotonic sum");
    sum.data_points.iter().find(|p| text(&p.attributes, key) == Some(value)).and_then(|p| match p.value {
        Some(number_data_point::Value::AsDouble(v)) => Some(v),
        _ => None,
    })
}

#[tokio::test]
async fn counters_gauges_and_histograms_reach_an_otlp_receiver_and_the_last_counts_go_at_shutdown()
-> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let metrics = Metrics::default();
    let calls: Family<Vec<(String, String)>, Counter> = Family::default();
    metrics.register("calls", "Calls made", calls.clone());
    let depth: Family<Vec<(String, String)>, Gauge> = Family::default();
    metrics.register("depth", "Messages ready", depth.clone());
    let latency: Family<Vec<(String, String)>, Histogram> =
        Family::new_with_constructor(|| Histogram::new([0.1, 1.0].into_iter()));
    metrics.register("latency_seconds", "Latency", latency.clone());
    let label = |v: &str| vec![("method".to_owned(), v.to_owned())];
    calls.get_or_create(&label("Get")).inc_by(3);
    depth.get_or_create(&vec![("queue".to_owned(), "work".to_owned())]).set(7);
    for seconds in [0.05, 0.5, 0.7, 5.0] {
        latency.get_or_create(&label("Get")).observe(seconds);
    }

    // Off without an endpoint, or with an interval of 0.
    let shutdown = Shutdown::new();
    assert!(otlp::exporter(&metrics, "test", &TelemetrySettings::default(), shutdown.child()).is_none());
    let mut settings = TelemetrySettings {
        otlp_endpoint: Some(format!("http://{addr}")),
        metrics_export_seconds: 0,
        ..Default::default()
    };
    assert!(otlp::exporter(&metrics, "test", &settings, shutdown.child()).is_none());
    settings.metrics_export_seconds = 1;
    let export = otlp::exporter(&metrics, "test", &settings, shutdown.child()).expect("configured");
    let task = tokio::spawn(export);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(first) = receiver.requests.lock().unwrap_or_else(|p| p.into_inner()).first().cloned() {
            break first;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "nothing exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let resource = first.resource_metrics[0].resource.clone().unwrap_or_default();
    assert_eq!(text(&resource.attributes, "service.name"), Some("tenx-test"));
    assert_eq!(sum_at(&first, "tenx_calls", "method", "Get"), Some(3.0));
    let Some(metric::Data::Gauge(gauge)) = metric(&first, "tenx_depth").and_then(|m| m.data.clone()) else {
        anyhow::bail!("no gauge: {first:?}");
    };
    assert_eq!(text(&gauge.data_points[0].attributes, "queue"), Some("work"));
    assert_eq!(gauge.data_points[0].value, Some(number_data_point::Value::AsDouble(7.0)));
    let histogram = metric(&first, "tenx_latency_seconds").cloned().unwrap_or_default();
    assert_eq!(histogram.description, "Latency.");
    let Some(metric::Data::Histogram(histogram)) = histogram.data else { anyhow::bail!("no histogram") };
    let point = &histogram.data_points[0];
    assert_eq!(text(&point.attributes, "method"), Some("Get"));
    assert!(point.attributes.iter().all(|kv| kv.key != "le"), "le is the buckets, not an attribute");
    assert_eq!(
        (point.explicit_bounds.as_slice(), point.bucket_counts.as_slice()),
        ([0.1, 1.0].as_slice(), [1, 2, 1].as_slice())
    );
    assert_eq!((point.count, point.sum), (4, Some(6.25)));

    // The last counts go at shutdown, without waiting for the interval.
    calls.get_or_create(&label("Get")).inc_by(2);
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task).await??;
    let last =
        receiver.requests.lock().unwrap_or_else(|p| p.into_inner()).last().cloned().unwrap_or_default();
    assert_eq!(sum_at(&last, "tenx_calls", "method", "Get"), Some(5.0));
    Ok(())
}
