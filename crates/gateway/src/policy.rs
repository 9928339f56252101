//! The one policy both front doors apply to a call of a public route:
//! who is calling (bearer JWT or API key), whether their rate limit
//! allows it, and what the upstream call carries (deadline, request id,
//! the verified identity — never a client-set one).

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use tenx_common::authn;
use tonic::Code;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::EdgeError;
use crate::identity::Identity;
use crate::ratelimit::Decision;
use crate::routes::Route;
use crate::state::Gateway;

pub const REQUEST_ID: &str = "x-request-id";
/// A service's write position, for read-your-writes across calls.
pub const WAL_POSITION: &str = tenx_common::db::wal::METADATA;

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub op: &'static str,
    pub identity: Option<Identity>,
    pub request_id: HeaderValue,
    pub deadline: Duration,
    pub idempotent: bool,
    /// A write position the client sent back (`x-tenx-wal-position`).
    pub position: Option<String>,
    /// For the calls where the client's address matters to the upstream
    /// (login lockouts): the client's bucket and the gateway's own token
    /// vouching for it.
    pub vouch: Option<(String, MetadataValue<tonic::metadata::Ascii>)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = EdgeError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Ctx>().cloned().ok_or_else(|| EdgeError::new(Code::Internal, "internal error"))
    }
}

impl Ctx {
    /// The calling user's id, if a user (or their API key) is calling.
    pub fn user_id(&self) -> Option<String> {
        self.identity.as_ref()?.user_id()
    }

    /// [`Ctx::user_id`] as the uuid it is (spelled by the caller where it
    /// must be, on the stack on a hot path).
    pub fn user_uuid(&self) -> Option<uuid::Uuid> {
        self.identity.as_ref()?.principal.user_id()
    }

    fn base<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline);
        if let Ok(mut v) = MetadataValue::try_from(self.request_id.as_bytes()) {
            // Keeps the mark [`request_id`] set (never indexed).
            v.set_sensitive(self.request_id.is_sensitive());
            request.metadata_mut().insert(REQUEST_ID, v);
        }
        request
    }

    /// A request to an upstream service: the client's credential itself
    /// travels, and the service verifies it again (revocation, its own
    /// access rule); no identity header is ever sent or believed.
    pub fn to_upstream<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.base(message);
        if let Some((client, edge)) = &self.vouch
            && let Ok(client) = MetadataValue::try_from(client.as_str())
        {
            request.metadata_mut().insert(authn::CLIENT_HEADER, client);
            request.metadata_mut().insert(authn::EDGE_AUTHORIZATION, edge.clone());
        }
        if let Some(identity) = &self.identity {
            // tonic's metadata takes a header only by value; through the
            // map the one the client sent travels without a copy.
            let mut headers = std::mem::take(request.metadata_mut()).into_headers();
            headers.insert(http::header::AUTHORIZATION, identity.bearer.clone());
            *request.metadata_mut() = MetadataMap::from_headers(headers);
        }
        request
    }
}

/// The rate-limit bucket of a client address: IPv4 as is, IPv6 by its
/// /64 (one subscriber's whole prefix: rotating addresses inside it buys
/// nothing), an IPv4-mapped IPv6 address as the IPv4 it is.
pub fn client_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn too_many_failures(wait: Duration) -> EdgeError {
    let mut error = EdgeError::new(Code::ResourceExhausted, "too many failed authentications; slow down");
    error.retry_after = Some(wait.max(Duration::from_secs(1)));
    error
}

/// The request id a client sent, if usable (the header itself, not a
/// copy), else a new one. Marked never to be indexed by HTTP/2's header
/// compression ([`HeaderValue::set_sensitive`]; it is no secret): a value
/// that never repeats would only take a place in the upstream
/// connection's table on every call, pushing out headers that do repeat,
/// and cost a table search and insert at both ends.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut id = headers
        .get(REQUEST_ID)
        .filter(|v| {
            let v = v.as_bytes();
            !v.is_empty()
                && v.len() <= 128
                && v.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            let mut buffer = [0; uuid::fmt::Hyphenated::LENGTH];
            HeaderValue::from_bytes(uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer).as_bytes())
                .unwrap_or(HeaderValue::from_static("-"))
        });
    id.set_sensitive(true);
    id
}

/// A WAL position as the gateway hands them out: auth's as the database
/// writes it (`16/B374D848`), billing's as `billing:16/B374D848`; anything
/// else is ignored.
pub fn position(headers: &HeaderMap) -> Option<String> {
    headers
        .get(WAL_POSITION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            let lsn = v.strip_prefix("billing:").unwrap_or(v);
            lsn.len() <= 17
                && lsn.split_once('/').is_some_and(|(a, b)| {
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
    // Numbers straight into header values (no String in between).
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(ceil(decision.reset_after)));
    if let Ok(v) = HeaderValue::from_str(&format!("{};w={}", decision.limit, period.as_secs())) {
        headers.insert("ratelimit-policy", v);
    }
    if !decision.allowed {
        headers.insert("retry-after", HeaderValue::from(ceil(decision.retry_after).max(1)));
    }
}

/// The outcome of admitting a call: its context, and the rate-limit
/// decision to report in headers (also on refusals).
pub type Admitted = Result<(Ctx, Decision), (EdgeError, Option<Decision>)>;

impl Gateway {
    /// Counts a failed authentication against the client's budget (shared
    /// by every gateway through Redis); past it, the wait before the next
    /// attempt, remembered here so no further attempt reaches auth.
    async fn count_auth_failure(&self, client: &str) -> Option<Duration> {
        let policy = self.settings.failed_auth_policy();
        let decision = self.limiter.check("auth_failures", ["", client], policy).await;
        if decision.allowed {
            return None;
        }
        let wait = decision.retry_after.max(Duration::from_secs(1));
        self.auth_blocked.block(client.to_owned(), std::time::Instant::now() + wait).await;
        tracing::warn!(
            client,
            wait_ms = wait.as_millis() as u64,
            "client over its failed-authentication budget"
        );
        Some(wait)
    }

    /// Authenticates (unless the route is anonymous) and counts the call
    /// against its rate limit.
    pub async fn admit(
        &self,
        route: &Route,
        authorization: Option<&HeaderValue>,
        client: IpAddr,
        request_id: HeaderValue,
        position: Option<String>,
    ) -> Admitted {
        let identity = if route.anonymous {
            None
        } else {
            // A client that keeps failing authentication is refused here,
            // before its next bogus credential costs auth a lookup.
            if let Some(wait) = self.auth_blocked.wait(|| client_bucket(client)) {
                return Err((too_many_failures(wait), None));
            }
            let missing = || Err((EdgeError::unauthenticated("missing bearer token"), None));
            let Some(bearer) = authorization else { return missing() };
            let principal = match self.authn.authenticate(bearer.to_str().ok()).await {
                Ok(Some(principal)) => principal,
                // A header that is not text carries no credential either.
                Ok(None) => return missing(),
                Err(error @ authn::AuthnError::Unauthenticated(_)) => {
                    if let Some(wait) = self.count_auth_failure(&client_bucket(client)).await {
                        return Err((too_many_failures(wait), None));
                    }
                    return Err((error.into(), None));
                }
                Err(error) => return Err((error.into(), None)),
            };
            // The RPC's own rule (scopes, credential kinds), as the
            // service behind will apply it: refused here, before any
            // upstream call or rate-limit token.
            if let Some(rule) = tenx_proto::access::rule(route.path) {
                authn::authorize(rule, Some(&principal)).map_err(|e| (e.into(), None))?;
            }
            Some(Identity { principal, bearer: bearer.clone() })
        };
        // Whom the limit counts against, spelled on the stack for a user.
        let mut uuid = [0; uuid::fmt::Hyphenated::LENGTH];
        let bucket;
        let subject = match &identity {
            Some(identity) => identity.principal.subject_parts(&mut uuid),
            None => {
                bucket = client_bucket(client);
                ["ip:", bucket.as_str()]
            }
        };
        let policy = self.settings.policy(route);
        let decision = self.limiter.check(route.operation_id, subject, policy).await;
        if !decision.allowed {
            let mut error = EdgeError::new(Code::ResourceExhausted, "rate limit exceeded; slow down");
            error.retry_after = Some(decision.retry_after.max(Duration::from_secs(1)));
            return Err((error, Some(decision)));
        }
        let vouch = match self.authn.service_token() {
            // The upstream counts failures per account *and client*
            // (auth's lockout): the gateway vouches for the address.
            Some(token) if route.vouches_for_client => match token.bearer().await {
                Ok(bearer) => Some((client_bucket(client), bearer)),
                // Sent unvouched, the call would count against everyone
                // who reaches auth directly: one stranger's guesses would
                // lock the account for every client. Refuse it instead.
                Err(error) => {
                    tracing::warn!(%error, "cannot vouch for the client's address");
                    return Err((
                        EdgeError::unavailable("try again shortly", Some(Duration::from_secs(1))),
                        None,
                    ));
                }
            },
            _ => None,
        };
        let ctx = Ctx {
            op: route.operation_id,
            identity,
            request_id,
            deadline: policy.timeout,
            idempotent: route.idempotent,
            position,
            vouch,
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
    fn ipv6_clients_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap_or(IpAddr::from([0; 4]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(client_bucket(a), client_bucket(b));
        assert_eq!(client_bucket(a), "2001:db8:1:2::/64");
        assert_ne!(client_bucket(a), client_bucket(other));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(client_bucket(mapped), "203.0.113.7");
        assert_eq!(client_bucket(IpAddr::from([198, 51, 100, 1])), "198.51.100.1");
    }

    #[test]
    fn request_ids_and_positions_from_clients_are_checked() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        headers.insert(WAL_POSITION, HeaderValue::from_static("16/B374D848"));
        assert_eq!(request_id(&headers), "abc-123");
        // Forwarded upstream as a never-indexed literal (it never repeats).
        assert!(request_id(&headers).is_sensitive());
        assert_eq!(position(&headers).as_deref(), Some("16/B374D848"));
        headers.insert(WAL_POSITION, HeaderValue::from_static("billing:16/B374D848"));
        assert_eq!(position(&headers).as_deref(), Some("billing:16/B374D848"));
        headers.insert(WAL_POSITION, HeaderValue::from_static("billing:billing:16/B374D848"));
        assert_eq!(position(&headers), None);
        headers.insert(REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        headers.insert(WAL_POSITION, HeaderValue::from_static("16/B374D848; drop"));
        assert_ne!(request_id(&headers), "bad id with spaces");
        assert_eq!(position(&headers), None);
    }
}
