//! What a service hands the host to serve: its gRPC router, the names
//! whose health it reports, its readiness checks and background tasks,
//! and, for a service with a database and a broker, everything that comes
//! with them ([`Backend`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::admin::Readiness;
use crate::authn::Authenticator;
use crate::authn::{AuthUpstream, AuthnLayer, AuthnSettings};
use crate::cache::{CacheLayer, Redis, RedisSettings};
use crate::db::{Db, DbSettings};
use crate::grpc::{GrpcServer, ServerSettings, ServiceRouter};
use crate::metrics::Metrics;
use crate::outbox::RelaySettings;
use crate::queue::{Amqp, AmqpSettings, Consumer, Handler, Topology};
use crate::retention::{RetentionSettings, Rule};
use crate::shutdown::Shutdown;
use crate::telemetry::TelemetrySettings;

use super::{HostError, Service};

/// What a [`Backend`] is built from: a service's sections of the same names.
#[derive(Debug, Clone, Copy)]
pub struct BackendSettings<'a> {
    pub database: &'a DbSettings,
    pub redis: &'a RedisSettings,
    pub amqp: &'a AmqpSettings,
    pub outbox: &'a RelaySettings,
    pub retention: &'a RetentionSettings,
}

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

    /// [`Parts::new`] for service `S` (`tenx-billing` serves as `billing`)
    /// on its settings' ports and telemetry.
    pub fn of<S: Service>(
        settings: &S::Settings,
        metrics: &Metrics,
        grpc: GrpcServer,
        router: ServiceRouter,
    ) -> Self {
        let name = S::NAME.strip_prefix("tenx-").unwrap_or(S::NAME);
        Self::new(name, S::server(settings), S::telemetry(settings), metrics, grpc, router)
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
    pub(super) redis: Redis,
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
    /// Connects service `S`'s pools, its cache (in process, then Redis)
    /// and its broker. Nothing is opened before first use, so a service
    /// starts while a dependency is down and is simply not ready until it
    /// is back.
    pub fn connect<S: Service>(settings: &S::Settings, metrics: &Metrics) -> Result<Self, HostError> {
        let sections = S::backend(settings).ok_or(HostError::Settings {
            what: "database",
            message: format!("{} keeps no database", S::NAME),
        })?;
        Self::connect_as(S::NAME, sections, metrics)
    }

    /// [`Backend::connect`] for a service named `name`.
    pub fn connect_as(
        name: &str,
        settings: BackendSettings<'_>,
        metrics: &Metrics,
    ) -> Result<Self, HostError> {
        let db = Arc::new(Db::connect(settings.database, name, metrics).map_err(HostError::service)?);
        let redis = Redis::connect(settings.redis)
            .map_err(|e| HostError::Settings { what: "redis", message: format!("{:?}", e.kind()) })?;
        Ok(Self {
            db,
            cache: CacheLayer::new(Some(redis.clone()), metrics),
            redis,
            amqp: Amqp::new(settings.amqp, name),
            metrics: metrics.clone(),
            outbox: settings.outbox.clone(),
            retention: settings.retention.clone(),
            rules: Vec::new(),
            groups: Vec::new(),
            consumers: Vec::new(),
        })
    }

    /// The gRPC server of a service behind auth, and the verifier it
    /// uses: every call's credential checked with auth's keys (asked of
    /// `upstream` as `service`, with its client secret), revocations
    /// followed in this backend's Redis.
    pub fn verified_server(
        &self,
        service: &str,
        authn: &AuthnSettings,
        upstream: &AuthUpstream,
        telemetry: &TelemetrySettings,
    ) -> Result<(GrpcServer, Arc<Authenticator>), HostError> {
        let auth = crate::grpc::connect(&upstream.auth)
            .map_err(|e| HostError::Settings { what: "upstreams.auth.url", message: e.to_string() })?;
        let client = tenx_proto::auth::v1::auth_service_client::AuthServiceClient::new(auth);
        let authenticator = Arc::new(Authenticator::remote(service, authn, client, Some(self.redis.clone())));
        let layer = AuthnLayer::verify(authenticator.clone());
        Ok((GrpcServer::new(telemetry.slow_request(), &self.metrics, layer), authenticator))
    }

    /// Both pools of its database.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Its cache, in process then Redis.
    pub fn cache(&self) -> &CacheLayer {
        &self.cache
    }

    /// Its Redis, unprefixed by the cache.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Its broker connection.
    pub fn amqp(&self) -> &Amqp {
        &self.amqp
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
