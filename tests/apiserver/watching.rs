//! Watches through `kube::Api::watch` and a kube-runtime reflector.

use std::time::Duration;

use csi_api::crd::LogicalVolume;
use futures::{StreamExt, TryStreamExt};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use strata_tests::apiserver::{FakeApiServer, Fault};

use super::{lv, lvs, server};

const WAIT: Duration = Duration::from_secs(10);

/// (type, name, resourceVersion) of a watch event; bookmarks have no name.
fn describe(ev: &WatchEvent<LogicalVolume>) -> (String, String, String) {
    match ev {
        WatchEvent::Added(o) => ("ADDED".into(), o.name_any(), o.resource_version().unwrap()),
        WatchEvent::Modified(o) => (
            "MODIFIED".into(),
            o.name_any(),
            o.resource_version().unwrap(),
        ),
        WatchEvent::Deleted(o) => (
            "DELETED".into(),
            o.name_any(),
            o.resource_version().unwrap(),
        ),
        WatchEvent::Bookmark(b) => (
            "BOOKMARK".into(),
            String::new(),
            b.metadata.resource_version.clone(),
        ),
        WatchEvent::Error(e) => ("ERROR".into(), e.reason.clone(), e.code.to_string()),
    }
}

async fn next_non_bookmark<S>(stream: &mut S) -> (String, String, String)
where
    S: futures::Stream<Item = kube::Result<WatchEvent<LogicalVolume>>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("event in time");
        let ev = describe(&ev.expect("stream open").expect("event ok"));
        if ev.0 != "BOOKMARK" {
            return ev;
        }
    }
}

#[tokio::test]
async fn watch_sees_changes_in_order_and_resumes() {
    let (_srv, client) = server().await;
    let api = lvs(&client);
    api.create(&PostParams::default(), &lv("old", "n1", "nvme"))
        .await
        .unwrap();
    let wp = WatchParams::default().labels("strata.io/node=n1");
    let mut stream = api.watch(&wp, "0").await.unwrap().boxed();
    assert_eq!(
        next_non_bookmark(&mut stream).await.1,
        "old",
        "initial ADDED"
    );

    api.create(&PostParams::default(), &lv("a", "n1", "nvme"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &lv("other", "n2", "nvme"))
        .await
        .unwrap();
    let pp = PatchParams::default();
    api.patch("a", &pp, &Patch::Merge(json!({"spec": {"sizeBytes": 3}})))
        .await
        .unwrap();
    // Leaving the selector is a DELETED for this watch.
    api.patch(
        "old",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"strata.io/node": "n9"}}})),
    )
    .await
    .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next_non_bookmark(&mut stream).await);
    }
    let kinds: Vec<(&str, &str)> = seen
        .iter()
        .map(|(t, n, _)| (t.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("ADDED", "a"),
            ("MODIFIED", "a"),
            ("DELETED", "old"),
            ("DELETED", "a")
        ]
    );
    let rvs: Vec<u64> = seen.iter().map(|(_, _, rv)| rv.parse().unwrap()).collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]),
        "versions increase: {rvs:?}"
    );

    // Resuming after the ADDED replays exactly what followed it.
    let mut resumed = api.watch(&wp, &seen[0].2).await.unwrap().boxed();
    for expected in &seen[1..] {
        assert_eq!(&next_non_bookmark(&mut resumed).await, expected);
    }
}

#[tokio::test]
async fn bookmarks_arrive_and_timeout_ends_the_stream() {
    let srv = FakeApiServer::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let api = lvs(&srv.client().unwrap());
    api.create(&PostParams::default(), &lv("a", "n1", "nvme"))
        .await
        .unwrap();
    let rv = srv.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(describe(&ev), ("BOOKMARK".into(), String::new(), rv));
    let rest: Vec<_> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .expect("ends");
    assert!(
        rest.iter()
            .all(|e| matches!(e, Ok(WatchEvent::Bookmark(_))))
    );

    let no_bm = WatchParams::default().disable_bookmarks().timeout(1);
    let quiet: Vec<_> = api.watch(&no_bm, "1").await.unwrap().collect().await;
    assert!(quiet.is_empty(), "no bookmarks unless asked: {quiet:?}");
}

#[tokio::test]
async fn too_old_version_is_expired_and_dropped_watches_end() {
    let (srv, client) = server().await;
    let api = lvs(&client);
    api.create(&PostParams::default(), &lv("a", "n1", "nvme"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &lv("b", "n1", "nvme"))
        .await
        .unwrap();
    srv.compact();
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(next_non_bookmark(&mut stream).await.0, "ADDED");
    assert_eq!(next_non_bookmark(&mut stream).await.0, "ADDED");
    let mut old = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    let ev = old.next().await.unwrap().unwrap();
    assert_eq!(
        describe(&ev),
        ("ERROR".into(), "Expired".into(), "410".into())
    );
    assert!(old.next().await.is_none());

    srv.drop_watches();
    let end = tokio::time::timeout(WAIT, stream.try_collect::<Vec<_>>())
        .await
        .expect("ended");
    assert!(
        end.unwrap()
            .iter()
            .all(|e| matches!(e, WatchEvent::Bookmark(_)))
    );
}

#[tokio::test]
async fn reflector_converges_and_relists_after_expiry() {
    let srv = FakeApiServer::builder()
        .bookmark_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let client = srv.client().unwrap();
    let api: Api<LogicalVolume> = Api::all(client);
    for i in 0..3 {
        api.create(&PostParams::default(), &lv(&format!("lv{i}"), "n1", "nvme"))
            .await
            .unwrap();
    }
    api.create(&PostParams::default(), &lv("elsewhere", "n2", "nvme"))
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<LogicalVolume>();
    let config = watcher::Config::default()
        .labels("strata.io/node=n1")
        .page_size(2);
    let stream = reflector(writer, watcher(api.clone(), config))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    let names = |r: &reflector::Store<LogicalVolume>| {
        let mut n: Vec<String> = r.state().iter().map(|o| o.name_any()).collect();
        n.sort();
        n
    };
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&reader), ["lv0", "lv1", "lv2"]);

    api.delete("lv1", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &lv("lv3", "n1", "nvme"))
        .await
        .unwrap();
    wait_for(&reader, &names, &["lv0", "lv2", "lv3"]).await;

    // Cut the watch and keep it from coming back while things change and the history is
    // forgotten: its resume version is then Expired, so the reflector must relist and converge.
    let lists = |srv: &FakeApiServer| {
        srv.requests()
            .iter()
            .filter(|l| l.contains("limit=2") && !l.contains("watch="))
            .count()
    };
    assert_eq!(lists(&srv), 2, "first list in two pages");
    srv.inject(Fault::new("/apis/strata.io", 500, u32::MAX).query_contains("watch=true"));
    srv.drop_watches();
    api.delete("lv0", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &lv("lv4", "n1", "nvme"))
        .await
        .unwrap();
    srv.compact();
    srv.clear_faults();
    wait_for(&reader, &names, &["lv2", "lv3", "lv4"]).await;
    assert_eq!(lists(&srv), 4, "relisted in two pages");
    task.abort();
}

async fn wait_for(
    reader: &reflector::Store<LogicalVolume>,
    names: &impl Fn(&reflector::Store<LogicalVolume>) -> Vec<String>,
    want: &[&str],
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while names(reader) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector has {:?}, want {want:?}",
            names(reader)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
