//! Billing's errors and their one mapping to a gRPC status.

use std::time::Duration;

use tenx_common::db::DbError;
use tenx_common::grpc::ApiError;
use tonic_types::StatusExt;

/// The domain of billing's ErrorInfo reasons.
pub const DOMAIN: &str = "billing.tenx";

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// PERMISSION_DENIED, saying what the caller lacks.
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// FAILED_PRECONDITION with a machine-readable reason.
    #[error("{message}")]
    Refused { reason: &'static str, message: String },
    /// ABORTED: a concurrent request holds what this one needs.
    #[error("{message}")]
    Busy { reason: &'static str, message: String, retry_after: Duration },
    /// UNAVAILABLE because of the payment provider.
    #[error("{message}")]
    Provider { reason: &'static str, message: String },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Internal(String),
    /// An answer already decided (a stored idempotent response), as is.
    #[error("{0}")]
    Replayed(tonic::Status),
}

impl BillingError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into() }
    }

    pub fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Refused { reason, message: message.into() }
    }

    /// Whether this outcome was decided after the request was accepted and
    /// is stored under its idempotency key (replayed as is). Transient
    /// failures are not: a retry may succeed.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::NotFound(_) | Self::Refused { .. })
    }
}

impl From<BillingError> for tonic::Status {
    fn from(error: BillingError) -> Self {
        let api = match error {
            BillingError::Invalid { field, reason } => ApiError::invalid(&field, reason),
            BillingError::Unauthenticated(m) => ApiError::Unauthenticated(m.to_owned()),
            BillingError::PermissionDenied(m) => ApiError::PermissionDenied(m.to_owned()),
            BillingError::NotFound(_) => ApiError::NotFound(error.to_string()),
            BillingError::Refused { reason, message } => {
                ApiError::Refused { domain: DOMAIN, reason, message }
            }
            BillingError::Busy { reason, message, retry_after } => {
                ApiError::Aborted { domain: DOMAIN, reason, message, retry_after }
            }
            BillingError::Provider { reason, message } => {
                let details = tonic_types::ErrorDetails::with_error_info(
                    reason,
                    DOMAIN,
                    std::collections::HashMap::<String, String>::new(),
                );
                return tonic::Status::with_error_details(tonic::Code::Unavailable, message, details);
            }
            BillingError::Db(e) => e.into(),
            BillingError::Postgres(e) => e.into(),
            BillingError::Internal(m) => ApiError::internal(std::io::Error::other(m)),
            BillingError::Replayed(status) => return status,
        };
        api.into()
    }
}
