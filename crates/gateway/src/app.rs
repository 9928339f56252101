//! Wiring, the one module that knows them all: builds the shared state
//! (`state::Gateway`: upstream channels, the JWKS, the rate limiter), then
//! serves the HTTP API, the gRPC front door and the admin port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use tenx_common::admin::{self, Readiness};
use tenx_common::authn::{Authenticator, AuthnLayer};
use tenx_common::cache::Redis;
use tenx_common::grpc::{self, GrpcServer, TracedChannel};
use tenx_common::metrics::Metrics;
use tenx_common::shutdown::Shutdown;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::EdgeError;
use crate::ratelimit::RateLimiter;
use crate::settings::GatewaySettings;
use crate::state::Gateway;
use crate::upstream::Upstream;
use crate::writes::Writes;

pub struct App {
    gateway: Arc<Gateway>,
    grpc: GrpcServer,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<Result<(), EdgeError>>,
}

fn channel(settings: &grpc::ClientSettings, key: &str) -> Result<TracedChannel, EdgeError> {
    grpc::connect(settings)
        .map_err(|e| EdgeError::new(tonic::Code::Internal, format!("upstreams.{key}.url: {e}")))
}

impl App {
    pub async fn build(settings: GatewaySettings, metrics: Metrics) -> Result<Self, EdgeError> {
        let auth_channel = channel(&settings.upstreams.auth, "auth")?;
        let notification_channel = channel(&settings.upstreams.notification, "notification")?;
        let billing_channel = channel(&settings.upstreams.billing, "billing")?;
        let redis = Redis::connect(&settings.redis)
            .map_err(|e| EdgeError::new(tonic::Code::Internal, format!("redis settings: {:?}", e.kind())))?;
        let auth_client = AuthServiceClient::new(auth_channel.clone());
        let gateway = Gateway {
            authn: Arc::new(Authenticator::remote(
                "gateway",
                &settings.authn,
                auth_client,
                Some(redis.clone()),
            )),
            limiter: RateLimiter::new(redis, &metrics),
            auth: Upstream::new("auth", auth_channel, settings.breaker.clone(), &metrics),
            notification: Upstream::new(
                "notification",
                notification_channel,
                settings.breaker.clone(),
                &metrics,
            ),
            billing: Upstream::new("billing", billing_channel, settings.breaker.clone(), &metrics),
            in_flight: Arc::new(Semaphore::new(settings.http.max_in_flight)),
            auth_blocked: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            writes: Writes::default(),
            settings,
            metrics: metrics.clone(),
        };
        // The door's proxy admits each call itself (rate limit first).
        let grpc = GrpcServer::new(gateway.settings.telemetry.slow_request(), &metrics, AuthnLayer::edge());
        Ok(Self { gateway: Arc::new(gateway), grpc })
    }

    pub async fn spawn(self, shutdown: Shutdown) -> Result<Running, EdgeError> {
        let io = |e: std::io::Error| EdgeError::new(tonic::Code::Internal, format!("bind: {e}"));
        let (grpc, admin) = self.gateway.settings.server.bind().await.map_err(io)?;
        let http = TcpListener::bind(&self.gateway.settings.http.listen).await.map_err(io)?;
        let (grpc_addr, admin_addr, http_addr) =
            (grpc.local_addr().map_err(io)?, admin.local_addr().map_err(io)?, http.local_addr().map_err(io)?);
        tracing::info!(%http_addr, %grpc_addr, %admin_addr, "tenx-gateway listening");
        // Ready only once tokens can be verified; until then /readyz says
        // so and the background refresher keeps trying.
        if let Err(error) = self.gateway.authn.jwks().fetch().await {
            tracing::warn!(%error, "JWKS not loaded yet; not ready until it is");
        }
        let task = tokio::spawn(self.run(http, grpc, admin, shutdown));
        Ok(Running { http_addr, grpc_addr, admin_addr, task })
    }

    async fn run(
        self,
        http: TcpListener,
        grpc: TcpListener,
        admin: TcpListener,
        shutdown: Shutdown,
    ) -> Result<(), EdgeError> {
        let mut tasks = JoinSet::new();
        let gw = self.gateway.clone();
        let stop = shutdown.child();
        tasks.spawn(async move { gw.authn.jwks().refresh_until(stop).await });

        let (metrics, stop) = (self.gateway.metrics.clone(), shutdown.child());
        let delay = self.gateway.settings.server.shutdown_delay();
        let readiness = readiness(self.gateway.clone());
        if let Some(export) = tenx_common::metrics::otlp::exporter(
            &self.gateway.metrics,
            "gateway",
            &self.gateway.settings.telemetry,
            shutdown.child(),
        ) {
            tasks.spawn(export);
        }
        let console = crate::console::router(self.gateway.clone());
        tasks.spawn(async move {
            if let Err(error) = admin::serve_with(admin, metrics, readiness, stop, delay, console).await {
                tracing::error!(%error, "admin server failed");
            }
        });

        // The HTTP API drains like the gRPC door: it keeps accepting for
        // `server.shutdown_delay_ms` after the signal (while /readyz says
        // 503 and balancers take the pod out), then stops accepting, and
        // requests in flight get `server.shutdown_grace_ms` to finish.
        let router = crate::http::router(self.gateway.clone());
        let stop = shutdown.child();
        let server = &self.gateway.settings.server;
        let (delay, grace) = (server.shutdown_delay(), server.shutdown_grace());
        tasks.spawn(async move {
            let app = router.into_make_service_with_connect_info::<SocketAddr>();
            let accepting = stop.clone();
            let served = axum::serve(http, app).with_graceful_shutdown(async move { accepting.after(delay).await });
            tokio::select! {
                result = served => {
                    if let Err(error) = result {
                        tracing::error!(%error, "HTTP server failed");
                    }
                }
                () = stop.after(delay + grace) => {
                    tracing::warn!(grace_ms = grace.as_millis() as u64, "HTTP drain deadline passed; dropping requests still in flight");
                }
            }
        });

        // gRPC health (what Kubernetes probes) says SERVING only while
        // tokens can be verified, like /readyz's jwks check.
        let (health, gw, stop) = (self.grpc.health().clone(), self.gateway.clone(), shutdown.child());
        tasks.spawn(async move {
            // Re-asserted each tick: the server also sets it when it starts.
            loop {
                if !stop.is_triggered() {
                    let status = if gw.authn.jwks().loaded() {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health.set_service_status("", status).await;
                }
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
        });
        // The public RPCs for gRPC clients and, translated, for gRPC-Web
        // (browsers), with the HTTP API's CORS policy.
        let proxy = tower::Layer::layer(
            &tonic_web::GrpcWebLayer::new(),
            crate::grpc::Proxy::new(self.gateway.clone()),
        );
        let cors = crate::http::cors(&self.gateway).unwrap_or_default();
        let router = self.grpc.router_with_fallback(tower::Layer::layer(&cors, proxy));
        let served =
            self.grpc.serve(router, grpc, &[], &self.gateway.settings.server, shutdown.clone()).await;
        shutdown.trigger();
        while tasks.join_next().await.is_some() {}
        served.map_err(|e| EdgeError::new(tonic::Code::Internal, format!("gRPC server: {e}")))
    }
}

/// Ready when tokens can be verified (JWKS loaded), the upstreams answer
/// their health checks, and Redis answers (else limits are local only).
fn readiness(gw: Arc<Gateway>) -> Readiness {
    let jwks = gw.clone();
    let mut readiness = Readiness::new().check("jwks", move || {
        let loaded = jwks.authn.jwks().loaded();
        async move { if loaded { Ok(()) } else { Err("auth's signing keys not fetched yet".to_owned()) } }
    });
    for (name, channel) in [
        ("auth", gw.auth.channel.clone()),
        ("notification", gw.notification.channel.clone()),
        ("billing", gw.billing.channel.clone()),
    ] {
        readiness = readiness.check(name, move || {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            async move {
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                match client.check(request).await {
                    Ok(r) if r.get_ref().status == 1 => Ok(()),
                    Ok(r) => Err(format!("status {}", r.get_ref().status)),
                    Err(status) => Err(format!("{:?}", status.code())),
                }
            }
        });
    }
    readiness
}

// How the host runs this service (`main`'s `serve`).
tenx_common::hosted!(App, "tenx-gateway", GatewaySettings, EdgeError);
