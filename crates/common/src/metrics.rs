//! Prometheus metrics: one registry per process (or per test instance),
//! handed to each component that registers its own families.
//!
//! Why `prometheus-client`: it is the Prometheus project's own Rust client,
//! has no heavy dependencies and encodes the OpenMetrics text format.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Metric, Registry};

pub mod exposition;
pub mod otlp;

/// A cloneable handle on the process's metric registry.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// One instance of each [`MetricSet`], so that several components of a
    /// kind (four services' pools in `tenx-dev`) share one family each
    /// instead of registering duplicates.
    sets: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
    /// Samplers of state that lives elsewhere (a queue's depth, a table's
    /// backlog), run at each scrape: see [`Metrics::probe`].
    probes: Arc<Mutex<Vec<Probe>>>,
}

/// A sampler: a future that refreshes its gauges, or `None` once what it
/// samples is gone (it is then dropped).
type Probe = Arc<dyn Fn() -> Option<BoxFuture<'static, ()>> + Send + Sync>;

/// Longest a probe may take at a scrape; one that takes longer leaves its
/// gauges as they were (each probe removes what it could not read).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A group of metric families a component kind registers once per
/// registry; instances tell themselves apart by labels.
pub trait MetricSet: Clone + Send + Sync + 'static {
    fn register(metrics: &Metrics) -> Self;
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers a metric family under `tenx_<name>`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sub_registry_with_prefix("tenx")
            .register(name, help, metric);
    }

    /// The registry's one instance of `T`, registered on first use.
    pub fn set<T: MetricSet>(&self) -> T {
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = sets.get(&TypeId::of::<T>()).and_then(|b| b.downcast_ref::<T>()) {
            return existing.clone();
        }
        let created = T::register(self);
        sets.insert(TypeId::of::<T>(), Box::new(created.clone()));
        created
    }

    /// Adds a sampler run at every [`Metrics::scrape`]: state read from
    /// elsewhere (RabbitMQ, a table) is fresh when Prometheus asks, costs
    /// nothing when nobody does, and needs no interval of its own. The
    /// closure returns `None` once what it samples is gone (hold that by a
    /// `Weak`), and the probe is dropped.
    pub fn probe<F>(&self, probe: F)
    where
        F: Fn() -> Option<BoxFuture<'static, ()>> + Send + Sync + 'static,
    {
        self.probes.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::new(probe));
    }

    /// Runs every probe (concurrently, each bounded by [`PROBE_TIMEOUT`]),
    /// then renders: what `/metrics` serves.
    pub async fn scrape(&self) -> String {
        let running: Vec<_> = {
            let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
            let mut running = Vec::with_capacity(probes.len());
            probes.retain(|probe| match probe() {
                Some(future) => {
                    running.push(tokio::time::timeout(PROBE_TIMEOUT, future));
                    true
                }
                None => false,
            });
            running
        };
        futures_util::future::join_all(running).await;
        self.render()
    }

    /// Renders every registered family in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Implements `EncodeLabelValue` for a field-less enum with the given
/// snake_case texts (Prometheus label values are lowercase by convention;
/// the derive would print the variant names as written).
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl prometheus_client::encoding::EncodeLabelValue for $ty {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, match self { $(Self::$variant => $text),* })
            }
        }
    };
}
pub(crate) use label_values;
