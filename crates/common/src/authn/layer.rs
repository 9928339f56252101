//! The tower layer that puts [`Authenticator`] in front of every handler
//! of a service's gRPC server: the call's RPC rule is looked up in
//! [`tenx_proto::access`], the credential verified and the rule applied,
//! and only then does the handler run, with the [`Principal`] in the
//! request's extensions. Refusals are answered here, trailers-only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{Authenticator, Principal};

#[derive(Clone)]
enum Mode {
    /// Every tenx RPC is verified against its rule.
    Verify(Arc<Authenticator>),
    /// Plumbing only (health, reflection): every tenx RPC is refused.
    NoApi,
    /// The gateway's front door, whose proxy admits each call itself with
    /// the same authenticator and rules (it must also rate limit first).
    Edge,
}

/// See the module docs.
#[derive(Clone)]
pub struct AuthnLayer {
    mode: Mode,
}

impl std::fmt::Debug for AuthnLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Verify(_) => "verify",
            Mode::NoApi => "no-api",
            Mode::Edge => "edge",
        };
        f.debug_struct("AuthnLayer").field("mode", &mode).finish()
    }
}

impl AuthnLayer {
    /// Verifies every call of a service's API.
    pub fn verify(authenticator: Arc<Authenticator>) -> Self {
        Self { mode: Mode::Verify(authenticator) }
    }

    /// For a server that serves no tenx API (tests of the plumbing): any
    /// tenx RPC is refused, so forgetting [`AuthnLayer::verify`] fails closed.
    pub fn no_api() -> Self {
        Self { mode: Mode::NoApi }
    }

    /// The gateway's door, which admits each call itself.
    pub fn edge() -> Self {
        Self { mode: Mode::Edge }
    }
}

impl<S> Layer<S> for AuthnLayer {
    type Service = AuthnService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthnService { inner, mode: self.mode.clone() }
    }
}

#[derive(Clone)]
pub struct AuthnService<S> {
    inner: S,
    mode: Mode,
}

impl<S> std::fmt::Debug for AuthnService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthnService").finish_non_exhaustive()
    }
}

impl<S, B, R> Service<http::Request<B>> for AuthnService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Whatever a client put there, no principal arrives from outside.
        request.extensions_mut().remove::<Principal>();
        request.extensions_mut().remove::<super::EdgeClient>();
        let path = request.uri().path();
        let rule = tenx_proto::access::rule(path);
        let plumbing = path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.");
        let authenticator = match (&self.mode, rule) {
            // The gateway's door admits each call itself.
            (Mode::Edge, _) => return Box::pin(self.inner.call(request)),
            // Health and reflection are open; nothing else is, unless the
            // table has a rule for it.
            (_, None) if plumbing => return Box::pin(self.inner.call(request)),
            (_, None) | (Mode::NoApi, Some(_)) => {
                let status = tonic::Status::unimplemented("no such method");
                return Box::pin(async move { Ok(status.into_http()) });
            }
            (Mode::Verify(authenticator), Some(rule)) => (authenticator.clone(), rule),
        };
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (authenticator, rule) = authenticator;
            // The credentials are read where they are, in the request's
            // headers (no copy of a token on every call); the request is
            // changed only once they are checked.
            let headers = request.headers();
            let principal = match authenticator.admit(rule, text(headers, &http::header::AUTHORIZATION)).await
            {
                Ok(principal) => principal,
                Err(error) => return Ok(tonic::Status::from(error).into_http()),
            };
            let vouched = match authenticator
                .edge_client(text(headers, &CLIENT_HEADER), text(headers, &EDGE_AUTHORIZATION))
                .await
            {
                Ok(vouched) => vouched,
                Err(error) => return Ok(tonic::Status::from(error).into_http()),
            };
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            if let Some(vouched) = vouched {
                request.extensions_mut().insert(vouched);
            }
            inner.call(request).await
        })
    }
}

/// The two headers an edge client's vouching travels in, as names built
/// once: looking one up by `&str` parses and lower-cases it on every call.
static CLIENT_HEADER: http::HeaderName = http::HeaderName::from_static(super::CLIENT_HEADER);
static EDGE_AUTHORIZATION: http::HeaderName = http::HeaderName::from_static(super::EDGE_AUTHORIZATION);

/// A header's value as text, if it is.
fn text<'h>(headers: &'h http::HeaderMap, name: &http::HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
