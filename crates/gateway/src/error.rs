//! The gateway's one error type, and its two renderings: the JSON error
//! shape of the HTTP API and a gRPC status for the gRPC front door.
//!
//! `{"error": {"code": "invalid_argument", "message": "...", "details": [...]}}`
//! with the HTTP status chosen here from the gRPC code.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EdgeError {
    pub code: Code,
    pub message: String,
    /// Field violations (`{"field","description"}`, from a BadRequest)
    /// and machine-readable reasons (`{"reason","domain"}`, from an
    /// ErrorInfo, e.g. billing's `CURRENCY_MISMATCH`).
    pub details: Vec<Value>,
    /// For 429 and 503: when trying again may work.
    pub retry_after: Option<Duration>,
    /// Set for errors the HTTP layer itself decides (413, 404, 405).
    pub http_override: Option<StatusCode>,
}

impl EdgeError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: Vec::new(), retry_after: None, http_override: None }
    }

    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        let mut e = Self::new(Code::InvalidArgument, format!("invalid {field}: {description}"));
        e.details.push(json!({ "field": field, "description": description }));
        e
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }

    pub fn unavailable(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self { retry_after, ..Self::new(Code::Unavailable, message) }
    }

    pub fn http(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self { http_override: Some(status), ..Self::new(code, message) }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        if let Some(status) = self.http_override {
            return status;
        }
        match self.code {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Every name `code_name` gives, in gRPC code order: the `code`
    /// values the OpenAPI document lists.
    pub fn code_names() -> Vec<&'static str> {
        let mut names: Vec<_> = (1..=16).map(|c| Self::new(Code::from_i32(c), "").code_name()).collect();
        names.push(Self::http(StatusCode::PAYLOAD_TOO_LARGE, Code::InvalidArgument, "").code_name());
        names
    }

    /// The code's name in the JSON shape: `invalid_argument`, ….
    pub fn code_name(&self) -> &'static str {
        if self.http_override == Some(StatusCode::PAYLOAD_TOO_LARGE) {
            return "payload_too_large";
        }
        match self.code {
            Code::Ok => "ok",
            Code::Cancelled => "cancelled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code_name(), "message": self.message, "details": self.details } })
    }
}

/// An upstream's status, passed on: its code, message, field violations,
/// ErrorInfo reason and RetryInfo. Internal failures keep their details to
/// the logs.
impl From<tonic::Status> for EdgeError {
    fn from(status: tonic::Status) -> Self {
        let code = status.code();
        let message = match code {
            Code::Internal | Code::Unknown | Code::DataLoss => "internal error".to_owned(),
            Code::DeadlineExceeded => "the service did not answer in time".to_owned(),
            Code::Unavailable => "the service is unavailable; try again shortly".to_owned(),
            _ => status.message().to_owned(),
        };
        let mut error = Self::new(code, message);
        if let Some(bad) = status.get_details_bad_request() {
            error.details = bad
                .field_violations
                .iter()
                .map(|v| json!({ "field": v.field, "description": v.description }))
                .collect();
        }
        if let Some(info) = status.get_details_error_info()
            && !matches!(code, Code::Internal | Code::Unknown | Code::DataLoss)
        {
            let mut detail = json!({ "reason": info.reason, "domain": info.domain });
            if !info.metadata.is_empty() {
                detail["metadata"] = json!(info.metadata);
            }
            error.details.push(detail);
        }
        error.retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
        error
    }
}

impl From<EdgeError> for tonic::Status {
    fn from(error: EdgeError) -> Self {
        let mut details = tonic_types::ErrorDetails::new();
        for d in &error.details {
            if let (Some(reason), Some(domain)) = (d["reason"].as_str(), d["domain"].as_str()) {
                let metadata: std::collections::HashMap<String, String> = d["metadata"]
                    .as_object()
                    .map(|m| {
                        m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect()
                    })
                    .unwrap_or_default();
                details.set_error_info(reason, domain, metadata);
            }
            let (Some(field), Some(description)) = (d["field"].as_str(), d["description"].as_str()) else {
                continue;
            };
            details.add_bad_request_violation(field, description);
        }
        if let Some(after) = error.retry_after {
            details.set_retry_info(Some(after));
        }
        tonic::Status::with_error_details(error.code, error.message, details)
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        let mut response = (self.http_status(), Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<tenx_common::authn::AuthnError> for EdgeError {
    fn from(error: tenx_common::authn::AuthnError) -> Self {
        use tenx_common::authn::AuthnError;
        match error {
            AuthnError::Unauthenticated(message) => Self::unauthenticated(message),
            AuthnError::PermissionDenied(message) => Self::new(Code::PermissionDenied, message),
            AuthnError::Unavailable(message) => Self::unavailable(message, Some(Duration::from_secs(1))),
            // Its reason (`REAUTHENTICATION_REQUIRED`) goes with it.
            stale @ AuthnError::Reauthenticate { .. } => Self::from(tonic::Status::from(stale)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborted_is_409_with_retry_after_and_reasons_reach_the_json_and_back() {
        let mut details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(500)));
        details.set_error_info(
            "IDEMPOTENCY_KEY_IN_USE",
            "billing.tenx",
            std::collections::HashMap::<String, String>::new(),
        );
        let status = tonic::Status::with_error_details(Code::Aborted, "in use", details);
        let error = EdgeError::from(status);
        assert_eq!(error.http_status(), StatusCode::CONFLICT);
        assert_eq!(error.code_name(), "aborted");
        assert_eq!(
            error.body()["error"]["details"],
            json!([{ "reason": "IDEMPOTENCY_KEY_IN_USE", "domain": "billing.tenx" }])
        );
        let response = error.clone().into_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        // And on the gRPC door, the same details.
        let back = tonic::Status::from(error);
        assert_eq!(back.get_details_error_info().map(|i| i.reason), Some("IDEMPOTENCY_KEY_IN_USE".into()));
        assert!(back.get_details_retry_info().is_some());
    }

    #[test]
    fn failed_precondition_keeps_its_reason_next_to_field_violations() {
        let status = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "the customer bills in JPY",
            tonic_types::ErrorDetails::with_error_info(
                "CURRENCY_MISMATCH",
                "billing.tenx",
                std::collections::HashMap::<String, String>::new(),
            ),
        );
        let error = EdgeError::from(status);
        assert_eq!(error.http_status(), StatusCode::CONFLICT);
        assert_eq!(error.details, vec![json!({ "reason": "CURRENCY_MISMATCH", "domain": "billing.tenx" })]);
        let invalid = EdgeError::invalid("Idempotency-Key", "is required");
        assert_eq!(
            invalid.details,
            vec![json!({ "field": "Idempotency-Key", "description": "is required" })]
        );
    }
}
