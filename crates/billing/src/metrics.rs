//! Billing's own metrics, beside the common RED, pool, outbox and queue
//! ones: payment outcomes, usage outcomes, idempotency results, jobs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tenx_common::metrics::{MetricSet, Metrics};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AttemptLabel {
    pub outcome: &'static str,
    pub initiated_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JobLabel {
    pub kind: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct BillingMetrics {
    pub payment_attempts: Family<AttemptLabel, Counter>,
    pub usage_records: Family<OutcomeLabel, Counter>,
    pub idempotency: Family<OutcomeLabel, Counter>,
    pub jobs: Family<JobLabel, Counter>,
}

impl MetricSet for BillingMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register(
            "billing_payment_attempts",
            "Payment attempts by outcome (succeeded, card_declined, insufficient_funds, provider_error, \
             timeout, not_found_at_provider) and who started them",
            set.payment_attempts.clone(),
        );
        metrics.register(
            "billing_usage_records",
            "Usage records by outcome (accepted, duplicate, conflict)",
            set.usage_records.clone(),
        );
        metrics.register(
            "billing_idempotency",
            "Mutating calls by idempotency result (new, replayed, reused, in_use)",
            set.idempotency.clone(),
        );
        metrics.register(
            "billing_jobs",
            "Scheduler jobs run, by kind and outcome (done, retried)",
            set.jobs.clone(),
        );
        set
    }
}

impl BillingMetrics {
    pub fn attempt(&self, outcome: &'static str, initiated_by: &str) {
        self.payment_attempts
            .get_or_create(&AttemptLabel { outcome, initiated_by: initiated_by.to_owned() })
            .inc();
    }
}
