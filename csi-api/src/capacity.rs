//! Capacity arithmetic shared by the scheduler's filter and the controller's admission, so that
//! both answer "does this fit on that node" the same way, to the byte: a claim's size (Kubernetes
//! quantity, rounded up to whole extents), the demand pending on each node (unfinished
//! LogicalVolumes, claims with a selected node but no volume yet), and the per-class fit check.
//!
//! Every byte count is kept per [`Pool`]: a device class and its provisioning. Linear volumes
//! take the class VG's extents and are admitted against `allocatableBytes` minus the linear
//! demand pending there; thin volumes take a promise on the class's thin pool and are admitted
//! against `thinPool.promisableBytes` (which the agent computes: never more than pool size ×
//! ratio − virtual bytes promised, never more than the pool can physically take, 0 when `Full`)
//! minus the thin demand pending there, and nothing else. The pool's own extents are an LV of the
//! VG, so linear and thin share the VG's extents without double counting.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::crd::{
    ClassHealth, DeviceClassStatus, LogicalVolume, LogicalVolumePhase, NodeStorageStatus,
    ThinPoolHealth,
};
use crate::names::{DeviceClass, Provisioning};

/// LVM's default physical extent, the granularity of every allocation.
pub const DEFAULT_EXTENT_BYTES: u64 = 4 << 20;

/// Where a volume's bytes are taken from: a device class, and within it the VG's extents
/// (linear) or the class's thin pool (thin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    pub class: DeviceClass,
    pub provisioning: Provisioning,
}

impl Pool {
    pub fn new(class: DeviceClass, provisioning: Provisioning) -> Self {
        Pool {
            class,
            provisioning,
        }
    }

    /// The class VG's extents.
    pub fn linear(class: DeviceClass) -> Self {
        Pool::new(class, Provisioning::Linear)
    }

    /// The class's thin pool.
    pub fn thin(class: DeviceClass) -> Self {
        Pool::new(class, Provisioning::Thin)
    }

    pub fn is_thin(&self) -> bool {
        self.provisioning == Provisioning::Thin
    }

    fn order_key(&self) -> (DeviceClass, bool) {
        (self.class, self.is_thin())
    }
}

/// A bare class is linear.
impl From<DeviceClass> for Pool {
    fn from(class: DeviceClass) -> Self {
        Pool::linear(class)
    }
}

impl PartialOrd for Pool {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Class order, linear before thin.
impl Ord for Pool {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.provisioning {
            Provisioning::Linear => write!(f, "{}", self.class),
            Provisioning::Thin => write!(f, "{} thin", self.class),
        }
    }
}

/// Bytes per pool (device class and provisioning).
pub type ClassBytes = BTreeMap<Pool, u64>;

/// `bytes` rounded up to whole extents; `None` on overflow or a zero extent.
pub fn round_up_to_extent(bytes: u64, extent: u64) -> Option<u64> {
    if extent == 0 {
        return None;
    }
    bytes.div_ceil(extent).checked_mul(extent)
}

/// Adds `bytes` of `pool` to a per-pool sum, saturating.
pub fn add_class_bytes(sum: &mut ClassBytes, pool: Pool, bytes: u64) {
    let entry = sum.entry(pool).or_insert(0);
    *entry = entry.saturating_add(bytes);
}

/// The pool and extent-rounded bytes a LogicalVolume adds on top of what its node's NodeStorage,
/// published at `published_sequence` (its `status.capacitySequence`), already reflects (the same
/// rules for a thin volume, whose bytes are virtual and count against the class's thin pool —
/// `spec.provisioning: thin` — and for a linear one, against the VG):
/// - not made yet (no phase, `Pending`): the whole volume;
/// - `Ready` with an allocation the published capacity does not reflect yet (the volume's
///   `status.capacitySequence` is beyond `published_sequence`): the whole volume, so the window
///   between the agent writing `Ready` and republishing NodeStorage never double-books;
/// - `Ready` and reflected: the growth still asked for (`spec.sizeBytes` beyond the current size,
///   i.e. an expansion the agent has not made yet);
/// - `Failed`, `Wiping` or being deleted: nothing (never made, or its extents are still allocated
///   and so already missing from the published free bytes).
///
/// `None` when nothing is pending.
pub fn volume_pending_bytes(
    lv: &LogicalVolume,
    published_sequence: Option<u64>,
) -> Option<(Pool, u64)> {
    if lv.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let wanted = claim_bytes(lv.spec.size_bytes);
    let status = lv.status.as_ref();
    let pending = match status.and_then(|s| s.phase) {
        Some(LogicalVolumePhase::Failed | LogicalVolumePhase::Wiping) => 0,
        None | Some(LogicalVolumePhase::Pending) => wanted,
        Some(LogicalVolumePhase::Ready) => {
            let current = status
                .and_then(|s| s.current_size_bytes)
                .map_or(wanted, claim_bytes);
            let reflected = match status.and_then(|s| s.capacity_sequence) {
                // Written by an agent that predates the sequence: trust `Ready` as before.
                None => true,
                Some(needed) => published_sequence.is_some_and(|seen| seen >= needed),
            };
            if reflected {
                wanted.saturating_sub(current)
            } else {
                wanted.max(current)
            }
        }
    };
    let pool = Pool::new(
        lv.spec.device_class,
        lv.spec.provisioning.unwrap_or_default(),
    );
    (pending > 0).then_some((pool, pending))
}

/// Demand already promised to `node` but not yet visible in its NodeStorage published at
/// `published_sequence` (see [`volume_pending_bytes`]).
pub fn pending_from_volumes<'a>(
    volumes: impl IntoIterator<Item = &'a LogicalVolume>,
    node: &str,
    published_sequence: Option<u64>,
) -> ClassBytes {
    let mut pending = ClassBytes::new();
    for lv in volumes {
        if lv.spec.node_name != node {
            continue;
        }
        if let Some((pool, bytes)) = volume_pending_bytes(lv, published_sequence) {
            add_class_bytes(&mut pending, pool, bytes);
        }
    }
    pending
}

/// [`pending_from_volumes`] for every node at once, in one pass (keyed by node name);
/// `published_sequence` gives each node's NodeStorage `status.capacitySequence`.
pub fn pending_by_node<'a>(
    volumes: impl IntoIterator<Item = &'a LogicalVolume>,
    published_sequence: impl Fn(&str) -> Option<u64>,
) -> HashMap<String, ClassBytes> {
    let mut by_node: HashMap<String, ClassBytes> = HashMap::new();
    for lv in volumes {
        let node = lv.spec.node_name.as_str();
        if let Some((pool, bytes)) = volume_pending_bytes(lv, published_sequence(node)) {
            let pending = by_node.entry(node.to_owned()).or_default();
            add_class_bytes(pending, pool, bytes);
        }
    }
    by_node
}

/// Whether a claim that carries `volume.kubernetes.io/selected-node` but has no volume yet counts
/// as demand pending on that node. Anyone who may create a claim can set the annotation, so it
/// counts only where it is credible: the claim is valid for its class (the one request validator
/// accepts its size and access modes), a pod that uses it is bound or nominated to that node,
/// and it could ever fit there (`bytes` within the pool's total on the node, [`pool_total`];
/// `None` when the node has no such class or, for thin, no thin pool). Everything else is left
/// to CreateVolume to refuse.
pub fn selected_claim_counts(
    valid_for_class: bool,
    pod_on_node: bool,
    bytes: u64,
    class_total_on_node: Option<u64>,
) -> bool {
    valid_for_class && pod_on_node && class_total_on_node.is_some_and(|total| bytes <= total)
}

/// The CSI volume (and LogicalVolume) name external-provisioner gives a claim's volume: its
/// default prefix `pvc`, a dash, and the claim's UID.
pub fn volume_name_for_claim(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The bytes a volume of `requested` bytes takes in a volume group (whole extents); `u64::MAX`
/// when rounding overflows, so that it fits nowhere.
pub fn claim_bytes(requested: u64) -> u64 {
    round_up_to_extent(requested, DEFAULT_EXTENT_BYTES).unwrap_or(u64::MAX)
}

/// A storage quantity that is not a non-negative Kubernetes quantity of at most `u64::MAX` bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid storage quantity {0:?}: expected e.g. 10Gi, 500M, 1.5Ti or 1e9")]
pub struct InvalidQuantity(pub String);

/// Bytes of a Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1e9`, `100`), rounded up to a
/// whole byte as the API server does for storage requests. Exact: no floating point.
pub fn quantity_bytes(quantity: &str) -> Result<u64, InvalidQuantity> {
    let invalid = || InvalidQuantity(quantity.to_owned());
    let s = quantity.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(invalid());
    }
    // value = mantissa * 2^binary_exp * 10^(decimal_exp - frac_len)
    let mut mantissa: u128 = 0;
    for c in int_part.chars().chain(frac_part.chars()) {
        let digit = u128::from(c.to_digit(10).ok_or_else(invalid)?);
        // Past 10^36 the quantity is beyond any u64 byte count whatever its suffix.
        if mantissa > u128::MAX / 1000 {
            return Err(invalid());
        }
        mantissa = mantissa * 10 + digit;
    }
    let frac_len = i64::try_from(frac_part.len()).map_err(|_| invalid())?;
    let (binary_exp, decimal_exp): (u32, i64) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exp => {
            let digits = exp.strip_prefix(['e', 'E']).ok_or_else(invalid)?;
            let parsed: i64 = digits.parse().map_err(|_| invalid())?;
            if !(-64..=64).contains(&parsed) {
                return Err(invalid());
            }
            (0, parsed)
        }
    };
    let value = mantissa
        .checked_mul(1u128 << binary_exp)
        .ok_or_else(invalid)?;
    let scale = decimal_exp - frac_len;
    let pow10 = |e: i64| u32::try_from(e).ok().and_then(|e| 10u128.checked_pow(e));
    let bytes = if scale >= 0 {
        pow10(scale)
            .and_then(|f| value.checked_mul(f))
            .ok_or_else(invalid)?
    } else {
        match pow10(-scale) {
            Some(divisor) => value.div_ceil(divisor),
            // The divisor is past u128: any non-zero value is a fraction of one byte.
            None => u128::from(value > 0),
        }
    };
    u64::try_from(bytes).map_err(|_| invalid())
}

/// `bytes` as a Kubernetes quantity for people (`kubectl get`): the largest binary unit it
/// reaches (`Ki` … `Ei`) with at most one decimal, rounded down, so a displayed capacity never
/// promises more than the exact byte count beside it (`20Gi`, `931.5Gi`, `512`).
pub fn display_quantity(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let Some(index) = (0..UNITS.len())
        .rev()
        .find(|&i| bytes >> (10 * (i + 1)) > 0)
    else {
        return bytes.to_string();
    };
    let unit = 1u128 << (10 * (index + 1));
    let tenths = u128::from(bytes) * 10 / unit;
    match tenths % 10 {
        0 => format!("{}{}", tenths / 10, UNITS[index]),
        d => format!("{}.{d}{}", tenths / 10, UNITS[index]),
    }
}

/// What one class of one node can still take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassCapacity {
    pub total: u64,
    pub allocatable: u64,
    /// Linear demand pending on the class (thin demand is in `thin.pending`).
    pub pending: u64,
    pub healthy: bool,
    /// The class's thin pool; `None` when the node's agent serves no thin volumes for the class.
    pub thin: Option<ThinCapacity>,
}

/// What the thin pool of one class of one node can still promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinCapacity {
    /// Virtual bytes the pool may hold in all: pool size × overprovision ratio.
    pub total: u64,
    /// `thinPool.promisableBytes` as the agent published it (0 when the pool is `Full`).
    pub promisable: u64,
    /// Thin demand pending on the class.
    pub pending: u64,
    pub full: bool,
}

impl ThinCapacity {
    /// From the agent's report: promisable is taken as published (the agent's rule), and 0 when
    /// the pool is `Full` whatever the number says.
    pub fn from_status(pool: &crate::crd::ThinPoolStatus) -> Self {
        let full = pool.health == ThinPoolHealth::Full;
        let ratio = if pool.overprovision_ratio.is_finite() && pool.overprovision_ratio > 0.0 {
            pool.overprovision_ratio
        } else {
            0.0
        };
        // `as` saturates at u64::MAX for a product beyond it.
        let total = (pool.size_bytes as f64 * ratio) as u64;
        ThinCapacity {
            total,
            promisable: if full { 0 } else { pool.promisable_bytes },
            pending: 0,
            full,
        }
    }

    /// Promisable minus pending thin demand, never below zero.
    pub fn available(&self) -> u64 {
        self.promisable.saturating_sub(self.pending)
    }
}

impl ClassCapacity {
    /// The class's linear capacity from its report (allocatable never above free), nothing
    /// pending.
    pub fn from_status(c: &DeviceClassStatus) -> Self {
        ClassCapacity {
            total: c.total_bytes,
            allocatable: c.allocatable_bytes.min(c.free_bytes),
            pending: 0,
            healthy: c.health == ClassHealth::Healthy && c.missing_pv_count == 0,
            thin: c.thin_pool.as_ref().map(ThinCapacity::from_status),
        }
    }

    /// The pending count of `provisioning`'s pool; `None` for thin without a pool.
    pub fn pending_mut(&mut self, provisioning: Provisioning) -> Option<&mut u64> {
        match provisioning {
            Provisioning::Linear => Some(&mut self.pending),
            Provisioning::Thin => self.thin.as_mut().map(|t| &mut t.pending),
        }
    }

    /// Allocatable minus linear pending, never below zero.
    pub fn available(&self) -> u64 {
        self.allocatable.saturating_sub(self.pending)
    }

    /// What a new volume of `provisioning` may still take: [`Self::available`] for linear, the
    /// thin pool's promisable minus pending thin demand for thin (0 without a pool). Health is
    /// not considered here (see [`NodeCapacity::check`]).
    pub fn available_for(&self, provisioning: Provisioning) -> u64 {
        match provisioning {
            Provisioning::Linear => self.available(),
            Provisioning::Thin => self.thin.map_or(0, |t| t.available()),
        }
    }

    /// The pool's size for new volumes of `provisioning`: the VG's total for linear, pool size ×
    /// ratio for thin (`None` without a pool).
    pub fn total_for(&self, provisioning: Provisioning) -> Option<u64> {
        match provisioning {
            Provisioning::Linear => Some(self.total),
            Provisioning::Thin => self.thin.map(|t| t.total),
        }
    }
}

/// The total of `pool` on a node as [`selected_claim_counts`] wants it: `None` when the node has
/// no such class, or (thin) the class has no thin pool there.
pub fn pool_total(node: &NodeCapacity, pool: Pool) -> Option<u64> {
    node.classes
        .get(&pool.class)
        .and_then(|c| c.total_for(pool.provisioning))
}

/// The capacity of one node for new volumes, per class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeCapacity {
    pub classes: BTreeMap<DeviceClass, ClassCapacity>,
}

/// Why a demand does not fit on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// The node has no volume group of this class: waiting does not help.
    NoSuchClass(DeviceClass),
    /// The class lost a PV or holds a failing disk; it takes no new allocations until repaired.
    Degraded(DeviceClass),
    /// The node's agent serves no thin pool for the class: waiting does not help.
    NoThinPool(DeviceClass),
    /// The class's thin pool is `Full`: no new thin volume until it is grown or emptied.
    ThinPoolFull(DeviceClass),
    /// Not enough bytes now; deletions may free some.
    Insufficient {
        pool: Pool,
        needed: u64,
        available: u64,
    },
}

impl Shortfall {
    /// Whether no amount of waiting makes the node fit (the scheduler's "unresolvable").
    pub fn is_unresolvable(&self) -> bool {
        match self {
            Shortfall::NoSuchClass(_) | Shortfall::NoThinPool(_) => true,
            Shortfall::Degraded(_) | Shortfall::ThinPoolFull(_) => false,
            Shortfall::Insufficient { .. } => false,
        }
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::NoSuchClass(c) => write!(f, "node has no {c} device class"),
            Shortfall::Degraded(c) => {
                write!(
                    f,
                    "{c} device class is degraded (a disk is missing or failing)"
                )
            }
            Shortfall::NoThinPool(c) => write!(
                f,
                "the node's agent serves no thin pool for class {c} (a thin StorageClass needs one)"
            ),
            Shortfall::ThinPoolFull(c) => write!(
                f,
                "the {c} thin pool is Full: no new thin volumes until it is grown or data is freed"
            ),
            Shortfall::Insufficient {
                pool,
                needed,
                available,
            } if pool.is_thin() => write!(
                f,
                "not enough {} thin pool capacity: {needed} bytes requested, {available} promisable",
                pool.class
            ),
            Shortfall::Insufficient {
                pool,
                needed,
                available,
            } => write!(
                f,
                "not enough {} capacity: {needed} bytes requested, {available} available",
                pool.class
            ),
        }
    }
}

impl NodeCapacity {
    /// Capacity as the node's agent last reported it, with nothing pending yet.
    pub fn from_status(status: &NodeStorageStatus) -> Self {
        let classes = status
            .device_classes
            .iter()
            .map(|c| (c.name, ClassCapacity::from_status(c)))
            .collect();
        NodeCapacity { classes }
    }

    /// Adds demand that is promised but not yet reflected in the status.
    pub fn with_pending(mut self, pending: &ClassBytes) -> Self {
        for (pool, bytes) in pending {
            // Without a thin pool the class promises nothing thin: nothing to subtract from.
            if let Some(pending) = self
                .classes
                .get_mut(&pool.class)
                .and_then(|cap| cap.pending_mut(pool.provisioning))
            {
                *pending = pending.saturating_add(*bytes);
            }
        }
        self
    }

    /// What `pool` of this node can take (the one rule [`NodeCapacity::check`] applies pool by
    /// pool): the class must exist and be healthy (a degraded VG takes nothing, linear or thin);
    /// linear takes allocatable minus linear pending, thin the thin pool's promisable minus thin
    /// pending (no pool, or a `Full` one, takes nothing).
    pub fn room(&self, pool: Pool) -> PoolRoom {
        let Some(cap) = self.classes.get(&pool.class) else {
            return PoolRoom::NoSuchClass;
        };
        if !cap.healthy {
            return PoolRoom::Degraded;
        }
        if pool.is_thin() {
            match cap.thin {
                None => return PoolRoom::NoThinPool,
                Some(thin) if thin.full => return PoolRoom::ThinPoolFull,
                Some(_) => {}
            }
        }
        PoolRoom::Bytes(cap.available_for(pool.provisioning))
    }

    /// Whether every pool of `demand` fits ([`NodeCapacity::room`]); the first shortfall (in pool
    /// order) otherwise.
    pub fn check(&self, demand: &ClassBytes) -> Result<(), Shortfall> {
        for (&pool, &needed) in demand {
            if let Some(short) = self.room(pool).shortfall(pool, needed) {
                return Err(short);
            }
        }
        Ok(())
    }
}

/// What one pool of one node can take for a new volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolRoom {
    /// The node has no volume group of the class.
    NoSuchClass,
    /// The class is degraded: it takes nothing.
    Degraded,
    /// Thin: the node's agent serves no thin pool for the class.
    NoThinPool,
    /// Thin: the class's thin pool is Full.
    ThinPoolFull,
    /// Bytes a new volume may take (available, or promisable for thin).
    Bytes(u64),
}

impl PoolRoom {
    /// Why `needed` bytes of `pool` do not fit in this room; `None` when they do.
    pub fn shortfall(self, pool: Pool, needed: u64) -> Option<Shortfall> {
        let class = pool.class;
        match self {
            PoolRoom::NoSuchClass => Some(Shortfall::NoSuchClass(class)),
            PoolRoom::Degraded => Some(Shortfall::Degraded(class)),
            PoolRoom::NoThinPool => Some(Shortfall::NoThinPool(class)),
            PoolRoom::ThinPoolFull => Some(Shortfall::ThinPoolFull(class)),
            PoolRoom::Bytes(available) if available < needed => Some(Shortfall::Insufficient {
                pool,
                needed,
                available,
            }),
            PoolRoom::Bytes(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LogicalVolumeSpec, LogicalVolumeStatus, ThinPoolStatus};

    #[test]
    fn display_quantities_are_readable_and_never_above_the_bytes() {
        assert_eq!(display_quantity(0), "0");
        assert_eq!(display_quantity(1023), "1023");
        assert_eq!(display_quantity(1024), "1Ki");
        assert_eq!(display_quantity(20 << 30), "20Gi");
        assert_eq!(display_quantity((931 << 30) + (1 << 29)), "931.5Gi");
        assert_eq!(display_quantity((1 << 40) - 1), "1023.9Gi");
        assert_eq!(display_quantity(u64::MAX), "15.9Ei");
        for bytes in [1, 1500, 3 << 20, 1_000_204_886_016, 7_999_999_999, u64::MAX] {
            let shown = quantity_bytes(&display_quantity(bytes)).unwrap();
            assert!(shown <= bytes, "{bytes}: {shown}");
            assert!(
                u128::from(shown) * 10 >= u128::from(bytes) * 9,
                "{bytes}: {shown}"
            );
        }
    }

    fn class(name: DeviceClass, free: u64, alloc: u64, missing: u32) -> DeviceClassStatus {
        DeviceClassStatus {
            name,
            vg_name: name.vg_name().into(),
            total_bytes: 100 << 30,
            free_bytes: free,
            allocatable_bytes: alloc,
            capacity: None,
            allocatable: None,
            pv_count: 1,
            missing_pv_count: missing,
            lv_count: 0,
            health: if missing > 0 {
                ClassHealth::Degraded
            } else {
                ClassHealth::Healthy
            },
            thin_pool: None,
        }
    }

    fn lv(
        node: &str,
        class: DeviceClass,
        size: u64,
        phase: Option<LogicalVolumePhase>,
    ) -> LogicalVolume {
        let mut lv = LogicalVolume::new(
            "pvc-1",
            LogicalVolumeSpec {
                node_name: node.into(),
                device_class: class,
                size_bytes: size,
                pvc: None,
                source: None,
                role: None,
                volume_snapshot: None,
                wipe: None,
                provisioning: None,
            },
        );
        lv.status = Some(LogicalVolumeStatus {
            phase,
            ..Default::default()
        });
        lv
    }

    #[test]
    fn rounds_up_to_whole_extents() {
        assert_eq!(round_up_to_extent(0, 4), Some(0));
        assert_eq!(round_up_to_extent(1, 4), Some(4));
        assert_eq!(round_up_to_extent(8, 4), Some(8));
        assert_eq!(round_up_to_extent(u64::MAX, 4 << 20), None);
        assert_eq!(round_up_to_extent(5, 0), None);
    }

    #[test]
    fn allocatable_never_exceeds_free_and_pending_is_subtracted() {
        let status = NodeStorageStatus {
            device_classes: vec![class(DeviceClass::Nvme, 10 << 30, 12 << 30, 0)],
            ..Default::default()
        };
        let pending = ClassBytes::from([(Pool::linear(DeviceClass::Nvme), 4 << 30)]);
        let cap = NodeCapacity::from_status(&status).with_pending(&pending);
        assert_eq!(cap.classes[&DeviceClass::Nvme].available(), 6 << 30);
        assert!(
            cap.check(&ClassBytes::from([(
                Pool::linear(DeviceClass::Nvme),
                6 << 30
            )]))
            .is_ok()
        );
        assert_eq!(
            cap.check(&ClassBytes::from([(
                Pool::linear(DeviceClass::Nvme),
                (6 << 30) + 1
            )])),
            Err(Shortfall::Insufficient {
                pool: Pool::linear(DeviceClass::Nvme),
                needed: (6 << 30) + 1,
                available: 6 << 30
            })
        );
    }

    #[test]
    fn absent_class_is_unresolvable_and_degraded_takes_nothing() {
        let status = NodeStorageStatus {
            device_classes: vec![class(DeviceClass::Hdd, 50 << 30, 50 << 30, 1)],
            ..Default::default()
        };
        let cap = NodeCapacity::from_status(&status);
        let ssd = cap
            .check(&ClassBytes::from([(Pool::linear(DeviceClass::Ssd), 1)]))
            .unwrap_err();
        assert!(ssd.is_unresolvable());
        let hdd = cap
            .check(&ClassBytes::from([(Pool::linear(DeviceClass::Hdd), 1)]))
            .unwrap_err();
        assert_eq!(hdd, Shortfall::Degraded(DeviceClass::Hdd));
        assert!(!hdd.is_unresolvable());
    }

    #[test]
    fn pending_counts_only_unfinished_volumes_of_the_node() {
        let volumes = [
            lv("a", DeviceClass::Nvme, 1, None),
            lv(
                "a",
                DeviceClass::Nvme,
                4 << 20,
                Some(LogicalVolumePhase::Pending),
            ),
            lv(
                "a",
                DeviceClass::Nvme,
                1 << 30,
                Some(LogicalVolumePhase::Ready),
            ),
            lv(
                "a",
                DeviceClass::Ssd,
                1 << 30,
                Some(LogicalVolumePhase::Failed),
            ),
            lv("b", DeviceClass::Nvme, 1 << 30, None),
        ];
        let pending = pending_from_volumes(&volumes, "a", None);
        assert_eq!(
            pending,
            ClassBytes::from([(Pool::linear(DeviceClass::Nvme), 8 << 20)])
        );
    }

    #[test]
    fn a_selected_claim_counts_only_where_credible() {
        let gib = 1u64 << 30;
        assert!(selected_claim_counts(true, true, gib, Some(10 * gib)));
        assert!(
            !selected_claim_counts(false, true, gib, Some(10 * gib)),
            "invalid"
        );
        assert!(
            !selected_claim_counts(true, false, gib, Some(10 * gib)),
            "no pod there"
        );
        assert!(
            !selected_claim_counts(true, true, 11 * gib, Some(10 * gib)),
            "never fits"
        );
        assert!(
            !selected_claim_counts(true, true, gib, None),
            "no such class"
        );
    }

    fn ready(size: u64, current: u64, sequence: Option<u64>) -> LogicalVolume {
        let mut v = lv(
            "a",
            DeviceClass::Nvme,
            size,
            Some(LogicalVolumePhase::Ready),
        );
        let status = v.status.as_mut().expect("status");
        status.current_size_bytes = Some(current);
        status.capacity_sequence = sequence;
        v
    }

    #[test]
    fn ready_counts_as_pending_until_the_node_publishes_its_allocation() {
        let gib = 1u64 << 30;
        let made = ready(gib, gib, Some(7));
        // The agent wrote Ready; NodeStorage still shows the capacity of sequence 6 (or none).
        assert_eq!(
            volume_pending_bytes(&made, None),
            Some((Pool::linear(DeviceClass::Nvme), gib))
        );
        assert_eq!(
            volume_pending_bytes(&made, Some(6)),
            Some((Pool::linear(DeviceClass::Nvme), gib))
        );
        // Published at 7 or later: the allocation is in freeBytes, nothing is pending.
        assert_eq!(volume_pending_bytes(&made, Some(7)), None);
        assert_eq!(volume_pending_bytes(&made, Some(9)), None);
    }

    #[test]
    fn expansion_growth_is_pending_until_made_and_published() {
        let gib = 1u64 << 30;
        // Asked to grow from 1 GiB to 3 GiB, not made yet: the 2 GiB growth is pending.
        let asked = ready(3 * gib, gib, Some(7));
        assert_eq!(
            volume_pending_bytes(&asked, Some(7)),
            Some((Pool::linear(DeviceClass::Nvme), 2 * gib))
        );
        // Grown (sequence 8) but not yet published: the whole volume, conservatively.
        let grown = ready(3 * gib, 3 * gib, Some(8));
        assert_eq!(
            volume_pending_bytes(&grown, Some(7)),
            Some((Pool::linear(DeviceClass::Nvme), 3 * gib))
        );
        assert_eq!(volume_pending_bytes(&grown, Some(8)), None);
        // An agent that predates the sequence: Ready is trusted as before, growth still counts.
        assert_eq!(
            volume_pending_bytes(&ready(3 * gib, gib, None), None),
            Some((Pool::linear(DeviceClass::Nvme), 2 * gib))
        );
        assert_eq!(volume_pending_bytes(&ready(gib, gib, None), None), None);
    }
    #[test]
    fn quantities_parse_exactly_and_round_up_to_a_byte() {
        let ok = [
            ("100", 100),
            ("10Gi", 10 << 30),
            ("1.5Ti", 3 << 39),
            ("500M", 500_000_000),
            ("1e9", 1_000_000_000),
            ("1E3", 1000),
            ("2E", 2_000_000_000_000_000_000),
            ("+4Ki", 4096),
            (".5Ki", 512),
            ("1500m", 2),
            ("1n", 1),
            ("0", 0),
            ("0.0001", 1),
            ("1e-60", 1),
            ("15Ei", 15 << 60),
            ("18446744073709551615", u64::MAX),
        ];
        for (q, bytes) in ok {
            assert_eq!(quantity_bytes(q), Ok(bytes), "{q}");
        }
        for bad in [
            "", "-1Gi", "10GB", "1.2.3", "Gi", ".", "1e", "1e99", "16Ei", "1 Gi", "1x",
        ] {
            assert!(quantity_bytes(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(quantity_bytes(&"9".repeat(40)).is_err());
    }

    #[test]
    fn pending_by_node_matches_the_per_node_sum() {
        let mut deleting = lv("a", DeviceClass::Ssd, 1 << 30, None);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let volumes = [
            lv("a", DeviceClass::Nvme, 1, None),
            lv(
                "a",
                DeviceClass::Hdd,
                10 << 20,
                Some(LogicalVolumePhase::Pending),
            ),
            lv(
                "b",
                DeviceClass::Nvme,
                1 << 30,
                Some(LogicalVolumePhase::Wiping),
            ),
            lv("c", DeviceClass::Ssd, 1 << 30, None),
            deleting,
        ];
        let all = pending_by_node(&volumes, |_| None);
        for node in ["a", "b", "c"] {
            let one = pending_from_volumes(&volumes, node, None);
            assert_eq!(all.get(node).cloned().unwrap_or_default(), one, "{node}");
        }
        assert_eq!(
            all["a"],
            ClassBytes::from([
                (Pool::linear(DeviceClass::Nvme), 4 << 20),
                (Pool::linear(DeviceClass::Hdd), 12 << 20)
            ])
        );
        assert!(!all.contains_key("b"));
        assert_eq!(volume_name_for_claim("0b1c"), "pvc-0b1c");
        assert_eq!(claim_bytes(u64::MAX), u64::MAX);
    }

    const GIB: u64 = 1 << 30;

    fn thin_pool(size: u64, ratio: f64, promisable: u64, health: ThinPoolHealth) -> ThinPoolStatus {
        ThinPoolStatus {
            lv_name: "strata-thinpool".into(),
            size_bytes: size,
            used_bytes: 0,
            metadata_size_bytes: 64 << 20,
            metadata_used_bytes: 0,
            overprovision_ratio: ratio,
            virtual_bytes: 0,
            promisable_bytes: promisable,
            health,
        }
    }

    /// One NVMe class with 10 GiB allocatable and a 20 GiB pool at ratio 2 (promisable 30 GiB).
    fn thin_status(promisable: u64, health: ThinPoolHealth) -> NodeStorageStatus {
        let mut nvme = class(DeviceClass::Nvme, 10 * GIB, 10 * GIB, 0);
        nvme.thin_pool = Some(thin_pool(20 * GIB, 2.0, promisable, health));
        NodeStorageStatus {
            device_classes: vec![nvme],
            ..Default::default()
        }
    }

    fn thin_lv(size: u64, phase: Option<LogicalVolumePhase>) -> LogicalVolume {
        let mut v = lv("a", DeviceClass::Nvme, size, phase);
        v.spec.provisioning = Some(Provisioning::Thin);
        v
    }

    #[test]
    fn thin_demand_fits_against_promisable_minus_thin_pending_only() {
        let thin = Pool::thin(DeviceClass::Nvme);
        let linear = Pool::linear(DeviceClass::Nvme);
        // 9 GiB linear pending does not touch the pool; 5 GiB thin pending does not touch the VG.
        let pending = ClassBytes::from([(linear, 9 * GIB), (thin, 5 * GIB)]);
        let cap = NodeCapacity::from_status(&thin_status(30 * GIB, ThinPoolHealth::Healthy))
            .with_pending(&pending);
        let nvme = cap.classes[&DeviceClass::Nvme];
        assert_eq!(nvme.available(), GIB);
        assert_eq!(nvme.available_for(Provisioning::Thin), 25 * GIB);
        // Exactly fits, and one byte over.
        assert!(cap.check(&ClassBytes::from([(thin, 25 * GIB)])).is_ok());
        assert_eq!(
            cap.check(&ClassBytes::from([(thin, 25 * GIB + 1)])),
            Err(Shortfall::Insufficient {
                pool: thin,
                needed: 25 * GIB + 1,
                available: 25 * GIB
            })
        );
        assert!(cap.check(&ClassBytes::from([(linear, GIB)])).is_ok());
        assert!(cap.check(&ClassBytes::from([(linear, GIB + 1)])).is_err());
        // A demand of both: each against its own pool.
        assert!(
            cap.check(&ClassBytes::from([(linear, GIB), (thin, 25 * GIB)]))
                .is_ok()
        );
        let message = cap
            .check(&ClassBytes::from([(thin, 26 * GIB)]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("thin pool"), "{message}");
    }

    #[test]
    fn thin_without_a_pool_a_full_pool_or_a_degraded_class_takes_nothing() {
        let thin = ClassBytes::from([(Pool::thin(DeviceClass::Nvme), 1)]);
        // No pool: unresolvable, capacity 0, and its thin pending goes nowhere.
        let no_pool = NodeStorageStatus {
            device_classes: vec![class(DeviceClass::Nvme, 10 * GIB, 10 * GIB, 0)],
            ..Default::default()
        };
        let cap = NodeCapacity::from_status(&no_pool).with_pending(&thin);
        let shortfall = cap.check(&thin).unwrap_err();
        assert_eq!(shortfall, Shortfall::NoThinPool(DeviceClass::Nvme));
        assert!(shortfall.is_unresolvable());
        assert!(
            shortfall
                .to_string()
                .contains("serves no thin pool for class nvme")
        );
        assert_eq!(
            cap.classes[&DeviceClass::Nvme].available_for(Provisioning::Thin),
            0
        );
        assert_eq!(cap.classes[&DeviceClass::Nvme].pending, 0);
        assert_eq!(pool_total(&cap, Pool::thin(DeviceClass::Nvme)), None);
        // Full: refused even if the published number were not 0; waiting (deletion, growth) helps.
        let cap = NodeCapacity::from_status(&thin_status(5 * GIB, ThinPoolHealth::Full));
        let shortfall = cap.check(&thin).unwrap_err();
        assert_eq!(shortfall, Shortfall::ThinPoolFull(DeviceClass::Nvme));
        assert!(!shortfall.is_unresolvable());
        assert_eq!(
            cap.classes[&DeviceClass::Nvme].available_for(Provisioning::Thin),
            0
        );
        // Filling still admits within promisable.
        let cap = NodeCapacity::from_status(&thin_status(5 * GIB, ThinPoolHealth::Filling));
        assert!(cap.check(&thin).is_ok());
        // Degraded VG: no thin volume either.
        let mut degraded = thin_status(30 * GIB, ThinPoolHealth::Healthy);
        degraded.device_classes[0].missing_pv_count = 1;
        degraded.device_classes[0].health = ClassHealth::Degraded;
        assert_eq!(
            NodeCapacity::from_status(&degraded).check(&thin),
            Err(Shortfall::Degraded(DeviceClass::Nvme))
        );
    }

    #[test]
    fn thin_totals_are_pool_size_times_ratio() {
        let cap = NodeCapacity::from_status(&thin_status(30 * GIB, ThinPoolHealth::Healthy));
        assert_eq!(
            pool_total(&cap, Pool::thin(DeviceClass::Nvme)),
            Some(40 * GIB)
        );
        assert_eq!(
            pool_total(&cap, Pool::linear(DeviceClass::Nvme)),
            Some(100 << 30)
        );
        assert_eq!(pool_total(&cap, Pool::thin(DeviceClass::Hdd)), None);
        let odd =
            ThinCapacity::from_status(&thin_pool(GIB, f64::NAN, GIB, ThinPoolHealth::Healthy));
        assert_eq!(odd.total, 0);
    }

    #[test]
    fn a_thin_volume_is_pending_against_the_thin_pool() {
        assert_eq!(
            volume_pending_bytes(&thin_lv(1, None), None),
            Some((Pool::thin(DeviceClass::Nvme), 4 << 20))
        );
        let volumes = [
            thin_lv(GIB, Some(LogicalVolumePhase::Pending)),
            lv("a", DeviceClass::Nvme, GIB, None),
            thin_lv(GIB, Some(LogicalVolumePhase::Failed)),
        ];
        assert_eq!(
            pending_from_volumes(&volumes, "a", None),
            ClassBytes::from([
                (Pool::linear(DeviceClass::Nvme), GIB),
                (Pool::thin(DeviceClass::Nvme), GIB)
            ])
        );
        // Reflected in a published NodeStorage (sequence): only the growth still asked for.
        let mut grown = thin_lv(3 * GIB, Some(LogicalVolumePhase::Ready));
        let status = grown.status.as_mut().expect("status");
        status.current_size_bytes = Some(GIB);
        status.capacity_sequence = Some(4);
        assert_eq!(
            volume_pending_bytes(&grown, Some(4)),
            Some((Pool::thin(DeviceClass::Nvme), 2 * GIB))
        );
    }

    #[test]
    fn a_burst_of_thin_creates_never_promises_more_than_promisable() {
        // 30 GiB promisable; 40 creates of 1 GiB + 1 byte (2 extents over 1 GiB) arrive before the
        // agent makes any of them: each admitted one is pending for the next.
        let status = thin_status(30 * GIB, ThinPoolHealth::Healthy);
        let size = GIB + 1;
        let mut admitted: Vec<LogicalVolume> = Vec::new();
        for _ in 0..40 {
            let cap = NodeCapacity::from_status(&status)
                .with_pending(&pending_from_volumes(&admitted, "a", None));
            let demand = ClassBytes::from([(Pool::thin(DeviceClass::Nvme), claim_bytes(size))]);
            if cap.check(&demand).is_ok() {
                admitted.push(thin_lv(size, None));
            }
        }
        let promised: u64 = admitted
            .iter()
            .map(|v| claim_bytes(v.spec.size_bytes))
            .sum();
        assert_eq!(admitted.len() as u64, (30 * GIB) / claim_bytes(size));
        assert!(promised <= 30 * GIB, "{promised}");
        assert!(30 * GIB - promised < claim_bytes(size));
        // None of them took a linear byte.
        let cap = NodeCapacity::from_status(&status)
            .with_pending(&pending_from_volumes(&admitted, "a", None));
        assert_eq!(cap.classes[&DeviceClass::Nvme].available(), 10 * GIB);
    }
}
