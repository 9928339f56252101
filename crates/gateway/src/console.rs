//! The operator console: one page on the gateway's admin port (`/console`)
//! showing every service's health, queues, dead letters, outbox, caches,
//! pools, circuits and recent slow calls, with dead letters browsable and
//! redrivable from it.
//!
//! The page holds nothing and trusts nothing: the operator pastes a token
//! (`tenx-admin token`, or an access token of a user with the `admin`
//! role); every `/console/api/*` call carries it as `Authorization:
//! Bearer`, the gateway checks it is an operator's before calling anyone,
//! and forwards it, so each service checks it again (nothing behind the
//! gateway trusts the gateway's word). A header, not a cookie, carries it:
//! no other site can make the browser send it (no CSRF), and the page
//! writes data only as text, under a Content-Security-Policy that runs
//! no script but its own.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tenx_proto::ops::v1 as ops;
use tenx_proto::ops::v1::dead_letter_service_client::DeadLetterServiceClient;
use tenx_proto::ops::v1::status_service_client::StatusServiceClient;
use tonic::Code;

use crate::error::EdgeError;
use crate::state::Gateway;
use crate::upstream::Upstream;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The services the console asks, in the order it shows them.
const SERVICES: [&str; 3] = ["auth", "billing", "notification"];

/// How long the console waits for one service's answer.
const UPSTREAM_DEADLINE: Duration = Duration::from_secs(3);

/// The console's routes, for the admin port.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/console", get(|| async { asset(PAGE, "text/html; charset=utf-8") }))
        .route("/console/console.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/console/console.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
        .route("/console/api/status", get(status))
        .route("/console/api/dead-letters", get(dead_letters))
        .route("/console/api/dead-letters/redrive", post(redrive))
        .with_state(gw)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The caller's `Authorization` value, once the gateway has checked it is
/// an operator's (the rule of the RPCs the console calls).
async fn operator(gw: &Gateway, headers: &HeaderMap) -> Result<String, EdgeError> {
    let authorization =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            EdgeError::unauthenticated("an operator's token is required (Authorization: Bearer …)")
        })?;
    let rule = tenx_proto::access::rule("/tenx.ops.v1.StatusService/GetStatus")
        .ok_or_else(|| EdgeError::new(Code::Internal, "no access rule for the status RPC"))?;
    gw.authn.admit(rule, Some(authorization)).await?;
    Ok(authorization.to_owned())
}

/// `message` with the operator's credential, as the service must see it.
fn forwarded<T>(authorization: &str, message: T) -> Result<tonic::Request<T>, tonic::Status> {
    let mut request = tonic::Request::new(message);
    let value =
        authorization.parse().map_err(|_| tonic::Status::unauthenticated("malformed authorization"))?;
    request.metadata_mut().insert("authorization", value);
    request.set_timeout(UPSTREAM_DEADLINE);
    Ok(request)
}

fn service<'a>(gw: &'a Gateway, name: &str) -> Result<&'a Upstream, EdgeError> {
    SERVICES
        .contains(&name)
        .then(|| gw.upstream(name))
        .flatten()
        .ok_or_else(|| EdgeError::invalid("service", format!("must be one of {}", SERVICES.join(", "))))
}

async fn status(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Result<Json<Value>, EdgeError> {
    let authorization = operator(&gw, &headers).await?;
    let asks = SERVICES.iter().map(|name| {
        let (gw, authorization) = (gw.clone(), authorization.clone());
        async move {
            match ask_status(service(&gw, name)?, &authorization).await {
                Ok(status) => {
                    Ok::<_, EdgeError>(json!({ "service": name, "ok": true, "status": status_json(&status) }))
                }
                Err(error) => Ok(json!({ "service": name, "ok": false, "error": error.message })),
            }
        }
    });
    let mut services = Vec::with_capacity(SERVICES.len());
    for answer in futures_util::future::join_all(asks).await {
        services.push(answer?);
    }
    let circuits: Vec<Value> = SERVICES
        .iter()
        .filter_map(|name| gw.upstream(name))
        .map(|u| json!({ "upstream": u.name, "open": u.circuit_open() }))
        .collect();
    let slow = tenx_common::grpc::recent_slow_requests(&gw.metrics)
        .into_iter()
        .map(|s| {
            json!({
                "method": s.method,
                "code": s.code,
                "duration_ms": s.duration.as_secs_f64() * 1000.0,
                "finished_at_unix_ms": s.finished_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "trace_id": s.trace_id,
            })
        })
        .collect::<Vec<_>>();
    Ok(Json(json!({
        "gateway": { "circuits": circuits, "slow_requests": slow },
        "services": services,
    })))
}

/// One service's own status, asked with the operator's credential.
async fn ask_status(upstream: &Upstream, authorization: &str) -> Result<ops::GetStatusResponse, EdgeError> {
    let client = StatusServiceClient::new(upstream.channel.clone());
    let response = upstream
        .call(true, UPSTREAM_DEADLINE, || {
            let mut client = client.clone();
            let request = forwarded(authorization, ops::GetStatusRequest {});
            async move { client.get_status(request?).await }
        })
        .await?;
    Ok(response.into_inner())
}

fn status_json(s: &ops::GetStatusResponse) -> Value {
    json!({
        "service": s.service,
        "instance": s.instance,
        "version": s.version,
        "checks": s.checks.iter().map(|c| json!({ "name": c.name, "ok": c.ok, "reason": c.reason })).collect::<Vec<_>>(),
        "outbox": s.outbox.as_ref().map(|o| json!({ "pending": o.pending, "oldest_pending_age_seconds": o.oldest_pending_age_seconds })),
        "queues": s.queues.iter().map(|q| json!({ "queue": q.queue, "kind": q.kind, "depth": q.depth, "consumers": q.consumers })).collect::<Vec<_>>(),
        "caches": s.caches.iter().map(|c| json!({ "cache": c.cache, "in_process_hits": c.in_process_hits, "redis_hits": c.redis_hits, "loads": c.loads })).collect::<Vec<_>>(),
        "pools": s.pools.iter().map(|p| json!({ "pool": p.pool, "role": p.role, "in_use": p.in_use, "idle": p.idle, "max": p.max, "waiting": p.waiting })).collect::<Vec<_>>(),
        "slow_requests": s.slow_requests.iter().map(|r| json!({ "method": r.method, "code": r.code, "duration_ms": r.duration_ms, "finished_at_unix_ms": r.finished_at_unix_ms, "trace_id": r.trace_id })).collect::<Vec<_>>(),
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    service: String,
    #[serde(default)]
    limit: i32,
}

async fn dead_letters(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, EdgeError> {
    let authorization = operator(&gw, &headers).await?;
    let upstream = service(&gw, &query.service)?;
    let client = DeadLetterServiceClient::new(upstream.channel.clone());
    let listed = upstream
        .call(true, UPSTREAM_DEADLINE, || {
            let mut client = client.clone();
            let request = forwarded(
                &authorization,
                ops::ListDeadLettersRequest { queue: String::new(), limit: query.limit },
            );
            async move { client.list_dead_letters(request?).await }
        })
        .await?
        .into_inner();
    let queues: Vec<Value> = listed
        .queues
        .iter()
        .map(|q| {
            json!({
                "queue": q.queue,
                "work_queue": q.work_queue,
                "depth": q.depth,
                "messages": q.messages.iter().map(|m| json!({
                    "message_id": m.message_id,
                    "event_type": m.event_type,
                    "attempts": m.attempts,
                    "last_error": m.last_error,
                    "size_bytes": m.size_bytes,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "service": query.service, "queues": queues })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    service: String,
    queue: String,
    #[serde(default)]
    message_ids: Vec<String>,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    all: bool,
}

async fn redrive(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Json<RedriveBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, EdgeError> {
    let authorization = operator(&gw, &headers).await?;
    let Json(body) = body.map_err(|e| EdgeError::invalid("body", e.body_text()))?;
    let upstream = service(&gw, &body.service)?;
    let client = DeadLetterServiceClient::new(upstream.channel.clone());
    let selection =
        ops::Selection { message_ids: body.message_ids, event_type: body.event_type, all: body.all };
    // Not retried: a redrive the service did but whose answer was lost
    // would move the next messages too. The operator sees the outcome.
    let moved = upstream
        .call(false, UPSTREAM_DEADLINE, || {
            let mut client = client.clone();
            let request = forwarded(
                &authorization,
                ops::RedriveDeadLettersRequest {
                    queue: body.queue.clone(),
                    selection: Some(selection.clone()),
                },
            );
            async move { client.redrive_dead_letters(request?).await }
        })
        .await?
        .into_inner();
    tracing::info!(service = %body.service, queue = %body.queue, redriven = moved.redriven, "dead letters redriven from the console");
    Ok((StatusCode::OK, Json(json!({ "redriven": moved.redriven, "remaining": moved.remaining })))
        .into_response())
}
