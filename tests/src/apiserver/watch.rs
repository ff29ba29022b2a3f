//! A watch stream: newline-delimited `{"type":..,"object":..}` events for one resource type,
//! filtered by namespace and selectors (an object that starts or stops matching is seen as ADDED
//! or DELETED, as the real server does), with periodic BOOKMARKs, `timeoutSeconds`, and an end
//! when the client lags behind the broadcast, goes away, or the server drops its watches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Change, EventType, Store, WatchStart, type_id};

/// What one watch selects and how it behaves.
pub struct WatchSpec {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    pub timeout: Option<Duration>,
}

impl WatchSpec {
    fn matches(&self, ns: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|want| want == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    /// The event this watch sees for `change`, if any.
    pub fn translate(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.type_id != type_id(&self.rt) {
            return None;
        }
        let now = self.matches(&change.namespace, &change.object);
        let event = match (change.event, &change.previous) {
            (EventType::Modified, Some(prev)) => {
                match (self.matches(&change.namespace, prev), now) {
                    (true, true) => EventType::Modified,
                    (false, true) => EventType::Added,
                    (true, false) => EventType::Deleted,
                    (false, false) => return None,
                }
            }
            (event, _) if now => event,
            _ => return None,
        };
        Some((event.as_str(), change.object.clone()))
    }

    fn bookmark(&self, rv: u64) -> Value {
        json!({
            "kind": self.rt.kind,
            "apiVersion": self.rt.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        })
    }
}

/// One line of a watch stream.
pub fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": event_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Feeds `tx` until the watch ends. `stop` ends it early (server shutdown or dropped watches).
pub async fn run(
    spec: WatchSpec,
    start: WatchStart,
    store: Arc<Mutex<Store>>,
    tx: mpsc::Sender<Bytes>,
    stop: CancellationToken,
) {
    let WatchStart { backlog, mut live } = start;
    for change in backlog {
        if let Some((t, obj)) = spec.translate(&change)
            && tx.send(line(t, &obj)).await.is_err()
        {
            return;
        }
    }
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut ticker = tokio::time::interval(spec.bookmark_interval);
    ticker.tick().await;
    loop {
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = expired => return,
            _ = ticker.tick(), if spec.bookmarks => {
                // Every change up to `rv` was broadcast under the store lock, so it is already
                // queued here: send those first, then the bookmark cannot skip any of them.
                let rv = match store.lock() {
                    Ok(s) => s.resource_version(),
                    Err(_) => return,
                };
                loop {
                    match live.try_recv() {
                        Ok(change) => {
                            if let Some((t, obj)) = spec.translate(&change)
                                && tx.send(line(t, &obj)).await.is_err()
                            {
                                return;
                            }
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(_) => return,
                    }
                }
                if tx.send(line("BOOKMARK", &spec.bookmark(rv))).await.is_err() {
                    return;
                }
            }
            received = live.recv() => match received {
                Ok(change) => {
                    if let Some((t, obj)) = spec.translate(&change)
                        && tx.send(line(t, &obj)).await.is_err()
                    {
                        return;
                    }
                }
                // Lagged or closed: end the stream; the client resumes from its last version.
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::Registry;

    fn spec(labels: &str) -> WatchSpec {
        let rt = Registry::default()
            .find("strata.io", "v1alpha1", "logicalvolumes")
            .unwrap()
            .clone();
        WatchSpec {
            rt,
            namespace: None,
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
            bookmarks: true,
            bookmark_interval: Duration::from_millis(50),
            timeout: None,
        }
    }

    fn change(event: EventType, node: &str, prev_node: Option<&str>) -> Change {
        let obj = |n: &str| json!({"metadata": {"name": "a", "labels": {"strata.io/node": n}}});
        Change {
            rv: 1,
            type_id: "strata.io/v1alpha1/logicalvolumes".into(),
            namespace: String::new(),
            event,
            object: obj(node),
            previous: prev_node.map(obj),
        }
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let s = spec("strata.io/node=n1");
        let t = |c: Change| s.translate(&c).map(|(t, _)| t);
        assert_eq!(t(change(EventType::Added, "n1", None)), Some("ADDED"));
        assert_eq!(t(change(EventType::Added, "n2", None)), None);
        assert_eq!(
            t(change(EventType::Modified, "n1", Some("n1"))),
            Some("MODIFIED")
        );
        assert_eq!(
            t(change(EventType::Modified, "n1", Some("n2"))),
            Some("ADDED")
        );
        assert_eq!(
            t(change(EventType::Modified, "n2", Some("n1"))),
            Some("DELETED")
        );
        assert_eq!(t(change(EventType::Modified, "n2", Some("n3"))), None);
        assert_eq!(t(change(EventType::Deleted, "n1", None)), Some("DELETED"));
        let mut other = change(EventType::Added, "n1", None);
        other.type_id = "strata.io/v1alpha1/nodestorages".into();
        assert_eq!(t(other), None);
    }

    #[tokio::test]
    async fn stream_sends_backlog_live_changes_and_bookmarks() {
        let store = Arc::new(Mutex::new(Store::new(Registry::default(), 10)));
        let lv = json!({"apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
                        "metadata": {"name": "a"}, "spec": {}});
        let start = {
            let mut s = store.lock().unwrap();
            s.seed(lv.clone()).unwrap();
            s.watch(&spec("").rt, Some(0)).unwrap()
        };
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(spec(""), start, store.clone(), tx, stop.clone()));
        let next = |b: Bytes| serde_json::from_slice::<Value>(&b).unwrap();
        assert_eq!(next(rx.recv().await.unwrap())["type"], "ADDED");
        let mut b = lv.clone();
        b["metadata"]["name"] = json!("b");
        store.lock().unwrap().seed(b).unwrap();
        assert_eq!(
            next(rx.recv().await.unwrap())["object"]["metadata"]["name"],
            "b"
        );
        let bm = next(rx.recv().await.unwrap());
        assert_eq!(bm["type"], "BOOKMARK");
        assert_eq!(bm["object"]["metadata"]["resourceVersion"], "2");
        stop.cancel();
        task.await.unwrap();
        assert!(rx.recv().await.is_none());
    }
}
