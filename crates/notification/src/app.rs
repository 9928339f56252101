//! Wiring: pools, cache, broker, templates, mailer, the gRPC API, the
//! outbox relay, the delivery worker and the admin port.

use std::net::SocketAddr;
use std::sync::Arc;

use tenx_common::admin::{self, Readiness};
use tenx_common::authn::{Authenticator, AuthnLayer};
use tenx_common::cache::{CacheLayer, CacheOptions, Redis};
use tenx_common::db::{self, Db};
use tenx_common::grpc::{self, GrpcServer};
use tenx_common::metrics::Metrics;
use tenx_common::outbox::Relay;
use tenx_common::queue::{Amqp, Consumer, Topology};
use tenx_common::shutdown::Shutdown;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::notification::v1::notification_service_server::NotificationServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::deliver::Deliverer;
use crate::error::NotifyError;
use crate::mailer::Mailer;
use crate::service::NotificationApi;
use crate::settings::NotificationSettings;
use crate::templates::Templates;
use crate::webhooks::{self, WebhookWorker, Webhooks};
use crate::worker::{self, Worker};

mod migrations {
    refinery::embed_migrations!("migrations");
}

pub const SERVICE_NAME: &str = "tenx.notification.v1.NotificationService";

pub async fn migrate(settings: &NotificationSettings) -> Result<(), NotifyError> {
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

/// What notification prunes of its own (besides the inbox and the outbox):
/// in-app notifications `retention.notifications_days` old; email
/// deliveries sent or skipped, delivered webhook messages and webhook
/// attempts `retention.deliveries_days` old. Pending deliveries and dead
/// webhook messages (the operator's to redrive) stay.
pub fn retention_rules(settings: &NotificationSettings) -> Vec<tenx_common::retention::Rule> {
    use tenx_common::retention::{Rule, days};
    let kept = &settings.retention;
    vec![
        Rule::older("notifications", "created_at", days(kept.notifications_days)),
        Rule::older("email_deliveries", "created_at", days(kept.deliveries_days)).only("status = 'sent'"),
        Rule::older("webhook_attempts", "attempted_at", days(kept.deliveries_days)),
        Rule::older("webhook_messages", "created_at", days(kept.deliveries_days)).only(
            "status = 'delivered' AND NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.message_id = webhook_messages.id)",
        ),
    ]
}

/// The topology of the delivery worker's consumer group.
pub fn topology(settings: &NotificationSettings) -> Topology {
    Topology::for_group(&settings.amqp, worker::GROUP, &worker::BINDINGS)
}

/// The topology of the webhook deliveries' consumer group.
pub fn webhook_topology(settings: &NotificationSettings) -> Topology {
    Topology::for_group(&settings.amqp, webhooks::GROUP, &[webhooks::DUE])
}

pub struct App {
    settings: NotificationSettings,
    metrics: Metrics,
    db: Arc<Db>,
    amqp: Amqp,
    cache: CacheLayer,
    deliverer: Arc<Deliverer>,
    webhooks: Arc<Webhooks>,
    grpc: GrpcServer,
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
    pub task: tokio::task::JoinHandle<Result<(), NotifyError>>,
}

impl App {
    pub async fn build(settings: NotificationSettings, metrics: Metrics) -> Result<Self, NotifyError> {
        let db = Arc::new(Db::connect(&settings.database, "tenx-notification", &metrics)?);
        let redis = Redis::connect(&settings.redis)
            .map_err(|e| NotifyError::Internal(format!("redis settings: {:?}", e.kind())))?;
        let cache = CacheLayer::new(Some(redis.clone()), &metrics);
        let amqp = Amqp::new(&settings.amqp, "tenx-notification");
        let templates =
            Arc::new(Templates::load(settings.templates.dir.as_deref()).map_err(NotifyError::Internal)?);
        let mailer = Mailer::new(&settings.smtp).map_err(NotifyError::Internal)?;
        let preferences = cache.cache("notification.preferences", CacheOptions::default());
        let deliverer = Arc::new(Deliverer::new(db.clone(), templates, mailer, preferences, &metrics));
        let webhooks = Arc::new(
            Webhooks::new(db.clone(), settings.webhooks.clone(), settings.amqp.max_attempts, &metrics)
                .map_err(NotifyError::Internal)?,
        );
        let auth = grpc::connect(&settings.upstreams.auth)
            .map_err(|e| NotifyError::Internal(format!("upstreams.auth.url: {e}")))?;
        let authenticator = Arc::new(Authenticator::remote(
            "notification",
            &settings.authn,
            AuthServiceClient::new(auth),
            Some(redis),
        ));
        let grpc = GrpcServer::new(
            settings.telemetry.slow_request(),
            &metrics,
            AuthnLayer::verify(authenticator.clone()),
        );
        Ok(Self { settings, metrics, db, amqp, cache, deliverer, webhooks, grpc, authenticator })
    }

    /// The authentication layer's verifier (tests wait for its
    /// revocation feed before calling).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.clone()
    }

    pub async fn spawn(self, shutdown: Shutdown) -> Result<Running, NotifyError> {
        let io = |e: std::io::Error| NotifyError::Internal(format!("bind: {e}"));
        let (grpc, admin) = self.settings.server.bind().await.map_err(io)?;
        let (grpc_addr, admin_addr) = (grpc.local_addr().map_err(io)?, admin.local_addr().map_err(io)?);
        tracing::info!(%grpc_addr, %admin_addr, "tenx-notification listening");
        let task = tokio::spawn(self.run(grpc, admin, shutdown));
        Ok(Running { grpc_addr, admin_addr, task })
    }

    async fn run(self, grpc: TcpListener, admin: TcpListener, shutdown: Shutdown) -> Result<(), NotifyError> {
        let mut tasks = JoinSet::new();
        let retention = tenx_common::retention::Retention::new(
            &self.db,
            &self.settings.retention,
            self.settings.outbox.retention_hours,
            retention_rules(&self.settings),
            &self.metrics,
        );
        let stop = shutdown.child();
        tasks.spawn(async move { retention.run(stop).await });
        let relay = Relay::new(&self.db, self.amqp.clone(), self.settings.outbox.clone(), &self.metrics);
        let stop = shutdown.child();
        tasks.spawn(async move { relay.run(stop).await });
        let consumer = Consumer::new(
            self.amqp.clone(),
            topology(&self.settings),
            Worker {
                deliverer: self.deliverer.clone(),
                webhooks: self.webhooks.clone(),
                max_attempts: self.settings.amqp.max_attempts,
                seal: tenx_common::sealed::SealKey::parse(self.settings.codes.seal_key.expose())
                    .map_err(|e| NotifyError::Internal(format!("codes.seal_key: {e}")))?,
            },
            &self.metrics,
        );
        let stop = shutdown.child();
        tasks.spawn(async move { consumer.run(stop).await });
        let hooks = Consumer::new(
            self.amqp.clone(),
            webhook_topology(&self.settings),
            WebhookWorker { hooks: self.webhooks.clone() },
            &self.metrics,
        );
        let stop = shutdown.child();
        tasks.spawn(async move { hooks.run(stop).await });
        let (authenticator, stop) = (self.authenticator.clone(), shutdown.child());
        tasks.spawn(async move { authenticator.keep_current(stop).await });
        let authenticator = self.authenticator.clone();
        let readiness = Readiness::standard(self.db.clone(), self.cache.clone(), self.amqp.clone())
            .check("authn", move || std::future::ready(authenticator.ready()));
        if let Some(export) = tenx_common::metrics::otlp::exporter(
            &self.metrics,
            "notification",
            &self.settings.telemetry,
            shutdown.child(),
        ) {
            tasks.spawn(export);
        }
        let status =
            tenx_common::ops::status_service("notification", self.metrics.clone(), readiness.clone());
        let (metrics, stop) = (self.metrics.clone(), shutdown.child());
        let delay = self.settings.server.shutdown_delay();
        tasks.spawn(async move {
            if let Err(error) = admin::serve(admin, metrics, readiness, stop, delay).await {
                tracing::error!(%error, "admin server failed");
            }
        });
        let dead_letters = tenx_common::ops::dead_letter_service(
            self.amqp.clone(),
            vec![topology(&self.settings), webhook_topology(&self.settings)],
        );
        let router = self
            .grpc
            .router()
            .add_service(NotificationServiceServer::new(NotificationApi::new(
                self.deliverer.clone(),
                self.webhooks.clone(),
                self.amqp.clone(),
                topology(&self.settings),
            )))
            .add_service(dead_letters)
            .add_service(status)
            .add_service(tenx_common::ops::event_replay_service(&self.db, self.amqp.clone()));
        let served =
            self.grpc.serve(router, grpc, &[SERVICE_NAME], &self.settings.server, shutdown.clone()).await;
        shutdown.trigger();
        while tasks.join_next().await.is_some() {}
        self.amqp.close().await;
        served.map_err(|e| NotifyError::Internal(format!("gRPC server: {e}")))
    }
}

// How the host runs this service (`main`'s `serve`).
tenx_common::hosted!(App, "tenx-notification", NotificationSettings, NotifyError);
