//! The one error type a service's handlers return, and its mapping to a
//! gRPC status. Each service converts its own `thiserror` enum into
//! [`ApiError`]; this is the only place codes are chosen.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::db::DbError;
use crate::queue::QueueError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; `field` is the request field's name as in the proto.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Rate limited or locked out; the caller may retry after `retry_after`.
    #[error("{message}")]
    ResourceExhausted { message: String, retry_after: Duration },
    /// Well formed, but the state does not allow it; `reason` is machine
    /// readable (sent as google.rpc.ErrorInfo of `domain`).
    #[error("{message}")]
    Refused { domain: &'static str, reason: &'static str, message: String },
    /// A concurrent request holds what this one needs; retrying after
    /// `retry_after` is safe.
    #[error("{message}")]
    Aborted { domain: &'static str, reason: &'static str, message: String, retry_after: Duration },
    /// A dependency is down; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure: logged with its cause, returned
    /// to the caller as an opaque "internal error".
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.to_owned(), reason: reason.into() }
    }

    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(error))
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument { field, reason } => Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid {field}: {reason}"),
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::ResourceExhausted { message, retry_after } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ApiError::Refused { domain, reason, message } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    reason,
                    domain,
                    std::collections::HashMap::<String, String>::new(),
                ),
            ),
            ApiError::Aborted { domain, reason, message, retry_after } => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.set_error_info(reason, domain, std::collections::HashMap::<String, String>::new());
                Status::with_error_details(Code::Aborted, message, details)
            }
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, source = ?cause.source(), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        // No connection within the acquire timeout (or a read shared with
        // this caller got none): overloaded or down. Or the connection was
        // lost under the call (the server, or a pooler, went away; its
        // transaction is rolled back): try again.
        let lost = match &error {
            DbError::Pool(_) | DbError::Shared(_) => true,
            DbError::Postgres(e) => connection_lost(e),
            _ => false,
        };
        if lost {
            tracing::warn!(%error, "database unavailable");
            return ApiError::Unavailable("database unavailable".into());
        }
        // `database.statement_timeout_ms` ran out (or an operator cancelled
        // the statement): its transaction is rolled back, so trying again
        // later is safe.
        if let DbError::Postgres(e) = &error
            && e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
        {
            tracing::warn!(%error, "database statement cancelled");
            return ApiError::Unavailable("the database did not answer in time; try again".into());
        }
        ApiError::internal(error)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        DbError::Postgres(error).into()
    }
}

/// The connection closed or broke, or the server says it is going away
/// or cannot be reached (SQLSTATE class 08, 57P01–57P03): nothing about
/// the call itself.
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        tracing::warn!(%error, "message broker unavailable");
        ApiError::Unavailable("message broker unavailable".into())
    }
}
