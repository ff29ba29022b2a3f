//! CSI volume names → LogicalVolume object names. A CSI name is any printable string the CO
//! chooses; a Kubernetes object name must be a DNS-1123 subdomain. The mapping is deterministic
//! (a retried CreateVolume finds its object), keeps the names external-provisioner gives
//! (`pvc-<uid>`) and every other lowercase-safe name as they are, and turns anything else into
//! `strata-<128-bit hash>`; the original is kept in the annotation [`ANNOTATION_CSI_NAME`].
//! The volume id handed back to the CO is the object name, and the mapping of an object name is
//! the name itself, so Delete/Expand/Validate with that id find the same object.

use sha2::{Digest, Sha256};

/// Annotation on a LogicalVolume holding the CSI volume name it was created for.
pub const ANNOTATION_CSI_NAME: &str = "strata.io/csi-name";

/// Longest name kept as is: one DNS label, also a valid LVM LV name.
const MAX_KEPT: usize = 63;
/// Prefix of hashed names.
const HASHED_PREFIX: &str = "strata-";

/// Whether `name` is a DNS-1123 subdomain (lowercase alphanumerics, `-` and `.`, each
/// dot-separated label starting and ending with an alphanumeric, at most 253 characters).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// The LogicalVolume name for a CSI volume name (see the module documentation).
pub fn object_name(csi_name: &str) -> String {
    if csi_name.len() <= MAX_KEPT && is_dns1123_subdomain(csi_name) {
        return csi_name.to_owned();
    }
    let digest = Sha256::digest(csi_name.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{HASHED_PREFIX}{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioner_names_and_safe_names_are_kept() {
        for name in [
            "pvc-5b9f1c2e-8d4a-4c1b-9f00-0123456789ab",
            "data-0",
            "a.b-c",
        ] {
            assert_eq!(object_name(name), name);
        }
    }

    #[test]
    fn other_names_are_hashed_deterministically_and_distinctly() {
        let upper = object_name("PVC-Upper");
        assert!(upper.starts_with("strata-"), "{upper}");
        assert_eq!(upper.len(), "strata-".len() + 32);
        assert!(is_dns1123_subdomain(&upper));
        assert_eq!(object_name("PVC-Upper"), upper, "deterministic");
        // Case-folding would collide these; hashing keeps them apart.
        assert_ne!(object_name("pvc-Upper"), object_name("pvc-uPPER"));
        assert_ne!(object_name("pvc-upper"), object_name("pvc-Upper"));
        for bad in [
            "pvc_1",
            "-x",
            "x-",
            "a..b",
            "pvc-A?x",
            "ünï",
            &"a".repeat(64),
        ] {
            let mapped = object_name(bad);
            assert!(is_dns1123_subdomain(&mapped), "{bad} → {mapped}");
            assert_ne!(mapped, bad);
        }
    }

    #[test]
    fn the_mapping_of_an_object_name_is_itself() {
        for name in ["pvc-1", "Volume_ONE", "x?y"] {
            let once = object_name(name);
            assert_eq!(object_name(&once), once);
        }
    }

    #[test]
    fn subdomain_rule() {
        assert!(is_dns1123_subdomain("a"));
        assert!(is_dns1123_subdomain("a-1.b"));
        assert!(!is_dns1123_subdomain(""));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_subdomain("a."));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
    }
}
