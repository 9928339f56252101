//! Notification's errors and their one mapping to a gRPC status.

use tenx_common::db::DbError;
use tenx_common::grpc::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0} not found")]
    NotFound(String),
    #[error("needs the admin role")]
    PermissionDenied,
    #[error("idempotency key reused with a different request")]
    KeyReused,
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Internal(String),
}

impl NotifyError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { field, reason: reason.into() }
    }
}

impl From<NotifyError> for tonic::Status {
    fn from(error: NotifyError) -> Self {
        let api = match error {
            NotifyError::Invalid { field, reason } => ApiError::invalid(field, reason),
            NotifyError::Unauthenticated(m) => ApiError::Unauthenticated(m.to_owned()),
            NotifyError::NotFound(_) => ApiError::NotFound(error.to_string()),
            NotifyError::PermissionDenied => ApiError::PermissionDenied(error.to_string()),
            NotifyError::KeyReused => ApiError::FailedPrecondition(error.to_string()),
            NotifyError::Precondition(m) => ApiError::FailedPrecondition(m),
            NotifyError::Db(e) => e.into(),
            NotifyError::Postgres(e) => e.into(),
            NotifyError::Internal(m) => ApiError::internal(std::io::Error::other(m)),
        };
        api.into()
    }
}
