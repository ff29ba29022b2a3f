//! What the node tests need from the VM they run in: the guard that keeps them off the host,
//! running commands (argument vectors, never a shell), and finding the lab's disks by their
//! PCI slot or serial number through sysfs (kernel names are not stable).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// The token `tests/nodevm/nodevm` puts on the guest kernel's command line. The host's kernel
/// command line never has it, and no environment variable can fake it.
const VM_MARKER: &str = "strata.nodevm=1";

/// Set by `tests/nodevm/cargo-node-test`: not being in the VM is then an error, not a skip.
const REQUIRED_VAR: &str = "STRATA_NODEVM_REQUIRED";

/// Whether this process runs inside the node VM.
pub fn inside_vm() -> bool {
    fs::read_to_string("/proc/cmdline")
        .map(|cmdline| cmdline.split_whitespace().any(|arg| arg == VM_MARKER))
        .unwrap_or(false)
}

/// The node tests change disks (LVM, filesystems): they run only inside the node VM. Every test
/// starts with `let Some(_lab) = vm::enter("name") else { return };`, which serialises the tests
/// (they share the lab's disks) and returns `None` on the host after saying loudly why the test
/// did nothing. With `STRATA_NODEVM_REQUIRED=1` (set by `tests/nodevm/cargo-node-test`) it panics
/// instead, so a runner that did not take effect cannot pass silently.
pub fn enter(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !inside_vm() {
        let required = std::env::var(REQUIRED_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
        let why = format!(
            "not inside the Strata node VM ({VM_MARKER} is not on /proc/cmdline); these tests \
             create LVM volumes and filesystems on the VM's disks and never touch the host's"
        );
        if required {
            panic!("{test}: {why}, but {REQUIRED_VAR} is set: was the cargo runner ignored?");
        }
        // straight to stderr: libtest captures eprintln!() of passing tests, and this must be seen
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {why}. Run them with tests/nodevm/cargo-node-test."
        );
        return None;
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "{test}: the node VM runs tests as root, but this process is not root"
    );
    static LAB: Mutex<()> = Mutex::new(());
    // a failed test must not fail the others through a poisoned lock
    Some(LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

fn describe(prog: &str, args: &[&str]) -> String {
    std::iter::once(prog)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `prog args`, returning its output whatever its exit status.
pub fn output(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", describe(prog, args)))
}

/// Runs `prog args`, panics (showing its output) unless it succeeds, returns its stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = output(prog, args);
    assert!(
        out.status.success(),
        "`{}` failed ({}):\nstdout: {}\nstderr: {}",
        describe(prog, args),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Low-level probe of the signatures on `dev` (`blkid -p`): TYPE, PTTYPE, LABEL, ...; empty when
/// blkid finds nothing (its exit status 2).
pub fn probe(dev: &Path) -> BTreeMap<String, String> {
    let dev = dev.to_str().expect("device path is UTF-8");
    let out = output("blkid", &["-p", "-o", "export", dev]);
    match out.status.code() {
        Some(0) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        Some(2) => BTreeMap::new(),
        _ => panic!(
            "blkid -p {dev} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A whole disk as the kernel shows it.
#[derive(Debug, Clone)]
pub struct Disk {
    /// kernel name (`nvme0n1`, `sda`, `vda`): for messages only, it changes between boots
    pub name: String,
    pub dev: PathBuf,
    pub serial: String,
    /// PCI function of the controller, e.g. `0000:00:04.0` (`0000:00:1f.2` for the SATA disks)
    pub pci: String,
    pub rotational: bool,
    pub size_bytes: u64,
    /// number of partitions
    pub partitions: usize,
}

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The serial number: NVMe controllers and virtio-blk have a sysfs attribute, SATA disks have it
/// in their SCSI VPD page 0x80 (4 header bytes, then the serial).
fn serial_of(sys: &Path) -> String {
    read_trim(sys.join("device/serial"))
        .or_else(|| read_trim(sys.join("serial")))
        .or_else(|| {
            let page = fs::read(sys.join("device/vpd_pg80")).ok()?;
            page.get(4..)
                .map(|s| String::from_utf8_lossy(s).trim().to_owned())
        })
        .unwrap_or_default()
}

/// All whole disks (no loop, ram, device-mapper, ...), by kernel name.
pub fn disks() -> Vec<Disk> {
    let mut disks = Vec::new();
    for entry in fs::read_dir("/sys/block").expect("read /sys/block") {
        let entry = entry.expect("read /sys/block");
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "dm-", "sr", "md", "zram", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let sys = entry.path();
        let real = fs::canonicalize(&sys).expect("resolve /sys/block entry");
        // /sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1: the first PCI function
        let pci = real
            .components()
            .filter_map(|c| c.as_os_str().to_str())
            .find(|c| c.len() == 12 && c.starts_with("0000:") && c.as_bytes()[7] == b':')
            .unwrap_or_default()
            .to_owned();
        let partitions = fs::read_dir(&sys)
            .expect("read disk folder")
            .filter_map(Result::ok)
            .filter(|e| e.path().join("partition").exists())
            .count();
        disks.push(Disk {
            dev: PathBuf::from("/dev").join(&name),
            serial: serial_of(&sys),
            pci,
            rotational: read_trim(sys.join("queue/rotational")).as_deref() == Some("1"),
            size_bytes: read_trim(sys.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                * 512,
            partitions,
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

fn find(what: &str, pred: impl Fn(&Disk) -> bool) -> Disk {
    let all = disks();
    let mut found = all.iter().filter(|d| pred(d));
    match (found.next(), found.next()) {
        (Some(d), None) => d.clone(),
        (None, _) => {
            panic!("no disk with {what} in the VM (was it booted with --lab?); disks: {all:#?}")
        }
        (Some(_), Some(_)) => panic!("more than one disk with {what}; disks: {all:#?}"),
    }
}

/// The disk with this serial number.
pub fn by_serial(serial: &str) -> Disk {
    find(&format!("serial {serial}"), |d| d.serial == serial)
}

/// The NVMe namespace of the controller in PCI slot `pci` (e.g. `0000:00:04.0`), checked against
/// udev's `/dev/disk/by-path/pci-<slot>-nvme-1` link when udev runs.
pub fn nvme_at(pci: &str) -> Disk {
    let disk = find(&format!("NVMe at {pci}"), |d| {
        d.pci == pci && d.name.starts_with("nvme")
    });
    let link = PathBuf::from(format!("/dev/disk/by-path/pci-{pci}-nvme-1"));
    if Path::new("/dev/disk/by-path").is_dir() {
        let target = fs::canonicalize(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        assert_eq!(target, disk.dev, "{} and sysfs disagree", link.display());
    }
    disk
}

/// Size of the filesystem mounted at `mountpoint`, in bytes (GNU df).
pub fn fs_size(mountpoint: &Path) -> u64 {
    let out = run(
        "df",
        &[
            "-B1",
            "--output=size",
            mountpoint.to_str().expect("UTF-8 path"),
        ],
    );
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse df output: {out}"))
}

/// Size of a block device in bytes.
pub fn dev_size(dev: &Path) -> u64 {
    let out = run(
        "blockdev",
        &["--getsize64", dev.to_str().expect("UTF-8 path")],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse blockdev output: {out}"))
}
