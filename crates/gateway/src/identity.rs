//! Who is calling: a bearer JWT verified locally against auth's JWKS, or
//! an API key (`tenx_sk_…`) checked by auth and cached briefly. Whatever
//! identity headers a client sends are ignored; only what is verified
//! here travels to the services.

use std::time::Duration;

use moka::future::Cache;
use tenx_common::grpc::TracedChannel;
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::Code;

use crate::error::EdgeError;
use crate::jwks::Jwks;

pub const API_KEY_PREFIX: &str = "tenx_sk_";

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// The session of a JWT, or the id of an API key.
    pub credential_id: String,
    pub kind: CredentialKind,
    /// The credential as presented, forwarded to auth (which checks
    /// revocation for its own calls).
    pub bearer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Session,
    ApiKey,
}

impl Identity {
    /// The rate-limit subject of this caller.
    pub fn subject(&self) -> String {
        match self.kind {
            CredentialKind::Session => format!("user:{}", self.user_id),
            CredentialKind::ApiKey => format!("key:{}", self.credential_id),
        }
    }
}

pub struct Authenticator {
    pub jwks: Jwks,
    auth: AuthServiceClient<TracedChannel>,
    /// API key → identity, for a few seconds: a revoked key stops working
    /// within that time.
    api_keys: Cache<String, Identity>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("jwks", &self.jwks).finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(jwks: Jwks, auth: AuthServiceClient<TracedChannel>) -> Self {
        let api_keys = Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(10)).build();
        Self { jwks, auth, api_keys }
    }

    /// The identity an `authorization` header value proves.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, EdgeError> {
        let header = authorization.ok_or_else(|| EdgeError::unauthenticated("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 4096)
            .ok_or_else(|| EdgeError::unauthenticated("authorization must be `Bearer <token>`"))?;
        if token.starts_with(API_KEY_PREFIX) {
            return self.api_key(token).await;
        }
        let claims = self.jwks.verify(token).await?;
        Ok(Identity {
            user_id: claims.sub,
            credential_id: claims.sid,
            kind: CredentialKind::Session,
            bearer: token.to_owned(),
        })
    }

    async fn api_key(&self, secret: &str) -> Result<Identity, EdgeError> {
        if let Some(identity) = self.api_keys.get(secret).await {
            return Ok(identity);
        }
        let mut client = self.auth.clone();
        let mut request = tonic::Request::new(auth::AuthenticateApiKeyRequest { secret: secret.to_owned() });
        request.set_timeout(Duration::from_secs(2));
        let key = match client.authenticate_api_key(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if matches!(status.code(), Code::Unauthenticated | Code::InvalidArgument) => {
                return Err(EdgeError::unauthenticated("invalid API key"));
            }
            Err(status) => return Err(status.into()),
        };
        let identity = Identity {
            user_id: key.user_id,
            credential_id: key.api_key_id,
            kind: CredentialKind::ApiKey,
            bearer: secret.to_owned(),
        };
        self.api_keys.insert(secret.to_owned(), identity.clone()).await;
        Ok(identity)
    }
}
