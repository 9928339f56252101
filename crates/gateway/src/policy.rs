//! The one policy both front doors apply to a call of a public route:
//! who is calling (bearer JWT or API key), whether their rate limit
//! allows it, and what the upstream call carries (deadline, request id,
//! the verified identity — never a client-set one).

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::app::Gateway;
use crate::error::EdgeError;
use crate::identity::Identity;
use crate::ratelimit::Decision;
use crate::routes::Route;

pub const REQUEST_ID: &str = "x-request-id";
/// Auth's write position, for read-your-writes across calls.
pub const WAL_POSITION: &str = "x-tenx-wal-position";
/// The verified user, for services behind the gateway.
pub const USER_ID: &str = "x-tenx-user-id";

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub op: &'static str,
    pub identity: Option<Identity>,
    pub request_id: String,
    pub deadline: Duration,
    pub idempotent: bool,
    /// A write position the client sent back (`x-tenx-wal-position`).
    pub position: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = EdgeError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Ctx>().cloned().ok_or_else(|| EdgeError::new(Code::Internal, "internal error"))
    }
}

impl Ctx {
    fn base<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline);
        if let Ok(v) = MetadataValue::try_from(self.request_id.as_str()) {
            request.metadata_mut().insert(REQUEST_ID, v);
        }
        request
    }

    /// A request to auth: the credential itself travels, since auth
    /// checks revocation of its own sessions and keys.
    pub fn to_auth<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.base(message);
        if let Some(v) =
            self.identity.as_ref().and_then(|i| MetadataValue::try_from(format!("Bearer {}", i.bearer)).ok())
        {
            request.metadata_mut().insert("authorization", v);
        }
        request
    }

    /// A request to another service: the verified user id only.
    pub fn to_service<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.base(message);
        if let Some(v) = self.identity.as_ref().and_then(|i| MetadataValue::try_from(i.user_id.as_str()).ok())
        {
            request.metadata_mut().insert(USER_ID, v);
        }
        request
    }
}

/// The request id a client sent, if usable, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// A WAL position as auth writes it (`16/B374D848`); anything else is ignored.
pub fn position(headers: &HeaderMap) -> Option<String> {
    headers
        .get(WAL_POSITION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 17
                && v.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && (a.to_owned() + b).bytes().all(|c| c.is_ascii_hexdigit())
                })
        })
        .map(str::to_owned)
}

/// The client's address: the TCP peer, or, behind `hops` proxies that
/// append to `X-Forwarded-For`, the entry that many from the right.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, hops: usize) -> IpAddr {
    if hops == 0 {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded.len().checked_sub(hops).and_then(|i| forwarded.get(i).copied()).unwrap_or(peer)
}

/// `RateLimit-*` headers (IETF draft) and, when limited, `Retry-After`.
pub fn limit_headers(headers: &mut HeaderMap, decision: &Decision, period: Duration) {
    let ceil = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("ratelimit-limit", decision.limit.to_string());
    set("ratelimit-remaining", decision.remaining.to_string());
    set("ratelimit-reset", ceil(decision.reset_after).to_string());
    set("ratelimit-policy", format!("{};w={}", decision.limit, period.as_secs()));
    if !decision.allowed {
        set("retry-after", ceil(decision.retry_after).max(1).to_string());
    }
}

/// The outcome of admitting a call: its context, and the rate-limit
/// decision to report in headers (also on refusals).
pub type Admitted = Result<(Ctx, Decision), (EdgeError, Option<Decision>)>;

impl Gateway {
    /// Authenticates (unless the route is anonymous) and counts the call
    /// against its rate limit.
    pub async fn admit(
        &self,
        route: &Route,
        authorization: Option<&str>,
        client: IpAddr,
        request_id: String,
        position: Option<String>,
    ) -> Admitted {
        let identity = if route.anonymous {
            None
        } else {
            Some(self.authn.authenticate(authorization).await.map_err(|e| (e, None))?)
        };
        let subject = identity.as_ref().map_or_else(|| format!("ip:{client}"), Identity::subject);
        let policy = self.settings.policy(route.op, route.anonymous);
        let decision = self.limiter.check(route.op, &subject, policy).await;
        if !decision.allowed {
            let mut error = EdgeError::new(Code::ResourceExhausted, "rate limit exceeded; slow down");
            error.retry_after = Some(decision.retry_after.max(Duration::from_secs(1)));
            return Err((error, Some(decision)));
        }
        let ctx = Ctx {
            op: route.op,
            identity,
            request_id,
            deadline: policy.timeout,
            idempotent: route.idempotent,
            position,
        };
        Ok((ctx, decision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_taken_that_many_hops_from_the_right() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.2"));
        let peer: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(client_ip(&headers, peer, 0), peer, "no proxies trusted: the peer");
        assert_eq!(client_ip(&headers, peer, 1), IpAddr::from([10, 0, 0, 2]));
        assert_eq!(client_ip(&headers, peer, 2), IpAddr::from([203, 0, 113, 7]));
        assert_eq!(client_ip(&headers, peer, 9), peer, "fewer entries than hops: the peer");
    }

    #[test]
    fn request_ids_and_positions_from_clients_are_checked() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        headers.insert(WAL_POSITION, HeaderValue::from_static("16/B374D848"));
        assert_eq!(request_id(&headers), "abc-123");
        assert_eq!(position(&headers).as_deref(), Some("16/B374D848"));
        headers.insert(REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        headers.insert(WAL_POSITION, HeaderValue::from_static("16/B374D848; drop"));
        assert_ne!(request_id(&headers), "bad id with spaces");
        assert_eq!(position(&headers), None);
    }
}
