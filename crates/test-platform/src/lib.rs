//! A test's own whole platform: auth, notification and billing on their
//! own databases, Redis prefixes and one broker prefix (so billing and
//! notification consume auth's events), every service verifying calls
//! with auth's keys, and gateways in front of it on demand. For the tests
//! that cross services (the gateway's, `tenx-load`'s); each service's own
//! tests start just that service.

use std::net::SocketAddr;

use tenx_auth::AuthSettings;
use tenx_billing::BillingSettings;
use tenx_common::db::{DbSettings, Pooling};
use tenx_common::host;
use tenx_common::metrics::Metrics;
use tenx_common::queue::{Amqp, Topology};
use tenx_common::shutdown::Shutdown;
use tenx_gateway::GatewaySettings;
use tenx_notification::NotificationSettings;
use tenx_test_support::{Bounced, TestAmqp, TestDb, TestPgBouncer, TestRedis};

/// Billing's Stripe webhook signing secret in the test platform.
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_gateway_tests";

pub struct Platform {
    /// The PgBouncer every service reaches its databases through, if any
    /// (first: it lets go of the databases before they are dropped).
    pub pgbouncer: Option<TestPgBouncer>,
    _auth_db: TestDb,
    _notify_db: TestDb,
    _billing_db: TestDb,
    _redis: Vec<TestRedis>,
    _amqp: TestAmqp,
    pub auth_settings: AuthSettings,
    notify_settings: NotificationSettings,
    billing_settings: BillingSettings,
    /// The first instance of each service.
    pub auth: Addrs,
    pub notification: Addrs,
    pub billing: Addrs,
    /// Every instance of every service, by service and then index.
    instances: Vec<Instance>,
    /// The Redis of [`Setup::redis_url`], if not the shared one.
    redis_url: Option<String>,
    /// Billing's first instance's metrics: its gRPC server counts every
    /// call it receives.
    pub billing_metrics: Metrics,
    pub shutdown: Shutdown,
    /// The gateways' shared Redis key prefix (rate limits).
    pub gateway_prefix: String,
}

/// A gateway of the platform that a test restarts.
pub struct Gateway {
    pub running: tenx_gateway::Running,
    settings: GatewaySettings,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("grpc", &self.running.grpc_addr).finish_non_exhaustive()
    }
}

/// How a platform is started ([`Platform::start_setup`]).
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Instances of each service (0 counts as 1).
    pub instances: usize,
    /// Every service reaches its databases through a PgBouncer of the
    /// test's own, with `database.pooling = "transaction"`.
    pub pgbouncer: bool,
    /// The Redis every service and gateway uses (e.g. a
    /// `TestRedisServer` to kill), instead of the shared one.
    pub redis_url: Option<String>,
    /// The broker every service uses (e.g. through a `ChaosProxy` to cut),
    /// instead of the shared one's own address; the queues are declared
    /// straight on the shared one.
    pub amqp_url: Option<String>,
    /// Every service reads its replica through this loopback port (e.g. a
    /// `ChaosProxy` in front of the replica, to stop it).
    pub replica_port: Option<u16>,
}

/// Where one instance of a service listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// The services behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Auth,
    Notification,
    Billing,
}

/// One running instance: where it listens, its own shutdown (a child of
/// the platform's) and the task that ends when it has drained.
struct Instance {
    service: Service,
    addrs: Addrs,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Platform {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts `n` instances of every service on the same databases, Redis
    /// prefixes and queues (competing consumers), each calling every
    /// instance of auth, and gateways balancing over all of them.
    pub async fn start_instances(n: usize) -> anyhow::Result<Self> {
        Self::start_setup(Setup { instances: n, ..Setup::default() }).await
    }

    /// Starts as `setup` says.
    pub async fn start_setup(setup: Setup) -> anyhow::Result<Self> {
        Self::start_configured(|_| {}, setup).await
    }

    /// Starts with auth's settings changed by `tune` first.
    pub async fn start_with(tune: impl FnOnce(&mut AuthSettings)) -> anyhow::Result<Self> {
        Self::start_configured(tune, Setup::default()).await
    }

    /// Starts with every service reaching its primary and replica through
    /// a PgBouncer of the test's own in transaction mode, with
    /// `database.pooling = "transaction"` (see [`TestPgBouncer`]).
    pub async fn start_behind_pgbouncer() -> anyhow::Result<Self> {
        Self::start_setup(Setup { pgbouncer: true, ..Setup::default() }).await
    }

    async fn start_configured(tune: impl FnOnce(&mut AuthSettings), setup: Setup) -> anyhow::Result<Self> {
        let Setup { instances, pgbouncer, redis_url, amqp_url, replica_port } = setup;
        let auth_db = TestDb::of_service::<tenx_auth::App>("auth").await?;
        let notify_db = TestDb::of_service::<tenx_notification::App>("notification").await?;
        let billing_db = TestDb::of_service::<tenx_billing::App>("billing").await?;
        let pgbouncer = if pgbouncer {
            let mut bounced = Vec::new();
            for (db, schema) in [(&auth_db, "auth"), (&notify_db, "notification"), (&billing_db, "billing")] {
                for replica in [false, true] {
                    bounced.push(Bounced {
                        alias: alias(db, replica),
                        database: db.name().to_owned(),
                        replica,
                        schema: Some(schema.to_owned()),
                    });
                }
            }
            Some(TestPgBouncer::start(&bounced).await?)
        } else {
            None
        };
        // A service's database settings: straight to Postgres, or through
        // the PgBouncer (migrations are never run through it: the
        // templates are migrated directly).
        let through = |db: &TestDb, settings: &mut DbSettings| {
            if let Some(port) = replica_port {
                settings.replica_url = Some(db.url_via(port).into());
            }
            if let Some(bouncer) = &pgbouncer {
                settings.primary_url = bouncer.url(&alias(db, false)).into();
                settings.replica_url = Some(bouncer.url(&alias(db, true)).into());
                settings.migrate_url = Some(db.primary_url().into());
                settings.pooling = Pooling::Transaction;
            }
        };
        let redis = vec![TestRedis::new(), TestRedis::new(), TestRedis::new(), TestRedis::new()];
        let amqp = TestAmqp::new();
        let mut auth_settings = AuthSettings::isolated(
            &auth_db.primary_url(),
            &auth_db.replica_url(),
            redis[0].prefix(),
            amqp.prefix(),
        )?;
        for service in tenx_auth::testing::SERVICES {
            auth_settings
                .service_clients
                .insert(service.to_owned(), tenx_auth::testing::client_secret(service).into());
        }
        through(&auth_db, &mut auth_settings.database);
        if let Some(url) = &redis_url {
            auth_settings.redis.url = url.clone().into();
        }
        tune(&mut auth_settings);
        let mut notify_settings = NotificationSettings::isolated(
            &notify_db.primary_url(),
            &notify_db.replica_url(),
            redis[1].prefix(),
            amqp.prefix(),
        )?;
        let mut billing_settings = BillingSettings::isolated(
            &billing_db.primary_url(),
            &billing_db.replica_url(),
            redis[3].prefix(),
            amqp.prefix(),
        )?;
        through(&notify_db, &mut notify_settings.database);
        through(&billing_db, &mut billing_settings.database);
        if let Some(url) = &redis_url {
            notify_settings.redis.url = url.clone().into();
            billing_settings.redis.url = url.clone().into();
        }
        let topologies = [
            Topology::for_group(&auth_settings.amqp, tenx_auth::avatar::GROUP, &[]),
            tenx_notification::app::topology(&notify_settings),
            tenx_notification::app::webhook_topology(&notify_settings),
            tenx_billing::app::customers_topology(&billing_settings),
        ];
        let broker = Amqp::new(&notify_settings.amqp, "test-declare");
        let channel = broker.channel().await?;
        for topology in &topologies {
            amqp.track(topology.queue_names(), topology.exchange_names());
            topology.declare(&channel).await?;
        }
        if let Some(url) = &amqp_url {
            auth_settings.amqp.url = url.clone().into();
            notify_settings.amqp.url = url.clone().into();
            billing_settings.amqp.url = url.clone().into();
        }
        let shutdown = Shutdown::new();
        let mut started = Vec::new();
        for _ in 0..instances.max(1) {
            started.push(start_auth(&auth_settings, None, &shutdown).await?);
        }
        // Every service verifies each call with auth's keys and follows
        // its revocations (in auth's Redis prefix).
        let auth_url = urls(&started);
        for (service, upstream, authn) in [
            ("notification", &mut notify_settings.upstreams.auth, &mut notify_settings.authn),
            ("billing", &mut billing_settings.upstreams.auth, &mut billing_settings.authn),
        ] {
            upstream.url = auth_url.clone();
            authn.client_secret = tenx_auth::testing::client_secret(service).into();
            authn.revocation_prefix = auth_settings.redis.key_prefix.clone();
        }
        // Stripe's webhook is verified with this secret (tests sign events with it).
        billing_settings.provider.stripe_webhook_secret = STRIPE_WEBHOOK_SECRET.to_owned().into();
        let billing_metrics = Metrics::default();
        for i in 0..instances.max(1) {
            started.push(start_notification(&notify_settings, None, &shutdown).await?);
            let metrics = if i == 0 { billing_metrics.clone() } else { Metrics::default() };
            started.push(start_billing(&billing_settings, None, metrics, &shutdown).await?);
        }
        let first =
            |service| started.iter().find(|i| i.service == service).map(|i| i.addrs).expect("started");
        let (auth, notification, billing) =
            (first(Service::Auth), first(Service::Notification), first(Service::Billing));
        let gateway_prefix = redis[2].prefix().to_owned();
        Ok(Self {
            _auth_db: auth_db,
            _notify_db: notify_db,
            _billing_db: billing_db,
            _redis: redis,
            _amqp: amqp,
            pgbouncer,
            auth_settings,
            notify_settings,
            billing_settings,
            auth,
            notification,
            billing,
            instances: started,
            redis_url,
            billing_metrics,
            shutdown,
            gateway_prefix,
        })
    }

    /// Stops instance `index` of `service` as SIGTERM does (its shutdown
    /// fires: it drains and ends), then starts a new one on the same ports.
    /// Returns once the new one serves.
    pub async fn restart(&mut self, service: Service, index: usize) -> anyhow::Result<()> {
        let position = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.service == service)
            .nth(index)
            .map(|(p, _)| p)
            .ok_or_else(|| anyhow::anyhow!("no instance {index} of {service:?}"))?;
        let old = &mut self.instances[position];
        old.shutdown.trigger();
        (&mut old.task).await??;
        let addrs = Some(old.addrs);
        let new = match service {
            Service::Auth => start_auth(&self.auth_settings, addrs, &self.shutdown).await?,
            Service::Notification => start_notification(&self.notify_settings, addrs, &self.shutdown).await?,
            Service::Billing => {
                start_billing(&self.billing_settings, addrs, Metrics::default(), &self.shutdown).await?
            }
        };
        self.instances[position] = new;
        Ok(())
    }

    /// notification's database (to show a refused call wrote nothing).
    pub fn notify_db_url(&self) -> String {
        self._notify_db.primary_url()
    }

    /// auth's database.
    pub fn auth_db_url(&self) -> String {
        self._auth_db.primary_url()
    }

    /// billing's database (to check what a call claims it did).
    pub fn billing_db_url(&self) -> String {
        self._billing_db.primary_url()
    }

    /// Gateway settings pointing at this platform (every instance).
    pub fn gateway_settings(&self) -> anyhow::Result<GatewaySettings> {
        let of = |service| {
            let instances: Vec<&Instance> = self.instances.iter().filter(|i| i.service == service).collect();
            urls(&instances)
        };
        let mut settings = GatewaySettings::isolated(
            &of(Service::Auth),
            &of(Service::Notification),
            &of(Service::Billing),
            &self.gateway_prefix,
        )?;
        settings.authn.client_secret = tenx_auth::testing::client_secret("gateway").into();
        if let Some(url) = &self.redis_url {
            settings.redis.url = url.clone().into();
        }
        settings.authn.revocation_prefix = self.auth_settings.redis.key_prefix.clone();
        Ok(settings)
    }

    pub async fn gateway(&self) -> anyhow::Result<tenx_gateway::Running> {
        self.gateway_with(self.gateway_settings()?).await
    }

    pub async fn gateway_with(&self, settings: GatewaySettings) -> anyhow::Result<tenx_gateway::Running> {
        self.gateway_with_metrics(settings, Metrics::default()).await
    }

    /// A gateway that can be restarted on its own ([`Platform::restart_gateway`]).
    pub async fn gateway_instance(&self, settings: GatewaySettings) -> anyhow::Result<Gateway> {
        let shutdown = self.shutdown.child();
        let running = tenx_gateway::App::build(settings.clone(), Metrics::default())
            .await?
            .spawn(shutdown.clone())
            .await?;
        Ok(Gateway { running, settings, shutdown })
    }

    /// Stops `gateway` as SIGTERM does (it drains and ends), then starts a
    /// new one on the same ports; returns once the new one serves.
    pub async fn restart_gateway(&self, gateway: Gateway) -> anyhow::Result<Gateway> {
        let Gateway { running, mut settings, shutdown } = gateway;
        shutdown.trigger();
        running.task.await??;
        settings.server.listen = running.grpc_addr;
        settings.server.admin_listen = running.admin_addr;
        settings.http.listen = running.http_addr.to_string();
        self.gateway_instance(settings).await
    }

    /// A gateway whose metrics the test reads.
    pub async fn gateway_with_metrics(
        &self,
        settings: GatewaySettings,
        metrics: Metrics,
    ) -> anyhow::Result<tenx_gateway::Running> {
        let app = tenx_gateway::App::build(settings, metrics).await?;
        Ok(app.spawn(self.shutdown.child()).await?)
    }
}

/// `http://a,http://b`: every instance in `instances`.
fn urls<I: std::borrow::Borrow<Instance>>(instances: &[I]) -> String {
    instances.iter().map(|i| format!("http://{}", i.borrow().addrs.grpc_addr)).collect::<Vec<_>>().join(",")
}

/// Starts one instance of service `S` on `settings`, on `addrs` (a
/// restart) or free ports, under a child of `parent`.
async fn start<S: host::Service>(
    service: Service,
    settings: &S::Settings,
    addrs: Option<Addrs>,
    metrics: Metrics,
    parent: &Shutdown,
) -> anyhow::Result<Instance> {
    let mut settings = settings.clone();
    if let Some(addrs) = addrs {
        let server = S::server_mut(&mut settings);
        server.listen = addrs.grpc_addr;
        server.admin_listen = addrs.admin_addr;
    }
    let shutdown = parent.child();
    let running = host::start::<S>(settings, metrics, shutdown.clone()).await?;
    Ok(Instance {
        service,
        addrs: Addrs { grpc_addr: running.grpc_addr, admin_addr: running.admin_addr },
        shutdown,
        task: tokio::spawn(async move { Ok(running.task.await??) }),
    })
}

async fn start_auth(
    settings: &AuthSettings,
    addrs: Option<Addrs>,
    parent: &Shutdown,
) -> anyhow::Result<Instance> {
    start::<tenx_auth::App>(Service::Auth, settings, addrs, Metrics::default(), parent).await
}

async fn start_notification(
    settings: &NotificationSettings,
    addrs: Option<Addrs>,
    parent: &Shutdown,
) -> anyhow::Result<Instance> {
    start::<tenx_notification::App>(Service::Notification, settings, addrs, Metrics::default(), parent).await
}

async fn start_billing(
    settings: &BillingSettings,
    addrs: Option<Addrs>,
    metrics: Metrics,
    parent: &Shutdown,
) -> anyhow::Result<Instance> {
    start::<tenx_billing::App>(Service::Billing, settings, addrs, metrics, parent).await
}

/// The PgBouncer name of `db` on the primary or the replica.
fn alias(db: &TestDb, replica: bool) -> String {
    format!("{}{}", db.name(), if replica { "_replica" } else { "" })
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("auth", &self.auth.grpc_addr)
            .field("notification", &self.notification.grpc_addr)
            .field("billing", &self.billing.grpc_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
