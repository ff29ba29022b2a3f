//! The planner, case by case: first claim, growth, idempotence, renumbered kernel names, moved
//! and untagged PVs, missing and replaced disks, degraded and foreign VGs, and policy.

use std::path::PathBuf;

use csi_api::crd::{ClaimMode, DiskState, NodeStorageSpec};
use csi_api::names::DeviceClass;

use super::*;
use crate::claim::tags::identity_tags;
use crate::discovery::{Disk, Found, Inventory, Refusal, Verdict};
use crate::lvm::OWNER_TAG;
use crate::lvm::blkid::Signature;

const NVME_A: &str = "pci-0000:00:04.0-nvme-1";
const NVME_B: &str = "pci-0000:00:05.0-nvme-1";
const SSD_A: &str = "pci-0000:00:1f.2-ata-1";
const HDD_A: &str = "pci-0000:00:1f.2-ata-2";
const GPT: &str = "pci-0000:00:1f.2-ata-3";

fn disk(slot: &str, kname: &str, media: DeviceClass, serial: &str) -> Disk {
    Disk {
        slot: slot.into(),
        physical_slot: None,
        transport: None,
        kernel_name: kname.into(),
        device: PathBuf::from("/dev").join(kname),
        media,
        size_bytes: 8 << 30,
        logical_block_size: 512,
        physical_block_size: 512,
        model: "m".into(),
        serial: serial.into(),
        wwn: String::new(),
    }
}

fn eligible(slot: &str, kname: &str, media: DeviceClass, serial: &str) -> Found {
    Found {
        disk: disk(slot, kname, media, serial),
        verdict: Verdict::Eligible,
        signature: None,
    }
}

fn refused(slot: &str, kname: &str, serial: &str, why: Refusal) -> Found {
    Found {
        disk: disk(slot, kname, DeviceClass::Hdd, serial),
        verdict: Verdict::Refused(vec![why]),
        signature: None,
    }
}

fn claimed(slot: &str, kname: &str, media: DeviceClass, serial: &str, uuid: &str) -> Found {
    let mut keys = std::collections::BTreeMap::new();
    keys.insert("TYPE".to_owned(), "LVM2_member".to_owned());
    keys.insert("UUID".to_owned(), uuid.to_owned());
    Found {
        disk: disk(slot, kname, media, serial),
        verdict: Verdict::StrataPv {
            pv_uuid: uuid.into(),
            vg: Some(media.vg_name().into()),
        },
        signature: Some(Signature(keys)),
    }
}

/// A Strata PV as lvm2 lists it, tagged for `slot`/`serial`.
fn pv(uuid: &str, class: DeviceClass, slot: &str, serial: &str, device: Option<&str>) -> Pv {
    let d = disk(slot, "x", class, serial);
    let mut tags = identity_tags(slot, &d);
    tags.push(OWNER_TAG.into());
    Pv {
        device: device.map(PathBuf::from),
        uuid: uuid.into(),
        vg: Some(class.vg_name().into()),
        size_bytes: 8 << 30,
        free_bytes: 8 << 30,
        tags,
        missing: device.is_none(),
        owned: true,
    }
}

fn vg(class: DeviceClass, pvs: u64, missing: u64, owned: bool) -> Vg {
    Vg {
        name: class.vg_name().into(),
        uuid: format!("vg-{class}"),
        size_bytes: pvs * (8 << 30),
        free_bytes: pvs * (8 << 30),
        extent_size: 4 << 20,
        extent_count: 0,
        free_extents: 0,
        pv_count: pvs,
        lv_count: 0,
        missing_pv_count: missing,
        tags: if owned {
            vec![OWNER_TAG.into()]
        } else {
            vec![]
        },
        owned,
    }
}

fn inv(disks: Vec<Found>) -> Inventory {
    Inventory {
        disks,
        notes: Vec::new(),
    }
}

fn auto() -> Policy {
    Policy::new(&NodeStorageSpec::default()).unwrap()
}

fn status<'a>(p: &'a Plan, slot: &str) -> &'a DiskStatus {
    p.disks
        .iter()
        .find(|d| d.slot == slot)
        .unwrap_or_else(|| panic!("no status for {slot}: {:#?}", p.disks))
}

fn kinds(p: &Plan) -> Vec<(&str, &str, ActionKind)> {
    p.actions
        .iter()
        .map(|a| (a.slot.as_str(), a.vg.as_str(), a.kind.clone()))
        .collect()
}

fn lab_first_boot() -> Inventory {
    inv(vec![
        eligible(NVME_A, "nvme0n1", DeviceClass::Nvme, "NVME-A"),
        eligible(NVME_B, "nvme1n1", DeviceClass::Nvme, "NVME-B"),
        eligible(SSD_A, "sda", DeviceClass::Ssd, "SSD-A"),
        eligible(HDD_A, "sde", DeviceClass::Hdd, "HDD-A"),
        refused(
            GPT,
            "sdb",
            "HDD-GPT",
            Refusal::Signature("gpt partition table".into()),
        ),
    ])
}

#[test]
fn first_claim_creates_one_vg_per_class_then_extends() {
    let p = plan(&lab_first_boot(), &auto(), &LvmState::default());
    assert_eq!(
        kinds(&p),
        vec![
            (NVME_A, "strata-nvme", ActionKind::CreateVg),
            (NVME_B, "strata-nvme", ActionKind::ExtendVg),
            (SSD_A, "strata-ssd", ActionKind::CreateVg),
            (HDD_A, "strata-hdd", ActionKind::CreateVg),
        ]
    );
    let a = &p.actions[0];
    assert_eq!(a.device, PathBuf::from("/dev/nvme0n1"));
    assert_eq!(a.class, DeviceClass::Nvme);
    assert_eq!(
        a.tags,
        vec![
            "strata.io/slot=pci-0000_3A00_3A04.0-nvme-1".to_owned(),
            "strata.io/serial=NVME-A".to_owned()
        ]
    );
    assert_eq!(status(&p, NVME_A).state, DiskState::Available);
    assert_eq!(
        status(&p, NVME_A).reason,
        "to be claimed: creates strata-nvme"
    );
    assert_eq!(status(&p, NVME_B).reason, "to be claimed into strata-nvme");
    let gpt = status(&p, GPT);
    assert_eq!(gpt.state, DiskState::Rejected);
    assert_eq!(gpt.reason, "has gpt partition table");
    assert_eq!(p.disks.len(), 5);
}

#[test]
fn existing_vg_grows_with_a_new_disk() {
    let lvm = LvmState {
        pvs: vec![pv(
            "U-A",
            DeviceClass::Nvme,
            NVME_A,
            "NVME-A",
            Some("/dev/nvme0n1"),
        )],
        vgs: vec![vg(DeviceClass::Nvme, 1, 0, true)],
    };
    let i = inv(vec![
        claimed(NVME_A, "nvme0n1", DeviceClass::Nvme, "NVME-A", "U-A"),
        eligible(NVME_B, "nvme1n1", DeviceClass::Nvme, "NVME-B"),
    ]);
    let p = plan(&i, &auto(), &lvm);
    assert_eq!(
        kinds(&p),
        vec![(NVME_B, "strata-nvme", ActionKind::ExtendVg)]
    );
    let a = status(&p, NVME_A);
    assert_eq!(a.state, DiskState::Claimed);
    assert_eq!(a.volume_group.as_deref(), Some("strata-nvme"));
    assert_eq!(a.reason, "");
}

/// After the claim, and after a reboot that renumbered every kernel name, nothing is planned.
#[test]
fn claimed_disks_are_never_claimed_twice_even_renamed() {
    let lvm = LvmState {
        pvs: vec![
            pv(
                "U-A",
                DeviceClass::Nvme,
                NVME_A,
                "NVME-A",
                Some("/dev/nvme1n1"),
            ),
            pv(
                "U-B",
                DeviceClass::Nvme,
                NVME_B,
                "NVME-B",
                Some("/dev/nvme2n1"),
            ),
            pv("U-S", DeviceClass::Ssd, SSD_A, "SSD-A", Some("/dev/sdb")),
        ],
        vgs: vec![
            vg(DeviceClass::Nvme, 2, 0, true),
            vg(DeviceClass::Ssd, 1, 0, true),
        ],
    };
    let i = inv(vec![
        eligible(
            "pci-0000:00:03.0-nvme-1",
            "nvme0n1",
            DeviceClass::Nvme,
            "NVME-NEW",
        ),
        claimed(NVME_A, "nvme1n1", DeviceClass::Nvme, "NVME-A", "U-A"),
        claimed(NVME_B, "nvme2n1", DeviceClass::Nvme, "NVME-B", "U-B"),
        claimed(SSD_A, "sdb", DeviceClass::Ssd, "SSD-A", "U-S"),
    ]);
    let p = plan(&i, &auto(), &lvm);
    assert_eq!(
        kinds(&p),
        vec![(
            "pci-0000:00:03.0-nvme-1",
            "strata-nvme",
            ActionKind::ExtendVg
        )]
    );
    assert_eq!(p.actions[0].device, PathBuf::from("/dev/nvme0n1"));
    for slot in [NVME_A, NVME_B, SSD_A] {
        assert_eq!(status(&p, slot).state, DiskState::Claimed, "{slot}");
    }
    assert_eq!(status(&p, NVME_A).kernel_name, "nvme1n1");
}

#[test]
fn a_pv_found_in_another_slot_is_retagged_not_reclaimed() {
    let lvm = LvmState {
        pvs: vec![pv(
            "U-A",
            DeviceClass::Nvme,
            NVME_A,
            "NVME-A",
            Some("/dev/nvme1n1"),
        )],
        vgs: vec![vg(DeviceClass::Nvme, 1, 0, true)],
    };
    // the drive moved from 00:04 to 00:05
    let i = inv(vec![claimed(
        NVME_B,
        "nvme1n1",
        DeviceClass::Nvme,
        "NVME-A",
        "U-A",
    )]);
    let p = plan(&i, &auto(), &lvm);
    assert_eq!(
        kinds(&p),
        vec![(
            NVME_B,
            "strata-nvme",
            ActionKind::Retag {
                remove: vec!["strata.io/slot=pci-0000_3A00_3A04.0-nvme-1".into()]
            }
        )]
    );
    assert_eq!(
        p.actions[0].tags,
        vec!["strata.io/slot=pci-0000_3A00_3A05.0-nvme-1".to_owned()]
    );
    let s = status(&p, NVME_B);
    assert_eq!(s.state, DiskState::Claimed);
    assert_eq!(
        s.reason,
        format!("moved from slot {NVME_A}; updating its tags")
    );
}

#[test]
fn a_pv_without_identity_tags_gets_them() {
    let mut bare = pv(
        "U-A",
        DeviceClass::Nvme,
        NVME_A,
        "NVME-A",
        Some("/dev/nvme0n1"),
    );
    bare.tags = vec![OWNER_TAG.into()];
    let lvm = LvmState {
        pvs: vec![bare],
        vgs: vec![vg(DeviceClass::Nvme, 1, 0, true)],
    };
    let i = inv(vec![claimed(
        NVME_A,
        "nvme0n1",
        DeviceClass::Nvme,
        "NVME-A",
        "U-A",
    )]);
    let p = plan(&i, &auto(), &lvm);
    assert_eq!(p.actions.len(), 1);
    assert_eq!(p.actions[0].kind, ActionKind::Retag { remove: vec![] });
    assert_eq!(p.actions[0].tags.len(), 2);
    assert_eq!(
        status(&p, NVME_A).reason,
        "identity tags missing; writing them"
    );
}

#[test]
fn a_missing_pv_is_reported_missing_and_nothing_is_removed() {
    let lvm = LvmState {
        pvs: vec![
            pv(
                "U-A",
                DeviceClass::Nvme,
                NVME_A,
                "NVME-A",
                Some("/dev/nvme0n1"),
            ),
            pv("U-B", DeviceClass::Nvme, NVME_B, "NVME-B", None),
        ],
        vgs: vec![vg(DeviceClass::Nvme, 2, 1, true)],
    };
    let i = inv(vec![claimed(
        NVME_A,
        "nvme0n1",
        DeviceClass::Nvme,
        "NVME-A",
        "U-A",
    )]);
    let p = plan(&i, &auto(), &lvm);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let b = status(&p, NVME_B);
    assert_eq!(b.state, DiskState::Missing);
    assert_eq!(b.serial, "NVME-B");
    assert_eq!(b.media, DeviceClass::Nvme);
    assert_eq!(b.kernel_name, "");
    assert_eq!(b.volume_group.as_deref(), Some("strata-nvme"));
    assert_eq!(b.reason, "PV U-B of strata-nvme is missing");
    assert_eq!(p.disks.len(), 2);
}

#[test]
fn a_new_disk_in_the_slot_of_a_missing_pv_is_reported_replaced() {
    let lvm = LvmState {
        pvs: vec![pv("U-B", DeviceClass::Nvme, NVME_B, "NVME-B", None)],
        vgs: vec![vg(DeviceClass::Nvme, 1, 1, true)],
    };
    let i = inv(vec![eligible(
        NVME_B,
        "nvme1n1",
        DeviceClass::Nvme,
        "NVME-C",
    )]);
    let p = plan(&i, &auto(), &lvm);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let entries: Vec<_> = p.disks.iter().filter(|d| d.slot == NVME_B).collect();
    assert_eq!(
        entries.len(),
        2,
        "the new disk and the missing PV: {entries:#?}"
    );
    let new = entries.iter().find(|d| d.serial == "NVME-C").unwrap();
    assert_eq!(new.state, DiskState::Rejected);
    assert!(
        new.reason.starts_with(&format!(
            "disk in slot {NVME_B} was replaced: serial NVME-B → NVME-C; PV U-B of strata-nvme is missing"
        )),
        "{}",
        new.reason
    );
    assert!(new.reason.contains("vgreduce --removemissing strata-nvme"));
    let old = entries.iter().find(|d| d.serial == "NVME-B").unwrap();
    assert_eq!(old.state, DiskState::Missing);
    assert_eq!(
        old.reason,
        "PV U-B of strata-nvme is missing; its slot now holds serial NVME-C"
    );

    // the same serial, blank: the PV was wiped; still not silently reused
    let i = inv(vec![eligible(
        NVME_B,
        "nvme1n1",
        DeviceClass::Nvme,
        "NVME-B",
    )]);
    let p = plan(&i, &auto(), &lvm);
    assert!(p.actions.is_empty());
    let same = p
        .disks
        .iter()
        .find(|d| d.state == DiskState::Rejected)
        .unwrap();
    assert!(
        same.reason.contains("now holds a disk without it"),
        "{}",
        same.reason
    );

    // a refused disk there gets the replacement noted before its own reasons
    let i = inv(vec![refused(
        NVME_B,
        "nvme1n1",
        "NVME-C",
        Refusal::ReadOnly,
    )]);
    let p = plan(&i, &auto(), &lvm);
    let r = p
        .disks
        .iter()
        .find(|d| d.state == DiskState::Rejected)
        .unwrap();
    assert!(r.reason.starts_with("disk in slot"), "{}", r.reason);
    assert!(r.reason.ends_with("; read-only"), "{}", r.reason);
}

#[test]
fn degraded_and_foreign_vgs_are_not_extended() {
    let lvm = LvmState {
        pvs: vec![pv("U-B", DeviceClass::Nvme, NVME_B, "NVME-B", None)],
        vgs: vec![
            vg(DeviceClass::Nvme, 1, 1, true),
            vg(DeviceClass::Ssd, 1, 0, false),
        ],
    };
    let i = inv(vec![
        eligible(NVME_A, "nvme0n1", DeviceClass::Nvme, "NVME-A"),
        eligible(SSD_A, "sda", DeviceClass::Ssd, "SSD-A"),
        eligible(HDD_A, "sdb", DeviceClass::Hdd, "HDD-A"),
    ]);
    let p = plan(&i, &auto(), &lvm);
    assert_eq!(kinds(&p), vec![(HDD_A, "strata-hdd", ActionKind::CreateVg)]);
    let a = status(&p, NVME_A);
    assert_eq!(a.state, DiskState::Available);
    assert!(
        a.reason.contains("strata-nvme is degraded (1 missing PV)"),
        "{}",
        a.reason
    );
    let s = status(&p, SSD_A);
    assert_eq!(s.state, DiskState::Available);
    assert!(
        s.reason.contains("exists without Strata's tag"),
        "{}",
        s.reason
    );
}

#[test]
fn policy_excludes_includes_and_overrides_media() {
    let spec = NodeStorageSpec {
        exclude: vec![HDD_A.into()],
        media_overrides: [(SSD_A.to_owned(), DeviceClass::Hdd)].into_iter().collect(),
        ..Default::default()
    };
    let p = plan(
        &lab_first_boot(),
        &Policy::new(&spec).unwrap(),
        &LvmState::default(),
    );
    assert_eq!(
        kinds(&p),
        vec![
            (NVME_A, "strata-nvme", ActionKind::CreateVg),
            (NVME_B, "strata-nvme", ActionKind::ExtendVg),
            (SSD_A, "strata-hdd", ActionKind::CreateVg),
        ]
    );
    assert_eq!(p.actions[2].class, DeviceClass::Hdd);
    assert_eq!(status(&p, SSD_A).media, DeviceClass::Hdd);
    let h = status(&p, HDD_A);
    assert_eq!(h.state, DiskState::Available);
    assert!(h.reason.starts_with("excluded by policy"), "{}", h.reason);

    let manual = NodeStorageSpec {
        claim_mode: ClaimMode::Manual,
        include: vec!["*-nvme-*".into()],
        ..Default::default()
    };
    let p = plan(
        &lab_first_boot(),
        &Policy::new(&manual).unwrap(),
        &LvmState::default(),
    );
    assert_eq!(p.actions.len(), 2);
    assert!(p.actions.iter().all(|a| a.class == DeviceClass::Nvme));
    assert!(status(&p, SSD_A).reason.contains("manual"));
}

#[test]
fn strata_pvs_outside_the_inventory_and_foreign_pvs() {
    let mut on_partition = pv("U-P", DeviceClass::Hdd, HDD_A, "HDD-A", Some("/dev/sdc1"));
    on_partition.missing = false;
    let foreign = Pv {
        device: Some(PathBuf::from("/dev/vda")),
        uuid: "U-F".into(),
        vg: Some("othervg".into()),
        size_bytes: 2 << 30,
        free_bytes: 2 << 30,
        tags: vec![],
        missing: false,
        owned: false,
    };
    let lvm = LvmState {
        pvs: vec![on_partition, foreign],
        vgs: vec![vg(DeviceClass::Hdd, 1, 0, true)],
    };
    let p = plan(&inv(vec![]), &auto(), &lvm);
    assert!(p.actions.is_empty());
    assert_eq!(p.disks.len(), 1, "{:#?}", p.disks);
    assert_eq!(p.disks[0].state, DiskState::Claimed);
    assert!(
        p.disks[0].reason.contains("/dev/sdc1"),
        "{}",
        p.disks[0].reason
    );
}

#[test]
fn statuses_are_sorted_by_slot_with_unknown_slots_last() {
    let mut i = lab_first_boot();
    i.disks.insert(
        0,
        refused("", "sdz", "X", Refusal::NoSlot("unknown shape".into())),
    );
    let p = plan(&i, &auto(), &LvmState::default());
    let slots: Vec<_> = p.disks.iter().map(|d| d.slot.as_str()).collect();
    assert_eq!(slots, vec![NVME_A, NVME_B, SSD_A, HDD_A, GPT, ""]);
}
