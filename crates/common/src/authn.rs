//! Who is calling, verified on every call by every service: the one
//! authentication layer of the platform.
//!
//! A call carries `authorization: Bearer <credential>`:
//! - an **access token** (EdDSA JWT from auth): a user's session, with the
//!   roles auth stored for them, or a **service token** (`svc` claim) that
//!   auth issued to another tenx service for its client secret. Verified
//!   here, locally, against auth's key set ([`Jwks`]);
//! - an **API key** (`tenx_sk_…`): resolved through auth, with its scopes,
//!   and cached for a few seconds ([`ApiKeys`]).
//!
//! Either way the credential is then checked against the revocation set
//! ([`Revocations`]): kept in memory, current over Redis pub/sub, so a
//! revoked session or key is refused everywhere within a second without a
//! network round trip on the hot path.
//!
//! The rule of each RPC comes from its `(tenx.options.v1.access)` option
//! ([`tenx_proto::access`]); [`AuthnLayer`] applies it before the handler
//! runs and hands the handler a typed [`Principal`] in the request's
//! extensions. Handlers never read identity metadata: none is believed.

mod api_keys;
mod jwks;
mod layer;
mod orgs;
mod principal;
mod revocations;
mod service_token;

use std::sync::Arc;

use serde::Deserialize;
use tenx_proto::access::{Caller, Rule};

pub use api_keys::{ApiKeyInfo, ApiKeyResolver, ApiKeys, RemoteApiKeys};
pub use jwks::{Jwks, KeySource, RemoteKeys};
pub use layer::{AuthnLayer, AuthnService};
pub use orgs::{ORG_KEY_SCOPES, OrgMembership, OrgRole, PERMISSIONS, ScopeRefusal, org_key_scope_refusal};
pub use principal::{ADMIN_ROLE, Principal, principal};
pub use revocations::{
    HEARTBEAT, RemoteRevocations, RevocationLookup, Revocations, Revoked, heartbeat,
    publish as publish_revocation, publish_members as publish_revoked_members,
};
pub use service_token::ServiceToken;

use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;

use crate::cache::Redis;
use crate::config::{Invalid, Secret, Validate};
use crate::grpc::{ApiError, TracedChannel};
use crate::shutdown::Shutdown;

/// Metadata with the end client's address bucket (`203.0.113.7`,
/// `2001:db8:1:2::/64`), as the gateway saw it. Believed only beside a
/// valid [`EDGE_AUTHORIZATION`]: anyone else who sends it is ignored.
pub const CLIENT_HEADER: &str = "x-tenx-client";
/// Metadata with the gateway's own service token, vouching for
/// [`CLIENT_HEADER`] on calls where the client's address matters to the
/// service (login lockouts are per account and client).
pub const EDGE_AUTHORIZATION: &str = "x-tenx-edge-authorization";

/// The end client a call came from, vouched for by the gateway (in the
/// request's extensions; see [`edge_client`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeClient(pub String);

/// The client the gateway vouched for, if it did.
pub fn edge_client(extensions: &http::Extensions) -> Option<&str> {
    extensions.get::<EdgeClient>().map(|c| c.0.as_str())
}

/// The prefix of every API key's secret.
pub const API_KEY_PREFIX: &str = "tenx_sk_";
/// Longest credential looked at; longer is refused unread.
const MAX_CREDENTIAL: usize = 4096;

/// Settings under `authn.` (every service but auth, which verifies with
/// its own keys).
#[derive(Debug, Clone, Deserialize)]
pub struct AuthnSettings {
    /// Must equal auth's `tokens.issuer`.
    pub issuer: String,
    /// Must equal auth's `tokens.audience`.
    pub audience: String,
    /// Background refresh of auth's key set.
    #[serde(default = "default_refresh_seconds")]
    pub refresh_seconds: u64,
    /// A token naming an unknown `kid` refetches the set at most this often.
    #[serde(default = "default_min_refetch_seconds")]
    pub min_refetch_seconds: u64,
    /// This service's client secret for auth's IssueServiceToken (auth's
    /// `service_clients.<name>`). Empty: calls this service makes as
    /// itself (resolving API keys, the revocation fallback) are refused.
    #[serde(default)]
    pub client_secret: Secret<String>,
    /// Auth's `redis.key_prefix`: revocations are followed in this
    /// service's Redis (the one auth writes to) under this prefix.
    #[serde(default = "default_revocation_prefix")]
    pub revocation_prefix: String,
}

fn default_revocation_prefix() -> String {
    "tenx:".to_owned()
}

fn default_refresh_seconds() -> u64 {
    300
}
fn default_min_refetch_seconds() -> u64 {
    5
}

impl AuthnSettings {
    pub fn new(issuer: &str, audience: &str, client_secret: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            refresh_seconds: default_refresh_seconds(),
            min_refetch_seconds: default_min_refetch_seconds(),
            client_secret: Secret::new(client_secret.to_owned()),
            revocation_prefix: default_revocation_prefix(),
        }
    }
}

impl Validate for AuthnSettings {
    fn validate(&self) -> Result<(), Invalid> {
        if self.issuer.is_empty() {
            return Err(Invalid::new("authn.issuer", "must be set (auth's tokens.issuer)"));
        }
        if self.audience.is_empty() {
            return Err(Invalid::new("authn.audience", "must be set (auth's tokens.audience)"));
        }
        if self.refresh_seconds == 0 || self.min_refetch_seconds == 0 {
            return Err(Invalid::new("authn.refresh_seconds", "and min_refetch_seconds must be positive"));
        }
        Ok(())
    }
}

/// Settings under `upstreams.` of a service that talks to auth only for
/// authentication.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthUpstream {
    /// auth's gRPC address: its key set, API keys, service tokens.
    pub auth: crate::grpc::ClientSettings,
}

/// Why a call was refused before its handler ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No usable credential: missing, malformed, expired, forged, revoked.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A verified caller this RPC does not admit.
    #[error("{0}")]
    PermissionDenied(String),
    /// The credential cannot be checked right now (auth's keys or the
    /// revocation set unreachable): the caller's credential may be fine.
    #[error("{0}")]
    Unavailable(String),
    /// A session that authenticated too long ago for this RPC (step-up):
    /// it must reauthenticate first.
    #[error("this call needs an authentication at most {max_age_seconds} s old; reauthenticate and retry")]
    Reauthenticate { max_age_seconds: u32 },
}

impl From<AuthnError> for ApiError {
    fn from(error: AuthnError) -> Self {
        match error {
            AuthnError::Unauthenticated(message) => ApiError::Unauthenticated(message.to_owned()),
            AuthnError::PermissionDenied(message) => ApiError::PermissionDenied(message),
            AuthnError::Unavailable(message) => ApiError::Unavailable(message),
            stale @ AuthnError::Reauthenticate { .. } => ApiError::PermissionDenied(stale.to_string()),
        }
    }
}

/// The ErrorInfo reason of a step-up refusal ([`AuthnError::Reauthenticate`]).
pub const REAUTHENTICATE_REASON: &str = "REAUTHENTICATION_REQUIRED";

/// The ErrorInfo reason of a call refused because credentials could not
/// be checked: the service itself is fine (so a gateway neither retries
/// it nor counts it against the service's circuit) and so may be the
/// caller's credential.
pub const UNAVAILABLE_REASON: &str = "AUTHN_UNAVAILABLE";

impl From<AuthnError> for tonic::Status {
    fn from(error: AuthnError) -> Self {
        match error {
            AuthnError::Unavailable(message) => {
                use tonic_types::StatusExt;
                let mut details =
                    tonic_types::ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1)));
                details.set_error_info(
                    UNAVAILABLE_REASON,
                    "authn.tenx",
                    std::collections::HashMap::<String, String>::new(),
                );
                tonic::Status::with_error_details(tonic::Code::Unavailable, message, details)
            }
            AuthnError::Reauthenticate { max_age_seconds } => {
                use tonic_types::StatusExt;
                let message = error.to_string();
                let details = tonic_types::ErrorDetails::with_error_info(
                    REAUTHENTICATE_REASON,
                    "authn.tenx",
                    std::collections::HashMap::from([(
                        "max_age_seconds".to_owned(),
                        max_age_seconds.to_string(),
                    )]),
                );
                tonic::Status::with_error_details(tonic::Code::PermissionDenied, message, details)
            }
            other => ApiError::from(other).into(),
        }
    }
}

/// Verifies credentials and applies access rules; one per process, shared.
pub struct Authenticator {
    jwks: Arc<Jwks>,
    api_keys: ApiKeys,
    revocations: Revocations,
    /// This service's own credential, for calls it makes as itself.
    token: Option<Arc<ServiceToken>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("jwks", &self.jwks).finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(jwks: Arc<Jwks>, api_keys: ApiKeys, revocations: Revocations) -> Self {
        Self { jwks, api_keys, revocations, token: None }
    }

    /// The authenticator of a service other than auth: keys, API keys and
    /// the revocation fallback from auth over `auth`, calls as itself with
    /// the service token for `settings.client_secret`, revocations from
    /// `redis` (under `settings.revocation_prefix`). Call [`Authenticator::keep_current`] to keep the key set fresh.
    pub fn remote(
        service: &str,
        settings: &AuthnSettings,
        auth: AuthServiceClient<TracedChannel>,
        redis: Option<Redis>,
    ) -> Self {
        let token = Arc::new(ServiceToken::new(service, settings.client_secret.clone(), auth.clone()));
        let jwks = Arc::new(Jwks::new(RemoteKeys(auth.clone()), settings.clone()));
        let api_keys = ApiKeys::new(Arc::new(RemoteApiKeys::new(auth.clone(), token.clone())));
        let redis = redis.map(|r| r.with_prefix(&settings.revocation_prefix));
        let revocations = Revocations::start(redis, Arc::new(RemoteRevocations::new(auth, token.clone())));
        Self { token: Some(token), ..Self::new(jwks, api_keys, revocations) }
    }

    /// Fetches the key set (a failure is logged: readiness reports it and
    /// the refresh retries), then refreshes it until `shutdown`.
    pub async fn keep_current(self: Arc<Self>, shutdown: Shutdown) {
        // Loaded already when the service fetched it before serving (the
        // gateway does): no second fetch at start.
        if !self.jwks.loaded()
            && let Err(error) = self.jwks.fetch().await
        {
            tracing::warn!(%error, "auth's key set not loaded yet; not ready until it is");
        }
        self.jwks.refresh_until(shutdown).await;
    }

    /// Ready when tokens can be verified.
    pub fn ready(&self) -> Result<(), String> {
        if self.jwks.loaded() { Ok(()) } else { Err("auth's signing keys not fetched yet".to_owned()) }
    }

    /// This service's service token, for calls it makes as itself.
    pub fn service_token(&self) -> Option<&Arc<ServiceToken>> {
        self.token.as_ref()
    }

    /// The end client the gateway vouched for on this call: `None`
    /// without an `edge_authorization`; its address bucket when that is the
    /// gateway's valid service token; refused otherwise (a vouching that
    /// cannot be checked must not quietly count the call as someone
    /// else's, nor be believed unverified).
    pub async fn edge_client(
        &self,
        client: Option<&str>,
        edge_authorization: Option<&str>,
    ) -> Result<Option<EdgeClient>, AuthnError> {
        let Some(edge) = edge_authorization else { return Ok(None) };
        let bad = AuthnError::Unauthenticated("the edge credential is not the gateway's");
        let client = client.filter(|c| !c.is_empty() && c.len() <= 64).ok_or(bad.clone())?;
        let token = edge.strip_prefix("Bearer ").ok_or(bad.clone())?;
        match self.jwks.verify(token).await? {
            Principal::Service { name } if name == "gateway" => Ok(Some(EdgeClient(client.to_owned()))),
            _ => Err(bad),
        }
    }

    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The principal an `authorization` value proves; `Ok(None)` without one.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Option<Principal>, AuthnError> {
        let Some(header) = authorization else { return Ok(None) };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= MAX_CREDENTIAL)
            .ok_or(AuthnError::Unauthenticated("authorization must be `Bearer <token>`"))?;
        let principal = if token.starts_with(API_KEY_PREFIX) {
            let hash = api_keys::hash_hex(token);
            if self.revocations.is_revoked(Revoked::ApiKey, &hash).await? {
                return Err(AuthnError::Unauthenticated("invalid API key"));
            }
            // Boxed: resolving a key may call auth, and a JWT's call (the
            // common case) should not carry that future's size in its own.
            let key = Box::pin(self.api_keys.resolve(token, &hash)).await?;
            Principal::ApiKey { user_id: key.user_id, key_id: key.key_id, scopes: key.scopes, org: key.org }
        } else {
            let principal = self.jwks.verify(token).await?;
            if let Principal::User { session_id, grant, .. } = &principal {
                let mut buffer = uuid::Uuid::encode_buffer();
                let session = session_id.hyphenated().encode_lower(&mut buffer);
                if self.revocations.is_revoked(Revoked::Session, session).await? {
                    return Err(AuthnError::Unauthenticated("session revoked"));
                }
                // The organization or role it carries changed: Refresh.
                if let Some(grant) = grant
                    && self
                        .revocations
                        .is_revoked(Revoked::Grant, grant.hyphenated().encode_lower(&mut buffer))
                        .await?
                {
                    return Err(AuthnError::Unauthenticated("membership changed; refresh the token"));
                }
            }
            principal
        };
        Ok(Some(principal))
    }

    /// Authenticates, then applies `rule`. On an RPC open to anyone a
    /// credential that fails is ignored, not refused: a client that sends
    /// its expired token with every call can still refresh it.
    pub async fn admit(
        &self,
        rule: Rule,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, AuthnError> {
        if rule.caller == Caller::Anyone {
            return Ok(self.authenticate(authorization).await.ok().flatten());
        }
        let principal = self.authenticate(authorization).await?;
        authorize(rule, principal.as_ref())?;
        Ok(principal)
    }
}

/// Whether `principal` may call an RPC with `rule`.
pub fn authorize(rule: Rule, principal: Option<&Principal>) -> Result<(), AuthnError> {
    let Some(principal) = principal else {
        return if rule.caller == Caller::Anyone {
            Ok(())
        } else {
            Err(AuthnError::Unauthenticated("missing bearer token"))
        };
    };
    let denied = |why: &str| Err(AuthnError::PermissionDenied(why.to_owned()));
    if let Principal::User { auth_time, .. } = principal
        && rule.max_auth_age_seconds > 0
        && rule.caller != Caller::Anyone
    {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // A clock a little behind auth's still counts the login as recent.
        if auth_time.saturating_add(u64::from(rule.max_auth_age_seconds)) < now {
            // Whether this caller may call at all is said first.
            authorize(Rule { max_auth_age_seconds: 0, ..rule }, Some(principal))?;
            return Err(AuthnError::Reauthenticate { max_age_seconds: rule.max_auth_age_seconds });
        }
    }
    if !rule.permission.is_empty() {
        authorize(Rule { permission: "", ..rule }, Some(principal))?;
        return match principal {
            Principal::User { org: Some(membership), .. } if membership.role.permits(rule.permission) => {
                Ok(())
            }
            Principal::User { org: Some(membership), .. } => Err(AuthnError::PermissionDenied(format!(
                "your role in this organization ({}) lacks {}",
                membership.role.as_str(),
                rule.permission
            ))),
            _ => denied("no active organization; call SwitchOrganization first"),
        };
    }
    match (rule.caller, principal) {
        (Caller::Anyone, _) => Ok(()),
        (Caller::User, Principal::User { .. }) => Ok(()),
        (Caller::User, Principal::ApiKey { scopes, org, .. }) => {
            if !scopes.iter().any(|s| s == rule.scope) {
                return Err(AuthnError::PermissionDenied(format!(
                    "this API key lacks the scope {}",
                    rule.scope
                )));
            }
            // An organization's key is checked against its creator's role
            // on every call too: auth refused such a scope at creation,
            // and this holds even if a role shrank a moment ago.
            match org.map(|m| orgs::org_key_scope_refusal(m.role, rule.scope)) {
                Some(Some(why)) => {
                    Err(AuthnError::PermissionDenied(format!("this organization's API key: {why}")))
                }
                _ => Ok(()),
            }
        }
        (Caller::Session, Principal::User { .. }) => Ok(()),
        (Caller::Session, Principal::ApiKey { .. }) => denied("API keys cannot call this; sign in"),
        (Caller::Operator, p) if p.is_operator() => Ok(()),
        (Caller::Service, Principal::Service { .. }) => Ok(()),
        (Caller::User | Caller::Session, Principal::Service { .. }) => {
            denied("a service cannot act as a user")
        }
        (Caller::Operator, _) => denied("operators only (role admin, or the operator service client)"),
        (Caller::Service, _) => denied("services only"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn user_authenticated_at(roles: &[&str], auth_time: u64) -> Principal {
        Principal::User {
            user_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            auth_time,
            mfa: false,
            org: None,
            grant: None,
        }
    }

    fn user(roles: &[&str]) -> Principal {
        user_authenticated_at(roles, now())
    }

    fn key(scopes: &[&str]) -> Principal {
        Principal::ApiKey {
            user_id: Uuid::now_v7(),
            key_id: Uuid::now_v7(),
            scopes: scopes.iter().map(|r| (*r).to_owned()).collect(),
            org: None,
        }
    }

    fn org_key(role: OrgRole, scopes: &[&str]) -> Principal {
        let Principal::ApiKey { user_id, key_id, scopes, .. } = key(scopes) else { unreachable!() };
        Principal::ApiKey {
            user_id,
            key_id,
            scopes,
            org: Some(OrgMembership { org_id: Uuid::now_v7(), role }),
        }
    }

    #[test]
    fn an_organizations_key_holds_its_scope_only_while_its_creators_role_does() {
        let write = rule(Caller::User, "billing:write");
        assert!(authorize(write, Some(&org_key(OrgRole::Billing, &["billing:write"]))).is_ok());
        assert!(matches!(
            authorize(write, Some(&org_key(OrgRole::Admin, &["billing:write"]))),
            Err(AuthnError::PermissionDenied(m)) if m.contains("org.billing.manage")
        ));
        assert!(matches!(
            authorize(write, Some(&org_key(OrgRole::Owner, &["billing:read"]))),
            Err(AuthnError::PermissionDenied(_))
        ));
        let inbox = rule(Caller::User, "notifications:read");
        assert!(
            authorize(inbox, Some(&org_key(OrgRole::Owner, &["notifications:read"]))).is_err(),
            "an organization's key reads nobody's inbox"
        );
        assert!(authorize(inbox, Some(&key(&["notifications:read"]))).is_ok());
        let members = Rule { permission: "org.read", ..rule(Caller::Session, "") };
        assert!(authorize(members, Some(&org_key(OrgRole::Owner, &["billing:read"]))).is_err());
    }

    fn rule(caller: Caller, scope: &'static str) -> Rule {
        Rule { caller, scope, max_auth_age_seconds: 0, permission: "" }
    }

    #[test]
    fn an_organization_permission_needs_an_active_organization_and_a_role_that_holds_it() {
        let manage = Rule { permission: "org.members.manage", ..rule(Caller::Session, "") };
        let in_org = |role| Principal::User {
            user_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            roles: vec![],
            auth_time: now(),
            mfa: false,
            org: Some(OrgMembership { org_id: Uuid::now_v7(), role }),
            grant: Some(Uuid::now_v7()),
        };
        assert!(authorize(manage, Some(&in_org(OrgRole::Owner))).is_ok());
        assert!(authorize(manage, Some(&in_org(OrgRole::Admin))).is_ok());
        for role in [OrgRole::Billing, OrgRole::Member] {
            assert!(matches!(authorize(manage, Some(&in_org(role))), Err(AuthnError::PermissionDenied(_))));
        }
        assert!(
            matches!(authorize(manage, Some(&user(&["admin"]))), Err(AuthnError::PermissionDenied(_))),
            "a platform admin without the organization is no member"
        );
        assert!(matches!(authorize(manage, Some(&key(&[]))), Err(AuthnError::PermissionDenied(_))));
        assert!(matches!(authorize(manage, None), Err(AuthnError::Unauthenticated(_))));
    }

    #[test]
    fn a_step_up_rule_admits_a_recent_authentication_only_and_never_widens_who_may_call() {
        let sensitive = Rule { max_auth_age_seconds: 600, ..rule(Caller::Session, "") };
        assert!(authorize(sensitive, Some(&user_authenticated_at(&[], now() - 599))).is_ok());
        assert!(matches!(
            authorize(sensitive, Some(&user_authenticated_at(&[], now() - 601))),
            Err(AuthnError::Reauthenticate { max_age_seconds: 600 })
        ));
        assert!(
            matches!(
                authorize(sensitive, Some(&user_authenticated_at(&[], 0))),
                Err(AuthnError::Reauthenticate { .. })
            ),
            "a token without auth_time is never recent"
        );
        assert!(matches!(authorize(sensitive, Some(&key(&[]))), Err(AuthnError::PermissionDenied(_))));

        let operator = Rule { max_auth_age_seconds: 600, ..rule(Caller::Operator, "") };
        let stale_admin = user_authenticated_at(&["admin"], now() - 3600);
        assert!(matches!(authorize(operator, Some(&stale_admin)), Err(AuthnError::Reauthenticate { .. })));
        let stale_user = user_authenticated_at(&[], now() - 3600);
        assert!(
            matches!(authorize(operator, Some(&stale_user)), Err(AuthnError::PermissionDenied(_))),
            "a non-operator is told no, not asked to reauthenticate"
        );
        assert!(authorize(operator, Some(&Principal::Service { name: "operator".into() })).is_ok());
    }

    #[test]
    fn each_kind_of_caller_is_admitted_exactly_where_its_rule_says() {
        let service = Principal::Service { name: "billing".into() };
        let operator_tool = Principal::Service { name: "operator".into() };
        let read = rule(Caller::User, "billing:read");
        assert!(authorize(read, Some(&user(&[]))).is_ok());
        assert!(authorize(read, Some(&key(&["billing:read"]))).is_ok());
        assert!(matches!(
            authorize(read, Some(&key(&["billing:write"]))),
            Err(AuthnError::PermissionDenied(_))
        ));
        assert!(authorize(read, Some(&service)).is_err(), "services do not act as users");
        assert!(matches!(authorize(read, None), Err(AuthnError::Unauthenticated(_))));

        let session = rule(Caller::Session, "");
        assert!(authorize(session, Some(&user(&[]))).is_ok());
        assert!(authorize(session, Some(&key(&["billing:read", "profile:write"]))).is_err());

        let operator = rule(Caller::Operator, "");
        assert!(authorize(operator, Some(&user(&["admin"]))).is_ok());
        assert!(authorize(operator, Some(&operator_tool)).is_ok());
        assert!(authorize(operator, Some(&service)).is_err(), "a platform service is no operator");
        assert!(authorize(operator, Some(&user(&["support"]))).is_err());
        assert!(authorize(operator, Some(&key(&["admin"]))).is_err(), "a scope named admin is no role");

        let internal = rule(Caller::Service, "");
        assert!(authorize(internal, Some(&service)).is_ok());
        assert!(authorize(internal, Some(&user(&["admin"]))).is_err());

        assert!(authorize(rule(Caller::Anyone, ""), None).is_ok());
    }
}
