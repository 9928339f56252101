//! Payment providers. `Core` holds whichever the settings name as
//! `Arc<dyn PaymentProvider>`: [`crate::stripe::StripeProvider`] takes real
//! money over Stripe's API; the simulated provider here has fixed test
//! tokens, so every payment path runs in tests and local development, and
//! is refused where `deployment.environment` is `production`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

/// A card attached at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedMethod {
    /// The provider's reference for charging it later.
    pub provider_ref: String,
    /// `visa`, `mastercard`, `amex` or `other`.
    pub brand: &'static str,
    pub last4: String,
    pub exp_month: i16,
    pub exp_year: i16,
}

/// Why a customer's charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    CardDeclined,
    InsufficientFunds,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        charge_id: String,
    },
    Declined(Decline),
    /// Accepted, outcome later (a bank debit): the attempt stays pending
    /// until a lookup (its reconcile job, woken by the provider's webhook)
    /// finds it settled.
    Processing,
}

/// Whose payment method is being attached.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub customer_id: Uuid,
    /// The provider reference of one of the customer's earlier methods, if
    /// any (Stripe finds the customer's own Stripe customer there).
    pub earlier_ref: Option<&'a str>,
}

/// One charge of an attempt.
#[derive(Debug, Clone, Copy)]
pub struct ChargeRequest<'a> {
    /// The idempotency key at the provider.
    pub attempt_id: Uuid,
    pub provider_ref: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    /// What [`PaymentProvider::prepare`] returned, stored on the attempt.
    pub intent: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused to process it: certainly not charged.
    #[error("the payment provider failed: {0}")]
    Unavailable(String),
    /// The provider refused what the customer gave (an unknown or declined
    /// card at attach time): their error, not the provider's.
    #[error("{0}")]
    Rejected(String),
    /// No answer: the charge may or may not have happened.
    #[error("the payment provider did not answer in time")]
    Timeout,
}

#[tonic::async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug + 'static {
    /// Stored on payment methods and attempts.
    fn name(&self) -> &'static str;
    /// Whether `token` can be attached at all (checked before anything is
    /// written, so an unknown token is INVALID_ARGUMENT).
    fn recognizes(&self, token: &str) -> bool;
    /// Token → a reusable payment method of `owner`.
    async fn attach(&self, owner: Owner<'_>, token: &str) -> Result<AttachedMethod, ProviderError>;
    /// Registers a charge at the provider without moving money, when the
    /// provider needs a record to look the attempt up by later (Stripe: an
    /// unconfirmed PaymentIntent). What it returns is stored on the attempt
    /// before [`Self::charge`] runs, and handed to `charge` and
    /// [`Self::retrieve`]: an attempt that has none was never charged.
    async fn prepare(&self, _charge: ChargeRequest<'_>) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }
    /// Charges a method; idempotent by `attempt_id` (the same id never
    /// charges twice).
    async fn charge(&self, charge: ChargeRequest<'_>) -> Result<ChargeOutcome, ProviderError>;
    /// What happened to an attempt (after a timeout or a crash): `None`
    /// when it was certainly not charged (the provider never saw it, or it
    /// is canceled there now).
    async fn retrieve(
        &self,
        attempt_id: Uuid,
        intent: Option<&str>,
    ) -> Result<Option<ChargeOutcome>, ProviderError>;
    /// Gives back `amount_minor` of a succeeded charge; idempotent by
    /// `refund_id` (the same id never refunds twice, and a repeat answers
    /// what the first did).
    async fn refund(&self, refund: RefundRequest<'_>) -> Result<RefundOutcome, ProviderError>;
}

/// One refund of a charge.
#[derive(Debug, Clone, Copy)]
pub struct RefundRequest<'a> {
    /// The provider's idempotency key.
    pub refund_id: Uuid,
    /// The charge: the attempt's id, its provider record (Stripe: the
    /// PaymentIntent) and the provider's charge id.
    pub attempt_id: Uuid,
    pub intent: Option<&'a str>,
    pub charge_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    /// A retry of a refund whose answer was lost: the provider looks for
    /// it before making one.
    pub resumed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Succeeded {
        refund_id: String,
    },
    /// The provider refused (e.g. more than the charge): nothing moved.
    Refused(String),
}

/// The fixed test tokens: (token, brand, last 4, what every charge does).
const TOKENS: [(&str, &str, &str, Behaviour); 8] = [
    ("tok_success", "visa", "4242", Behaviour::Succeed),
    ("tok_declined", "visa", "0002", Behaviour::Decline(Decline::CardDeclined)),
    ("tok_insufficient_funds", "visa", "9995", Behaviour::Decline(Decline::InsufficientFunds)),
    ("tok_provider_error", "mastercard", "0119", Behaviour::Fail),
    ("tok_provider_timeout", "mastercard", "0341", Behaviour::LoseAnswer),
    ("tok_slow", "visa", "1881", Behaviour::Slow),
    ("tok_provider_hang", "mastercard", "5100", Behaviour::Hang),
    ("tok_refund_answer_lost", "visa", "0077", Behaviour::LoseRefundAnswer),
];

/// How long a `tok_slow` charge takes (long enough for a caller to give up).
pub const SLOW_CHARGE: Duration = Duration::from_millis(1500);

/// Charges remembered for `retrieve`; the oldest are forgotten past this
/// (attempt ids are time-ordered UUIDv7s), so the simulator's memory is
/// bounded however long it runs.
const REMEMBERED: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Succeed,
    Decline(Decline),
    Fail,
    /// Charges, then the answer is lost (a timeout).
    LoseAnswer,
    /// Succeeds after [`SLOW_CHARGE`].
    Slow,
    /// Never answers and never charges (a request lost on the way).
    Hang,
    /// Charges; a refund of the charge is made, then its answer is lost
    /// (a lookup finds it).
    LoseRefundAnswer,
}

/// In-memory provider, shared by the process. For development and tests
/// only: settings refuse it when `environment = "production"`.
#[derive(Debug, Default)]
pub struct SimulatedProvider {
    charges: Mutex<BTreeMap<Uuid, ChargeOutcome>>,
    /// Refunds by their id: (the attempt refunded, amount, outcome).
    refunds: Mutex<BTreeMap<Uuid, (Uuid, i64, RefundOutcome)>>,
    /// Charges whose refunds' first answers are lost.
    refund_answers_lost: Mutex<std::collections::BTreeSet<Uuid>>,
}

impl SimulatedProvider {
    fn behaviour(provider_ref: &str) -> Option<Behaviour> {
        let token = provider_ref.strip_prefix("sim_")?.rsplit_once('_').map(|(t, _)| t)?;
        TOKENS.iter().find(|(t, ..)| *t == token).map(|(.., b)| *b)
    }

    /// Charges made so far (tests check nothing was charged twice).
    pub fn charge_count(&self) -> usize {
        self.charges.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[tonic::async_trait]
impl PaymentProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn recognizes(&self, token: &str) -> bool {
        TOKENS.iter().any(|(t, ..)| *t == token)
    }

    async fn attach(&self, _owner: Owner<'_>, token: &str) -> Result<AttachedMethod, ProviderError> {
        let (token, brand, last4, _) = TOKENS
            .iter()
            .find(|(t, ..)| *t == token)
            .ok_or_else(|| ProviderError::Unavailable("unknown token".into()))?;
        Ok(AttachedMethod {
            provider_ref: format!("sim_{token}_{}", Uuid::new_v4().simple()),
            brand,
            last4: (*last4).to_owned(),
            exp_month: 12,
            exp_year: 2034,
        })
    }

    async fn charge(&self, charge: ChargeRequest<'_>) -> Result<ChargeOutcome, ProviderError> {
        let ChargeRequest { attempt_id, provider_ref, .. } = charge;
        let behaviour = Self::behaviour(provider_ref)
            .ok_or_else(|| ProviderError::Unavailable(format!("unknown payment method {provider_ref}")))?;
        match behaviour {
            Behaviour::Hang => std::future::pending::<()>().await,
            Behaviour::Slow => tokio::time::sleep(SLOW_CHARGE).await,
            _ => {}
        }
        let mut charges = self.charges.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = charges.get(&attempt_id) {
            return Ok(done.clone());
        }
        let outcome = match behaviour {
            Behaviour::Fail => return Err(ProviderError::Unavailable("simulated processing error".into())),
            Behaviour::Decline(d) => ChargeOutcome::Declined(d),
            Behaviour::Succeed
            | Behaviour::LoseAnswer
            | Behaviour::Slow
            | Behaviour::Hang
            | Behaviour::LoseRefundAnswer => {
                ChargeOutcome::Succeeded { charge_id: format!("ch_sim_{}", attempt_id.simple()) }
            }
        };
        charges.insert(attempt_id, outcome.clone());
        while charges.len() > REMEMBERED {
            charges.pop_first();
        }
        drop(charges);
        if behaviour == Behaviour::LoseRefundAnswer {
            let mut lost = self.refund_answers_lost.lock().unwrap_or_else(|p| p.into_inner());
            lost.insert(attempt_id);
            while lost.len() > REMEMBERED {
                lost.pop_first();
            }
        }
        if behaviour == Behaviour::LoseAnswer {
            return Err(ProviderError::Timeout);
        }
        Ok(outcome)
    }

    async fn retrieve(
        &self,
        attempt_id: Uuid,
        _intent: Option<&str>,
    ) -> Result<Option<ChargeOutcome>, ProviderError> {
        Ok(self.charges.lock().unwrap_or_else(|p| p.into_inner()).get(&attempt_id).cloned())
    }

    /// Refunds only a charge it made, once per refund id (how much is
    /// billing's to check, under the payment's row lock).
    async fn refund(&self, refund: RefundRequest<'_>) -> Result<RefundOutcome, ProviderError> {
        let charged = matches!(
            self.charges.lock().unwrap_or_else(|p| p.into_inner()).get(&refund.attempt_id),
            Some(ChargeOutcome::Succeeded { .. })
        );
        let mut refunds = self.refunds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, done)) = refunds.get(&refund.refund_id) {
            return Ok(done.clone());
        }
        let outcome = if !charged {
            RefundOutcome::Refused("no such charge".into())
        } else {
            RefundOutcome::Succeeded { refund_id: format!("re_sim_{}", refund.refund_id.simple()) }
        };
        refunds.insert(refund.refund_id, (refund.attempt_id, refund.amount_minor, outcome.clone()));
        while refunds.len() > REMEMBERED {
            refunds.pop_first();
        }
        let lost =
            self.refund_answers_lost.lock().unwrap_or_else(|p| p.into_inner()).contains(&refund.attempt_id);
        if lost && !refund.resumed {
            return Err(ProviderError::Timeout);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_test_token_charges_its_way_and_never_twice_for_one_attempt() {
        let provider = SimulatedProvider::default();
        assert!(!provider.recognizes("tok_other"));
        let card = |t| async move { provider_ref(&SimulatedProvider::default(), t).await };
        let ok = card("tok_success").await;
        let attempt = Uuid::new_v4();
        let first = provider.charge(req(attempt, &ok, 2000)).await;
        assert!(matches!(first, Ok(ChargeOutcome::Succeeded { .. })));
        assert_eq!(provider.charge(req(attempt, &ok, 2000)).await, first, "idempotent by attempt");
        assert_eq!(provider.charge_count(), 1);
        let declined = card("tok_insufficient_funds").await;
        assert_eq!(
            provider.charge(req(Uuid::new_v4(), &declined, 1)).await,
            Ok(ChargeOutcome::Declined(Decline::InsufficientFunds))
        );
        let failing = card("tok_provider_error").await;
        assert!(matches!(
            provider.charge(req(Uuid::new_v4(), &failing, 1)).await,
            Err(ProviderError::Unavailable(_))
        ));
        let lost = card("tok_provider_timeout").await;
        let attempt = Uuid::new_v4();
        assert_eq!(provider.charge(req(attempt, &lost, 1)).await, Err(ProviderError::Timeout));
        assert!(
            matches!(provider.retrieve(attempt, None).await, Ok(Some(ChargeOutcome::Succeeded { .. }))),
            "found later"
        );
    }

    fn req(attempt_id: Uuid, provider_ref: &str, amount_minor: i64) -> ChargeRequest<'_> {
        ChargeRequest { attempt_id, provider_ref, amount_minor, currency: "USD", intent: None }
    }

    async fn provider_ref(provider: &SimulatedProvider, token: &str) -> String {
        let owner = Owner { customer_id: Uuid::new_v4(), earlier_ref: None };
        provider.attach(owner, token).await.map(|m| m.provider_ref).unwrap_or_default()
    }
}
