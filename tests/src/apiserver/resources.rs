//! The resource types the fake API server serves (group, version, plural, kind, scope, whether
//! `status` is a subresource, which field selectors are allowed) and the discovery documents
//! (`/api`, `/api/v1`, `/apis`, `/apis/{group}`, `/apis/{group}/{version}`) built from them.

use serde_json::{Value, json};

/// One served resource type. Objects of it are stored as JSON whatever their schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: String,
    pub version: String,
    /// Lower-case plural, as in the URL (`logicalvolumes`).
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// `status` is only written through `/status`; the main resource ignores it.
    pub status_subresource: bool,
    /// With a status subresource, a create still keeps the given `status` (nodes: the kubelet
    /// registers a Node with its status); otherwise it is dropped as for custom resources.
    pub keeps_status_on_create: bool,
    /// Field selector keys besides `metadata.name` and `metadata.namespace`.
    pub extra_field_selectors: Vec<String>,
}

impl ResourceType {
    pub fn new(group: &str, version: &str, plural: &str, kind: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced: false,
            status_subresource: false,
            keeps_status_on_create: false,
            extra_field_selectors: Vec::new(),
        }
    }

    pub fn namespaced(mut self) -> Self {
        self.namespaced = true;
        self
    }

    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    pub fn keeping_status_on_create(mut self) -> Self {
        self.keeps_status_on_create = true;
        self
    }

    pub fn field_selectors(mut self, keys: &[&str]) -> Self {
        self.extra_field_selectors = keys.iter().map(|k| k.to_string()).collect();
        self
    }

    /// `apiVersion` of the objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or the plural alone for the core group), as in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn api_resources(&self) -> Vec<Value> {
        let verbs = json!([
            "create", "delete", "get", "list", "patch", "update", "watch"
        ]);
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.kind.to_lowercase(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        })];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// The set of served resource types.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    /// What Strata's binaries touch: core objects, storage, leases, events and the two CRDs.
    fn default() -> Self {
        let types = vec![
            ResourceType::new("", "v1", "namespaces", "Namespace").with_status(),
            ResourceType::new("", "v1", "nodes", "Node")
                .with_status()
                .keeping_status_on_create(),
            ResourceType::new("", "v1", "persistentvolumes", "PersistentVolume").with_status(),
            ResourceType::new("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
                .namespaced()
                .with_status(),
            ResourceType::new("", "v1", "pods", "Pod")
                .namespaced()
                .with_status()
                .field_selectors(&["spec.nodeName", "spec.schedulerName", "status.phase"]),
            ResourceType::new("", "v1", "events", "Event")
                .namespaced()
                .field_selectors(&[
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "reason",
                    "type",
                ]),
            ResourceType::new("", "v1", "configmaps", "ConfigMap").namespaced(),
            ResourceType::new("events.k8s.io", "v1", "events", "Event")
                .namespaced()
                .field_selectors(&["regarding.kind", "regarding.name", "reason", "type"]),
            ResourceType::new("storage.k8s.io", "v1", "storageclasses", "StorageClass"),
            ResourceType::new("storage.k8s.io", "v1", "csinodes", "CSINode"),
            ResourceType::new("storage.k8s.io", "v1", "csidrivers", "CSIDriver"),
            ResourceType::new(
                "storage.k8s.io",
                "v1",
                "volumeattachments",
                "VolumeAttachment",
            )
            .with_status(),
            ResourceType::new("coordination.k8s.io", "v1", "leases", "Lease").namespaced(),
            ResourceType::new("strata.io", "v1alpha1", "nodestorages", "NodeStorage").with_status(),
            ResourceType::new("strata.io", "v1alpha1", "logicalvolumes", "LogicalVolume")
                .with_status(),
        ];
        Self { types }
    }
}

impl Registry {
    /// Adds (or replaces) a resource type.
    pub fn add(&mut self, rt: ResourceType) {
        self.types
            .retain(|t| !(t.group == rt.group && t.version == rt.version && t.plural == rt.plural));
        self.types.push(rt);
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type of an object by its `apiVersion` and `kind` (for seeding).
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// `GET /api`.
    pub fn core_versions(&self, server_address: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        })
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`; `None` if nothing is served there.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(ResourceType::api_resources)
            .collect();
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
    }

    fn group_doc(&self, group: &str) -> Option<Value> {
        let mut versions: Vec<&str> = Vec::new();
        for t in self.types.iter().filter(|t| t.group == group) {
            if !versions.contains(&t.version.as_str()) {
                versions.push(&t.version);
            }
        }
        let first = versions.first()?;
        let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
        Some(json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
            "preferredVersion": gv(first),
        }))
    }

    /// `GET /apis/{group}`.
    pub fn group(&self, group: &str) -> Option<Value> {
        if group.is_empty() {
            None
        } else {
            self.group_doc(group)
        }
    }

    /// `GET /apis`.
    pub fn groups(&self) -> Value {
        let mut names: Vec<&str> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            if !names.contains(&t.group.as_str()) {
                names.push(&t.group);
            }
        }
        let groups: Vec<Value> = names.iter().filter_map(|g| self.group_doc(g)).collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_strata_resources() {
        let reg = Registry::default();
        let lv = reg.find("strata.io", "v1alpha1", "logicalvolumes").unwrap();
        assert!(!lv.namespaced && lv.status_subresource);
        assert_eq!(lv.api_version(), "strata.io/v1alpha1");
        assert_eq!(lv.qualified(), "logicalvolumes.strata.io");
        let lease = reg.find_kind("coordination.k8s.io/v1", "Lease").unwrap();
        assert!(lease.namespaced && !lease.status_subresource);
        assert!(reg.find("", "v1", "secrets").is_none());
    }

    #[test]
    fn discovery_lists_status_subresource_and_groups() {
        let reg = Registry::default();
        let list = reg.resource_list("strata.io", "v1alpha1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"nodestorages/status"));
        assert!(reg.resource_list("strata.io", "v1").is_none());
        let groups = reg.groups();
        let gnames: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            gnames,
            [
                "events.k8s.io",
                "storage.k8s.io",
                "coordination.k8s.io",
                "strata.io"
            ]
        );
        assert_eq!(
            reg.group("strata.io").unwrap()["preferredVersion"]["version"],
            "v1alpha1"
        );
    }

    #[test]
    fn added_types_replace_same_name() {
        let mut reg = Registry::default();
        reg.add(ResourceType::new("", "v1", "configmaps", "ConfigMap").with_status());
        assert!(reg.find("", "v1", "configmaps").unwrap().status_subresource);
        reg.add(ResourceType::new("", "v1", "secrets", "Secret").namespaced());
        assert!(reg.find("", "v1", "secrets").is_some());
    }
}
