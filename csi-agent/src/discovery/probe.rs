//! Signature probing: does anything already live on a device? The real probe runs util-linux
//! `blkid -p -o export DEVICE` (low-level probe of the device itself, no cache, superblocks and
//! partition tables), behind the [`SignatureProbe`] trait so that tests replay captured output.
//! blkid exits 2 both for "nothing found" and for "cannot open", so the device is opened first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

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

/// The probe could not tell: the disk must be treated as not blank.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run blkid: {0}")]
    Spawn(std::io::Error),
    #[error("blkid -p {path} exited with {code:?}: {stderr}")]
    Failed {
        path: PathBuf,
        code: Option<i32>,
        stderr: String,
    },
}

/// Looks at the first and last sectors of a device for anything that lives there.
#[async_trait]
pub trait SignatureProbe: Send + Sync {
    async fn probe(&self, device: &Path) -> Result<Probed, ProbeError>;
}

/// The real probe: util-linux `blkid -p -o export`.
#[derive(Clone, Debug)]
pub struct BlkidProbe {
    program: PathBuf,
}

impl Default for BlkidProbe {
    fn default() -> Self {
        BlkidProbe {
            program: PathBuf::from("blkid"),
        }
    }
}

impl BlkidProbe {
    /// A probe running `program` instead of `blkid` from `PATH`.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        BlkidProbe {
            program: program.into(),
        }
    }
}

#[async_trait]
impl SignatureProbe for BlkidProbe {
    async fn probe(&self, device: &Path) -> Result<Probed, ProbeError> {
        // blkid reports an unopenable device like a blank one (exit 2): open it ourselves first
        let open_path = device.to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::File::open(&open_path).map(drop))
            .await
            .map_err(|e| ProbeError::Spawn(std::io::Error::other(e)))?
            .map_err(|source| ProbeError::Open {
                path: device.to_path_buf(),
                source,
            })?;
        let out = tokio::process::Command::new(&self.program)
            .args(["-p", "-o", "export"])
            .arg(device)
            .env("LC_ALL", "C")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(ProbeError::Spawn)?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        match out.status.code() {
            Some(0) => Ok(parse_export(&String::from_utf8_lossy(&out.stdout))),
            Some(2) if stderr.is_empty() => Ok(Probed::Blank),
            Some(8) => Ok(Probed::Ambivalent),
            code => Err(ProbeError::Failed {
                path: device.to_path_buf(),
                code,
                stderr,
            }),
        }
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
    async fn unopenable_device_is_an_error_not_blank() {
        let err = BlkidProbe::default()
            .probe(Path::new("/nonexistent/strata-disk"))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Open { .. }), "{err}");
    }

    #[tokio::test]
    async fn real_blkid_on_files() {
        // blkid probes regular files too: a zeroed file is blank, a swap header is found
        if std::process::Command::new("blkid")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("blkid not installed; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let probe = BlkidProbe::default();
        assert_eq!(probe.probe(&blank).await.unwrap(), Probed::Blank);
        // a swap area made by util-linux mkswap
        let swapf = dir.path().join("swap");
        std::fs::write(&swapf, vec![0u8; 1 << 20]).unwrap();
        let made = std::process::Command::new("mkswap")
            .arg(&swapf)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        match probe.probe(&swapf).await.unwrap() {
            Probed::Signature(s) => assert_eq!(s.fs_type(), Some("swap")),
            other => panic!("swap not found: {other:?}"),
        }
        let missing = BlkidProbe::with_program("/nonexistent/blkid")
            .probe(&blank)
            .await
            .unwrap_err();
        assert!(matches!(missing, ProbeError::Spawn(_)), "{missing}");
    }
}
