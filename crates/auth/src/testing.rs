//! A real auth service for other crates' tests and benchmarks (feature
//! `testing`): its own database, Redis prefix and AMQP names, the service
//! clients of the platform configured, and tokens signed with its real
//! signing key for any user id, so a billing test can act as many
//! customers without signing each one up.
//!
//! Every test database is cloned from one template that already holds a
//! signing key, so every auth a test process starts signs with the same
//! key, and [`user_token`] can sign without knowing which one a test runs.

use std::sync::{Arc, OnceLock};

use tenx_common::authn::AuthnSettings;
use tenx_common::db::Db;
use tenx_common::grpc::ClientSettings;
use tenx_common::metrics::Metrics;
use tenx_common::queue::Topology;
use tenx_common::shutdown::Shutdown;
use tenx_test_support::{TestAmqp, TestDb, TestRedis};
use uuid::Uuid;

use crate::keys::Keys;
use crate::{App, AuthSettings, Running};

/// The platform's service clients in tests, each with its test secret.
pub const SERVICES: [&str; 4] = ["gateway", "billing", "notification", "operator"];

/// The test client secret of `service` (never used outside tests).
pub fn client_secret(service: &str) -> String {
    format!("test-client-secret-of-{service}-0123456789abcdef")
}

/// The template every test's auth database is cloned from: migrated,
/// with one signing key.
pub async fn database() -> anyhow::Result<TestDb> {
    TestDb::from_template(
        "auth_signing",
        &tenx_common::host::migrations_fingerprint::<crate::App>(),
        |url| async move {
            let settings = AuthSettings::isolated(&url, &url, "tpl:", "tpl.")?;
            tenx_common::host::migrate::<crate::App>(&settings).await?;
            crate::rotate_keys(&settings, &Metrics::default()).await?;
            Ok(())
        },
    )
    .await
}

static SIGNER: OnceLock<Keys> = OnceLock::new();

/// A started auth service.
pub struct TestAuth {
    pub db: TestDb,
    pub redis: TestRedis,
    pub amqp: TestAmqp,
    pub settings: AuthSettings,
    pub running: Running,
    pub shutdown: Shutdown,
}

impl std::fmt::Debug for TestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAuth").field("url", &self.url()).finish_non_exhaustive()
    }
}

impl TestAuth {
    /// Starts auth with [`SERVICES`] configured.
    pub async fn start() -> anyhow::Result<Self> {
        let db = database().await?;
        let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
        let mut settings =
            AuthSettings::isolated(&db.primary_url(), &db.replica_url(), redis.prefix(), amqp.prefix())?;
        for service in SERVICES {
            settings.service_clients.insert(service.to_owned(), client_secret(service).into());
        }
        let topology = Topology::for_group(&settings.amqp, crate::avatar::GROUP, &[]);
        amqp.track(topology.queue_names(), topology.exchange_names());
        if SIGNER.get().is_none() {
            let pool = Arc::new(Db::connect(&settings.database, "tenx-auth-test", &Metrics::default())?);
            let keys = Keys::load(pool.clone(), &settings.tokens).await?;
            // From here on the signer only signs: its connection is closed
            // now rather than ended under it when this test's database is
            // dropped (which the pool would log as a connection error).
            pool.primary_pool().close();
            let _ = SIGNER.set(keys);
        }
        let shutdown = Shutdown::new();
        let running =
            tenx_common::host::start::<App>(settings.clone(), Metrics::default(), shutdown.child()).await?;
        Ok(Self { db, redis, amqp, settings, running, shutdown })
    }

    /// auth's gRPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    /// A service token for `service` (one of [`SERVICES`]), from
    /// IssueServiceToken as the service itself would get it.
    pub async fn service_token(&self, service: &str) -> anyhow::Result<String> {
        let mut client =
            tenx_proto::auth::v1::auth_service_client::AuthServiceClient::connect(self.url()).await?;
        let request = tenx_proto::auth::v1::IssueServiceTokenRequest {
            service: service.to_owned(),
            secret: client_secret(service),
        };
        Ok(client.issue_service_token(request).await?.into_inner().access_token)
    }

    /// Points a service's `upstreams.auth` and `authn` settings at this
    /// auth, as `service`.
    pub fn configure(&self, service: &str, upstream: &mut ClientSettings, authn: &mut AuthnSettings) {
        upstream.url = self.url();
        *authn = AuthnSettings::new(
            &self.settings.tokens.issuer,
            &self.settings.tokens.audience,
            &client_secret(service),
        );
        authn.revocation_prefix = self.redis.prefix().to_owned();
    }

    /// Stops auth and waits until it has closed its connections
    /// ([`tenx_test_support::stopped`]); a plain drop only signals the stop.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tenx_test_support::stopped(&mut self.running).await
    }
}

impl Drop for TestAuth {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// An access token for `user` in a session of its own, with `roles`,
/// signed with the test signing key. Its session exists nowhere: it is
/// never revoked, and valid as long as the token is.
///
/// # Panics
/// Before any [`TestAuth::start`] in this process.
pub fn user_token(user: Uuid, roles: &[&str]) -> String {
    let keys = SIGNER.get().expect("start a TestAuth before minting tokens");
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    // As if the session had just logged in (step-up rules admit it).
    let state = crate::keys::SessionState {
        roles,
        authenticated: crate::keys::Authenticated { at: std::time::SystemTime::now(), mfa: false },
        org: None,
        grant: None,
    };
    let (token, _) = keys.issue(&user.to_string(), &Uuid::now_v7().to_string(), &state).expect("signing");
    token
}
