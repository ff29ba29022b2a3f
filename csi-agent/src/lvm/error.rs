//! Errors of the LVM layer: kinds the callers can act on, each keeping what lvm2 said.
//! A failed command is first captured as a [`CommandFailure`] (command line, exit code, stderr),
//! then [`classify`]ied once from lvm2's `LC_ALL=C` messages into an [`LvmError`] variant.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A command that ran and exited non-zero (or was killed by a signal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailure {
    /// The command line, for messages only (never re-executed).
    pub command: String,
    /// Exit code; `None` when the process was ended by a signal.
    pub code: Option<i32>,
    /// Standard error as lvm2 wrote it, trimmed.
    pub stderr: String,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` exited with {code}", self.command)?,
            None => write!(f, "`{}` was killed by a signal", self.command)?,
        }
        if !self.stderr.is_empty() {
            write!(f, ": {}", self.stderr)?;
        }
        Ok(())
    }
}

/// Everything the LVM layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    /// The named VG, LV, PV or device does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The LV of this volume exists with another size (or carries another volume's name).
    #[error(
        "volume {volume:?} already exists as {vg}/{lv} with {existing_bytes} bytes \
         (requested {requested_bytes} bytes){}", if *.other_volume { " but belongs to another volume" } else { "" }
    )]
    AlreadyExistsDifferent {
        volume: String,
        vg: String,
        lv: String,
        existing_bytes: u64,
        requested_bytes: u64,
        /// The LV name is taken by another volume (its volume tag differs).
        other_volume: bool,
    },
    /// The named object exists but was made from another source (a snapshot of another volume,
    /// a restore or clone of another snapshot or volume).
    #[error("{what} already exists from {existing}, not from {requested}")]
    OtherSource {
        what: String,
        existing: String,
        requested: String,
    },
    /// A snapshot, restore or clone was asked of a volume that is not thin (lvm2 snapshots of
    /// linear LVs are not offered: they copy on write into a fixed reserve).
    #[error("{what} is not a thin volume: snapshots and clones need one; use a thin StorageClass")]
    NotThin { what: String },
    /// The VG has not enough free extents for the request.
    #[error("volume group {vg} has not enough free space for {requested_bytes} bytes: {detail}")]
    InsufficientSpace {
        vg: String,
        requested_bytes: u64,
        detail: String,
    },
    /// The object is open or locked by someone else; retry later.
    #[error("busy: {0}")]
    Busy(CommandFailure),
    /// A PV of the VG is missing; LVM refuses to change the VG until it is back or removed.
    #[error("device missing: {0}")]
    DeviceMissing(CommandFailure),
    /// The object exists but has no `strata.io/owner` tag: Strata never modifies it.
    #[error("{what} is not owned by Strata (no owner tag); refusing to modify it")]
    NotOwned { what: String },
    /// The device carries a signature (filesystem, partition table, RAID, LVM...); refused.
    #[error("{} carries a signature ({detail}); refusing to use it", .device.display())]
    HasSignature { device: PathBuf, detail: String },
    /// A missing PV still holds extents of these LVs: removing it from the VG would lose them.
    #[error(
        "the missing disk(s) of volume group {vg} still hold extents of: {}; those volumes must be deleted or restored first",
        .volumes.join(", ")
    )]
    MissingPvInUse { vg: String, volumes: Vec<String> },
    /// The caller asked for something the layer cannot express (empty name, zero size...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The command did not finish in time; it was terminated.
    #[error("`{command}` timed out after {after:?}")]
    Timeout { command: String, after: Duration },
    /// The operation was cancelled; the command was terminated.
    #[error("`{command}` was cancelled")]
    Cancelled { command: String },
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// lvm2 answered something this layer cannot read.
    #[error("cannot parse the output of `{command}`: {detail}")]
    Parse { command: String, detail: String },
    /// Any other failure of a command, with its exit code and stderr.
    #[error("{0}")]
    Other(CommandFailure),
}

/// Result of the LVM layer.
pub type Result<T, E = LvmError> = std::result::Result<T, E>;

impl LvmError {
    /// The command failure behind this error, when there is one.
    pub fn failure(&self) -> Option<&CommandFailure> {
        match self {
            LvmError::Busy(f) | LvmError::DeviceMissing(f) | LvmError::Other(f) => Some(f),
            _ => None,
        }
    }

    /// Whether retrying the same call later may succeed without anyone changing the request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LvmError::Busy(_) | LvmError::Timeout { .. } | LvmError::Cancelled { .. }
        )
    }
}

/// What a failed command is about, so that [`classify`] can name it in the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject<'a> {
    Vg(&'a str),
    Lv(&'a str, &'a str),
    Device(&'a std::path::Path),
    Other,
}

impl Subject<'_> {
    fn describe(&self) -> String {
        match self {
            Subject::Vg(vg) => format!("volume group {vg}"),
            Subject::Lv(vg, lv) => format!("logical volume {vg}/{lv}"),
            Subject::Device(dev) => format!("device {}", dev.display()),
            Subject::Other => "object".to_owned(),
        }
    }
}

/// Turns a failed lvm2 command into the error kind callers act on, from its (`LC_ALL=C`) stderr.
/// `requested_bytes` is reported in [`LvmError::InsufficientSpace`].
pub(crate) fn classify(
    failure: CommandFailure,
    subject: Subject<'_>,
    requested_bytes: u64,
) -> LvmError {
    let err = failure.stderr.to_ascii_lowercase();
    let has = |needle: &str| err.contains(needle);
    if has("signature detected on")
        || has("aborted wiping")
        || has("existing signature left")
        || has("partition table")
    {
        let device = match subject {
            Subject::Device(d) => d.to_path_buf(),
            _ => PathBuf::new(),
        };
        return LvmError::HasSignature {
            device,
            detail: failure.stderr,
        };
    }
    if has("pvs are missing")
        || has("missing pvs")
        || has("couldn't find device with uuid")
        || has("missing physical volume")
        || has("is missing")
    {
        return LvmError::DeviceMissing(failure);
    }
    if has("insufficient free space")
        || has("insufficient suitable")
        || has("insufficient free extents")
    {
        let vg = match subject {
            Subject::Vg(vg) | Subject::Lv(vg, _) => vg.to_owned(),
            _ => String::new(),
        };
        return LvmError::InsufficientSpace {
            vg,
            requested_bytes,
            detail: failure.stderr,
        };
    }
    if has(" in use")
        || has("open logical volume")
        || has("device or resource busy")
        || has("can't get lock")
        || has("giving up waiting for lock")
        || has("resource temporarily unavailable")
        || has("is used by another device")
    {
        return LvmError::Busy(failure);
    }
    if has("not found")
        || has("failed to find")
        || has("no device found")
        || has("cannot process volume group")
    {
        return LvmError::NotFound {
            what: subject.describe(),
        };
    }
    LvmError::Other(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(stderr: &str) -> CommandFailure {
        CommandFailure {
            command: "lvm lvcreate".into(),
            code: Some(5),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn classifies_lvm2_messages_into_kinds() {
        let space = classify(
            failure(
                r#"Volume group "tvg" has insufficient free space (40 extents): 2560 required."#,
            ),
            Subject::Vg("tvg"),
            10 << 30,
        );
        assert!(
            matches!(space, LvmError::InsufficientSpace { ref vg, requested_bytes, .. } if vg == "tvg" && requested_bytes == 10 << 30),
            "{space:?}"
        );
        let gone = classify(
            failure(r#"Failed to find logical volume "tvg/nope""#),
            Subject::Lv("tvg", "nope"),
            0,
        );
        assert!(
            matches!(gone, LvmError::NotFound { ref what } if what == "logical volume tvg/nope")
        );
        let vg = classify(
            failure("Volume group \"nosuch\" not found\n  Cannot process volume group nosuch"),
            Subject::Vg("nosuch"),
            0,
        );
        assert!(matches!(vg, LvmError::NotFound { .. }));
        let busy = classify(failure("Logical volume tvg/lv1 in use."), Subject::Other, 0);
        assert!(matches!(busy, LvmError::Busy(_)) && busy.is_transient());
        let open = classify(
            failure("Can't remove open logical volume \"lv1\""),
            Subject::Other,
            0,
        );
        assert!(matches!(open, LvmError::Busy(_)));
        let missing = classify(
            failure(
                "WARNING: Couldn't find device with uuid abc.\n  Cannot change VG tvg while PVs are missing.",
            ),
            Subject::Vg("tvg"),
            0,
        );
        assert!(matches!(missing, LvmError::DeviceMissing(_)));
        let sig = classify(
            failure(
                "WARNING: ext4 signature detected on /dev/loop1 at offset 1080. Wipe it? [y/n]: [n]\n  Aborted wiping of ext4.\n  1 existing signature left on the device.",
            ),
            Subject::Device(std::path::Path::new("/dev/loop1")),
            0,
        );
        assert!(
            matches!(sig, LvmError::HasSignature { ref device, .. } if device == std::path::Path::new("/dev/loop1"))
        );
        let other = classify(failure("Something unexpected."), Subject::Other, 0);
        match other {
            LvmError::Other(f) => {
                assert_eq!(f.code, Some(5));
                assert_eq!(f.stderr, "Something unexpected.");
            }
            e => panic!("expected Other, got {e:?}"),
        }
    }

    #[test]
    fn failure_display_keeps_code_and_stderr() {
        let f = failure("boom");
        assert_eq!(f.to_string(), "`lvm lvcreate` exited with 5: boom");
        let killed = CommandFailure { code: None, ..f };
        assert!(killed.to_string().contains("killed by a signal"));
    }
}
