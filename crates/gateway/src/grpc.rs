//! The gRPC front door: the services' public RPCs, proxied frame for
//! frame to their upstream after the same policy as the HTTP API. Any
//! `x-tenx-*` metadata a client sets is dropped; the client's credential
//! travels on, and the upstream verifies it again.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt;

use crate::error::EdgeError;
use crate::policy::{self, REQUEST_ID};
use crate::state::Gateway;

/// The gRPC proxy service (the fallback of the gateway's gRPC router).
#[derive(Clone)]
pub struct Proxy {
    gw: Arc<Gateway>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

/// The door's front: native gRPC (`application/grpc`, `application/grpc+proto`)
/// goes straight to the [`Proxy`]; everything else — gRPC-Web from
/// browsers and their CORS preflights — through `web` (the gRPC-Web
/// translation and the CORS policy, in front of the same proxy). A native
/// gRPC client is never a browser, so CORS has nothing to say to it, and
/// the translation nothing to translate.
#[derive(Clone)]
pub struct Door<W> {
    proxy: Proxy,
    web: W,
}

impl<W> Door<W> {
    pub fn new(proxy: Proxy, web: W) -> Self {
        Self { proxy, web }
    }
}

impl<W> std::fmt::Debug for Door<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door").finish_non_exhaustive()
    }
}

/// Whether a request is native gRPC (not gRPC-Web).
fn native_grpc(req: &Request<Body>) -> bool {
    req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    })
}

impl<W> tower::Service<Request<Body>> for Door<W>
where
    W: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<<Proxy as tower::Service<Request<Body>>>::Future, W::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The proxy is always ready; the browsers' stack says for itself.
        self.web.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if native_grpc(&req) {
            futures_util::future::Either::Left(tower::Service::call(&mut self.proxy, req))
        } else {
            futures_util::future::Either::Right(self.web.call(req))
        }
    }
}

fn status_response(error: EdgeError) -> Response<Body> {
    tonic::Status::from(error).into_http()
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let gw = self.gw.clone();
        Box::pin(async move { Ok(forward(gw, req).await) })
    }
}

async fn forward(gw: Arc<Gateway>, mut req: Request<Body>) -> Response<Body> {
    // Public: an RPC declared with `(tenx.options.v1.route)`; anything
    // else (operator and service RPCs, reflection) is not served here.
    let Some(rpc) = tenx_proto::edge::by_path(req.uri().path()) else {
        return status_response(EdgeError::new(tonic::Code::Unimplemented, "no such public method"));
    };
    let peer = req
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    let client = policy::client_ip(req.headers(), peer.ip(), gw.settings.http.forwarded_hops);
    let request_id = policy::request_id(req.headers());
    // Read where it is (the request is changed only once it is admitted).
    let authorization = req.headers().get("authorization");
    let position = policy::position(req.headers());
    let (ctx, _) = match gw.admit(rpc, authorization, client, request_id, position).await {
        Ok(admitted) => admitted,
        Err((error, _)) => return status_response(error),
    };
    let headers = req.headers_mut();
    let client_set: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-tenx-") && k.as_str() != policy::WAL_POSITION)
        .cloned()
        .collect();
    for key in client_set {
        headers.remove(key);
    }
    if let Some((client, edge)) = &ctx.vouch
        && let Ok(client) = HeaderValue::from_str(client)
        && let Ok(edge) = HeaderValue::from_bytes(edge.as_bytes())
    {
        headers.insert(tenx_common::authn::CLIENT_HEADER, client);
        headers.insert(tenx_common::authn::EDGE_AUTHORIZATION, edge);
    }
    headers.insert(REQUEST_ID, ctx.request_id);
    let Some(upstream) = gw.upstream(rpc.service) else {
        return status_response(EdgeError::new(tonic::Code::Internal, "internal error"));
    };
    // The client's `authorization` travels on unchanged: the upstream
    // verifies it again with the same shared layer. Not on an anonymous
    // route, where nothing checked it here: a bogus key sprayed at Login
    // would cost auth a lookup each, outside the failed-auth budget.
    if rpc.anonymous {
        headers.remove("authorization");
    }
    // The route's deadline, or the client's if shorter.
    let deadline = ctx.deadline;
    let client_deadline = tenx_common::grpc::timeout::of(headers);
    let effective = client_deadline.map_or(deadline, |c| c.min(deadline));
    let callers_deadline = effective < deadline;
    headers.insert(tenx_common::grpc::timeout::GRPC_TIMEOUT, tenx_common::grpc::timeout::header(effective));
    match upstream.forward(effective, callers_deadline, req).await {
        Ok(response) => response,
        Err(error) => status_response(error),
    }
}

impl crate::upstream::Upstream {
    /// Sends a raw gRPC request through this upstream's channel, with its
    /// breaker: transport failures and `UNAVAILABLE` answers count.
    pub async fn forward(
        &self,
        deadline: std::time::Duration,
        callers_deadline: bool,
        req: Request<Body>,
    ) -> Result<Response<Body>, EdgeError> {
        use crate::upstream::Outcome;
        use tenx_common::grpc::LinkError;
        // Out of time says something about the upstream only when the
        // deadline was the route's own, not a client's shorter one.
        let late = if callers_deadline { Outcome::Unknown } else { Outcome::Unwell };
        let admission = self.admit_call()?;
        let channel = self.channel.clone();
        let outcome =
            tokio::time::timeout(deadline + std::time::Duration::from_millis(250), channel.oneshot(req))
                .await;
        let response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(error)) if !error.downcast_ref::<LinkError>().is_some_and(LinkError::timed_out) => {
                // The client's own request failed (its body broke off, or
                // is larger than any service accepts): nothing about the
                // upstream.
                if let Some(link) = error.downcast_ref::<LinkError>()
                    && !link.instance_failed()
                {
                    admission.record(Outcome::Unknown);
                    return Err(link.status().into());
                }
                admission.record(Outcome::Unwell);
                tracing::warn!(upstream = self.name, %error, "upstream connection failed");
                return Err(EdgeError::unavailable(
                    format!("{} is unavailable; try again shortly", self.name),
                    None,
                ));
            }
            // Out of time: this side's timer, or the link's on the call's
            // `grpc-timeout`.
            _ => {
                admission.record(late);
                return Err(EdgeError::new(
                    tonic::Code::DeadlineExceeded,
                    "the service did not answer in time",
                ));
            }
        };
        // A trailers-only answer (every error) has its status in the
        // headers; see `unwell` for what counts.
        let status = tonic::Status::from_header_map(response.headers());
        let outcome = match status {
            Some(s) if s.code() == tonic::Code::DeadlineExceeded => late,
            Some(s) if crate::upstream::unwell(&s) => Outcome::Unwell,
            _ => Outcome::Healthy,
        };
        admission.record(outcome);
        Ok(response.map(Body::new))
    }
}

#[cfg(test)]
mod tests {
    use super::{Body, Request, native_grpc};

    #[test]
    fn only_native_grpc_skips_the_browsers_layers() {
        let with = |content_type: Option<&str>| {
            let mut req = Request::new(Body::empty());
            if let Some(v) = content_type
                && let Ok(v) = http::HeaderValue::from_str(v)
            {
                req.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            native_grpc(&req)
        };
        assert!(with(Some("application/grpc")));
        assert!(with(Some("application/grpc+proto")));
        assert!(with(Some("application/grpc;charset=utf-8")));
        assert!(!with(Some("application/grpc-web")));
        assert!(!with(Some("application/grpc-web+proto")));
        assert!(!with(Some("application/grpc-web-text")));
        assert!(!with(Some("application/grpcx")));
        assert!(!with(Some("application/json")));
        assert!(!with(None), "a CORS preflight has no content type");
    }
}
