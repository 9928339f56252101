//! Client-side balancing over every instance of a service, found by DNS,
//! with failing instances ejected for a while.
//!
//! One HTTP/2 connection carries every call, so behind one virtual address
//! a client sends everything to one instance whatever the autoscaler adds.
//! Here an upstream is a set of endpoints, each with its own lazily
//! connected [`Link`], and calls go round-robin over those not ejected:
//!
//! - `url` names one or more targets, comma-separated. A target whose host
//!   is an IP address is one endpoint. An `http://` target whose host is a
//!   name is every address the name resolves to, looked up again every
//!   `resolve_interval_ms` (a Kubernetes headless Service resolves to its
//!   ready pods): new addresses join, vanished ones leave.
//! - An endpoint whose call fails at the transport (refused, reset: the
//!   instance is gone) is ejected for 1 s, twice as long each time it fails
//!   again (at most 30 s), and is back in rotation after that; a success
//!   clears its record. When every endpoint is ejected calls still go out
//!   (round-robin over all), so a recovered upstream is found at once.
//!
//! tonic's own `Channel::balance_list` keeps sending to an endpoint that
//! refuses connections (its lazy reconnect reports ready), which is why
//! this exists (grpc-rust issues 643 and 2839).
//!
//! A call whose connection could not be made never reached the instance;
//! nor did one offered to a connection that had closed, nor one the
//! instance refused or turned away with its GOAWAY (a draining server's
//! HTTP/2 says which streams it will still run): such a call is sent
//! again, at once, to the next endpoint; whatever the call, it cannot run
//! twice ([`LinkError::never_sent`]). A call that fails after it was sent
//! (reset, timed out) fails: callers that may repeat it
//! (idempotent calls) retry once on UNAVAILABLE.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::link::{BadUrl, Link, LinkError, LinkSettings, read_whole};
use futures_util::future::BoxFuture;
use http_body_util::Full;
use tonic::body::Body;
use tower::Service;

/// The first ejection; each further failure doubles it, up to [`MAX_EJECTION`].
const FIRST_EJECTION: Duration = Duration::from_secs(1);
const MAX_EJECTION: Duration = Duration::from_secs(30);

/// Looks a `host:port` up: every address it names.
pub type Resolve = Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system resolver (`getaddrinfo`, as `tokio::net::lookup_host`).
pub fn system_resolver() -> Resolve {
    Arc::new(|target| Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) }))
}

/// One instance: where it is, its channel, and whether it is out of
/// rotation (until when, in ms since the pool's start) and how often it
/// failed in a row.
#[derive(Debug)]
struct Endpoint {
    url: String,
    link: Link,
    ejected_until_ms: AtomicU64,
    failures: AtomicU32,
}

impl Endpoint {
    fn new(url: String, settings: LinkSettings) -> Result<Arc<Self>, BadUrl> {
        let link = Link::new(&url, settings)?;
        Ok(Arc::new(Self { url, link, ejected_until_ms: AtomicU64::new(0), failures: AtomicU32::new(0) }))
    }
}

#[derive(Debug)]
struct Pool {
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    next: AtomicUsize,
    started: Instant,
}

impl Pool {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn current(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The next endpoint in rotation that is not ejected, else the next.
    fn pick(&self) -> Arc<Endpoint> {
        let endpoints = self.current();
        let n = endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let i = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| endpoints[i].ejected_until_ms.load(Ordering::Relaxed) <= now)
            .unwrap_or(start % n);
        endpoints[i].clone()
    }

    fn failed(&self, endpoint: &Endpoint) {
        let failures = endpoint.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let ejection = FIRST_EJECTION.saturating_mul(1 << failures).min(MAX_EJECTION);
        let until = self.now_ms() + u64::try_from(ejection.as_millis()).unwrap_or(u64::MAX);
        endpoint.ejected_until_ms.store(until, Ordering::Relaxed);
        tracing::warn!(upstream = %endpoint.url, ejected_ms = ejection.as_millis() as u64, "upstream endpoint failed; out of rotation");
    }

    fn succeeded(&self, endpoint: &Endpoint) {
        if endpoint.failures.load(Ordering::Relaxed) != 0 {
            endpoint.failures.store(0, Ordering::Relaxed);
            endpoint.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// One target of `url`: fixed, or a name looked up again and again.
#[derive(Debug, Clone)]
enum Target {
    Fixed(String),
    /// `http://` + a name + its port.
    Named {
        host: String,
        port: u16,
    },
}

fn target(url: &str) -> Target {
    let Ok(uri) = url.parse::<http::Uri>() else { return Target::Fixed(url.to_owned()) };
    match (uri.scheme_str(), uri.host(), uri.port_u16()) {
        (Some("http"), Some(host), Some(port))
            if host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_err() =>
        {
            Target::Named { host: host.to_owned(), port }
        }
        _ => Target::Fixed(url.to_owned()),
    }
}

/// A channel over every endpoint of one upstream (see the module).
#[derive(Debug, Clone)]
pub struct Balanced {
    pool: Arc<Pool>,
}

impl Balanced {
    /// Balances over the targets `urls` names (at least one). Named ones
    /// are used as they are (the connection resolves them) until they are
    /// looked up, at once and then every `every`, for as long as the
    /// channel is held; that runs on the current Tokio runtime, and without
    /// one names stay as they are.
    pub fn new(
        urls: &[&str],
        settings: LinkSettings,
        resolve: Resolve,
        every: Duration,
    ) -> Result<Self, BadUrl> {
        let targets: Vec<Target> = urls.iter().map(|u| target(u)).collect();
        let mut endpoints = Vec::new();
        for url in urls {
            endpoints.push(Endpoint::new((*url).to_owned(), settings)?);
        }
        let pool = Arc::new(Pool {
            endpoints: RwLock::new(Arc::new(endpoints)),
            next: AtomicUsize::new(0),
            started: Instant::now(),
        });
        if let (true, Ok(runtime)) =
            (targets.iter().any(|t| matches!(t, Target::Named { .. })), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(keep_resolving(Arc::downgrade(&pool), targets, settings, resolve, every));
        }
        Ok(Self { pool })
    }
}

/// The endpoints `targets` name now, keeping those already in `current`
/// (their connections and records) that are still named.
async fn resolved(
    targets: &[Target],
    current: &[Arc<Endpoint>],
    settings: LinkSettings,
    resolve: &Resolve,
) -> Result<Vec<Arc<Endpoint>>, BadUrl> {
    let mut urls = Vec::new();
    for t in targets {
        match t {
            Target::Fixed(url) => urls.push(url.clone()),
            Target::Named { host, port } => match resolve(format!("{host}:{port}")).await {
                Ok(addrs) if !addrs.is_empty() => urls.extend(addrs.iter().map(|a| format!("http://{a}"))),
                // Not resolvable (yet): the name itself, which the
                // connection resolves when it is made.
                outcome => {
                    if let Err(error) = outcome {
                        tracing::warn!(%host, %error, "upstream name does not resolve; using it as it is");
                    }
                    urls.push(format!("http://{host}:{port}"));
                }
            },
        }
    }
    urls.sort();
    urls.dedup();
    let mut endpoints = Vec::new();
    for url in urls {
        match current.iter().find(|e| e.url == url) {
            Some(kept) => endpoints.push(kept.clone()),
            None => endpoints.push(Endpoint::new(url.clone(), settings)?),
        }
    }
    Ok(endpoints)
}

async fn keep_resolving(
    pool: Weak<Pool>,
    targets: Vec<Target>,
    settings: LinkSettings,
    resolve: Resolve,
    every: Duration,
) {
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(every).await;
        }
        let Some(pool) = pool.upgrade() else { return };
        let current = pool.current();
        match resolved(&targets, &current, settings, &resolve).await {
            Ok(next) => {
                let changed = next.len() != current.len()
                    || next.iter().zip(current.iter()).any(|(a, b)| a.url != b.url);
                if changed {
                    let urls: Vec<&str> = next.iter().map(|e| e.url.as_str()).collect();
                    tracing::info!(endpoints = ?urls, "upstream endpoints changed");
                    *pool.endpoints.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Arc::new(next);
                }
            }
            Err(error) => tracing::warn!(%error, "upstream endpoints not refreshed"),
        }
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    /// Always ready: each endpoint's own readiness is awaited in `call`.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            let endpoints = pool.current();
            let tries = endpoints.len();
            if tries < 2 {
                // One endpoint (or none yet): nothing to choose between.
                let only = match endpoints.first() {
                    Some(endpoint) => endpoint.clone(),
                    None => pool.pick(),
                };
                drop(endpoints);
                return pool.send(only, request).await.map_err(Into::into);
            }
            drop(endpoints);
            let (parts, body) = request.into_parts();
            let body = read_whole(body).await?;
            let mut tried = Vec::with_capacity(tries);
            loop {
                let endpoint = pool.pick_other_than(&tried);
                let request = http::Request::from_parts(parts.clone(), Body::new(Full::new(body.clone())));
                match pool.send(endpoint.clone(), request).await {
                    Err(error) if error.never_sent() && tried.len() + 1 < tries => {
                        tracing::debug!(upstream = %endpoint.url, %error, "never reached the instance; sending to the next endpoint");
                        tried.push(endpoint);
                    }
                    outcome => return outcome.map_err(Into::into),
                }
            }
        })
    }
}

impl Pool {
    async fn send(
        &self,
        endpoint: Arc<Endpoint>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, LinkError> {
        let outcome = endpoint.link.call(request).await;
        match &outcome {
            Ok(_) => self.succeeded(&endpoint),
            Err(error) if error.instance_failed() => self.failed(&endpoint),
            Err(_) => {}
        }
        outcome
    }

    /// The next endpoint in rotation that is not ejected and not in
    /// `tried`, else the next not in `tried`.
    fn pick_other_than(&self, tried: &[Arc<Endpoint>]) -> Arc<Endpoint> {
        for _ in 0..self.current().len() {
            let endpoint = self.pick();
            if !tried.iter().any(|t| Arc::ptr_eq(t, &endpoint)) {
                return endpoint;
            }
        }
        let endpoints = self.current();
        endpoints.iter().find(|e| !tried.iter().any(|t| Arc::ptr_eq(t, e))).unwrap_or(&endpoints[0]).clone()
    }
}
