//! Delivering one notification: render, honour preferences, write the
//! in-app item, send the email — each step idempotent by a dedupe key, so
//! a redelivered event or a retried send never doubles anything.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tenx_common::cache::Cache;
use tenx_common::db::{Db, Prepared};
use tenx_common::metrics::{MetricSet, Metrics};
use tenx_proto::notification::v1::Channel;
use uuid::Uuid;

use crate::in_app::{InAppWriter, Item, WriteError};
use crate::mailer::{Email, Mailer};
use crate::preferences::{self, Preferences, channel_label};
use crate::templates::{EmailParts, TemplateError, Templates};

/// One notification to deliver.
#[derive(Debug, Clone)]
pub struct Job {
    /// The event id or Send id: the same job delivers once.
    pub dedupe: String,
    pub user_id: Uuid,
    pub email: String,
    pub template: String,
    pub data: Value,
    pub channels: Vec<Channel>,
    /// Whether a failure now is final (the message goes to the dead-letter
    /// queue) rather than retried; only counted, never changes the work.
    pub last_attempt: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// Will never work (unknown template, missing variable).
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Will never be stored (the database refused the rendered content,
    /// e.g. a NUL character): no use retrying.
    #[error("{0}")]
    Rejected(String),
    /// May work later (database or every SMTP relay down).
    #[error("{0}")]
    Transient(String),
}

impl From<tokio_postgres::Error> for DeliverError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Transient(e.to_string())
    }
}

impl From<WriteError> for DeliverError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Refused(reason) => Self::Rejected(reason),
            WriteError::Unavailable(reason) => Self::Transient(reason),
        }
    }
}

impl From<tenx_common::db::DbError> for DeliverError {
    fn from(e: tenx_common::db::DbError) -> Self {
        Self::Transient(e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabel {
    channel: &'static str,
}

/// Per-channel outcomes (`email`, `in_app`, `webhook`), shared by every
/// sender of one registry.
#[derive(Clone, Default)]
pub(crate) struct DeliveryMetrics {
    sent: Family<ChannelLabel, Counter>,
    failed: Family<ChannelLabel, Counter>,
    skipped: Family<ChannelLabel, Counter>,
    retried: Family<ChannelLabel, Counter>,
    dead_lettered: Family<ChannelLabel, Counter>,
}

impl DeliveryMetrics {
    pub(crate) fn sent(&self, channel: &'static str) {
        self.sent.get_or_create(&ChannelLabel { channel }).inc();
    }

    /// One failed attempt, then either a retry later or a dead letter.
    pub(crate) fn failed(&self, channel: &'static str, last_attempt: bool) {
        let label = ChannelLabel { channel };
        self.failed.get_or_create(&label).inc();
        let next = if last_attempt { &self.dead_lettered } else { &self.retried };
        next.get_or_create(&label).inc();
    }
}

impl MetricSet for DeliveryMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register("notification_sent", "Notifications delivered, by channel", set.sent.clone());
        metrics.register(
            "notification_failed",
            "Failed delivery attempts (e.g. an SMTP relay), by channel",
            set.failed.clone(),
        );
        metrics.register(
            "notification_skipped",
            "Notifications not sent because the user muted them",
            set.skipped.clone(),
        );
        metrics.register(
            "notification_retried",
            "Failed attempts that will be tried again later, by channel",
            set.retried.clone(),
        );
        metrics.register(
            "notification_dead_lettered",
            "Failed last attempts: the message went to the dead-letter queue, by channel",
            set.dead_lettered.clone(),
        );
        set
    }
}

pub struct Deliverer {
    pub db: Arc<Db>,
    pub templates: Arc<Templates>,
    pub mailer: Mailer,
    pub preferences: Cache<Preferences>,
    /// Preferences of concurrent deliveries' users share one query.
    pub(crate) reader: preferences::Reader,
    /// In-app items of concurrent deliveries share one INSERT.
    in_app: InAppWriter,
    metrics: DeliveryMetrics,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

impl Deliverer {
    /// Also starts the preferences reader and the in-app writer, so it
    /// needs a Tokio runtime.
    pub fn new(
        db: Arc<Db>,
        templates: Arc<Templates>,
        mailer: Mailer,
        preferences: Cache<Preferences>,
        metrics: &Metrics,
    ) -> Self {
        let (reader, in_app) = (preferences::Reader::spawn(db.clone()), InAppWriter::spawn(db.clone()));
        Self { db, templates, mailer, preferences, reader, in_app, metrics: metrics.set() }
    }

    /// Channels of `channels` the user has not muted for `template`.
    pub async fn allowed(
        &self,
        user: Uuid,
        template: &str,
        channels: &[Channel],
    ) -> Result<Vec<Channel>, DeliverError> {
        let kind =
            self.templates.kind(template).ok_or_else(|| TemplateError::Unknown(template.to_owned()))?;
        if kind.critical {
            return Ok(channels.to_vec());
        }
        let prefs = preferences::load(&self.preferences, &self.reader, user)
            .await
            .map_err(|e| DeliverError::Transient(e.to_string()))?;
        Ok(channels.iter().copied().filter(|c| prefs.enabled(kind.category, *c)).collect())
    }

    pub async fn deliver(&self, job: &Job) -> Result<(), DeliverError> {
        let allowed = self.allowed(job.user_id, &job.template, &job.channels).await?;
        let rendered = self.templates.render_for(&job.template, &job.data, &allowed)?;
        for channel in &job.channels {
            if !allowed.contains(channel) {
                self.metrics.skipped.get_or_create(&ChannelLabel { channel: channel_label(*channel) }).inc();
            }
        }
        // Rendered only for the channels allowed, so a part is one to send.
        if let Some((title, body)) = &rendered.in_app {
            let item = Item {
                user_id: job.user_id,
                category: rendered.kind.category.to_owned(),
                title: title.clone(),
                body: body.clone(),
                dedupe_key: format!("{}:in_app", job.dedupe),
            };
            if self.in_app.write(item).await? {
                self.metrics.sent("in_app");
            }
        }
        if let Some(email) = &rendered.email {
            self.email(job, email).await?;
        }
        Ok(())
    }

    /// Sends the email unless this job's email was already sent. The
    /// delivery row stays locked while the relay accepts the message, so
    /// two deliveries of one job cannot both send.
    async fn email(&self, job: &Job, rendered: &EmailParts) -> Result<(), DeliverError> {
        let key = format!("{}:email", job.dedupe);
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        tx.execute_cached(
            "INSERT INTO email_deliveries (id, dedupe_key, user_id, to_address, template) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (dedupe_key) DO NOTHING",
            &[&Uuid::now_v7(), &key, &job.user_id, &job.email, &job.template],
        )
        .await?;
        let status: String = tx
            .query_one_cached("SELECT status FROM email_deliveries WHERE dedupe_key = $1 FOR UPDATE", &[&key])
            .await?
            .get(0);
        // Pending, or failed and redriven: send. Sent: never again.
        if status == "sent" {
            return Ok(());
        }
        let digest = Sha256::digest(key.as_bytes());
        let message_id =
            format!("<{}@tenx>", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>());
        let email = Email {
            to: &job.email,
            subject: &rendered.subject,
            text: &rendered.text,
            html: &rendered.html,
            message_id: &message_id,
        };
        match self.mailer.send(&email).await {
            Ok(relay) => {
                tx.execute_cached(
                    "UPDATE email_deliveries SET status = 'sent', relay = $2, sent_at = now(), attempts = attempts + 1 \
                     WHERE dedupe_key = $1",
                    &[&key, &relay],
                )
                .await?;
                tx.commit().await?;
                self.metrics.sent("email");
                Ok(())
            }
            Err(reason) => {
                // The last attempt's failure makes it `failed`: the event
                // is dead-lettered, and RedriveEmail finds it by this.
                tx.execute_cached(
                    "UPDATE email_deliveries SET attempts = attempts + 1, last_error = $2, \
                     status = CASE WHEN $3 THEN 'failed' ELSE 'pending' END WHERE dedupe_key = $1",
                    &[&key, &reason, &job.last_attempt],
                )
                .await?;
                tx.commit().await?;
                self.metrics.failed("email", job.last_attempt);
                Err(DeliverError::Transient(format!("every SMTP relay failed: {reason}")))
            }
        }
    }
}
