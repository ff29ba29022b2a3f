//! The PV tags that let Strata find a disk again after a reboot, whatever its kernel name:
//! `strata.io/slot=<slot>`, `strata.io/serial=<serial>`, `strata.io/wwn=<wwn>` (values escaped by
//! the LVM layer's tag escaping), next to the owner tag the LVM layer writes itself.

use crate::discovery::Disk;
use crate::lvm::naming::{escape, unescape};

pub const SLOT_TAG_PREFIX: &str = "strata.io/slot=";
pub const SERIAL_TAG_PREFIX: &str = "strata.io/serial=";
pub const WWN_TAG_PREFIX: &str = "strata.io/wwn=";

/// What a PV's tags say about the disk it was made on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub slot: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
}

impl Recorded {
    pub fn from_tags<'a>(tags: impl IntoIterator<Item = &'a String>) -> Recorded {
        let mut r = Recorded::default();
        for t in tags {
            if let Some(v) = t.strip_prefix(SLOT_TAG_PREFIX) {
                r.slot = unescape(v);
            } else if let Some(v) = t.strip_prefix(SERIAL_TAG_PREFIX) {
                r.serial = unescape(v);
            } else if let Some(v) = t.strip_prefix(WWN_TAG_PREFIX) {
                r.wwn = unescape(v);
            }
        }
        r
    }

    /// How the disk now in the recorded slot differs from the recorded one ("serial A → B"),
    /// or None when serial and WWN (those both sides know) agree.
    pub fn difference(&self, disk: &Disk) -> Option<String> {
        let mut diffs = Vec::new();
        for (what, old, new) in [
            ("serial", &self.serial, &disk.serial),
            ("wwn", &self.wwn, &disk.wwn),
        ] {
            if let Some(old) = old.as_deref().filter(|o| !o.is_empty())
                && !new.is_empty()
                && old != new
            {
                diffs.push(format!("{what} {old} → {new}"));
            }
        }
        (!diffs.is_empty()).then(|| diffs.join(", "))
    }
}

/// The identity tags of a disk (empty serial/WWN are not written).
pub fn identity_tags(slot: &str, disk: &Disk) -> Vec<String> {
    let mut tags = vec![format!("{SLOT_TAG_PREFIX}{}", escape(slot))];
    if !disk.serial.is_empty() {
        tags.push(format!("{SERIAL_TAG_PREFIX}{}", escape(&disk.serial)));
    }
    if !disk.wwn.is_empty() {
        tags.push(format!("{WWN_TAG_PREFIX}{}", escape(&disk.wwn)));
    }
    tags
}

/// Whether a tag is one of the identity tags (replaced wholesale on retag).
pub fn is_identity_tag(tag: &str) -> bool {
    [SLOT_TAG_PREFIX, SERIAL_TAG_PREFIX, WWN_TAG_PREFIX]
        .iter()
        .any(|p| tag.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::naming::is_legal_tag;
    use csi_api::names::DeviceClass;
    use std::path::PathBuf;

    fn disk(serial: &str, wwn: &str) -> Disk {
        Disk {
            slot: "pci-0000:00:04.0-nvme-1".into(),
            physical_slot: None,
            transport: None,
            kernel_name: "nvme0n1".into(),
            device: PathBuf::from("/dev/nvme0n1"),
            media: DeviceClass::Nvme,
            size_bytes: 8 << 30,
            logical_block_size: 512,
            physical_block_size: 512,
            model: String::new(),
            serial: serial.into(),
            wwn: wwn.into(),
        }
    }

    #[test]
    fn identity_round_trips_through_legal_tags() {
        let d = disk("S/N 42 (x)", "nvme.1b36-4e56");
        let tags = identity_tags(&d.slot, &d);
        assert_eq!(tags.len(), 3);
        assert!(
            tags.iter().all(|t| is_legal_tag(t) && is_identity_tag(t)),
            "{tags:?}"
        );
        let mut with_others = tags.clone();
        with_others.push(crate::lvm::OWNER_TAG.to_owned());
        let r = Recorded::from_tags(&with_others);
        assert_eq!(r.slot.as_deref(), Some("pci-0000:00:04.0-nvme-1"));
        assert_eq!(r.serial.as_deref(), Some("S/N 42 (x)"));
        assert_eq!(r.wwn.as_deref(), Some("nvme.1b36-4e56"));
        assert!(!is_identity_tag(crate::lvm::OWNER_TAG));
        assert_eq!(identity_tags("s", &disk("", "")).len(), 1);
    }

    #[test]
    fn difference_names_what_changed() {
        let r = Recorded {
            slot: Some("s".into()),
            serial: Some("A".into()),
            wwn: Some("naa.1".into()),
        };
        assert_eq!(r.difference(&disk("A", "naa.1")), None);
        assert_eq!(
            r.difference(&disk("B", "naa.1")).as_deref(),
            Some("serial A → B")
        );
        assert_eq!(
            r.difference(&disk("B", "naa.2")).as_deref(),
            Some("serial A → B, wwn naa.1 → naa.2")
        );
        // unknown on either side is no evidence of a change
        assert_eq!(r.difference(&disk("", "")), None);
        assert_eq!(Recorded::default().difference(&disk("B", "x")), None);
    }
}
