//! What a service hands the host to serve: its gRPC router, the names
//! whose health it reports, its readiness checks and background tasks,
//! and, for a service with a database and a broker, everything that comes
//! with them ([`Backend`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::admin::Readiness;
use crate::authn::Authenticator;
use crate::cache::CacheLayer;
use crate::db::Db;
use crate::grpc::{GrpcServer, ServerSettings, ServiceRouter};
use crate::metrics::Metrics;
use crate::outbox::RelaySettings;
use crate::queue::{Amqp, Consumer, Handler, Topology};
use crate::retention::{RetentionSettings, Rule};
use crate::shutdown::Shutdown;
use crate::telemetry::TelemetrySettings;

/// A background task: given its stop signal, runs until it fires.
pub(super) type Task = Box<dyn FnOnce(Shutdown) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Everything one service serves, as the host runs it ([`super::spawn`]).
pub struct Parts {
    pub(super) name: &'static str,
    pub(super) server: ServerSettings,
    pub(super) telemetry: TelemetrySettings,
    pub(super) metrics: Metrics,
    pub(super) grpc: GrpcServer,
    pub(super) router: ServiceRouter,
    pub(super) serving: Vec<&'static str>,
    pub(super) readiness: Readiness,
    pub(super) tasks: Vec<Task>,
    pub(super) backend: Option<Backend>,
    pub(super) console: axum::Router,
    pub(super) http: Option<(String, axum::Router)>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Parts {
    /// Service `name` (`billing`: its metrics, traces and status) serving
    /// `router` (from `grpc`, with its own API added) on `server`'s ports.
    pub fn new(
        name: &'static str,
        server: &ServerSettings,
        telemetry: &TelemetrySettings,
        metrics: &Metrics,
        grpc: GrpcServer,
        router: ServiceRouter,
    ) -> Self {
        Self {
            name,
            server: server.clone(),
            telemetry: telemetry.clone(),
            metrics: metrics.clone(),
            grpc,
            router,
            serving: Vec::new(),
            readiness: Readiness::new(),
            tasks: Vec::new(),
            backend: None,
            console: axum::Router::new(),
            http: None,
        }
    }

    /// The fully-qualified gRPC services whose health is reported
    /// (besides the overall `""`).
    pub fn serving(mut self, services: &[&'static str]) -> Self {
        self.serving.extend_from_slice(services);
        self
    }

    /// Its database, cache and broker, with what they bring ([`Backend`]);
    /// their readiness checks come first.
    pub fn backend(mut self, backend: Backend) -> Self {
        let own = std::mem::take(&mut self.readiness);
        self.readiness =
            Readiness::standard(backend.db.clone(), backend.cache.clone(), backend.amqp.clone()).merge(own);
        self.backend = Some(backend);
        self
    }

    /// Verifies calls with `authenticator`: follows auth's key set for as
    /// long as it runs, and is not ready until it holds it (`authn`).
    pub fn verifier(self, authenticator: Arc<Authenticator>) -> Self {
        let check = authenticator.clone();
        self.ready_when("authn", move || std::future::ready(check.ready()))
            .task(move |stop| authenticator.keep_current(stop))
    }

    /// One more `/readyz` check.
    pub fn ready_when<F, Fut>(mut self, name: &str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.readiness = self.readiness.check(name, check);
        self
    }

    /// A background task: it gets its stop signal and should return soon
    /// after it fires; the service ends once every task has.
    pub fn task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(Box::new(move |stop| Box::pin(task(stop))));
        self
    }

    /// Pages served on the admin port beside `/metrics`, `/healthz` and
    /// `/readyz` (the gateway's operator console).
    pub fn console(mut self, routes: axum::Router) -> Self {
        self.console = routes;
        self
    }

    /// An HTTP API on `listen`, drained like the gRPC port.
    pub fn http(mut self, listen: &str, routes: axum::Router) -> Self {
        self.http = Some((listen.to_owned(), routes));
        self
    }
}

/// What a service that owns a database and publishes events gets from the
/// host: the outbox relay, retention (the inbox, the outbox and its own
/// `rules`), its consumers, and the operator RPCs (status, dead letters
/// of its consumer groups, event replay).
pub struct Backend {
    pub(super) db: Arc<Db>,
    pub(super) cache: CacheLayer,
    pub(super) amqp: Amqp,
    pub(super) metrics: Metrics,
    pub(super) outbox: RelaySettings,
    pub(super) retention: RetentionSettings,
    pub(super) rules: Vec<Rule>,
    pub(super) groups: Vec<Topology>,
    pub(super) consumers: Vec<Task>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("groups", &self.groups.len()).finish_non_exhaustive()
    }
}

impl Backend {
    pub fn new(
        db: Arc<Db>,
        cache: CacheLayer,
        amqp: Amqp,
        metrics: &Metrics,
        outbox: &RelaySettings,
        retention: &RetentionSettings,
    ) -> Self {
        Self {
            db,
            cache,
            amqp,
            metrics: metrics.clone(),
            outbox: outbox.clone(),
            retention: retention.clone(),
            rules: Vec::new(),
            groups: Vec::new(),
            consumers: Vec::new(),
        }
    }

    /// What retention prunes of the service's own tables.
    pub fn prune(mut self, rules: Vec<Rule>) -> Self {
        self.rules = rules;
        self
    }

    /// A consumer group: `handler` takes `topology`'s messages; its parked
    /// messages are the operator's through the dead-letter RPCs.
    pub fn consumer<H: Handler>(mut self, topology: Topology, handler: H) -> Self {
        let consumer = Consumer::new(self.amqp.clone(), topology.clone(), handler, &self.metrics);
        self.groups.push(topology);
        self.consumers.push(Box::new(move |stop| Box::pin(consumer.run(stop))));
        self
    }
}
