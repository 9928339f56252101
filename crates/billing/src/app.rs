//! Wiring: pools, broker, the gRPC API, the outbox relay, the customers
//! consumer and the admin port.

use std::net::SocketAddr;
use std::sync::Arc;

use tenx_common::admin::{self, Readiness};
use tenx_common::authn::{Authenticator, AuthnLayer};
use tenx_common::cache::{CacheLayer, Redis};
use tenx_common::db::{self, Db};
use tenx_common::grpc::{self, GrpcServer};
use tenx_common::metrics::Metrics;
use tenx_common::outbox::Relay;
use tenx_common::queue::{Amqp, Consumer, Topology};
use tenx_common::shutdown::Shutdown;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::billing::v1::billing_service_server::BillingServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::catalog::Catalog;
use crate::clock::{Clock, SystemClock};
use crate::customers::{self, CustomerWorker};
use crate::error::BillingError;
use crate::idempotency::Keys;
use crate::provider::{PaymentProvider, SimulatedProvider};
use crate::scheduler::Scheduler;
use crate::service::{BillingApi, Core};
use crate::settings::BillingSettings;
use crate::stripe::StripeProvider;

mod migrations {
    refinery::embed_migrations!("migrations");
}

pub const SERVICE_NAME: &str = "tenx.billing.v1.BillingService";

pub async fn migrate(settings: &BillingSettings) -> Result<(), BillingError> {
    db::migrate(
        settings.database.migrate_url()?,
        &settings.database.schema,
        Some(migrations::migrations::runner()),
    )
    .await?;
    Ok(())
}

pub fn migrations_fingerprint() -> String {
    db::fingerprint(&migrations::migrations::runner())
}

/// The topology of the customers consumer (auth's user events).
pub fn customers_topology(settings: &BillingSettings) -> Topology {
    Topology::for_group(&settings.amqp, customers::GROUP, &customers::BINDINGS)
}

/// The payment provider the settings name.
fn provider(settings: &BillingSettings) -> Result<Arc<dyn PaymentProvider>, BillingError> {
    match settings.provider.kind.as_str() {
        "simulated" => Ok(Arc::new(SimulatedProvider::default())),
        "stripe" => {
            let p = &settings.provider;
            let connect_timeout = std::time::Duration::from_millis(p.timeout_ms.min(5000));
            StripeProvider::new(&p.stripe_api_base, p.stripe_secret_key.clone(), connect_timeout)
                .map(|s| Arc::new(s) as Arc<dyn PaymentProvider>)
                .map_err(|e| BillingError::Internal(format!("provider: {e}")))
        }
        other => Err(BillingError::Internal(format!("provider.kind: unknown provider {other:?}"))),
    }
}

pub struct App {
    settings: BillingSettings,
    metrics: Metrics,
    db: Arc<Db>,
    amqp: Amqp,
    cache: CacheLayer,
    core: Arc<Core>,
    grpc: GrpcServer,
    scheduler: Arc<Scheduler>,
    authenticator: Arc<Authenticator>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<Result<(), BillingError>>,
}

impl App {
    pub async fn build(settings: BillingSettings, metrics: Metrics) -> Result<Self, BillingError> {
        Self::build_with_clock(settings, metrics, Arc::new(SystemClock)).await
    }

    /// With another clock (tests move time).
    pub async fn build_with_clock(
        settings: BillingSettings,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BillingError> {
        let db = Arc::new(Db::connect(&settings.database, "tenx-billing", &metrics)?);
        let redis = Redis::connect(&settings.redis)
            .map_err(|e| BillingError::Internal(format!("redis settings: {:?}", e.kind())))?;
        let cache = CacheLayer::new(Some(redis.clone()), &metrics);
        let amqp = Amqp::new(&settings.amqp, "tenx-billing");
        let core = Arc::new(Core {
            db: db.clone(),
            clock,
            catalog: Catalog::new(db.clone(), settings.billing.trial_days),
            keys: Keys::new(settings.idempotency.clone()),
            provider: provider(&settings)?,
            provider_timeout: std::time::Duration::from_millis(settings.provider.timeout_ms),
            reconcile_after: std::time::Duration::from_secs(settings.provider.reconcile_after_seconds),
            currency_default: settings.billing.currency_default.clone(),
            default_trial_days: settings.billing.trial_days,
            incomplete_expiry: std::time::Duration::from_secs(
                settings.billing.incomplete_expiry_hours * 3600,
            ),
            rules: crate::changes::Rules {
                proration_always_invoice: settings.billing.proration == "always_invoice",
                upgrade_now: settings.billing.upgrade_timing == "immediately",
                downgrade_now: settings.billing.downgrade_timing == "immediately",
            },
            dunning: settings.dunning.clone(),
            usage: settings.usage.clone(),
            metrics: metrics.set(),
            webhook_secret: settings.provider.stripe_webhook_secret.clone(),
            webhook_tolerance: std::time::Duration::from_secs(settings.provider.webhook_tolerance_seconds),
        });
        let auth = grpc::connect(&settings.upstreams.auth)
            .map_err(|e| BillingError::Internal(format!("upstreams.auth.url: {e}")))?;
        let authenticator = Arc::new(Authenticator::remote(
            "billing",
            &settings.authn,
            AuthServiceClient::new(auth),
            Some(redis.clone()),
        ));
        let grpc = GrpcServer::new(
            settings.telemetry.slow_request(),
            &metrics,
            AuthnLayer::verify(authenticator.clone()),
        );
        let scheduler =
            Arc::new(Scheduler::new(core.clone(), settings.scheduler.clone(), settings.dunning.clone()));
        Ok(Self { settings, metrics, db, amqp, cache, core, grpc, scheduler, authenticator })
    }

    /// The scheduler, to run due jobs by hand (tests with a moved clock).
    pub fn scheduler(&self) -> Arc<Scheduler> {
        self.scheduler.clone()
    }

    /// The authentication layer's verifier (tests wait for its
    /// revocation feed before calling).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.clone()
    }

    pub async fn spawn(self, shutdown: Shutdown) -> Result<Running, BillingError> {
        let io = |e: std::io::Error| BillingError::Internal(format!("bind: {e}"));
        let (grpc, admin) = self.settings.server.bind().await.map_err(io)?;
        let (grpc_addr, admin_addr) = (grpc.local_addr().map_err(io)?, admin.local_addr().map_err(io)?);
        tracing::info!(%grpc_addr, %admin_addr, "tenx-billing listening");
        let task = tokio::spawn(self.run(grpc, admin, shutdown));
        Ok(Running { grpc_addr, admin_addr, task })
    }

    async fn run(
        self,
        grpc: TcpListener,
        admin: TcpListener,
        shutdown: Shutdown,
    ) -> Result<(), BillingError> {
        let mut tasks = JoinSet::new();
        let retention = tenx_common::retention::Retention::new(
            &self.db,
            &self.settings.retention,
            self.settings.outbox.retention_hours,
            Vec::new(),
            &self.metrics,
        );
        let stop = shutdown.child();
        tasks.spawn(async move { retention.run(stop).await });
        let relay = Relay::new(&self.db, self.amqp.clone(), self.settings.outbox.clone(), &self.metrics);
        let stop = shutdown.child();
        tasks.spawn(async move { relay.run(stop).await });
        let consumer = Consumer::new(
            self.amqp.clone(),
            customers_topology(&self.settings),
            CustomerWorker { db: self.db.clone(), clock: self.core.clock.clone() },
            &self.metrics,
        );
        let stop = shutdown.child();
        tasks.spawn(async move { consumer.run(stop).await });
        if self.settings.scheduler.enabled {
            let (scheduler, stop) = (self.scheduler.clone(), shutdown.child());
            tasks.spawn(async move { scheduler.run(stop).await });
        }
        let (authenticator, stop) = (self.authenticator.clone(), shutdown.child());
        tasks.spawn(async move { authenticator.keep_current(stop).await });
        let authenticator = self.authenticator.clone();
        let readiness = Readiness::standard(self.db.clone(), self.cache.clone(), self.amqp.clone())
            .check("authn", move || std::future::ready(authenticator.ready()));
        if let Some(export) = tenx_common::metrics::otlp::exporter(
            &self.metrics,
            "billing",
            &self.settings.telemetry,
            shutdown.child(),
        ) {
            tasks.spawn(export);
        }
        let status = tenx_common::ops::status_service("billing", self.metrics.clone(), readiness.clone());
        let (metrics, stop) = (self.metrics.clone(), shutdown.child());
        let delay = self.settings.server.shutdown_delay();
        tasks.spawn(async move {
            if let Err(error) = admin::serve(admin, metrics, readiness, stop, delay).await {
                tracing::error!(%error, "admin server failed");
            }
        });
        let dead_letters = tenx_common::ops::dead_letter_service(
            self.amqp.clone(),
            vec![customers_topology(&self.settings)],
        );
        let router = self
            .grpc
            .router()
            .add_service(BillingServiceServer::new(BillingApi::new(self.core.clone())))
            .add_service(dead_letters)
            .add_service(status)
            .add_service(tenx_common::ops::event_replay_service(&self.db, self.amqp.clone()));
        let served =
            self.grpc.serve(router, grpc, &[SERVICE_NAME], &self.settings.server, shutdown.clone()).await;
        shutdown.trigger();
        while tasks.join_next().await.is_some() {}
        self.amqp.close().await;
        served.map_err(|e| BillingError::Internal(format!("gRPC server: {e}")))
    }
}

// How the host runs this service (`main`'s `serve`).
tenx_common::hosted!(App, "tenx-billing", BillingSettings, BillingError);
