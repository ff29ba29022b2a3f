//! Validation of CSI controller requests shared by the Kubernetes controller and the standalone
//! agent: StorageClass parameters (parsed in exactly this one place), capacity ranges, volume
//! capabilities and topology. Every function is pure and returns a message fit for a gRPC status.

use std::collections::HashMap;

use crate::capacity::{DEFAULT_EXTENT_BYTES, round_up_to_extent};
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessType, MountVolume};
use crate::csi::{CapacityRange, TopologyRequirement, VolumeCapability};
use crate::names::{self, DeviceClass, Placement, Provisioning};

/// Size given to a volume whose request names none (CSI leaves the default to the plugin).
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;

/// A request the plugin cannot take as it is; the text says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Maps to InvalidArgument.
    #[error("{0}")]
    Invalid(String),
    /// Maps to OutOfRange: the capacity range cannot be met.
    #[error("{0}")]
    OutOfRange(String),
}

fn invalid(msg: impl Into<String>) -> RequestError {
    RequestError::Invalid(msg.into())
}

/// Filesystems a mount volume may ask for.
pub const SUPPORTED_FS_TYPES: [&str; 2] = ["xfs", "ext4"];

/// The parameters of a StorageClass (CreateVolume `parameters`), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeParameters {
    pub device_class: DeviceClass,
    pub placement: Option<Placement>,
    pub fs_type: Option<String>,
    pub wipe: Option<String>,
    pub provisioning: Provisioning,
    /// PVC reference from external-provisioner's `--extra-create-metadata`.
    pub pvc_namespace: Option<String>,
    pub pvc_name: Option<String>,
}

/// [`VolumeParameters`] where the device class may be absent (GetCapacity and
/// ValidateVolumeCapabilities take parameters without one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedParameters {
    pub device_class: Option<DeviceClass>,
    pub placement: Option<Placement>,
    pub fs_type: Option<String>,
    pub wipe: Option<String>,
    pub provisioning: Provisioning,
    pub pvc_namespace: Option<String>,
    pub pvc_name: Option<String>,
}

const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
/// Keys of this prefix are the Kubernetes sidecars' (`--extra-create-metadata`, secrets
/// references): accepted, and only the PVC reference is used.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// Parses StorageClass parameters: Strata's keys (`strata.io/*`), the filesystem and the
/// sidecars' `csi.storage.k8s.io/*` keys. Any other key is refused, so that a typo in a
/// StorageClass is an error, not a default. Keys are looked at in sorted order, so the error
/// for a map with several problems is always the same.
pub fn parse_parameters(
    params: &HashMap<String, String>,
) -> Result<ParsedParameters, RequestError> {
    let mut out = ParsedParameters::default();
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        let value = &params[key];
        match key.as_str() {
            names::PARAM_DEVICE_CLASS => {
                out.device_class = Some(
                    value
                        .parse::<DeviceClass>()
                        .map_err(|e| invalid(format!("parameter {key}: {e}")))?,
                );
            }
            names::PARAM_PLACEMENT => {
                out.placement = Some(
                    value
                        .parse::<Placement>()
                        .map_err(|e| invalid(format!("parameter {key}: {e}")))?,
                );
            }
            names::PARAM_FS_TYPE => out.fs_type = Some(check_fs_type(value)?.to_owned()),
            names::PARAM_WIPE => {
                let policy: names::WipePolicy = value
                    .parse()
                    .map_err(|e| invalid(format!("parameter {key}: {e}")))?;
                out.wipe = Some(policy.as_str().to_owned());
            }
            names::PARAM_PROVISIONING => {
                out.provisioning = value
                    .parse::<Provisioning>()
                    .map_err(|e| invalid(format!("parameter {key}: {e}")))?;
            }
            // Read by the controller's recovery policy; only checked here.
            names::PARAM_ON_DISK_FAILURE | names::PARAM_ON_NODE_FAILURE => {
                value
                    .parse::<names::RecoveryPolicy>()
                    .map_err(|e| invalid(format!("parameter {key}: {e}")))?;
            }
            PVC_NAME => out.pvc_name = Some(value.clone()),
            PVC_NAMESPACE => out.pvc_namespace = Some(value.clone()),
            k if k.starts_with(SIDECAR_PREFIX) => {}
            other => {
                return Err(invalid(format!(
                    "unknown parameter {other:?}: Strata takes {}, {}, {}, {}, {}, {} and {}",
                    names::PARAM_DEVICE_CLASS,
                    names::PARAM_PROVISIONING,
                    names::PARAM_PLACEMENT,
                    names::PARAM_FS_TYPE,
                    names::PARAM_WIPE,
                    names::PARAM_ON_DISK_FAILURE,
                    names::PARAM_ON_NODE_FAILURE
                )));
            }
        }
    }
    Ok(out)
}

impl TryFrom<&HashMap<String, String>> for VolumeParameters {
    type Error = RequestError;

    /// [`parse_parameters`], and the device class is required.
    fn try_from(params: &HashMap<String, String>) -> Result<Self, Self::Error> {
        let p = parse_parameters(params)?;
        let device_class = p.device_class.ok_or_else(|| {
            invalid(format!(
                "parameter {} is required (nvme, ssd or hdd)",
                names::PARAM_DEVICE_CLASS
            ))
        })?;
        Ok(VolumeParameters {
            device_class,
            placement: p.placement,
            fs_type: p.fs_type,
            wipe: p.wipe,
            provisioning: p.provisioning,
            pvc_namespace: p.pvc_namespace,
            pvc_name: p.pvc_name,
        })
    }
}

/// What a CreateVolume starts from (`volume_content_source`), its id checked by [`check_id`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentSource {
    /// A restore of the snapshot with this id.
    Snapshot(String),
    /// A clone of the volume with this id.
    Volume(String),
}

impl ContentSource {
    /// The source's id (a snapshot id or a volume id).
    pub fn id(&self) -> &str {
        match self {
            ContentSource::Snapshot(id) | ContentSource::Volume(id) => id,
        }
    }
}

/// Validates `volume_content_source`: absent is `None`; a source without a type, or with an
/// empty or malformed id, is `Invalid`.
pub fn content_source(
    source: Option<&crate::csi::VolumeContentSource>,
) -> Result<Option<ContentSource>, RequestError> {
    use crate::csi::volume_content_source::Type;
    let Some(source) = source else {
        return Ok(None);
    };
    match &source.r#type {
        Some(Type::Snapshot(s)) => {
            check_id("volume_content_source.snapshot.snapshot_id", &s.snapshot_id)?;
            Ok(Some(ContentSource::Snapshot(s.snapshot_id.clone())))
        }
        Some(Type::Volume(v)) => {
            check_id("volume_content_source.volume.volume_id", &v.volume_id)?;
            Ok(Some(ContentSource::Volume(v.volume_id.clone())))
        }
        None => Err(invalid(
            "volume_content_source names neither a snapshot nor a volume",
        )),
    }
}

/// The `volume_content_source` a created volume reports (the request's, as given).
pub fn content_source_message(source: &ContentSource) -> crate::csi::VolumeContentSource {
    use crate::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    crate::csi::VolumeContentSource {
        r#type: Some(match source {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    }
}

/// A restore or clone is at least as large as its source: a limit below the source is
/// `OutOfRange`; otherwise the size is the larger of the required bytes and the source's,
/// rounded up to whole extents like any other volume (rounded down to whole extents if that
/// crossed the limit; `OutOfRange` if no whole-extent size fits). No range, or no required
/// bytes, means the source's size. Negative fields or an empty range are `Invalid`.
pub fn size_from_source(
    range: Option<&CapacityRange>,
    source_bytes: u64,
    source: &ContentSource,
) -> Result<u64, RequestError> {
    let (required, limit) = range_bytes(range)?;
    if limit != 0 && limit < source_bytes {
        return Err(RequestError::OutOfRange(format!(
            "limit_bytes {limit} is smaller than the source {} ({source_bytes} bytes): a \
             restore or clone is at least as large as its source",
            source.id()
        )));
    }
    let floor = required.max(source_bytes);
    whole_extents_within(floor, floor, limit, DEFAULT_EXTENT_BYTES)
}

/// The parameters of a VolumeSnapshotClass (CreateSnapshot `parameters`), validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotParameters {
    /// The VolumeSnapshot from csi-snapshotter's `--extra-create-metadata`.
    pub volume_snapshot_namespace: Option<String>,
    pub volume_snapshot_name: Option<String>,
}

const SNAPSHOT_NAME: &str = "csi.storage.k8s.io/volumesnapshot/name";
const SNAPSHOT_NAMESPACE: &str = "csi.storage.k8s.io/volumesnapshot/namespace";

/// Parses CreateSnapshot parameters: Strata takes none of its own (a snapshot lives where its
/// volume lives), so any key outside the sidecars' `csi.storage.k8s.io/*` is refused.
pub fn parse_snapshot_parameters(
    params: &HashMap<String, String>,
) -> Result<SnapshotParameters, RequestError> {
    let mut out = SnapshotParameters::default();
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        match key.as_str() {
            SNAPSHOT_NAME => out.volume_snapshot_name = Some(params[key].clone()),
            SNAPSHOT_NAMESPACE => out.volume_snapshot_namespace = Some(params[key].clone()),
            k if k.starts_with(SIDECAR_PREFIX) => {}
            other => {
                return Err(invalid(format!(
                    "unknown snapshot parameter {other:?}: Strata's VolumeSnapshotClass takes \
                     no parameters (a snapshot stays on its volume's node and thin pool)"
                )));
            }
        }
    }
    Ok(out)
}

/// xfsprogs (5.19 and later) refuses filesystems under 300 MiB.
pub const XFS_MIN_BYTES: u64 = 300 << 20;
/// The smallest ext4 Strata formats (mke2fs makes smaller ones, but with no room for a journal
/// worth having).
pub const EXT4_MIN_BYTES: u64 = 8 << 20;

/// The smallest volume a filesystem can be made on; 0 for an unknown name (refused elsewhere).
pub fn fs_min_bytes(fs_type: &str) -> u64 {
    match fs_type {
        "xfs" => XFS_MIN_BYTES,
        "ext4" => EXT4_MIN_BYTES,
        _ => 0,
    }
}

impl Access {
    /// The smallest volume this access can use: the filesystem's minimum, 0 for block.
    pub fn min_bytes(&self) -> u64 {
        match self {
            Access::Block => 0,
            Access::Mount { fs_type, .. } => fs_min_bytes(fs_type),
        }
    }
}

fn check_fs_type(fs: &str) -> Result<&str, RequestError> {
    if SUPPORTED_FS_TYPES.contains(&fs) {
        Ok(fs)
    } else {
        Err(invalid(format!(
            "unsupported filesystem {fs:?}: Strata formats xfs or ext4"
        )))
    }
}

/// The size to allocate for a capacity range: at least `required_bytes` (or the default when
/// unset), rounded up to whole extents, and never above `limit_bytes`. Kept for callers that
/// know no filesystem; [`size_for_volume`] adds the filesystem's minimum.
pub fn size_for_range(range: Option<&CapacityRange>) -> Result<u64, RequestError> {
    size_within(range, 0, DEFAULT_EXTENT_BYTES)
}

/// The size to allocate for a volume accessed as `access`: [`size_for_range`], raised to the
/// filesystem's minimum (a 100Mi xfs request becomes 300 MiB, so it can be formatted).
pub fn size_for_volume(
    range: Option<&CapacityRange>,
    access: &Access,
) -> Result<u64, RequestError> {
    size_within(range, access.min_bytes(), DEFAULT_EXTENT_BYTES)
}

/// The one sizing rule: at least `min_bytes` and the requested bytes (the default
/// [`DEFAULT_VOLUME_BYTES`] when only a limit or nothing is given, capped by the limit), rounded
/// up to whole `extent`s, never above the limit (rounded down to whole extents if rounding up
/// crossed it). Negative fields or a limit below the requirement are `Invalid`; a range no
/// whole-extent size meets is `OutOfRange`.
pub fn size_within(
    range: Option<&CapacityRange>,
    min_bytes: u64,
    extent: u64,
) -> Result<u64, RequestError> {
    let (required, limit) = range_bytes(range)?;
    let floor = required.max(min_bytes).max(1);
    let mut target = if required == 0 {
        DEFAULT_VOLUME_BYTES.max(floor)
    } else {
        floor
    };
    if limit != 0 {
        target = target.min(limit).max(floor);
    }
    whole_extents_within(target, floor, limit, extent)
}

/// A capacity range's required and limit bytes (0: unset); negative fields or a limit below
/// the requirement are `Invalid`.
fn range_bytes(range: Option<&CapacityRange>) -> Result<(u64, u64), RequestError> {
    let (required, limit) = match range {
        Some(r) => (r.required_bytes, r.limit_bytes),
        None => (0, 0),
    };
    if required < 0 || limit < 0 {
        return Err(invalid(format!(
            "capacity range must not be negative (required {required}, limit {limit})"
        )));
    }
    let (required, limit) = (required.unsigned_abs(), limit.unsigned_abs());
    if limit != 0 && required > limit {
        return Err(invalid(format!(
            "capacity range is empty: required {required} bytes exceeds limit {limit} bytes"
        )));
    }
    Ok((required, limit))
}

/// `target` rounded up to whole `extent`s; if that crosses `limit` (0: none), the limit rounded
/// down to whole extents, unless that falls below `floor` (`OutOfRange`).
fn whole_extents_within(
    target: u64,
    floor: u64,
    limit: u64,
    extent: u64,
) -> Result<u64, RequestError> {
    let extent = extent.max(1);
    let size = round_up_to_extent(target, extent)
        .filter(|s| *s <= i64::MAX as u64)
        .ok_or_else(|| RequestError::OutOfRange(format!("{target} bytes is too large")))?;
    if limit != 0 && size > limit {
        let down = limit / extent * extent;
        if down < floor {
            return Err(RequestError::OutOfRange(format!(
                "no volume fits the range: at least {floor} bytes in whole {extent}-byte \
                 extents, at most {limit}"
            )));
        }
        return Ok(down);
    }
    Ok(size)
}

/// Whether an existing volume of `size` bytes satisfies a capacity range.
pub fn size_fits(size: u64, range: Option<&CapacityRange>) -> bool {
    let Some(r) = range else { return true };
    let required = u64::try_from(r.required_bytes).unwrap_or(0);
    let limit = u64::try_from(r.limit_bytes).unwrap_or(0);
    size >= required && (limit == 0 || size <= limit)
}

/// How a volume is accessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount {
        fs_type: String,
        mount_flags: Vec<String>,
    },
}

/// Checks that every capability is one Strata serves (single-node modes, block or xfs/ext4
/// mount) and returns the access of the first; an empty list is invalid.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<Access, RequestError> {
    let first = caps
        .first()
        .ok_or_else(|| invalid("volume_capabilities must not be empty"))?;
    for cap in caps {
        check_capability(cap)?;
    }
    check_capability(first)
}

/// Checks one capability; see [`check_capabilities`].
pub fn check_capability(cap: &VolumeCapability) -> Result<Access, RequestError> {
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
        .unwrap_or(Mode::Unknown);
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => {}
        Mode::Unknown => return Err(invalid("access mode is missing or unknown")),
        other => {
            return Err(invalid(format!(
                "access mode {} is not supported: local volumes are single-node",
                other.as_str_name()
            )));
        }
    }
    match &cap.access_type {
        Some(AccessType::Block(_)) => Ok(Access::Block),
        Some(AccessType::Mount(MountVolume {
            fs_type,
            mount_flags,
            volume_mount_group,
        })) => {
            if !volume_mount_group.is_empty() {
                return Err(invalid("volume_mount_group is not supported"));
            }
            check_mount_flags(mount_flags)?;
            let fs = if fs_type.is_empty() {
                names::DEFAULT_FS_TYPE
            } else {
                fs_type.as_str()
            };
            Ok(Access::Mount {
                fs_type: check_fs_type(fs)?.to_owned(),
                mount_flags: mount_flags.clone(),
            })
        }
        None => Err(invalid("access type (block or mount) is missing")),
    }
}

/// Mount options that would change what the mount is (a bind, a remount, a move, a propagation
/// change) rather than how the filesystem is mounted: refused at CreateVolume in both modes and
/// again by the agent's mounter.
pub const REFUSED_MOUNT_OPTIONS: &[&str] = &[
    "bind",
    "rbind",
    "remount",
    "move",
    "rec",
    "shared",
    "rshared",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

/// Whether one mount option (one comma-separated part of a CSI mount flag) is malformed: empty,
/// or holding whitespace or control characters.
pub fn malformed_mount_option(opt: &str) -> bool {
    opt.is_empty() || opt.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Checks CSI `mount_flags` (each entry may hold several comma-separated options): none
/// [malformed](malformed_mount_option), none of [`REFUSED_MOUNT_OPTIONS`].
pub fn check_mount_flags<S: AsRef<str>>(flags: &[S]) -> Result<(), RequestError> {
    for entry in flags {
        for opt in entry.as_ref().split(',') {
            if malformed_mount_option(opt) {
                return Err(invalid(format!("mount flag {opt:?} is malformed")));
            }
            if REFUSED_MOUNT_OPTIONS.contains(&opt) {
                return Err(invalid(format!(
                    "mount flag {opt:?} is not allowed: it changes what the mount is, not how the filesystem is mounted"
                )));
            }
        }
    }
    Ok(())
}

/// The nodes a volume may go to, preferred ones first, then the other requisite ones; empty
/// when the request has no topology (Immediate binding: the plugin chooses).
pub fn candidate_nodes(req: Option<&TopologyRequirement>) -> Vec<String> {
    let Some(req) = req else { return Vec::new() };
    let mut nodes: Vec<String> = Vec::new();
    for topo in req.preferred.iter().chain(req.requisite.iter()) {
        if let Some(node) = topo.segments.get(names::TOPOLOGY_KEY)
            && !nodes.contains(node)
        {
            nodes.push(node.clone());
        }
    }
    nodes
}

/// The longest id or name accepted (the spec asks plugins to take at least 128 bytes).
pub const MAX_ID_BYTES: usize = 128;

/// A CSI object id or name (volume id, CreateVolume name): non-empty, at most 128 bytes, only
/// ASCII letters, digits, `.`, `_` and `-`, and not `.` or `..`. One strict charset because the
/// id ends up in URL paths (kube puts names into API paths unescaped: `pvc-A?x` would address
/// `pvc-A`), LVM names and LVM tags: `/ ? % # `, spaces, control and non-ASCII characters are
/// refused with `Invalid` (InvalidArgument).
pub fn check_id(what: &str, id: &str) -> Result<(), RequestError> {
    if id.is_empty() {
        return Err(invalid(format!("{what} is required")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(invalid(format!(
            "{what} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "{what} {:?} contains {bad:?}: only ASCII letters, digits, '.', '_' and '-' are \
             allowed (the id is used in URLs, LVM names and tags)",
            id.escape_debug().to_string()
        )));
    }
    if id == "." || id == ".." {
        return Err(invalid(format!("{what} must not be {id:?}")));
    }
    Ok(())
}

/// A ListVolumes / ListSnapshots `max_entries`, checked before any work: the most entries a
/// page holds, 0 for all; negative is `Invalid`.
pub fn page_size(max_entries: i32) -> Result<usize, RequestError> {
    usize::try_from(max_entries)
        .map_err(|_| invalid(format!("max_entries {max_entries} must not be negative")))
}

/// Where one page of a key-sorted list lies: from the first key at or after `from` (an entry
/// deleted since the previous page does not skip its successor), at most `size` entries (0: all
/// the rest, see [`page_size`]). `next` is the index the following page starts at, `None` on the
/// last page. Each service makes its own tokens from keys.
pub fn page<T>(sorted: &[T], key: impl Fn(&T) -> &str, size: usize, from: Option<&str>) -> Page {
    let start = from.map_or(0, |from| sorted.partition_point(|t| key(t) < from));
    let end = if size == 0 {
        sorted.len()
    } else {
        start.saturating_add(size).min(sorted.len())
    };
    Page {
        range: start..end,
        next: (end < sorted.len()).then_some(end),
    }
}

/// One page of a list: the entries' indexes and where the next page starts (see [`page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub range: std::ops::Range<usize>,
    pub next: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::Topology;
    use crate::csi::volume_capability::{AccessMode, BlockVolume};

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cap(mode: Mode, access: AccessType) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(access),
        }
    }

    fn mount(fs: &str) -> AccessType {
        AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })
    }

    #[test]
    fn pages_walk_a_sorted_list_once() {
        let keys = ["a", "b", "c", "d", "e"];
        let at = |size, from| {
            let p = page(&keys, |k| *k, size, from);
            (p.range, p.next)
        };
        assert_eq!(at(2, None), (0..2, Some(2)));
        assert_eq!(at(2, Some("c")), (2..4, Some(4)));
        assert_eq!(at(2, Some("e")), (4..5, None));
        assert_eq!(at(0, None), (0..5, None));
        assert_eq!(at(5, None), (0..5, None));
        // an entry deleted since the previous page does not skip its successor
        assert_eq!(at(2, Some("bb")), (2..4, Some(4)));
        // a start after the last key is an empty last page
        assert_eq!(at(2, Some("z")), (5..5, None));
        let empty = page(&[] as &[&str], |k| *k, 3, None);
        assert_eq!((empty.range, empty.next), (0..0, None));
        assert_eq!(page_size(0), Ok(0));
        assert_eq!(page_size(7), Ok(7));
        assert!(
            matches!(page_size(-1), Err(RequestError::Invalid(m)) if m.contains("must not be negative"))
        );
    }

    #[test]
    fn provisioning_is_linear_unless_the_class_says_thin() {
        let class = (names::PARAM_DEVICE_CLASS, "nvme");
        let p = VolumeParameters::try_from(&params(&[class])).unwrap();
        assert_eq!(p.provisioning, Provisioning::Linear);
        let p = VolumeParameters::try_from(&params(&[class, (names::PARAM_PROVISIONING, "thin")]))
            .unwrap();
        assert_eq!(p.provisioning, Provisioning::Thin);
        let err = parse_parameters(&params(&[(names::PARAM_PROVISIONING, "thick")])).unwrap_err();
        assert!(err.to_string().contains("expected linear or thin"), "{err}");
    }

    #[test]
    fn mount_flags_that_change_the_mount_itself_are_invalid() {
        let with_flags = |flags: &[&str]| {
            cap(
                Mode::SingleNodeWriter,
                AccessType::Mount(MountVolume {
                    fs_type: "xfs".into(),
                    mount_flags: flags.iter().map(|f| f.to_string()).collect(),
                    ..Default::default()
                }),
            )
        };
        assert!(check_capability(&with_flags(&["noatime", "nodev,nosuid"])).is_ok());
        for bad in [
            &["bind"][..],
            &["noatime,rbind"],
            &["remount"],
            &["shared"],
            &[""],
            &["a b"],
        ] {
            let err = check_capability(&with_flags(bad)).unwrap_err();
            assert!(err.to_string().contains("mount flag"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn recovery_policies_are_known_keys_with_checked_values() {
        for key in ["strata.io/on-disk-failure", "strata.io/on-node-failure"] {
            for value in ["report", "drift"] {
                assert!(
                    VolumeParameters::try_from(&params(&[
                        ("strata.io/device-class", "ssd"),
                        (key, value)
                    ]))
                    .is_ok()
                );
            }
            let bad = VolumeParameters::try_from(&params(&[
                ("strata.io/device-class", "ssd"),
                (key, "move"),
            ]))
            .unwrap_err();
            assert!(bad.to_string().contains("report or drift"), "{bad}");
        }
    }

    #[test]
    fn parameters_need_a_class_and_refuse_unknown_keys() {
        let ok = VolumeParameters::try_from(&params(&[
            ("strata.io/device-class", "ssd"),
            ("strata.io/placement", "spread"),
            ("csi.storage.k8s.io/pvc/name", "data-0"),
            ("csi.storage.k8s.io/pvc/namespace", "db"),
            ("csi.storage.k8s.io/pv/name", "pvc-1"),
        ]))
        .unwrap();
        assert_eq!(ok.device_class, DeviceClass::Ssd);
        assert_eq!(ok.placement, Some(Placement::Spread));
        assert_eq!(ok.pvc_name.as_deref(), Some("data-0"));

        assert!(VolumeParameters::try_from(&params(&[])).is_err());
        assert!(
            VolumeParameters::try_from(&params(&[("strata.io/device-class", "tape")])).is_err()
        );
        let typo = VolumeParameters::try_from(&params(&[
            ("strata.io/device-class", "ssd"),
            ("strata.io/devcie-class", "ssd"),
        ]))
        .unwrap_err();
        assert!(typo.to_string().contains("devcie"), "{typo}");
        assert!(
            VolumeParameters::try_from(&params(&[
                ("strata.io/device-class", "ssd"),
                ("strata.io/wipe", "shred")
            ]))
            .is_err()
        );
    }

    #[test]
    fn sizes_round_up_to_extents_within_limits() {
        let range = |r, l| {
            Some(CapacityRange {
                required_bytes: r,
                limit_bytes: l,
            })
        };
        assert_eq!(size_for_range(None), Ok(DEFAULT_VOLUME_BYTES));
        assert_eq!(size_for_range(range(1, 0).as_ref()), Ok(4 << 20));
        assert_eq!(size_for_range(range(0, 8 << 20).as_ref()), Ok(8 << 20));
        assert_eq!(
            size_for_range(range(5 << 20, 10 << 20).as_ref()),
            Ok(8 << 20)
        );
        assert!(matches!(
            size_for_range(range(5 << 20, 6 << 20).as_ref()),
            Err(RequestError::OutOfRange(_))
        ));
        assert!(matches!(
            size_for_range(range(-1, 0).as_ref()),
            Err(RequestError::Invalid(_))
        ));
        assert!(matches!(
            size_for_range(range(10, 5).as_ref()),
            Err(RequestError::Invalid(_))
        ));
        assert!(matches!(
            size_for_range(range(i64::MAX, 0).as_ref()),
            Err(RequestError::OutOfRange(_))
        ));
    }

    #[test]
    fn only_single_node_modes_and_known_filesystems() {
        let block = cap(Mode::SingleNodeWriter, AccessType::Block(BlockVolume {}));
        assert_eq!(
            check_capabilities(std::slice::from_ref(&block)),
            Ok(Access::Block)
        );
        assert_eq!(
            check_capabilities(&[cap(Mode::SingleNodeReaderOnly, mount(""))]),
            Ok(Access::Mount {
                fs_type: "xfs".into(),
                mount_flags: vec![]
            })
        );
        assert!(check_capabilities(&[]).is_err());
        assert!(check_capabilities(&[cap(Mode::MultiNodeMultiWriter, mount("xfs"))]).is_err());
        assert!(check_capabilities(&[cap(Mode::SingleNodeWriter, mount("btrfs"))]).is_err());
        assert!(
            check_capabilities(&[block, cap(Mode::MultiNodeReaderOnly, mount("ext4"))]).is_err()
        );
        let no_type = VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: None,
        };
        assert!(check_capabilities(&[no_type]).is_err());
        let group = cap(
            Mode::SingleNodeWriter,
            AccessType::Mount(MountVolume {
                fs_type: "xfs".into(),
                volume_mount_group: "1000".into(),
                ..Default::default()
            }),
        );
        assert!(check_capabilities(&[group]).is_err());
    }

    #[test]
    fn candidates_are_preferred_then_requisite_without_repeats() {
        let topo = |n: &str| Topology {
            segments: [(names::TOPOLOGY_KEY.to_string(), n.to_string())].into(),
        };
        let req = TopologyRequirement {
            requisite: vec![topo("a"), topo("b"), topo("c")],
            preferred: vec![topo("b")],
        };
        assert_eq!(candidate_nodes(Some(&req)), ["b", "a", "c"]);
        assert!(candidate_nodes(None).is_empty());
    }

    #[test]
    fn ids_use_one_strict_charset() {
        for ok in ["pvc-0a1b", "Sanity_Vol.1", "a", &"x".repeat(128)] {
            assert!(check_id("volume id", ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "pvc-A?x",
            "a%2F",
            "a#b",
            "é",
            "a\nb",
            "a+b",
            "a:b",
            ".",
            "..",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(check_id("volume id", bad), Err(RequestError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn small_filesystem_volumes_are_raised_to_the_filesystem_minimum() {
        let range = |r: i64, l: i64| CapacityRange {
            required_bytes: r,
            limit_bytes: l,
        };
        let xfs = Access::Mount {
            fs_type: "xfs".into(),
            mount_flags: vec![],
        };
        let ext4 = Access::Mount {
            fs_type: "ext4".into(),
            mount_flags: vec![],
        };
        let mi = 1i64 << 20;
        assert_eq!(
            size_for_volume(Some(&range(100 * mi, 0)), &xfs),
            Ok(XFS_MIN_BYTES)
        );
        assert_eq!(
            size_for_volume(Some(&range(mi, 0)), &ext4),
            Ok(EXT4_MIN_BYTES)
        );
        assert_eq!(
            size_for_volume(Some(&range(mi, 0)), &Access::Block),
            Ok(4 << 20)
        );
        // A limit below the filesystem's minimum cannot be met.
        assert!(matches!(
            size_for_volume(Some(&range(0, 100 * mi)), &xfs),
            Err(RequestError::OutOfRange(_))
        ));
        // The default size is above every minimum.
        assert_eq!(size_for_volume(None, &xfs), Ok(DEFAULT_VOLUME_BYTES));
        assert!(size_fits(8 << 20, Some(&range(5 * mi, 8 * mi))));
        assert!(!size_fits(8 << 20, Some(&range(9 * mi, 0))));
        assert!(!size_fits(8 << 20, Some(&range(0, 4 * mi))));
        assert!(size_fits(8 << 20, None));
    }

    #[test]
    fn sidecar_keys_are_accepted_and_the_class_may_be_left_to_the_caller() {
        let p = parse_parameters(&params(&[
            ("csi.storage.k8s.io/pvc/name", "data-0"),
            ("csi.storage.k8s.io/provisioner-secret-name", "s"),
        ]))
        .unwrap();
        assert_eq!(p.device_class, None);
        assert_eq!(p.pvc_name.as_deref(), Some("data-0"));
        assert!(matches!(
            parse_parameters(&params(&[("strata.io/speed", "fast")])),
            Err(RequestError::Invalid(_))
        ));
        assert!(matches!(
            parse_parameters(&params(&[("speed", "fast")])),
            Err(RequestError::Invalid(_))
        ));
    }

    #[test]
    fn content_sources_are_checked_and_sized_from_the_source() {
        use crate::csi::VolumeContentSource;
        use crate::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
        assert_eq!(content_source(None), Ok(None));
        let snap = VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource {
                snapshot_id: "snapshot-1".into(),
            })),
        };
        let parsed = content_source(Some(&snap)).unwrap().unwrap();
        assert_eq!(parsed, ContentSource::Snapshot("snapshot-1".into()));
        assert_eq!(content_source_message(&parsed), snap);
        let bad = VolumeContentSource {
            r#type: Some(Type::Volume(VolumeSource {
                volume_id: "a/b".into(),
            })),
        };
        assert!(matches!(
            content_source(Some(&bad)),
            Err(RequestError::Invalid(_))
        ));
        let empty = VolumeContentSource { r#type: None };
        assert!(matches!(
            content_source(Some(&empty)),
            Err(RequestError::Invalid(_))
        ));

        let range = |required: i64, limit: i64| CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        };
        assert_eq!(size_from_source(None, 5 << 30, &parsed), Ok(5 << 30));
        assert_eq!(
            size_from_source(Some(&range(1 << 30, 0)), 5 << 30, &parsed),
            Ok(5 << 30)
        );
        assert_eq!(
            size_from_source(Some(&range(8 << 30, 0)), 5 << 30, &parsed),
            Ok(8 << 30)
        );
        assert!(matches!(
            size_from_source(Some(&range(1 << 30, 2 << 30)), 5 << 30, &parsed),
            Err(RequestError::OutOfRange(_))
        ));
        // Whole extents, as any other volume: a byte over the source is one more extent...
        let extent = DEFAULT_EXTENT_BYTES as i64;
        assert_eq!(
            size_from_source(Some(&range((5 << 30) + 1, 0)), 5 << 30, &parsed),
            Ok((5 << 30) + DEFAULT_EXTENT_BYTES)
        );
        // ...unless that crosses the limit: then the limit rounded down, if it still holds
        // the requirement; else no whole-extent size fits.
        assert_eq!(
            size_from_source(
                Some(&range(5 << 30, (5 << 30) + extent - 1)),
                5 << 30,
                &parsed
            ),
            Ok(5 << 30)
        );
        assert!(matches!(
            size_from_source(Some(&range((5 << 30) + 1, (5 << 30) + 2)), 5 << 30, &parsed),
            Err(RequestError::OutOfRange(_))
        ));
        // Bad ranges are refused as for any other CreateVolume, not read as "unset".
        for (required, limit) in [(-1, 0), (0, -1), (6 << 30, 5 << 30)] {
            assert!(
                matches!(
                    size_from_source(Some(&range(required, limit)), 1 << 30, &parsed),
                    Err(RequestError::Invalid(_))
                ),
                "{required} {limit}"
            );
        }
    }

    #[test]
    fn snapshot_parameters_take_only_the_sidecars_keys() {
        let params: HashMap<String, String> = [
            ("csi.storage.k8s.io/volumesnapshot/name", "snap-1"),
            ("csi.storage.k8s.io/volumesnapshot/namespace", "db"),
            (
                "csi.storage.k8s.io/volumesnapshotcontent/name",
                "snapcontent-1",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let parsed = parse_snapshot_parameters(&params).unwrap();
        assert_eq!(parsed.volume_snapshot_name.as_deref(), Some("snap-1"));
        assert_eq!(parsed.volume_snapshot_namespace.as_deref(), Some("db"));
        let mut bad = params.clone();
        bad.insert("strata.io/device-class".into(), "ssd".into());
        assert!(matches!(
            parse_snapshot_parameters(&bad),
            Err(RequestError::Invalid(m)) if m.contains("strata.io/device-class")
        ));
    }
}
