//! The kube-scheduler extender v1 wire format (`k8s.io/kube-scheduler/extender/v1`): Go structs
//! without JSON tags, so the field names are the Go names (`Pod`, `NodeNames`, `FailedNodes`,
//! `Host`, `Score`, ...). Only what the extender reads is decoded: the pod's identity and volumes,
//! and node names; full `Node` objects are kept as raw JSON and echoed back unchanged.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `ExtenderArgs`: the pod and its candidate nodes, as names (`nodeCacheCapable: true`) or as
/// full objects.
/// The node names borrow from the request body (no allocation per name) unless JSON escapes
/// force a copy.
#[derive(Debug, Deserialize)]
pub struct ExtenderArgs<'a> {
    #[serde(rename = "Pod", alias = "pod")]
    pub pod: Option<Pod>,
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default,
        borrow
    )]
    pub node_names: Option<Vec<NodeName<'a>>>,
}

/// A candidate's name, borrowed from the request body when it holds no JSON escape (always, for
/// a valid node name). serde's own `Cow` does not borrow inside an `Option<Vec<_>>` (it
/// allocates every name), hence this type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeName<'a>(pub Cow<'a, str>);

impl NodeName<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name was taken as it is from the body: a JSON string without escapes,
    /// which can be written back without escaping.
    pub fn is_verbatim(&self) -> bool {
        matches!(self.0, Cow::Borrowed(_))
    }
}

impl AsRef<str> for NodeName<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for NodeName<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> de::Visitor<'de> for Name {
            type Value = NodeName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a node name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(NodeName(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NodeName(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(NodeName(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// A `v1.NodeList` whose items are kept verbatim.
#[derive(Debug, Deserialize)]
pub struct NodeList {
    #[serde(default)]
    pub items: Vec<RawNode>,
}

/// One `v1.Node`: its name, and its JSON exactly as received.
#[derive(Debug)]
pub struct RawNode {
    pub name: String,
    pub raw: Box<RawValue>,
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default)]
            name: String,
        }
        #[derive(Deserialize)]
        struct NameOnly {
            metadata: Meta,
        }
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let only: NameOnly = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
        if only.metadata.name.is_empty() {
            return Err(de::Error::custom(
                "a node in Nodes.items has no metadata.name",
            ));
        }
        Ok(RawNode {
            name: only.metadata.name,
            raw,
        })
    }
}

/// The parts of a `v1.Pod` the extender needs.
#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct PodSpec {
    #[serde(default, deserialize_with = "null_as_default")]
    pub volumes: Vec<Volume>,
}

/// A pod volume; only claims and generic ephemeral volumes matter here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub persistent_volume_claim: Option<ClaimSource>,
    #[serde(default)]
    pub ephemeral: Option<EphemeralSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSource {
    #[serde(default)]
    pub claim_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralSource {
    #[serde(default)]
    pub volume_claim_template: Option<ClaimTemplate>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ClaimTemplate {
    #[serde(default)]
    pub spec: ClaimSpec,
}

/// The parts of a `PersistentVolumeClaimSpec` that size a volume.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpec {
    #[serde(default)]
    pub storage_class_name: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    /// `Block` or `Filesystem` (the default): a filesystem volume is sized to its fs minimum.
    #[serde(default)]
    pub volume_mode: Option<String>,
    /// A restore's or clone's source (`dataSource`), as in a PVC's spec.
    #[serde(default)]
    pub data_source: Option<k8s_openapi::api::core::v1::TypedLocalObjectReference>,
    /// The same as `dataSourceRef`, which wins over `dataSource` when both are set.
    #[serde(default)]
    pub data_source_ref: Option<k8s_openapi::api::core::v1::TypedObjectReference>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Resources {
    #[serde(default, deserialize_with = "null_as_default")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub limits: BTreeMap<String, String>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `ExtenderFilterResult`. Go decodes `null` maps and slices as empty, but an absent
/// `NodeNames` means "no node passed" to the scheduler, so it is always written in names mode.
#[derive(Debug, Default, Serialize)]
pub struct ExtenderFilterResult<'a> {
    #[serde(rename = "Nodes")]
    pub nodes: Option<NodeListOut<'a>>,
    #[serde(rename = "NodeNames")]
    pub node_names: Option<Vec<&'a str>>,
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: BTreeMap<&'a str, String>,
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: BTreeMap<&'a str, String>,
    #[serde(rename = "Error")]
    pub error: String,
}

/// The `v1.NodeList` answered when the scheduler sent full nodes.
#[derive(Debug, Serialize)]
pub struct NodeListOut<'a> {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: BTreeMap<String, String>,
    pub items: Vec<&'a RawValue>,
}

impl<'a> NodeListOut<'a> {
    pub fn new(items: Vec<&'a RawValue>) -> Self {
        NodeListOut {
            api_version: "v1",
            kind: "NodeList",
            metadata: BTreeMap::new(),
            items,
        }
    }
}

/// `HostPriority`; a `HostPriorityList` is a JSON array of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority {
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Score")]
    pub score: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_go_field_names_and_null_node_list() {
        let body = r#"{"Pod":{"metadata":{"name":"p","namespace":"ns","uid":"u"},
            "spec":{"volumes":[{"name":"d","persistentVolumeClaim":{"claimName":"c"}},
            {"name":"s","ephemeral":{"volumeClaimTemplate":{"spec":{"storageClassName":"x",
            "resources":{"requests":{"storage":"1Gi"}}}}}}]}},
            "Nodes":null,"NodeNames":["a","b"]}"#;
        let args: ExtenderArgs = serde_json::from_str(body).unwrap();
        assert!(args.nodes.is_none());
        let names = args.node_names.unwrap();
        assert_eq!(
            names.iter().map(NodeName::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(
            names.iter().all(NodeName::is_verbatim),
            "borrowed from the body"
        );
        let escaped: ExtenderArgs =
            serde_json::from_str(r#"{"Pod":{},"NodeNames":["a\"b","c"]}"#).unwrap();
        let names = escaped.node_names.unwrap();
        assert_eq!((names[0].as_str(), names[0].is_verbatim()), ("a\"b", false));
        assert!(names[1].is_verbatim());
        let pod = args.pod.unwrap();
        assert_eq!(pod.metadata.namespace, "ns");
        assert_eq!(
            pod.spec.volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "c"
        );
        let template = pod.spec.volumes[1].ephemeral.as_ref().unwrap();
        let spec = &template.volume_claim_template.as_ref().unwrap().spec;
        assert_eq!(spec.resources.requests["storage"], "1Gi");
    }

    #[test]
    fn full_nodes_are_kept_verbatim_and_need_a_name() {
        let body = r#"{"Pod":{},"Nodes":{"metadata":{},"items":[
            {"metadata":{"name":"n1","labels":{"a":"b"}},"status":{"x":[1,2]}}]}}"#;
        let args: ExtenderArgs = serde_json::from_str(body).unwrap();
        let items = args.nodes.unwrap().items;
        assert_eq!(items[0].name, "n1");
        assert!(items[0].raw.get().contains(r#""labels":{"a":"b"}"#));
        let nameless = r#"{"Pod":{},"Nodes":{"items":[{"metadata":{}}]}}"#;
        assert!(serde_json::from_str::<ExtenderArgs>(nameless).is_err());
    }

    #[test]
    fn filter_result_uses_go_names_and_always_writes_node_names() {
        let result = ExtenderFilterResult {
            node_names: Some(vec![]),
            ..Default::default()
        };
        let json = serde_json::to_string(&result).unwrap();
        assert_eq!(
            json,
            r#"{"Nodes":null,"NodeNames":[],"FailedNodes":{},"FailedAndUnresolvableNodes":{},"Error":""}"#
        );
        let hp = serde_json::to_string(&[HostPriority {
            host: "a".into(),
            score: 3,
        }])
        .unwrap();
        assert_eq!(hp, r#"[{"Host":"a","Score":3}]"#);
    }
}
