//! Collecting an invoice. An attempt is committed as `pending` before the
//! provider is called and its id is the provider's idempotency key, so a
//! crash or a timeout is resolved by asking the provider (never by
//! charging again); the database allows one attempt in flight and one
//! success per invoice.
//!
//! The same transaction writes the attempt's `payment_reconcile` job, due
//! `provider.reconcile_after_seconds` later: whatever happens to the
//! request or the process in between, the scheduler then asks the
//! provider what became of the attempt and settles it.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};
use tenx_common::db::Prepared;

use tenx_proto::billing::v1 as pb;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::error::BillingError;
use crate::idempotency::{Claim, NewKey};
use crate::invoices::{self, Party, enqueue};
use crate::ledger::{self, About, Entry};
use crate::model;
use crate::provider::{ChargeOutcome, ChargeRequest, Decline, PaymentProvider, ProviderError};
use tenx_common::db::Db;
use tenx_common::outbox::NewEvent;

/// An attempt in flight.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: Uuid,
    pub invoice_id: Uuid,
    pub provider_ref: String,
    pub amount_minor: i64,
    pub currency: String,
    /// `customer`, `automatic` or `dunning`.
    pub initiated_by: String,
    /// The provider's record of it ([`PaymentProvider::prepare`]), once
    /// stored: an attempt without one was never charged.
    pub intent: Option<String>,
}

impl Attempt {
    fn charge_request(&self) -> ChargeRequest<'_> {
        ChargeRequest {
            attempt_id: self.id,
            provider_ref: &self.provider_ref,
            amount_minor: self.amount_minor,
            currency: &self.currency,
            intent: self.intent.as_deref(),
        }
    }
}

/// What every new attempt is recorded with.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The provider's name, stored on the attempt.
    pub provider: &'static str,
    /// When the attempt's reconcile job is due, after its creation.
    pub reconcile_after: Duration,
}

/// What to begin: which invoice, on whose behalf, with which card.
#[derive(Debug, Clone, Copy)]
pub struct Begin<'a> {
    pub invoice: Uuid,
    /// The customer's user, when the invoice must be theirs (a customer's
    /// own request): another's invoice is "not found", as a missing one.
    pub owner: Option<Uuid>,
    /// The card to charge; by default the subscription's, then the
    /// customer's default.
    pub method: Option<Uuid>,
    /// `customer`, `automatic` or `dunning`.
    pub initiated_by: &'a str,
    /// The idempotency key of the request, pointed at the new attempt
    /// (recovery point `charge_pending`) in the same statement.
    pub claim: Option<&'a Claim>,
}

impl<'a> Begin<'a> {
    /// A customer's payment of their own invoice (another's is "not
    /// found", as a missing one).
    pub fn by_customer(invoice: Uuid, user: Uuid, method: Option<Uuid>, claim: Option<&'a Claim>) -> Self {
        Self { invoice, owner: Some(user), method, initiated_by: "customer", claim }
    }
}

/// The start of [`BEGIN`] and [`BEGIN_CLAIMING`]: `inv` locks the invoice
/// (a concurrent payment waits here, then sees the invoice as that one
/// left it) and `pm` is the card to charge, if any. `$1` invoice, `$2`
/// owner, `$3` method.
macro_rules! begin_ctes {
    () => {
        "WITH inv AS (\
          SELECT i.id, i.status, i.customer_id, i.currency, i.amount_due_minor - i.amount_paid_minor AS remaining, \
                 COALESCE($3::uuid, s.default_payment_method_id, c.default_payment_method_id) AS method \
          FROM invoices i JOIN customers c ON c.id = i.customer_id \
          LEFT JOIN subscriptions s ON s.id = i.subscription_id \
          WHERE i.id = $1 AND ($2::uuid IS NULL OR c.user_id = $2) FOR UPDATE OF i), \
        pm AS (SELECT m.id, m.provider_ref FROM payment_methods m JOIN inv \
          ON m.id = inv.method AND m.customer_id = inv.customer_id WHERE m.detached_at IS NULL), "
    };
}

/// When the invoice `inv` can be paid with the card `pm`: the one test the
/// attempt's insert and (in [`BEGIN_CLAIMING`]) the key's recovery point
/// both use, so the two cannot disagree.
macro_rules! payable {
    () => {
        "inv.status IN ('open', 'uncollectible') AND inv.remaining > 0"
    };
}

/// The pending attempt (`$4`, started by `$5`, provider `$6`, at `$7`) and
/// its reconcile job (`$8`, key `$9`, due `$10`), when the invoice is payable
/// and `$cond` holds; `attempt` returns its id.
macro_rules! attempt_ctes {
    ($cond:literal) => {
        concat!(
            "attempt AS (INSERT INTO payment_attempts (id, invoice_id, customer_id, payment_method_id, amount_minor, \
                currency, status, initiated_by, provider, created_at) \
              SELECT $4, inv.id, inv.customer_id, pm.id, inv.remaining, inv.currency, 'pending', $5, $6, $7 \
              FROM inv CROSS JOIN pm WHERE ",
            payable!(),
            " AND ",
            $cond,
            " RETURNING id), \
            job AS (INSERT INTO billing_jobs (id, kind, dedupe_key, invoice_id, payment_attempt_id, run_at, created_at) \
              SELECT $8, 'payment_reconcile', $9, $1, attempt.id, $10, $7 FROM attempt \
              ON CONFLICT (dedupe_key) DO NOTHING), "
        )
    };
}

/// What the last SELECT of both reports, from which [`attempt_of`] says
/// which check failed.
macro_rules! begin_report {
    () => {
        "inv.status, inv.currency, inv.remaining, inv.method, pm.provider_ref, \
         EXISTS (SELECT 1 FROM attempt) AS begun"
    };
}

/// The attempt of an already held key (`$11` caller, `$12` key, if any),
/// whose recovery point moves to `charge_pending` in the same statement.
const BEGIN: &str = concat!(
    begin_ctes!(),
    attempt_ctes!("true"),
    "progress AS (UPDATE idempotency_keys k SET recovery_point = 'charge_pending', resource_id = attempt.id \
       FROM attempt WHERE k.caller = $11 AND k.key = $12) \
     SELECT ",
    begin_report!(),
    " FROM inv LEFT JOIN pm ON true"
);

/// The attempt of a new key (`$11` caller, `$12` key, `$13` method, `$14`
/// request hash, held until `$15`, kept until `$16`), inserted in the same
/// statement at the recovery point it reaches: the attempt is only
/// recorded when the key was new. Reports a row whatever happened, with
/// `claimed`.
const BEGIN_CLAIMING: &str = concat!(
    begin_ctes!(),
    "payable AS (SELECT EXISTS (SELECT 1 FROM inv CROSS JOIN pm WHERE ",
    payable!(),
    ") AS yes), \
     claimed AS (INSERT INTO idempotency_keys (caller, key, method, request_hash, status, recovery_point, \
         resource_id, locked_until, created_at, expires_at) \
       SELECT $11, $12, $13, $14, 'in_progress', CASE WHEN payable.yes THEN 'charge_pending' ELSE 'started' END, \
         CASE WHEN payable.yes THEN $4::uuid END, $15, $7, $16 FROM payable \
       ON CONFLICT (caller, key) DO NOTHING RETURNING 1), ",
    attempt_ctes!("EXISTS (SELECT 1 FROM claimed)"),
    "report AS (SELECT ",
    begin_report!(),
    " FROM inv LEFT JOIN pm ON true) \
     SELECT report.*, EXISTS (SELECT 1 FROM claimed) AS claimed FROM (SELECT) AS one LEFT JOIN report ON true"
);

/// Locks the invoice, checks it can be paid, picks the payment method and
/// records a `pending` attempt, its reconcile job and (with a claim) the
/// key's recovery point — in one statement, so it is atomic on its own
/// (a customer's payment needs no transaction around it) and costs one
/// round trip. Inside the caller's transaction when there is one.
pub async fn begin<C: Prepared>(
    tx: &C,
    now: SystemTime,
    what: Begin<'_>,
    policy: Policy,
) -> Result<Attempt, BillingError> {
    let new = NewAttempt::new(&what, policy, now);
    let (caller, key) = what.claim.map(|c| (c.caller.as_str(), c.key.as_str())).unzip();
    let key_params: [&(dyn ToSql + Sync); 2] = [&caller, &key];
    let row = tx
        .query_opt_cached(BEGIN, &[&new.params()[..], &key_params[..]].concat())
        .await
        .map_err(in_progress)?;
    let id = new.id;
    attempt_of(row.as_ref(), id, &what)
}

/// `$1`…`$10` of [`BEGIN`] and [`BEGIN_CLAIMING`]: what is begun, and
/// the new attempt's id and reconcile job.
struct NewAttempt<'a> {
    what: &'a Begin<'a>,
    provider: &'static str,
    now: SystemTime,
    id: Uuid,
    job: Uuid,
    job_key: String,
    job_due: SystemTime,
}

impl<'a> NewAttempt<'a> {
    fn new(what: &'a Begin<'a>, policy: Policy, now: SystemTime) -> Self {
        let id = Uuid::now_v7();
        Self {
            what,
            provider: policy.provider,
            now,
            id,
            job: Uuid::now_v7(),
            job_key: reconcile_key(id),
            job_due: now + policy.reconcile_after,
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        let what = self.what;
        [
            &what.invoice,
            &what.owner,
            &what.method,
            &self.id,
            &what.initiated_by,
            &self.provider,
            &self.now,
            &self.job,
            &self.job_key,
            &self.job_due,
        ]
    }
}

/// What [`begin_claiming`] did with a key it inserted.
#[derive(Debug)]
pub struct Claiming {
    /// The key, this request's now.
    pub claim: Claim,
    /// The attempt, or why the invoice cannot be paid (to store under the
    /// key).
    pub begun: Result<Attempt, BillingError>,
}

/// [`begin`] for a request whose idempotency key is new, claimed in the
/// same statement ([`BEGIN_CLAIMING`]): the common case of a payment costs
/// one round trip and one commit less. `what.claim` is not used. `None`:
/// the key was there already (an earlier request's) and nothing was done;
/// claim it the usual way.
pub async fn begin_claiming<C: Prepared>(
    conn: &C,
    now: SystemTime,
    what: Begin<'_>,
    policy: Policy,
    key: &NewKey,
) -> Result<Option<Claiming>, BillingError> {
    let new = NewAttempt::new(&what, policy, now);
    let (locked_until, expires_at) = (now + key.lease, now + key.ttl);
    let key_params: [&(dyn ToSql + Sync); 6] =
        [&key.caller, &key.key, &key.method, &key.hash, &locked_until, &expires_at];
    let row = conn
        .query_one_cached(BEGIN_CLAIMING, &[&new.params()[..], &key_params[..]].concat())
        .await
        .map_err(in_progress)?;
    let id = new.id;
    if !row.get::<_, bool>("claimed") {
        return Ok(None);
    }
    // No invoice (or not the caller's): the report's columns are NULL.
    let found = row.get::<_, Option<String>>("status").is_some();
    let attempt = attempt_of(found.then_some(&row), id, &what);
    let claim = match &attempt {
        Ok(attempt) => key.claim("charge_pending", Some(attempt.id)),
        Err(_) => key.claim("started", None),
    };
    Ok(Some(Claiming { claim, begun: attempt }))
}

/// Another attempt of the invoice is pending (its unique index refused
/// this one): the statement changed nothing.
fn in_progress(error: tokio_postgres::Error) -> BillingError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return BillingError::Busy {
            reason: "PAYMENT_IN_PROGRESS",
            message: "another payment of this invoice is in progress".into(),
            retry_after: Duration::from_secs(1),
        };
    }
    error.into()
}

/// The attempt [`begin_report`] says was recorded as `id`, or which check
/// refused it. `None`: no such invoice of the owner.
fn attempt_of(
    row: Option<&tokio_postgres::Row>,
    id: Uuid,
    what: &Begin<'_>,
) -> Result<Attempt, BillingError> {
    let row = row.ok_or(BillingError::NotFound("invoice"))?;
    let status: String = row.get("status");
    let remaining: i64 = row.get("remaining");
    if !matches!(status.as_str(), "open" | "uncollectible") || remaining <= 0 {
        return Err(BillingError::refused(
            "INVOICE_NOT_PAYABLE",
            format!("the invoice is {status}; nothing to pay"),
        ));
    }
    if row.get::<_, Option<Uuid>>("method").is_none() {
        return Err(BillingError::refused("PAYMENT_METHOD_REQUIRED", "add a payment method first"));
    }
    let provider_ref: String =
        row.get::<_, Option<String>>("provider_ref").ok_or(BillingError::NotFound("payment method"))?;
    if !row.get::<_, bool>("begun") {
        return Err(BillingError::Internal("a payable invoice's attempt was not recorded".into()));
    }
    Ok(Attempt {
        id,
        invoice_id: what.invoice,
        provider_ref,
        amount_minor: remaining,
        currency: row.get::<_, String>("currency").trim().to_owned(),
        initiated_by: what.initiated_by.to_owned(),
        intent: None,
    })
}

/// A pending attempt (to resume after a timeout or a crash).
pub async fn pending<C: Prepared>(db: &C, attempt: Uuid) -> Result<Option<Attempt>, BillingError> {
    let row = db
        .query_opt_cached(
            "SELECT a.id, a.invoice_id, a.amount_minor, a.currency, m.provider_ref, a.initiated_by, a.provider_intent_id \
             FROM payment_attempts a \
             JOIN payment_methods m ON m.id = a.payment_method_id WHERE a.id = $1 AND a.status = 'pending'",
            &[&attempt],
        )
        .await?;
    Ok(row.map(|r| Attempt {
        id: r.get(0),
        invoice_id: r.get(1),
        amount_minor: r.get(2),
        currency: r.get::<_, String>(3).trim().to_owned(),
        provider_ref: r.get(4),
        initiated_by: r.get(5),
        intent: r.get(6),
    }))
}

/// What the provider said.
#[derive(Debug, Clone)]
pub enum Charged {
    Outcome(ChargeOutcome),
    /// Certainly not charged.
    Unavailable(String),
    /// Unknown (no answer, or a lookup that failed): the attempt stays
    /// pending.
    Timeout,
    /// A pending attempt the provider never saw: not charged.
    NotFound,
    /// Accepted by the provider, outcome later: the attempt stays pending
    /// for its reconcile job (woken early by the provider's webhook).
    Processing,
}

impl Charged {
    /// The outcome label of metrics.
    pub fn outcome_name(&self) -> &'static str {
        match self {
            Charged::Outcome(ChargeOutcome::Succeeded { .. }) => "succeeded",
            Charged::Outcome(ChargeOutcome::Declined(Decline::CardDeclined)) => "card_declined",
            Charged::Outcome(ChargeOutcome::Declined(Decline::InsufficientFunds)) => "insufficient_funds",
            Charged::Outcome(ChargeOutcome::Processing) => "processing",
            Charged::Unavailable(_) => "provider_error",
            Charged::Timeout => "timeout",
            Charged::NotFound => "not_found_at_provider",
            Charged::Processing => "processing",
        }
    }
}

/// Charges (or, when `resume`, looks up) an attempt at the provider,
/// bounded by `timeout`. A lookup that fails says nothing about the
/// charge, so it is unknown ([`Charged::Timeout`]), never "not charged".
///
/// A provider that keeps its own record of a charge gets it made first
/// ([`PaymentProvider::prepare`]) and its id stored on the attempt before
/// any money can move, so a lookup after a crash always knows where to look.
pub async fn call_provider(
    db: &Db,
    provider: &dyn PaymentProvider,
    attempt: &Attempt,
    resume: bool,
    timeout: Duration,
) -> Charged {
    let call = async {
        if resume {
            return provider
                .retrieve(attempt.id, attempt.intent.as_deref())
                .await
                .map(|o| o.map_or(Charged::NotFound, Charged::from));
        }
        let mut request = attempt.charge_request();
        let prepared;
        if request.intent.is_none() {
            prepared = provider.prepare(request).await?;
            if let Some(intent) = &prepared {
                record_intent(db, attempt.id, intent).await?;
            }
            request.intent = prepared.as_deref();
        }
        provider.charge(request).await.map(Charged::from)
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) | Ok(Err(ProviderError::Timeout)) => Charged::Timeout,
        Ok(Err(ProviderError::Unavailable(_) | ProviderError::Rejected(_))) if resume => Charged::Timeout,
        Ok(Err(ProviderError::Unavailable(m) | ProviderError::Rejected(m))) => Charged::Unavailable(m),
        Ok(Ok(charged)) => charged,
    }
}

impl From<ChargeOutcome> for Charged {
    fn from(outcome: ChargeOutcome) -> Self {
        match outcome {
            ChargeOutcome::Processing => Charged::Processing,
            settled => Charged::Outcome(settled),
        }
    }
}

/// Stores the provider's record of a pending attempt. Until this commits
/// nothing is charged, so a failure here is "certainly not charged".
async fn record_intent(db: &Db, attempt: Uuid, intent: &str) -> Result<(), ProviderError> {
    let recorded = async {
        let conn = db.write().await?;
        conn.execute_cached(
            "UPDATE payment_attempts SET provider_intent_id = $2 WHERE id = $1 AND status = 'pending'",
            &[&attempt, &intent],
        )
        .await
        .map_err(BillingError::from)
    };
    match recorded.await {
        Ok(1) => Ok(()),
        Ok(_) => {
            Err(ProviderError::Unavailable("the attempt was settled meanwhile; nothing was charged".into()))
        }
        Err(error) => {
            tracing::warn!(%attempt, %error, "could not record the provider's record of an attempt; not charging it");
            Err(ProviderError::Unavailable("could not record the charge; nothing was charged".into()))
        }
    }
}

/// What settling an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// This call recorded the outcome: whether the invoice is now paid.
    Now { paid: bool },
    /// Another settlement came first (a racing retry or reconciler): only
    /// it acts on the outcome (events, dunning).
    Before { paid: bool },
    /// No outcome yet (a timeout, or a payment still processing).
    Pending,
}

/// Records the provider's answer, in the caller's transaction: the
/// attempt, the invoice, the ledger, the subscription and the events.
pub async fn settle<C: Prepared>(
    tx: &C,
    now: SystemTime,
    attempt: &Attempt,
    charged: &Charged,
) -> Result<Settled, BillingError> {
    let settlement = settle_reading(tx, now, attempt, charged).await?;
    invoices::enqueue_all(tx, &settlement.events).await?;
    Ok(settlement.settled)
}

/// What [`settle_reading`] did and left to do.
#[derive(Debug)]
#[must_use = "its events must be enqueued in the same transaction"]
pub struct Settlement {
    pub settled: Settled,
    /// The invoice as this settlement paid it (read for the events anyway),
    /// so a reply need not read it again.
    pub paid: Option<pb::Invoice>,
    /// Events still to enqueue in the caller's transaction, so they can go
    /// out pipelined with the caller's last statements.
    pub events: Vec<NewEvent>,
}

/// [`settle`], leaving the settlement's events to the caller.
pub async fn settle_reading<C: Prepared>(
    tx: &C,
    now: SystemTime,
    attempt: &Attempt,
    charged: &Charged,
) -> Result<Settlement, BillingError> {
    let only = |settled| Settlement { settled, paid: None, events: Vec::new() };
    let (status, charge_id, failure, message) = match charged {
        Charged::Timeout | Charged::Processing | Charged::Outcome(ChargeOutcome::Processing) => {
            return Ok(only(Settled::Pending));
        }
        Charged::Outcome(ChargeOutcome::Succeeded { charge_id }) => {
            ("succeeded", Some(charge_id.as_str()), None, Some(""))
        }
        Charged::Outcome(ChargeOutcome::Declined(Decline::CardDeclined)) => {
            ("failed", None, Some("card_declined"), Some("the card was declined"))
        }
        Charged::Outcome(ChargeOutcome::Declined(Decline::InsufficientFunds)) => {
            ("failed", None, Some("insufficient_funds"), Some("the card has insufficient funds"))
        }
        Charged::Unavailable(_) => {
            ("failed", None, Some("provider_error"), Some("the payment provider failed; nothing was charged"))
        }
        Charged::NotFound => {
            ("failed", None, Some("not_found_at_provider"), Some("the provider has no record of this charge"))
        }
    };
    // One settlement per attempt, in one statement: the attempt leaves
    // `pending` (a retry's lookup and the reconciler may race; the second
    // waits for the first's row lock, then finds it settled and changes
    // nothing), and its reconcile job, with nothing left to do, is deleted
    // (unless it is the one settling it, and then it finishes itself). A
    // success pays the invoice in the same statement ([`SETTLE_AND_PAY`]).
    let key = reconcile_key(attempt.id);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
        [&attempt.id, &status, &charge_id, &failure, &message, &now, &key];
    let row = match charge_id {
        Some(_) => {
            let pay: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&attempt.invoice_id, &attempt.amount_minor];
            tx.query_one_cached(SETTLE_AND_PAY, &[&params[..], &pay[..]].concat()).await?
        }
        None => tx.query_one_cached(SETTLE, &params).await?,
    };
    if !row.get::<_, bool>("settled") {
        // Settled by someone else: paid or not, as it was. Read in a
        // statement of its own, whose snapshot sees the other settlement
        // (the one above may predate its commit).
        let paid: bool = tx
            .query_one_cached(
                "SELECT status = 'succeeded' FROM payment_attempts WHERE id = $1",
                &[&attempt.id],
            )
            .await?
            .get(0);
        return Ok(only(Settled::Before { paid }));
    }
    if let Some(charge_id) = charge_id {
        let (Some(was), Some(customer)) = (row.get("was"), row.get("customer_id")) else {
            return Err(BillingError::Internal(format!(
                "attempt {} settled without its invoice",
                attempt.id
            )));
        };
        let paid = Paid { was, customer, subscription: row.get("subscription_id") };
        let (invoice, events) = succeed(tx, now, attempt, charge_id, paid).await?;
        return Ok(Settlement { settled: Settled::Now { paid: true }, paid: Some(invoice), events });
    }
    let (failure, message) = (failure.unwrap_or("provider_error"), message.unwrap_or_default());
    tx.execute_cached(
        "UPDATE invoices SET attempt_count = attempt_count + 1, updated_at = $2 WHERE id = $1",
        &[&attempt.invoice_id, &now],
    )
    .await?;
    // Only the customer's side is announced: provider trouble is retried
    // without bothering them.
    if matches!(failure, "card_declined" | "insufficient_funds") {
        let (invoice, party, initiated_by, last4, _) = context(tx, attempt).await?;
        let (amount_due_display, exponent) =
            model::display(tx, &invoice.currency, invoice.amount_remaining_minor).await?;
        let event = pb::PaymentFailed {
            invoice_id: invoice.id.clone(),
            invoice_number: invoice.number.clone(),
            subscription_id: invoice.subscription_id.clone(),
            customer_id: invoice.customer_id.clone(),
            user_id: party.user_id.to_string(),
            email: party.email.clone(),
            payment_attempt_id: attempt.id.to_string(),
            amount_due_minor: invoice.amount_remaining_minor,
            currency: invoice.currency.clone(),
            amount_due_display,
            currency_exponent: Some(exponent),
            failure_code: if failure == "card_declined" {
                pb::PaymentFailureCode::CardDeclined as i32
            } else {
                pb::PaymentFailureCode::InsufficientFunds as i32
            },
            failure_message: message.into(),
            initiated_by,
            attempt_count: invoice.attempt_count,
            next_retry_at: None,
            r#final: false,
            plan_name: party.plan_name,
            card_last4: last4,
        };
        enqueue(tx, attempt.invoice_id, &event).await?;
    }
    // A plan change is never kept unpaid: the one this invoice was for (if
    // any) is abandoned and its invoice voided.
    crate::changes::abandon_unpaid(tx, attempt.invoice_id, now).await?;
    Ok(only(Settled::Now { paid: false }))
}

/// What the events of an attempt's settlement say: the invoice, whose it
/// is, what started the attempt, and the card (last 4, brand).
async fn context<C: Prepared>(
    tx: &C,
    attempt: &Attempt,
) -> Result<(pb::Invoice, Party, i32, String, String), BillingError> {
    // The invoice's head and the rest in one row, pipelined with the
    // invoice's lines and attempts: one round trip, three statements.
    static HEAD: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT inv.*, a.initiated_by, m.last4, m.brand, COALESCE(pl.name, '') AS plan_name, \
                    c.user_id, c.email \
             FROM (SELECT {} FROM invoices WHERE id = $2) AS inv \
             JOIN payment_attempts a ON a.invoice_id = inv.id JOIN payment_methods m ON m.id = a.payment_method_id \
             JOIN customers c ON c.id = inv.customer_id \
             LEFT JOIN subscriptions s ON s.id = inv.subscription_id LEFT JOIN prices p ON p.id = s.price_id \
             LEFT JOIN plans pl ON pl.id = p.plan_id WHERE a.id = $1",
            model::INVOICE_COLUMNS
        )
    });
    let (invoice, row) =
        model::load_invoice_headed(tx, attempt.invoice_id, &HEAD, &[&attempt.id, &attempt.invoice_id])
            .await?;
    let party = Party {
        customer_id: row.get("customer_id"),
        user_id: row.get("user_id"),
        email: row.get("email"),
        plan_name: row.get("plan_name"),
    };
    let trigger = match row.get::<_, String>("initiated_by").as_str() {
        "automatic" => pb::PaymentTrigger::Automatic,
        "dunning" => pb::PaymentTrigger::Dunning,
        _ => pb::PaymentTrigger::Customer,
    };
    Ok((invoice, party, trigger as i32, row.get("last4"), row.get("brand")))
}

/// What [`SETTLE_AND_PAY`] paid.
struct Paid {
    /// The invoice's status before (`open` or `uncollectible`).
    was: String,
    customer: Uuid,
    subscription: Option<Uuid>,
}

/// The key of an attempt's reconcile job.
pub fn reconcile_key(attempt: Uuid) -> String {
    format!("reconcile:{attempt}")
}

/// Settles an attempt (`$1`…`$7`, see [`settle_reading`]).
macro_rules! settle_ctes {
    () => {
        concat!(
            "WITH settled AS (UPDATE payment_attempts SET status = $2, provider_charge_id = $3, failure_code = $4, \
               failure_message = $5, completed_at = $6 WHERE id = $1 AND status = 'pending' RETURNING id), ",
            crate::jobs::delete_reconcile_job!("$6", "$7")
        )
    };
}

const SETTLE: &str = concat!(settle_ctes!(), " SELECT EXISTS (SELECT 1 FROM settled) AS settled");

/// A success, in one statement with its settlement (which it needs:
/// nothing is paid unless this call settled the attempt): the invoice
/// (`$8`) is paid `$9`; what it was before decides which account the
/// money settles.
const SETTLE_AND_PAY: &str = concat!(
    settle_ctes!(),
    ", was AS (SELECT id, status FROM invoices WHERE id = $8 AND EXISTS (SELECT 1 FROM settled) FOR UPDATE), \
     paid AS (UPDATE invoices i SET status = 'paid', amount_paid_minor = i.amount_paid_minor + $9, \
         paid_at = $6, attempt_count = i.attempt_count + 1, next_payment_attempt_at = NULL, updated_at = $6 \
       FROM was WHERE i.id = was.id RETURNING was.status AS was, i.customer_id, i.subscription_id) \
     SELECT EXISTS (SELECT 1 FROM settled) AS settled, paid.was, paid.customer_id, paid.subscription_id \
     FROM (SELECT) AS one LEFT JOIN paid ON true"
);

/// After [`SETTLE_AND_PAY`], in a statement of its own: its snapshot is
/// taken after the invoice's lock was, so it sees what a transaction that
/// held the lock meanwhile wrote (e.g. the dunning a failed automatic
/// charge just started). The payment's ledger transaction
/// ([`ledger::posting_ctes`], `$1`…`$14`) is posted; dunning of the invoice
/// (`$15`) is over and its remaining retries are moot; its subscription
/// (`$16`), if it owed money and now owes none, is active again — locked
/// when it may change (an active one is left alone: apply_paid locks what
/// it changes) — at `$17`. Returns the subscription's status before and
/// the subscription as it is now, when it was reactivated.
static PAID_AND_POSTED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, \
         recovered AS (UPDATE dunning_states SET status = 'recovered', next_retry_at = NULL, ended_at = $17 \
           WHERE invoice_id = $15 AND status = 'active'), \
         retries AS (UPDATE billing_jobs SET status = 'canceled', finished_at = $17 WHERE invoice_id = $15 \
           AND kind = 'dunning_retry' AND status = 'pending' AND locked_until IS NULL), \
         prev AS (SELECT id, status FROM subscriptions WHERE id = $16 FOR UPDATE), \
         reactivated AS (UPDATE subscriptions s SET status = 'active', updated_at = $17 FROM prev \
           WHERE s.id = prev.id AND prev.status IN ('incomplete', 'past_due', 'unpaid') AND NOT EXISTS \
             (SELECT 1 FROM invoices i WHERE i.subscription_id = s.id AND i.status IN ('open', 'uncollectible')) \
           RETURNING prev.status AS reactivated_from, s.*) \
        SELECT s.reactivated_from, {} FROM (SELECT) AS one LEFT JOIN reactivated s ON true \
          LEFT JOIN prices p ON p.id = s.price_id",
        ledger::posting_ctes!(),
        model::SUBSCRIPTION_COLUMNS
    )
});

/// The rest of a success, after [`SETTLE_AND_PAY`]: the ledger, the events
/// and the plan change the invoice paid for. Returns the invoice as paid
/// and the events still to enqueue (none when a plan change was applied:
/// its own events must follow them, so they were enqueued first).
async fn succeed<C: Prepared>(
    tx: &C,
    now: SystemTime,
    attempt: &Attempt,
    charge_id: &str,
    paid: Paid,
) -> Result<(pb::Invoice, Vec<NewEvent>), BillingError> {
    let Paid { was, customer, subscription } = paid;
    // A written-off invoice paid later is a recovery of bad debt.
    let settled = if was == "uncollectible" { "bad_debt" } else { "accounts_receivable" };
    let entries = [
        Entry::plain("provider_clearing", attempt.amount_minor),
        if settled == "bad_debt" {
            Entry::plain("bad_debt", -attempt.amount_minor)
        } else {
            Entry::customer("accounts_receivable", customer, -attempt.amount_minor)
        },
    ];
    let about = About {
        invoice: Some(attempt.invoice_id),
        payment_attempt: Some(attempt.id),
        subscription,
        ..About::default()
    };
    let posting =
        ledger::Posting::new("payment_succeeded", about, &attempt.currency, charge_id, &entries, now)?;
    let after_params: [&(dyn ToSql + Sync); 3] = [&attempt.invoice_id, &subscription, &now];
    // Pipelined, one round trip, in this order: the ledger, dunning and
    // the subscription (PAID_AND_POSTED), then everything the events say,
    // read once (the invoice is paid by now; nothing read depends on the
    // ledger).
    let (after, context) = futures_util::try_join!(
        async {
            tx.query_one_cached(&PAID_AND_POSTED, &[&posting.params()[..], &after_params[..]].concat())
                .await
                .map_err(BillingError::from)
        },
        context(tx, attempt),
    )?;
    let (invoice, party, _, last4, brand) = context;
    let for_a_change = invoice.billing_reason == pb::BillingReason::SubscriptionUpdate as i32;
    let reactivation = match (subscription, after.get::<_, Option<String>>("reactivated_from")) {
        (Some(sub), Some(previous)) => {
            let loaded = model::subscription(&after);
            let price = loaded.price_id.clone();
            Some((sub, party.subscription_updated(loaded, &previous, price)))
        }
        _ => None,
    };
    let card_brand = crate::payment_methods::brand(&brand);
    let (amount_paid_display, exponent) =
        model::display(tx, &invoice.currency, invoice.amount_paid_minor).await?;
    let paid = pb::InvoicePaid {
        amount_paid_display,
        currency_exponent: Some(exponent),
        invoice: Some(invoice.clone()),
        user_id: party.user_id.to_string(),
        email: party.email,
        payment_attempt_id: attempt.id.to_string(),
        card_brand: card_brand as i32,
        card_last4: last4,
        plan_name: party.plan_name,
    };
    let mut events = Vec::with_capacity(2);
    if let Some((sub, event)) = &reactivation {
        events.push(NewEvent::of(&sub.to_string(), event));
    }
    events.push(NewEvent::of(&attempt.invoice_id.to_string(), &paid));
    // The plan change this invoice paid for, if any, is in force now (only
    // a plan change's own invoice can have one); its events follow these.
    if for_a_change {
        invoices::enqueue_all(tx, &events).await?;
        crate::changes::apply_paid(tx, attempt.invoice_id, now).await?;
        return Ok((invoice, Vec::new()));
    }
    Ok((invoice, events))
}
