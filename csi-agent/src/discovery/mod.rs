//! Discovery: which raw disks does this node have, where do they sit (slot), what media are they,
//! and may Strata claim them? It reads sysfs and `/dev` under injectable roots, mounts and swaps
//! from an injectable proc root, and probes signatures through [`SignatureProbe`]; it changes
//! nothing and never imports kube. A disk that is already one of Strata's PVs (an `LVM2_member`
//! whose PV UUID the LVM layer lists with Strata's tag) is reported claimed, not refused; kernel
//! names are carried for information only, identity is the slot (+ serial/WWN).

mod probe;
mod report;
pub mod slot;
mod sysfs;
mod usage;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use csi_api::names::{DeviceClass, MIN_DISK_BYTES};
use futures::StreamExt;

pub use probe::{BlkidProbe, SignatureProbe};

use crate::lvm::blkid::{Probed, Signature};
pub use report::{DiskReport, render_json, render_table};
pub use slot::{Location, Transport};
pub use sysfs::{SysDisk, is_candidate};
pub use usage::{Mount, Usage};

/// Where the kernel's view of devices is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    pub sysfs: PathBuf,
    pub dev: PathBuf,
    pub proc: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// Discovery failed as a whole (a single unreadable disk is a refusal, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the LVM layer knows about PVs, by PV UUID; or why it could not be asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PvView {
    Known(BTreeMap<String, KnownPv>),
    /// LVM could not be asked (e.g. lvm2 is not installed): PVs cannot be told apart.
    Unavailable(String),
}

/// One PV as LVM lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownPv {
    pub vg: Option<String>,
    /// Whether the PV carries Strata's ownership tag (and sits in a Strata VG).
    pub strata: bool,
}

/// One disk found on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Stable identity (by-path form); empty when the device path has no known shape.
    pub slot: String,
    /// PCI physical slot name (`/sys/bus/pci/slots/<name>`), when the platform names one.
    pub physical_slot: Option<String>,
    pub transport: Option<Transport>,
    /// Kernel name at scan time: informational only.
    pub kernel_name: String,
    /// The device node under the dev root.
    pub device: PathBuf,
    pub media: DeviceClass,
    pub size_bytes: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub model: String,
    pub serial: String,
    pub wwn: String,
}

/// Why a disk may not be claimed. `Display` gives the reason shown to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoSlot(String),
    NoDeviceNode(PathBuf),
    HasPartitions(Vec<String>),
    HasHolders(Vec<String>),
    Mounted(Vec<PathBuf>),
    Swap(Vec<String>),
    ReadOnly,
    Removable,
    TooSmall(u64),
    /// A filesystem, partition table, RAID/crypto/cache member... (the words of [`Signature`]).
    Signature(String),
    /// An LVM2 PV that is not Strata's (its VG when LVM knows it).
    ForeignPv(Option<String>),
    /// An LVM2 PV that could not be checked for Strata's tag.
    UncheckedPv(String),
    /// blkid found several conflicting signatures.
    Ambivalent,
    ProbeFailed(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSlot(why) => write!(f, "no stable slot ({why})"),
            Refusal::NoDeviceNode(p) => write!(f, "no device node {}", p.display()),
            Refusal::HasPartitions(p) => write!(f, "has partitions ({})", p.join(", ")),
            Refusal::HasHolders(h) => write!(f, "has holders ({})", h.join(", ")),
            Refusal::Mounted(at) => {
                let at: Vec<_> = at.iter().map(|p| p.display().to_string()).collect();
                write!(f, "mounted at {}", at.join(", "))
            }
            Refusal::Swap(s) => write!(f, "used as swap ({})", s.join(", ")),
            Refusal::ReadOnly => f.write_str("read-only"),
            Refusal::Removable => f.write_str("removable"),
            Refusal::TooSmall(b) => write!(
                f,
                "smaller than 1 GiB ({b} bytes; minimum {MIN_DISK_BYTES})"
            ),
            Refusal::Signature(words) => write!(f, "has {words}"),
            Refusal::ForeignPv(Some(vg)) => {
                write!(f, "is an LVM2 physical volume of foreign VG {vg}")
            }
            Refusal::ForeignPv(None) => {
                f.write_str("is an LVM2 physical volume without Strata's tag")
            }
            Refusal::UncheckedPv(why) => write!(
                f,
                "is an LVM2 physical volume that cannot be checked for Strata's tag ({why})"
            ),
            Refusal::Ambivalent => f.write_str("has several conflicting signatures"),
            Refusal::ProbeFailed(why) => write!(f, "signature probe failed: {why}"),
        }
    }
}

/// What Strata may do with a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Blank, unused, writable, big enough: may be claimed.
    Eligible,
    /// Already a PV of a Strata VG.
    StrataPv { pv_uuid: String, vg: Option<String> },
    /// Not eligible; every reason found.
    Refused(Vec<Refusal>),
}

/// One disk and the verdict on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub disk: Disk,
    pub verdict: Verdict,
    /// What the probe saw (None when the disk was not probed or is blank).
    pub signature: Option<Signature>,
}

impl Found {
    /// The refusal reasons joined for display (empty unless refused).
    pub fn reason(&self) -> String {
        match &self.verdict {
            Verdict::Refused(r) => r
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            _ => String::new(),
        }
    }
}

/// Every disk of the node, sorted by slot, plus notes on what could not be checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub disks: Vec<Found>,
    pub notes: Vec<String>,
}

/// How many signature probes (one `blkid -p` process each) run at once during a scan.
const CONCURRENT_PROBES: usize = 16;

/// Scans the node: every candidate disk under `<sysfs>/block`, judged against `usage` (mounts and
/// swaps), the signature probe and what LVM knows about PVs. Probes run concurrently, at most
/// [`CONCURRENT_PROBES`] at a time (one process per disk: each keeps its own exit code).
pub async fn scan(
    roots: &Roots,
    usage: &Usage,
    probe: &dyn SignatureProbe,
    pvs: &PvView,
) -> Result<Inventory, DiscoveryError> {
    let sysfs_root =
        std::fs::canonicalize(&roots.sysfs).map_err(|source| DiscoveryError::Read {
            path: roots.sysfs.clone(),
            source,
        })?;
    let block = sysfs_root.join("block");
    let read_err = |source| DiscoveryError::Read {
        path: block.clone(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(&block)
        .map_err(read_err)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_candidate(n))
        .collect();
    names.sort();

    let mut notes = Vec::new();
    if let PvView::Unavailable(why) = pvs {
        notes.push(format!(
            "LVM is unavailable ({why}): LVM2 physical volumes cannot be checked for Strata's tag and are reported Rejected"
        ));
    }
    let mut pending = Vec::new();
    for name in &names {
        match sysfs::read_disk(&sysfs_root, name) {
            Ok(sys) => pending.push(judge(sys, roots, usage, probe, pvs)),
            Err(e) => notes.push(format!("{name}: cannot read sysfs entry: {e}")),
        }
    }
    let mut disks: Vec<Found> = futures::stream::iter(pending)
        .buffer_unordered(CONCURRENT_PROBES)
        .collect()
        .await;
    disks.sort_by(|a, b| {
        (a.disk.slot.is_empty(), &a.disk.slot, &a.disk.kernel_name).cmp(&(
            b.disk.slot.is_empty(),
            &b.disk.slot,
            &b.disk.kernel_name,
        ))
    });
    Ok(Inventory { disks, notes })
}

/// Applies every eligibility rule to one disk; probes its device unless it has no node.
async fn judge(
    sys: SysDisk,
    roots: &Roots,
    usage: &Usage,
    probe: &dyn SignatureProbe,
    pvs: &PvView,
) -> Found {
    let device = roots.dev.join(&sys.kernel_name);
    let mut refusals = static_refusals(&sys, usage);
    let has_node = device.symlink_metadata().is_ok();
    let probed = if has_node {
        Some(probe.probe(&device).await)
    } else {
        refusals.push(Refusal::NoDeviceNode(device.clone()));
        None
    };
    let (slot, transport) = match &sys.location {
        Ok(l) => (l.slot.clone(), Some(l.transport)),
        Err(_) => (String::new(), None),
    };
    let disk = Disk {
        slot,
        physical_slot: sys.physical_slot.clone(),
        transport,
        kernel_name: sys.kernel_name.clone(),
        device,
        media: sys.media,
        size_bytes: sys.size_bytes,
        logical_block_size: sys.logical_block_size,
        physical_block_size: sys.physical_block_size,
        model: sys.model.clone(),
        serial: sys.serial.clone(),
        wwn: sys.wwn.clone(),
    };
    let mut signature = None;
    match probed {
        None => {}
        Some(Err(e)) => refusals.push(Refusal::ProbeFailed(e.to_string())),
        Some(Ok(Probed::Blank)) => {}
        Some(Ok(Probed::Ambivalent)) => refusals.push(Refusal::Ambivalent),
        Some(Ok(Probed::Signature(sig))) => {
            if let Some(uuid) = sig.lvm_pv_uuid() {
                match pvs {
                    PvView::Known(known) => match known.get(uuid) {
                        // a Strata PV in a stable slot: claimed, whatever else (LVs make holders)
                        Some(pv) if pv.strata && !disk.slot.is_empty() => {
                            let verdict = Verdict::StrataPv {
                                pv_uuid: uuid.to_owned(),
                                vg: pv.vg.clone(),
                            };
                            return Found {
                                disk,
                                verdict,
                                signature: Some(sig),
                            };
                        }
                        Some(pv) if pv.strata => {}
                        Some(pv) => refusals.push(Refusal::ForeignPv(pv.vg.clone())),
                        None => refusals.push(Refusal::ForeignPv(None)),
                    },
                    PvView::Unavailable(why) => refusals.push(Refusal::UncheckedPv(why.clone())),
                }
            } else {
                refusals.push(Refusal::Signature(sig.to_string()));
            }
            signature = Some(sig);
        }
    }
    let verdict = if refusals.is_empty() {
        Verdict::Eligible
    } else {
        Verdict::Refused(refusals)
    };
    Found {
        disk,
        verdict,
        signature,
    }
}

/// The rules that need no device access: slot, partitions, holders, mounts, swap, flags, size.
fn static_refusals(sys: &SysDisk, usage: &Usage) -> Vec<Refusal> {
    let mut out = Vec::new();
    if let Err(why) = &sys.location {
        out.push(Refusal::NoSlot(why.clone()));
    }
    if !sys.partitions.is_empty() {
        out.push(Refusal::HasPartitions(
            sys.partitions.iter().map(|(n, _)| n.clone()).collect(),
        ));
    }
    if !sys.holders.is_empty() {
        out.push(Refusal::HasHolders(sys.holders.clone()));
    }
    let names: BTreeSet<String> = std::iter::once(sys.kernel_name.clone())
        .chain(sys.partitions.iter().map(|(n, _)| n.clone()))
        .collect();
    let majmins: BTreeSet<String> = std::iter::once(sys.majmin.clone())
        .chain(sys.partitions.iter().map(|(_, d)| d.clone()))
        .filter(|d| !d.is_empty())
        .collect();
    let mounted = usage.mount_points(&names, &majmins);
    if !mounted.is_empty() {
        out.push(Refusal::Mounted(mounted));
    }
    let swaps = usage.swap_areas(&names);
    if !swaps.is_empty() {
        out.push(Refusal::Swap(swaps));
    }
    if sys.read_only {
        out.push(Refusal::ReadOnly);
    }
    if sys.removable {
        out.push(Refusal::Removable);
    }
    if sys.size_bytes < MIN_DISK_BYTES {
        out.push(Refusal::TooSmall(sys.size_bytes));
    }
    out
}

/// Checks one device again right before it is claimed: still blank? (Used by the claim executor.)
pub async fn recheck_blank(probe: &dyn SignatureProbe, device: &Path) -> Result<(), Refusal> {
    match probe.probe(device).await {
        Ok(Probed::Blank) => Ok(()),
        Ok(Probed::Ambivalent) => Err(Refusal::Ambivalent),
        Ok(Probed::Signature(sig)) => Err(Refusal::Signature(sig.to_string())),
        Err(e) => Err(Refusal::ProbeFailed(e.to_string())),
    }
}

#[cfg(test)]
mod tests;
