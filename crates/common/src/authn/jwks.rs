//! Local verification of auth's access tokens against its key set (JWKS):
//! fetched before a service reports ready, refreshed in the background,
//! refetched (throttled) when a token names an unknown `kid`. When the set
//! cannot be fetched, a token that needs it is UNAVAILABLE, never
//! UNAUTHENTICATED: the caller's credential may well be fine.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use uuid::Uuid;

use super::{AuthnError, AuthnSettings, Principal};
use crate::grpc::TracedChannel;
use crate::shutdown::Shutdown;

/// Where the public keys come from: auth over gRPC, or (in auth) its own
/// key store.
pub trait KeySource: Send + Sync {
    fn keys(&self) -> BoxFuture<'_, Result<auth::GetJwksResponse, String>>;
}

/// Auth's `GetJwks`, over the network.
#[derive(Debug, Clone)]
pub struct RemoteKeys(pub AuthServiceClient<TracedChannel>);

impl KeySource for RemoteKeys {
    fn keys(&self) -> BoxFuture<'_, Result<auth::GetJwksResponse, String>> {
        Box::pin(async move {
            let mut client = self.0.clone();
            let mut request = tonic::Request::new(auth::GetJwksRequest {});
            request.set_timeout(Duration::from_secs(2));
            client
                .get_jwks(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("GetJwks: {}", s.message()))
        })
    }
}

/// The claims of an access token (users) or service token (`svc`).
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    sid: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    svc: String,
    #[serde(default)]
    auth_time: u64,
    /// Authentication methods (RFC 8176): `pwd`, `otp`.
    #[serde(default)]
    amr: Vec<String>,
    /// The active organization and the caller's role in it.
    #[serde(default)]
    org: String,
    #[serde(default)]
    org_role: String,
    /// The grant, revocable on its own (a membership change).
    #[serde(default)]
    grt: String,
}

struct KeySet {
    keys: HashMap<String, DecodingKey>,
    document: String,
}

pub struct Jwks {
    source: Box<dyn KeySource>,
    /// Tokens already verified → their principal and expiry (unix
    /// seconds): a client's next call with the same token costs a lookup,
    /// not an Ed25519 verification. Revocation is checked on every call
    /// anyway, outside this cache. Hashed with foldhash, not the default
    /// SipHash: a token is about 500 bytes, every call at every hop hashes
    /// one, and SipHash made that the largest hashing cost of the hot path.
    /// Only tokens whose signature checked are inserted, so no caller
    /// chooses the keys (and the seed is random per process all the same).
    verified: moka::future::Cache<String, (Principal, u64), foldhash::fast::RandomState>,
    settings: AuthnSettings,
    validation: Validation,
    set: RwLock<Option<KeySet>>,
    /// When the last fetch was tried, and whether it worked.
    last_fetch: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("loaded", &self.loaded()).finish_non_exhaustive()
    }
}

const UNAVAILABLE: &str = "cannot verify tokens right now (signing keys unavailable); try again shortly";

impl Jwks {
    pub fn new(source: impl KeySource + 'static, settings: AuthnSettings) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            source: Box::new(source),
            verified: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build_with_hasher(foldhash::fast::RandomState::default()),
            settings,
            validation,
            set: RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether a key set was fetched at least once (readiness).
    pub fn loaded(&self) -> bool {
        self.set.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The key set as a JWKS document, for `/.well-known/jwks.json`.
    pub fn document(&self) -> Option<String> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| s.document.clone())
    }

    /// Fetches the key set now.
    pub async fn fetch(&self) -> Result<(), String> {
        let response = self.source.keys().await?;
        let mut keys = HashMap::new();
        for jwk in &response.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                continue;
            }
            let key = DecodingKey::from_ed_components(&jwk.x).map_err(|e| format!("key {}: {e}", jwk.kid))?;
            keys.insert(jwk.kid.clone(), key);
        }
        if keys.is_empty() {
            return Err("auth returned no Ed25519 key".into());
        }
        let previous = self
            .set
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(KeySet { keys: keys.clone(), document: response.jwks_json });
        // A key auth withdrew (compromised, or retired early) must stop
        // vouching for the tokens it signed that this instance saw before.
        if previous.is_some_and(|p| p.keys.keys().any(|kid| !keys.contains_key(kid))) {
            self.verified.invalidate_all();
        }
        Ok(())
    }

    /// Fetches unless a fetch was tried within `min_refetch_seconds`;
    /// returns whether the latest fetch worked.
    async fn fetch_throttled(&self) -> bool {
        let mut last = self.last_fetch.lock().await;
        if let Some((at, ok)) = *last
            && at.elapsed() < Duration::from_secs(self.settings.min_refetch_seconds)
        {
            return ok;
        }
        let result = self.fetch().await;
        if let Err(error) = &result {
            tracing::warn!(%error, "JWKS fetch failed");
        }
        *last = Some((Instant::now(), result.is_ok()));
        result.is_ok()
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|s| s.keys.get(kid).cloned())
    }

    /// The token's principal (a user's session, or a service): from the
    /// cache of tokens verified before while they are unexpired, else by
    /// [`Jwks::verify_signature`].
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthnError> {
        if let Some((principal, exp)) = self.verified.get(token).await {
            if unix_now() < exp {
                return Ok(principal);
            }
            self.verified.invalidate(token).await;
        }
        // Boxed: the check (and its fetch of the key set) is many times the
        // size of a cached answer, which every call's future would carry.
        let (principal, exp) = Box::pin(self.verify_signature(token)).await?;
        self.verified.insert(token.to_owned(), (principal.clone(), exp)).await;
        Ok(principal)
    }

    /// Checks signature, `kid`, expiry, issuer and audience, every time;
    /// the principal and the token's expiry.
    pub async fn verify_signature(&self, token: &str) -> Result<(Principal, u64), AuthnError> {
        let bad = AuthnError::Unauthenticated("invalid or expired access token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad.clone())?;
        if header.alg != Algorithm::EdDSA {
            return Err(bad);
        }
        let kid = header.kid.ok_or_else(|| bad.clone())?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                // A rotation at auth, or a forged kid: ask auth (throttled).
                let fetched = self.fetch_throttled().await;
                match self.key(&kid) {
                    Some(key) => key,
                    None if fetched && self.loaded() => return Err(bad),
                    None => return Err(AuthnError::Unavailable(UNAVAILABLE.into())),
                }
            }
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map(|d| d.claims)
            .map_err(|_| bad.clone())?;
        let exp = claims.exp;
        principal_of(claims).map(|p| (p, exp)).ok_or(bad)
    }

    /// Refreshes the set every `refresh_seconds` until `shutdown`; retries
    /// every second while it has never been loaded.
    pub async fn refresh_until(&self, shutdown: Shutdown) {
        loop {
            let wait = if self.loaded() {
                Duration::from_secs(self.settings.refresh_seconds)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if let Err(error) = self.fetch().await {
                tracing::warn!(%error, "JWKS refresh failed; keeping the last set");
            }
        }
    }
}

/// A service token names its service in `svc` (and `sub` is
/// `service:<svc>`); a user's token has a user id and a session id.
fn principal_of(claims: Claims) -> Option<Principal> {
    if !claims.svc.is_empty() {
        return (claims.sub == format!("service:{}", claims.svc))
            .then_some(Principal::Service { name: claims.svc });
    }
    Some(Principal::User {
        user_id: Uuid::parse_str(&claims.sub).ok()?,
        session_id: Uuid::parse_str(&claims.sid).ok()?,
        roles: claims.roles,
        auth_time: claims.auth_time,
        mfa: claims.amr.iter().any(|m| m == "otp"),
        org: match (claims.org.as_str(), claims.org_role.as_str()) {
            ("", _) => None,
            (org, role) => Some(super::OrgMembership {
                org_id: Uuid::parse_str(org).ok()?,
                role: super::OrgRole::parse(role)?,
            }),
        },
        grant: if claims.grt.is_empty() { None } else { Some(Uuid::parse_str(&claims.grt).ok()?) },
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
