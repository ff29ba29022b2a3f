//! Validation of CSI controller requests shared by the Kubernetes controller and the standalone
//! agent: StorageClass parameters (parsed in exactly this one place), capacity ranges, volume
//! capabilities and topology. Every function is pure and returns a message fit for a gRPC status.

use std::collections::HashMap;

use crate::capacity::{DEFAULT_EXTENT_BYTES, round_up_to_extent};
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessType, MountVolume};
use crate::csi::{CapacityRange, TopologyRequirement, VolumeCapability};
use crate::names::{self, DeviceClass, Placement};

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

/// Wipe policies a StorageClass may ask for.
pub const WIPE_POLICIES: [&str; 3] = ["discard", "zero", "none"];

/// The parameters of a StorageClass (CreateVolume `parameters`), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeParameters {
    pub device_class: DeviceClass,
    pub placement: Option<Placement>,
    pub fs_type: Option<String>,
    pub wipe: Option<String>,
    /// PVC reference from external-provisioner's `--extra-create-metadata`.
    pub pvc_namespace: Option<String>,
    pub pvc_name: Option<String>,
}

const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const PV_NAME: &str = "csi.storage.k8s.io/pv/name";

impl TryFrom<&HashMap<String, String>> for VolumeParameters {
    type Error = RequestError;

    /// Unknown keys are refused, so that a typo in a StorageClass is an error, not a default.
    fn try_from(params: &HashMap<String, String>) -> Result<Self, Self::Error> {
        let mut device_class = None;
        let mut out = VolumeParameters {
            device_class: DeviceClass::Nvme,
            placement: None,
            fs_type: None,
            wipe: None,
            pvc_namespace: None,
            pvc_name: None,
        };
        for (key, value) in params {
            match key.as_str() {
                names::PARAM_DEVICE_CLASS => {
                    device_class = Some(
                        value
                            .parse::<DeviceClass>()
                            .map_err(|e| invalid(e.to_string()))?,
                    );
                }
                names::PARAM_PLACEMENT => {
                    out.placement = Some(
                        value
                            .parse::<Placement>()
                            .map_err(|e| invalid(e.to_string()))?,
                    );
                }
                names::PARAM_FS_TYPE => out.fs_type = Some(check_fs_type(value)?.to_owned()),
                names::PARAM_WIPE => {
                    if !WIPE_POLICIES.contains(&value.as_str()) {
                        return Err(invalid(format!(
                            "parameter {key}: unknown wipe policy {value:?}: expected discard, zero or none"
                        )));
                    }
                    out.wipe = Some(value.clone());
                }
                // Read by the controller's recovery policy; only checked here.
                names::PARAM_ON_DISK_FAILURE | names::PARAM_ON_NODE_FAILURE => {
                    if !names::RECOVERY_POLICIES.contains(&value.as_str()) {
                        return Err(invalid(format!(
                            "parameter {key}: unknown recovery policy {value:?}: expected report or drift"
                        )));
                    }
                }
                PVC_NAME => out.pvc_name = Some(value.clone()),
                PVC_NAMESPACE => out.pvc_namespace = Some(value.clone()),
                PV_NAME => {}
                other => {
                    return Err(invalid(format!(
                        "unknown parameter {other:?}: Strata takes {}, {}, {}, {}, {} and {}",
                        names::PARAM_DEVICE_CLASS,
                        names::PARAM_PLACEMENT,
                        names::PARAM_FS_TYPE,
                        names::PARAM_WIPE,
                        names::PARAM_ON_DISK_FAILURE,
                        names::PARAM_ON_NODE_FAILURE
                    )));
                }
            }
        }
        out.device_class = device_class.ok_or_else(|| {
            invalid(format!(
                "parameter {} is required (nvme, ssd or hdd)",
                names::PARAM_DEVICE_CLASS
            ))
        })?;
        Ok(out)
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
/// unset), rounded up to whole extents, and never above `limit_bytes`.
pub fn size_for_range(range: Option<&CapacityRange>) -> Result<u64, RequestError> {
    let (required, limit) = match range {
        Some(r) => (r.required_bytes, r.limit_bytes),
        None => (0, 0),
    };
    if required < 0 || limit < 0 {
        return Err(invalid(format!(
            "capacity range must not be negative (required {required}, limit {limit})"
        )));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit != 0 && required > limit {
        return Err(invalid(format!(
            "capacity range is empty: required {required} bytes exceeds limit {limit} bytes"
        )));
    }
    let wanted = if required == 0 {
        if limit != 0 {
            limit.min(DEFAULT_VOLUME_BYTES)
        } else {
            DEFAULT_VOLUME_BYTES
        }
    } else {
        required
    };
    let size = round_up_to_extent(wanted, DEFAULT_EXTENT_BYTES)
        .filter(|s| *s <= i64::MAX as u64)
        .ok_or_else(|| RequestError::OutOfRange(format!("{wanted} bytes is too large")))?;
    if limit != 0 && size > limit {
        // Rounding up overshot the limit: fall back to whole extents below it.
        let down = limit / DEFAULT_EXTENT_BYTES * DEFAULT_EXTENT_BYTES;
        if down >= required.max(1) {
            return Ok(down);
        }
        return Err(RequestError::OutOfRange(format!(
            "no whole number of {DEFAULT_EXTENT_BYTES}-byte extents lies between {required} and {limit} bytes"
        )));
    }
    Ok(size)
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
            ..
        })) => {
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

/// A CSI object id (volume id, name): non-empty, at most 128 bytes, printable ASCII without `/`.
pub fn check_id(what: &str, id: &str) -> Result<(), RequestError> {
    if id.is_empty() {
        return Err(invalid(format!("{what} must not be empty")));
    }
    if id.len() > 128 {
        return Err(invalid(format!("{what} is longer than 128 bytes")));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(invalid(format!(
            "{what} {id:?} must be printable ASCII without '/'"
        )));
    }
    Ok(())
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
    fn ids_are_bounded_printable_ascii() {
        assert!(check_id("volume id", "pvc-0a1b").is_ok());
        assert!(check_id("volume id", "").is_err());
        assert!(check_id("volume id", "a/b").is_err());
        assert!(check_id("volume id", "a b").is_err());
        assert!(check_id("volume id", &"x".repeat(129)).is_err());
    }
}
