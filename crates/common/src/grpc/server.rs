//! A gRPC server with what every tenx service serves besides its own API:
//! grpc.health.v1, reflection (v1 and v1alpha: grpcurl 1.8 speaks only
//! the latter), the [`RpcLayer`], and graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use super::RpcLayer;
use crate::authn::AuthnLayer;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Settings under `server.`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// gRPC listen address, e.g. `0.0.0.0:50051`.
    pub listen: SocketAddr,
    /// Metrics and health over HTTP, e.g. `0.0.0.0:9091`.
    pub admin_listen: SocketAddr,
    /// After SIGTERM, keep serving (health NOT_SERVING) this long so load
    /// balancers stop sending new calls before the listener closes.
    #[serde(default)]
    pub shutdown_delay_ms: u64,
    /// Then wait at most this long for in-flight calls to finish.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}

impl ServerSettings {
    /// `shutdown_delay_ms`: how long every listener (gRPC, HTTP, admin)
    /// keeps accepting after shutdown fires.
    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    /// `shutdown_grace_ms`: then how long calls in flight may take.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// The router every service adds its own API to: the RPC span and metrics
/// outside, so refusals are counted, then authentication.
pub type ServiceRouter = Router<Stack<AuthnLayer, Stack<RpcLayer, Identity>>>;

/// Builds and runs one service's gRPC server.
#[derive(Clone)]
pub struct GrpcServer {
    health: HealthReporter,
    health_service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    layer: RpcLayer,
    authn: AuthnLayer,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer").finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// `authn` guards every tenx RPC the server will serve
    /// ([`AuthnLayer::verify`] for a service's API).
    pub fn new(slow_request: Duration, metrics: &Metrics, authn: AuthnLayer) -> Self {
        let health = HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        Self { health, health_service, layer: RpcLayer::new(slow_request, metrics), authn }
    }

    /// The health reporter, to flip a service's status (e.g. while a
    /// dependency is down).
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// A router with health and reflection (for every tenx proto) already
    /// in it; add the service's own API, then [`GrpcServer::serve`].
    pub fn router(&self) -> ServiceRouter {
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tenx_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Building from valid embedded descriptors cannot fail.
        let v1 = reflection().build_v1().ok();
        let v1alpha = reflection().build_v1alpha().ok();
        tonic::transport::Server::builder()
            .layer(self.layer.clone())
            .layer(self.authn.clone())
            .add_service(self.health_service.clone())
            .add_optional_service(v1)
            .add_optional_service(v1alpha)
    }

    /// Like [`GrpcServer::router`], with `fallback` answering every method
    /// no added service owns (the gateway's proxy of public RPCs).
    pub fn router_with_fallback<S>(&self, fallback: S) -> ServiceRouter
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tenx_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let mut routes = tonic::service::Routes::new(self.health_service.clone());
        if let Ok(v1) = reflection().build_v1() {
            routes = routes.add_service(v1);
        }
        if let Ok(v1alpha) = reflection().build_v1alpha() {
            routes = routes.add_service(v1alpha);
        }
        let fallback = tower::ServiceExt::map_request(fallback, |req: http::Request<axum::body::Body>| {
            req.map(tonic::body::Body::new)
        });
        let routes = tonic::service::Routes::from(routes.into_axum_router().fallback_service(fallback));
        // HTTP/1.1 too: gRPC-Web clients (browsers) speak it.
        tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(self.layer.clone())
            .layer(self.authn.clone())
            .add_routes(routes)
    }

    /// Serves `router` on `listener` until `shutdown`; `services` are the
    /// fully-qualified names whose health it reports (plus the overall
    /// `""`). On shutdown: health goes NOT_SERVING, the listener stays
    /// open for `shutdown_delay`, then closes, and in-flight calls get up
    /// to `shutdown_grace` to finish.
    pub async fn serve(
        &self,
        router: ServiceRouter,
        listener: TcpListener,
        services: &[&str],
        settings: &ServerSettings,
        shutdown: Shutdown,
    ) -> Result<(), tonic::transport::Error> {
        let names: Vec<String> =
            std::iter::once(String::new()).chain(services.iter().map(|s| (*s).to_owned())).collect();
        for name in &names {
            self.health.set_service_status(name, ServingStatus::Serving).await;
        }
        let health = self.health.clone();
        let (delay, grace) = (settings.shutdown_delay(), settings.shutdown_grace());
        let signal = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.wait().await;
                for name in &names {
                    health.set_service_status(name, ServingStatus::NotServing).await;
                }
                shutdown.after(delay).await;
                tracing::info!("gRPC server draining in-flight calls");
            }
        };
        // No Nagle: a unary reply is several small HTTP/2 frames, and
        // delayed ACKs would add ~40 ms to every sequential call.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let server = router.serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result,
            () = shutdown.after(delay + grace) => {
                tracing::warn!(grace_ms = settings.shutdown_grace_ms, "drain deadline passed; dropping calls still in flight");
                Ok(())
            }
        }
    }
}
