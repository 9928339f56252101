//! Input rules shared by the RPCs. Each returns `Invalid` naming the
//! request field, so the caller learns exactly what to fix.

use uuid::Uuid;

use crate::error::AuthError;

pub const MAX_EMAIL_CHARS: usize = 254;
pub const MAX_NAME_CHARS: usize = 100;

/// Trims and lowercases an email address and checks its shape.
pub fn email(field: &'static str, raw: &str) -> Result<String, AuthError> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(AuthError::invalid(field, "is required"));
    }
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(AuthError::invalid(field, format!("must be at most {MAX_EMAIL_CHARS} characters")));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(AuthError::invalid(field, "must look like name@example.com"));
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"'@".contains(c);
    if local.is_empty()
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || local.chars().any(bad_char)
        || domain.chars().any(bad_char)
    {
        return Err(AuthError::invalid(field, "must look like name@example.com"));
    }
    Ok(email)
}

/// A short, printable label (display name, device or key name).
pub fn label(field: &'static str, raw: &str, required: bool) -> Result<String, AuthError> {
    let value = raw.trim();
    if required && value.is_empty() {
        return Err(AuthError::invalid(field, "is required"));
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(AuthError::invalid(field, format!("must be at most {MAX_NAME_CHARS} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(AuthError::invalid(field, "must not contain control characters"));
    }
    Ok(value.to_owned())
}

/// A UUID given as text.
pub fn id(field: &'static str, raw: &str) -> Result<Uuid, AuthError> {
    if raw.is_empty() {
        return Err(AuthError::invalid(field, "is required"));
    }
    Uuid::parse_str(raw).map_err(|_| AuthError::invalid(field, "must be a UUID"))
}

/// A required opaque token or code of bounded length.
pub fn token<'a>(field: &'static str, raw: &'a str, max: usize) -> Result<&'a str, AuthError> {
    if raw.is_empty() {
        return Err(AuthError::invalid(field, "is required"));
    }
    if raw.len() > max {
        return Err(AuthError::invalid(field, format!("must be at most {max} characters")));
    }
    Ok(raw)
}

/// A service's name, as in auth's `service_clients`: `[a-z][a-z0-9-]*`,
/// at most 64 characters.
pub fn is_service_name(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// API key scopes: 1–64 of `a-z 0-9 : _ -`, at most 32, deduplicated.
pub fn scopes(field: &'static str, raw: &[String]) -> Result<Vec<String>, AuthError> {
    if raw.len() > 32 {
        return Err(AuthError::invalid(field, "at most 32 scopes"));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for scope in raw {
        let ok = !scope.is_empty()
            && scope.len() <= 64
            && scope.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":_-".contains(&b));
        if !ok {
            return Err(AuthError::invalid(field, "each scope is 1-64 characters of a-z 0-9 : _ -"));
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(email("email", "  Ada@Example.COM ").ok().as_deref(), Some("ada@example.com"));
        for bad in
            ["", "ada", "ada@", "@example.com", "ada@x", "a da@example.com", "ada@example.com'--", "a@b@c.d"]
        {
            assert!(email("email", bad).is_err(), "{bad:?} accepted");
        }
        assert!(email("email", &format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn labels_reject_control_characters_and_length() {
        assert!(label("display_name", "Ada\u{0}", false).is_err());
        assert!(label("display_name", &"x".repeat(101), false).is_err());
        assert!(label("name", "  ", true).is_err());
        assert_eq!(label("display_name", " Ada Lovelace ", false).ok().as_deref(), Some("Ada Lovelace"));
    }

    #[test]
    fn scopes_are_restricted() {
        assert!(
            scopes("scopes", &["billing:read".into(), "billing:read".into()]).is_ok_and(|s| s.len() == 1)
        );
        assert!(scopes("scopes", &["DROP TABLE".into()]).is_err());
    }
}
