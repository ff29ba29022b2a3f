//! The agent's share of request checking. Everything a controller also checks — ids, StorageClass
//! parameters, capabilities, capacity ranges and the filesystems' minimum sizes — is
//! `csi_api::request`, the one validator the Kubernetes controller uses too; this file adds only
//! node concerns (paths confined to the kubelet directory, the filesystem and mount options a
//! capability resolves to) and the standalone ListVolumes paging token. All pure; each returns
//! [`Error::InvalidArgument`] (or the code the spec names) with a message that says which field
//! is wrong.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use csi_api::csi::volume_capability::access_mode::Mode;
use csi_api::csi::volume_capability::{AccessType, MountVolume};
use csi_api::csi::{CapacityRange, VolumeCapability};
use csi_api::names::{self, DeviceClass};
use csi_api::request::{self, RequestError};

use super::error::Error;
use crate::fs::{self, Filesystem};
use crate::mount::MountOptions;

pub use csi_api::request::{DEFAULT_VOLUME_BYTES, MAX_ID_BYTES, size_fits};

/// The default root of target and staging paths in Kubernetes mode (`--kubelet-dir`).
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid(m) => Error::InvalidArgument(m),
            RequestError::OutOfRange(m) => Error::OutOfRange(m),
        }
    }
}

/// A required id field (see `csi_api::request::check_id`: one strict charset).
pub fn id<'a>(field: &str, value: &'a str) -> Result<&'a str, Error> {
    request::check_id(field, value)?;
    Ok(value)
}

/// A required path field: absolute, without `.`/`..` components or NUL; returned normalised
/// (no trailing slash, no doubled slashes).
pub fn path(field: &str, value: &str) -> Result<PathBuf, Error> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    if value.contains('\0') {
        return Err(Error::InvalidArgument(format!("{field} contains NUL")));
    }
    let p = Path::new(value);
    if !p.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "{field} {value:?} is not an absolute path"
        )));
    }
    // Path::components drops `.` except at the start; look at the raw segments too.
    if value.split('/').any(|seg| seg == "..")
        || value.split('/').skip(1).any(|seg| seg == ".")
        || p.components().any(|c| matches!(c, Component::ParentDir))
    {
        return Err(Error::InvalidArgument(format!(
            "{field} {value:?} must not contain . or .. components"
        )));
    }
    if p.parent().is_none() {
        return Err(Error::InvalidArgument(format!("{field} must not be /")));
    }
    Ok(p.components().collect())
}

/// [`path`], and strictly inside `root` (the kubelet directory, `--kubelet-dir`): the agent
/// mounts and unmounts nowhere else.
pub fn path_under(field: &str, value: &str, root: &Path) -> Result<PathBuf, Error> {
    let p = path(field, value)?;
    if p == root || !p.starts_with(root) {
        return Err(Error::InvalidArgument(format!(
            "{field} {value:?} is outside {} (the agent's --kubelet-dir)",
            root.display()
        )));
    }
    Ok(p)
}

/// What a validated volume capability asks for, resolved for the node: csi-api's
/// `request::Access` with the filesystem object and the parsed mount options.
#[derive(Clone, Debug)]
pub enum ResolvedAccess {
    /// Raw block device.
    Block,
    /// A filesystem of this type, mounted with these options.
    Mount {
        fs: &'static dyn Filesystem,
        options: MountOptions,
    },
}

impl ResolvedAccess {
    pub fn is_block(&self) -> bool {
        matches!(self, ResolvedAccess::Block)
    }
}

/// A validated capability: access type and whether the mode is read-only.
#[derive(Clone, Debug)]
pub struct Capability {
    pub access: ResolvedAccess,
    pub mode: Mode,
}

impl Capability {
    pub fn read_only_mode(&self) -> bool {
        self.mode == Mode::SingleNodeReaderOnly
    }

    /// The smallest volume it can use (the filesystem's minimum, 0 for block).
    pub fn min_bytes(&self) -> u64 {
        match &self.access {
            ResolvedAccess::Block => 0,
            ResolvedAccess::Mount { fs, .. } => request::fs_min_bytes(fs.name()),
        }
    }
}

/// Why a capability is not supported (always `InvalidArgument` on a gRPC answer).
#[derive(Debug)]
pub enum CapabilityProblem {
    /// Well-formed but not something Strata offers (multi-node modes, unknown fs).
    Unsupported(String),
    /// Missing or malformed fields.
    Malformed(String),
}

impl From<CapabilityProblem> for Error {
    fn from(p: CapabilityProblem) -> Self {
        match p {
            CapabilityProblem::Unsupported(m) | CapabilityProblem::Malformed(m) => {
                Error::InvalidArgument(m)
            }
        }
    }
}

/// Checks one capability with the shared validator (single-node mode, block or xfs/ext4 mount),
/// then resolves the filesystem and the mount flags the node applies.
pub fn capability(cap: &VolumeCapability) -> Result<Capability, CapabilityProblem> {
    // Refused mount flags are malformed input (InvalidArgument also in
    // ValidateVolumeCapabilities), not an unsupported capability.
    if let Some(AccessType::Mount(m)) = &cap.access_type {
        request::check_mount_flags(&m.mount_flags)
            .map_err(|e| CapabilityProblem::Malformed(e.to_string()))?;
    }
    request::check_capability(cap).map_err(|e| CapabilityProblem::Unsupported(e.to_string()))?;
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    let access = match &cap.access_type {
        Some(AccessType::Mount(MountVolume {
            fs_type,
            mount_flags,
            ..
        })) => {
            let fs =
                fs::by_name(fs_type).map_err(|e| CapabilityProblem::Unsupported(e.to_string()))?;
            let options = MountOptions::from_csi_flags(mount_flags)
                .map_err(|e| CapabilityProblem::Malformed(e.to_string()))?;
            ResolvedAccess::Mount { fs, options }
        }
        _ => ResolvedAccess::Block,
    };
    Ok(Capability { access, mode })
}

/// Checks a non-empty list of capabilities; all must be supported.
pub fn capabilities(caps: &[VolumeCapability]) -> Result<Vec<Capability>, CapabilityProblem> {
    if caps.is_empty() {
        return Err(CapabilityProblem::Malformed(
            "volume_capabilities is required".into(),
        ));
    }
    caps.iter().map(capability).collect()
}

/// The one required capability of a node call.
pub fn required_capability(cap: Option<&VolumeCapability>) -> Result<Capability, Error> {
    let cap = cap.ok_or_else(|| Error::InvalidArgument("volume_capability is required".into()))?;
    Ok(capability(cap)?)
}

/// StorageClass parameters of CreateVolume (and GetCapacity, ValidateVolumeCapabilities),
/// parsed by the shared validator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub class: Option<DeviceClass>,
    /// `csi.storage.k8s.io/fstype` if given.
    pub fs_type: Option<String>,
    /// `strata.io/wipe` (`discard`, `zero`, `none`) if given: the wipe on delete.
    pub wipe: Option<String>,
    /// `strata.io/provisioning` (linear unless given).
    pub provisioning: csi_api::names::Provisioning,
}

impl TryFrom<&HashMap<String, String>> for Params {
    type Error = Error;

    fn try_from(map: &HashMap<String, String>) -> Result<Self, Error> {
        let p = request::parse_parameters(map)?;
        Ok(Params {
            class: p.device_class,
            fs_type: p.fs_type,
            wipe: p.wipe,
            provisioning: p.provisioning,
        })
    }
}

impl Params {
    /// The device class, which CreateVolume requires.
    pub fn required_class(&self) -> Result<DeviceClass, Error> {
        self.class.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "parameter {} is required",
                names::PARAM_DEVICE_CLASS
            ))
        })
    }
}

/// Bytes to allocate for a capacity range (the shared rule, `csi_api::request::size_within`):
/// at least `min_bytes` and the requested bytes, whole `extent`s, never above the limit.
pub fn capacity(range: Option<&CapacityRange>, min_bytes: u64, extent: u64) -> Result<u64, Error> {
    Ok(request::size_within(range, min_bytes, extent)?)
}

/// The ListVolumes paging token: the name to start at, hex-encoded behind a version mark, so that
/// a token the plugin did not issue is recognised (`Aborted`, as the spec says).
pub mod token {
    use super::Error;

    const MARK: &str = "v1.";

    /// The token that starts a page at `name`.
    pub fn encode(name: &str) -> String {
        let mut out = String::with_capacity(MARK.len() + name.len() * 2);
        out.push_str(MARK);
        for b in name.bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The name a token starts at; `Aborted` for anything not made by [`encode`].
    pub fn decode(token: &str) -> Result<String, Error> {
        let bad = || Error::Aborted(format!("invalid starting_token {token:?}"));
        let hex = token.strip_prefix(MARK).ok_or_else(bad)?;
        if hex.is_empty() || hex.len() % 2 != 0 {
            return Err(bad());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        String::from_utf8(bytes).map_err(|_| bad())
    }
}

/// One page of `names` (sorted) for ListVolumes / ListSnapshots (`csi_api::request::page`): from
/// the token's name on, at most `max_entries` (0 = all); the indexes and the next token (empty at
/// the end).
pub fn page_by_token(
    names: &[&str],
    max_entries: i32,
    starting_token: &str,
) -> Result<(std::ops::Range<usize>, String), Error> {
    let size = request::page_size(max_entries)?;
    let from = if starting_token.is_empty() {
        None
    } else {
        Some(token::decode(starting_token)?)
    };
    let page = request::page(names, |n| *n, size, from.as_deref());
    let next = page
        .next
        .map(|i| token::encode(names[i]))
        .unwrap_or_default();
    Ok((page.range, next))
}

#[cfg(test)]
mod tests {
    use csi_api::csi::volume_capability::{AccessMode, BlockVolume};

    use super::*;

    fn mount_cap(fs: &str, flags: &[&str], mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                volume_mount_group: String::new(),
            })),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn block_cap(mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn is_invalid(r: Result<impl std::fmt::Debug, Error>) -> bool {
        matches!(r, Err(Error::InvalidArgument(_)))
    }

    #[test]
    fn ids_must_be_present_and_bounded() {
        assert_eq!(id("volume_id", "pvc-1").unwrap(), "pvc-1");
        assert!(is_invalid(id("volume_id", "")));
        assert!(is_invalid(id("volume_id", &"x".repeat(129))));
        assert!(id("volume_id", &"x".repeat(128)).is_ok());
        assert!(is_invalid(id("volume_id", "a\nb")));
        assert!(is_invalid(id("volume_id", "pvc-A?x")));
    }

    #[test]
    fn paths_are_confined_to_the_kubelet_dir() {
        let root = Path::new("/var/lib/kubelet");
        assert!(path_under("target_path", "/var/lib/kubelet/pods/x/mount", root).is_ok());
        for bad in [
            "/var/lib/kubelet",
            "/var/lib/kubeletx/a",
            "/etc/x",
            "/var/lib/kubelet/../x",
        ] {
            assert!(is_invalid(path_under("target_path", bad, root)), "{bad:?}");
        }
        assert!(path_under("target_path", "/any/where", Path::new("/")).is_ok());
    }

    #[test]
    fn paths_must_be_absolute_and_free_of_dot_dot() {
        assert_eq!(
            path("target_path", "/var/lib/kubelet//pods/x/").unwrap(),
            PathBuf::from("/var/lib/kubelet/pods/x")
        );
        for bad in [
            "",
            "relative/path",
            "./x",
            "/a/../b",
            "/a/..",
            "/../etc",
            "/a/./b",
            "/",
            "/a\0b",
        ] {
            assert!(is_invalid(path("target_path", bad)), "{bad:?}");
        }
        assert!(
            path("p", "/a/..b/c..").is_ok(),
            "dots inside names are fine"
        );
    }

    #[test]
    fn only_single_node_modes_and_known_filesystems_are_supported() {
        for mode in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            assert!(capability(&block_cap(mode)).is_ok());
            assert!(capability(&mount_cap("", &[], mode)).is_ok());
        }
        for mode in [
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
        ] {
            assert!(capability(&mount_cap("xfs", &[], mode)).is_err());
        }
        assert!(capability(&mount_cap("btrfs", &[], Mode::SingleNodeWriter)).is_err());
        assert!(matches!(
            capability(&mount_cap("xfs", &["bind"], Mode::SingleNodeWriter)),
            Err(CapabilityProblem::Malformed(_))
        ));
        let no_type = VolumeCapability {
            access_type: None,
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        };
        assert!(capability(&no_type).is_err());
        let no_mode = VolumeCapability {
            access_mode: None,
            ..block_cap(Mode::SingleNodeWriter)
        };
        assert!(capability(&no_mode).is_err());
        let bogus_mode = VolumeCapability {
            access_mode: Some(AccessMode { mode: 99 }),
            ..block_cap(Mode::SingleNodeWriter)
        };
        assert!(capability(&bogus_mode).is_err());
        assert!(matches!(
            capabilities(&[]),
            Err(CapabilityProblem::Malformed(_))
        ));
        let ext4 =
            capability(&mount_cap("ext4", &["noatime"], Mode::SingleNodeReaderOnly)).unwrap();
        assert!(ext4.read_only_mode());
        match ext4.access {
            ResolvedAccess::Mount { fs, options } => {
                assert_eq!(fs.name(), "ext4");
                assert_eq!(options.flags, nix::mount::MsFlags::MS_NOATIME);
            }
            ResolvedAccess::Block => panic!("mount expected"),
        }
    }

    #[test]
    fn parameters_are_parsed_in_one_place_and_unknown_keys_refused() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = Params::try_from(&map(&[
            ("strata.io/device-class", "ssd"),
            ("strata.io/placement", "spread"),
            ("csi.storage.k8s.io/fstype", "ext4"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(p.class, Some(DeviceClass::Ssd));
        assert_eq!(p.fs_type.as_deref(), Some("ext4"));
        assert_eq!(p.required_class().unwrap(), DeviceClass::Ssd);

        let none = Params::try_from(&map(&[])).unwrap();
        assert!(is_invalid(none.required_class()));
        for bad in [
            [("strata.io/device-class", "tape")],
            [("strata.io/placement", "fill")],
            [("csi.storage.k8s.io/fstype", "zfs")],
            [("strata.io/devcie-class", "ssd")],
        ] {
            assert!(is_invalid(Params::try_from(&map(&bad))), "{bad:?}");
        }
    }

    #[test]
    fn capacity_ranges_round_to_extents_and_respect_limits() {
        const MI: u64 = 1 << 20;
        let extent = 4 * MI;
        let r = |req: i64, lim: i64| CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(capacity(None, 0, extent).unwrap(), DEFAULT_VOLUME_BYTES);
        assert_eq!(capacity(Some(&r(1, 0)), 0, extent).unwrap(), extent);
        assert_eq!(
            capacity(Some(&r(10 * MI as i64, 0)), 0, extent).unwrap(),
            12 * MI
        );
        // the filesystem minimum raises small requests
        assert_eq!(
            capacity(Some(&r(MI as i64, 0)), 300 * MI, extent).unwrap(),
            300 * MI
        );
        // only a limit: default size capped by it, rounded down to whole extents if need be
        assert_eq!(
            capacity(Some(&r(0, 100 * MI as i64)), 0, extent).unwrap(),
            100 * MI
        );
        assert_eq!(
            capacity(Some(&r(0, 101 * MI as i64)), 0, extent).unwrap(),
            100 * MI
        );
        assert_eq!(
            capacity(Some(&r(97 * MI as i64, 101 * MI as i64)), 0, extent).unwrap(),
            100 * MI
        );
        assert!(is_invalid(capacity(Some(&r(-1, 0)), 0, extent)));
        assert!(is_invalid(capacity(Some(&r(0, -5)), 0, extent)));
        assert!(is_invalid(capacity(Some(&r(10, 5)), 0, extent)));
        // rounding up crosses the limit
        assert!(matches!(
            capacity(Some(&r(MI as i64, 2 * MI as i64)), 0, extent),
            Err(Error::OutOfRange(_))
        ));
        // below the filesystem minimum
        assert!(matches!(
            capacity(Some(&r(0, 100 * MI as i64)), 300 * MI, extent),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            capacity(Some(&r(i64::MAX, 0)), 0, extent),
            Err(Error::OutOfRange(_))
        ));
        assert!(size_fits(8 * MI, Some(&r(5 * MI as i64, 8 * MI as i64))));
        assert!(!size_fits(8 * MI, Some(&r(9 * MI as i64, 0))));
        assert!(!size_fits(8 * MI, Some(&r(0, 4 * MI as i64))));
        assert!(size_fits(8 * MI, None));
    }

    #[test]
    fn tokens_round_trip_and_foreign_tokens_abort() {
        for name in ["pvc-1", "a+b_c.d", "x"] {
            assert_eq!(token::decode(&token::encode(name)).unwrap(), name);
        }
        for bad in ["invalid-token", "v1.", "v1.abc", "v1.zz", "v1.ff", "1"] {
            assert!(
                matches!(token::decode(bad), Err(Error::Aborted(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pages_walk_the_whole_list_once() {
        let names = ["a", "b", "c", "d", "e"];
        let (r, next) = page_by_token(&names, 2, "").unwrap();
        assert_eq!((r, next.as_str()), (0..2, token::encode("c").as_str()));
        let (r, next) = page_by_token(&names, 2, &next).unwrap();
        assert_eq!(r, 2..4);
        let (r, last) = page_by_token(&names, 2, &next).unwrap();
        assert_eq!((r, last.as_str()), (4..5, ""));
        let (all, next) = page_by_token(&names, 0, "").unwrap();
        assert_eq!((all, next.as_str()), (0..5, ""));
        // a deleted entry at the token's name does not skip its successor
        let fewer = ["a", "b", "d", "e"];
        let (r, _) = page_by_token(&fewer, 2, &token::encode("c")).unwrap();
        assert_eq!(r, 2..4);
        assert!(is_invalid(page_by_token(&names, -1, "")));
        assert!(matches!(
            page_by_token(&names, 1, "bogus"),
            Err(Error::Aborted(_))
        ));
        let (r, next) = page_by_token(&[], 3, "").unwrap();
        assert_eq!((r, next.as_str()), (0..0, ""));
    }
}
