//! The HTTP side port every service exposes: `/metrics` (Prometheus),
//! `/healthz` (the process is alive) and `/readyz` (its dependencies
//! answer — each check really touches Postgres, Redis or RabbitMQ).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Named readiness checks, each bounded by a timeout.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.checks.iter().map(|(n, _)| n)).finish()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// `other`'s checks after these.
    pub fn merge(mut self, other: Readiness) -> Self {
        self.checks.extend(other.checks);
        self
    }

    /// Adds a check; `Err` carries a short reason shown by `/readyz`.
    pub fn check<F, Fut>(mut self, name: &str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name.to_owned(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// The checks every tenx service needs: the primary answers, Redis
    /// answers, RabbitMQ accepts a channel.
    pub fn standard(
        db: std::sync::Arc<crate::db::Db>,
        cache: crate::cache::CacheLayer,
        amqp: crate::queue::Amqp,
    ) -> Self {
        Self::new()
            .check("postgres", move || {
                let db = db.clone();
                async move { db.ping().await.map_err(|e| e.to_string()) }
            })
            .check("redis", move || {
                let cache = cache.clone();
                async move { cache.ping().await.map_err(|e| format!("{:?}", e.kind())) }
            })
            .check("rabbitmq", move || {
                let amqp = amqp.clone();
                async move { amqp.ping().await.map_err(|e| e.to_string()) }
            })
    }

    /// Runs every check, in order: each one's name and outcome.
    pub async fn results(&self) -> Vec<(String, Result<(), String>)> {
        let mut results = Vec::with_capacity(self.checks.len());
        for (name, check) in &self.checks {
            let outcome = match tokio::time::timeout(Duration::from_secs(2), check()).await {
                Ok(result) => result,
                Err(_) => Err("timed out".into()),
            };
            results.push((name.clone(), outcome));
        }
        results
    }

    /// Runs every check; `(all ok, one line per check)`.
    pub async fn run(&self) -> (bool, String) {
        let mut ok = true;
        let mut report = String::new();
        for (name, outcome) in self.results().await {
            match outcome {
                Ok(()) => report.push_str(&format!("{name}: ok\n")),
                Err(reason) => {
                    ok = false;
                    report.push_str(&format!("{name}: {reason}\n"));
                }
            }
        }
        (ok, report)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Readiness,
    shutdown: Shutdown,
}

/// Serves the admin port until `delay` after `shutdown` (the service's
/// `server.shutdown_delay_ms`): meanwhile `/readyz` answers 503 "shutting
/// down", so Kubernetes takes the pod out of its Services while its
/// listeners still accept, and `/metrics` is still scraped.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: Shutdown,
    delay: std::time::Duration,
) -> std::io::Result<()> {
    serve_with(listener, metrics, readiness, shutdown, delay, Router::new()).await
}

/// [`serve`], with `extra` routes beside the standard three (the gateway's
/// operator console).
pub async fn serve_with(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: Shutdown,
    delay: std::time::Duration,
    extra: Router,
) -> std::io::Result<()> {
    let stop = shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AdminState { metrics, readiness, shutdown })
        .merge(extra);
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.after(delay).await }).await
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.scrape().await,
    )
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    if state.shutdown.is_triggered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_owned());
    }
    let (ok, report) = state.readiness.run().await;
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, report)
}
