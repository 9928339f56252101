//! Wiring: pools, broker, the payment provider and the scheduler; what
//! the host serves of them ([`App::parts`]).

use std::sync::Arc;

use tenx_common::authn::Authenticator;
use tenx_common::grpc::GrpcServer;
use tenx_common::host::{self, Backend, HostError, Parts};
use tenx_common::metrics::Metrics;
use tenx_common::queue::Topology;
use tenx_proto::billing::v1::billing_service_server::BillingServiceServer;

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

pub const SERVICE_NAME: &str = "tenx.billing.v1.BillingService";

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
    backend: Backend,
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
        let started = |e: HostError| BillingError::Internal(host::report(&e));
        let backend = Backend::connect::<Self>(&settings, &metrics).map_err(started)?;
        let db = backend.db().clone();
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
        let (grpc, authenticator) = backend
            .verified_server("billing", &settings.authn, &settings.upstreams, &settings.telemetry)
            .map_err(started)?;
        let scheduler =
            Arc::new(Scheduler::new(core.clone(), settings.scheduler.clone(), settings.dunning.clone()));
        Ok(Self { settings, metrics, backend, core, grpc, scheduler, authenticator })
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

    /// What the host serves: the billing API, the customers consumer, the
    /// scheduler (unless disabled) and everything a backend brings.
    pub fn parts(self) -> Parts {
        let settings = &self.settings;
        let customers = CustomerWorker { db: self.backend.db().clone(), clock: self.core.clock.clone() };
        let backend = self.backend.consumer(customers_topology(settings), customers);
        let router =
            self.grpc.router().add_service(BillingServiceServer::new(BillingApi::new(self.core.clone())));
        let mut parts = Parts::of::<Self>(settings, &self.metrics, self.grpc.clone(), router)
            .serving(&[SERVICE_NAME])
            .backend(backend)
            .verifier(self.authenticator.clone());
        if settings.scheduler.enabled {
            let scheduler = self.scheduler.clone();
            parts = parts.task(move |stop| async move { scheduler.run(stop).await });
        }
        parts
    }
}

// How the host runs this service (`main`'s `serve`).
tenx_common::hosted!(App, "tenx-billing", BillingSettings, BillingError, migrations = "migrations");
