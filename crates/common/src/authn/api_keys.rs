//! API keys (`tenx_sk_…`) resolved to their owner and scopes by auth, and
//! cached briefly: a key seen a moment ago costs nothing, a bad key is
//! remembered as bad for as long (so a flood of one bogus key reaches
//! auth once per TTL), and revocation does not wait for the cache: the
//! revocation set is checked on every call.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use moka::future::Cache;
use sha2::{Digest, Sha256};
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::Code;
use uuid::Uuid;

use super::{AuthnError, OrgMembership, OrgRole, ServiceToken};
use crate::grpc::TracedChannel;

/// What auth says an API key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub scopes: Vec<String>,
    /// An organization's key: the organization and its creator's role.
    pub org: Option<OrgMembership>,
}

impl ApiKeyInfo {
    /// From auth's `AuthenticateApiKey` answer.
    pub fn from_proto(key: auth::AuthenticateApiKeyResponse) -> Result<Self, AuthnError> {
        let bad = |what: &str| AuthnError::Unavailable(format!("auth answered a bad {what}"));
        let user_id = Uuid::parse_str(&key.user_id).map_err(|_| bad("user id"))?;
        let key_id = Uuid::parse_str(&key.api_key_id).map_err(|_| bad("key id"))?;
        let org = if key.organization_id.is_empty() {
            None
        } else {
            Some(OrgMembership {
                org_id: Uuid::parse_str(&key.organization_id).map_err(|_| bad("organization id"))?,
                role: OrgRole::parse(&key.organization_role).ok_or_else(|| bad("organization role"))?,
            })
        };
        Ok(Self { user_id, key_id, scopes: key.scopes, org })
    }
}

/// Resolves a key's secret: `Ok(None)` for a key that does not exist,
/// expired or was revoked.
pub trait ApiKeyResolver: Send + Sync {
    fn resolve<'a>(&'a self, secret: &'a str) -> BoxFuture<'a, Result<Option<ApiKeyInfo>, AuthnError>>;
}

/// Auth's answer for a key that does not exist, expired or was revoked.
const INVALID_KEY: &str = "invalid API key";

/// Hex SHA-256 of a key's secret: how auth stores, and revokes, keys.
pub(super) fn hash_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Auth's `AuthenticateApiKey`, called with this service's own token.
#[derive(Debug, Clone)]
pub struct RemoteApiKeys {
    auth: AuthServiceClient<TracedChannel>,
    token: Arc<ServiceToken>,
}

impl RemoteApiKeys {
    pub fn new(auth: AuthServiceClient<TracedChannel>, token: Arc<ServiceToken>) -> Self {
        Self { auth, token }
    }
}

impl ApiKeyResolver for RemoteApiKeys {
    fn resolve<'a>(&'a self, secret: &'a str) -> BoxFuture<'a, Result<Option<ApiKeyInfo>, AuthnError>> {
        Box::pin(async move {
            let mut request =
                tonic::Request::new(auth::AuthenticateApiKeyRequest { secret: secret.to_owned() });
            request.set_timeout(Duration::from_secs(2));
            self.token.attach(&mut request).await?;
            let key = match self.auth.clone().authenticate_api_key(request).await {
                Ok(response) => response.into_inner(),
                // Auth's answer about the key itself.
                Err(status)
                    if status.code() == Code::InvalidArgument
                        || (status.code() == Code::Unauthenticated && status.message() == INVALID_KEY) =>
                {
                    return Ok(None);
                }
                // Auth refused *this service's* token (expired, a clock
                // skew, a rotated key): not the caller's fault. Renew it
                // and let the caller retry; never cache "unknown key".
                Err(status) if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                    self.token.invalidate().await;
                    return Err(AuthnError::Unavailable(format!(
                        "auth refused this service's token ({}); retry",
                        status.message()
                    )));
                }
                Err(status) => {
                    return Err(AuthnError::Unavailable(format!(
                        "cannot check API keys right now: {}",
                        status.message()
                    )));
                }
            };
            ApiKeyInfo::from_proto(key).map(Some)
        })
    }
}

/// A resolver behind a short cache of answers, good and bad.
#[derive(Clone)]
pub struct ApiKeys {
    resolver: Arc<dyn ApiKeyResolver>,
    /// Hash of the secret → what auth said.
    cache: Cache<String, Option<ApiKeyInfo>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("cached", &self.cache.entry_count()).finish_non_exhaustive()
    }
}

/// How long an answer is reused. Revocation is checked separately on
/// every call, so this bounds only how late a new scope is seen.
const TTL: Duration = Duration::from_secs(10);

impl ApiKeys {
    pub fn new(resolver: Arc<dyn ApiKeyResolver>) -> Self {
        Self { resolver, cache: Cache::builder().max_capacity(100_000).time_to_live(TTL).build() }
    }

    /// The key behind `secret` (whose hash is `hash`), or UNAUTHENTICATED.
    /// Concurrent misses of one key share one call to auth.
    pub async fn resolve(&self, secret: &str, hash: &str) -> Result<ApiKeyInfo, AuthnError> {
        let resolver = self.resolver.clone();
        let found = self
            .cache
            .try_get_with(hash.to_owned(), async move { resolver.resolve(secret).await })
            .await
            .map_err(|e: Arc<AuthnError>| (*e).clone())?;
        found.ok_or(AuthnError::Unauthenticated("invalid API key"))
    }
}
