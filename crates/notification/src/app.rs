//! Wiring: pools, cache, broker, templates, mailer and webhooks; what the
//! host serves of them ([`App::parts`]).

use std::sync::Arc;

use tenx_common::authn::Authenticator;
use tenx_common::cache::CacheOptions;
use tenx_common::grpc::GrpcServer;
use tenx_common::host::{self, Backend, HostError, Parts};
use tenx_common::metrics::Metrics;
use tenx_common::queue::Topology;
use tenx_common::sealed::SealKey;
use tenx_proto::notification::v1::notification_service_server::NotificationServiceServer;

use crate::deliver::Deliverer;
use crate::error::NotifyError;
use crate::mailer::Mailer;
use crate::service::NotificationApi;
use crate::settings::NotificationSettings;
use crate::templates::Templates;
use crate::webhooks::{self, WebhookWorker, Webhooks};
use crate::worker::{self, Worker};

pub const SERVICE_NAME: &str = "tenx.notification.v1.NotificationService";

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
    backend: Backend,
    deliverer: Arc<Deliverer>,
    webhooks: Arc<Webhooks>,
    grpc: GrpcServer,
    authenticator: Arc<Authenticator>,
    seal: SealKey,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    pub async fn build(settings: NotificationSettings, metrics: Metrics) -> Result<Self, NotifyError> {
        let started = |e: HostError| NotifyError::Internal(host::report(&e));
        let backend = Backend::connect::<Self>(&settings, &metrics).map_err(started)?;
        let (db, cache) = (backend.db().clone(), backend.cache());
        let templates =
            Arc::new(Templates::load(settings.templates.dir.as_deref()).map_err(NotifyError::Internal)?);
        let mailer = Mailer::new(&settings.smtp).map_err(NotifyError::Internal)?;
        let preferences = cache.cache("notification.preferences", CacheOptions::default());
        let deliverer = Arc::new(Deliverer::new(db.clone(), templates, mailer, preferences, &metrics));
        let webhooks = Arc::new(
            Webhooks::new(db.clone(), settings.webhooks.clone(), settings.amqp.max_attempts, &metrics)
                .map_err(NotifyError::Internal)?,
        );
        let (grpc, authenticator) = backend
            .verified_server("notification", &settings.authn, &settings.upstreams, &settings.telemetry)
            .map_err(started)?;
        let seal = SealKey::parse(settings.codes.seal_key.expose())
            .map_err(|e| NotifyError::Internal(format!("codes.seal_key: {e}")))?;
        Ok(Self { settings, metrics, backend, deliverer, webhooks, grpc, authenticator, seal })
    }

    /// The authentication layer's verifier (tests wait for its
    /// revocation feed before calling).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.clone()
    }

    /// What the host serves: the notification API, the delivery and
    /// webhook consumers and everything a backend brings.
    pub fn parts(self) -> Parts {
        let settings = &self.settings;
        let worker = Worker {
            deliverer: self.deliverer.clone(),
            webhooks: self.webhooks.clone(),
            max_attempts: settings.amqp.max_attempts,
            seal: self.seal.clone(),
        };
        let amqp = self.backend.amqp().clone();
        let backend = self
            .backend
            .prune(retention_rules(settings))
            .consumer(topology(settings), worker)
            .consumer(webhook_topology(settings), WebhookWorker { hooks: self.webhooks.clone() });
        let api =
            NotificationApi::new(self.deliverer.clone(), self.webhooks.clone(), amqp, topology(settings));
        let router = self.grpc.router().add_service(NotificationServiceServer::new(api));
        Parts::of::<Self>(settings, &self.metrics, self.grpc.clone(), router)
            .serving(&[SERVICE_NAME])
            .backend(backend)
            .verifier(self.authenticator.clone())
    }
}

// How the host runs this service (`main`'s `serve`).
tenx_common::hosted!(App, "tenx-notification", NotificationSettings, NotifyError, migrations = "migrations");
