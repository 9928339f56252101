//! Local verification of auth's access tokens against its key set (JWKS):
//! fetched before the gateway reports ready, refreshed in the background,
//! refetched (throttled) when a token names an unknown `kid`. When the set
//! cannot be fetched, a token that needs it gets 503, never 401: the
//! caller's credentials may well be fine.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tenx_common::grpc::TracedChannel;
use tenx_common::shutdown::Shutdown;
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;

use crate::error::EdgeError;
use crate::settings::JwksSettings;

/// The claims the gateway reads from an access token.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub exp: u64,
}

struct KeySet {
    keys: HashMap<String, DecodingKey>,
    document: String,
}

pub struct Jwks {
    auth: AuthServiceClient<TracedChannel>,
    settings: JwksSettings,
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
    pub fn new(auth: AuthServiceClient<TracedChannel>, settings: JwksSettings) -> Self {
        Self { auth, settings, set: RwLock::new(None), last_fetch: tokio::sync::Mutex::new(None) }
    }

    /// Whether a key set was fetched at least once (readiness).
    pub fn loaded(&self) -> bool {
        self.set.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The key set as a JWKS document, for `/.well-known/jwks.json`.
    pub fn document(&self) -> Option<String> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| s.document.clone())
    }

    /// Fetches the key set from auth now.
    pub async fn fetch(&self) -> Result<(), String> {
        let mut client = self.auth.clone();
        let mut request = tonic::Request::new(auth::GetJwksRequest {});
        request.set_timeout(Duration::from_secs(2));
        let response = client.get_jwks(request).await.map_err(|s| format!("GetJwks: {}", s.message()))?;
        let response = response.into_inner();
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
        *self.set.write().unwrap_or_else(|p| p.into_inner()) =
            Some(KeySet { keys, document: response.jwks_json });
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

    /// Checks signature, `kid`, expiry, issuer and audience.
    pub async fn verify(&self, token: &str) -> Result<Claims, EdgeError> {
        let bad = || EdgeError::unauthenticated("invalid or expired access token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad())?;
        if header.alg != Algorithm::EdDSA {
            return Err(bad());
        }
        let kid = header.kid.ok_or_else(bad)?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                // A rotation at auth, or a forged kid: ask auth (throttled).
                let fetched = self.fetch_throttled().await;
                match self.key(&kid) {
                    Some(key) => key,
                    None if fetched && self.loaded() => return Err(bad()),
                    None => return Err(EdgeError::unavailable(UNAVAILABLE, Some(Duration::from_secs(1)))),
                }
            }
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &key, &validation).map(|d| d.claims).map_err(|_| bad())
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
