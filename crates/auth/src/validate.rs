//! Input rules the contracts cannot say. A request's field rules (an
//! email's form, lengths, UUIDs, scopes) are `buf.validate` annotations
//! in `proto/tenx/auth/v1/auth.proto`, checked before a handler runs
//! (`tenx_proto::rules`); what is left here normalises, parses, or checks
//! input that arrives some other way (configuration, the CLI).

use tenx_proto::rules::{Path, Violations, field_rules};
use uuid::Uuid;

use crate::error::AuthError;

/// The one form accounts are stored under (lower case), for an address
/// its RPC's contract rule has already checked.
pub fn canonical_email(raw: &str) -> String {
    raw.to_lowercase()
}

/// An email that arrives other than through an RPC (the CLI): checked by
/// the contract's rule for `SignUpRequest.email`, then canonical.
pub fn email(field: &'static str, raw: &str) -> Result<String, AuthError> {
    let rules = field_rules("tenx.auth.v1.SignUpRequest", "email")
        .ok_or_else(|| AuthError::Internal("SignUpRequest.email declares no rule".into()))?;
    let mut violations = Violations::default();
    rules.text(&mut violations, &Path::ROOT.field(field), raw);
    match violations.0.into_iter().next() {
        Some((_, reason)) => Err(AuthError::invalid(field, reason)),
        None => Ok(canonical_email(raw)),
    }
}

/// A UUID given as text.
pub fn id(field: &'static str, raw: &str) -> Result<Uuid, AuthError> {
    if raw.is_empty() {
        return Err(AuthError::invalid(field, "is required"));
    }
    Uuid::parse_str(raw).map_err(|_| AuthError::invalid(field, "must be a UUID"))
}

/// A service's name, as in auth's `service_clients`: `[a-z][a-z0-9-]*`,
/// at most 64 characters.
pub fn is_service_name(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// API key scopes (their form is the contract's), each once.
pub fn scopes(raw: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for scope in raw {
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_by_the_contract_and_lowercased() {
        assert_eq!(email("email", "Ada@Example.COM").ok().as_deref(), Some("ada@example.com"));
        assert_eq!(
            email("email", "o'brien+tag@mail.example.org").ok().as_deref(),
            Some("o'brien+tag@mail.example.org")
        );
        for bad in [
            "",
            " ada@example.com",
            "ada",
            "ada@",
            "@example.com",
            "ada@x",
            "a da@example.com",
            "ada@example.com'--",
            "a@b@c.d",
            "ada@-example.com",
        ] {
            assert!(email("email", bad).is_err(), "{bad:?} accepted");
        }
        assert!(email("email", &format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn scopes_are_kept_once_each() {
        assert_eq!(
            scopes(&["billing:read".into(), "billing:read".into(), "a".into()]),
            ["billing:read", "a"]
        );
    }
}
