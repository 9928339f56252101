//! Revoked sessions and API keys, known to every instance of every
//! service within a second, checked on every call without a round trip.
//!
//! Auth records each revocation in Redis twice, in one round trip: in a
//! sorted set (member `session:<id>` or `api_key:<hash>`, score = when the
//! entry may be forgotten, after every token it could refuse has expired)
//! and as a pub/sub message. Every instance keeps the set in memory: it
//! subscribes, then loads the sorted set (so nothing published while it was
//! away is missed), then applies each message as it arrives.
//!
//! While the subscription is down (Redis unreachable, or not loaded yet),
//! and after a load until auth's first *drained* heartbeat (its revocation
//! outbox was empty: nothing committed is missing from the sorted set),
//! the in-memory set may be missing recent revocations, so a credential
//! it does not list is checked with a [`RevocationLookup`] (auth's
//! primary), each answer reused for at most a second: bounded extra load,
//! and revocation still within a second. If that cannot answer either,
//! the call is UNAVAILABLE, never let through.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use moka::future::Cache;
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::sync::watch;

use super::{AuthnError, ServiceToken};
use crate::cache::Redis;
use crate::grpc::TracedChannel;

/// What was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// A session, by id: its access tokens.
    Session,
    /// An API key, by the hex SHA-256 of its secret.
    ApiKey,
    /// A grant (an access token's `grt`): the organization and role its
    /// tokens carry are no longer true.
    Grant,
}

impl Revoked {
    fn label(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::ApiKey => "api_key",
            Self::Grant => "grant",
        }
    }
}

fn member(kind: Revoked, id: &str) -> String {
    format!("{}:{id}", kind.label())
}

const KEY: &str = "auth:revoked";
/// Auth's heartbeat (every [`HEARTBEAT`]) when its outbox was not empty.
const HEARTBEAT_MESSAGE: &str = "heartbeat";
/// A heartbeat sent when auth's revocation outbox was empty just before:
/// every revocation committed until then is in the sorted set.
const DRAINED_MESSAGE: &str = "heartbeat drained";
/// How often auth says it is there.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A feed silent this long is not trusted (fallback to the lookup).
const SILENCE: Duration = Duration::from_secs(3);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Asks the source of truth whether a credential is revoked, for when the
/// in-memory set cannot be trusted.
pub trait RevocationLookup: Send + Sync {
    fn is_revoked<'a>(&'a self, kind: Revoked, id: &'a str) -> BoxFuture<'a, Result<bool, AuthnError>>;
}

/// Auth's `CheckRevoked`, with this service's token.
#[derive(Debug, Clone)]
pub struct RemoteRevocations {
    auth: AuthServiceClient<TracedChannel>,
    token: Arc<ServiceToken>,
}

impl RemoteRevocations {
    pub fn new(auth: AuthServiceClient<TracedChannel>, token: Arc<ServiceToken>) -> Self {
        Self { auth, token }
    }
}

impl RevocationLookup for RemoteRevocations {
    fn is_revoked<'a>(&'a self, kind: Revoked, id: &'a str) -> BoxFuture<'a, Result<bool, AuthnError>> {
        Box::pin(async move {
            let mut message = auth::CheckRevokedRequest::default();
            match kind {
                Revoked::Session => message.session_ids.push(id.to_owned()),
                Revoked::ApiKey => message.api_key_hashes.push(id.to_owned()),
                Revoked::Grant => message.grant_ids.push(id.to_owned()),
            }
            let mut request = tonic::Request::new(message);
            request.set_timeout(Duration::from_secs(2));
            self.token.attach(&mut request).await?;
            let answer = self.auth.clone().check_revoked(request).await.map_err(|s| {
                AuthnError::Unavailable(format!("cannot check revocation right now: {}", s.message()))
            })?;
            let answer = answer.into_inner();
            Ok(answer
                .revoked_session_ids
                .iter()
                .chain(&answer.revoked_api_key_hashes)
                .chain(&answer.revoked_grant_ids)
                .any(|r| r == id))
        })
    }
}

struct Inner {
    /// Member → unix second after which it may be forgotten.
    revoked: RwLock<HashMap<String, u64>>,
    /// The subscription is up and the set was loaded after it came up.
    current: AtomicBool,
    /// When auth's heartbeat was last heard on the feed (unix ms), counted
    /// from the first drained one after the set was last (re)loaded. A
    /// connection that died silently (no reset from a NAT or a lost node),
    /// or a feed under the wrong prefix, goes quiet: after [`SILENCE`] the
    /// set is no longer trusted.
    last_heard: AtomicU64,
    synced: watch::Sender<bool>,
    lookup: Arc<dyn RevocationLookup>,
    /// Lookups' answers, reused for a second.
    looked_up: Cache<String, bool>,
}

/// The in-memory revocation set; cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("current", &self.inner.current.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

impl Revocations {
    /// Starts following Redis (if any; without it every check asks `lookup`).
    pub fn start(redis: Option<Redis>, lookup: Arc<dyn RevocationLookup>) -> Self {
        let (synced, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            revoked: RwLock::default(),
            current: AtomicBool::new(false),
            last_heard: AtomicU64::new(0),
            synced,
            lookup,
            looked_up: Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(1)).build(),
        });
        let task = redis.map(|redis| tokio::spawn(follow(redis, inner.clone())));
        Self { inner, _task: Arc::new(AbortOnDrop(task)) }
    }

    /// Whether the credential is revoked. Without a current set, asks the
    /// lookup (UNAVAILABLE if it cannot answer).
    pub async fn is_revoked(&self, kind: Revoked, id: &str) -> Result<bool, AuthnError> {
        if self.listed(kind, id) {
            return Ok(true);
        }
        if self.is_current() {
            return Ok(false);
        }
        let lookup = self.inner.lookup.clone();
        self.inner
            .looked_up
            .try_get_with(member(kind, id), async move { lookup.is_revoked(kind, id).await })
            .await
            .map_err(|e: Arc<AuthnError>| (*e).clone())
    }

    /// Whether the local set lists `kind:id`. Every authenticated call
    /// asks, so the member is spelled on the stack, not allocated.
    fn listed(&self, kind: Revoked, id: &str) -> bool {
        let revoked = self.inner.revoked.read().unwrap_or_else(|p| p.into_inner());
        let mut buffer = [0u8; 96];
        revoked.contains_key(&*crate::joined::joined_or_owned(&mut buffer, &[kind.label(), ":", id]))
    }

    /// Whether the set is following Redis right now: subscribed, loaded,
    /// and auth heard from within [`SILENCE`].
    pub fn is_current(&self) -> bool {
        self.inner.current.load(Ordering::Acquire)
            && now_ms().saturating_sub(self.inner.last_heard.load(Ordering::Acquire))
                < u64::try_from(SILENCE.as_millis()).unwrap_or(u64::MAX)
    }

    /// Waits until the set is loaded and a drained heartbeat has been
    /// heard since (tests).
    pub async fn synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Adds a revocation to this instance's set at once (the instance that
    /// revoked it must not wait for its own message).
    pub fn insert_local(&self, kind: Revoked, id: &str, keep: Duration) {
        insert(&self.inner, member(kind, id), now_secs() + keep.as_secs());
        self.inner.looked_up.invalidate_all();
    }
}

fn insert(inner: &Inner, member: String, until: u64) {
    let mut revoked = inner.revoked.write().unwrap_or_else(|p| p.into_inner());
    // Forget what expired, now and then, so the set stays the size of
    // the last `keep` window of revocations.
    if revoked.len() % 1024 == 1023 {
        let now = now_secs();
        revoked.retain(|_, until| *until > now);
    }
    let entry = revoked.entry(member).or_insert(until);
    *entry = (*entry).max(until);
}

/// Auth's heartbeat, sent every [`HEARTBEAT`]: tells every follower the
/// feed is alive (and under the prefix it follows). `drained`: auth's
/// revocation outbox was empty just before, so every revocation committed
/// until then is in the sorted set. A follower trusts its set while it
/// hears heartbeats, and after loading it (at start, or when Redis is
/// back) only from the first drained one.
pub async fn heartbeat(redis: &Redis, drained: bool) -> redis::RedisResult<()> {
    let mut conn = redis.connection();
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(redis.key(KEY)).arg(if drained { DRAINED_MESSAGE } else { HEARTBEAT_MESSAGE });
    redis.bounded(cmd.query_async::<i64>(&mut conn)).await.map(drop)
}

/// Records a revocation for every instance: sorted set and message in one
/// round trip (entries past their time are dropped on the way).
pub async fn publish(redis: &Redis, kind: Revoked, id: &str, keep: Duration) -> redis::RedisResult<()> {
    publish_members(redis, &[member(kind, id)], keep).await
}

/// [`publish`] for revocations already spelled as members
/// (`session:<uuid>`, `grant:<uuid>`, `api_key:<hex>`), as auth's
/// revocation outbox holds them: all in one round trip. Publishing a
/// member again only moves its time forward.
pub async fn publish_members(redis: &Redis, members: &[String], keep: Duration) -> redis::RedisResult<()> {
    let until = now_secs() + keep.as_secs();
    let mut conn = redis.connection();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for member in members {
        pipe.cmd("ZADD").arg(redis.key(KEY)).arg(until).arg(member).ignore();
    }
    pipe.cmd("ZREMRANGEBYSCORE").arg(redis.key(KEY)).arg("-inf").arg(now_secs()).ignore();
    for member in members {
        pipe.publish(redis.key(KEY), format!("{member} {until}")).ignore();
    }
    redis.bounded(pipe.query_async::<()>(&mut conn)).await
}

async fn follow(redis: Redis, inner: Arc<Inner>) {
    let channel = redis.key(KEY);
    let mut delay = Duration::from_millis(50);
    loop {
        let connected = async {
            let mut pubsub = redis.pubsub().await?;
            pubsub.subscribe(&channel).await?;
            // Subscribed first, then loaded: a revocation published in
            // between is in both, never in neither.
            let mut conn = redis.connection();
            let mut load = redis::cmd("ZRANGEBYSCORE");
            load.arg(redis.key(KEY)).arg(now_secs()).arg("+inf").arg("WITHSCORES");
            let entries: Vec<(String, u64)> = redis.bounded(load.query_async(&mut conn)).await?;
            redis::RedisResult::Ok((pubsub, entries))
        }
        .await;
        match connected {
            Ok((pubsub, entries)) => {
                for (member, until) in entries {
                    insert(&inner, member, until);
                }
                // Loaded, but not yet trusted: after an outage the set may
                // lack what auth committed meanwhile and has yet to publish
                // from its outbox. A drained heartbeat says it has.
                inner.last_heard.store(0, Ordering::Release);
                let mut drained = false;
                delay = Duration::from_millis(50);
                inner.current.store(true, Ordering::Release);
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(payload) = message.get_payload::<String>() else { continue };
                    if payload == DRAINED_MESSAGE || (drained && payload == HEARTBEAT_MESSAGE) {
                        drained = true;
                        inner.last_heard.store(now_ms(), Ordering::Release);
                        inner.synced.send_if_modified(|synced| !std::mem::replace(synced, true));
                        continue;
                    }
                    if payload == HEARTBEAT_MESSAGE {
                        continue;
                    }
                    if let Some((member, until)) = payload.split_once(' ')
                        && let Ok(until) = until.parse()
                    {
                        insert(&inner, member.to_owned(), until);
                    }
                }
                inner.current.store(false, Ordering::Release);
                inner.synced.send_replace(false);
                tracing::warn!("revocation feed lost; checking credentials with auth until it is back");
            }
            Err(error) => tracing::debug!(%error, "revocation feed subscribe failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
