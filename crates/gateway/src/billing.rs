//! Billing's public RPCs as HTTP/JSON routes (`/v1/billing/...`).
//!
//! JSON mirrors the proto's field names. Money stays integers in minor
//! units with its ISO 4217 `currency`; times are RFC 3339 (null when
//! unset); enums are the proto value's name without its prefix, in lower
//! case (`SUBSCRIPTION_STATUS_PAST_DUE` → `"past_due"`; unspecified → null).
//!
//! Mutations (every POST) need an `Idempotency-Key` header, forwarded as
//! `idempotency-key` metadata: without one the gateway answers 400 (field
//! `Idempotency-Key`) and billing is not called. A stored answer replayed
//! by billing comes back with `Idempotent-Replayed: true`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tenx_common::grpc::TracedChannel;
use tenx_proto::billing::v1 as pb;
use tenx_proto::billing::v1::billing_service_client::BillingServiceClient;
use tonic::metadata::{Ascii, MetadataValue};

use crate::app::WriteScope;
use crate::error::EdgeError;
use crate::policy::Ctx;
use crate::policy::WAL_POSITION;
use crate::routes::{Gw, JsonBody, ts};

/// The request header of a mutation's idempotency key (and its metadata).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a response billing replayed from an earlier call with the key.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

fn client(gw: &crate::app::Gateway) -> BillingServiceClient<TracedChannel> {
    BillingServiceClient::new(gw.billing.channel.clone())
}

/// The caller's key, checked as billing checks it (1–255 printable ASCII).
fn idempotency_key(headers: &HeaderMap) -> Result<MetadataValue<Ascii>, EdgeError> {
    const FIELD: &str = "Idempotency-Key";
    let value = headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
        EdgeError::invalid(FIELD, "is required on this call (any unique string, reused only to retry it)")
    })?;
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or_else(|| EdgeError::invalid(FIELD, "must be 1–255 printable ASCII characters"))?;
    MetadataValue::try_from(key)
        .map_err(|_| EdgeError::invalid(FIELD, "must be 1–255 printable ASCII characters"))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, EdgeError> {
    p.map(|Path(v)| v).map_err(|e| EdgeError::invalid("path", e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, EdgeError> {
    q.map(|Query(v)| v).map_err(|e| EdgeError::invalid("query", e.body_text()))
}

/// `SUBSCRIPTION_STATUS_PAST_DUE` → `"past_due"`; unspecified → null.
fn named(name: &str, prefix: &str) -> Value {
    match name.strip_prefix(prefix) {
        Some("UNSPECIFIED") | None => Value::Null,
        Some(rest) => Value::String(rest.to_ascii_lowercase()),
    }
}

macro_rules! enum_json {
    ($ty:ty, $value:expr, $prefix:literal) => {
        <$ty>::try_from($value).map_or(Value::Null, |e| named(e.as_str_name(), $prefix))
    };
}

/// `"past_due"` → `SUBSCRIPTION_STATUS_PAST_DUE`'s number.
fn parse_enum(
    field: &str,
    value: &str,
    prefix: &str,
    from: fn(&str) -> Option<i32>,
) -> Result<i32, EdgeError> {
    let name = format!("{prefix}{}", value.to_ascii_uppercase());
    match from(&name) {
        Some(n) if n != 0 && value.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => Ok(n),
        _ => Err(EdgeError::invalid(field, format!("unknown value `{value}`"))),
    }
}

fn price(p: pb::Price) -> Value {
    json!({
        "id": p.id,
        "plan_id": p.plan_id,
        "lookup_key": p.lookup_key,
        "currency": p.currency,
        "unit_amount_minor": p.unit_amount_minor,
        "interval": enum_json!(pb::BillingInterval, p.interval, "BILLING_INTERVAL_"),
        "interval_count": p.interval_count,
        "trial_days": p.trial_days,
        "metered": p.metered.map_or(Value::Null, |m| json!({
            "meter": m.meter,
            "unit_amount_minor": m.unit_amount_minor,
            "package_size": m.package_size,
        })),
        "active": p.active,
        "created_at": ts(p.created_at),
    })
}

fn plan(p: Option<pb::Plan>) -> Value {
    let p = p.unwrap_or_default();
    json!({
        "id": p.id,
        "code": p.code,
        "name": p.name,
        "description": p.description,
        "prices": p.prices.into_iter().map(price).collect::<Vec<_>>(),
        "active": p.active,
        "created_at": ts(p.created_at),
    })
}

fn payment_method(m: pb::PaymentMethod) -> Value {
    json!({
        "id": m.id,
        "customer_id": m.customer_id,
        "brand": enum_json!(pb::CardBrand, m.brand, "CARD_BRAND_"),
        "last4": m.last4,
        "exp_month": m.exp_month,
        "exp_year": m.exp_year,
        "is_default": m.is_default,
        "created_at": ts(m.created_at),
    })
}

fn customer(c: Option<pb::Customer>) -> Value {
    let c = c.unwrap_or_default();
    json!({
        "id": c.id,
        "user_id": c.user_id,
        "email": c.email,
        "currency": c.currency,
        "invoice_prefix": c.invoice_prefix,
        "default_payment_method_id": c.default_payment_method_id,
        "credit_balance_minor": c.credit_balance_minor,
        "created_at": ts(c.created_at),
    })
}

fn subscription(s: Option<pb::Subscription>) -> Value {
    let s = s.unwrap_or_default();
    json!({
        "id": s.id,
        "customer_id": s.customer_id,
        "price_id": s.price_id,
        "plan_id": s.plan_id,
        "status": enum_json!(pb::SubscriptionStatus, s.status, "SUBSCRIPTION_STATUS_"),
        "currency": s.currency,
        "current_period_start": ts(s.current_period_start),
        "current_period_end": ts(s.current_period_end),
        "billing_cycle_anchor": ts(s.billing_cycle_anchor),
        "trial_start": ts(s.trial_start),
        "trial_end": ts(s.trial_end),
        "cancel_at_period_end": s.cancel_at_period_end,
        "canceled_at": ts(s.canceled_at),
        "ended_at": ts(s.ended_at),
        "cancellation_reason": enum_json!(pb::CancellationReason, s.cancellation_reason, "CANCELLATION_REASON_"),
        "pending_change": s.pending_change.map_or(Value::Null, |p| json!({
            "price_id": p.price_id,
            "effective_at": ts(p.effective_at),
        })),
        "default_payment_method_id": s.default_payment_method_id,
        "latest_invoice_id": s.latest_invoice_id,
        "version": s.version,
        "created_at": ts(s.created_at),
        "updated_at": ts(s.updated_at),
    })
}

fn attempt(a: pb::PaymentAttempt) -> Value {
    json!({
        "id": a.id,
        "invoice_id": a.invoice_id,
        "payment_method_id": a.payment_method_id,
        "amount_minor": a.amount_minor,
        "currency": a.currency,
        "status": enum_json!(pb::PaymentAttemptStatus, a.status, "PAYMENT_ATTEMPT_STATUS_"),
        "failure_code": enum_json!(pb::PaymentFailureCode, a.failure_code, "PAYMENT_FAILURE_CODE_"),
        "failure_message": a.failure_message,
        "initiated_by": enum_json!(pb::PaymentTrigger, a.initiated_by, "PAYMENT_TRIGGER_"),
        "provider_charge_id": a.provider_charge_id,
        "created_at": ts(a.created_at),
        "completed_at": ts(a.completed_at),
    })
}

fn invoice(i: pb::Invoice) -> Value {
    let lines: Vec<Value> = i
        .lines
        .into_iter()
        .map(|l| {
            json!({
                "id": l.id,
                "kind": enum_json!(pb::InvoiceLineKind, l.kind, "INVOICE_LINE_KIND_"),
                "description": l.description,
                "price_id": l.price_id,
                "quantity": l.quantity,
                "unit_amount_minor": l.unit_amount_minor,
                "amount_minor": l.amount_minor,
                "period_start": ts(l.period_start),
                "period_end": ts(l.period_end),
            })
        })
        .collect();
    json!({
        "id": i.id,
        "customer_id": i.customer_id,
        "subscription_id": i.subscription_id,
        "number": i.number,
        "status": enum_json!(pb::InvoiceStatus, i.status, "INVOICE_STATUS_"),
        "billing_reason": enum_json!(pb::BillingReason, i.billing_reason, "BILLING_REASON_"),
        "currency": i.currency,
        "total_minor": i.total_minor,
        "credit_applied_minor": i.credit_applied_minor,
        "credit_added_minor": i.credit_added_minor,
        "amount_due_minor": i.amount_due_minor,
        "amount_paid_minor": i.amount_paid_minor,
        "amount_remaining_minor": i.amount_remaining_minor,
        "period_start": ts(i.period_start),
        "period_end": ts(i.period_end),
        "created_at": ts(i.created_at),
        "finalized_at": ts(i.finalized_at),
        "paid_at": ts(i.paid_at),
        "voided_at": ts(i.voided_at),
        "marked_uncollectible_at": ts(i.marked_uncollectible_at),
        "attempt_count": i.attempt_count,
        "next_payment_attempt_at": ts(i.next_payment_attempt_at),
        "lines": lines,
        "payment_attempts": i.payment_attempts.into_iter().map(attempt).collect::<Vec<_>>(),
    })
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    v.map_or(Value::Null, f)
}

/// A mutation's answer: `status` and the body, marked when replayed.
/// A mutation's answer: its status and body, `Idempotent-Replayed`, and
/// billing's write position (remembered for this caller, and returned as
/// `x-tenx-wal-position: billing:<position>` to send back on later reads).
async fn mutation_response<T>(
    gw: &crate::app::Gateway,
    ctx: &Ctx,
    status: StatusCode,
    r: &tonic::Response<T>,
    body: Value,
) -> Response {
    let replayed = r.metadata().get(IDEMPOTENT_REPLAYED).is_some_and(|v| v.as_bytes() == b"true");
    let mut response = (status, Json(body)).into_response();
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    if let Some(position) = r.metadata().get(WAL_POSITION).and_then(|v| v.to_str().ok()) {
        let tagged = gw.remember_write(ctx, WriteScope::Billing, position).await;
        if let Ok(value) = HeaderValue::from_str(&tagged) {
            response.headers_mut().insert(WAL_POSITION, value);
        }
    }
    response
}

/// A request to billing as `ctx`'s caller, with `key` when a mutation.
fn request<T>(ctx: &Ctx, message: T, key: Option<&MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = ctx.to_upstream(message);
    if let Some(key) = key {
        request.metadata_mut().insert(IDEMPOTENCY_KEY, key.clone());
    }
    request
}

/// A read of billing as `ctx`'s caller, after the caller's last write to
/// billing (read-your-writes from the replica).
fn read_request<T>(gw: &crate::app::Gateway, ctx: &Ctx, message: T) -> tonic::Request<T> {
    let mut request = ctx.to_upstream(message);
    if let Some(position) = gw.read_position(ctx, WriteScope::Billing).and_then(|p| p.parse().ok()) {
        request.metadata_mut().insert(WAL_POSITION, position);
    }
    request
}

// ---------------------------------------------------------------- catalog

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlansQuery {
    #[serde(default)]
    currency: String,
    #[serde(default)]
    all_currencies: bool,
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
}

pub(crate) async fn plans_list(
    State(gw): Gw,
    ctx: Ctx,
    q: Result<Query<PlansQuery>, QueryRejection>,
) -> Result<Json<Value>, EdgeError> {
    let q = query(q)?;
    let message = pb::ListPlansRequest {
        currency: q.currency,
        all_currencies: q.all_currencies,
        page_size: q.page_size,
        page_token: q.page_token,
    };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), read_request(&gw, &ctx, message.clone()));
            async move { c.list_plans(req).await }
        })
        .await?
        .into_inner();
    let plans: Vec<Value> = r.plans.into_iter().map(|p| plan(Some(p))).collect();
    Ok(Json(json!({ "plans": plans, "next_page_token": r.next_page_token })))
}

pub(crate) async fn plans_get(
    State(gw): Gw,
    ctx: Ctx,
    plan_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, EdgeError> {
    let message = pb::GetPlanRequest { plan_id: path(plan_id)? };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), read_request(&gw, &ctx, message.clone()));
            async move { c.get_plan(req).await }
        })
        .await?
        .into_inner();
    Ok(Json(json!({ "plan": plan(r.plan) })))
}

// --------------------------------------------------------------- customer

pub(crate) async fn customer_get(State(gw): Gw, ctx: Ctx) -> Result<Json<Value>, EdgeError> {
    let message = pb::GetCustomerRequest { customer_id: String::new() };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), read_request(&gw, &ctx, message.clone()));
            async move { c.get_customer(req).await }
        })
        .await?
        .into_inner();
    let methods: Vec<Value> = r.payment_methods.into_iter().map(payment_method).collect();
    Ok(Json(json!({ "customer": customer(r.customer), "payment_methods": methods })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddPaymentMethod {
    token: String,
    #[serde(default)]
    set_default: bool,
}

pub(crate) async fn payment_methods_add(
    State(gw): Gw,
    ctx: Ctx,
    headers: HeaderMap,
    JsonBody(b): JsonBody<AddPaymentMethod>,
) -> Result<Response, EdgeError> {
    let key = idempotency_key(&headers)?;
    let message = pb::AddPaymentMethodRequest { token: b.token, set_default: b.set_default };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), request(&ctx, message.clone(), Some(&key)));
            async move { c.add_payment_method(req).await }
        })
        .await?;
    let body = json!({ "payment_method": opt(r.get_ref().payment_method.clone(), payment_method) });
    Ok(mutation_response(&gw, &ctx, StatusCode::CREATED, &r, body).await)
}

// ---------------------------------------------------------- subscriptions

/// A comma-separated list of enum names (`status=active,past_due`).
fn statuses(raw: &str, prefix: &str, from: fn(&str) -> Option<i32>) -> Result<Vec<i32>, EdgeError> {
    raw.split(',').filter(|s| !s.is_empty()).map(|s| parse_enum("status", s, prefix, from)).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionsQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
}

pub(crate) async fn subscriptions_list(
    State(gw): Gw,
    ctx: Ctx,
    q: Result<Query<SubscriptionsQuery>, QueryRejection>,
) -> Result<Json<Value>, EdgeError> {
    let q = query(q)?;
    let message = pb::ListSubscriptionsRequest {
        customer_id: String::new(),
        statuses: statuses(&q.status, "SUBSCRIPTION_STATUS_", |n| {
            pb::SubscriptionStatus::from_str_name(n).map(|e| e as i32)
        })?,
        page_size: q.page_size,
        page_token: q.page_token,
    };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), read_request(&gw, &ctx, message.clone()));
            async move { c.list_subscriptions(req).await }
        })
        .await?
        .into_inner();
    let items: Vec<Value> = r.subscriptions.into_iter().map(|s| subscription(Some(s))).collect();
    Ok(Json(json!({ "subscriptions": items, "next_page_token": r.next_page_token })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSubscription {
    price_id: String,
    #[serde(default)]
    payment_method_id: String,
    #[serde(default)]
    trial_days: Option<u32>,
}

pub(crate) async fn subscriptions_create(
    State(gw): Gw,
    ctx: Ctx,
    headers: HeaderMap,
    JsonBody(b): JsonBody<CreateSubscription>,
) -> Result<Response, EdgeError> {
    let key = idempotency_key(&headers)?;
    let message = pb::CreateSubscriptionRequest {
        price_id: b.price_id,
        payment_method_id: b.payment_method_id,
        trial_days: b.trial_days,
    };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), request(&ctx, message.clone(), Some(&key)));
            async move { c.create_subscription(req).await }
        })
        .await?;
    let m = r.get_ref().clone();
    let body = json!({
        "subscription": subscription(m.subscription),
        "invoice": opt(m.invoice, invoice),
        "payment_attempt": opt(m.payment_attempt, attempt),
    });
    Ok(mutation_response(&gw, &ctx, StatusCode::CREATED, &r, body).await)
}

pub(crate) async fn subscriptions_get(
    State(gw): Gw,
    ctx: Ctx,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, EdgeError> {
    let message = pb::GetSubscriptionRequest { subscription_id: path(id)? };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), read_request(&gw, &ctx, message.clone()));
            async move { c.get_subscription(req).await }
        })
        .await?
        .into_inner();
    Ok(Json(json!({ "subscription": subscription(r.subscription) })))
}

fn timing(v: Option<&str>) -> Result<i32, EdgeError> {
    match v {
        None => Ok(pb::ChangeTiming::Unspecified as i32),
        Some("immediately") => Ok(pb::ChangeTiming::Immediately as i32),
        Some("period_end") => Ok(pb::ChangeTiming::PeriodEnd as i32),
        Some(other) => Err(EdgeError::invalid("timing", format!("unknown value `{other}`"))),
    }
}

fn proration(v: Option<&str>) -> Result<i32, EdgeError> {
    match v {
        None => Ok(pb::ProrationBehavior::Unspecified as i32),
        Some("always_invoice") => Ok(pb::ProrationBehavior::AlwaysInvoice as i32),
        Some("none") => Ok(pb::ProrationBehavior::None as i32),
        Some(other) => Err(EdgeError::invalid("proration", format!("unknown value `{other}`"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangePlan {
    price_id: String,
    #[serde(default)]
    timing: Option<String>,
    #[serde(default)]
    proration: Option<String>,
}

pub(crate) async fn subscriptions_change(
    State(gw): Gw,
    ctx: Ctx,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    JsonBody(b): JsonBody<ChangePlan>,
) -> Result<Response, EdgeError> {
    let subscription_id = path(id)?;
    let key = idempotency_key(&headers)?;
    let message = pb::ChangePlanRequest {
        subscription_id,
        price_id: b.price_id,
        timing: timing(b.timing.as_deref())?,
        proration_behavior: proration(b.proration.as_deref())?,
    };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), request(&ctx, message.clone(), Some(&key)));
            async move { c.change_plan(req).await }
        })
        .await?;
    let m = r.get_ref().clone();
    let body = json!({
        "subscription": subscription(m.subscription),
        "direction": enum_json!(pb::ChangeDirection, m.direction, "CHANGE_DIRECTION_"),
        "effective_at": ts(m.effective_at),
        "invoice": opt(m.invoice, invoice),
        "payment_attempt": opt(m.payment_attempt, attempt),
    });
    Ok(mutation_response(&gw, &ctx, StatusCode::OK, &r, body).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cancel {
    #[serde(default)]
    timing: Option<String>,
    #[serde(default)]
    proration: Option<String>,
}

pub(crate) async fn subscriptions_cancel(
    State(gw): Gw,
    ctx: Ctx,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    JsonBody(b): JsonBody<Cancel>,
) -> Result<Response, EdgeError> {
    let subscription_id = path(id)?;
    let key = idempotency_key(&headers)?;
    let message = pb::CancelSubscriptionRequest {
        subscription_id,
        timing: timing(b.timing.as_deref())?,
        proration_behavior: proration(b.proration.as_deref())?,
    };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), request(&ctx, message.clone(), Some(&key)));
            async move { c.cancel_subscription(req).await }
        })
        .await?;
    let m = r.get_ref().clone();
    let body = json!({ "subscription": subscription(m.subscription), "invoice": opt(m.invoice, invoice) });
    Ok(mutation_response(&gw, &ctx, StatusCode::OK, &r, body).await)
}

// --------------------------------------------------------------- invoices

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvoicesQuery {
    #[serde(default)]
    subscription_id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
}

pub(crate) async fn invoices_list(
    State(gw): Gw,
    ctx: Ctx,
    q: Result<Query<InvoicesQuery>, QueryRejection>,
) -> Result<Json<Value>, EdgeError> {
    let q = query(q)?;
    let message = pb::ListInvoicesRequest {
        customer_id: String::new(),
        subscription_id: q.subscription_id,
        statuses: statuses(&q.status, "INVOICE_STATUS_", |n| {
            pb::InvoiceStatus::from_str_name(n).map(|e| e as i32)
        })?,
        page_size: q.page_size,
        page_token: q.page_token,
    };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), read_request(&gw, &ctx, message.clone()));
            async move { c.list_invoices(req).await }
        })
        .await?
        .into_inner();
    let items: Vec<Value> = r.invoices.into_iter().map(invoice).collect();
    Ok(Json(json!({ "invoices": items, "next_page_token": r.next_page_token })))
}

pub(crate) async fn invoices_get(
    State(gw): Gw,
    ctx: Ctx,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, EdgeError> {
    let message = pb::GetInvoiceRequest { invoice_id: path(id)? };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), read_request(&gw, &ctx, message.clone()));
            async move { c.get_invoice(req).await }
        })
        .await?
        .into_inner();
    Ok(Json(json!({ "invoice": opt(r.invoice, invoice) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PayInvoice {
    #[serde(default)]
    payment_method_id: String,
}

pub(crate) async fn invoices_pay(
    State(gw): Gw,
    ctx: Ctx,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    JsonBody(b): JsonBody<PayInvoice>,
) -> Result<Response, EdgeError> {
    let invoice_id = path(id)?;
    let key = idempotency_key(&headers)?;
    let message = pb::PayInvoiceRequest { invoice_id, payment_method_id: b.payment_method_id };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), request(&ctx, message.clone(), Some(&key)));
            async move { c.pay_invoice(req).await }
        })
        .await?;
    let m = r.get_ref().clone();
    let body = json!({
        "invoice": opt(m.invoice, invoice),
        "payment_attempt": opt(m.payment_attempt, attempt),
    });
    Ok(mutation_response(&gw, &ctx, StatusCode::OK, &r, body).await)
}

/// Stripe's webhook. The body and `Stripe-Signature` go to billing exactly
/// as they came: billing verifies the signature over these bytes (nothing
/// here trusts or reads them). 200 with billing's outcome; 401 when the
/// signature does not verify, so Stripe shows the failure and retries.
pub(crate) async fn stripe_webhook(
    State(gw): Gw,
    ctx: Ctx,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, EdgeError> {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let message = pb::ReceiveProviderEventRequest {
        provider: "stripe".into(),
        payload: body.to_vec(),
        signature: signature.to_owned(),
    };
    let r = gw
        .billing
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut c, req) = (client(&gw), request(&ctx, message.clone(), None));
            async move { c.receive_provider_event(req).await }
        })
        .await?;
    Ok(Json(json!({ "outcome": r.into_inner().outcome })))
}
