//! The gRPC API: `tenx.billing.v1.BillingService`.
//!
//! Every mutation runs under its idempotency key (`Core::idempotent`);
//! docs/services/billing.md is the design behind each RPC.

use std::sync::Arc;

use tenx_common::authn::{self, Principal};
use tenx_common::db::{Db, Pipelined, Prepared, WalPosition, wal};
use tenx_proto::billing::v1 as pb;
use tenx_proto::billing::v1::billing_service_server::BillingService;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::error::BillingError;
use crate::idempotency::{self, Claim, Claimed, Keys};
use crate::payments::{self, Attempt, Begin, Charged, Claiming};
use crate::provider::{Owner, PaymentProvider, ProviderError};
use crate::subscriptions::{self, Created};
use crate::{customers, invoices, model, payment_methods, periods, refunds};

const METHOD_PREFIX: &str = "/tenx.billing.v1.BillingService/";

/// Everything the RPCs share.
#[derive(Debug)]
pub struct Core {
    pub db: Arc<Db>,
    pub clock: Arc<dyn Clock>,
    pub catalog: Catalog,
    pub keys: Keys,
    pub provider: Arc<dyn PaymentProvider>,
    pub provider_timeout: std::time::Duration,
    /// When a pending attempt is reconciled with the provider, after its
    /// creation (`provider.reconcile_after_seconds`).
    pub reconcile_after: std::time::Duration,
    pub currency_default: String,
    pub default_trial_days: u32,
    pub incomplete_expiry: std::time::Duration,
    pub rules: crate::changes::Rules,
    pub dunning: crate::settings::DunningSettings,
    pub usage: crate::settings::UsageSettings,
    pub metrics: crate::metrics::BillingMetrics,
    /// The provider webhook's signing secret and how old a signature may be.
    pub webhook_secret: tenx_common::config::Secret<String>,
    pub webhook_tolerance: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct BillingApi {
    core: Arc<Core>,
}

impl BillingApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

/// One call's metadata and the principal the shared authentication layer
/// verified for it (`tenx_common::authn`); derefs to the metadata.
#[derive(Debug)]
pub struct Call {
    metadata: MetadataMap,
    principal: Option<Principal>,
}

impl Call {
    fn new(metadata: MetadataMap, extensions: &tonic::Extensions) -> Self {
        Self { metadata, principal: authn::principal(extensions).cloned() }
    }

    /// The write position this read must see (`x-tenx-wal-position`, from
    /// an earlier mutation's response): the replica serves the read only
    /// once it has replayed that far, the primary otherwise.
    fn after(&self) -> Result<Option<WalPosition>, BillingError> {
        wal::requested(&self.metadata).map_err(|reason| BillingError::invalid(wal::METADATA, reason))
    }
}

impl std::ops::Deref for Call {
    type Target = MetadataMap;
    fn deref(&self) -> &MetadataMap {
        &self.metadata
    }
}

/// The user the call acts for.
fn caller(call: &Call) -> Result<Uuid, BillingError> {
    let principal = call.principal.as_ref().ok_or(BillingError::Unauthenticated("no caller"))?;
    principal
        .user_id()
        .ok_or(BillingError::Unauthenticated("this call acts for a customer; a service has none"))
}

/// Whose billing a call acts on: the caller's active organization when
/// the token carries one, or the organization an organization's API key
/// belongs to (its customer is keyed by the organization's
/// id; the role must hold `org.billing.read` to read it and
/// `org.billing.manage` to change it), else the caller's own account.
fn payer(call: &Call, change: bool) -> Result<Uuid, BillingError> {
    if let Some(membership) = call.principal.as_ref().and_then(Principal::org) {
        let permission = if change { "org.billing.manage" } else { "org.billing.read" };
        if !membership.role.permits(permission) {
            return Err(BillingError::PermissionDenied(if change {
                "your role in this organization cannot change its billing (org.billing.manage)"
            } else {
                "your role in this organization cannot see its billing (org.billing.read)"
            }));
        }
        return Ok(membership.org_id);
    }
    caller(call)
}

/// An admin user (from their verified token) or a service.
fn is_admin(call: &Call) -> bool {
    call.principal.as_ref().is_some_and(Principal::is_operator)
}

fn uuid(field: &str, raw: &str) -> Result<Uuid, BillingError> {
    Uuid::parse_str(raw).map_err(|_| BillingError::invalid(field, "must be a UUID"))
}

fn optional_uuid(field: &str, raw: &str) -> Result<Option<Uuid>, BillingError> {
    if raw.is_empty() { Ok(None) } else { uuid(field, raw).map(Some) }
}

fn provider_error(error: ProviderError) -> BillingError {
    match error {
        ProviderError::Unavailable(message) => BillingError::Provider { reason: "PROVIDER_ERROR", message },
        ProviderError::Rejected(message) => BillingError::invalid("token", message),
        ProviderError::Timeout => BillingError::Provider {
            reason: "PROVIDER_TIMEOUT",
            message: "the payment provider did not answer in time".into(),
        },
    }
}

/// What a plan change did, for its response.
#[derive(Debug, Clone)]
struct ChangeSummary {
    direction: pb::ChangeDirection,
    effective_at: std::time::SystemTime,
    invoice: Option<Uuid>,
}

async fn change_reply<C: Prepared>(
    tx: &C,
    sub: Uuid,
    change: &ChangeSummary,
) -> Result<pb::ChangePlanResponse, BillingError> {
    let invoice = match change.invoice {
        Some(id) => Some(model::load_invoice(tx, id).await?),
        None => None,
    };
    let payment_attempt = invoice.as_ref().and_then(|i| i.payment_attempts.last().cloned());
    Ok(pb::ChangePlanResponse {
        subscription: Some(model::load_subscription(tx, sub).await?),
        direction: change.direction as i32,
        effective_at: Some(change.effective_at.into()),
        invoice,
        payment_attempt,
    })
}

/// Page size (0 → 20, at most 100) and the id to continue after (the
/// token is the last id of the previous page; lists are newest first by
/// their time-ordered UUIDv7 ids).
fn page(size: u32, token: &str) -> Result<(i64, Option<Uuid>), BillingError> {
    let limit = match size {
        0 => 20,
        1..=100 => i64::from(size),
        _ => return Err(BillingError::invalid("page_size", "must be at most 100")),
    };
    let after = if token.is_empty() {
        None
    } else {
        Some(
            Uuid::parse_str(token)
                .map_err(|_| BillingError::invalid("page_token", "is not a token this service issued"))?,
        )
    };
    Ok((limit, after))
}

/// Trims the extra row fetched to know whether another page exists.
fn next_token<T>(items: &mut Vec<T>, limit: i64, id: impl Fn(&T) -> &String) -> String {
    if items.len() as i64 > limit {
        items.truncate(usize::try_from(limit).unwrap_or(0));
        items.last().map(|i| id(i).clone()).unwrap_or_default()
    } else {
        String::new()
    }
}

/// What to do with an attempt at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A new attempt: charge it.
    Charge,
    /// Pending since an interrupted request: ask what became of it.
    Lookup,
    /// Settled already (by the reconciler, after an interrupted
    /// request): only the answer remains to be given.
    Settled,
}

/// PayInvoice's answer: the invoice as this payment left it (as it paid
/// it, when it did) and the attempt.
fn pay_reply<'a>(
    tx: &'a deadpool_postgres::Client,
    attempt: &'a Attempt,
    paid: Option<pb::Invoice>,
) -> futures_util::future::BoxFuture<'a, Result<pb::PayInvoiceResponse, BillingError>> {
    Box::pin(async move {
        let invoice = match paid {
            Some(invoice) => invoice,
            None => model::load_invoice(tx, attempt.invoice_id).await?,
        };
        let payment_attempt =
            invoice.payment_attempts.iter().find(|a| a.id == attempt.id.to_string()).cloned();
        Ok(pb::PayInvoiceResponse { invoice: Some(invoice), payment_attempt })
    })
}

/// Runs `task` as a task of its own, in the current span: detached from
/// the request, so a caller that goes away cannot stop it half-way.
/// Boxed first: a payment's future is 12–14 kB, under the size from which
/// tokio boxes one itself (16 kB), and an unboxed one is moved whole into
/// the task and again at each change of the task's stage, about 23,000
/// instructions of copying per task. Spawned at once; the answer is
/// `task`'s, or INTERNAL naming `what` if the task panicked or was
/// cancelled.
fn detached<F>(what: &'static str, task: F) -> impl Future<Output = Result<F::Output, BillingError>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = tokio::spawn(tracing::Instrument::instrument(Box::pin(task), tracing::Span::current()));
    async move { handle.await.map_err(|e| BillingError::Internal(format!("{what} task: {e}"))) }
}

/// A response, marked when it is a stored one replayed.
fn respond<T>(message: T, replayed: bool) -> Response<T> {
    let mut response = Response::new(message);
    if replayed {
        response.metadata_mut().insert(idempotency::REPLAYED, MetadataValue::from_static("true"));
    }
    response
}

impl Core {
    /// What new attempts are recorded with.
    pub fn policy(&self) -> payments::Policy {
        payments::Policy { provider: self.provider.name(), reconcile_after: self.reconcile_after }
    }

    async fn get_customer(
        &self,
        metadata: &Call,
        request: pb::GetCustomerRequest,
    ) -> Result<pb::GetCustomerResponse, BillingError> {
        let user = payer(metadata, false)?;
        let conn = self.db.read(metadata.after()?).await?;
        let row = if request.customer_id.is_empty() {
            customers::of_user(&*conn, user).await?
        } else {
            let id = uuid("customer_id", &request.customer_id)?;
            // Not yours and not found look the same: ids cannot be probed.
            customers::by_id(&*conn, id)
                .await?
                .filter(|row| is_admin(metadata) || row.get::<_, Uuid>("user_id") == user)
        };
        let row = row.ok_or(BillingError::NotFound("customer"))?;
        let customer = customers::to_proto(&*conn, &row).await?;
        let payment_methods = payment_methods::of_customer(&*conn, row.get("id")).await?;
        Ok(pb::GetCustomerResponse { customer: Some(customer), payment_methods })
    }

    /// Runs a mutating request under its idempotency key: replays a stored
    /// answer, refuses a reused key, or runs `work` with the claim (which
    /// must store its response through [`Keys::complete`] in its last
    /// transaction); a failure is stored or releases the key.
    async fn idempotent<Req, Resp, F, Fut>(
        &self,
        metadata: &Call,
        name: &str,
        request: &Req,
        work: F,
    ) -> Result<(Resp, bool), BillingError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
        F: FnOnce(Claim) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, BillingError>>,
    {
        let user = payer(metadata, true)?;
        let key = idempotency::key_of(metadata, true)?.unwrap_or_default();
        let method = format!("{METHOD_PREFIX}{name}");
        let hash = idempotency::request_hash(&method, request);
        let claimed =
            self.keys.claim(&self.db, self.clock.as_ref(), &user.to_string(), &key, &method, &hash).await;
        match &claimed {
            Err(BillingError::Refused { .. }) => self.count_key("reused"),
            Err(BillingError::Busy { .. }) => self.count_key("in_use"),
            _ => {}
        }
        let claim = match claimed? {
            Claimed::Replay(status, Some(body)) if status.code() == tonic::Code::Ok => {
                self.count_key("replayed");
                let response = Resp::decode(body.as_slice())
                    .map_err(|e| BillingError::Internal(format!("stored response: {e}")))?;
                return Ok((response, true));
            }
            Claimed::Replay(status, _) => {
                self.count_key("replayed");
                return Err(BillingError::Replayed(status));
            }
            Claimed::Run(claim) => claim,
        };
        self.count_key("new");
        match work(claim.clone()).await {
            Ok(response) => Ok((response, false)),
            Err(error) => Err(self.keys.fail(&self.db, self.clock.as_ref(), &claim, error).await),
        }
    }

    fn count_key(&self, outcome: &'static str) {
        self.metrics.idempotency.get_or_create(&crate::metrics::OutcomeLabel { outcome }).inc();
    }

    async fn add_payment_method(
        &self,
        metadata: &Call,
        request: pb::AddPaymentMethodRequest,
    ) -> Result<(pb::AddPaymentMethodResponse, bool), BillingError> {
        let user = payer(metadata, true)?;
        idempotency::key_of(metadata, true)?;
        // Its form is the contract's; whether the provider issued it is not.
        let token = request.token.clone();
        if !self.provider.recognizes(&token) {
            return Err(BillingError::NotFound("payment method token at the payment provider"));
        }
        self.idempotent(metadata, "AddPaymentMethod", &request, |claim| async move {
            // The customer first, in a commit of its own: the provider
            // attaches the method to them (Stripe: to their Stripe customer,
            // found in the reference of an earlier method).
            let (customer, earlier) = {
                let mut conn = self.db.write().await?;
                let tx = conn.transaction().await?;
                let (customer, _) = customers::ensure(&tx, self.clock.as_ref(), user, "").await?;
                let earlier: Option<String> = tx
                    .query_opt_cached(
                        "SELECT provider_ref FROM payment_methods WHERE customer_id = $1 AND provider = $2 \
                         ORDER BY created_at LIMIT 1",
                        &[&customer, &self.provider.name()],
                    )
                    .await?
                    .map(|r| r.get(0));
                tx.commit().await?;
                (customer, earlier)
            };
            let owner = Owner { customer_id: customer, earlier_ref: earlier.as_deref() };
            let attached = self.provider.attach(owner, &token).await.map_err(provider_error)?;
            let mut conn = self.db.write().await?;
            let tx = conn.transaction().await?;
            let payment_method = payment_methods::insert(
                &tx,
                self.clock.now(),
                customer,
                self.provider.name(),
                &attached,
                request.set_default,
            )
            .await?;
            let response = pb::AddPaymentMethodResponse { payment_method: Some(payment_method) };
            self.keys.complete(&tx, self.clock.as_ref(), &claim, &response).await?;
            tx.commit().await?;
            Ok(response)
        })
        .await
    }

    /// Gives back money of a succeeded payment (operators only). The
    /// provider call and the settlement run in a task of their own, so a
    /// caller that goes away does not strand them; a lost answer leaves the
    /// refund pending for the retry with the same key, which asks the
    /// provider before refunding.
    async fn refund_payment(
        self: &Arc<Self>,
        metadata: &Call,
        request: pb::RefundPaymentRequest,
    ) -> Result<(pb::RefundPaymentResponse, bool), BillingError> {
        if !is_admin(metadata) {
            return Err(BillingError::PermissionDenied("needs the admin role"));
        }
        let operator = caller(metadata)?;
        idempotency::key_of(metadata, true)?;
        let attempt = uuid("payment_attempt_id", &request.payment_attempt_id)?;
        if request.amount_minor < 0 {
            return Err(BillingError::invalid(
                "amount_minor",
                "must be ≥ 0 (0: everything not yet refunded)",
            ));
        }
        let reason = request.reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(BillingError::invalid("reason", "is required (at most 500 characters)"));
        }
        let amount = request.amount_minor;
        self.idempotent(metadata, "RefundPayment", &request, |claim| async move {
            let resumed = match (claim.resource_id, claim.recovery_point.as_str()) {
                (Some(id), "refund_pending") => Some(id),
                _ => None,
            };
            let refund = match resumed {
                Some(id) => match refunds::pending(&*self.db.write().await?, id).await? {
                    Some(pending) => Some(pending),
                    // Settled meanwhile: only answered.
                    None => {
                        let mut conn = self.db.write().await?;
                        let tx = conn.transaction().await?;
                        let response =
                            pb::RefundPaymentResponse { refund: Some(refunds::load(&tx, id).await?) };
                        self.keys.complete(&tx, self.clock.as_ref(), &claim, &response).await?;
                        tx.commit().await?;
                        return Ok(response);
                    }
                },
                None => None,
            };
            let (refund, resumed) = match refund {
                Some(pending) => (pending, true),
                None => {
                    let mut conn = self.db.write().await?;
                    let tx = conn.transaction().await?;
                    let now = self.clock.now();
                    let reconcile_at = now + self.policy().reconcile_after;
                    let pending =
                        refunds::begin(&tx, now, reconcile_at, attempt, amount, &reason, operator).await?;
                    self.keys.progress(&tx, &claim, "refund_pending", pending.id).await?;
                    tx.commit().await?;
                    (pending, false)
                }
            };
            let core = Arc::clone(self);
            let task = async move {
                let outcome =
                    refunds::ask_provider(core.provider.as_ref(), &refund, resumed, core.provider_timeout)
                        .await?;
                let mut conn = core.db.write().await?;
                let tx = conn.transaction().await?;
                refunds::settle(&tx, core.clock.now(), &refund, &outcome).await?;
                let response =
                    pb::RefundPaymentResponse { refund: Some(refunds::load(&tx, refund.id).await?) };
                core.keys.complete(&tx, core.clock.as_ref(), &claim, &response).await?;
                tx.commit().await?;
                Ok(response)
            };
            detached("refund", task).await?
        })
        .await
    }

    /// A provider's webhook: verified, recorded once, and (when it is about
    /// one of this billing's attempts) the attempt's reconcile job made due
    /// now. The signature's age is judged by the wall clock (it is the
    /// provider's), never by the billing clock.
    async fn receive_provider_event(
        &self,
        request: pb::ReceiveProviderEventRequest,
    ) -> Result<pb::ReceiveProviderEventResponse, BillingError> {
        // Stripe's events are verified with its webhook secret whatever the
        // provider: only attempts with a matching Stripe intent are acted on.
        if request.provider != "stripe" {
            return Err(BillingError::invalid("provider", "must be \"stripe\""));
        }
        let event = crate::webhook::verify(
            &request.payload,
            &request.signature,
            self.webhook_secret.expose(),
            self.webhook_tolerance,
            std::time::SystemTime::now(),
        )
        .map_err(|e| match e {
            crate::webhook::WebhookError::BadSignature(_) => {
                BillingError::Unauthenticated("the provider event's signature does not verify")
            }
            crate::webhook::WebhookError::BadPayload(why) => BillingError::invalid("payload", why),
        })?;
        let now = self.clock.now();
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        // Only an attempt of ours whose intent is the event's.
        let attempt: Option<Uuid> = match (event.attempt, &event.intent) {
            (Some(attempt), Some(intent)) => tx
                .query_opt_cached(
                    "SELECT id FROM payment_attempts WHERE id = $1 AND provider = $2 AND provider_intent_id = $3",
                    &[&attempt, &request.provider, intent],
                )
                .await?
                .map(|r| r.get(0)),
            _ => None,
        };
        let first = tx
            .execute_cached(
                "INSERT INTO provider_events (provider, event_id, kind, attempt_id, received_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&request.provider, &event.id, &event.kind, &attempt, &now],
            )
            .await?
            == 1;
        let outcome = match (first, attempt) {
            (false, _) => "duplicate",
            (true, None) => "ignored",
            (true, Some(attempt)) => {
                tx.execute_cached(
                    // Due now; a run in progress keeps this run_at rather than
                    // its backoff (Scheduler::retry_later), so the wake-up holds.
                    "UPDATE billing_jobs SET run_at = $2 WHERE dedupe_key = $1 AND status = 'pending'",
                    &[&payments::reconcile_key(attempt), &now],
                )
                .await?;
                "handled"
            }
        };
        tx.commit().await?;
        tracing::info!(event = %event.id, kind = %event.kind, outcome, "provider event");
        Ok(pb::ReceiveProviderEventResponse { outcome: outcome.into() })
    }

    async fn create_subscription(
        self: &Arc<Self>,
        metadata: &Call,
        request: pb::CreateSubscriptionRequest,
    ) -> Result<(pb::CreateSubscriptionResponse, bool), BillingError> {
        let user = payer(metadata, true)?;
        idempotency::key_of(metadata, true)?;
        let price_id = uuid("price_id", &request.price_id)?;
        let method = optional_uuid("payment_method_id", &request.payment_method_id)?;
        if request.trial_days.is_some_and(|d| d > 730) {
            return Err(BillingError::invalid("trial_days", "must be 0–730"));
        }
        // A customer gets the price's trial or none; only an operator grants
        // another length.
        let operator = is_admin(metadata);
        if request.trial_days.is_some_and(|d| d > 0) && !operator {
            return Err(BillingError::PermissionDenied(
                "trial_days: a custom trial needs the admin role; leave it unset for the price's trial, or 0 for none",
            ));
        }
        self.idempotent(metadata, "CreateSubscription", &request, |claim| async move {
            let (subscription, attempt, step) = match self.resumed(&claim).await? {
                Some((attempt, step)) => {
                    let sub: Uuid = self
                        .db
                        .write()
                        .await?
                        .query_one_cached(
                            "SELECT subscription_id FROM invoices WHERE id = $1",
                            &[&attempt.invoice_id],
                        )
                        .await?
                        .get(0);
                    (sub, attempt, step)
                }
                None => {
                    let now = periods::whole_second(self.clock.now());
                    let mut conn = self.db.write().await?;
                    let tx = conn.transaction().await?;
                    let (customer, _) = customers::ensure(&tx, self.clock.as_ref(), user, "").await?;
                    let price = crate::prices::price(&tx, price_id).await?;
                    let trial = match request.trial_days {
                        Some(days) if operator => subscriptions::Trial::Custom(days),
                        Some(_) => subscriptions::Trial::Price(0),
                        None => {
                            subscriptions::Trial::Price(price.trial_days.unwrap_or(self.default_trial_days))
                        }
                    };
                    match subscriptions::create(
                        &tx,
                        now,
                        customer,
                        &price,
                        method,
                        trial,
                        self.policy(),
                        self.incomplete_expiry,
                    )
                    .await?
                    {
                        Created::Done(sub) => {
                            let response = pb::CreateSubscriptionResponse {
                                subscription: Some(model::load_subscription(&tx, sub).await?),
                                invoice: None,
                                payment_attempt: None,
                            };
                            self.keys.complete(&tx, self.clock.as_ref(), &claim, &response).await?;
                            tx.commit().await?;
                            return Ok(response);
                        }
                        Created::Charge(sub, attempt) => {
                            self.keys.progress(&tx, &claim, "charge_pending", attempt.id).await?;
                            tx.commit().await?;
                            (sub, attempt, Step::Charge)
                        }
                    }
                }
            };
            self.charge_detached(claim, attempt, step, move |tx, attempt, _| {
                Box::pin(async move {
                    let invoice = model::load_invoice(tx, attempt.invoice_id).await?;
                    let payment_attempt =
                        invoice.payment_attempts.iter().find(|a| a.id == attempt.id.to_string()).cloned();
                    Ok(pb::CreateSubscriptionResponse {
                        subscription: Some(model::load_subscription(tx, subscription).await?),
                        invoice: Some(invoice),
                        payment_attempt,
                    })
                })
            })
            .await
        })
        .await
    }

    async fn pay_invoice(
        self: &Arc<Self>,
        metadata: &Call,
        request: pb::PayInvoiceRequest,
    ) -> Result<(pb::PayInvoiceResponse, bool), BillingError> {
        let user = payer(metadata, true)?;
        let key = idempotency::key_of(metadata, true)?.unwrap_or_default();
        let invoice_id = uuid("invoice_id", &request.invoice_id)?;
        let method = optional_uuid("payment_method_id", &request.payment_method_id)?;
        // The common case, a new key: claimed by the statement that records
        // the attempt. From there on, in a task of its own: that statement
        // commits on its own, so a caller that goes away while it runs must
        // not leave a recorded attempt that nobody charges (its retry would
        // find it unknown to the provider and fail it).
        let name = format!("{METHOD_PREFIX}PayInvoice");
        let new_key =
            self.keys.new_key(&user.to_string(), &key, &name, &idempotency::request_hash(&name, &request));
        let core = Arc::clone(self);
        let first = async move {
            let conn = core.db.write().await?;
            let claiming = payments::begin_claiming(
                &*conn,
                core.clock.now(),
                Begin::by_customer(invoice_id, user, method, None),
                core.policy(),
                &new_key,
            );
            let Some(Claiming { claim, begun }) = claiming.await? else {
                return Ok(None);
            };
            drop(conn);
            core.count_key("new");
            let paid = match begun {
                Ok(attempt) => core.charge_detached(claim.clone(), attempt, Step::Charge, pay_reply).await,
                Err(error) => Err(error),
            };
            match paid {
                Ok(response) => Ok(Some(response)),
                Err(error) => Err(core.keys.fail(&core.db, core.clock.as_ref(), &claim, error).await),
            }
        };
        let first = detached("payment", first).await??;
        if let Some(response) = first {
            return Ok((response, false));
        }
        // The key was there: replayed, refused, or resumed where the
        // request that holds it stopped.
        self.idempotent(metadata, "PayInvoice", &request, |claim| async move {
            let core = Arc::clone(self);
            let payment = async move {
                let (attempt, step) = match core.resumed(&claim).await? {
                    Some(found) => found,
                    None => {
                        let conn = core.db.write().await?;
                        let what = Begin::by_customer(invoice_id, user, method, Some(&claim));
                        let attempt = payments::begin(&*conn, core.clock.now(), what, core.policy()).await?;
                        (attempt, Step::Charge)
                    }
                };
                core.charge_detached(claim, attempt, step, pay_reply).await
            };
            detached("payment", payment).await?
        })
        .await
    }

    /// The attempt an interrupted request left behind: a pending one is
    /// looked up at the provider; one the reconciler settled meanwhile
    /// (paid, or refused on the customer's side) is only answered; one
    /// that failed on the provider's side is replaced by a new attempt on
    /// the same invoice.
    async fn resumed(&self, claim: &Claim) -> Result<Option<(Attempt, Step)>, BillingError> {
        let (Some(attempt_id), "charge_pending") = (claim.resource_id, claim.recovery_point.as_str()) else {
            return Ok(None);
        };
        let conn = self.db.write().await?;
        if let Some(pending) = payments::pending(&*conn, attempt_id).await? {
            return Ok(Some((pending, Step::Lookup)));
        }
        let row = conn
            .query_one_cached(
                "SELECT invoice_id, amount_minor, currency, initiated_by, \
                        status = 'succeeded' OR failure_code IN ('card_declined', 'insufficient_funds') AS settled \
                 FROM payment_attempts WHERE id = $1",
                &[&attempt_id],
            )
            .await?;
        let invoice: Uuid = row.get(0);
        if row.get::<_, bool>(4) {
            let settled = Attempt {
                id: attempt_id,
                invoice_id: invoice,
                provider_ref: String::new(),
                amount_minor: row.get(1),
                currency: row.get::<_, String>(2).trim().to_owned(),
                initiated_by: row.get(3),
                intent: None,
            };
            return Ok(Some((settled, Step::Settled)));
        }
        let what = Begin { invoice, owner: None, method: None, initiated_by: "customer", claim: Some(claim) };
        let attempt = payments::begin(&*conn, self.clock.now(), what, self.policy()).await?;
        Ok(Some((attempt, Step::Charge)))
    }

    /// Charges, looks up or only answers `attempt` (by `step`), then
    /// settles it and stores the answer under the key, in a task of its
    /// own: a caller that disconnects or whose deadline passes cancels only
    /// its wait, never the charge or its settlement, and its retry with the
    /// same key replays the stored answer. `reply` gets the invoice as
    /// this settlement paid it, when it did.
    async fn charge_detached<R, F>(
        self: &Arc<Self>,
        claim: Claim,
        attempt: Attempt,
        step: Step,
        reply: F,
    ) -> Result<R, BillingError>
    where
        R: prost::Message + Send + 'static,
        F: for<'a> FnOnce(
                &'a deadpool_postgres::Client,
                &'a Attempt,
                Option<pb::Invoice>,
            ) -> futures_util::future::BoxFuture<'a, Result<R, BillingError>>
            + Send
            + 'static,
    {
        let core = Arc::clone(self);
        let task = async move {
            let charged = match step {
                Step::Settled => None,
                Step::Charge | Step::Lookup => Some(
                    payments::call_provider(
                        &core.db,
                        core.provider.as_ref(),
                        &attempt,
                        step == Step::Lookup,
                        core.provider_timeout,
                    )
                    .await,
                ),
            };
            core.settle_and_reply(&claim, &attempt, charged.as_ref(), reply).await
        };
        detached("payment", task).await?
    }

    /// Records the provider's answer (none: settled already) and, when it
    /// is one, the response under the key, in one transaction. No answer (a
    /// timeout) leaves the attempt pending, for a retry with the key or
    /// the reconciler.
    async fn settle_and_reply<R>(
        &self,
        claim: &Claim,
        attempt: &Attempt,
        charged: Option<&Charged>,
        reply: impl for<'a> FnOnce(
            &'a deadpool_postgres::Client,
            &'a Attempt,
            Option<pb::Invoice>,
        ) -> futures_util::future::BoxFuture<'a, Result<R, BillingError>>,
    ) -> Result<R, BillingError>
    where
        R: prost::Message,
    {
        // Settled already, or accepted with its outcome later (the answer
        // shows the attempt pending; its reconcile job settles it).
        let charged = charged.filter(|c| !matches!(c, Charged::Processing));
        let Some(charged) = charged else {
            let conn = self.db.write().await?;
            let (tx, response) = Pipelined::begin_with(&conn, |c| reply(c, attempt, None)).await?;
            self.keys.complete_committing(tx, self.clock.as_ref(), claim, &response, &[]).await?;
            return Ok(response);
        };
        if let Charged::Timeout = charged {
            self.metrics.attempt("timeout", &attempt.initiated_by);
            return Err(BillingError::Provider {
                reason: "PROVIDER_TIMEOUT",
                message: "the payment provider did not answer in time; retry with the same idempotency key"
                    .into(),
            });
        }
        // BEGIN goes out with the settlement and COMMIT with the stored
        // answer: the settlement's transaction costs the round trips of
        // its statements only.
        let conn = self.db.write().await?;
        let now = self.clock.now();
        let settling = |c| payments::settle_reading(c, now, attempt, charged);
        let (tx, settlement) = Pipelined::begin_with(&conn, settling).await?;
        self.metrics.attempt(charged.outcome_name(), &attempt.initiated_by);
        if let Charged::Unavailable(message) = charged {
            invoices::enqueue_all(tx.client(), &settlement.events).await?;
            tx.commit().await?;
            return Err(BillingError::Provider { reason: "PROVIDER_ERROR", message: message.clone() });
        }
        let response = reply(tx.client(), attempt, settlement.paid).await?;
        // The settlement's events and the stored answer: one statement,
        // and the COMMIT behind it.
        self.keys.complete_committing(tx, self.clock.as_ref(), claim, &response, &settlement.events).await?;
        Ok(response)
    }

    async fn change_plan(
        self: &Arc<Self>,
        metadata: &Call,
        request: pb::ChangePlanRequest,
    ) -> Result<(pb::ChangePlanResponse, bool), BillingError> {
        let user = payer(metadata, true)?;
        idempotency::key_of(metadata, true)?;
        let sub_id = uuid("subscription_id", &request.subscription_id)?;
        let price_id = uuid("price_id", &request.price_id)?;
        let timing = pb::ChangeTiming::try_from(request.timing)
            .map_err(|_| BillingError::invalid("timing", "unknown timing"))?;
        let proration = pb::ProrationBehavior::try_from(request.proration_behavior)
            .map_err(|_| BillingError::invalid("proration_behavior", "unknown proration behavior"))?;
        self.idempotent(metadata, "ChangePlan", &request, |claim| async move {
            // A retry after the change's charge failed: the change was
            // abandoned with its invoice, so there is nothing to resume.
            let resumed = self.resumed(&claim).await.map_err(|e| match e {
                BillingError::Refused { reason: "INVOICE_NOT_PAYABLE", .. } => BillingError::refused(
                    "CHANGE_NOT_PAID",
                    "the plan change's charge failed, so the plan is unchanged; change plan again with a new idempotency key",
                ),
                other => other,
            })?;
            let (summary, attempt, step) = match resumed {
                Some((attempt, step)) => {
                    // Interrupted while charging the proration invoice.
                    let conn = self.db.write().await?;
                    let row = conn
                        .query_one_cached("SELECT finalized_at FROM invoices WHERE id = $1", &[&attempt.invoice_id])
                        .await?;
                    let summary = ChangeSummary {
                        direction: pb::ChangeDirection::Upgrade,
                        effective_at: row.get(0),
                        invoice: Some(attempt.invoice_id),
                    };
                    (summary, attempt, step)
                }
                None => {
                    let now = self.clock.now();
                    let mut conn = self.db.write().await?;
                    let tx = conn.transaction().await?;
                    let locked = crate::changes::lock(&tx, sub_id, user).await?;
                    let new = crate::prices::price(&tx, price_id).await?;
                    let change =
                        crate::changes::change_plan(&tx, now, &self.rules, &locked, &new, timing, proration)
                            .await?;
                    let summary = ChangeSummary {
                        direction: change.direction,
                        effective_at: change.effective_at,
                        invoice: change.invoice,
                    };
                    let due: i64 = match change.invoice {
                        Some(id) => tx
                            .query_one_cached("SELECT amount_due_minor FROM invoices WHERE id = $1", &[&id])
                            .await?
                            .get(0),
                        None => 0,
                    };
                    // A change that costs something is charged now, on the
                    // customer's behalf, and takes effect only if paid; no
                    // card refuses the change (this transaction rolls back).
                    let attempt = match change.invoice {
                        Some(invoice) if due > 0 => {
                            let what = Begin {
                                invoice,
                                owner: None,
                                method: None,
                                initiated_by: "customer",
                                claim: Some(&claim),
                            };
                            Some(payments::begin(&tx, now, what, self.policy()).await?)
                        }
                        _ => None,
                    };
                    let Some(attempt) = attempt else {
                        // Nothing to charge.
                        let response = change_reply(&tx, sub_id, &summary).await?;
                        self.keys.complete(&tx, self.clock.as_ref(), &claim, &response).await?;
                        tx.commit().await?;
                        return Ok(response);
                    };
                    tx.commit().await?;
                    (summary, attempt, Step::Charge)
                }
            };
            self.charge_detached(claim, attempt, step, move |tx, _, _| {
                Box::pin(async move { change_reply(tx, sub_id, &summary).await })
            })
            .await
        })
        .await
    }

    async fn cancel_subscription(
        &self,
        metadata: &Call,
        request: pb::CancelSubscriptionRequest,
    ) -> Result<(pb::CancelSubscriptionResponse, bool), BillingError> {
        let user = payer(metadata, true)?;
        idempotency::key_of(metadata, true)?;
        let sub_id = uuid("subscription_id", &request.subscription_id)?;
        let timing = pb::ChangeTiming::try_from(request.timing)
            .map_err(|_| BillingError::invalid("timing", "unknown timing"))?;
        let proration = pb::ProrationBehavior::try_from(request.proration_behavior)
            .map_err(|_| BillingError::invalid("proration_behavior", "unknown proration behavior"))?;
        self.idempotent(metadata, "CancelSubscription", &request, |claim| async move {
            let mut conn = self.db.write().await?;
            let tx = conn.transaction().await?;
            let locked = crate::changes::lock(&tx, sub_id, user).await?;
            let invoice = crate::changes::cancel(&tx, self.clock.now(), &locked, timing, proration).await?;
            let response = pb::CancelSubscriptionResponse {
                subscription: Some(model::load_subscription(&tx, sub_id).await?),
                invoice: match invoice {
                    Some(id) => Some(model::load_invoice(&tx, id).await?),
                    None => None,
                },
            };
            self.keys.complete(&tx, self.clock.as_ref(), &claim, &response).await?;
            tx.commit().await?;
            Ok(response)
        })
        .await
    }

    async fn record_usage(
        &self,
        metadata: &Call,
        request: pb::RecordUsageRequest,
    ) -> Result<pb::RecordUsageResponse, BillingError> {
        // The access rule (CALLER_OPERATOR) admitted only operators;
        // checked again here so the handler never relies on wiring alone.
        if !is_admin(metadata) {
            return Err(BillingError::PermissionDenied("needs the admin role"));
        }
        let now = self.clock.now();
        let max_future = std::time::Duration::from_secs(self.usage.max_future_seconds);
        let records = crate::usage::validate(&request.records, self.usage.max_batch, now, max_future)?;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let results = crate::usage::record(&tx, now, &records).await?;
        tx.commit().await?;
        for result in &results {
            let outcome = match pb::UsageRecordOutcome::try_from(result.outcome) {
                Ok(pb::UsageRecordOutcome::Accepted) => "accepted",
                Ok(pb::UsageRecordOutcome::Duplicate) => "duplicate",
                _ => "conflict",
            };
            self.metrics.usage_records.get_or_create(&crate::metrics::OutcomeLabel { outcome }).inc();
        }
        Ok(pb::RecordUsageResponse { results })
    }

    async fn list_ledger_entries(
        &self,
        metadata: &Call,
        request: pb::ListLedgerEntriesRequest,
    ) -> Result<pb::ListLedgerEntriesResponse, BillingError> {
        // The access rule (CALLER_OPERATOR) admitted only operators;
        // checked again here so the handler never relies on wiring alone.
        if !is_admin(metadata) {
            return Err(BillingError::PermissionDenied("needs the admin role"));
        }
        let limit: i64 = match request.page_size {
            0 => 100,
            1..=500 => i64::from(request.page_size),
            _ => return Err(BillingError::invalid("page_size", "must be at most 500")),
        };
        let after: i64 = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| BillingError::invalid("page_token", "is not a token this service issued"))?
        };
        let account = match pb::LedgerAccount::try_from(request.account) {
            Ok(pb::LedgerAccount::Unspecified) => None,
            Ok(a) => Some(a.as_str_name().trim_start_matches("LEDGER_ACCOUNT_").to_ascii_lowercase()),
            Err(_) => return Err(BillingError::invalid("account", "unknown account")),
        };
        let customer = optional_uuid("customer_id", &request.customer_id)?;
        let transaction = optional_uuid("transaction_id", &request.transaction_id)?;
        let invoice = optional_uuid("invoice_id", &request.invoice_id)?;
        let currency = (!request.currency.is_empty()).then(|| request.currency.clone());
        // The ledger is read from the primary: operators reconcile against
        // it and page by `seq`, so it must be the latest committed word.
        let rows = self
            .db
            .write()
            .await?
            .query_cached(
                "SELECT e.id, e.seq, e.transaction_id, t.kind, e.account, e.customer_id, e.subscription_id, \
                        e.currency::text, e.amount_minor, t.invoice_id, t.payment_attempt_id, t.reverses_transaction_id, e.posted_at \
                 FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id \
                 WHERE e.seq > $1 AND ($2::text IS NULL OR e.account = $2) AND ($3::uuid IS NULL OR e.customer_id = $3) \
                   AND ($4::text IS NULL OR e.currency::text = $4) AND ($5::uuid IS NULL OR e.transaction_id = $5) \
                   AND ($6::uuid IS NULL OR t.invoice_id = $6) ORDER BY e.seq LIMIT $7",
                &[&after, &account, &customer, &currency, &transaction, &invoice, &(limit + 1)],
            )
            .await?;
        let more = rows.len() as i64 > limit;
        let rows = &rows[..rows.len().min(usize::try_from(limit).unwrap_or(0))];
        let id = |row: &tokio_postgres::Row, i: usize| {
            row.get::<_, Option<Uuid>>(i).map(|u| u.to_string()).unwrap_or_default()
        };
        let entries = rows
            .iter()
            .map(|row| {
                let amount: i64 = row.get(8);
                let kind = pb::LedgerTransactionKind::from_str_name(&format!(
                    "LEDGER_TRANSACTION_KIND_{}",
                    row.get::<_, String>(3).to_ascii_uppercase()
                ))
                .unwrap_or_default();
                let account = pb::LedgerAccount::from_str_name(&format!(
                    "LEDGER_ACCOUNT_{}",
                    row.get::<_, String>(4).to_ascii_uppercase()
                ))
                .unwrap_or_default();
                pb::LedgerEntry {
                    id: id(row, 0),
                    transaction_id: id(row, 2),
                    transaction_kind: kind as i32,
                    account: account as i32,
                    customer_id: id(row, 5),
                    subscription_id: id(row, 6),
                    currency: row.get::<_, String>(7).trim().to_owned(),
                    direction: if amount > 0 { pb::EntryDirection::Debit } else { pb::EntryDirection::Credit }
                        as i32,
                    amount_minor: amount.abs(),
                    invoice_id: id(row, 9),
                    payment_attempt_id: id(row, 10),
                    reverses_transaction_id: id(row, 11),
                    posted_at: Some(row.get::<_, std::time::SystemTime>(12).into()),
                }
            })
            .collect();
        let next_page_token = if more {
            rows.last().map(|r| r.get::<_, i64>(1).to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListLedgerEntriesResponse { entries, next_page_token })
    }

    /// The caller's customer id (or, for an admin, the requested one), or
    /// NOT_FOUND.
    async fn own_customer(&self, metadata: &Call, requested: &str) -> Result<Uuid, BillingError> {
        let user = payer(metadata, false)?;
        let conn = self.db.read(metadata.after()?).await?;
        let row = if requested.is_empty() {
            customers::of_user(&*conn, user).await?
        } else {
            let id = uuid("customer_id", requested)?;
            customers::by_id(&*conn, id)
                .await?
                .filter(|row| is_admin(metadata) || row.get::<_, Uuid>("user_id") == user)
        };
        Ok(row.ok_or(BillingError::NotFound("customer"))?.get("id"))
    }

    async fn get_subscription(
        &self,
        metadata: &Call,
        request: pb::GetSubscriptionRequest,
    ) -> Result<pb::GetSubscriptionResponse, BillingError> {
        let user = payer(metadata, false)?;
        let id = uuid("subscription_id", &request.subscription_id)?;
        let conn = self.db.read(metadata.after()?).await?;
        let visible = conn
            .query_opt_cached(
                "SELECT c.user_id FROM subscriptions s JOIN customers c ON c.id = s.customer_id WHERE s.id = $1",
                &[&id],
            )
            .await?
            .is_some_and(|r| is_admin(metadata) || r.get::<_, Uuid>(0) == user);
        if !visible {
            return Err(BillingError::NotFound("subscription"));
        }
        Ok(pb::GetSubscriptionResponse { subscription: Some(model::load_subscription(&*conn, id).await?) })
    }

    async fn list_subscriptions(
        &self,
        metadata: &Call,
        request: pb::ListSubscriptionsRequest,
    ) -> Result<pb::ListSubscriptionsResponse, BillingError> {
        let (limit, after) = page(request.page_size, &request.page_token)?;
        let statuses = request
            .statuses
            .iter()
            .map(|s| {
                pb::SubscriptionStatus::try_from(*s)
                    .ok()
                    .and_then(model::status_name)
                    .ok_or_else(|| BillingError::invalid("statuses", "unknown status"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let customer = self.own_customer(metadata, &request.customer_id).await?;
        let conn = self.db.read(metadata.after()?).await?;
        let rows = conn
            .query_cached(
                &format!(
                    "SELECT {} FROM subscriptions s JOIN prices p ON p.id = s.price_id \
                     WHERE s.customer_id = $1 AND (cardinality($2::text[]) = 0 OR s.status = ANY($2)) \
                       AND ($3::uuid IS NULL OR s.id < $3) ORDER BY s.id DESC LIMIT $4",
                    model::SUBSCRIPTION_COLUMNS
                ),
                &[&customer, &statuses, &after, &(limit + 1)],
            )
            .await?;
        let mut subscriptions: Vec<pb::Subscription> = rows.iter().map(model::subscription).collect();
        let next_page_token = next_token(&mut subscriptions, limit, |s| &s.id);
        Ok(pb::ListSubscriptionsResponse { subscriptions, next_page_token })
    }

    async fn list_invoices(
        &self,
        metadata: &Call,
        request: pb::ListInvoicesRequest,
    ) -> Result<pb::ListInvoicesResponse, BillingError> {
        let (limit, after) = page(request.page_size, &request.page_token)?;
        let subscription = optional_uuid("subscription_id", &request.subscription_id)?;
        let statuses = request
            .statuses
            .iter()
            .map(|s| {
                pb::InvoiceStatus::try_from(*s)
                    .ok()
                    .and_then(model::invoice_status_name)
                    .ok_or_else(|| BillingError::invalid("statuses", "unknown status"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let customer = self.own_customer(metadata, &request.customer_id).await?;
        let conn = self.db.read(metadata.after()?).await?;
        let rows = conn
            .query_cached(
                &format!(
                    "SELECT {} FROM invoices WHERE customer_id = $1 AND ($2::uuid IS NULL OR subscription_id = $2) \
                       AND (cardinality($3::text[]) = 0 OR status = ANY($3)) AND ($4::uuid IS NULL OR id < $4) \
                     ORDER BY id DESC LIMIT $5",
                    model::INVOICE_COLUMNS
                ),
                &[&customer, &subscription, &statuses, &after, &(limit + 1)],
            )
            .await?;
        let mut invoices: Vec<pb::Invoice> = rows.iter().map(model::invoice).collect();
        let next_page_token = next_token(&mut invoices, limit, |i| &i.id);
        Ok(pb::ListInvoicesResponse { invoices, next_page_token })
    }

    async fn get_invoice(
        &self,
        metadata: &Call,
        request: pb::GetInvoiceRequest,
    ) -> Result<pb::GetInvoiceResponse, BillingError> {
        let user = payer(metadata, false)?;
        let id = uuid("invoice_id", &request.invoice_id)?;
        let conn = self.db.read(metadata.after()?).await?;
        let visible = conn
            .query_opt_cached(
                "SELECT c.user_id FROM invoices i JOIN customers c ON c.id = i.customer_id WHERE i.id = $1",
                &[&id],
            )
            .await?
            .is_some_and(|r| is_admin(metadata) || r.get::<_, Uuid>(0) == user);
        if !visible {
            return Err(BillingError::NotFound("invoice"));
        }
        Ok(pb::GetInvoiceResponse { invoice: Some(model::load_invoice(&*conn, id).await?) })
    }

    async fn list_plans(
        &self,
        metadata: &Call,
        request: pb::ListPlansRequest,
    ) -> Result<pb::ListPlansResponse, BillingError> {
        let currency = if request.all_currencies {
            None
        } else if !request.currency.is_empty() {
            let c = request.currency.as_str();
            if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(BillingError::invalid("currency", "must be an ISO 4217 code like USD"));
            }
            Some(c.to_owned())
        } else {
            // The caller's own currency if they bill in one already.
            let mut own = None;
            if let Ok(user) = payer(metadata, false) {
                let conn = self.db.read(metadata.after()?).await?;
                own = customers::of_user(&*conn, user)
                    .await?
                    .and_then(|row| row.get::<_, Option<String>>("currency"))
                    .map(|c| c.trim().to_owned());
            }
            Some(own.unwrap_or_else(|| self.currency_default.clone()))
        };
        self.catalog.list(currency.as_deref(), request.page_size, &request.page_token).await
    }
}

impl BillingApi {
    /// A mutation's response, with the primary's WAL position past its
    /// write: any position read after the commit is past it. Without one
    /// (the primary did not answer) the caller only loses read-your-writes.
    async fn written<T>(&self, message: T, replayed: bool) -> Response<T> {
        let mut response = respond(message, replayed);
        if let Ok(position) = self.core.db.position_after_commit().await {
            wal::stamp(response.metadata_mut(), position);
        }
        response
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        Ok(Response::new(self.core.list_plans(&metadata, message).await?))
    }

    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        let id = uuid("plan_id", &request.get_ref().plan_id)?;
        Ok(Response::new(pb::GetPlanResponse { plan: Some(self.core.catalog.get(id).await?) }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        Ok(Response::new(self.core.get_customer(&metadata, message).await?))
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::RefundPaymentResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        let (response, replayed) = self.core.refund_payment(&metadata, message).await?;
        Ok(self.written(response, replayed).await)
    }

    async fn receive_provider_event(
        &self,
        request: Request<pb::ReceiveProviderEventRequest>,
    ) -> Result<Response<pb::ReceiveProviderEventResponse>, Status> {
        Ok(Response::new(self.core.receive_provider_event(request.into_inner()).await?))
    }

    async fn add_payment_method(
        &self,
        request: Request<pb::AddPaymentMethodRequest>,
    ) -> Result<Response<pb::AddPaymentMethodResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        let (response, replayed) = self.core.add_payment_method(&metadata, message).await?;
        Ok(self.written(response, replayed).await)
    }

    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        let (response, replayed) = self.core.create_subscription(&metadata, message).await?;
        Ok(self.written(response, replayed).await)
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        Ok(Response::new(self.core.get_subscription(&metadata, message).await?))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        Ok(Response::new(self.core.list_subscriptions(&metadata, message).await?))
    }

    async fn change_plan(
        &self,
        request: Request<pb::ChangePlanRequest>,
    ) -> Result<Response<pb::ChangePlanResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        let (response, replayed) = self.core.change_plan(&metadata, message).await?;
        Ok(self.written(response, replayed).await)
    }

    async fn cancel_subscription(
        &self,
        request: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::CancelSubscriptionResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        let (response, replayed) = self.core.cancel_subscription(&metadata, message).await?;
        Ok(self.written(response, replayed).await)
    }

    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        Ok(Response::new(self.core.list_invoices(&metadata, message).await?))
    }

    async fn get_invoice(
        &self,
        request: Request<pb::GetInvoiceRequest>,
    ) -> Result<Response<pb::GetInvoiceResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        Ok(Response::new(self.core.get_invoice(&metadata, message).await?))
    }

    async fn pay_invoice(
        &self,
        request: Request<pb::PayInvoiceRequest>,
    ) -> Result<Response<pb::PayInvoiceResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        let (response, replayed) = self.core.pay_invoice(&metadata, message).await?;
        Ok(self.written(response, replayed).await)
    }

    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        Ok(self.written(self.core.record_usage(&metadata, message).await?, false).await)
    }

    async fn list_ledger_entries(
        &self,
        request: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let metadata = Call::new(metadata, &extensions);
        Ok(Response::new(self.core.list_ledger_entries(&metadata, message).await?))
    }
}
