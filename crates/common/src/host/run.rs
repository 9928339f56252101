//! How the host runs [`Parts`]: binds every port, starts the background
//! tasks, the admin port and the servers, and on shutdown drains them in
//! order (readiness fails first, listeners stay open for
//! `server.shutdown_delay_ms`, calls in flight get
//! `server.shutdown_grace_ms`), joins every task and closes the broker.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::parts::{Backend, Parts};
use crate::ops;
use crate::outbox::Relay;
use crate::retention::Retention;
use crate::shutdown::Shutdown;

/// Why a service could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot listen on {what} {addr}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Settings { what: &'static str, message: String },
    #[error("gRPC server")]
    Grpc(#[source] tonic::transport::Error),
    #[error("the service task ended abnormally")]
    Panicked(#[source] tokio::task::JoinError),
    /// The service's own error: building it, or migrating its schema.
    #[error("{0}")]
    Service(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl HostError {
    pub fn service(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Service(Box::new(error))
    }
}

/// A running service: where it listens, and its task, which ends once
/// `shutdown` has drained it.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTP API's address, for a service that serves one.
    pub http_addr: Option<SocketAddr>,
    pub task: tokio::task::JoinHandle<Result<(), HostError>>,
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, HostError> {
    let bound = TcpListener::bind(addr).await;
    bound.map_err(|source| HostError::Bind { what, addr: addr.to_owned(), source })
}

fn local(what: &'static str, listener: &TcpListener) -> Result<SocketAddr, HostError> {
    listener.local_addr().map_err(|source| HostError::Bind { what, addr: String::new(), source })
}

/// Binds `parts`' ports (port 0 picks a free one) and serves them in the
/// background until `shutdown`; every address is connectable when this
/// returns.
pub async fn spawn(parts: Parts, shutdown: Shutdown) -> Result<Running, HostError> {
    let grpc = bind("server.listen", &parts.server.listen.to_string()).await?;
    let admin = bind("server.admin_listen", &parts.server.admin_listen.to_string()).await?;
    let http = match &parts.http {
        Some((listen, _)) => Some(bind("http.listen", listen).await?),
        None => None,
    };
    let (grpc_addr, admin_addr) = (local("server.listen", &grpc)?, local("server.admin_listen", &admin)?);
    let http_addr = http.as_ref().map(|http| local("http.listen", http)).transpose()?;
    match http_addr {
        Some(http_addr) => {
            tracing::info!(%grpc_addr, %admin_addr, %http_addr, service = parts.name, "listening")
        }
        None => tracing::info!(%grpc_addr, %admin_addr, service = parts.name, "listening"),
    }
    let task = tokio::spawn(run(parts, grpc, admin, http, shutdown));
    Ok(Running { grpc_addr, admin_addr, http_addr, task })
}

async fn run(
    parts: Parts,
    grpc: TcpListener,
    admin: TcpListener,
    http: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), HostError> {
    let Parts {
        name,
        server,
        telemetry,
        metrics,
        grpc: grpc_server,
        mut router,
        serving,
        readiness,
        tasks,
        backend,
        console,
        http: http_routes,
    } = parts;
    let mut running = JoinSet::new();
    for task in tasks {
        running.spawn(task(shutdown.child()));
    }
    if let Some(export) = crate::metrics::otlp::exporter(&metrics, name, &telemetry, shutdown.child()) {
        running.spawn(export);
    }
    let amqp = match backend {
        Some(backend) => {
            let amqp = backend.amqp.clone();
            router = start_backend(backend, name, &readiness, router, &mut running, &shutdown);
            Some(amqp)
        }
        None => None,
    };
    let (stop, delay) = (shutdown.child(), server.shutdown_delay());
    let admin_metrics = metrics.clone();
    running.spawn(async move {
        if let Err(error) =
            crate::admin::serve_with(admin, admin_metrics, readiness, stop, delay, console).await
        {
            tracing::error!(%error, "admin server failed");
        }
    });
    if let (Some(listener), Some((_, routes))) = (http, http_routes) {
        running.spawn(serve_http(listener, routes, shutdown.child(), delay, server.shutdown_grace()));
    }
    let served = grpc_server.serve(router, grpc, &serving, &server, shutdown.clone()).await;
    shutdown.trigger();
    while running.join_next().await.is_some() {}
    if let Some(amqp) = amqp {
        amqp.close().await;
    }
    served.map_err(HostError::Grpc)
}

/// Starts what a backend brings and adds its operator RPCs to `router`.
fn start_backend(
    backend: Backend,
    name: &'static str,
    readiness: &crate::admin::Readiness,
    router: crate::grpc::ServiceRouter,
    running: &mut JoinSet<()>,
    shutdown: &Shutdown,
) -> crate::grpc::ServiceRouter {
    let Backend { db, amqp, metrics, outbox, retention, rules, groups, consumers, .. } = backend;
    crate::probes::watch_pools(&metrics, &db);
    let retention = Retention::new(&db, &retention, outbox.retention_hours, rules, &metrics);
    running.spawn(retention.run(shutdown.child()));
    let relay = Relay::new(&db, amqp.clone(), outbox, &metrics);
    running.spawn(relay.run(shutdown.child()));
    for consumer in consumers {
        running.spawn(consumer(shutdown.child()));
    }
    router
        .add_service(ops::status_service(name, metrics, readiness.clone()))
        .add_service(ops::dead_letter_service(amqp.clone(), groups))
        .add_service(ops::event_replay_service(&db, amqp))
}

/// Serves an HTTP API until `stop`, drained like the gRPC port: it keeps
/// accepting for `delay` after the signal (while /readyz says 503 and
/// balancers take the pod out), then stops accepting, and requests in
/// flight get `grace` to finish.
async fn serve_http(
    listener: TcpListener,
    routes: axum::Router,
    stop: Shutdown,
    delay: std::time::Duration,
    grace: std::time::Duration,
) {
    let app = routes.into_make_service_with_connect_info::<SocketAddr>();
    let accepting = stop.clone();
    let served =
        axum::serve(listener, app).with_graceful_shutdown(async move { accepting.after(delay).await });
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
}
