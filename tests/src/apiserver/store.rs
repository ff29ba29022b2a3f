//! The in-memory object store: objects as JSON keyed by (resource type, namespace, name), one
//! global `resourceVersion` counter bumped on every write, and a bounded history of watch events
//! that watches replay from and that is also broadcast live. Write semantics follow the real
//! server where Strata depends on them: uid/creationTimestamp/generation bookkeeping, optimistic
//! concurrency, the status subresource split, and finalizers holding a deleted object.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::patch::{self, PatchKind};
use super::resources::{Registry, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and broadcast to watches.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    /// `group/version/plural` of the object's type.
    pub type_id: String,
    pub namespace: String,
    pub event: EventType,
    pub object: Value,
    /// The object before a MODIFIED change (to turn it into ADDED/DELETED for a selector).
    pub previous: Option<Value>,
}

/// What a DELETE did.
#[derive(Debug)]
pub enum Deleted {
    /// Removed at once: the `Success` Status to answer with.
    Gone(Value),
    /// Held by finalizers: the object, now carrying `deletionTimestamp`.
    Pending(Value),
}

/// Where a watch starts.
#[derive(Debug)]
pub struct WatchStart {
    /// Changes to send first (replayed history, or synthetic ADDED for the current objects).
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
}

type Key = (String, String, String);

/// List parameters understood by [`Store::list`].
#[derive(Debug, Default)]
pub struct ListQuery {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

pub struct Store {
    pub registry: Registry,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    /// Highest resourceVersion no longer in `history` (watches from below it are Expired).
    compacted: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

pub fn type_id(rt: &ResourceType) -> String {
    format!("{}/{}/{}", rt.group, rt.version, rt.plural)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// The object without `metadata` and `status`: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl Store {
    pub fn new(registry: Registry, history_cap: usize) -> Self {
        let (changes, _) = broadcast::channel(history_cap.max(16) * 4);
        Self {
            registry,
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
            changes,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn key(rt: &ResourceType, ns: &str, name: &str) -> Key {
        (
            type_id(rt),
            if rt.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.into(),
        )
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Forgets the whole history: every watch or continue token from before now is Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(rt, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    pub fn list(&self, rt: &ResourceType, q: &ListQuery) -> Result<Value, ApiError> {
        let tid = type_id(rt);
        let (list_rv, after) = match &q.continue_token {
            Some(token) => {
                let (rv, rest) = token
                    .split_once(':')
                    .and_then(|(rv, rest)| Some((rv.parse::<u64>().ok()?, rest)))
                    .ok_or_else(|| ApiError::BadRequest("invalid continue token".into()))?;
                if rv < self.compacted {
                    return Err(ApiError::Expired {
                        requested: rv,
                        oldest: self.compacted,
                    });
                }
                let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
                (rv, Some((tid.clone(), ns.to_string(), name.to_string())))
            }
            None => (self.rv, None),
        };
        let start = match &after {
            Some(k) => std::ops::Bound::Excluded(k.clone()),
            None => std::ops::Bound::Included((tid.clone(), String::new(), String::new())),
        };
        let mut items: Vec<Value> = Vec::new();
        let mut more = false;
        for ((t, ns, _), obj) in self.objects.range((start, std::ops::Bound::Unbounded)) {
            if *t != tid {
                break;
            }
            if q.namespace.as_deref().is_some_and(|want| want != ns)
                || !q.labels.matches(obj)
                || !q.fields.matches(obj)
            {
                continue;
            }
            if q.limit.is_some_and(|l| l > 0 && items.len() == l) {
                more = true;
                break;
            }
            items.push(obj.clone());
        }
        let mut metadata = json!({"resourceVersion": list_rv.to_string()});
        if more && let Some(last) = items.last() {
            let ns = last["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = last["metadata"]["name"].as_str().unwrap_or_default();
            metadata["continue"] = json!(format!("{list_rv}:{ns}/{name}"));
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Inserts an object as given (status included), filling in server-set metadata.
    pub fn seed(&mut self, mut obj: Value) -> Result<Value, ApiError> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let rt = self
            .registry
            .find_kind(&api_version, &kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::BadRequest(format!("no resource type serves {api_version} {kind}"))
            })?;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        self.insert_new(&rt, &ns, obj, true)
    }

    /// POST: a new object; `status` is dropped for types with a status subresource.
    pub fn create(&mut self, rt: &ResourceType, ns: &str, obj: Value) -> Result<Value, ApiError> {
        if rt.namespaced
            && let Some(body_ns) = obj["metadata"]["namespace"].as_str()
            && body_ns != ns
        {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .into(),
            ));
        }
        if let Some(name) = obj["metadata"]["name"].as_str().filter(|n| !n.is_empty())
            && !is_dns1123_subdomain(name)
        {
            return Err(ApiError::invalid(
                rt,
                name,
                "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of \
                 lower case alphanumeric characters, '-' or '.', and must start and end with an \
                 alphanumeric character",
            ));
        }
        self.insert_new(
            rt,
            ns,
            obj,
            !rt.status_subresource || rt.keeps_status_on_create,
        )
    }

    fn insert_new(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        keep_status: bool,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let name = match obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match obj["metadata"]["generateName"]
                .as_str()
                .filter(|n| !n.is_empty())
            {
                Some(prefix) => format!("{prefix}{:05x}", self.rv + 1),
                None => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        let key = Self::key(rt, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        if !keep_status && let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if rt.namespaced {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.rv + 1));
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        Ok(self.commit(rt, key, None, obj))
    }

    /// Writes `obj` (the final state) under `key` with a new resourceVersion, or removes it if it
    /// is being deleted and has no finalizers left; records the change.
    fn commit(&mut self, rt: &ResourceType, key: Key, old: Option<Value>, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let deleting = obj["metadata"].get("deletionTimestamp").is_some();
        let event = if deleting && finalizers(&obj).is_empty() {
            self.objects.remove(&key);
            EventType::Deleted
        } else {
            self.objects.insert(key.clone(), obj.clone());
            if old.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            }
        };
        self.record(Change {
            rv: self.rv,
            type_id: type_id(rt),
            namespace: key.1,
            event,
            object: obj.clone(),
            previous: old,
        });
        obj
    }

    /// The shared end of PUT, PATCH and apply: `candidate` is the client's full object;
    /// `status_only` is true on the `/status` subresource.
    fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut candidate: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if !candidate.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        if let Some(body_name) = candidate["metadata"]["name"].as_str()
            && body_name != name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = rv_of(&candidate)
            && Some(rv) != rv_of(&old)
        {
            return Err(ApiError::conflict(rt, name));
        }
        let mut new = if status_only {
            let mut new = old.clone();
            match candidate.as_object_mut().and_then(|m| m.remove("status")) {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
            }
            new
        } else {
            if rt.status_subresource {
                match old.get("status") {
                    Some(s) => candidate["status"] = s.clone(),
                    None => {
                        candidate.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            if !candidate["metadata"].is_object() {
                candidate["metadata"] = json!({});
            }
            let meta = &mut candidate["metadata"];
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
            ] {
                match old["metadata"].get(field) {
                    Some(v) => meta[field] = v.clone(),
                    None => {
                        meta.as_object_mut().map(|m| m.remove(field));
                    }
                }
            }
            for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                match old["metadata"].get(field) {
                    Some(v) => meta[field] = v.clone(),
                    None => {
                        meta.as_object_mut().map(|m| m.remove(field));
                    }
                }
            }
            candidate
        };
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if old["metadata"].get("deletionTimestamp").is_some() {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if new == old {
            return Ok(old);
        }
        if spec_part(&new) != spec_part(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        Ok(self.commit(rt, key, Some(old), new))
    }

    /// PUT of the object or of its `/status`.
    pub fn replace(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        self.update(rt, ns, name, obj, status_only)
    }

    /// PATCH of the object or of its `/status`. Apply creates a missing object (not via
    /// `/status`), the other kinds answer NotFound.
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let live = match self.objects.get(&Self::key(rt, ns, name)) {
            Some(live) => live.clone(),
            None if kind == PatchKind::Apply && !status_only => {
                if body["apiVersion"].as_str() != Some(&rt.api_version())
                    || body["kind"].as_str() != Some(&rt.kind)
                {
                    return Err(ApiError::BadRequest(format!(
                        "apply needs apiVersion {} and kind {}",
                        rt.api_version(),
                        rt.kind
                    )));
                }
                let mut obj = body.clone();
                obj["metadata"]["name"] = json!(name);
                return self.create(rt, ns, obj);
            }
            None => return Err(ApiError::not_found(rt, name)),
        };
        let patched = patch::apply(kind, &live, body, rt, name)?;
        self.update(rt, ns, name, patched, status_only)
    }

    /// DELETE with optional preconditions (`uid`, `resourceVersion`).
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        preconditions: &Value,
    ) -> Result<Deleted, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        for field in ["uid", "resourceVersion"] {
            if let Some(want) = preconditions.get(field).and_then(Value::as_str)
                && old["metadata"][field].as_str() != Some(want)
            {
                let have = old["metadata"][field].as_str().unwrap_or_default();
                return Err(ApiError::conflict_because(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: {field} in precondition: {want}, {field} in object meta: {have}"
                    ),
                ));
            }
        }
        if old["metadata"].get("deletionTimestamp").is_some() {
            return Ok(Deleted::Pending(old));
        }
        let uid = old["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if finalizers(&old).is_empty() {
            self.rv += 1;
            let mut gone = self.objects.remove(&key).unwrap_or(old);
            gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.record(Change {
                rv: self.rv,
                type_id: type_id(rt),
                namespace: key.1,
                event: EventType::Deleted,
                object: gone,
                previous: None,
            });
            return Ok(Deleted::Gone(status::deleted(rt, name, &uid)));
        }
        let mut new = old.clone();
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        Ok(Deleted::Pending(self.commit(rt, key, Some(old), new)))
    }

    /// Starts a watch of type `rt`: from `since` (replaying the history after it, Expired if it
    /// was compacted away), or from now with a synthetic ADDED per current object if `None`.
    pub fn watch(&self, rt: &ResourceType, since: Option<u64>) -> Result<WatchStart, ApiError> {
        let tid = type_id(rt);
        let backlog = match since {
            Some(rv) if rv < self.compacted => {
                return Err(ApiError::Expired {
                    requested: rv,
                    oldest: self.compacted + 1,
                });
            }
            Some(rv) => self
                .history
                .iter()
                .filter(|c| c.rv > rv && c.type_id == tid)
                .cloned()
                .collect(),
            None => self
                .objects
                .iter()
                .filter(|((t, _, _), _)| *t == tid)
                .map(|((_, ns, _), obj)| {
                    Arc::new(Change {
                        rv: self.rv,
                        type_id: tid.clone(),
                        namespace: ns.clone(),
                        event: EventType::Added,
                        object: obj.clone(),
                        previous: None,
                    })
                })
                .collect(),
        };
        Ok(WatchStart {
            backlog,
            live: self.changes.subscribe(),
        })
    }
}

#[cfg(test)]
mod tests;

/// What the API server requires of the name of a created object (most kinds, CRDs included):
/// a DNS-1123 subdomain, at most 253 characters of `[a-z0-9.-]`, each dot-separated label starting
/// and ending with a letter or digit. Seeded objects are not checked (test fixtures).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
