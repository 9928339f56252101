//! Auth's errors, and their one mapping to a gRPC status.

use std::time::Duration;

use tenx_common::db::DbError;
use tenx_common::grpc::ApiError;
use tenx_common::queue::QueueError;

/// The domain of auth's ErrorInfo reasons.
pub const DOMAIN: &str = "auth.tenx";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("this address is already a member of the organization")]
    AlreadyMember,
    /// Wrong email/password, bad or expired token: never says which.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A well-formed code or current password that proves nothing (wrong,
    /// used or expired): PERMISSION_DENIED, not a malformed request.
    #[error("{0}")]
    Wrong(&'static str),
    #[error("too many failed logins")]
    LockedOut { retry_after: Duration },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("at most {0} API keys per user; revoke one first")]
    TooManyKeys(u32),
    #[error("too many password checks at once; try again shortly")]
    Busy,
    /// Well formed, but the account's state does not allow it; `reason`
    /// is machine readable (ErrorInfo of [`DOMAIN`]).
    #[error("{message}")]
    Refused { reason: &'static str, message: &'static str },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Authn(#[from] tenx_common::authn::AuthnError),
    #[error("{0}")]
    Internal(String),
}

impl AuthError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { field, reason: reason.into() }
    }
}

/// Of the errors of statements pipelined in one transaction, the one that
/// failed it: the statements sent after it only say it was aborted.
pub fn root_cause<const N: usize>(errors: [Option<AuthError>; N]) -> AuthError {
    use tokio_postgres::error::SqlState;
    let aborted = |e: &AuthError| match e {
        AuthError::Postgres(pg) => pg.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        _ => false,
    };
    errors
        .into_iter()
        .flatten()
        .reduce(|kept, next| if aborted(&kept) && !aborted(&next) { next } else { kept })
        .unwrap_or_else(|| AuthError::Internal("a pipelined statement failed without an error".into()))
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Invalid { field, reason } => ApiError::invalid(field, reason),
            AuthError::EmailTaken | AuthError::AlreadyMember => ApiError::AlreadyExists(error.to_string()),
            AuthError::Unauthenticated(m) => ApiError::Unauthenticated(m.to_owned()),
            AuthError::LockedOut { retry_after } => {
                ApiError::ResourceExhausted { message: error.to_string(), retry_after }
            }
            AuthError::Wrong(m) => ApiError::PermissionDenied(m.to_owned()),
            AuthError::NotFound(_) => ApiError::NotFound(error.to_string()),
            AuthError::TooManyKeys(_) => ApiError::FailedPrecondition(error.to_string()),
            AuthError::Busy => ApiError::ResourceExhausted {
                message: error.to_string(),
                retry_after: Duration::from_secs(1),
            },
            AuthError::Refused { reason, message } => {
                ApiError::Refused { domain: DOMAIN, reason, message: message.to_owned() }
            }
            AuthError::Db(e) => e.into(),
            AuthError::Pool(e) => DbError::Pool(e).into(),
            AuthError::Queue(e) => e.into(),
            AuthError::Postgres(e) => e.into(),
            AuthError::Authn(e) => e.into(),
            AuthError::Internal(m) => ApiError::internal(std::io::Error::other(m)),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            // With its details (a step-up's reason).
            AuthError::Authn(e) => e.into(),
            other => ApiError::from(other).into(),
        }
    }
}
