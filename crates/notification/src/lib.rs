//! tenx-notification: email (SMTP with relay failover) and an in-app
//! inbox, driven by domain events and by `Send`, with per-user
//! preferences (`tenx.notification.v1.NotificationService`).
//!
//! - [`worker`]: consumes events, [`deliver`]: renders, honours
//!   preferences, writes the in-app item, sends the email — once.
//! - [`templates`], [`mailer`], [`preferences`]; [`service`]: the API.
//! - [`batch`]: concurrent deliveries' reads ([`preferences`]) and writes
//!   ([`in_app`]) share one statement.

#![forbid(unsafe_code)]

pub mod app;
pub mod batch;
pub mod billing;
pub mod deliver;
pub mod egress;
pub mod email_log;
pub mod error;
pub mod in_app;
pub mod mailer;
pub mod preferences;
pub mod service;
pub mod settings;
pub mod structs;
pub mod templates;
pub mod webhook_api;
pub mod webhooks;
pub mod worker;

pub use app::App;
pub use settings::NotificationSettings;
pub use tenx_common::host::Running;
