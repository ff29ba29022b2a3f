//! Names and tags: how a CSI volume name becomes an LV name, and how the volume name and the PVC
//! reference are written into LVM tags (which allow only `[A-Za-z0-9_+.-/=!:&#]`).
//! - LV name: the volume name itself when it is short and plain (`[a-z0-9]([a-z0-9.-]*[a-z0-9])?`,
//!   at most 48 characters, no lvm2-reserved word) — e.g. `pvc-<uid>` — so that `lvs` stays
//!   readable; otherwise `strata_` + the first 40 hex digits of its SHA-256. Plain names never
//!   contain `_`, so the two forms cannot collide. The real name is always kept in a tag.
//! - Tag values escape every byte outside `[A-Za-z0-9.-]` as `_XX` (uppercase hex), which keeps
//!   them legal for lvm2 and free of the characters lvm2's `--select` syntax treats specially.

use sha2::{Digest, Sha256};

use super::error::{LvmError, Result};

/// Tag on every PV, VG and LV Strata creates (`csi_api::names::LVM_OWNER_TAG`).
pub const OWNER_TAG: &str = csi_api::names::LVM_OWNER_TAG;
/// Prefix of the tag holding the (escaped) CSI volume name of an LV.
pub const VOLUME_TAG_PREFIX: &str = "strata.io/volume=";
/// Prefix of the tag holding the (escaped) `namespace/name/uid` of the PVC of an LV.
pub const PVC_TAG_PREFIX: &str = "strata.io/pvc=";
/// Longest tag this layer writes (lvm2 accepts more; this keeps metadata small).
pub const MAX_TAG_LEN: usize = 1024;
/// Longest CSI volume name accepted (CSI names are at most 128 bytes in practice).
pub const MAX_VOLUME_NAME_LEN: usize = 256;
/// Longest volume name used as the LV name as is.
const MAX_PLAIN_LV_NAME: usize = 48;
/// Prefix of hash-based LV names.
const HASHED_PREFIX: &str = "strata_";

/// The PVC a volume was created for, kept in a tag for operators and orphan detection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PvcRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Checks a CSI volume name before it is used for an LV.
pub fn validate_volume_name(volume: &str) -> Result<()> {
    if volume.is_empty() {
        return Err(LvmError::InvalidArgument("empty volume name".into()));
    }
    if volume.len() > MAX_VOLUME_NAME_LEN {
        return Err(LvmError::InvalidArgument(format!(
            "volume name of {} bytes exceeds {MAX_VOLUME_NAME_LEN}",
            volume.len()
        )));
    }
    Ok(())
}

/// The LV name of a CSI volume (see the module head).
pub fn lv_name_for(volume: &str) -> String {
    if is_plain(volume) {
        return volume.to_owned();
    }
    let digest = Sha256::digest(volume.as_bytes());
    let mut name = String::with_capacity(HASHED_PREFIX.len() + 40);
    name.push_str(HASHED_PREFIX);
    for byte in &digest[..20] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

fn is_plain(volume: &str) -> bool {
    let bytes = volume.as_bytes();
    let inner_ok =
        |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-';
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_PLAIN_LV_NAME
        && bytes.iter().all(inner_ok)
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
        && !volume.contains("snapshot")
        && !volume.contains("pvmove")
}

/// Escapes a value for a tag: `[A-Za-z0-9.-]` as is, every other byte as `_XX`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// Reverses [`escape`]; `None` if `s` is not a valid escaped string.
pub fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The volume tag of a CSI volume name.
pub fn volume_tag(volume: &str) -> Result<String> {
    checked(format!("{VOLUME_TAG_PREFIX}{}", escape(volume)))
}

/// The PVC tag of a PVC reference.
pub fn pvc_tag(pvc: &PvcRef) -> Result<String> {
    checked(format!(
        "{PVC_TAG_PREFIX}{}/{}/{}",
        escape(&pvc.namespace),
        escape(&pvc.name),
        escape(&pvc.uid)
    ))
}

fn checked(tag: String) -> Result<String> {
    if tag.len() > MAX_TAG_LEN {
        return Err(LvmError::InvalidArgument(format!(
            "tag of {} bytes exceeds {MAX_TAG_LEN}",
            tag.len()
        )));
    }
    debug_assert!(is_legal_tag(&tag), "illegal tag {tag}");
    Ok(tag)
}

/// Whether lvm2 accepts `tag` (characters `[A-Za-z0-9_+.-/=!:&#]`, not starting with `-`).
pub fn is_legal_tag(tag: &str) -> bool {
    !tag.is_empty()
        && !tag.starts_with('-')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-/=!:&#".contains(&b))
}

/// The volume name held in a set of tags.
pub fn volume_from_tags<'a>(tags: impl IntoIterator<Item = &'a str>) -> Option<String> {
    tags.into_iter()
        .find_map(|t| t.strip_prefix(VOLUME_TAG_PREFIX))
        .and_then(unescape)
}

/// The PVC reference held in a set of tags.
pub fn pvc_from_tags<'a>(tags: impl IntoIterator<Item = &'a str>) -> Option<PvcRef> {
    let value = tags
        .into_iter()
        .find_map(|t| t.strip_prefix(PVC_TAG_PREFIX))?;
    let mut parts = value.split('/');
    let (ns, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(PvcRef {
        namespace: unescape(ns)?,
        name: unescape(name)?,
        uid: unescape(uid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_tag_is_legal_for_lvm() {
        assert!(is_legal_tag(OWNER_TAG));
    }

    #[test]
    fn plain_volume_names_are_used_as_lv_names() {
        let v = "pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(lv_name_for(v), v);
        assert_eq!(lv_name_for("a"), "a");
    }

    #[test]
    fn other_volume_names_are_hashed_deterministically() {
        for v in [
            "Upper-Case",
            "with_underscore",
            "-leading-dash",
            "trailing.",
            "has/slash",
            "my-snapshot-1",
            "pvmove0",
            "ünïcode",
            &"x".repeat(49),
            &"y".repeat(128),
        ] {
            let lv = lv_name_for(v);
            assert!(lv.starts_with("strata_"), "{v} -> {lv}");
            assert_eq!(lv.len(), 47);
            assert!(lv.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert_eq!(lv, lv_name_for(v), "deterministic");
        }
        assert_ne!(lv_name_for("A"), lv_name_for("B"));
        // Stable across versions: the mapping is part of the on-disk format.
        assert_eq!(
            lv_name_for("Upper-Case"),
            format!("strata_{}", &hex_sha256("Upper-Case")[..40])
        );
    }

    fn hex_sha256(s: &str) -> String {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn tags_round_trip_any_name_and_stay_legal() {
        for v in [
            "pvc-1",
            "a_b",
            "we!rd &name#with:all/the=chars+",
            "ünïcode ✓",
            &"z".repeat(256),
        ] {
            let tag = volume_tag(v).unwrap();
            assert!(is_legal_tag(&tag), "{tag}");
            assert!(
                !tag[VOLUME_TAG_PREFIX.len()..].contains(['&', '|', '!', '#', ',', ':', '+', '/'])
            );
            assert_eq!(
                volume_from_tags([OWNER_TAG, tag.as_str()]),
                Some(v.to_owned())
            );
        }
        let pvc = PvcRef {
            namespace: "ns".into(),
            name: "data/0".into(),
            uid: "0f1e2d3c-4b5a".into(),
        };
        let tag = pvc_tag(&pvc).unwrap();
        assert_eq!(tag, "strata.io/pvc=ns/data_2F0/0f1e2d3c-4b5a");
        assert_eq!(pvc_from_tags([tag.as_str()]), Some(pvc));
    }

    #[test]
    fn rejects_bad_names_and_oversized_tags() {
        assert!(matches!(
            validate_volume_name(""),
            Err(LvmError::InvalidArgument(_))
        ));
        assert!(validate_volume_name(&"a".repeat(257)).is_err());
        // 300 multi-byte characters escape to far more than MAX_TAG_LEN.
        assert!(matches!(
            volume_tag(&"é".repeat(300)),
            Err(LvmError::InvalidArgument(_))
        ));
        assert_eq!(unescape("_4"), None);
        assert_eq!(unescape("_ZZ"), None);
        assert!(!is_legal_tag("has space"));
        assert!(!is_legal_tag("-dash"));
    }
}
