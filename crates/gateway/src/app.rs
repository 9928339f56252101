//! Wiring, the one module that knows them all: builds the shared state
//! (`state::Gateway`: upstream channels, the JWKS, the rate limiter), and
//! hands the host the HTTP API, the gRPC front door and the console.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tenx_common::authn::{Authenticator, AuthnLayer};
use tenx_common::cache::Redis;
use tenx_common::grpc::{self, GrpcServer, TracedChannel};
use tenx_common::host::{self, HostError, Parts};
use tenx_common::metrics::Metrics;
use tenx_common::shutdown::Shutdown;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::sync::Semaphore;

use crate::blocked::BlockedClients;
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
    pub task: tokio::task::JoinHandle<Result<(), HostError>>,
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
            auth_blocked: BlockedClients::default(),
            writes: Writes::default(),
            settings,
            metrics: metrics.clone(),
        };
        // Ready only once tokens can be verified; until then /readyz says
        // so and the key set's follower keeps trying.
        if let Err(error) = gateway.authn.jwks().fetch().await {
            tracing::warn!(%error, "JWKS not loaded yet; not ready until it is");
        }
        // The door's proxy admits each call itself (rate limit first).
        let grpc = GrpcServer::new(gateway.settings.telemetry.slow_request(), &metrics, AuthnLayer::edge());
        Ok(Self { gateway: Arc::new(gateway), grpc })
    }

    /// Binds its ports (port 0 picks free ones) and serves until `shutdown`.
    pub async fn spawn(self, shutdown: Shutdown) -> Result<Running, HostError> {
        let running = host::spawn(self.parts(), shutdown).await?;
        let http_addr = running.http_addr.ok_or_else(|| HostError::Bind {
            what: "http.listen",
            addr: String::new(),
            source: std::io::Error::other("the gateway's parts name no HTTP API"),
        })?;
        Ok(Running {
            http_addr,
            grpc_addr: running.grpc_addr,
            admin_addr: running.admin_addr,
            task: running.task,
        })
    }

    /// What the host serves: the HTTP API, the gRPC front door (gRPC and
    /// gRPC-Web) and the operator console.
    pub fn parts(self) -> Parts {
        let gateway = self.gateway;
        let settings = &gateway.settings;
        // The public RPCs for gRPC clients and, translated, for gRPC-Web
        // (browsers), with the HTTP API's CORS policy.
        let proxy = crate::grpc::Proxy::new(gateway.clone());
        let web = tower::Layer::layer(&tonic_web::GrpcWebLayer::new(), proxy.clone());
        let cors = crate::http::cors(&gateway).unwrap_or_default();
        let door = crate::grpc::Door::new(proxy, tower::Layer::layer(&cors, web));
        let router = self.grpc.router_with_fallback(door);
        let health = self.grpc.health().clone();
        let verified = gateway.clone();
        let mut parts = Parts::of::<Self>(settings, &gateway.metrics, self.grpc, router)
            .verifier(gateway.authn.clone())
            // gRPC health (what Kubernetes probes) says SERVING only while
            // tokens can be verified, like /readyz's authn check.
            .task(move |stop| report_health(health, verified, stop))
            .console(crate::console::router(gateway.clone()))
            .http(&settings.http.listen, crate::http::router(gateway.clone()));
        // Ready when the upstreams answer their health checks too.
        for (name, channel) in [
            ("auth", gateway.auth.channel.clone()),
            ("notification", gateway.notification.channel.clone()),
            ("billing", gateway.billing.channel.clone()),
        ] {
            parts = parts.ready_when(name, move || upstream_health(channel.clone()));
        }
        parts
    }
}

/// Sets the gRPC health to what the key set allows, re-asserted each tick
/// (the server also sets it when it starts).
async fn report_health(health: tonic_health::server::HealthReporter, gw: Arc<Gateway>, stop: Shutdown) {
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
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// An upstream's answer to its overall health check.
async fn upstream_health(channel: TracedChannel) -> Result<(), String> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
    match client.check(request).await {
        Ok(r) if r.get_ref().status == 1 => Ok(()),
        Ok(r) => Err(format!("status {}", r.get_ref().status)),
        Err(status) => Err(format!("{:?}", status.code())),
    }
}

// How the host runs this service (`main`'s `serve`).
tenx_common::hosted!(App, "tenx-gateway", GatewaySettings, EdgeError);
