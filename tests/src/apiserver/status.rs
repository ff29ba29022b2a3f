//! The fake API server's error type and the `Status` bodies Kubernetes answers failures with
//! (`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":..,"code":..,"details":..}`),
//! shaped as the real server shapes them so that kube-rs parses them into `kube::Error::Api`.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// A failed request, with the HTTP code and `reason` Kubernetes uses for it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{qualified} \"{name}\" not found")]
    NotFound {
        qualified: String,
        group: String,
        plural: String,
        name: String,
    },
    #[error("{qualified} \"{name}\" already exists")]
    AlreadyExists {
        qualified: String,
        group: String,
        plural: String,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {qualified} \"{name}\": {reason_text}")]
    Conflict {
        qualified: String,
        group: String,
        plural: String,
        name: String,
        reason_text: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{qualified} \"{name}\" is invalid: {detail}")]
    Invalid {
        qualified: String,
        group: String,
        plural: String,
        name: String,
        detail: String,
    },
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the server could not find the requested resource")]
    UnknownResource,
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// An error injected through the fault hooks, with the HTTP code asked for.
    #[error("injected fault: {message}")]
    Injected { code: u16, message: String },
}

impl ApiError {
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::NotFound {
            qualified: rt.qualified(),
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            name: name.to_string(),
        }
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::AlreadyExists {
            qualified: rt.qualified(),
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            name: name.to_string(),
        }
    }

    /// The optimistic-concurrency conflict of a write carrying a stale `resourceVersion`.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::conflict_because(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn conflict_because(rt: &ResourceType, name: &str, reason_text: &str) -> Self {
        Self::Conflict {
            qualified: rt.qualified(),
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            name: name.to_string(),
            reason_text: reason_text.to_string(),
        }
    }

    pub fn invalid(rt: &ResourceType, name: &str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            qualified: rt.qualified(),
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            name: name.to_string(),
            detail: detail.into(),
        }
    }

    /// The HTTP status code of this failure.
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound { .. } | Self::UnknownResource => 404,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::BadRequest(_) => 400,
            Self::Invalid { .. } => 422,
            Self::UnsupportedMediaType(_) => 415,
            Self::MethodNotAllowed => 405,
            Self::Expired { .. } => 410,
            Self::Injected { code, .. } => *code,
        }
    }

    /// The `reason` field of the Status body (Kubernetes' `metav1.StatusReason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } | Self::UnknownResource => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::BadRequest(_) => "BadRequest",
            Self::Invalid { .. } => "Invalid",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::Expired { .. } => "Expired",
            Self::Injected { code, .. } => match code {
                500 => "InternalError",
                503 => "ServiceUnavailable",
                504 => "Timeout",
                429 => "TooManyRequests",
                403 => "Forbidden",
                401 => "Unauthorized",
                _ => "Unknown",
            },
        }
    }

    /// The full Status object, as the body of an error response or of a watch `ERROR` event.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            Self::NotFound {
                group,
                plural,
                name,
                ..
            }
            | Self::AlreadyExists {
                group,
                plural,
                name,
                ..
            }
            | Self::Conflict {
                group,
                plural,
                name,
                ..
            }
            | Self::Invalid {
                group,
                plural,
                name,
                ..
            } => Some(details(group, plural, name)),
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

/// `details` of a Status: `group` is left out for the core group, as the real server does.
fn details(group: &str, plural: &str, name: &str) -> Value {
    let mut details = json!({ "name": name, "kind": plural });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    details
}

/// The `Success` Status a DELETE answers with when the object is gone at once.
pub fn deleted(rt: &ResourceType, name: &str, uid: &str) -> Value {
    let mut details = details(&rt.group, &rt.plural, name);
    details["uid"] = json!(uid);
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::Registry;

    #[test]
    fn not_found_is_shaped_like_kubernetes() {
        let reg = Registry::default();
        let lv = reg.find("strata.io", "v1alpha1", "logicalvolumes").unwrap();
        let body = ApiError::not_found(lv, "pvc-1").to_status();
        assert_eq!(
            body,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "logicalvolumes.strata.io \"pvc-1\" not found",
                "reason": "NotFound", "code": 404,
                "details": {"name": "pvc-1", "group": "strata.io", "kind": "logicalvolumes"},
            })
        );
    }

    #[test]
    fn core_group_has_no_group_in_details_or_message() {
        let reg = Registry::default();
        let pvc = reg.find("", "v1", "persistentvolumeclaims").unwrap();
        let body = ApiError::already_exists(pvc, "data").to_status();
        assert_eq!(
            body["message"],
            "persistentvolumeclaims \"data\" already exists"
        );
        assert_eq!(body["code"], 409);
        assert_eq!(body["reason"], "AlreadyExists");
        assert!(body["details"].get("group").is_none());
    }

    #[test]
    fn conflict_and_expired_codes() {
        let reg = Registry::default();
        let ns = reg.find("strata.io", "v1alpha1", "nodestorages").unwrap();
        let c = ApiError::conflict(ns, "n1");
        assert_eq!((c.code(), c.reason()), (409, "Conflict"));
        assert!(c.to_string().contains("the object has been modified"));
        let e = ApiError::Expired {
            requested: 3,
            oldest: 9,
        };
        assert_eq!((e.code(), e.reason()), (410, "Expired"));
        let i = ApiError::Injected {
            code: 503,
            message: "x".into(),
        };
        assert_eq!(i.to_status()["reason"], "ServiceUnavailable");
    }
}
