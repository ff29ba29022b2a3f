//! Node VM tests of discovery and claim, on emulated NVMe/SATA/virtio disks. Each test
//! is a host-side orchestrator that boots the node VM one or more times (`tests/nodevm/nodevm`)
//! and, inside it, runs this same test binary with `NODEVM_TEST_PHASE=<n>`; the in-VM phase runs
//! the real claim pass (`csi_agent::claim::reconcile`: sysfs, blkid, lvm2) and checks the result.
//! Two-boot tests keep their disks in backing files under `CARGO_TARGET_TMPDIR` (shared with the
//! VM over 9p), so that the second boot sees what the first one wrote. They take minutes under TCG
//! and are `#[ignore]`d in the host pass:
//!
//!     cargo test --workspace --test reboots -- --ignored --test-threads 1

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use csi_agent::claim::{self, Policy, Recorded, Survey};
use csi_agent::discovery::{BlkidProbe, Roots, Usage};
use csi_agent::lvm::{Lvm, LvmOptions, RunnerConfig};
use csi_api::crd::{ClassHealth, DiskState, DiskStatus, NodeStorageSpec};
use csi_api::names::DeviceClass;

const PHASE_VAR: &str = "NODEVM_TEST_PHASE";
const STATE_VAR: &str = "NODEVM_TEST_STATE";

const NVME_NEW: &str = "pci-0000:00:03.0-nvme-1";
const NVME_A: &str = "pci-0000:00:04.0-nvme-1";
const NVME_B: &str = "pci-0000:00:05.0-nvme-1";
const SSD_A: &str = "pci-0000:00:1f.2-ata-1";
const HDD_A: &str = "pci-0000:00:1f.2-ata-2";

/// The phase this process runs inside the VM, if any.
fn phase() -> Option<u32> {
    std::env::var(PHASE_VAR).ok().and_then(|p| p.parse().ok())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A folder for one test's backing files and state, under the target directory (shared with the
/// VM, see `boot`).
fn workdir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("reboots")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Boots the VM with `disks` and runs `test` of this binary in it as phase `phase`.
fn boot(test: &str, phase: u32, disks: &[String], state: &Path) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(repo().join("tests/nodevm/nodevm"));
    cmd.arg("run");
    for d in disks {
        cmd.args(["--disk", d]);
    }
    // The state file lives under CARGO_TARGET_TMPDIR. nodevm shares the repository by default;
    // a target directory elsewhere (CARGO_TARGET_DIR) is shared explicitly, read-write, at the
    // same path (the test binary's own folder nodevm shares read-only by itself).
    let folder = state.parent().unwrap();
    let repo = repo().canonicalize().unwrap();
    if !folder.canonicalize().unwrap().starts_with(&repo) {
        cmd.arg("--share").arg(&repo).arg("--share").arg(folder);
    }
    cmd.arg("--")
        .arg(exe)
        .args(["--ignored", "--exact", test, "--nocapture"])
        .env(PHASE_VAR, phase.to_string())
        .env(STATE_VAR, state);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot start nodevm: {e}"));
    assert!(
        status.success(),
        "{test} phase {phase} failed in the VM: {status}"
    );
}

fn disk(kind: &str, at: &str, serial: &str, size: &str, dir: &Path) -> String {
    format!(
        "{kind},{at},serial={serial},size={size},file={}",
        dir.join(format!("{serial}.img")).display()
    )
}

/// The claim pass of the agent, for real: default policy, `/sys`, `/dev`, `/proc`, lvm2.
fn reconcile() -> Survey {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let roots = Roots::default();
        let usage = Usage::read(&roots.proc).unwrap();
        let lvm = Lvm::system(RunnerConfig::default(), LvmOptions::default());
        let policy = Policy::new(&NodeStorageSpec::default()).unwrap();
        let (survey, outcomes) =
            claim::reconcile(&roots, &usage, &BlkidProbe::default(), &lvm, &policy)
                .await
                .unwrap();
        for o in &outcomes {
            eprintln!("outcome: {} {:?} {:?}", o.slot, o.kind, o.result);
            assert!(o.result.is_ok(), "{o:?}");
        }
        print!(
            "{}",
            csi_agent::discovery::render_table(&survey.plan.disks, &survey.notes)
        );
        survey
    })
}

fn by_serial<'a>(s: &'a Survey, serial: &str) -> &'a DiskStatus {
    s.plan
        .disks
        .iter()
        .find(|d| d.serial == serial)
        .unwrap_or_else(|| panic!("no disk {serial}: {:#?}", s.plan.disks))
}

/// slot → PV UUID of every Strata PV, from the PVs' own tags.
fn slot_to_pv(s: &Survey) -> BTreeMap<String, String> {
    let state = s.lvm.as_ref().unwrap();
    state
        .pvs
        .iter()
        .filter(|p| p.owned)
        .filter_map(|p| Some((Recorded::from_tags(&p.tags).slot?, p.uuid.clone())))
        .collect()
}

fn save(map: &BTreeMap<String, String>) {
    let path = std::env::var(STATE_VAR).unwrap();
    std::fs::write(path, serde_json::to_string(map).unwrap()).unwrap();
}

fn load() -> BTreeMap<String, String> {
    let path = std::env::var(STATE_VAR).unwrap();
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn kernel_name_of_serial(serial: &str) -> String {
    for e in std::fs::read_dir("/sys/block").unwrap() {
        let e = e.unwrap();
        let s = std::fs::read_to_string(e.path().join("device/serial")).unwrap_or_default();
        if s.trim() == serial {
            return e.file_name().into_string().unwrap();
        }
    }
    panic!("no disk with serial {serial}")
}

fn assert_state(s: &Survey, serial: &str, state: DiskState, vg: Option<&str>) {
    let d = by_serial(s, serial);
    assert_eq!(d.state, state, "{serial}: {d:#?}");
    assert_eq!(d.volume_group.as_deref(), vg, "{serial}: {d:#?}");
}

/// The four raw disks of two-boot tests (the lab's raw ones, in files).
fn raw_disks(dir: &Path) -> Vec<String> {
    vec![
        disk("nvme", "addr=0x4", "NVME-A", "8G", dir),
        disk("nvme", "addr=0x5", "NVME-B", "8G", dir),
        disk("ssd", "port=0", "SSD-A", "4G", dir),
        disk("hdd", "port=1", "HDD-A", "16G", dir),
    ]
}

/// First boot of the two-boot tests: the four raw disks are claimed, one VG per class.
fn first_boot_claims_all() {
    let s = reconcile();
    assert_state(&s, "NVME-A", DiskState::Claimed, Some("strata-nvme"));
    assert_state(&s, "NVME-B", DiskState::Claimed, Some("strata-nvme"));
    assert_state(&s, "SSD-A", DiskState::Claimed, Some("strata-ssd"));
    assert_state(&s, "HDD-A", DiskState::Claimed, Some("strata-hdd"));
    let map = slot_to_pv(&s);
    assert_eq!(
        map.keys().map(String::as_str).collect::<Vec<_>>(),
        vec![NVME_A, NVME_B, SSD_A, HDD_A]
    );
    save(&map);
}

#[test]
#[ignore = "boots the node VM; run with --ignored (see the file head)"]
fn lab_claims_exactly_the_raw_disks() {
    const TEST: &str = "lab_claims_exactly_the_raw_disks";
    if phase().is_none() {
        let dir = workdir(TEST);
        let exe = std::env::current_exe().unwrap();
        let status = Command::new(repo().join("tests/nodevm/nodevm"))
            .args(["run", "--lab", "--"])
            .arg(exe)
            .args(["--ignored", "--exact", TEST, "--nocapture"])
            .env(PHASE_VAR, "1")
            .env(STATE_VAR, dir.join("state.json"))
            .status()
            .unwrap();
        assert!(status.success(), "{TEST} failed in the VM: {status}");
        return;
    }
    let s = reconcile();
    assert_state(&s, "NVME-A", DiskState::Claimed, Some("strata-nvme"));
    assert_state(&s, "NVME-B", DiskState::Claimed, Some("strata-nvme"));
    assert_state(&s, "SSD-A", DiskState::Claimed, Some("strata-ssd"));
    assert_state(&s, "HDD-A", DiskState::Claimed, Some("strata-hdd"));
    for (serial, words) in [
        ("HDD-GPT", "has partitions"),
        ("SSD-EXT4", "has ext4 filesystem"),
        ("SWAP-A", "has swap signature"),
        ("PV-FOREIGN", "foreign VG othervg"),
    ] {
        let d = by_serial(&s, serial);
        assert_eq!(d.state, DiskState::Rejected, "{d:#?}");
        assert!(d.reason.contains(words), "{serial}: {}", d.reason);
    }
    let classes: Vec<_> = s
        .classes
        .iter()
        .map(|c| (c.name, c.pv_count, c.health))
        .collect();
    assert_eq!(
        classes,
        vec![
            (DeviceClass::Nvme, 2, ClassHealth::Healthy),
            (DeviceClass::Ssd, 1, ClassHealth::Healthy),
            (DeviceClass::Hdd, 1, ClassHealth::Healthy),
        ]
    );
    let nvme = &s.classes[0];
    assert_eq!(nvme.total_bytes, nvme.free_bytes);
    assert!(
        nvme.total_bytes > 15 << 30 && nvme.total_bytes <= 16 << 30,
        "{nvme:?}"
    );
    // the foreign VG is untouched
    let state = s.lvm.as_ref().unwrap();
    let other = state.vgs.iter().find(|v| v.name == "othervg").unwrap();
    assert!(!other.owned);
    assert_eq!(other.pv_count, 1);
    // a second pass claims nothing twice
    let again = reconcile();
    assert!(again.plan.actions.is_empty(), "{:?}", again.plan.actions);
    assert_eq!(slot_to_pv(&again), slot_to_pv(&s));
}

#[test]
#[ignore = "boots the node VM twice; run with --ignored (see the file head)"]
fn new_nvme_at_a_lower_slot_keeps_every_slot_mapping() {
    const TEST: &str = "new_nvme_at_a_lower_slot_keeps_every_slot_mapping";
    match phase() {
        None => {
            let dir = workdir(TEST);
            let state = dir.join("state.json");
            let disks = raw_disks(&dir);
            boot(TEST, 1, &disks, &state);
            let mut more = vec![disk("nvme", "addr=0x3", "NVME-NEW", "4G", &dir)];
            more.extend(disks);
            boot(TEST, 2, &more, &state);
        }
        Some(1) => first_boot_claims_all(),
        Some(_) => {
            // the new controller at 00:03 took nvme0: the others were renumbered
            assert_eq!(kernel_name_of_serial("NVME-NEW"), "nvme0n1");
            assert_ne!(kernel_name_of_serial("NVME-A"), "nvme0n1");
            let before = load();
            let s = reconcile();
            assert_eq!(s.plan.actions.len(), 1, "{:?}", s.plan.actions);
            assert_eq!(s.plan.actions[0].slot, NVME_NEW);
            assert_state(&s, "NVME-NEW", DiskState::Claimed, Some("strata-nvme"));
            let after = slot_to_pv(&s);
            for (slot, uuid) in &before {
                assert_eq!(after.get(slot), Some(uuid), "{slot} changed PV");
            }
            assert_eq!(after.len(), before.len() + 1);
            assert_eq!(s.classes[0].pv_count, 3);
            assert_eq!(s.classes[0].health, ClassHealth::Healthy);
        }
    }
}

#[test]
#[ignore = "boots the node VM three times; run with --ignored (see the file head)"]
fn removed_disk_is_missing_and_a_new_one_in_its_slot_is_replaced() {
    const TEST: &str = "removed_disk_is_missing_and_a_new_one_in_its_slot_is_replaced";
    match phase() {
        None => {
            let dir = workdir(TEST);
            let state = dir.join("state.json");
            let disks = raw_disks(&dir);
            boot(TEST, 1, &disks, &state);
            // boot 2: NVME-B pulled out
            let without_b: Vec<String> = disks
                .iter()
                .filter(|d| !d.contains("NVME-B"))
                .cloned()
                .collect();
            boot(TEST, 2, &without_b, &state);
            // boot 3: another drive (new serial, blank) in NVME-B's slot
            let mut replaced = without_b;
            replaced.push(disk("nvme", "addr=0x5", "NVME-C", "8G", &dir));
            boot(TEST, 3, &replaced, &state);
        }
        Some(1) => first_boot_claims_all(),
        Some(2) => {
            let s = reconcile();
            assert!(s.plan.actions.is_empty(), "{:?}", s.plan.actions);
            let b = by_serial(&s, "NVME-B");
            assert_eq!(b.state, DiskState::Missing, "{b:#?}");
            assert_eq!(b.slot, NVME_B);
            assert_eq!(b.volume_group.as_deref(), Some("strata-nvme"));
            let nvme = s
                .classes
                .iter()
                .find(|c| c.name == DeviceClass::Nvme)
                .unwrap();
            assert_eq!(nvme.health, ClassHealth::Degraded);
            assert_eq!(nvme.missing_pv_count, 1);
            assert_eq!(nvme.pv_count, 2);
            assert_state(&s, "NVME-A", DiskState::Claimed, Some("strata-nvme"));
        }
        Some(_) => {
            let s = reconcile();
            assert!(s.plan.actions.is_empty(), "{:?}", s.plan.actions);
            let c = by_serial(&s, "NVME-C");
            assert_eq!(c.state, DiskState::Rejected, "{c:#?}");
            assert!(
                c.reason.starts_with(&format!(
                    "disk in slot {NVME_B} was replaced: serial NVME-B → NVME-C"
                )),
                "{}",
                c.reason
            );
            assert_eq!(by_serial(&s, "NVME-B").state, DiskState::Missing);
            // nothing was removed: the VG still lists the missing PV
            let nvme = s
                .classes
                .iter()
                .find(|c| c.name == DeviceClass::Nvme)
                .unwrap();
            assert_eq!((nvme.pv_count, nvme.missing_pv_count), (2, 1));
        }
    }
}
