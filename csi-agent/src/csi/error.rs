//! The CSI layer's error and its one mapping to `tonic::Status`. Handlers return [`Error`]; the
//! lower layers' errors (LVM, mount, filesystem tools, the volume lock) convert into it with `?`,
//! and [`From<Error> for Status`] decides every gRPC code in one exhaustive `match` (no catch-all
//! arm, so a new error kind cannot silently become `Internal`).

use tonic::{Code, Status};

use crate::fs::FsError;
use crate::lvm::LvmError;
use crate::mount::MountError;
use csi_api::volume_lock::VolumeBusy;

/// Everything a CSI handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A missing or malformed field, an unknown parameter, an unsupported capability.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume (or path) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A volume of that name exists with other properties, or a path holds something else.
    #[error("{0}")]
    AlreadyExists(String),
    /// Retry from the start (e.g. a paging token the plugin did not issue).
    #[error("{0}")]
    Aborted(String),
    /// Another call for the same volume is in flight.
    #[error(transparent)]
    Busy(#[from] VolumeBusy),
    /// Not enough space, or no volume group of the class on this node.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A capacity range the plugin cannot meet.
    #[error("{0}")]
    OutOfRange(String),
    /// The volume is not in the state the call needs (not staged, other filesystem, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The plugin is not ready yet.
    #[error("{0}")]
    Unavailable(String),
    /// The LVM layer failed.
    #[error(transparent)]
    Lvm(#[from] LvmError),
    /// A mount syscall or the mount table failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// mkfs, a grow tool or blkid failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A filesystem operation of the agent itself (creating a target folder, statvfs).
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O failure with what the agent was doing.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Aborted(_) | Error::Busy(_) => Code::Aborted,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Lvm(e) => lvm_code(e),
            Error::Mount(e) => match e {
                MountError::Syscall { .. }
                | MountError::Table { .. }
                | MountError::Parse(_)
                | MountError::Join(_) => Code::Internal,
            },
            Error::Fs(e) => match e {
                FsError::Open { .. } => Code::NotFound,
                FsError::NotUtf8(_) => Code::InvalidArgument,
                FsError::Run(_) | FsError::Failed { .. } => Code::Internal,
            },
            Error::Io { .. } => Code::Internal,
        }
    }
}

impl From<crate::wiper::WipeError> for Error {
    fn from(e: crate::wiper::WipeError) -> Self {
        match e {
            crate::wiper::WipeError::Lvm(e) => Error::Lvm(e),
            // Nothing was touched; the caller unmounts or stops the holder, then retries.
            crate::wiper::WipeError::InUse(e) => Error::FailedPrecondition(e.to_string()),
        }
    }
}

fn lvm_code(e: &LvmError) -> Code {
    match e {
        LvmError::NotFound { .. } => Code::NotFound,
        LvmError::AlreadyExistsDifferent { .. } | LvmError::OtherSource { .. } => {
            Code::AlreadyExists
        }
        // Only a thin volume can be snapshotted or cloned: the caller picks a thin class.
        LvmError::NotThin { .. } => Code::FailedPrecondition,
        LvmError::InsufficientSpace { .. } => Code::ResourceExhausted,
        // Someone else holds the LV or the VG lock: the CO retries an aborted call.
        LvmError::Busy(_) => Code::Aborted,
        // A VG with a missing PV takes no changes until repaired.
        LvmError::DeviceMissing(_) | LvmError::MissingPvInUse { .. } => Code::FailedPrecondition,
        LvmError::NotOwned { .. } | LvmError::HasSignature { .. } => Code::FailedPrecondition,
        LvmError::InvalidArgument(_) => Code::InvalidArgument,
        LvmError::Timeout { .. } => Code::DeadlineExceeded,
        LvmError::Cancelled { .. } => Code::Cancelled,
        LvmError::Spawn { .. } | LvmError::Parse { .. } | LvmError::Other(_) => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// Result of the CSI layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::lvm::CommandFailure;

    fn failure() -> CommandFailure {
        CommandFailure {
            command: "lvm lvcreate".into(),
            code: Some(5),
            stderr: "boom".into(),
        }
    }

    #[test]
    fn every_kind_maps_to_its_grpc_code() {
        let cases: Vec<(Error, Code)> = vec![
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (Error::Aborted("x".into()), Code::Aborted),
            (VolumeBusy("pvc-1".into()).into(), Code::Aborted),
            (
                Error::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (Error::OutOfRange("x".into()), Code::OutOfRange),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (
                LvmError::NotFound { what: "lv".into() }.into(),
                Code::NotFound,
            ),
            (
                LvmError::InsufficientSpace {
                    vg: "strata-ssd".into(),
                    requested_bytes: 1,
                    detail: String::new(),
                }
                .into(),
                Code::ResourceExhausted,
            ),
            (LvmError::Busy(failure()).into(), Code::Aborted),
            (
                LvmError::DeviceMissing(failure()).into(),
                Code::FailedPrecondition,
            ),
            (
                LvmError::NotOwned { what: "vg".into() }.into(),
                Code::FailedPrecondition,
            ),
            (
                LvmError::InvalidArgument("x".into()).into(),
                Code::InvalidArgument,
            ),
            (LvmError::Other(failure()).into(), Code::Internal),
            (MountError::Join("x".into()).into(), Code::Internal),
            (
                FsError::Open {
                    path: PathBuf::from("/dev/x"),
                    source: std::io::ErrorKind::NotFound.into(),
                }
                .into(),
                Code::NotFound,
            ),
            (
                FsError::Failed {
                    cmd: "mkfs.xfs".into(),
                    code: Some(1),
                    stderr: "bad".into(),
                }
                .into(),
                Code::Internal,
            ),
            (
                Error::io("create target")(std::io::ErrorKind::PermissionDenied.into()),
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn messages_keep_the_lower_layer_detail() {
        let status = Status::from(Error::from(LvmError::Other(failure())));
        assert!(status.message().contains("boom"), "{}", status.message());
        assert!(status.message().contains("exited with 5"));
    }
}
