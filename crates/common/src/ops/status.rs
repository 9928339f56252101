//! `tenx.ops.v1.StatusService`: an instance's readiness checks and the
//! numbers of its `/metrics` that an operator looks at first, read from
//! one scrape (the same probes, the same registry) so that the console
//! and the dashboards never disagree.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use tenx_proto::ops::v1 as pb;
use tenx_proto::ops::v1::status_service_server::{StatusService, StatusServiceServer};
use tonic::{Request, Response, Status};

use crate::admin::Readiness;
use crate::grpc::recent_slow_requests;
use crate::metrics::Metrics;
use crate::metrics::exposition::{Sample, named, parse};

/// `StatusService` for `service` (`billing`), over its registry and its
/// `/readyz` checks.
pub fn status_service(
    service: &'static str,
    metrics: Metrics,
    readiness: Readiness,
) -> StatusServiceServer<StatusApi> {
    StatusServiceServer::new(StatusApi { service, instance: instance_name(), metrics, readiness })
}

#[derive(Debug)]
pub struct StatusApi {
    service: &'static str,
    instance: String,
    metrics: Metrics,
    readiness: Readiness,
}

/// The host's name: the pod's in Kubernetes.
pub fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl StatusService for StatusApi {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let (text, checks) = tokio::join!(self.metrics.scrape(), self.readiness.results());
        let samples = parse(&text);
        Ok(Response::new(pb::GetStatusResponse {
            service: self.service.to_owned(),
            instance: self.instance.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            checks: checks
                .into_iter()
                .map(|(name, outcome)| pb::Check {
                    name,
                    ok: outcome.is_ok(),
                    reason: outcome.err().unwrap_or_default(),
                })
                .collect(),
            outbox: outbox(&samples),
            queues: queues(&samples),
            caches: caches(&samples),
            pools: pools(&samples),
            slow_requests: recent_slow_requests(&self.metrics)
                .into_iter()
                .map(|slow| pb::SlowRequest {
                    method: slow.method,
                    code: slow.code,
                    duration_ms: slow.duration.as_secs_f64() * 1000.0,
                    finished_at_unix_ms: slow
                        .finished_at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                    trace_id: slow.trace_id,
                })
                .collect(),
        }))
    }
}

/// A gauge or counter as a whole number (they are counts here).
fn count<T: TryFrom<u64> + Default>(value: f64) -> T {
    // `as` saturates: a negative or NaN sample reads 0.
    T::try_from(value as u64).unwrap_or_default()
}

fn first<'a>(samples: &'a [Sample], name: &'a str) -> Option<&'a Sample> {
    named(samples, name).next()
}

/// Absent when the probe failed (its gauges were removed).
fn outbox(samples: &[Sample]) -> Option<pb::Outbox> {
    let pending = first(samples, "tenx_outbox_pending")?;
    Some(pb::Outbox {
        pending: count(pending.value),
        oldest_pending_age_seconds: first(samples, "tenx_outbox_oldest_pending_age_seconds")
            .map_or(0.0, |s| s.value),
    })
}

fn queues(samples: &[Sample]) -> Vec<pb::Queue> {
    let consumers: BTreeMap<(&str, &str), f64> = named(samples, "tenx_queue_consumers")
        .filter_map(|s| Some(((s.label("queue")?, s.label("kind")?), s.value)))
        .collect();
    let mut queues: Vec<pb::Queue> = named(samples, "tenx_queue_depth")
        .filter_map(|s| {
            let (queue, kind) = (s.label("queue")?, s.label("kind")?);
            Some(pb::Queue {
                queue: queue.to_owned(),
                kind: kind.to_owned(),
                depth: count(s.value),
                consumers: consumers.get(&(queue, kind)).copied().map_or(0, count),
            })
        })
        .collect();
    queues.sort_by(|a, b| a.queue.cmp(&b.queue));
    queues
}

fn caches(samples: &[Sample]) -> Vec<pb::Cache> {
    let mut caches: BTreeMap<&str, pb::Cache> = BTreeMap::new();
    let new = |cache: &str| pb::Cache { cache: cache.to_owned(), ..Default::default() };
    for s in named(samples, "tenx_cache_hits_total") {
        let Some(cache) = s.label("cache") else { continue };
        let row = caches.entry(cache).or_insert_with(|| new(cache));
        match s.label("layer") {
            Some("l1") => row.in_process_hits = count(s.value),
            Some("l2") => row.redis_hits = count(s.value),
            _ => {}
        }
    }
    for s in named(samples, "tenx_cache_loads_total") {
        let Some(cache) = s.label("cache") else { continue };
        caches.entry(cache).or_insert_with(|| new(cache)).loads = count(s.value);
    }
    caches.into_values().collect()
}

fn pools(samples: &[Sample]) -> Vec<pb::Pool> {
    let mut pools: BTreeMap<(&str, &str), pb::Pool> = BTreeMap::new();
    let names = ["tenx_db_pool_connections", "tenx_db_pool_max_connections", "tenx_db_pool_waiting"];
    for name in names {
        for s in named(samples, name) {
            let (Some(pool), Some(role)) = (s.label("pool"), s.label("role")) else { continue };
            let row = pools.entry((pool, role)).or_insert_with(|| pb::Pool {
                pool: pool.to_owned(),
                role: role.to_owned(),
                ..Default::default()
            });
            match (name, s.label("state")) {
                ("tenx_db_pool_connections", Some("in_use")) => row.in_use = count(s.value),
                ("tenx_db_pool_connections", Some("idle")) => row.idle = count(s.value),
                ("tenx_db_pool_max_connections", _) => row.max = count(s.value),
                ("tenx_db_pool_waiting", _) => row.waiting = count(s.value),
                _ => {}
            }
        }
    }
    pools.into_values().collect()
}
