//! Capacity freshness (issue 17): how long after an LV change on the node the new allocatable
//! shows in NodeStorage, and in the answer of the real csi-scheduler's `/filter`. One SSD volume
//! is created and deleted while the host polls the LogicalVolume, the NodeStorage and the
//! extender every 20 ms; the times are printed in the e2e log. Only correctness is asserted (the
//! capacity and the extender's answer follow within a generous bound), never a tight timing:
//! TCG and a shared machine make timings noisy.

use std::time::{Duration, Instant};

use csi_api::crd::LogicalVolumePhase;
use csi_api::names::DeviceClass;
use serde_json::{Value, json};
use strata_tests::e2e::host::{Scheduler, http};

use crate::cluster::{Cluster, MIB, NODE};

/// A generous bound for each step (the goal is < 1 s; this only catches a capacity that never
/// follows).
const BOUND: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// The VM node's allocatable SSD bytes as published.
async fn ssd_allocatable(c: &Cluster) -> Option<u64> {
    let status = c.node_storage(NODE).await?.status?;
    status
        .device_classes
        .iter()
        .find(|d| d.name == DeviceClass::Ssd)
        .map(|d| d.allocatable_bytes.min(d.free_bytes))
}

/// Whether the extender passes the VM node for a pod using claim `claim`.
async fn passes(addr: &str, claim: &str) -> Option<bool> {
    let pod = json!({
        "metadata": {"name": "fresh-probe", "namespace": "e2e", "uid": "uid-fresh-probe"},
        "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}
    });
    let body = json!({"Pod": pod, "NodeNames": [NODE]}).to_string();
    let (code, body) = http(addr, "POST", "/filter", &body).await.ok()?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    Some(v["NodeNames"] == json!([NODE]))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Signed milliseconds from `from` to `to` (negative: `to` came first).
fn after(from: Instant, to: Instant) -> String {
    if to >= from {
        ms(to - from)
    } else {
        format!("-{}", ms(from - to))
    }
}

/// Creates and deletes one SSD volume and prints how fast NodeStorage and the extender follow.
/// Needs the `strata-ssd` StorageClass (seeded by the scheduler scenario) and an SSD class with
/// no volumes; leaves it empty again.
pub async fn capacity_freshness(c: &Cluster) {
    const VOLUME: u64 = 320 * MIB;
    let before = c
        .eventually("the ssd allocatable", BOUND, || ssd_allocatable(c))
        .await;
    // A claim that fits before the volume and not after it.
    let probe = (before - VOLUME / 2) / MIB;
    crate::lifecycle::claim(c, "fresh-probe", &format!("{probe}Mi")).await;
    let scheduler = Scheduler::start(&c.dir, &c.kubeconfig).await;
    let addr = scheduler.addr.clone();
    c.eventually("the extender to pass the VM node", BOUND, || {
        let addr = addr.clone();
        async move { passes(&addr, "fresh-probe").await.filter(|p| *p) }
    })
    .await;

    // Create: LogicalVolume Ready (the LV exists), then NodeStorage and extender.
    let name = "fresh-ssd-0";
    let start = Instant::now();
    let create = {
        let csi = c.csi();
        let req = crate::cluster::create_request(name, DeviceClass::Ssd, VOLUME, None);
        tokio::spawn(crate::cluster::create(csi, req, Duration::from_secs(120)))
    };
    let (mut object, mut ready, mut published, mut filtered) = (None, None, None, None);
    while ready.is_none() || published.is_none() || filtered.is_none() {
        assert!(
            start.elapsed() < BOUND,
            "create: Ready {ready:?}, NodeStorage {published:?}, extender {filtered:?} within {BOUND:?}\n{}",
            c.logs()
        );
        let now = Instant::now();
        if ready.is_none()
            && let Some(lv) = c.volume(name).await
        {
            object.get_or_insert(now);
            if lv.status.and_then(|s| s.phase) == Some(LogicalVolumePhase::Ready) {
                ready = Some(now);
            }
        }
        if published.is_none()
            && ssd_allocatable(c)
                .await
                .is_some_and(|a| a + VOLUME <= before)
        {
            published = Some(now);
        }
        if filtered.is_none() && passes(&addr, "fresh-probe").await == Some(false) {
            filtered = Some(now);
        }
        tokio::time::sleep(POLL).await;
    }
    create
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("CreateVolume: {e}\n{}", c.logs()));
    let (object, ready) = (object.unwrap_or(start), ready.unwrap());
    eprintln!(
        "e2e [{}]: freshness create: LogicalVolume Ready {} after CreateVolume; NodeStorage allocatable {} after Ready; extender /filter changed {} after the object appeared ({} after Ready: pending demand counts before Ready)",
        c.at(),
        ms(ready - start),
        after(ready, published.unwrap()),
        after(object, filtered.unwrap()),
        after(ready, filtered.unwrap()),
    );

    // Delete: the object is gone once the agent removed the LV; then NodeStorage and extender.
    let start = Instant::now();
    c.delete(name).await.unwrap();
    let (mut gone, mut published, mut passing) = (None, None, None);
    while gone.is_none() || published.is_none() || passing.is_none() {
        assert!(
            start.elapsed() < BOUND + Duration::from_secs(120),
            "delete: gone {gone:?}, NodeStorage {published:?}, extender {passing:?}\n{}",
            c.logs()
        );
        let now = Instant::now();
        if gone.is_none() && c.volume(name).await.is_none() {
            gone = Some(now);
        }
        if published.is_none() && ssd_allocatable(c).await == Some(before) {
            published = Some(now);
        }
        if passing.is_none() && passes(&addr, "fresh-probe").await == Some(true) {
            passing = Some(now);
        }
        tokio::time::sleep(POLL).await;
    }
    let gone = gone.unwrap();
    eprintln!(
        "e2e [{}]: freshness delete: LogicalVolume gone {} after DeleteVolume (wipe included); NodeStorage allocatable back {} after it was gone; extender /filter passes again {} after it was gone (negative: before the finalizer release was seen)",
        c.at(),
        ms(gone - start),
        after(gone, published.unwrap()),
        after(gone, passing.unwrap()),
    );
    drop(scheduler);
}
