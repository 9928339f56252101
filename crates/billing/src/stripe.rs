//! The Stripe provider, over Stripe's HTTP API (form-encoded requests,
//! JSON answers, a secret key as bearer).
//!
//! - A tenx customer has one Stripe customer, made on their first attach
//!   (Idempotency-Key `tenx-customer-<id>`) and found again in the
//!   reference of any earlier method: `cus_…:pm_…`.
//! - A charge is a PaymentIntent in two steps. [`StripeProvider::prepare`]
//!   creates it unconfirmed (no money moves; Idempotency-Key
//!   `tenx-pi-<attempt>`) and its id is stored on the attempt; then
//!   [`StripeProvider::charge`] confirms it (`tenx-confirm-<attempt>`).
//!   So a lookup after a crash always knows the intent, or knows that
//!   nothing was confirmed; an intent found unconfirmed is canceled first,
//!   so it can never be confirmed late.
//! - Outcomes that come later (a bank debit `processing`) are settled by
//!   the attempt's reconcile job, which Stripe's webhook wakes
//!   ([`crate::webhook`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tenx_common::config::Secret;
use uuid::Uuid;

use crate::provider::{
    AttachedMethod, ChargeOutcome, ChargeRequest, Decline, Owner, PaymentProvider, ProviderError,
    RefundOutcome, RefundRequest,
};

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct StripeProvider {
    http: HttpClient,
    /// `https://api.stripe.com` (or a localstripe in tests), no trailing `/`.
    api_base: String,
    secret_key: Secret<String>,
}

impl std::fmt::Debug for StripeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeProvider").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

/// What Stripe answered: its status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn error_code(&self, field: &str) -> &str {
        self.body.pointer(&format!("/error/{field}")).and_then(Value::as_str).unwrap_or("")
    }

    fn error_message(&self) -> String {
        let message = self.body.pointer("/error/message").and_then(Value::as_str).unwrap_or("no message");
        format!("Stripe answered {}: {message}", self.status)
    }
}

impl StripeProvider {
    pub fn new(
        api_base: &str,
        secret_key: Secret<String>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            api_base: api_base.trim_end_matches('/').to_owned(),
            secret_key,
        })
    }

    /// One API call. `Err(Unavailable)` only when the request certainly did
    /// not reach Stripe (no connection); any other failure is a timeout
    /// (it may have been done).
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        form: &[(&str, &str)],
        idempotency_key: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.api_base))
            .header("authorization", format!("Bearer {}", self.secret_key.expose()))
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProviderError::Unavailable(format!("Stripe request: {e}")))?;
        let response = self.http.request(request).await.map_err(|e| {
            if e.is_connect() {
                ProviderError::Unavailable(format!("cannot reach Stripe: {e}"))
            } else {
                ProviderError::Timeout
            }
        })?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|_| ProviderError::Timeout)?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 500 {
            // Stripe's own advice: a 5xx may or may not have been done.
            return Err(ProviderError::Timeout);
        }
        Ok(Answer { status, body })
    }

    async fn customer_of(&self, owner: Owner<'_>) -> Result<String, ProviderError> {
        if let Some(customer) = owner.earlier_ref.and_then(|r| r.split_once(':')).map(|(c, _)| c) {
            return Ok(customer.to_owned());
        }
        let id = owner.customer_id.to_string();
        let answer = self
            .call(
                hyper::Method::POST,
                "/v1/customers",
                &[("metadata[tenx_customer_id]", &id)],
                Some(&format!("tenx-customer-{id}")),
            )
            .await?;
        match (answer.status, answer.body.get("id").and_then(Value::as_str)) {
            (200, Some(customer)) => Ok(customer.to_owned()),
            _ => Err(ProviderError::Unavailable(answer.error_message())),
        }
    }

    /// What a PaymentIntent's state says about the charge (`None`: not
    /// confirmed, so not charged).
    fn outcome(intent: &Value) -> Option<ChargeOutcome> {
        let status = intent.get("status").and_then(Value::as_str).unwrap_or("");
        match status {
            "succeeded" => {
                // `latest_charge` is an id, or the charge itself when expanded.
                let charge = intent.get("latest_charge");
                let charge_id = charge
                    .and_then(Value::as_str)
                    .or_else(|| charge.and_then(|c| c.get("id")).and_then(Value::as_str))
                    .or_else(|| intent.get("id").and_then(Value::as_str))
                    .unwrap_or("unknown");
                Some(ChargeOutcome::Succeeded { charge_id: charge_id.to_owned() })
            }
            "processing" | "requires_capture" => Some(ChargeOutcome::Processing),
            // A failed confirmation leaves the intent waiting for another
            // method (which tenx never gives it): the customer's decline.
            // `requires_action` too, once canceled (`give_up`).
            "requires_payment_method" | "requires_action" => Some(ChargeOutcome::Declined(decline(
                intent.pointer("/last_payment_error/decline_code").and_then(Value::as_str),
            ))),
            _ => None,
        }
    }

    async fn intent(&self, id: &str) -> Result<Option<Value>, ProviderError> {
        let answer = self.call(hyper::Method::GET, &format!("/v1/payment_intents/{id}"), &[], None).await?;
        match answer.status {
            200 => Ok(Some(answer.body)),
            // Stripe made this intent, so "no such intent" means another
            // account or mode now: unknown, never "not charged".
            404 => {
                tracing::error!(
                    intent = id,
                    "Stripe does not know a PaymentIntent it created: another account's key?"
                );
                Err(ProviderError::Timeout)
            }
            _ => Err(ProviderError::Unavailable(answer.error_message())),
        }
    }
}

/// What a Stripe Refund object says. Only `succeeded` is money given back;
/// one still `pending` (or one without an id) is not known yet: the refund
/// stays pending for a retry with the same key, which finds it again.
fn refund_outcome(refund: &Value) -> Result<RefundOutcome, ProviderError> {
    let id = refund.get("id").and_then(Value::as_str).filter(|id| is_object_id(id, "re_"));
    match (id, refund.get("status").and_then(Value::as_str)) {
        (Some(re), Some("succeeded")) => Ok(RefundOutcome::Succeeded { refund_id: re.to_owned() }),
        (Some(re), Some("failed" | "canceled")) => {
            Ok(RefundOutcome::Refused(format!("Stripe's refund {re} failed")))
        }
        _ => Err(ProviderError::Timeout),
    }
}

/// Waiting for the customer (3-D Secure): an off-session charge cannot
/// have them, so it is a decline, and the intent is canceled first.
fn needs_the_customer(intent: &Value) -> bool {
    intent.get("status").and_then(Value::as_str) == Some("requires_action")
}

impl StripeProvider {
    /// Cancels an intent that waits for the customer, so it can never be
    /// completed after tenx recorded a decline; what it is if that fails.
    async fn give_up(&self, id: &str) -> Result<ChargeOutcome, ProviderError> {
        let Some(now) = self.cancel(id).await? else {
            return Ok(ChargeOutcome::Declined(Decline::CardDeclined));
        };
        match Self::outcome(&now) {
            Some(outcome) if !needs_the_customer(&now) => Ok(outcome),
            _ => Err(ProviderError::Timeout),
        }
    }

    /// Cancels an intent: `None` once canceled, else (it moved on
    /// meanwhile) the intent as it is now.
    async fn cancel(&self, id: &str) -> Result<Option<Value>, ProviderError> {
        let canceled =
            self.call(hyper::Method::POST, &format!("/v1/payment_intents/{id}/cancel"), &[], None).await?;
        if canceled.status == 200 {
            return Ok(None);
        }
        self.intent(id).await?.ok_or(ProviderError::Timeout).map(Some)
    }
}

fn decline(code: Option<&str>) -> Decline {
    match code {
        Some("insufficient_funds") => Decline::InsufficientFunds,
        _ => Decline::CardDeclined,
    }
}

fn brand(raw: &str) -> &'static str {
    match raw {
        "visa" => "visa",
        "mastercard" => "mastercard",
        "amex" => "amex",
        _ => "other",
    }
}

/// A Stripe object id: a prefix, `_`, then letters and digits.
fn is_object_id(value: &str, prefix: &str) -> bool {
    value.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 200 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

#[tonic::async_trait]
impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        "stripe"
    }

    /// A PaymentMethod made by Stripe.js in the customer's browser.
    fn recognizes(&self, token: &str) -> bool {
        is_object_id(token, "pm_")
    }

    async fn attach(&self, owner: Owner<'_>, token: &str) -> Result<AttachedMethod, ProviderError> {
        let customer = self.customer_of(owner).await?;
        let answer = self
            .call(
                hyper::Method::POST,
                &format!("/v1/payment_methods/{token}/attach"),
                &[("customer", &customer)],
                None,
            )
            .await?;
        match answer.status {
            200 => {}
            402 => return Err(ProviderError::Rejected("the card was declined".into())),
            404 => return Err(ProviderError::Rejected("no such payment method at Stripe".into())),
            400 => return Err(ProviderError::Rejected(answer.error_message())),
            _ => return Err(ProviderError::Unavailable(answer.error_message())),
        }
        let method = &answer.body;
        let id = method.get("id").and_then(Value::as_str).filter(|id| is_object_id(id, "pm_"));
        let Some(id) = id else {
            return Err(ProviderError::Unavailable("Stripe returned a payment method without an id".into()));
        };
        let text = |path: &str| method.pointer(path).and_then(Value::as_str).unwrap_or("");
        let number = |path: &str| method.pointer(path).and_then(Value::as_i64).unwrap_or(0);
        let (brand, last4, exp_month, exp_year) = match text("/type") {
            "card" => (
                brand(text("/card/brand")),
                text("/card/last4"),
                number("/card/exp_month"),
                number("/card/exp_year"),
            ),
            // A bank debit does not expire: shown as far in the future.
            "sepa_debit" => ("other", text("/sepa_debit/last4"), 12, 2199),
            other => {
                return Err(ProviderError::Rejected(format!(
                    "payment methods of type {other:?} are not accepted"
                )));
            }
        };
        let (Ok(exp_month), Ok(exp_year)) = (i16::try_from(exp_month), i16::try_from(exp_year)) else {
            return Err(ProviderError::Unavailable("Stripe returned an impossible expiry".into()));
        };
        if last4.len() != 4 || !last4.bytes().all(|b| b.is_ascii_digit()) || !(1..=12).contains(&exp_month) {
            return Err(ProviderError::Unavailable("Stripe returned incomplete card details".into()));
        }
        Ok(AttachedMethod {
            provider_ref: format!("{customer}:{id}"),
            brand,
            last4: last4.to_owned(),
            exp_month,
            exp_year,
        })
    }

    async fn prepare(&self, charge: ChargeRequest<'_>) -> Result<Option<String>, ProviderError> {
        let Some((customer, method)) = charge.provider_ref.split_once(':') else {
            return Err(ProviderError::Unavailable(format!(
                "not a Stripe payment method: {}",
                charge.provider_ref
            )));
        };
        let (amount, currency, attempt) = (
            charge.amount_minor.to_string(),
            charge.currency.to_ascii_lowercase(),
            charge.attempt_id.to_string(),
        );
        let answer = self
            .call(
                hyper::Method::POST,
                "/v1/payment_intents",
                &[
                    ("amount", &amount),
                    ("currency", &currency),
                    ("customer", customer),
                    ("payment_method", method),
                    ("metadata[tenx_attempt_id]", &attempt),
                ],
                Some(&format!("tenx-pi-{attempt}")),
            )
            .await?;
        match (answer.status, answer.body.get("id").and_then(Value::as_str)) {
            (200, Some(id)) if is_object_id(id, "pi_") => Ok(Some(id.to_owned())),
            _ => Err(ProviderError::Unavailable(answer.error_message())),
        }
    }

    async fn charge(&self, charge: ChargeRequest<'_>) -> Result<ChargeOutcome, ProviderError> {
        let Some(intent) = charge.intent else {
            return Err(ProviderError::Unavailable("no PaymentIntent was prepared".into()));
        };
        let answer = self
            .call(
                hyper::Method::POST,
                &format!("/v1/payment_intents/{intent}/confirm"),
                &[],
                Some(&format!("tenx-confirm-{}", charge.attempt_id)),
            )
            .await?;
        match answer.status {
            200 if needs_the_customer(&answer.body) => self.give_up(intent).await,
            200 => Self::outcome(&answer.body).ok_or_else(|| {
                ProviderError::Unavailable(format!("the PaymentIntent {intent} was not confirmed"))
            }),
            402 => Ok(ChargeOutcome::Declined(decline(Some(answer.error_code("decline_code"))))),
            _ => Err(ProviderError::Unavailable(answer.error_message())),
        }
    }

    async fn retrieve(
        &self,
        _attempt_id: Uuid,
        intent: Option<&str>,
    ) -> Result<Option<ChargeOutcome>, ProviderError> {
        // No stored intent: it was never confirmed.
        let Some(id) = intent else { return Ok(None) };
        let found = self.intent(id).await?.ok_or(ProviderError::Timeout)?;
        if needs_the_customer(&found) {
            return self.give_up(id).await.map(Some);
        }
        if let Some(outcome) = Self::outcome(&found) {
            return Ok(Some(outcome));
        }
        if found.get("status").and_then(Value::as_str) == Some("canceled") {
            return Ok(None);
        }
        // Never confirmed (the process stopped between the two steps):
        // cancel it, so a confirmation still on its way cannot charge later.
        let Some(now) = self.cancel(id).await? else { return Ok(None) };
        // It moved on meanwhile: what it is now.
        Self::outcome(&now).map(Some).ok_or(ProviderError::Timeout)
    }

    /// A Refund of the payment's PaymentIntent (Idempotency-Key
    /// `tenx-refund-<id>`, `metadata.tenx_refund_id`).
    async fn refund(&self, refund: RefundRequest<'_>) -> Result<RefundOutcome, ProviderError> {
        let Some(intent) = refund.intent else {
            return Err(ProviderError::Unavailable("the payment has no PaymentIntent to refund".into()));
        };
        let (amount, id) = (refund.amount_minor.to_string(), refund.refund_id.to_string());
        if refund.resumed {
            // Made already? (Stripe's idempotency keys would also answer,
            // for 24 h; the refund's own metadata answers for ever.)
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("payment_intent", intent)
                .append_pair("limit", "100")
                .finish();
            let listed = self.call(hyper::Method::GET, &format!("/v1/refunds?{query}"), &[], None).await?;
            if listed.status != 200 {
                return Err(ProviderError::Timeout);
            }
            let made = listed.body.get("data").and_then(Value::as_array).and_then(|all| {
                all.iter().find(|r| {
                    r.pointer("/metadata/tenx_refund_id").and_then(Value::as_str) == Some(id.as_str())
                })
            });
            if let Some(made) = made {
                return refund_outcome(made);
            }
        }
        let answer = self
            .call(
                hyper::Method::POST,
                "/v1/refunds",
                &[("payment_intent", intent), ("amount", &amount), ("metadata[tenx_refund_id]", &id)],
                Some(&format!("tenx-refund-{id}")),
            )
            .await?;
        match answer.status {
            200 => refund_outcome(&answer.body),
            400 | 402 => Ok(RefundOutcome::Refused(answer.error_message())),
            _ => Err(ProviderError::Unavailable(answer.error_message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_states_map_to_outcomes() {
        let of = |v: Value| StripeProvider::outcome(&v);
        assert_eq!(
            of(serde_json::json!({"id": "pi_1", "status": "succeeded", "latest_charge": "ch_1"})),
            Some(ChargeOutcome::Succeeded { charge_id: "ch_1".into() })
        );
        assert_eq!(
            of(serde_json::json!({"status": "succeeded", "latest_charge": {"id": "ch_2"}})),
            Some(ChargeOutcome::Succeeded { charge_id: "ch_2".into() })
        );
        assert_eq!(of(serde_json::json!({"status": "processing"})), Some(ChargeOutcome::Processing));
        assert_eq!(
            of(serde_json::json!({"status": "requires_payment_method",
                "last_payment_error": {"decline_code": "insufficient_funds"}})),
            Some(ChargeOutcome::Declined(Decline::InsufficientFunds))
        );
        assert_eq!(of(serde_json::json!({"status": "requires_confirmation"})), None);
        assert_eq!(of(serde_json::json!({"status": "canceled"})), None);
    }

    #[test]
    fn only_payment_method_ids_are_tokens() {
        assert!(is_object_id("pm_1Abc", "pm_"));
        for bad in ["pm_", "tok_visa", "pm_a/b", "pm_a?x=1", "pm_a:b", "cus_1"] {
            assert!(!is_object_id(bad, "pm_"), "{bad}");
        }
    }
}
