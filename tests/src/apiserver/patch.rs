//! PATCH bodies by content type. JSON merge patch (RFC 7386) and JSON patch (RFC 6902) are applied
//! with the `json-patch` crate. Strategic merge patch is treated as a merge patch, and server-side
//! apply as a merge of the applied fields into the live object: both honest simplifications
//! (lists are replaced whole, never merged by key; no field ownership, so no apply conflicts).
//! One list is merged by key, as its CRD declares: NodeStorage `status.conditions`
//! (`x-kubernetes-list-type: map` on `type`), so the agent's and the controller's applies keep
//! each other's condition types; an entry is never removed by leaving it out of an apply.

use serde_json::Value;

use super::resources::ResourceType;
use super::status::ApiError;

/// The patch flavours Kubernetes accepts, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

pub const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, \
                            application/strategic-merge-patch+json, application/apply-patch+yaml";

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        match mime {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            _ => Err(ApiError::UnsupportedMediaType(ACCEPTED.to_string())),
        }
    }

    /// Parses the body: YAML (a superset of JSON) for apply, JSON for the others.
    pub fn parse_body(self, body: &[u8]) -> Result<Value, ApiError> {
        let parsed = match self {
            Self::Apply => serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string()),
            _ => serde_json::from_slice::<Value>(body).map_err(|e| e.to_string()),
        };
        parsed.map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))
    }
}

/// Applies `patch` of `kind` to a copy of `live` (an object of type `rt` named `name`, for
/// error messages) and returns the result.
pub fn apply(
    kind: PatchKind,
    live: &Value,
    patch: &Value,
    rt: &ResourceType,
    name: &str,
) -> Result<Value, ApiError> {
    let mut out = live.clone();
    match kind {
        PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "patch body must be a JSON object".into(),
                ));
            }
            let keyed = kind == PatchKind::Apply && rt.plural == "nodestorages";
            let conditions = |v: &Value| v.pointer("/status/conditions").cloned();
            let live_conditions = conditions(&out).filter(|_| keyed);
            json_patch::merge(&mut out, patch);
            if let (Some(Value::Array(mut merged)), Some(Value::Array(applied))) =
                (live_conditions, conditions(patch))
            {
                for entry in applied {
                    let key = entry.get("type").cloned();
                    match merged.iter_mut().find(|c| c.get("type") == key.as_ref()) {
                        Some(slot) => *slot = entry,
                        None => merged.push(entry),
                    }
                }
                if let Some(slot) = out.pointer_mut("/status/conditions") {
                    *slot = Value::Array(merged);
                }
            }
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &ops)
                .map_err(|e| ApiError::invalid(rt, name, e.to_string()))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(kind: PatchKind, live: &Value, patch: &Value) -> Result<Value, ApiError> {
        let rt = ResourceType::new("strata.io", "v1alpha1", "logicalvolumes", "LogicalVolume");
        super::apply(kind, live, patch, &rt, "lv")
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchKind::Apply
        );
        assert_eq!(
            PatchKind::from_content_type("application/json")
                .unwrap_err()
                .code(),
            415
        );
    }

    #[test]
    fn merge_sets_and_removes_fields() {
        let live = json!({"spec": {"a": 1, "b": 2}, "metadata": {"labels": {"x": "1"}}});
        let out = apply(
            PatchKind::Merge,
            &live,
            &json!({"spec": {"b": null, "c": 3}}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"spec": {"a": 1, "c": 3}, "metadata": {"labels": {"x": "1"}}})
        );
    }

    #[test]
    fn json_patch_ops_and_failed_test() {
        let live = json!({"metadata": {"finalizers": ["strata.io/lv"]}, "spec": {"n": 1}});
        let out = apply(
            PatchKind::Json,
            &live,
            &json!([{"op": "remove", "path": "/metadata/finalizers/0"},
                    {"op": "replace", "path": "/spec/n", "value": 2}]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": []}, "spec": {"n": 2}})
        );
        let err = apply(
            PatchKind::Json,
            &live,
            &json!([{"op": "test", "path": "/spec/n", "value": 5}]),
        )
        .unwrap_err();
        assert_eq!(err.code(), 422);
        assert_eq!(
            apply(PatchKind::Json, &live, &json!({"op": "x"}))
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn apply_body_may_be_yaml_and_lists_are_replaced() {
        let body = PatchKind::Apply
            .parse_body(b"status:\n  conditions:\n  - type: Ready\n")
            .unwrap();
        let live = json!({"status": {"conditions": [{"type": "Old"}, {"type": "Other"}], "p": 1}});
        let out = apply(PatchKind::Apply, &live, &body).unwrap();
        assert_eq!(
            out,
            json!({"status": {"conditions": [{"type": "Ready"}], "p": 1}})
        );
        assert_eq!(PatchKind::Merge.parse_body(b"{").unwrap_err().code(), 400);
    }

    #[test]
    fn apply_merges_node_storage_conditions_by_type() {
        let rt = ResourceType::new("strata.io", "v1alpha1", "nodestorages", "NodeStorage");
        let live = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Stale", "status": "True"}]}});
        let body = json!({"status": {"conditions": [{"type": "Stale", "status": "False"}]}});
        let out = super::apply(PatchKind::Apply, &live, &body, &rt, "n").unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "Stale", "status": "False"}])
        );
        // A merge patch still replaces the list.
        let out = super::apply(PatchKind::Merge, &live, &body, &rt, "n").unwrap();
        assert_eq!(out["status"]["conditions"], body["status"]["conditions"]);
    }
}
