//! Label selectors (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`, joined by
//! commas, all terms ANDed) and field selectors (`path=v`, `path==v`, `path!=v` over a dotted
//! path, limited to the keys the resource type allows), matched against JSON objects.

use serde_json::Value;

use super::resources::ResourceType;
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<LabelTerm>,
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, ApiError> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(bad(s));
        }
    }
    if depth != 0 {
        return Err(bad(s));
    }
    out.push(&s[start..]);
    Ok(out
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect())
}

fn bad(s: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unable to parse requirement: invalid selector: '{s}'"
    ))
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_set(key: &str, rest: &str, whole: &str) -> Result<(String, Vec<String>), ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(whole))?;
    let values = inner.split(',').map(|v| v.trim().to_string()).collect();
    Ok((key.to_string(), values))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for t in split_terms(s)? {
            let term = if let Some(k) = t.strip_prefix('!') {
                LabelTerm::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = t.split_once("!=") {
                LabelTerm::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                LabelTerm::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                let (k, vs) = parse_set(k.trim(), rest, t)?;
                LabelTerm::NotIn(k, vs)
            } else if let Some((k, rest)) = t.split_once(" in ") {
                let (k, vs) = parse_set(k.trim(), rest, t)?;
                LabelTerm::In(k, vs)
            } else {
                LabelTerm::Exists(t.to_string())
            };
            let key = match &term {
                LabelTerm::Eq(k, _)
                | LabelTerm::NotEq(k, _)
                | LabelTerm::In(k, _)
                | LabelTerm::NotIn(k, _)
                | LabelTerm::Exists(k)
                | LabelTerm::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(bad(s));
            }
            terms.push(term);
        }
        Ok(Self { terms })
    }

    /// Whether the object's `metadata.labels` satisfy every term.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.terms.iter().all(|t| match t {
            LabelTerm::Eq(k, v) => get(k) == Some(v),
            LabelTerm::NotEq(k, v) => get(k) != Some(v),
            LabelTerm::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelTerm::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed `fieldSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (dotted path, value, equal?)
    terms: Vec<(String, String, bool)>,
}

impl FieldSelector {
    pub fn parse(s: &str, rt: &ResourceType) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, value, eq) = if let Some((k, v)) = t.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (k, v, true)
            } else {
                return Err(ApiError::BadRequest(format!("invalid selector: '{s}'")));
            };
            let path = path.trim();
            let allowed = path == "metadata.name"
                || (path == "metadata.namespace" && rt.namespaced)
                || rt.extra_field_selectors.iter().any(|k| k == path);
            if !allowed {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {path}"
                )));
            }
            terms.push((path.to_string(), value.trim().to_string(), eq));
        }
        Ok(Self { terms })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(path, value, eq)| {
            let found = path.split('.').try_fold(obj, |v, k| v.get(k));
            let actual = match found {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::Registry;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn equality_and_inequality() {
        let o = obj(json!({"strata.io/node": "n1", "strata.io/device-class": "nvme"}));
        assert!(
            LabelSelector::parse("strata.io/node=n1")
                .unwrap()
                .matches(&o)
        );
        assert!(
            LabelSelector::parse("strata.io/node==n1,strata.io/device-class=nvme")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !LabelSelector::parse("strata.io/node=n2")
                .unwrap()
                .matches(&o)
        );
        assert!(
            LabelSelector::parse("strata.io/node!=n2")
                .unwrap()
                .matches(&o)
        );
        assert!(LabelSelector::parse("missing!=x").unwrap().matches(&o));
    }

    #[test]
    fn sets_and_existence() {
        let o = obj(json!({"tier": "ssd"}));
        assert!(
            LabelSelector::parse("tier in (nvme, ssd)")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !LabelSelector::parse("tier notin (nvme,ssd)")
                .unwrap()
                .matches(&o)
        );
        assert!(LabelSelector::parse("other notin (a)").unwrap().matches(&o));
        assert!(!LabelSelector::parse("other in (a)").unwrap().matches(&o));
        assert!(LabelSelector::parse("tier").unwrap().matches(&o));
        assert!(!LabelSelector::parse("!tier").unwrap().matches(&o));
        assert!(
            LabelSelector::parse("tier in (ssd),!gone")
                .unwrap()
                .matches(&o)
        );
        assert!(
            LabelSelector::parse("")
                .unwrap()
                .matches(&json!({"metadata": {}}))
        );
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for s in ["a in (b", "a in b)", "a in b", "=x", "a b"] {
            let e = LabelSelector::parse(s).unwrap_err();
            assert_eq!(e.code(), 400, "{s}");
        }
    }

    #[test]
    fn field_selectors_limited_per_type() {
        let reg = Registry::default();
        let pods = reg.find("", "v1", "pods").unwrap();
        let lvs = reg.find("strata.io", "v1alpha1", "logicalvolumes").unwrap();
        let o = obj(json!({}));
        assert!(
            FieldSelector::parse("metadata.name=a", lvs)
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=a", lvs)
                .unwrap()
                .matches(&o)
        );
        assert!(
            FieldSelector::parse("spec.nodeName=n1,metadata.namespace=ns", pods)
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName=n2", pods)
                .unwrap()
                .matches(&o)
        );
        let e = FieldSelector::parse("spec.nodeName=n1", lvs).unwrap_err();
        assert_eq!(e.to_string(), "field label not supported: spec.nodeName");
        assert!(FieldSelector::parse("metadata.namespace=x", lvs).is_err());
    }
}
