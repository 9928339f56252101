//! Delayed billing work, run by any number of instances: period ends
//! (renewals, trial ends, scheduled cancellations and plan changes),
//! charging issued invoices, the dunning ladder, expiring INCOMPLETE
//! subscriptions and reconciling timed-out payments.
//!
//! Jobs are rows of `billing_jobs` with a `dedupe_key` (one job per
//! boundary is a constraint), claimed with `FOR UPDATE SKIP LOCKED` and a
//! lease; a job's effects and its `done` commit together, so a crash leaves
//! it pending and another instance redoes it. Time is the [`Clock`]'s, so
//! tests move it and call [`Scheduler::run_due`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tenx_common::db::Prepared;

use tenx_common::shutdown::Shutdown;
use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::error::BillingError;
use crate::invoices::{self, NewInvoice, NewLine, Party, enqueue};
use crate::ledger::{self, About, Entry};
use crate::model;
use crate::payments::{self, Attempt, Charged};
use crate::periods;
use crate::refunds;
use crate::service::Core;
use crate::settings::{DunningSettings, SchedulerSettings};
use crate::subscriptions;

/// A CTE, `job`, that deletes the reconcile job whose key is parameter
/// `$key` of something the statement's CTE `settled` just settled: nothing
/// is left for it to do, and a job that never ran is no history worth a
/// row (deleting is also cheaper than an update, which would write a new
/// version of the row and its index entries on every payment). A job
/// running right now (locked) is left alone; it finishes itself. `$now` is
/// the parameter with the time.
macro_rules! delete_reconcile_job {
    ($now:literal, $key:literal) => {
        concat!(
            "job AS (DELETE FROM billing_jobs WHERE dedupe_key = ",
            $key,
            " AND status = 'pending' AND (locked_until IS NULL OR locked_until < ",
            $now,
            ") AND EXISTS (SELECT 1 FROM settled))"
        )
    };
}
pub(crate) use delete_reconcile_job;

/// Adds a job unless one with the same `dedupe_key` exists.
#[allow(clippy::too_many_arguments)]
pub async fn schedule<C: Prepared>(
    tx: &C,
    kind: &str,
    dedupe_key: &str,
    subscription: Option<Uuid>,
    invoice: Option<Uuid>,
    attempt: Option<Uuid>,
    run_at: SystemTime,
    now: SystemTime,
) -> Result<(), BillingError> {
    tx.execute_cached(
        "INSERT INTO billing_jobs (id, kind, dedupe_key, subscription_id, invoice_id, payment_attempt_id, run_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dedupe_key) DO NOTHING",
        &[&Uuid::now_v7(), &kind, &dedupe_key, &subscription, &invoice, &attempt, &run_at, &now],
    )
    .await?;
    Ok(())
}

/// The job that ends a subscription's current period.
pub async fn schedule_period_end<C: Prepared>(
    tx: &C,
    subscription: Uuid,
    end: SystemTime,
    now: SystemTime,
) -> Result<(), BillingError> {
    let secs = end.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let key = format!("period_end:{subscription}:{secs}");
    schedule(tx, "period_end", &key, Some(subscription), None, None, end, now).await
}

#[derive(Debug, Clone)]
struct Job {
    id: Uuid,
    kind: String,
    dedupe_key: String,
    subscription: Option<Uuid>,
    invoice: Option<Uuid>,
    attempt: Option<Uuid>,
    run_at: SystemTime,
    attempts: i32,
}

#[derive(Debug)]
pub struct Scheduler {
    core: Arc<Core>,
    settings: SchedulerSettings,
    dunning: DunningSettings,
    me: String,
}

impl Scheduler {
    pub fn new(core: Arc<Core>, settings: SchedulerSettings, dunning: DunningSettings) -> Self {
        Self { core, settings, dunning, me: format!("billing-{}", Uuid::new_v4().simple()) }
    }

    /// Polls until `shutdown`; sweeps old rows every 60 polls.
    pub async fn run(&self, shutdown: Shutdown) {
        let mut polls: u64 = 0;
        loop {
            if let Err(error) = self.run_due().await {
                tracing::warn!(%error, "billing scheduler poll failed");
            }
            if polls.is_multiple_of(60)
                && let Err(error) = self.sweep().await
            {
                tracing::warn!(%error, "billing sweep failed");
            }
            polls += 1;
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(Duration::from_millis(self.settings.poll_interval_ms)) => {}
            }
        }
    }

    /// Runs every job due now (by the clock), including those the jobs
    /// themselves make due; returns how many ran.
    pub async fn run_due(&self) -> Result<usize, BillingError> {
        let mut ran = 0;
        loop {
            let jobs = self.claim().await?;
            if jobs.is_empty() {
                return Ok(ran);
            }
            for job in jobs {
                ran += 1;
                let outcome = match self.execute(&job).await {
                    Ok(()) => "done",
                    Err(error) => {
                        self.retry_later(&job, &error).await?;
                        "retried"
                    }
                };
                let label = crate::metrics::JobLabel { kind: job.kind.clone(), outcome };
                self.core.metrics.jobs.get_or_create(&label).inc();
            }
        }
    }

    /// Deletes, a batch at a time, idempotency keys past their expiry and
    /// jobs finished more than `scheduler.retention_days` ago; returns how
    /// many of each went.
    pub async fn sweep(&self) -> Result<(u64, u64), BillingError> {
        let now = self.core.clock.now();
        let kept_until = now - Duration::from_secs(self.settings.retention_days * 86_400);
        let conn = self.core.db.write().await?;
        let (mut keys, mut jobs) = (0, 0);
        loop {
            let deleted = conn
                .execute_cached(
                    "DELETE FROM idempotency_keys WHERE (caller, key) IN \
                       (SELECT caller, key FROM idempotency_keys WHERE expires_at < $1 LIMIT 1000)",
                    &[&now],
                )
                .await?;
            keys += deleted;
            if deleted < 1000 {
                break;
            }
        }
        loop {
            let deleted = conn
                .execute_cached(
                    "DELETE FROM billing_jobs WHERE id IN (SELECT id FROM billing_jobs \
                       WHERE status IN ('done', 'canceled') AND finished_at < $1 LIMIT 1000)",
                    &[&kept_until],
                )
                .await?;
            jobs += deleted;
            if deleted < 1000 {
                break;
            }
        }
        // Handled webhook events: a provider retries one for days, not weeks.
        while conn
            .execute_cached(
                "DELETE FROM provider_events WHERE (provider, event_id) IN (SELECT provider, event_id \
                   FROM provider_events WHERE received_at < $1 LIMIT 1000)",
                &[&kept_until],
            )
            .await?
            == 1000
        {}
        Ok((keys, jobs))
    }

    async fn claim(&self) -> Result<Vec<Job>, BillingError> {
        let now = self.core.clock.now();
        let lease = now + Duration::from_secs(self.settings.lease_seconds);
        let rows = self
            .core
            .db
            .write()
            .await?
            .query_cached(
                "UPDATE billing_jobs SET locked_by = $1, locked_until = $2, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM billing_jobs WHERE status = 'pending' AND run_at <= $3 \
                   AND (locked_until IS NULL OR locked_until < $3) ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, kind, dedupe_key, subscription_id, invoice_id, payment_attempt_id, run_at, attempts",
                &[&self.me, &lease, &now, &i64::from(self.settings.batch_size)],
            )
            .await?;
        let mut jobs: Vec<Job> = rows
            .iter()
            .map(|r| Job {
                id: r.get(0),
                kind: r.get(1),
                dedupe_key: r.get(2),
                subscription: r.get(3),
                invoice: r.get(4),
                attempt: r.get(5),
                run_at: r.get(6),
                attempts: r.get(7),
            })
            .collect();
        jobs.sort_by_key(|j| (j.run_at, j.id));
        Ok(jobs)
    }

    async fn retry_later(&self, job: &Job, error: &BillingError) -> Result<(), BillingError> {
        let backoff =
            Duration::from_secs((1u64 << job.attempts.clamp(0, 20)).min(self.settings.max_backoff_seconds));
        tracing::warn!(job = %job.dedupe_key, attempts = job.attempts, %error, "billing job failed; retrying later");
        let now = self.core.clock.now();
        self.core
            .db
            .write()
            .await?
            .execute_cached(
                // A run_at moved while the job ran (a provider's webhook woke
                // it) is kept: that wake-up is not lost to the backoff.
                "UPDATE billing_jobs SET locked_until = $2, last_error = $4, \
                   run_at = CASE WHEN run_at = $5 THEN $3 ELSE run_at END \
                 WHERE id = $1 AND status = 'pending'",
                &[&job.id, &now, &(now + backoff), &error.to_string(), &job.run_at],
            )
            .await?;
        Ok(())
    }

    async fn execute(&self, job: &Job) -> Result<(), BillingError> {
        match (job.kind.as_str(), job.subscription, job.invoice, job.attempt) {
            ("period_end", Some(sub), _, _) => self.period_end(job, sub).await,
            ("incomplete_expiry", Some(sub), _, _) => self.incomplete_expiry(job, sub).await,
            ("charge_invoice", _, Some(invoice), _) => self.collect(job, invoice, "automatic", 0).await,
            ("dunning_retry", _, Some(invoice), _) => {
                let n: usize = job.dedupe_key.rsplit(':').next().and_then(|n| n.parse().ok()).unwrap_or(1);
                self.collect(job, invoice, "dunning", n).await
            }
            ("payment_reconcile", _, _, Some(attempt)) => self.reconcile(job, attempt).await,
            ("refund_reconcile", ..) => match refunds::reconciled_by(&job.dedupe_key) {
                Some(refund) => self.reconcile_refund(job, refund).await,
                None => Err(BillingError::Internal(format!("job {} is malformed", job.dedupe_key))),
            },
            _ => Err(BillingError::Internal(format!("job {} is malformed", job.dedupe_key))),
        }
    }

    /// Marks the job done in `tx`, if this instance still holds it.
    async fn finish<C: Prepared>(&self, tx: &C, job: &Job) -> Result<(), BillingError> {
        let done = tx
            .execute_cached(
                "UPDATE billing_jobs SET status = 'done', finished_at = $3, locked_until = NULL \
                 WHERE id = $1 AND status = 'pending' AND locked_by = $2",
                &[&job.id, &self.me, &self.core.clock.now()],
            )
            .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(BillingError::Internal(format!("job {} was taken over", job.dedupe_key)))
        }
    }

    /// The end of a period: the subscription moves on (trial → active,
    /// a pending plan change applies, or a scheduled cancellation ends
    /// it), revenue of the ended period is recognized, and the renewal is
    /// invoiced and queued for charging.
    async fn period_end(&self, job: &Job, sub: Uuid) -> Result<(), BillingError> {
        let now = self.core.clock.now();
        let mut conn = self.core.db.write().await?;
        let tx = conn.transaction().await?;
        let row = tx
            .query_one_cached(
                "SELECT s.status, s.customer_id, s.price_id, s.pending_price_id, s.billing_cycle_anchor, s.cycle_index, \
                        s.current_period_end, s.cancel_at_period_end FROM subscriptions s WHERE s.id = $1 FOR UPDATE",
                &[&sub],
            )
            .await?;
        // A plan change waiting for its payment decides the next period:
        // the renewal waits for it (retried with backoff).
        crate::changes::change_waiting(&tx, sub).await?;
        let status: String = row.get(0);
        let boundary: SystemTime = row.get(6);
        // The boundary this job was made for is in its key (its run_at
        // moves when a failed run is retried later).
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let due =
            job.dedupe_key.rsplit(':').next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(secs(job.run_at));
        // Stale (the period moved on) or over: nothing to do.
        if status == "canceled" || secs(boundary) != due {
            self.finish(&tx, job).await?;
            tx.commit().await?;
            return Ok(());
        }
        let customer: Uuid = row.get(1);
        let price_id: Uuid = row.get::<_, Option<Uuid>>(3).unwrap_or(row.get(2));
        let price = subscriptions::price(&tx, price_id).await?;
        let party = Party::load(&tx, customer, &price.plan_name).await?;
        recognize_revenue(&tx, sub, now).await?;

        // Usage of the ended period, at the price in force during it.
        let ending = row.get::<_, bool>(7);
        let usage = if ending {
            crate::usage::final_line(&tx, sub, row.get(2), boundary).await?
        } else {
            crate::usage::pending_line(&tx, sub, row.get(2), boundary).await?
        };
        if ending {
            // The final invoice bills what usage is left.
            if let Some(line) = usage {
                let final_invoice = NewInvoice {
                    party: &party,
                    subscription: Some(sub),
                    reason: "subscription_cancel",
                    currency: &price.currency,
                    period: (line.period.0, boundary),
                    lines: vec![line],
                };
                let invoice = invoices::issue(&tx, now, final_invoice).await?;
                tx.execute_cached(
                    "UPDATE subscriptions SET latest_invoice_id = $2 WHERE id = $1",
                    &[&sub, &invoice],
                )
                .await?;
                charge_later(&tx, sub, invoice, now).await?;
            }
            tx.execute_cached(
                "UPDATE subscriptions SET status = 'canceled', ended_at = $2, cancellation_reason = 'requested', \
                   pending_price_id = NULL, pending_change_at = NULL, updated_at = $3 WHERE id = $1",
                &[&sub, &boundary, &now],
            )
            .await?;
            let event = pb::SubscriptionCanceled {
                subscription: Some(model::load_subscription(&tx, sub).await?),
                previous_status: model::subscription_status(&status) as i32,
                user_id: party.user_id.to_string(),
                email: party.email.clone(),
                plan_name: party.plan_name.clone(),
            };
            enqueue(&tx, sub, &event).await?;
            cancel_jobs(&tx, sub, now, job.id).await?;
            self.finish(&tx, job).await?;
            tx.commit().await?;
            return Ok(());
        }

        let (anchor, cycle) = if status == "trialing" {
            (boundary, 0)
        } else {
            (row.get::<_, SystemTime>(4), row.get::<_, i32>(5) + 1)
        };
        let period = periods::period(anchor, price.months, i64::from(cycle));
        let next_status = if status == "trialing" { "active" } else { status.as_str() };
        tx.execute_cached(
            "UPDATE subscriptions SET status = $2, price_id = $3, pending_price_id = NULL, pending_change_at = NULL, \
               billing_cycle_anchor = $4, cycle_index = $5, current_period_start = $6, current_period_end = $7, updated_at = $8 \
             WHERE id = $1",
            &[&sub, &next_status, &price.id, &anchor, &cycle, &period.0, &period.1, &now],
        )
        .await?;
        // UNPAID subscriptions roll without new invoices; free ones have
        // nothing to bill.
        // UNPAID subscriptions roll without new invoices (their usage stays
        // unbilled until one is issued again); free ones bill only usage.
        let mut lines: Vec<NewLine> = usage.into_iter().collect();
        if price.amount_minor > 0 {
            lines.push(NewLine {
                kind: "subscription",
                description: format!("{} ({}ly)", price.plan_name, price.interval),
                price_id: price.id,
                quantity: 1,
                unit_amount_minor: price.amount_minor,
                amount_minor: price.amount_minor,
                period,
                claim_before: None,
            });
        }
        let renewal = NewInvoice {
            party: &party,
            subscription: Some(sub),
            reason: "subscription_cycle",
            currency: &price.currency,
            period,
            lines,
        };
        if next_status != "unpaid" && renewal.bills_something() {
            let invoice = invoices::issue(&tx, now, renewal).await?;
            tx.execute_cached(
                "UPDATE subscriptions SET latest_invoice_id = $2 WHERE id = $1",
                &[&sub, &invoice],
            )
            .await?;
            charge_later(&tx, sub, invoice, now).await?;
        }
        schedule_period_end(&tx, sub, period.1, now).await?;
        let subscription = model::load_subscription(&tx, sub).await?;
        let event = party.subscription_updated(subscription, &status, row.get::<_, Uuid>(2).to_string());
        enqueue(&tx, sub, &event).await?;
        self.finish(&tx, job).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An automatic charge (`automatic`) or dunning retry `n` of an invoice.
    async fn collect(
        &self,
        job: &Job,
        invoice: Uuid,
        initiated_by: &str,
        n: usize,
    ) -> Result<(), BillingError> {
        let now = self.core.clock.now();
        let attempt = {
            let mut conn = self.core.db.write().await?;
            let tx = conn.transaction().await?;
            let what = payments::Begin { invoice, owner: None, method: None, initiated_by, claim: None };
            match payments::begin(&tx, now, what, self.core.policy()).await {
                Ok(attempt) => {
                    tx.commit().await?;
                    attempt
                }
                // Paid (or voided) meanwhile: nothing to collect.
                Err(BillingError::Refused { reason: "INVOICE_NOT_PAYABLE", .. }) => {
                    drop(tx);
                    let tx = conn.transaction().await?;
                    self.finish(&tx, job).await?;
                    tx.commit().await?;
                    return Ok(());
                }
                Err(BillingError::Refused { reason: "PAYMENT_METHOD_REQUIRED", .. }) => {
                    drop(tx);
                    let tx = conn.transaction().await?;
                    self.record_no_method(&tx, invoice, initiated_by, now).await?;
                    customer_failed(&self.dunning, &tx, invoice, n, now, job.id).await?;
                    self.finish(&tx, job).await?;
                    tx.commit().await?;
                    return Ok(());
                }
                Err(other) => return Err(other),
            }
        };
        let charged = payments::call_provider(
            &self.core.db,
            self.core.provider.as_ref(),
            &attempt,
            false,
            self.core.provider_timeout,
        )
        .await;
        self.core.metrics.attempt(charged.outcome_name(), initiated_by);
        self.conclude(job, &attempt, &charged, n).await
    }

    /// Records the outcome of a scheduler charge and moves dunning.
    async fn conclude(
        &self,
        job: &Job,
        attempt: &Attempt,
        charged: &Charged,
        n: usize,
    ) -> Result<(), BillingError> {
        let now = self.core.clock.now();
        let mut conn = self.core.db.write().await?;
        let tx = conn.transaction().await?;
        match charged {
            // The attempt's reconcile job (written with it) finds out.
            Charged::Timeout | Charged::Processing => self.finish(&tx, job).await?,
            Charged::Unavailable(message) => {
                // Not the customer's fault: record it, and try again later
                // without moving the ladder.
                payments::settle(&tx, now, attempt, charged).await?;
                tx.commit().await?;
                return Err(BillingError::Provider { reason: "PROVIDER_ERROR", message: message.clone() });
            }
            Charged::Outcome(_) | Charged::NotFound => {
                let settled = payments::settle(&tx, now, attempt, charged).await?;
                // A customer's own failed payment is only reported to
                // them; automatic collection moves the dunning ladder, once
                // (a settlement that came first already moved it).
                let declined_now = settled == payments::Settled::Now { paid: false };
                if declined_now
                    && matches!(charged, Charged::Outcome(_))
                    && attempt.initiated_by != "customer"
                {
                    customer_failed(&self.dunning, &tx, attempt.invoice_id, n, now, job.id).await?;
                }
                self.finish(&tx, job).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_no_method<C: Prepared>(
        &self,
        tx: &C,
        invoice: Uuid,
        initiated_by: &str,
        now: SystemTime,
    ) -> Result<(), BillingError> {
        tx.execute_cached(
            "INSERT INTO payment_attempts (id, invoice_id, customer_id, amount_minor, currency, status, failure_code, \
               failure_message, initiated_by, provider, created_at, completed_at) \
             SELECT $1, id, customer_id, amount_due_minor - amount_paid_minor, currency, 'failed', 'no_payment_method', \
               'no payment method to charge', $2, $3, $4, $4 FROM invoices WHERE id = $5",
            &[&Uuid::now_v7(), &initiated_by, &self.core.provider.name(), &now, &invoice],
        )
        .await?;
        tx.execute_cached("UPDATE invoices SET attempt_count = attempt_count + 1 WHERE id = $1", &[&invoice])
            .await?;
        Ok(())
    }

    async fn incomplete_expiry(&self, job: &Job, sub: Uuid) -> Result<(), BillingError> {
        let now = self.core.clock.now();
        let mut conn = self.core.db.write().await?;
        let tx = conn.transaction().await?;
        let status: String = tx
            .query_one_cached("SELECT status FROM subscriptions WHERE id = $1 FOR UPDATE", &[&sub])
            .await?
            .get(0);
        // A payment still in flight (a bank debit Stripe is processing, or
        // one its reconcile job has yet to settle) may yet succeed: the
        // expiry waits for it rather than void an invoice being paid.
        let paying: bool = tx
            .query_one_cached(
                "SELECT EXISTS (SELECT 1 FROM payment_attempts a JOIN invoices i ON i.id = a.invoice_id \
                 WHERE i.subscription_id = $1 AND a.status = 'pending')",
                &[&sub],
            )
            .await?
            .get(0);
        if status == "incomplete" && paying {
            return Err(BillingError::Busy {
                reason: "PAYMENT_IN_PROGRESS",
                message: "a payment of the incomplete subscription is still being settled".into(),
                retry_after: Duration::from_secs(60),
            });
        }
        if status == "incomplete" {
            let s = model::load_subscription(&tx, sub).await?;
            let price = subscriptions::price(&tx, s.price_id.parse().unwrap_or_default()).await?;
            let customer: Uuid = s.customer_id.parse().unwrap_or_default();
            let party = Party::load(&tx, customer, &price.plan_name).await?;
            for row in tx
                .query_cached(
                    "SELECT id FROM invoices WHERE subscription_id = $1 AND status = 'open'",
                    &[&sub],
                )
                .await?
            {
                void(&tx, row.get(0), now).await?;
            }
            set_status(&tx, sub, &["incomplete"], "canceled", Some("incomplete_expired"), now, &party)
                .await?;
            cancel_jobs(&tx, sub, now, job.id).await?;
        }
        self.finish(&tx, job).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An attempt still pending when its reconcile job is due (its
    /// request was cancelled, timed out or crashed): the provider is asked
    /// what became of it, by its id, and the answer settled. No answer:
    /// the job is retried with backoff and the attempt stays pending (a
    /// second charge of the invoice is refused meanwhile).
    async fn reconcile(&self, job: &Job, attempt: Uuid) -> Result<(), BillingError> {
        let mut conn = self.core.db.write().await?;
        let pending = payments::pending(&*conn, attempt).await?;
        let Some(attempt) = pending else {
            let tx = conn.transaction().await?;
            self.finish(&tx, job).await?;
            tx.commit().await?;
            return Ok(());
        };
        // The retry of the ladder this attempt was (0: automatic).
        let n: i32 = conn
            .query_opt_cached(
                "SELECT retries_done + 1 FROM dunning_states WHERE invoice_id = $1 AND status = 'active'",
                &[&attempt.invoice_id],
            )
            .await?
            .map_or(0, |r| r.get(0));
        drop(conn);
        let charged = payments::call_provider(
            &self.core.db,
            self.core.provider.as_ref(),
            &attempt,
            true,
            self.core.provider_timeout,
        )
        .await;
        self.core.metrics.attempt(charged.outcome_name(), "reconcile");
        if let Charged::Timeout | Charged::Processing = charged {
            return Err(BillingError::Provider {
                reason: "PROVIDER_TIMEOUT",
                message: format!("attempt {} is still unknown at the provider", attempt.id),
            });
        }
        let n = if attempt.initiated_by == "dunning" { usize::try_from(n).unwrap_or(0) } else { 0 };
        self.conclude(job, &attempt, &charged, n).await
    }

    /// A refund still pending when its job comes due (its answer was lost,
    /// or the process died before it came back, and nobody retried): the
    /// provider is asked by the refund's id (its idempotency key; a refund
    /// it never saw is made now, as the operator asked) and the answer is
    /// settled. No answer: retried with backoff.
    async fn reconcile_refund(&self, job: &Job, refund: Uuid) -> Result<(), BillingError> {
        let pending = refunds::pending(&*self.core.db.write().await?, refund).await?;
        let Some(refund) = pending else {
            let mut conn = self.core.db.write().await?;
            let tx = conn.transaction().await?;
            self.finish(&tx, job).await?;
            tx.commit().await?;
            return Ok(());
        };
        let outcome =
            refunds::ask_provider(self.core.provider.as_ref(), &refund, true, self.core.provider_timeout)
                .await?;
        let mut conn = self.core.db.write().await?;
        let tx = conn.transaction().await?;
        refunds::settle(&tx, self.core.clock.now(), &refund, &outcome).await?;
        self.finish(&tx, job).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Queues the automatic charge of an issued invoice, when it owes anything.
pub async fn charge_later<C: Prepared>(
    tx: &C,
    sub: Uuid,
    invoice: Uuid,
    now: SystemTime,
) -> Result<(), BillingError> {
    let due: i64 =
        tx.query_one_cached("SELECT amount_due_minor FROM invoices WHERE id = $1", &[&invoice]).await?.get(0);
    if due > 0 {
        schedule(
            tx,
            "charge_invoice",
            &format!("charge:{invoice}"),
            Some(sub),
            Some(invoice),
            None,
            now,
            now,
        )
        .await?;
    }
    Ok(())
}

/// Ends a live subscription now: CANCELED with `reason`, deferred revenue
/// recognized, its pending jobs canceled, `billing.subscription.canceled`.
pub async fn end_now<C: Prepared>(
    tx: &C,
    sub: Uuid,
    reason: &str,
    now: SystemTime,
    party: &Party,
) -> Result<(), BillingError> {
    let live = ["trialing", "active", "past_due", "unpaid", "incomplete"];
    set_status(tx, sub, &live, "canceled", Some(reason), now, party).await?;
    recognize_revenue(tx, sub, now).await?;
    cancel_jobs(tx, sub, now, Uuid::nil()).await
}

/// Moves a subscription from one of `from` to `to`, with its event.
async fn set_status<C: Prepared>(
    tx: &C,
    sub: Uuid,
    from: &[&str],
    to: &str,
    reason: Option<&str>,
    now: SystemTime,
    party: &Party,
) -> Result<(), BillingError> {
    let previous: String =
        tx.query_one_cached("SELECT status FROM subscriptions WHERE id = $1", &[&sub]).await?.get(0);
    if !from.contains(&previous.as_str()) {
        return Ok(());
    }
    tx.execute_cached(
        "UPDATE subscriptions SET status = $2, cancellation_reason = $3, \
           ended_at = CASE WHEN $2 = 'canceled' THEN $4::timestamptz END, \
           canceled_at = CASE WHEN $2 = 'canceled' THEN COALESCE(canceled_at, $4::timestamptz) ELSE canceled_at END, \
           updated_at = $4 WHERE id = $1",
        &[&sub, &to, &reason, &now],
    )
    .await?;
    let subscription = model::load_subscription(tx, sub).await?;
    if to == "canceled" {
        let event = pb::SubscriptionCanceled {
            subscription: Some(subscription),
            previous_status: model::subscription_status(&previous) as i32,
            user_id: party.user_id.to_string(),
            email: party.email.clone(),
            plan_name: party.plan_name.clone(),
        };
        enqueue(tx, sub, &event).await
    } else {
        let price = subscription.price_id.clone();
        let event = party.subscription_updated(subscription, &previous, price);
        enqueue(tx, sub, &event).await
    }
}

/// Fills in `next_retry_at` / `final` of the `billing.payment.failed`
/// event the failed attempt just wrote (same transaction).
async fn announce_next_retry<C: Prepared>(
    tx: &C,
    invoice: Uuid,
    next: Option<SystemTime>,
    last: bool,
) -> Result<(), BillingError> {
    let row = tx
        .query_opt_cached(
            "SELECT id, payload FROM tenx_outbox WHERE event_type = 'billing.payment.failed' AND aggregate_id = $1 \
             ORDER BY seq DESC LIMIT 1",
            &[&invoice.to_string()],
        )
        .await?;
    let Some(row) = row else { return Ok(()) };
    let mut event = <pb::PaymentFailed as prost::Message>::decode(row.get::<_, Vec<u8>>(1).as_slice())
        .map_err(|e| BillingError::Internal(e.to_string()))?;
    event.next_retry_at = next.map(Into::into);
    event.r#final = last;
    tx.execute_cached(
        "UPDATE tenx_outbox SET payload = $2 WHERE id = $1",
        &[&row.get::<_, Uuid>(0), &prost::Message::encode_to_vec(&event)],
    )
    .await?;
    Ok(())
}

/// Moves a subscription's deferred revenue to earned revenue.
async fn recognize_revenue<C: Prepared>(tx: &C, sub: Uuid, now: SystemTime) -> Result<(), BillingError> {
    let rows = tx
        .query_cached(
            "SELECT currency::text, COALESCE(sum(amount_minor), 0)::bigint FROM ledger_entries \
             WHERE subscription_id = $1 AND account = 'deferred_revenue' GROUP BY currency",
            &[&sub],
        )
        .await?;
    for row in rows {
        let (currency, balance): (String, i64) = (row.get(0), row.get(1));
        if balance != 0 {
            let entries = [Entry::deferred(sub, -balance), Entry::plain("revenue_subscriptions", balance)];
            let about = About { subscription: Some(sub), ..About::default() };
            ledger::post(tx, "revenue_recognized", about, currency.trim(), "period end", &entries, now)
                .await?;
        }
    }
    Ok(())
}

/// Writes off what is left of an invoice: UNCOLLECTIBLE, Dr bad debt / Cr
/// receivable.
async fn write_off<C: Prepared>(
    tx: &C,
    invoice: Uuid,
    customer: Uuid,
    now: SystemTime,
) -> Result<(), BillingError> {
    let row = tx
        .query_one_cached(
            "UPDATE invoices SET status = 'uncollectible', marked_uncollectible_at = $2, updated_at = $2 \
             WHERE id = $1 RETURNING currency::text, amount_due_minor - amount_paid_minor",
            &[&invoice, &now],
        )
        .await?;
    let (currency, remaining): (String, i64) = (row.get(0), row.get(1));
    if remaining > 0 {
        let entries = [
            Entry::plain("bad_debt", remaining),
            Entry::customer("accounts_receivable", customer, -remaining),
        ];
        let about = About { invoice: Some(invoice), ..About::default() };
        ledger::post(tx, "invoice_written_off", about, currency.trim(), "dunning exhausted", &entries, now)
            .await?;
    }
    Ok(())
}

/// Voids an open invoice: the exact reversal of its finalization entries.
pub(crate) async fn void<C: Prepared>(tx: &C, invoice: Uuid, now: SystemTime) -> Result<(), BillingError> {
    tx.execute_cached(
        "UPDATE invoices SET status = 'void', voided_at = $2, updated_at = $2 WHERE id = $1",
        &[&invoice, &now],
    )
    .await?;
    let finalized = tx
        .query_opt_cached(
            "SELECT id FROM ledger_transactions WHERE invoice_id = $1 AND kind = 'invoice_finalized'",
            &[&invoice],
        )
        .await?;
    if let Some(txn) = finalized {
        let original: Uuid = txn.get(0);
        let reversal = Uuid::now_v7();
        tx.execute_cached(
            "INSERT INTO ledger_transactions (id, kind, invoice_id, reverses_transaction_id, description, posted_at) \
             VALUES ($1, 'invoice_voided', $2, $3, 'void', $4)",
            &[&reversal, &invoice, &original, &now],
        )
        .await?;
        tx.execute_cached(
            "INSERT INTO ledger_entries (id, transaction_id, account, customer_id, subscription_id, currency, amount_minor, posted_at) \
             SELECT gen_random_uuid(), $1, account, customer_id, subscription_id, currency, -amount_minor, $3 \
             FROM ledger_entries WHERE transaction_id = $2",
            &[&reversal, &original, &now],
        )
        .await?;
    }
    Ok(())
}

/// Cancels a subscription's pending jobs (it ended).
async fn cancel_jobs<C: Prepared>(
    tx: &C,
    sub: Uuid,
    now: SystemTime,
    running: Uuid,
) -> Result<(), BillingError> {
    tx.execute_cached(
        "UPDATE billing_jobs SET status = 'canceled', finished_at = $2 \
         WHERE subscription_id = $1 AND status = 'pending' AND id <> $3 \
           AND kind IN ('period_end', 'incomplete_expiry', 'dunning_retry')",
        &[&sub, &now, &running],
    )
    .await?;
    Ok(())
}

/// A customer-side failure of automatic collection: the first starts
/// dunning (ACTIVE → PAST_DUE); each schedules the next retry of the
/// ladder; the last ends it with `dunning.final_action`.
pub async fn customer_failed<C: Prepared>(
    dunning: &DunningSettings,
    tx: &C,
    invoice: Uuid,
    retries_done: usize,
    now: SystemTime,
    job: Uuid,
) -> Result<(), BillingError> {
    let row = tx
        .query_one_cached("SELECT subscription_id, customer_id FROM invoices WHERE id = $1", &[&invoice])
        .await?;
    let (sub, customer): (Option<Uuid>, Uuid) = (row.get(0), row.get(1));
    tx.execute_cached(
        "INSERT INTO dunning_states (invoice_id, subscription_id, status, started_at) VALUES ($1, $2, 'active', $3) \
         ON CONFLICT (invoice_id) DO NOTHING",
        &[&invoice, &sub, &now],
    )
    .await?;
    let started: SystemTime = tx
        .query_one_cached("SELECT started_at FROM dunning_states WHERE invoice_id = $1", &[&invoice])
        .await?
        .get(0);
    let days = &dunning.retry_days;
    let next = days.get(retries_done).map(|d| started + Duration::from_secs(u64::from(*d) * 86_400));
    let plan = match sub {
        Some(s) => subscriptions::price(
            tx,
            model::load_subscription(tx, s).await?.price_id.parse().unwrap_or_default(),
        )
        .await
        .map(|p| p.plan_name)
        .unwrap_or_default(),
        None => String::new(),
    };
    let party = Party::load(tx, customer, &plan).await?;
    let retries = i32::try_from(retries_done).unwrap_or(i32::MAX);
    match next {
        Some(at) => {
            tx.execute_cached(
                "UPDATE dunning_states SET retries_done = $2, next_retry_at = $3 WHERE invoice_id = $1",
                &[&invoice, &retries, &at],
            )
            .await?;
            tx.execute_cached(
                "UPDATE invoices SET next_payment_attempt_at = $2 WHERE id = $1",
                &[&invoice, &at],
            )
            .await?;
            let key = format!("dunning:{invoice}:{}", retries_done + 1);
            schedule(tx, "dunning_retry", &key, sub, Some(invoice), None, at, now).await?;
            if let Some(s) = sub {
                set_status(tx, s, &["active"], "past_due", None, now, &party).await?;
            }
        }
        None => {
            tx.execute_cached(
                "UPDATE dunning_states SET status = 'exhausted', retries_done = $2, next_retry_at = NULL, ended_at = $3 \
                 WHERE invoice_id = $1",
                &[&invoice, &retries, &now],
            )
            .await?;
            tx.execute_cached(
                "UPDATE invoices SET next_payment_attempt_at = NULL WHERE id = $1",
                &[&invoice],
            )
            .await?;
            if dunning.final_action == "cancel" {
                write_off(tx, invoice, customer, now).await?;
                if let Some(s) = sub {
                    // Usage accepted before the end is still billed, once.
                    let current = model::load_subscription(tx, s).await?;
                    let price: Uuid = current.price_id.parse().unwrap_or_default();
                    if let Some(line) = crate::usage::final_line(tx, s, price, now).await? {
                        let final_invoice = NewInvoice {
                            party: &party,
                            subscription: Some(s),
                            reason: "subscription_cancel",
                            currency: &current.currency,
                            period: (line.period.0, now),
                            lines: vec![line],
                        };
                        invoices::issue(tx, now, final_invoice).await?;
                    }
                    set_status(
                        tx,
                        s,
                        &["past_due", "active"],
                        "canceled",
                        Some("payment_failed"),
                        now,
                        &party,
                    )
                    .await?;
                    recognize_revenue(tx, s, now).await?;
                    cancel_jobs(tx, s, now, job).await?;
                }
            } else if let Some(s) = sub {
                set_status(tx, s, &["past_due"], "unpaid", None, now, &party).await?;
            }
        }
    }
    // The payment.failed event of this attempt says what happens next.
    announce_next_retry(tx, invoice, next, next.is_none()).await
}
