//! OTLP export of the metrics, beside Prometheus's scrape: when
//! `telemetry.otlp_endpoint` is set, every `telemetry.metrics_export_seconds`
//! the registry is rendered (probes included, as a scrape would) and sent
//! to the collector's `MetricsService/Export` as cumulative sums, gauges
//! and explicit-bucket histograms, under the same names and labels.
//!
//! Why a bridge rather than the OpenTelemetry metrics SDK: the services
//! register their families once with `prometheus-client` (what `/metrics`
//! serves and every dashboard and alert reads); a second instrument per
//! family would double every hot-path increment and could drift. Reading
//! the rendered text back ([`super::exposition`]) exports exactly what
//! Prometheus sees.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::Metrics;
use super::exposition::{Family, Kind, Sample, families};
use crate::shutdown::Shutdown;
use crate::telemetry::TelemetrySettings;

/// Longest one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
        ..Default::default()
    }
}

fn attributes(sample: &Sample, skip: &str) -> Vec<KeyValue> {
    sample.labels.iter().filter(|(k, _)| k != skip).map(|(k, v)| text(k, v)).collect()
}

fn number(sample: &Sample, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(sample, ""),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(sample.value)),
        ..Default::default()
    }
}

/// One histogram point per label set: cumulative `_bucket{le}` counts
/// become per-bucket counts over the finite bounds.
fn histogram_points(family: &Family, start: u64, now: u64) -> Vec<HistogramDataPoint> {
    #[derive(Default)]
    struct Point {
        attributes: Vec<KeyValue>,
        buckets: Vec<(f64, f64)>,
        sum: f64,
        count: f64,
    }
    let mut points: BTreeMap<String, Point> = BTreeMap::new();
    for sample in &family.samples {
        let key = format!("{:?}", sample.labels.iter().filter(|(k, _)| k != "le").collect::<Vec<_>>());
        let point = points
            .entry(key)
            .or_insert_with(|| Point { attributes: attributes(sample, "le"), ..Default::default() });
        match sample.name.strip_prefix(family.name.as_str()) {
            Some("_bucket") => {
                let bound = match sample.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                point.buckets.push((bound, sample.value));
            }
            Some("_sum") => point.sum = sample.value,
            Some("_count") => point.count = sample.value,
            _ => {}
        }
    }
    points
        .into_values()
        .map(|mut point| {
            point.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let explicit_bounds: Vec<f64> =
                point.buckets.iter().map(|b| b.0).filter(|b| b.is_finite()).collect();
            let mut below = 0.0;
            let mut bucket_counts: Vec<u64> = point
                .buckets
                .iter()
                .map(|(_, cumulative)| {
                    let here = (cumulative - below).max(0.0);
                    below = *cumulative;
                    here as u64
                })
                .collect();
            // No +Inf line: what the count holds beyond the last bound.
            if bucket_counts.len() == explicit_bounds.len() {
                bucket_counts.push((point.count - below).max(0.0) as u64);
            }
            HistogramDataPoint {
                attributes: point.attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: point.count as u64,
                sum: Some(point.sum),
                bucket_counts,
                explicit_bounds,
                ..Default::default()
            }
        })
        .collect()
}

/// The OTLP form of `families`.
pub fn to_otlp(
    service: &str,
    instance: &str,
    families: &[Family],
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, now) = (nanos(start), nanos(now));
    let cumulative = AggregationTemporality::Cumulative as i32;
    let metrics = families
        .iter()
        .filter(|f| !f.samples.is_empty())
        .filter_map(|family| {
            let data = match family.kind {
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points: family
                        .samples
                        .iter()
                        .filter(|s| s.name.ends_with("_total"))
                        .map(|s| number(s, start, now))
                        .collect(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                Kind::Gauge => metric::Data::Gauge(Gauge {
                    data_points: family.samples.iter().map(|s| number(s, start, now)).collect(),
                }),
                Kind::Histogram => metric::Data::Histogram(Histogram {
                    data_points: histogram_points(family, start, now),
                    aggregation_temporality: cumulative,
                }),
                Kind::Other => return None,
            };
            Some(Metric {
                name: family.name.clone(),
                description: family.help.clone(),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", &format!("tenx-{service}")),
                    text("service.instance.id", instance),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tenx".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The export loop `settings` ask for: with `otlp_endpoint` set and
/// `metrics_export_seconds` above 0; `None` otherwise.
pub fn exporter(
    metrics: &Metrics,
    service: &'static str,
    settings: &TelemetrySettings,
    shutdown: Shutdown,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let endpoint = settings.otlp_endpoint.clone()?;
    let interval = Duration::from_secs(settings.metrics_export_seconds);
    (!interval.is_zero()).then(|| export_until(metrics.clone(), service, endpoint, interval, shutdown))
}

/// Exports every `interval` until `shutdown`, then once more (the last
/// counts before the process goes). A failed export is logged and the
/// next one carries the same cumulative totals, so nothing is lost but
/// resolution.
pub async fn export_until(
    metrics: Metrics,
    service: &'static str,
    endpoint: String,
    interval: Duration,
    shutdown: Shutdown,
) {
    let start = SystemTime::now();
    let instance = crate::ops::instance_name();
    let channel = match tonic::transport::Endpoint::from_shared(endpoint.clone()) {
        Ok(endpoint) => {
            endpoint.connect_timeout(Duration::from_secs(5)).timeout(EXPORT_TIMEOUT).connect_lazy()
        }
        Err(error) => {
            tracing::warn!(%error, endpoint, "telemetry.otlp_endpoint: not a URL; metrics are not exported");
            return;
        }
    };
    let mut client = MetricsServiceClient::new(channel);
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = shutdown.wait() => true,
        };
        let families = families(&metrics.scrape().await);
        let request = to_otlp(service, &instance, &families, start, SystemTime::now());
        if let Err(status) = client.export(request).await {
            tracing::warn!(code = ?status.code(), message = status.message(), "OTLP metrics export failed");
        }
        if stopping {
            return;
        }
    }
}
