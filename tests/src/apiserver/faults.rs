//! Fault injection: "fail the next N requests whose path starts with P (and whose method is M)
//! with HTTP code C", answered with a Kubernetes Status body. Set in process through
//! `FakeApiServer::inject` or over HTTP with `POST /_fake/faults`.

use serde::{Deserialize, Serialize};

use super::status::ApiError;

/// One injected failure rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// HTTP method to match (`GET`, `PATCH`, ...); any method if absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Request path prefix to match, e.g. `/apis/strata.io/v1alpha1/logicalvolumes`.
    pub path_prefix: String,
    /// Only requests whose query string contains this (e.g. `watch=true`); any if absent.
    #[serde(default)]
    pub query_contains: Option<String>,
    /// HTTP code to answer with (500, 503, 429, ...).
    pub code: u16,
    /// How many matching requests fail before the rule is used up.
    pub count: u32,
}

impl Fault {
    pub fn new(path_prefix: &str, code: u16, count: u32) -> Self {
        Self {
            method: None,
            path_prefix: path_prefix.into(),
            query_contains: None,
            code,
            count,
        }
    }

    pub fn query_contains(mut self, text: &str) -> Self {
        self.query_contains = Some(text.into());
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }
}

/// The active rules, first match wins.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Vec<Fault>,
}

impl Faults {
    pub fn add(&mut self, fault: Fault) {
        if fault.count > 0 {
            self.rules.push(fault);
        }
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The error for this request if a rule matches (using one of its counts).
    pub fn take(&mut self, method: &str, path: &str, query: &str) -> Option<ApiError> {
        let i = self.rules.iter().position(|f| {
            path.starts_with(&f.path_prefix)
                && f.query_contains
                    .as_deref()
                    .is_none_or(|q| query.contains(q))
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        let rule = &mut self.rules[i];
        rule.count -= 1;
        let code = rule.code;
        if rule.count == 0 {
            self.rules.remove(i);
        }
        Some(ApiError::Injected {
            code,
            message: format!("{method} {path}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_prefix_and_method_and_run_out() {
        let mut f = Faults::default();
        f.add(Fault::new("/apis/strata.io", 503, 2).method("patch"));
        assert!(
            f.take("GET", "/apis/strata.io/v1alpha1/logicalvolumes", "")
                .is_none()
        );
        assert!(f.take("PATCH", "/api/v1/nodes/n1", "").is_none());
        let e = f
            .take("PATCH", "/apis/strata.io/v1alpha1/logicalvolumes/a", "")
            .unwrap();
        assert_eq!(e.code(), 503);
        assert!(f.take("PATCH", "/apis/strata.io/x", "").is_some());
        assert!(f.take("PATCH", "/apis/strata.io/x", "").is_none());
        f.add(Fault::new("/", 500, 0));
        assert!(f.take("GET", "/api", "").is_none());
        f.add(Fault::new("/api", 500, 1).query_contains("watch=true"));
        assert!(f.take("GET", "/api/v1/nodes", "limit=5").is_none());
        assert!(f.take("GET", "/api/v1/nodes", "watch=true&x=1").is_some());
    }

    #[test]
    fn json_shape() {
        let f: Fault =
            serde_json::from_str(r#"{"pathPrefix":"/api/v1","code":500,"count":1}"#).unwrap();
        assert_eq!(f, Fault::new("/api/v1", 500, 1));
    }
}
