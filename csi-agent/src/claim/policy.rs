//! The claim policy: `csi_api::crd::NodeStorageSpec` (Kubernetes passes the NodeStorage spec,
//! standalone mode builds one from flags) compiled once: slot globs (`glob` crate), claim mode,
//! per-slot media overrides, per-class reserve. Exclude always wins over include.

use csi_api::crd::{ClaimMode, NodeStorageSpec};
use csi_api::names::DeviceClass;
use glob::Pattern;

/// A slot glob that does not compile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid slot pattern {pattern:?}: {message}")]
pub struct InvalidPattern {
    pub pattern: String,
    pub message: String,
}

/// Whether policy lets a slot be claimed; the reason when it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    Denied(String),
}

/// A compiled [`NodeStorageSpec`].
#[derive(Clone, Debug)]
pub struct Policy {
    spec: NodeStorageSpec,
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Policy {
    pub fn new(spec: &NodeStorageSpec) -> Result<Policy, InvalidPattern> {
        let compile = |pats: &[String]| -> Result<Vec<Pattern>, InvalidPattern> {
            pats.iter()
                .map(|p| {
                    Pattern::new(p).map_err(|e| InvalidPattern {
                        pattern: p.clone(),
                        message: e.msg.to_owned(),
                    })
                })
                .collect()
        };
        Ok(Policy {
            include: compile(&spec.include)?,
            exclude: compile(&spec.exclude)?,
            spec: spec.clone(),
        })
    }

    pub fn spec(&self) -> &NodeStorageSpec {
        &self.spec
    }

    /// Whether `slot` may be claimed: not excluded; in `manual` mode matched by `include`; in
    /// `auto` mode matched by `include` when it is not empty.
    pub fn admits(&self, slot: &str) -> Admission {
        if let Some(p) = self.exclude.iter().find(|p| p.matches(slot)) {
            return Admission::Denied(format!("excluded by policy (exclude {:?})", p.as_str()));
        }
        let included = self.include.iter().any(|p| p.matches(slot));
        match self.spec.claim_mode {
            ClaimMode::Manual if !included => Admission::Denied(
                "not claimed: claim mode is manual and no include pattern matches".to_owned(),
            ),
            ClaimMode::Auto if !self.include.is_empty() && !included => {
                Admission::Denied("not claimed: no include pattern matches".to_owned())
            }
            _ => Admission::Allowed,
        }
    }

    /// The media class of a slot: the override when the spec names one, else what was detected.
    pub fn media(&self, slot: &str, detected: DeviceClass) -> DeviceClass {
        self.spec
            .media_overrides
            .get(slot)
            .copied()
            .unwrap_or(detected)
    }

    /// Bytes of `class` kept back from allocation.
    pub fn reserved(&self, class: DeviceClass) -> u64 {
        self.spec.reserved_bytes.get(&class).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: ClaimMode, include: &[&str], exclude: &[&str]) -> NodeStorageSpec {
        NodeStorageSpec {
            claim_mode: mode,
            include: include.iter().map(|s| (*s).to_owned()).collect(),
            exclude: exclude.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    const NVME: &str = "pci-0000:00:04.0-nvme-1";
    const SATA: &str = "pci-0000:00:1f.2-ata-1";

    #[test]
    fn auto_admits_everything_unless_excluded_or_include_narrows() {
        let p = Policy::new(&spec(ClaimMode::Auto, &[], &[])).unwrap();
        assert_eq!(p.admits(NVME), Admission::Allowed);
        let p = Policy::new(&spec(ClaimMode::Auto, &[], &["pci-*-ata-*"])).unwrap();
        assert_eq!(p.admits(NVME), Admission::Allowed);
        assert_eq!(
            p.admits(SATA),
            Admission::Denied("excluded by policy (exclude \"pci-*-ata-*\")".into())
        );
        let p = Policy::new(&spec(ClaimMode::Auto, &["*-nvme-*"], &[])).unwrap();
        assert_eq!(p.admits(NVME), Admission::Allowed);
        assert!(matches!(p.admits(SATA), Admission::Denied(_)));
    }

    #[test]
    fn manual_admits_only_included_and_exclude_wins() {
        let p = Policy::new(&spec(ClaimMode::Manual, &[], &[])).unwrap();
        assert!(matches!(p.admits(NVME), Admission::Denied(m) if m.contains("manual")));
        let p = Policy::new(&spec(
            ClaimMode::Manual,
            &["pci-0000:00:0[45].0-*"],
            &[NVME],
        ))
        .unwrap();
        assert!(matches!(p.admits(NVME), Admission::Denied(m) if m.contains("excluded")));
        assert_eq!(p.admits("pci-0000:00:05.0-nvme-1"), Admission::Allowed);
        assert!(matches!(p.admits(SATA), Admission::Denied(_)));
    }

    #[test]
    fn overrides_reserve_and_bad_patterns() {
        let mut s = spec(ClaimMode::Auto, &[], &[]);
        s.media_overrides.insert(SATA.into(), DeviceClass::Hdd);
        s.reserved_bytes.insert(DeviceClass::Nvme, 1 << 30);
        let p = Policy::new(&s).unwrap();
        assert_eq!(p.media(SATA, DeviceClass::Ssd), DeviceClass::Hdd);
        assert_eq!(p.media(NVME, DeviceClass::Nvme), DeviceClass::Nvme);
        assert_eq!(p.reserved(DeviceClass::Nvme), 1 << 30);
        assert_eq!(p.reserved(DeviceClass::Hdd), 0);
        let err = Policy::new(&spec(ClaimMode::Auto, &["pci-[", ""], &[])).unwrap_err();
        assert_eq!(err.pattern, "pci-[");
    }
}
