//! The controller's one error type, and its one mapping to gRPC status codes.

use csi_api::request::RequestError;
use tonic::{Code, Status};

/// What can go wrong in a controller call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid(m) => Error::InvalidArgument(m),
            RequestError::OutOfRange(m) => Error::OutOfRange(m),
        }
    }
}

impl From<crate::cluster::ClusterError> for Error {
    fn from(e: crate::cluster::ClusterError) -> Self {
        use crate::cluster::ClusterError;
        match e {
            ClusterError::Conflict(m) => Error::Aborted(format!("concurrent update, retry: {m}")),
            ClusterError::Forbidden(m) => Error::PermissionDenied(format!(
                "the csi-controller's ServiceAccount is not allowed to do this (check its RBAC in deploy/): {m}"
            )),
            ClusterError::Invalid(m) => {
                Error::Internal(format!("the Kubernetes API refused the object: {m}"))
            }
            ClusterError::NotFound(m) => Error::NotFound(m),
            ClusterError::Api(m) => Error::Unavailable(format!("Kubernetes API: {m}")),
        }
    }
}

impl Error {
    /// The gRPC code of this error (the CSI spec's choice for each case).
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Aborted(_) => Code::Aborted,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterError;

    #[test]
    fn api_errors_keep_their_cause() {
        let code = |e: ClusterError| Error::from(e).code();
        assert_eq!(
            code(ClusterError::Forbidden("x".into())),
            Code::PermissionDenied
        );
        assert_eq!(code(ClusterError::Invalid("x".into())), Code::Internal);
        assert_eq!(code(ClusterError::Conflict("x".into())), Code::Aborted);
        assert_eq!(code(ClusterError::NotFound("x".into())), Code::NotFound);
        assert_eq!(code(ClusterError::Api("x".into())), Code::Unavailable);
        let message = Error::from(ClusterError::Invalid("metadata.name: Invalid value".into()));
        assert!(message.to_string().contains("metadata.name: Invalid value"));
    }
}
