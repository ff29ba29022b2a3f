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
    /// The error for an object the agent failed (phase `Failed`, never made), by its
    /// `status.reason`: each terminal reason of the agent has the code the CSI spec gives that
    /// condition, and the message says what to do; anything else is `Internal`.
    pub fn agent_failed(
        reason: Option<&str>,
        node: &str,
        what: &str,
        name: &str,
        message: &str,
    ) -> Error {
        use csi_api::names::{
            REASON_INSUFFICIENT_SPACE, REASON_INVALID_SPEC, REASON_SOURCE_NOT_FOUND,
            REASON_SOURCE_NOT_THIN,
        };
        match reason {
            Some(REASON_INSUFFICIENT_SPACE) => Error::ResourceExhausted(format!(
                "node {node} has no room for {what} {name}: {message} (free space there: delete \
                 unused volumes or snapshots, or add disks; for thin, raise the class's \
                 --thin-overprovision-ratio)"
            )),
            Some(REASON_SOURCE_NOT_FOUND) => Error::NotFound(format!(
                "node {node} has no source for {what} {name}: {message} (make it again from a \
                 source that exists)"
            )),
            Some(REASON_SOURCE_NOT_THIN) => Error::FailedPrecondition(format!(
                "the source of {what} {name} is not thin (use a thin StorageClass): {message}"
            )),
            Some(REASON_INVALID_SPEC) => Error::InvalidArgument(format!(
                "node {node} cannot make {what} {name} as asked: {message}"
            )),
            _ => Error::Internal(format!(
                "node {node} failed to create {what} {name}: {message} (the agent's Warning \
                 Event on LogicalVolume {name} and its log on the node say more)"
            )),
        }
    }

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
