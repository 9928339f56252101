//! Field rules, declared once in the contracts: each request field's rules
//! are `buf.validate` annotations beside it in `proto/` (protovalidate's
//! vocabulary: `required`, `string.max_len`, `string.pattern`, `uint32.lte`,
//! `repeated.max_items`, …). The build turns them into the statics and
//! `Checked` impls below; every server decodes requests through
//! [`CheckedCodec`], and the gateway writes the same rules into the OpenAPI
//! document ([`field_rules`]), so the document, the gRPC door and the HTTP
//! door cannot disagree.
//!
//! A request that breaks a rule never reaches the handler: the server
//! answers `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming every
//! field at fault, the same shape as the handlers' own checks.

use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

use prost::Message;
use regex::Regex;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The rules of one field (a subset of protovalidate's; the build refuses
/// any other). Semantics follow protovalidate: `required` means set and
/// not the zero value; with `ignore_empty` an empty value skips the rest;
/// otherwise every rule applies to whatever the field holds.
#[derive(Debug)]
pub struct FieldRules {
    pub required: bool,
    pub ignore_empty: bool,
    /// Length in characters (Unicode scalar values), or bytes for `bytes`.
    pub min_len: Option<u64>,
    pub max_len: Option<u64>,
    pub pattern: Option<Pattern>,
    pub uuid: bool,
    /// The value must be one of these (`string.in`).
    pub one_of: &'static [&'static str],
    pub min: Option<u64>,
    pub max: Option<u64>,
    /// An enum's value must be one it declares.
    pub defined_only: bool,
    /// An enum's value must not be one of these (`[0]`: must be set).
    pub not_in: &'static [i32],
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    /// Rules for each item of a list.
    pub items: Option<&'static FieldRules>,
}

/// A regular expression (Rust `regex` syntax, written to mean the same
/// in ECMA-262, the dialect of the OpenAPI document), compiled on first use.
pub struct Pattern {
    pub source: &'static str,
    compiled: OnceLock<Regex>,
}

impl Pattern {
    pub const fn new(source: &'static str) -> Self {
        Self { source, compiled: OnceLock::new() }
    }

    pub fn is_match(&self, text: &str) -> bool {
        // The build compiled every pattern once already.
        self.compiled.get_or_init(|| Regex::new(self.source).expect("checked at build time")).is_match(text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.source)
    }
}

/// Where a field sits in the request (`preferences[2].channel`); written
/// out only for a violation.
#[derive(Debug, Clone, Copy)]
pub struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    name: &'a str,
    index: Option<usize>,
}

impl<'a> Path<'a> {
    pub const ROOT: Path<'static> = Path { parent: None, name: "", index: None };

    pub fn field(&'a self, name: &'a str) -> Path<'a> {
        Path { parent: Some(self), name, index: None }
    }

    pub fn item(&'a self, name: &'a str, index: usize) -> Path<'a> {
        Path { parent: Some(self), name, index: Some(index) }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent
            && parent.parent.is_some()
        {
            write!(f, "{parent}.")?;
        }
        f.write_str(self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        Ok(())
    }
}

/// Every rule a message broke: field path and what is wrong.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<(String, String)>);

impl Violations {
    fn push(&mut self, at: &Path<'_>, reason: impl Into<String>) {
        self.0.push((at.to_string(), reason.into()));
    }
}

impl FieldRules {
    pub fn text(&self, v: &mut Violations, at: &Path<'_>, value: &str) {
        if value.is_empty() {
            if self.required {
                return v.push(at, "is required");
            }
            if self.ignore_empty {
                return;
            }
        }
        let chars = || value.chars().count() as u64;
        if let Some(min) = self.min_len
            && chars() < min
        {
            v.push(at, format!("must be at least {min} characters"));
        }
        if let Some(max) = self.max_len
            && (value.len() as u64 > max && chars() > max)
        {
            return v.push(at, format!("must be at most {max} characters"));
        }
        if self.uuid && !is_uuid(value) {
            v.push(at, "must be a UUID (8-4-4-4-12 hex digits)");
        }
        if !self.one_of.is_empty() && !self.one_of.contains(&value) {
            v.push(at, format!("must be one of {}", self.one_of.join(", ")));
        }
        if let Some(p) = &self.pattern
            && !p.is_match(value)
        {
            v.push(at, format!("must match {}", p.source));
        }
    }

    pub fn bytes(&self, v: &mut Violations, at: &Path<'_>, value: &[u8]) {
        if value.is_empty() && (self.required || self.ignore_empty) {
            if self.required {
                v.push(at, "is required");
            }
            return;
        }
        if let Some(min) = self.min_len
            && (value.len() as u64) < min
        {
            v.push(at, format!("must be at least {min} bytes"));
        }
        if let Some(max) = self.max_len
            && value.len() as u64 > max
        {
            v.push(at, format!("must be at most {max} bytes"));
        }
    }

    /// An unsigned number; `None` for an `optional` field left unset.
    pub fn number(&self, v: &mut Violations, at: &Path<'_>, value: Option<u64>) {
        let Some(value) = value else {
            if self.required {
                v.push(at, "is required");
            }
            return;
        };
        if value == 0 && (self.required || self.ignore_empty) {
            if self.required {
                v.push(at, "is required");
            }
            return;
        }
        if let Some(min) = self.min
            && value < min
        {
            v.push(at, format!("must be at least {min}"));
        }
        if let Some(max) = self.max
            && value > max
        {
            v.push(at, format!("must be at most {max}"));
        }
    }

    /// An enum's number, `defined` being every number it declares.
    pub fn enumeration(&self, v: &mut Violations, at: &Path<'_>, value: i32, defined: &[i32]) {
        if value == 0 && (self.required || self.ignore_empty) {
            if self.required {
                v.push(at, "is required");
            }
            return;
        }
        if self.defined_only && !defined.contains(&value) {
            return v.push(at, format!("{value} is not one of its values"));
        }
        if self.not_in.contains(&value) {
            v.push(at, if value == 0 { "must be set".to_owned() } else { format!("must not be {value}") });
        }
    }

    /// A list's length (its items are checked one by one with `items`).
    pub fn list(&self, v: &mut Violations, at: &Path<'_>, len: usize) {
        let len = len as u64;
        if let Some(min) = self.min_items
            && len < min
        {
            v.push(at, format!("must hold at least {min} items"));
        }
        if let Some(max) = self.max_items
            && len > max
        {
            v.push(at, format!("must hold at most {max} items"));
        }
    }

    /// A message field that must be set.
    pub fn present(&self, v: &mut Violations, at: &Path<'_>, set: bool) {
        if self.required && !set {
            v.push(at, "is required");
        }
    }
}

/// `8-4-4-4-12` hex digits, any case (protovalidate's `string.uuid`).
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A message whose rules the codec checks. The build implements it for
/// every tenx message; only RPC requests are checked when decoded (an
/// answer or an event is never refused by its reader).
pub trait Checked {
    /// An RPC's request: checked as it is decoded.
    const REQUEST: bool = false;

    /// Adds every rule this message breaks, its fields under `at`.
    fn check_into(&self, _violations: &mut Violations, _at: &Path<'_>) {}

    /// Every rule this message breaks, all of them.
    fn check(&self) -> Result<(), Violations> {
        let mut violations = Violations::default();
        self.check_into(&mut violations, &Path::ROOT);
        if violations.0.is_empty() { Ok(()) } else { Err(violations) }
    }
}

/// The status for a request that broke its rules: the message names the
/// first field as the handlers' own checks do (`invalid email: …`), the
/// details list every one.
pub fn refusal(violations: Violations) -> Status {
    let message = match violations.0.first() {
        Some((field, reason)) => format!("invalid {field}: {reason}"),
        None => "invalid request".to_owned(),
    };
    let details: Vec<FieldViolation> =
        violations.0.into_iter().map(|(field, reason)| FieldViolation::new(field, reason)).collect();
    Status::with_error_details(Code::InvalidArgument, message, ErrorDetails::with_bad_request(details))
}

/// [`tonic_prost::ProstCodec`] whose decoder checks a request's rules.
#[derive(Debug, Clone)]
pub struct CheckedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Checked + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(ProstDecoder::default())
    }
}

/// Decodes with prost, then refuses a request that breaks its rules.
#[derive(Debug)]
pub struct CheckedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + Checked> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let item = self.0.decode(buf)?;
        if U::REQUEST
            && let Some(message) = &item
        {
            message.check().map_err(refusal)?;
        }
        Ok(item)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[allow(clippy::all, clippy::pedantic)] // generated code
mod generated {
    include!(concat!(env!("OUT_DIR"), "/rules_impl.rs"));
}

pub use generated::field_rules;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::v1 as auth;
    use crate::notification::v1 as notification;

    fn fields(result: Result<(), Violations>) -> Vec<String> {
        result.err().map(|v| v.0.into_iter().map(|(f, _)| f).collect()).unwrap_or_default()
    }

    fn sign_up(email: &str, password: &str, display_name: &str) -> auth::SignUpRequest {
        auth::SignUpRequest {
            email: email.into(),
            password: password.into(),
            display_name: display_name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_request_reports_every_field_that_breaks_its_rules() {
        assert!(sign_up("ada@example.com", "long enough pw", "Ada Lovelace").check().is_ok());
        assert_eq!(fields(sign_up("", "short", "Ada\u{7}").check()), ["email", "password", "display_name"]);
        assert_eq!(fields(sign_up("ada@example.com", &"p".repeat(1025), "").check()), ["password"]);
        // Lengths are characters, not bytes.
        assert!(sign_up("ada@example.com", &"é".repeat(1024), "").check().is_ok());
    }

    #[test]
    fn labels_refuse_control_characters_and_spaces_at_either_end() {
        for bad in [" Ada", "Ada ", "A\nda", "\u{85}", &"x".repeat(101)] {
            assert_eq!(
                fields(sign_up("a@example.com", "long enough pw", bad).check()),
                ["display_name"],
                "{bad:?}"
            );
        }
        for good in ["", "A", "Ada  Lovelace", "Zoë 🚀", &"x".repeat(100)] {
            assert!(sign_up("a@example.com", "long enough pw", good).check().is_ok(), "{good:?}");
        }
    }

    #[test]
    fn nested_and_listed_fields_are_named_by_their_path() {
        let preference = |category: &str, channel: i32| notification::Preference {
            category: category.into(),
            channel,
            ..Default::default()
        };
        let request = notification::UpdatePreferencesRequest {
            preferences: vec![preference("account", 1), preference("nope", 0)],
        };
        assert_eq!(fields(request.check()), ["preferences[1].category", "preferences[1].channel"]);
        assert_eq!(fields(notification::UpdatePreferencesRequest::default().check()), ["preferences"]);
        let ids = notification::MarkReadRequest { notification_ids: vec![uuid(), "x".into()] };
        assert_eq!(fields(ids.check()), ["notification_ids[1]"]);
    }

    fn uuid() -> String {
        "0196f2a0-7c1e-7d3a-9b1e-0123456789ab".to_owned()
    }

    #[test]
    fn empty_means_unset_only_where_the_contract_says_so() {
        // An optional UUID may be left empty; a required one may not.
        assert!(auth::GetUserRequest::default().check().is_ok());
        assert_eq!(fields(auth::GetUserRequest { user_id: "me".into() }.check()), ["user_id"]);
        assert_eq!(fields(auth::RevokeSessionRequest::default().check()), ["session_id"]);
        assert!(auth::RevokeSessionRequest { session_id: uuid().to_uppercase() }.check().is_ok());
    }

    #[test]
    fn answers_and_events_are_never_checked() {
        // A response holding a message a request's rules cover: not a request.
        const { assert!(!notification::GetPreferencesResponse::REQUEST) };
        const { assert!(!auth::User::REQUEST) };
        const { assert!(auth::SignUpRequest::REQUEST) };
    }

    #[test]
    fn a_refusal_is_invalid_argument_with_bad_request_details() {
        let broken = sign_up("not an email", "short", "").check().expect_err("broken");
        let status = refusal(broken);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("invalid email: must match ^"), "{}", status.message());
        let details = status.get_details_bad_request().expect("BadRequest details");
        let named: Vec<&str> = details.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(named, ["email", "password"]);
    }

    #[test]
    fn every_pattern_means_the_same_in_ecma_262() {
        // The OpenAPI document carries the patterns as they are; keep to the
        // syntax both dialects read alike (no lookaround, no \p, no named groups).
        for (message, field) in
            [("tenx.auth.v1.SignUpRequest", "email"), ("tenx.auth.v1.SignUpRequest", "display_name")]
        {
            let rules = field_rules(message, field).expect("annotated");
            let source = rules.pattern.as_ref().expect("a pattern").source;
            assert!(
                !source.contains("(?=") && !source.contains("(?<") && !source.contains("\\p"),
                "{source}"
            );
        }
    }
}
