//! Assertions of the suite: gRPC codes, and the node's real state (LVs in `lvs`, mounts in
//! `/proc/self/mountinfo`, signatures by `blkid -p`) so that "no state change" is checked where
//! the state lives, not through the plugin's own answers.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use tonic::Code;

/// The gRPC code of a call that must fail with `code`.
pub fn code<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
) -> Result<()> {
    match result {
        Ok(r) => bail!(
            "{what}: expected {code:?}, got success {:?}",
            r.into_inner()
        ),
        Err(s) if s.code() == code => {
            ensure!(
                !s.message().is_empty(),
                "{what}: {code:?} without a message"
            );
            Ok(())
        }
        Err(s) => bail!(
            "{what}: expected {code:?}, got {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}

/// The response of a call that must succeed.
pub fn ok<T>(what: &str, result: Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    result
        .map(tonic::Response::into_inner)
        .map_err(|s| anyhow::anyhow!("{what}: {:?}: {}", s.code(), s.message()))
}

fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    ensure!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(vg, lv, tags)` of every LV lvm2 sees.
pub fn lvs() -> Result<Vec<(String, String, String)>> {
    let text = run(
        "lvs",
        &[
            "--noheadings",
            "--separator",
            "|",
            "-o",
            "vg_name,lv_name,lv_tags",
        ],
    )?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().split('|');
            Some((
                f.next()?.to_owned(),
                f.next()?.to_owned(),
                f.next().unwrap_or("").to_owned(),
            ))
        })
        .collect())
}

/// The VG of the LV carrying the volume tag of `volume`, if any.
pub fn lv_of(volume: &str) -> Result<Option<(String, String)>> {
    let tag = format!("strata.io/volume={volume}");
    Ok(lvs()?
        .into_iter()
        .find(|(_, _, tags)| tags.split(',').any(|t| t == tag))
        .map(|(vg, lv, _)| (vg, lv)))
}

/// One mountinfo line: (fs type, source, per-mount options).
pub fn mount_at(path: &Path) -> Result<Option<(String, String, String)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = path.to_string_lossy();
    let mut found = None;
    for line in text.lines() {
        let (pre, post) = line.split_once(" - ").context("mountinfo line")?;
        let f: Vec<&str> = pre.split(' ').collect();
        let g: Vec<&str> = post.split(' ').collect();
        if f.get(4) == Some(&want.as_ref()) {
            found = Some((
                g.first().unwrap_or(&"").to_string(),
                g.get(1).unwrap_or(&"").to_string(),
                f.get(5).unwrap_or(&"").to_string(),
            ));
        }
    }
    Ok(found)
}

/// blkid's TYPE of a device, or `None` when it carries no signature.
pub fn fs_type(dev: &Path) -> Result<Option<String>> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(dev)
        .output()?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())),
        Some(2) => Ok(None),
        c => bail!("blkid -p {} exited {c:?}", dev.display()),
    }
}

/// Unmounts `path` behind the plugin's back (to simulate a lost mount).
pub fn umount(path: &Path) -> Result<()> {
    run("umount", &[&path.to_string_lossy()]).map(drop)
}

/// Mounts a tmpfs at `path` (a mount that is not Strata's).
pub fn mount_tmpfs(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)?;
    run("mount", &["-t", "tmpfs", "tmpfs", &path.to_string_lossy()]).map(drop)
}
