//! Stripe's webhook: a signed event that a payment's outcome is known.
//!
//! The `Stripe-Signature` header is `t=<unix seconds>,v1=<hex HMAC-SHA256
//! of "<t>.<body>" under the endpoint's secret>` (several `v1` while a
//! secret is rolled). An event is accepted only when one `v1` matches and
//! `t` is within the tolerance of now, so a captured event cannot be
//! replayed later. Nothing in the event is trusted beyond "look at this
//! attempt now": its reconcile job is made due and asks Stripe itself.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("signature: {0}")]
    BadSignature(&'static str),
    #[error("payload: {0}")]
    BadPayload(&'static str),
}

/// The longest `Stripe-Signature` header taken (Stripe's is ~150 bytes).
const MAX_HEADER: usize = 1024;

/// What billing takes from a verified event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEvent {
    /// `evt_…`: events are handled once each.
    pub id: String,
    pub kind: String,
    /// The attempt it is about (`metadata.tenx_attempt_id` of the
    /// PaymentIntent), when it is about one of ours.
    pub attempt: Option<Uuid>,
    /// The PaymentIntent's id, checked against the attempt's.
    pub intent: Option<String>,
}

/// Verifies `header` over `payload` with `secret` at `now`, then parses.
pub fn verify(
    payload: &[u8],
    header: &str,
    secret: &str,
    tolerance: Duration,
    now: SystemTime,
) -> Result<ProviderEvent, WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::BadSignature("no webhook secret is configured"));
    }
    // Stripe's header is short (a timestamp and one or two signatures): a
    // longer one is refused before anything is hashed.
    if header.len() > MAX_HEADER {
        return Err(WebhookError::BadSignature("the signature header is too long"));
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", hex)) => signatures.extend(decode_hex(hex).filter(|s| s.len() == 32)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::BadSignature("no timestamp (t=)"))?;
    if signatures.is_empty() {
        return Err(WebhookError::BadSignature("no v1 signature"));
    }
    let signed_at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(timestamp))
        .ok_or(WebhookError::BadSignature("the timestamp is impossible"))?;
    let age = now.duration_since(signed_at).unwrap_or_else(|e| e.duration());
    if age > tolerance {
        return Err(WebhookError::BadSignature("the timestamp is outside the tolerance"));
    }
    // One MAC over the body, compared with each candidate in constant time.
    let expected = mac(secret, timestamp, payload);
    let matches = signatures
        .iter()
        .any(|signature| signature.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
    if !matches {
        return Err(WebhookError::BadSignature("no signature matches"));
    }
    parse(payload)
}

fn parse(payload: &[u8]) -> Result<ProviderEvent, WebhookError> {
    let event: Value = serde_json::from_slice(payload).map_err(|_| WebhookError::BadPayload("not JSON"))?;
    let text = |path: &str| event.pointer(path).and_then(Value::as_str);
    let id = text("/id").filter(|id| id.starts_with("evt_") && id.len() <= 255);
    let (Some(id), Some(kind)) = (id, text("/type")) else {
        return Err(WebhookError::BadPayload("an event needs an evt_ id and a type"));
    };
    let is_intent = text("/data/object/object") == Some("payment_intent");
    Ok(ProviderEvent {
        id: id.to_owned(),
        kind: kind.to_owned(),
        attempt: text("/data/object/metadata/tenx_attempt_id")
            .filter(|_| is_intent)
            .and_then(|a| Uuid::parse_str(a).ok()),
        intent: text("/data/object/id").filter(|_| is_intent).map(str::to_owned),
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// A signature as Stripe makes it (tests sign their own events with it).
pub fn sign(payload: &[u8], secret: &str, at: SystemTime) -> String {
    let t = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let hex: String = mac(secret, t, payload).iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Stripe's MAC: HMAC-SHA256 of `<t>.<payload>` under the secret.
fn mac(secret: &str, t: u64, payload: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    fn event() -> Vec<u8> {
        let attempt = Uuid::nil();
        serde_json::json!({"id": "evt_1", "type": "payment_intent.succeeded",
            "data": {"object": {"object": "payment_intent", "id": "pi_1",
                "metadata": {"tenx_attempt_id": attempt.to_string()}}}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_signed_event_is_accepted_and_names_its_attempt() {
        let now = SystemTime::now();
        let payload = event();
        let verified = verify(&payload, &sign(&payload, SECRET, now), SECRET, Duration::from_secs(300), now);
        let verified = verified.expect("valid");
        assert_eq!((verified.id.as_str(), verified.attempt), ("evt_1", Some(Uuid::nil())));
        assert_eq!(verified.intent.as_deref(), Some("pi_1"));
    }

    #[test]
    fn forged_altered_stale_or_unsigned_events_are_refused() {
        let now = SystemTime::now();
        let payload = event();
        let tolerance = Duration::from_secs(300);
        let forged = sign(&payload, "whsec_other", now);
        assert!(verify(&payload, &forged, SECRET, tolerance, now).is_err(), "another secret");
        let mut altered = payload.clone();
        altered[10] ^= 1;
        assert!(
            verify(&altered, &sign(&payload, SECRET, now), SECRET, tolerance, now).is_err(),
            "altered body"
        );
        let stale = sign(&payload, SECRET, now - Duration::from_secs(301));
        assert!(verify(&payload, &stale, SECRET, tolerance, now).is_err(), "replayed after the tolerance");
        let valid = sign(&payload, SECRET, now);
        let flood = format!("{},{}", valid, "v1=00,".repeat(400));
        let overflow = format!("t=18446744073709551615,v1={}", "00".repeat(32));
        for header in ["", "t=1", "v1=00", "t=x,v1=zz", overflow.as_str(), flood.as_str()] {
            assert!(verify(&payload, header, SECRET, tolerance, now).is_err(), "{header:?}");
        }
        assert!(verify(&payload, &sign(&payload, "", now), "", tolerance, now).is_err(), "no secret set");
    }
}
