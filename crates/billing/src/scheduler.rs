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
use crate::jobs::{
    cancel_jobs, charge_later, customer_failed, recognize_revenue, schedule_period_end, set_status, void,
};
use crate::model;
use crate::payments::{self, Attempt, Charged};
use crate::periods;
use crate::refunds;
use crate::service::Core;
use crate::settings::{DunningSettings, SchedulerSettings};

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
        let price = crate::prices::price(&tx, price_id).await?;
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
                let final_invoice = NewInvoice::final_usage(&party, sub, &price.currency, line, boundary);
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
            let price = crate::prices::price(&tx, s.price_id.parse().unwrap_or_default()).await?;
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
