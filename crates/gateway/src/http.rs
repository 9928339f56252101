//! The HTTP/JSON front door: the public RPCs' HTTP bindings
//! ([`tenx_proto::edge`], declared in the protos, served by
//! [`crate::transcode`]), the
//! OpenAPI document and the JWKS, behind one edge middleware (request id,
//! trace context, load shedding, the policy, metrics) and CORS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use opentelemetry::propagation::Extractor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tenx_common::metrics::{MetricSet, Metrics};
use tonic::Code;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::error::EdgeError;
use crate::policy::Ctx;
use crate::policy::{self, REQUEST_ID};
use crate::routes::Route;
use crate::state::Gateway;
use crate::transcode;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabel {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone)]
struct HttpMetrics {
    requests: Family<RequestLabel, Counter>,
    duration: Family<RouteLabel, Histogram>,
    shed: Counter,
}

impl MetricSet for HttpMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            }),
            shed: Counter::default(),
        };
        metrics.register(
            "gateway_http_requests",
            "HTTP requests by route (operation id) and status",
            set.requests.clone(),
        );
        metrics.register(
            "gateway_http_request_duration_seconds",
            "HTTP request latency by route",
            set.duration.clone(),
        );
        metrics.register(
            "gateway_http_shed",
            "Requests refused with 503 because http.max_in_flight were in progress",
            set.shed.clone(),
        );
        set
    }
}

/// The route a method and matched path belong to, found by the path in
/// a map made once (not by a walk over every route per request).
fn route_of(method: &Method, matched: Option<&str>) -> Option<&'static Route> {
    type ByPath = HashMap<&'static str, Vec<(&'static str, &'static Route)>>;
    static ROUTES: OnceLock<ByPath> = OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let mut routes = ByPath::new();
        for (route, http) in tenx_proto::edge::http() {
            routes.entry(http.path).or_default().push((http.method, route));
        }
        routes
    });
    routes.get(matched?)?.iter().find(|(m, _)| *m == method.as_str()).map(|(_, r)| *r)
}

fn method_filter(method: &str) -> MethodFilter {
    match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PATCH" => MethodFilter::PATCH,
        "PUT" => MethodFilter::PUT,
        _ => MethodFilter::DELETE,
    }
}

pub fn router(gw: Arc<Gateway>) -> Router {
    let mut router: Router<Arc<Gateway>> = Router::new();
    // Every HTTP binding of a public RPC, served by the one transcoder.
    for (route, http) in tenx_proto::edge::http() {
        let handler = move |State(gw): State<Arc<Gateway>>, ctx: Ctx, req: Request| {
            crate::transcode::handle(gw, ctx, route, req)
        };
        router = router.route(http.path, on(method_filter(http.method), handler));
    }
    let limit = gw.settings.http.body_limit_bytes;
    let cors = cors(&gw);
    let router = router
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], crate::openapi::document()) }),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .fallback(|| async { EdgeError::http(StatusCode::NOT_FOUND, Code::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            EdgeError::http(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::InvalidArgument,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state((gw.clone(), gw.metrics.set::<HttpMetrics>()), edge))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gw);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

pub(crate) fn cors(gw: &Gateway) -> Option<CorsLayer> {
    let origins = gw.settings.cors_origins();
    let allow = match origins {
        None => AllowOrigin::any(),
        Some(list) if list.is_empty() => return None,
        Some(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static(REQUEST_ID),
                header::HeaderName::from_static("traceparent"),
                header::HeaderName::from_static(tenx_common::idempotency::METADATA),
                header::HeaderName::from_static(policy::WAL_POSITION),
            ])
            .expose_headers([
                header::HeaderName::from_static(REQUEST_ID),
                header::RETRY_AFTER,
                header::HeaderName::from_static("ratelimit-limit"),
                header::HeaderName::from_static("ratelimit-remaining"),
                header::HeaderName::from_static("ratelimit-reset"),
                header::HeaderName::from_static(policy::WAL_POSITION),
                header::HeaderName::from_static(tenx_common::idempotency::REPLAYED),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

async fn jwks(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.authn.jwks().document() {
        Some(doc) => ([(header::CONTENT_TYPE, "application/jwk-set+json")], doc).into_response(),
        None => {
            EdgeError::unavailable("signing keys not fetched yet", Some(std::time::Duration::from_secs(1)))
                .into_response()
        }
    }
}

struct HeaderCarrier<'a>(&'a HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Request id, trace span (continuing a client's `traceparent`), load
/// shedding, the policy for API routes, and metrics.
async fn edge(
    State((gw, metrics)): State<(Arc<Gateway>, HttpMetrics)>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = policy::request_id(req.headers());
    let route = route_of(req.method(), req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    let op = route.map_or("other", |r| r.operation_id);
    let span = tracing::info_span!(
        "http",
        otel.name = %format!("{} {}", req.method(), route.and_then(|r| r.http).map_or("other", |h| h.path)),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = op,
        http.response.status_code = tracing::field::Empty,
        request_id = request_id.to_str().unwrap_or_default(),
    );
    tenx_common::telemetry::propagation::set_remote_parent(
        &span,
        tenx_common::telemetry::propagation::extract(&HeaderCarrier(req.headers())),
    );
    let mut response = async {
        let Ok(_permit) = gw.in_flight.clone().try_acquire_owned() else {
            metrics.shed.inc();
            return EdgeError::unavailable(
                "the gateway is overloaded; try again shortly",
                Some(std::time::Duration::from_secs(1)),
            )
            .into_response();
        };
        let Some(route) = route else { return next.run(req).await };
        if req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            > Some(transcode::body_limit(&gw, route))
        {
            return EdgeError::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::InvalidArgument,
                "request body too large",
            )
            .into_response();
        }
        let peer =
            req.extensions().get::<ConnectInfo<SocketAddr>>().map_or([127, 0, 0, 1].into(), |c| c.0.ip());
        let client = policy::client_ip(req.headers(), peer, gw.settings.http.forwarded_hops);
        let authorization = req.headers().get(header::AUTHORIZATION);
        let position = policy::position(req.headers());
        let period = gw.settings.policy(route).period;
        match gw.admit(route, authorization, client, request_id.clone(), position).await {
            Ok((ctx, decision)) => {
                req.extensions_mut().insert(ctx);
                let mut response = next.run(req).await;
                policy::limit_headers(response.headers_mut(), &decision, period);
                response
            }
            Err((error, decision)) => {
                let mut response = error.into_response();
                if let Some(d) = decision {
                    policy::limit_headers(response.headers_mut(), &d, period);
                }
                response
            }
        }
    }
    .instrument(span.clone())
    .await;
    response.headers_mut().insert(REQUEST_ID, request_id);
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    metrics.requests.get_or_create(&RequestLabel { route: op, status }).inc();
    metrics.duration.get_or_create(&RouteLabel { route: op }).observe(started.elapsed().as_secs_f64());
    response
}
