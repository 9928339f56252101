//! Payment providers. The built-in simulated provider has fixed test
//! tokens, so every payment path runs in tests and local development; a
//! real provider (Stripe, Adyen) implements the same trait, and `Core`
//! holds whichever the settings name as `Arc<dyn PaymentProvider>`.

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
    pub last4: &'static str,
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
    Succeeded { charge_id: String },
    Declined(Decline),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused to process it: certainly not charged.
    #[error("the payment provider failed: {0}")]
    Unavailable(String),
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
    /// Token → a reusable payment method.
    async fn attach(&self, token: &str) -> Result<AttachedMethod, ProviderError>;
    /// Charges a method; idempotent by `attempt_id` (the same id never
    /// charges twice).
    async fn charge(
        &self,
        attempt_id: Uuid,
        provider_ref: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<ChargeOutcome, ProviderError>;
    /// What happened to an attempt (after a timeout or a crash): `None`
    /// when the provider never saw it.
    async fn retrieve(&self, attempt_id: Uuid) -> Result<Option<ChargeOutcome>, ProviderError>;
}

/// The fixed test tokens: (token, brand, last 4, what every charge does).
const TOKENS: [(&str, &str, &str, Behaviour); 7] = [
    ("tok_success", "visa", "4242", Behaviour::Succeed),
    ("tok_declined", "visa", "0002", Behaviour::Decline(Decline::CardDeclined)),
    ("tok_insufficient_funds", "visa", "9995", Behaviour::Decline(Decline::InsufficientFunds)),
    ("tok_provider_error", "mastercard", "0119", Behaviour::Fail),
    ("tok_provider_timeout", "mastercard", "0341", Behaviour::LoseAnswer),
    ("tok_slow", "visa", "1881", Behaviour::Slow),
    ("tok_provider_hang", "mastercard", "5100", Behaviour::Hang),
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
}

/// In-memory provider, shared by the process. For development and tests
/// only: settings refuse it when `environment = "production"`.
#[derive(Debug, Default)]
pub struct SimulatedProvider {
    charges: Mutex<BTreeMap<Uuid, ChargeOutcome>>,
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

    async fn attach(&self, token: &str) -> Result<AttachedMethod, ProviderError> {
        let (token, brand, last4, _) = TOKENS
            .iter()
            .find(|(t, ..)| *t == token)
            .ok_or_else(|| ProviderError::Unavailable("unknown token".into()))?;
        Ok(AttachedMethod {
            provider_ref: format!("sim_{token}_{}", Uuid::new_v4().simple()),
            brand,
            last4,
            exp_month: 12,
            exp_year: 2034,
        })
    }

    async fn charge(
        &self,
        attempt_id: Uuid,
        provider_ref: &str,
        _amount_minor: i64,
        _currency: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
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
            Behaviour::Succeed | Behaviour::LoseAnswer | Behaviour::Slow | Behaviour::Hang => {
                ChargeOutcome::Succeeded { charge_id: format!("ch_sim_{}", attempt_id.simple()) }
            }
        };
        charges.insert(attempt_id, outcome.clone());
        while charges.len() > REMEMBERED {
            charges.pop_first();
        }
        if behaviour == Behaviour::LoseAnswer {
            return Err(ProviderError::Timeout);
        }
        Ok(outcome)
    }

    async fn retrieve(&self, attempt_id: Uuid) -> Result<Option<ChargeOutcome>, ProviderError> {
        Ok(self.charges.lock().unwrap_or_else(|p| p.into_inner()).get(&attempt_id).cloned())
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
        let first = provider.charge(attempt, &ok, 2000, "USD").await;
        assert!(matches!(first, Ok(ChargeOutcome::Succeeded { .. })));
        assert_eq!(provider.charge(attempt, &ok, 2000, "USD").await, first, "idempotent by attempt");
        assert_eq!(provider.charge_count(), 1);
        let declined = card("tok_insufficient_funds").await;
        assert_eq!(
            provider.charge(Uuid::new_v4(), &declined, 1, "USD").await,
            Ok(ChargeOutcome::Declined(Decline::InsufficientFunds))
        );
        let failing = card("tok_provider_error").await;
        assert!(matches!(
            provider.charge(Uuid::new_v4(), &failing, 1, "USD").await,
            Err(ProviderError::Unavailable(_))
        ));
        let lost = card("tok_provider_timeout").await;
        let attempt = Uuid::new_v4();
        assert_eq!(provider.charge(attempt, &lost, 1, "USD").await, Err(ProviderError::Timeout));
        assert!(
            matches!(provider.retrieve(attempt).await, Ok(Some(ChargeOutcome::Succeeded { .. }))),
            "found later"
        );
    }

    async fn provider_ref(provider: &SimulatedProvider, token: &str) -> String {
        provider.attach(token).await.map(|m| m.provider_ref).unwrap_or_default()
    }
}
