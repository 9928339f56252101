//! Auth's own sources for the shared authentication layer
//! (`tenx_common::authn`): the key set from its key store, API keys from
//! its tables, revocations from its primary. Every other service asks
//! auth for the same over gRPC; auth asks itself without the network.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tenx_common::authn::{
    ApiKeyInfo, ApiKeyResolver, ApiKeys, Authenticator, AuthnError, AuthnSettings, Jwks, KeySource,
    RevocationLookup, Revocations, Revoked,
};
use tenx_common::db::{Db, Prepared};
use tenx_proto::auth::v1 as pb;
use uuid::Uuid;

use crate::error::AuthError;
use crate::keys::Keys;
use crate::service::Core;
use crate::settings::AuthSettings;
use crate::{secrets, store};

/// Logged with its cause; the caller (perhaps on the internet, through
/// the gateway's door) learns only that it may retry.
fn unavailable(error: AuthError) -> AuthnError {
    tracing::warn!(%error, "checking a credential failed");
    AuthnError::Unavailable("cannot check credentials right now; try again shortly".into())
}

/// The key set, as `GetJwks` serves it.
struct LocalKeys(Arc<Keys>);

impl KeySource for LocalKeys {
    fn keys(&self) -> BoxFuture<'_, Result<pb::GetJwksResponse, String>> {
        Box::pin(async move {
            // Called only by the verifier's own throttled refetch.
            if let Err(error) = self.0.reload().await {
                tracing::warn!(%error, "signing key reload failed; verifying with the last key set");
            }
            Ok(pb::GetJwksResponse { keys: self.0.jwks(), jwks_json: String::new() })
        })
    }
}

/// API keys, as `AuthenticateApiKey` answers.
struct LocalApiKeys(Arc<Core>);

impl ApiKeyResolver for LocalApiKeys {
    fn resolve<'a>(&'a self, secret: &'a str) -> BoxFuture<'a, Result<Option<ApiKeyInfo>, AuthnError>> {
        Box::pin(async move {
            let request = pb::AuthenticateApiKeyRequest { secret: secret.to_owned() };
            match self.0.authenticate_api_key(request).await {
                Ok(key) => ApiKeyInfo::from_proto(key).map(Some),
                Err(AuthError::Unauthenticated(_) | AuthError::Invalid { .. }) => Ok(None),
                Err(AuthError::Authn(error)) => Err(error),
                Err(error) => Err(unavailable(error)),
            }
        })
    }
}

/// Revocations from the primary, while the Redis feed is down.
#[derive(Debug)]
pub struct PrimaryRevocations(pub Arc<Db>);

impl RevocationLookup for PrimaryRevocations {
    fn is_revoked<'a>(&'a self, kind: Revoked, id: &'a str) -> BoxFuture<'a, Result<bool, AuthnError>> {
        Box::pin(async move {
            let conn = self.0.write().await.map_err(|e| unavailable(e.into()))?;
            let active = match kind {
                Revoked::Session => match Uuid::parse_str(id) {
                    Ok(session) => store::session_active(&*conn, session).await.map_err(unavailable)?,
                    Err(_) => false,
                },
                Revoked::Grant => match Uuid::parse_str(id) {
                    Ok(grant) => conn
                        .query_opt_cached(
                            "SELECT 1 FROM sessions WHERE grant_id = $1 AND revoked_at IS NULL",
                            &[&grant],
                        )
                        .await
                        .map_err(|e| unavailable(e.into()))?
                        .is_some(),
                    Err(_) => false,
                },
                Revoked::ApiKey => {
                    let Some(hash) = secrets::unhex(id) else { return Ok(true) };
                    conn.query_opt_cached(
                        "SELECT 1 FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL",
                        &[&hash],
                    )
                    .await
                    .map_err(|e| unavailable(e.into()))?
                    .is_some()
                }
            };
            Ok(!active)
        })
    }
}

/// The authenticator of auth's own gRPC server.
pub fn authenticator(core: Arc<Core>, revocations: Revocations, settings: &AuthSettings) -> Authenticator {
    let verify = AuthnSettings::new(&settings.tokens.issuer, &settings.tokens.audience, "");
    let jwks = Arc::new(Jwks::new(LocalKeys(core.keys.clone()), verify));
    Authenticator::new(jwks, ApiKeys::new(Arc::new(LocalApiKeys(core))), revocations)
}
