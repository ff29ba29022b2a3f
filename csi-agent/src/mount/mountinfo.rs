//! `/proc/<pid>/mountinfo` as the node service needs it: which paths are mount points, of which
//! device and filesystem, read-only or not. Lines are split by `procfs`; this module adds the
//! kernel's octal escapes (`\040` for a space in a path) and keeps only the fields we use, so it
//! can be tested on canned text.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use procfs::FromBufRead;
use procfs::process::MountInfos;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// The path inside the source filesystem that is mounted here (`/` unless a bind of a
    /// subfolder; for a bind of a device node, the node's path inside devtmpfs).
    pub root: String,
    /// The mount source (device path for block filesystems), unescaped.
    pub source: Option<String>,
    /// The filesystem type (`xfs`, `ext4`, `devtmpfs`, ...).
    pub fs_type: String,
    /// `major:minor` of the filesystem's device.
    pub major_minor: String,
    /// Whether this mount (not the superblock) is read-only.
    pub read_only: bool,
}

/// mountinfo text that `procfs` could not parse.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse mountinfo: {0}")]
pub struct ParseError(pub String);

/// Parses the text of a mountinfo file.
pub fn parse(text: &str) -> Result<Vec<MountEntry>, ParseError> {
    let MountInfos(infos) = MountInfos::from_buf_read(Cursor::new(text.as_bytes()))
        .map_err(|e| ParseError(e.to_string()))?;
    Ok(infos
        .into_iter()
        .map(|info| MountEntry {
            mount_point: PathBuf::from(unescape(&info.mount_point.to_string_lossy())),
            root: unescape(&info.root),
            source: info.mount_source.as_deref().map(unescape),
            fs_type: info.fs_type,
            major_minor: info.majmin,
            read_only: info.mount_options.contains_key("ro"),
        })
        .collect())
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash.
pub fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last (topmost) mount at exactly `path`, if any.
pub fn mount_at<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts.iter().rev().find(|m| m.mount_point == path)
}

/// Every mount at exactly `path`, topmost last.
pub fn mounts_at<'a>(
    mounts: &'a [MountEntry],
    path: &'a Path,
) -> impl Iterator<Item = &'a MountEntry> {
    mounts.iter().filter(move |m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANNED: &str = "\
22 1 0:21 / / rw,relatime shared:1 - rootfs rootfs rw
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=1012k,nr_inodes=253k,mode=755
40 22 253:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/local.strata.io/abc/globalmount rw,noatime shared:20 - xfs /dev/mapper/strata--nvme-pvc--1 rw,attr2,inode64,logbufs=8,noquota
41 22 253:3 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount ro,noatime shared:20 - xfs /dev/mapper/strata--nvme-pvc--1 rw,attr2,inode64
42 22 0:5 /dm-4 /var/lib/kubelet/pods/p2/volumeDevices/pvc-2 rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=1012k
43 22 253:5 / /mnt/with\\040space rw,relatime - ext4 /dev/mapper/strata--ssd-pvc--3 rw
44 22 0:40 / /tmp rw master:3 propagate_from:1 unbindable - tmpfs none rw
45 43 253:6 / /mnt/with\\040space rw,relatime - ext4 /dev/mapper/strata--ssd-pvc--3 ro
";

    #[test]
    fn parses_fields_and_read_only_flags() {
        let mounts = parse(CANNED).unwrap();
        assert_eq!(mounts.len(), 8);
        let global = &mounts[2];
        assert_eq!(global.fs_type, "xfs");
        assert_eq!(global.major_minor, "253:3");
        assert_eq!(global.root, "/");
        assert_eq!(
            global.source.as_deref(),
            Some("/dev/mapper/strata--nvme-pvc--1")
        );
        assert!(!global.read_only);
        assert!(mounts[3].read_only, "per-mount ro, superblock rw");
        let block = &mounts[4];
        assert_eq!(block.root, "/dm-4");
        assert_eq!(block.fs_type, "devtmpfs");
        assert_eq!(mounts[6].source, None, "`none` is no source");
    }

    #[test]
    fn unescapes_octal_sequences_in_paths() {
        let mounts = parse(CANNED).unwrap();
        assert_eq!(mounts[5].mount_point, Path::new("/mnt/with space"));
        assert_eq!(unescape(r"a\011b\012c\134d"), "a\tb\nc\\d");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape(r"not\999octal"), r"not\999octal");
        assert_eq!(unescape(r"\"), r"\");
    }

    #[test]
    fn finds_the_topmost_mount_at_a_path() {
        let mounts = parse(CANNED).unwrap();
        let top = mount_at(&mounts, Path::new("/mnt/with space")).unwrap();
        assert_eq!(top.major_minor, "253:6");
        assert_eq!(mounts_at(&mounts, Path::new("/mnt/with space")).count(), 2);
        assert!(mount_at(&mounts, Path::new("/mnt")).is_none());
        assert!(mount_at(&mounts, Path::new("/var/lib/kubelet")).is_none());
    }

    #[test]
    fn garbage_is_an_error_not_an_empty_table() {
        assert!(parse("this is not mountinfo\n").is_err());
        assert_eq!(parse("").unwrap(), Vec::new());
    }
}
