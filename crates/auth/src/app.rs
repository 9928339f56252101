//! Wiring: pools, cache, broker and signing keys; what the host serves of
//! them ([`App::parts`]), and the operator commands that work on auth's
//! database directly.

use std::sync::Arc;
use std::time::Duration;

use tenx_common::authn::{AuthnLayer, Revocations};
use tenx_common::cache::CacheOptions;
use tenx_common::db::{Db, Prepared};
use tenx_common::grpc::GrpcServer;
use tenx_common::host::{self, Backend, Parts};
use tenx_common::metrics::Metrics;
use tenx_common::queue::Topology;
use tenx_common::shutdown::Shutdown;
use tenx_proto::auth::v1::auth_service_server::AuthServiceServer;
use tenx_proto::auth::v1::organization_service_server::OrganizationServiceServer;

use crate::avatar::{self, AvatarWorker};
use crate::error::AuthError;
use crate::keys::{self, Keys};
use crate::password::Passwords;
use crate::service::{AuthApi, Core, OrgApi};
use crate::settings::AuthSettings;

/// The fully-qualified gRPC service name, for health.
pub const SERVICE_NAME: &str = "tenx.auth.v1.AuthService";
/// How often instances re-read signing keys (to pick up a rotation).
const KEY_RELOAD: Duration = Duration::from_secs(30);

/// Creates a new signing key and retires the current one.
pub async fn rotate_keys(settings: &AuthSettings, metrics: &Metrics) -> Result<String, AuthError> {
    let db = Db::connect(&settings.database, "tenx-auth", metrics)?;
    keys::rotate(&db, &settings.tokens).await
}

/// Grants a role to the user with `email`: today `admin`, which admits
/// them to the operator RPCs of every service. This is how the first
/// operator account is made, from auth's own configuration (database
/// access), before any operator credential exists; afterwards
/// `GrantRole` / `RevokeRole` (`tenx-admin grant-role`, `revoke-role`)
/// do it over gRPC, and only those can take a role away, since taking it
/// must also revoke the sessions whose tokens carry it, everywhere.
/// Tokens carry roles, so the grant shows in the user's next access
/// token. Returns the user's roles after the change.
pub async fn grant_role(settings: &AuthSettings, email: &str, role: &str) -> Result<Vec<String>, AuthError> {
    if role != tenx_common::authn::ADMIN_ROLE {
        return Err(AuthError::invalid("role", "the one role is `admin`"));
    }
    let email = crate::validate::email("email", email)?;
    let db = Db::connect(&settings.database, "tenx-auth", &Metrics::default())?;
    let row = db
        .write()
        .await?
        .query_opt_cached(
            "UPDATE users SET roles = array_append(array_remove(roles, $2), $2), updated_at = now() \
             WHERE email = $1 RETURNING roles",
            &[&email, &role],
        )
        .await?
        .ok_or(AuthError::NotFound("user"))?;
    Ok(row.get(0))
}

/// How often old failed-login counters are deleted.
const ATTEMPTS_SWEEP: Duration = Duration::from_secs(600);

/// What auth prunes of its own (besides the inbox and the outbox): sessions
/// revoked `retention.sessions_days` ago, sessions idle that long past the
/// refresh token's lifetime (nothing can use them any more; their refresh
/// tokens go with them), and one-time codes `retention.codes_days` past
/// their expiry.
pub fn retention_rules(settings: &AuthSettings) -> Vec<tenx_common::retention::Rule> {
    use tenx_common::retention::{Rule, days};
    let kept = &settings.retention;
    vec![
        Rule::older("sessions", "revoked_at", days(kept.sessions_days)),
        Rule::older("sessions", "last_used_at", days(settings.tokens.refresh_ttl_days + kept.sessions_days)),
        Rule::older("one_time_codes", "expires_at", days(kept.codes_days)),
        Rule::older("mfa_challenges", "expires_at", days(1)),
        // Invitations a month past their expiry, whatever became of them.
        Rule::older("org_invitations", "expires_at", days(30)),
    ]
}

/// Forgets failed-login counters untouched for a day and not locked: the
/// table stays the size of a day of failures, whatever is sprayed at it.
async fn sweep_login_attempts(db: &Db) -> Result<u64, AuthError> {
    Ok(db
        .write()
        .await?
        .execute_cached(
            "DELETE FROM login_attempts WHERE updated_at < now() - interval '1 day' \
             AND (locked_until IS NULL OR locked_until < now())",
            &[],
        )
        .await?)
}

/// A built, not yet running, auth service.
pub struct App {
    settings: AuthSettings,
    metrics: Metrics,
    backend: Backend,
    core: Arc<Core>,
    grpc: GrpcServer,
    authenticator: Arc<tenx_common::authn::Authenticator>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// Connects everything (lazily where a dependency may be down) and
    /// loads the signing keys. Migrations must have run.
    pub async fn build(settings: AuthSettings, metrics: Metrics) -> Result<Self, AuthError> {
        let backend = Backend::connect::<Self>(&settings, &metrics)
            .map_err(|e| AuthError::Internal(host::report(&e)))?;
        let (db, redis, cache) = (backend.db().clone(), backend.redis().clone(), backend.cache());
        let keys = Arc::new(Keys::load(db.clone(), &settings.tokens).await?);
        let short = CacheOptions { l1_ttl: Duration::from_secs(10), ..CacheOptions::default() };
        // Revocations this instance makes, and every other's, from Redis;
        // while that feed is down, from the primary.
        let revocations = Revocations::start(
            Some(redis.clone()),
            Arc::new(crate::verifier::PrimaryRevocations(db.clone())),
        );
        let core = Arc::new(Core {
            db: db.clone(),
            keys,
            passwords: Passwords::new(&settings.password)?,
            seal: tenx_common::sealed::SealKey::parse(settings.codes.seal_key.expose())
                .map_err(|e| AuthError::Internal(format!("codes.seal_key: {e}")))?,
            users: cache.cache("auth.users", CacheOptions::default()),
            sessions: cache.cache("auth.sessions", short.clone()),
            api_keys: cache.cache("auth.api_keys", short),
            settings: settings.clone(),
            denied: crate::denylist::DenyList::new(redis.clone(), revocations.clone(), &settings.tokens),
            touched: moka::future::Cache::builder()
                .time_to_live(Duration::from_secs(60))
                .max_capacity(100_000)
                .build(),
        });
        let authenticator = Arc::new(crate::verifier::authenticator(core.clone(), revocations, &settings));
        let grpc = GrpcServer::new(
            settings.telemetry.slow_request(),
            &metrics,
            AuthnLayer::verify(authenticator.clone()),
        );
        Ok(Self { settings, metrics, backend, core, grpc, authenticator })
    }

    /// What the host serves: the auth API, the avatar worker, the key
    /// schedule, the revocation heartbeat and outbox, the login-attempt sweep, the
    /// personal organizations' backfill and everything a backend brings.
    pub fn parts(self) -> Parts {
        let settings = &self.settings;
        let avatars = Topology::for_group(
            &settings.amqp,
            avatar::GROUP,
            &[tenx_proto::auth::v1::AvatarUploaded::EVENT_TYPE],
        );
        let db = self.backend.db().clone();
        let worker = AvatarWorker { db: db.clone(), users: self.core.users.clone() };
        let (sweep_db, personal_db) = (db.clone(), db.clone());
        let (denied, revocations_db) = (self.core.denied.clone(), db.clone());
        let backend = self.backend.prune(retention_rules(settings)).consumer(avatars, worker);
        // Room for the largest avatar; everything else is far smaller.
        let max_message = settings.avatars.max_bytes + 64 * 1024;
        let api =
            AuthServiceServer::new(AuthApi::new(self.core.clone())).max_decoding_message_size(max_message);
        let orgs = OrganizationServiceServer::new(OrgApi::new(self.core.clone()));
        let router = self.grpc.router().add_service(api).add_service(orgs);
        let (keys, tokens) = (self.core.keys.clone(), settings.tokens.clone());
        Parts::of::<Self>(settings, &self.metrics, self.grpc.clone(), router)
            .serving(&[SERVICE_NAME, "tenx.auth.v1.OrganizationService"])
            .backend(backend)
            // Auth's own verifier follows its key set like every other's.
            .verifier(self.authenticator.clone())
            .task(move |stop| follow_key_schedule(keys, db, tokens, stop))
            // Every follower of the revocation feed hears auth each second,
            // or stops trusting its set (a silent connection, a wrong
            // prefix); each heartbeat comes after the revocation outbox
            // (committed revocations whose own publish was lost) is sent.
            .task(move |stop| denied.publish_and_beat_until(revocations_db, stop))
            .task(move |stop| sweep_login_attempts_until(sweep_db, stop))
            .task(move |stop| crate::personal::backfill_until_done(personal_db, stop))
    }
}

/// Publishes the next signing key and retires the old one when due, and
/// reloads the key set, often enough that every instance has loaded the
/// next key well before it signs.
async fn follow_key_schedule(
    keys: Arc<Keys>,
    db: Arc<Db>,
    tokens: crate::settings::TokenSettings,
    stop: Shutdown,
) {
    let every =
        KEY_RELOAD.min(Duration::from_secs(tokens.rotation_lead_seconds) / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait() => return,
        }
        match keys::rotate_if_due(&db, &tokens).await {
            Ok(done) => {
                if let Some(kid) = &done.created {
                    tracing::info!(%kid, "next signing key published; it signs once the current one has served its period");
                }
                if done.retired > 0 {
                    tracing::info!(retired = done.retired, "signing key replaced by its successor");
                }
            }
            Err(error) => tracing::warn!(%error, "scheduled signing key rotation failed"),
        }
        if let Err(error) = keys.reload().await {
            tracing::warn!(%error, "signing key reload failed");
        }
    }
}

async fn sweep_login_attempts_until(db: Arc<Db>, stop: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ATTEMPTS_SWEEP) => {}
            _ = stop.wait() => return,
        }
        if let Err(error) = sweep_login_attempts(&db).await {
            tracing::warn!(%error, "sweeping old login attempts failed");
        }
    }
}

// How the host runs this service (`main`'s `serve`).
tenx_common::hosted!(App, "tenx-auth", AuthSettings, AuthError, migrations = "migrations");
