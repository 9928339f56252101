//! tenx-billing: plans, customers, payment methods, subscriptions,
//! invoices, payments, usage and a double-entry ledger.
//! docs/services/billing.md is the design; this crate builds it up.

pub mod app;
pub mod catalog;
pub mod changes;
pub mod clock;
pub mod customers;
pub mod error;
pub mod idempotency;
pub mod invoices;
pub mod jobs;
pub mod ledger;
pub mod lines;
pub mod metrics;
pub mod model;
pub mod payment_methods;
pub mod payments;
pub mod periods;
pub mod prices;
pub mod provider;
pub mod refunds;
pub mod scheduler;
pub mod service;
pub mod settings;
pub mod stripe;
pub mod subscriptions;
pub mod usage;
pub mod webhook;

pub use app::App;
pub use settings::BillingSettings;
pub use tenx_common::host::Running;
