//! A throw-away LVM lab on loop devices for host tests and the LVM layer benchmark: sparse files
//! attached as loop devices and a private `LVM_SYSTEM_DIR` whose lvm.conf disables activation
//! (no device-mapper on the host), accepts only the lab's loop devices and keeps locks, hints and
//! backups inside the lab. Everything is undone on drop (VGs removed, loops detached).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use csi_agent::lvm::{CommandRunner, Lvm, LvmOptions, RunnerConfig};

/// Why a lab cannot exist here (printed by tests that then skip).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if Command::new("lvm").arg("version").output().is_err() {
        return Some("lvm2 is not installed (apt-get install lvm2)".into());
    }
    None
}

/// Prints why the test skips, or panics when skipping is not allowed
/// (`STRATA_REQUIRE_LVM_TESTS=1`, set by CI which runs as root).
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("STRATA_REQUIRE_LVM_TESTS").is_some() {
        panic!("{test}: cannot run ({why}) but STRATA_REQUIRE_LVM_TESTS is set");
    }
    eprintln!("SKIPPED {test}: {why}");
}

pub struct Lab {
    dir: tempfile::TempDir,
    pub loops: Vec<PathBuf>,
    accepted: Vec<PathBuf>,
}

impl Lab {
    /// `count` loop devices of `size_mib` each; `Err` with the reason when not possible.
    pub fn new(count: usize, size_mib: u64) -> Result<Lab, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-lvm-lab")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut lab = Lab {
            dir,
            loops: Vec::new(),
            accepted: Vec::new(),
        };
        for i in 0..count {
            let file = lab.dir.path().join(format!("disk{i}"));
            let f = std::fs::File::create(&file).map_err(|e| e.to_string())?;
            f.set_len(size_mib << 20).map_err(|e| e.to_string())?;
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&file)
                .output()
                .map_err(|e| format!("losetup: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "no loop device: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            lab.loops.push(dev);
        }
        lab.accepted = lab.loops.clone();
        lab.write_conf();
        Ok(lab)
    }

    /// The lab's `LVM_SYSTEM_DIR`.
    pub fn system_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// Makes lvm2 see only `devices` from now on (the others look unplugged).
    pub fn accept_only(&mut self, devices: &[PathBuf]) {
        self.accepted = devices.to_vec();
        self.write_conf();
    }

    fn write_conf(&self) {
        let mut filter = String::new();
        for dev in &self.accepted {
            filter.push_str(&format!("\"a|^{}$|\", ", dev.display()));
        }
        let conf = format!(
            "devices {{\n  filter = [ {filter}\"r|.*|\" ]\n  global_filter = [ {filter}\"r|.*|\" ]\n  \
             use_devicesfile = 0\n  hints = \"none\"\n  obtain_device_list_from_udev = 0\n}}\n\
             global {{\n  activation = 0\n  locking_dir = \"{lock}\"\n}}\n\
             activation {{\n  udev_sync = 0\n  udev_rules = 0\n  monitoring = 0\n}}\n\
             backup {{\n  backup = 0\n  archive = 0\n}}\n",
            lock = self.dir.path().join("lock").display()
        );
        let etc = self.system_dir();
        std::fs::create_dir_all(&etc).expect("lab etc");
        std::fs::write(etc.join("lvm.conf"), conf).expect("lab lvm.conf");
    }

    /// The LVM layer over real lvm2 in this lab (activation off).
    pub fn lvm(&self) -> Lvm<CommandRunner> {
        Lvm::new(self.runner(), self.options())
    }

    pub fn runner(&self) -> CommandRunner {
        CommandRunner::new(RunnerConfig {
            system_dir: Some(self.system_dir()),
            timeout: Duration::from_secs(60),
            ..RunnerConfig::default()
        })
    }

    pub fn options(&self) -> LvmOptions {
        LvmOptions {
            activate: false,
            ..LvmOptions::default()
        }
    }

    /// Runs a raw lvm2 command in the lab (to set up foreign objects, or check results).
    pub fn lvm_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new("lvm")
            .args(args)
            .env("LVM_SYSTEM_DIR", self.system_dir())
            .env("LC_ALL", "C")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run lvm")
    }

    /// Like [`Lab::lvm_raw`], panicking on failure.
    pub fn lvm_ok(&self, args: &[&str]) -> String {
        let out = self.lvm_raw(args);
        assert!(
            out.status.success(),
            "lvm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names of the LVs of `vg` (empty if the VG does not exist).
    pub fn lv_names(&self, vg: &str) -> Vec<String> {
        let out = self.lvm_raw(&["lvs", "--noheadings", "-o", "lv_name", vg]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    pub fn dev(&self, i: usize) -> &Path {
        &self.loops[i]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.accepted = self.loops.clone();
        self.write_conf();
        let out = self.lvm_raw(&["vgs", "--noheadings", "-o", "vg_name"]);
        for vg in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = self.lvm_raw(&["vgremove", "-f", vg]);
        }
        for dev in &self.loops {
            let _ = self.lvm_raw(&["pvremove", "-f", &dev.to_string_lossy()]);
            let _ = Command::new("losetup").arg("-d").arg(dev).output();
        }
    }
}
