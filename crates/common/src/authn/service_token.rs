//! This service's own credential for calls it makes as itself: a service
//! token from auth's `IssueServiceToken` for the configured client secret,
//! kept until half its life is gone, then renewed (one renewal at a time).

use std::time::{Duration, Instant, SystemTime};

use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::sync::Mutex;
use tonic::metadata::MetadataValue;

use super::AuthnError;
use crate::config::Secret;
use crate::grpc::TracedChannel;

pub struct ServiceToken {
    service: String,
    secret: Secret<String>,
    auth: AuthServiceClient<TracedChannel>,
    /// The bearer value and when to renew it.
    current: Mutex<Option<(MetadataValue<tonic::metadata::Ascii>, Instant)>>,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken").field("service", &self.service).finish_non_exhaustive()
    }
}

impl ServiceToken {
    pub fn new(service: &str, secret: Secret<String>, auth: AuthServiceClient<TracedChannel>) -> Self {
        Self { service: service.to_owned(), secret, auth, current: Mutex::new(None) }
    }

    /// Forgets the current token (auth refused it): the next call gets a
    /// new one.
    pub async fn invalidate(&self) {
        *self.current.lock().await = None;
    }

    /// Sets `authorization` on `request` to this service's token.
    pub async fn attach<T>(&self, request: &mut tonic::Request<T>) -> Result<(), AuthnError> {
        let bearer = self.bearer().await?;
        request.metadata_mut().insert("authorization", bearer);
        Ok(())
    }

    /// `Bearer <this service's token>`, renewed when half its life is gone.
    pub async fn bearer(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, AuthnError> {
        let mut current = self.current.lock().await;
        if let Some((value, renew_at)) = current.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(value.clone());
        }
        if self.secret.expose().is_empty() {
            return Err(AuthnError::Unavailable(format!(
                "{} has no client secret (authn.client_secret) to call other services as itself",
                self.service
            )));
        }
        let mut request = tonic::Request::new(auth::IssueServiceTokenRequest {
            service: self.service.clone(),
            secret: self.secret.expose().clone(),
        });
        request.set_timeout(Duration::from_secs(2));
        let issued = self
            .auth
            .clone()
            .issue_service_token(request)
            .await
            .map_err(|s| AuthnError::Unavailable(format!("no service token from auth: {}", s.message())))?
            .into_inner();
        let lifetime = issued
            .expires_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        let value = MetadataValue::try_from(format!("Bearer {}", issued.access_token))
            .map_err(|_| AuthnError::Unavailable("auth issued an unusable token".into()))?;
        *current = Some((value.clone(), Instant::now() + lifetime / 2));
        Ok(value)
    }
}
