//! The one reading of util-linux `blkid -p -o export DEVICE` (low-level probe of the device itself,
//! no cache, superblocks and partition tables): [`probe`] runs it through the [`LvmRunner`] and
//! [`parse_export`] reads its output. Discovery, the PV check and the node's stage all use it.
//! blkid exits 2 both for "nothing found" and for "cannot open", so the device is opened first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::error::LvmError;
use super::runner::{Invocation, LvmRunner};

/// What the low-level probe found on one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Probed {
    /// No signature of any kind.
    #[default]
    Blank,
    /// One signature (a superblock and/or a partition table), as blkid's `KEY=value` pairs.
    Signature(Signature),
    /// blkid found several conflicting signatures (exit 8).
    Ambivalent,
}

/// blkid's export keys for one device (`TYPE`, `USAGE`, `UUID`, `PTTYPE`, `LABEL`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature(pub BTreeMap<String, String>);

impl Signature {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `TYPE`, e.g. `ext4`, `LVM2_member`, `swap`.
    pub fn fs_type(&self) -> Option<&str> {
        self.get("TYPE")
    }

    /// The PV UUID when this is an LVM2 physical volume.
    pub fn lvm_pv_uuid(&self) -> Option<&str> {
        (self.fs_type() == Some("LVM2_member"))
            .then(|| self.get("UUID"))
            .flatten()
    }
}

impl fmt::Display for Signature {
    /// Words for an operator: "xfs filesystem", "gpt partition table", "swap signature".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(t) = self.fs_type() {
            parts.push(match (t, self.get("USAGE")) {
                ("swap", _) => "swap signature".to_owned(),
                (t, Some("filesystem")) => format!("{t} filesystem"),
                (t, Some("raid")) => format!("{t} RAID member signature"),
                (t, Some("crypto")) => format!("{t} encryption signature"),
                (t, _) => format!("{t} signature"),
            });
        }
        match self.get("PTTYPE") {
            Some("PMBR") => parts.push("protective MBR (PMBR)".to_owned()),
            Some(pt) => parts.push(format!("{pt} partition table")),
            None => {}
        }
        if parts.is_empty() {
            // blkid printed keys but neither TYPE nor PTTYPE: still something is there
            let keys: Vec<_> = self.0.keys().map(String::as_str).collect();
            parts.push(format!("unrecognised signature ({})", keys.join(",")));
        }
        f.write_str(&parts.join(" and "))
    }
}

impl fmt::Display for Probed {
    /// Words for an operator: "no signature", "ext4 filesystem", "ambivalent signatures".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probed::Blank => f.write_str("no signature"),
            Probed::Signature(sig) => sig.fmt(f),
            Probed::Ambivalent => f.write_str("ambivalent signatures"),
        }
    }
}

/// The probe could not tell: the disk must be treated as not blank.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run blkid: {0}")]
    Run(LvmError),
    #[error("blkid -p {path} exited with {code:?}: {stderr}")]
    Failed {
        path: PathBuf,
        code: Option<i32>,
        stderr: String,
    },
}

/// Probes `device` with `blkid -p -o export`: exit 0 is what [`parse_export`] reads, 2 with
/// nothing on stderr is blank, 8 is ambivalent, anything else is an error.
pub async fn probe(
    runner: &dyn LvmRunner,
    device: &Path,
    cancel: &CancellationToken,
) -> Result<Probed, ProbeError> {
    runner
        .check_readable(device)
        .await
        .map_err(|source| ProbeError::Open {
            path: device.to_path_buf(),
            source,
        })?;
    let arg = device.to_str().ok_or_else(|| ProbeError::Open {
        path: device.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a UTF-8 path"),
    })?;
    let out = runner
        .run(&Invocation::blkid(["-p", "-o", "export", arg]), cancel)
        .await
        .map_err(ProbeError::Run)?;
    match out.code {
        Some(0) => Ok(parse_export(&out.stdout)),
        Some(2) if out.stderr.is_empty() => Ok(Probed::Blank),
        Some(8) => Ok(Probed::Ambivalent),
        code => Err(ProbeError::Failed {
            path: device.to_path_buf(),
            code,
            stderr: out.stderr,
        }),
    }
}

/// Parses `blkid -o export` output for one device (`KEY=value` lines, values backslash-escaped).
/// `DEVNAME` is dropped: it is the kernel name, not part of the signature.
pub fn parse_export(text: &str) -> Probed {
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k == "DEVNAME" || k.is_empty() {
            continue;
        }
        keys.insert(k.to_owned(), unescape(v));
    }
    let sig = Signature(keys);
    if sig.fs_type().is_none() && sig.get("PTTYPE").is_none() && sig.0.is_empty() {
        Probed::Blank
    } else {
        Probed::Signature(sig)
    }
}

fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::{FakeRunner, Reply, Tool};

    fn sig(text: &str) -> Signature {
        match parse_export(text) {
            Probed::Signature(s) => s,
            other => panic!("expected a signature, got {other:?}"),
        }
    }

    #[test]
    fn describes_each_kind_of_signature() {
        let cases = [
            (
                "DEVNAME=/dev/sdb\nUUID=1\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n",
                "ext4 filesystem",
            ),
            (
                "DEVNAME=/dev/sdc\nPTUUID=ab\nPTTYPE=gpt\n",
                "gpt partition table",
            ),
            ("PTTYPE=PMBR\n", "protective MBR (PMBR)"),
            (
                "UUID=x\nVERSION=1\nTYPE=swap\nUSAGE=other\n",
                "swap signature",
            ),
            (
                "UUID=a\nTYPE=linux_raid_member\nUSAGE=raid\n",
                "linux_raid_member RAID member signature",
            ),
            (
                "UUID=a\nTYPE=crypto_LUKS\nUSAGE=crypto\n",
                "crypto_LUKS encryption signature",
            ),
            (
                "TYPE=zfs_member\nUSAGE=filesystem\n",
                "zfs_member filesystem",
            ),
            ("TYPE=bcache\nUSAGE=other\n", "bcache signature"),
            (
                "TYPE=vfat\nUSAGE=filesystem\nPTTYPE=dos\n",
                "vfat filesystem and dos partition table",
            ),
            ("SBMAGIC=x\n", "unrecognised signature (SBMAGIC)"),
        ];
        for (text, words) in cases {
            assert_eq!(sig(text).to_string(), words, "{text}");
        }
    }

    #[test]
    fn finds_lvm_pv_uuid_and_unescapes_values() {
        let s = sig("UUID=Wf9qaT-2LGo-x\nVERSION=LVM2 001\nTYPE=LVM2_member\nUSAGE=raid\n");
        assert_eq!(s.lvm_pv_uuid(), Some("Wf9qaT-2LGo-x"));
        assert_eq!(s.get("VERSION"), Some("LVM2 001"));
        let e = sig("LABEL=my\\ disk\\\\x\nTYPE=xfs\n");
        assert_eq!(e.get("LABEL"), Some("my disk\\x"));
        assert_eq!(e.lvm_pv_uuid(), None);
        assert_eq!(parse_export(""), Probed::Blank);
        assert_eq!(parse_export("DEVNAME=/dev/sdb\n"), Probed::Blank);
    }

    #[tokio::test]
    async fn probe_reads_blkid_exit_codes() {
        let dev = Path::new("/dev/vg/lv");
        let cancel = CancellationToken::new();
        let replies = [
            (Reply::fail(2, ""), Some(Probed::Blank)),
            (
                Reply::ok("TYPE=ext4\n"),
                Some(Probed::Signature(sig("TYPE=ext4\n"))),
            ),
            (Reply::fail(8, ""), Some(Probed::Ambivalent)),
            (Reply::fail(2, "blkid: error"), None),
            (Reply::fail(4, ""), None),
        ];
        for (reply, want) in replies {
            let runner = FakeRunner::scripted().expect_tool(
                Tool::Blkid,
                &["-p", "-o", "export", "/dev/vg/lv"],
                &[],
                reply,
            );
            let got = probe(&runner, dev, &cancel).await;
            assert_eq!(got.as_ref().ok(), want.as_ref(), "{got:?}");
            runner.assert_done();
        }
    }
}
