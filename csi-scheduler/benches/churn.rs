//! The extender under churn at 5,000 nodes and 40,000 LogicalVolumes (plus 5,003 claims of
//! Strata classes and 5,000 pods), names-only requests of all 5,000 nodes for a pod with three
//! claims of two classes, through `http::answer` (decode, demand, filter or score, encode) on
//! the snapshot the `ViewHandle` holds.
//!
//! Prints, for the incremental view (`ViewIndex`, what the binary runs) and for the previous
//! design (a full rebuild of the view from the caches after each burst, 20 ms debounce) as the
//! baseline in the same run:
//! - the cost of one change (apply + publish) against one full rebuild;
//! - filter and prioritize p50/p99 without churn and while 100 object changes per second arrive
//!   (LogicalVolume status, NodeStorage publishes, PVC selected-node, Pod nomination), the
//!   writer on its own thread as the cache task is;
//! - the time from a change's arrival to the snapshot that holds it (what the next request sees).
//!
//! Then (`--rss` for this part only) the resident memory of the index at this size, each in a
//! child process of its own that reads the objects one by one as JSON (as a watch delivers
//! them): the index as it is (each object reduced on arrival to what placement reads) against
//! the previous holding, where the LogicalVolumes, claims and pods were kept whole beside it.
//!
//! Before the churn rows, the request path against the previous one (`csi_scheduler::reference`)
//! on the same snapshot, interleaved, in request-thread CPU time.
//!
//! Run: `cargo bench -p csi-scheduler --bench churn` (`-- --quick` for a shorter run;
//! `-- --requests-only served|reference N` runs only N requests of each verb on one path, for
//! `valgrind --tool=callgrind --toggle-collect='*answer*'` instruction counts).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csi_api::crd::{LogicalVolume, LogicalVolumePhase, NodeStorage};
use csi_api::names::{ANNOTATION_SELECTED_NODE, Placement};
use csi_scheduler::fixtures::{CLAIMS_PER_NODE, GIB, Objects, cluster, node_name};
use csi_scheduler::http::{Verb, ViewHandle, answer};
use csi_scheduler::index::ViewIndex;
use csi_scheduler::record::{ClaimRecord, PodRecord, StorageRecord, VolumeRecord};
use csi_scheduler::reference;
use csi_scheduler::view::ClusterView;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const NODES: usize = 5000;
const CHANGES_PER_SECOND: u32 = 100;

/// One object replaced by a newer version, as a watch delivers it.
#[derive(Clone)]
enum Change {
    Volume(usize, Arc<LogicalVolume>),
    Storage(usize, Arc<NodeStorage>),
    Claim(usize, Arc<PersistentVolumeClaim>),
    Pod(usize, Arc<Pod>),
}

/// A deterministic stream of plausible changes: 40 % LogicalVolume status (Pending ↔ Ready),
/// 20 % NodeStorage publishes (allocatable and sequence), 20 % a selected-node annotation set or
/// cleared, 20 % a pod's nomination set or cleared.
fn changes(objects: &Objects, count: usize) -> Vec<Change> {
    let mut rng = StdRng::seed_from_u64(17);
    let mut sequence: BTreeMap<usize, u64> = BTreeMap::new();
    (0..count)
        .map(|_| match rng.random_range(0..10) {
            0..=3 => {
                let i = rng.random_range(0..objects.volumes.len());
                let mut lv = (*objects.volumes[i]).clone();
                let status = lv.status.get_or_insert_with(Default::default);
                status.phase = Some(if rng.random_bool(0.5) {
                    LogicalVolumePhase::Pending
                } else {
                    LogicalVolumePhase::Ready
                });
                status.current_size_bytes = Some(lv.spec.size_bytes);
                Change::Volume(i, Arc::new(lv))
            }
            4 | 5 => {
                let i = rng.random_range(0..objects.nodes.len());
                let mut ns = (*objects.nodes[i]).clone();
                let status = ns.status.get_or_insert_with(Default::default);
                let seq = sequence.entry(i).or_default();
                *seq += 1;
                status.capacity_sequence = Some(*seq);
                for c in &mut status.device_classes {
                    c.allocatable_bytes = c
                        .allocatable_bytes
                        .saturating_sub(rng.random_range(0..8) * GIB);
                }
                Change::Storage(i, Arc::new(ns))
            }
            6 | 7 => {
                // The selected claims come after each node's CLAIMS_PER_NODE bound claims.
                let node = rng.random_range(0..NODES);
                let i = node * (CLAIMS_PER_NODE + 1) + CLAIMS_PER_NODE;
                let mut pvc = (*objects.claims[i]).clone();
                let annotations = pvc
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default);
                if rng.random_bool(0.5) {
                    annotations.remove(ANNOTATION_SELECTED_NODE);
                } else {
                    annotations.insert(ANNOTATION_SELECTED_NODE.into(), node_name(node));
                }
                Change::Claim(i, Arc::new(pvc))
            }
            _ => {
                let i = rng.random_range(0..objects.pods.len());
                let mut pod = (*objects.pods[i]).clone();
                let status = pod.status.get_or_insert_with(Default::default);
                status.nominated_node_name = if rng.random_bool(0.5) {
                    None
                } else {
                    Some(node_name(i))
                };
                Change::Pod(i, Arc::new(pod))
            }
        })
        .collect()
}

fn apply_to_index(index: &mut ViewIndex, change: &Change) {
    match change {
        // Reduced to what the index keeps here, as the watch task does on arrival (counted).
        Change::Volume(_, lv) => index.apply_volume(VolumeRecord::from(&**lv)),
        Change::Storage(_, ns) => index.apply_node_storage(StorageRecord::from(&**ns)),
        Change::Claim(_, pvc) => index.apply_claim(ClaimRecord::from(&**pvc)),
        Change::Pod(_, pod) => index.apply_pod(PodRecord::from(&**pod)),
    }
}

fn apply_to_objects(objects: &mut Objects, change: &Change) {
    match change {
        Change::Volume(i, lv) => objects.volumes[*i] = lv.clone(),
        Change::Storage(i, ns) => objects.nodes[*i] = ns.clone(),
        Change::Claim(i, pvc) => objects.claims[*i] = pvc.clone(),
        Change::Pod(i, pod) => objects.pods[*i] = pod.clone(),
    }
}

fn rebuild(objects: &Objects) -> ClusterView {
    ClusterView::build(
        &objects.nodes,
        &objects.volumes,
        &objects.claims,
        &objects.classes,
        &objects.pods,
        Placement::Binpack,
    )
}

fn index_of(objects: &Objects) -> ViewIndex {
    let mut index = ViewIndex::new(Placement::Binpack);
    index.set_storage_classes(objects.classes.iter().cloned());
    for ns in &objects.nodes {
        index.apply_node_storage(StorageRecord::from(&**ns));
    }
    for lv in &objects.volumes {
        index.apply_volume(VolumeRecord::from(&**lv));
    }
    for pvc in &objects.claims {
        index.apply_claim(ClaimRecord::from(&**pvc));
    }
    for pod in &objects.pods {
        index.apply_pod(PodRecord::from(&**pod));
    }
    // The initial load, published once (not counted as a change).
    index.publish();
    index
}

#[derive(Clone, Copy)]
struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    assert!(!samples.is_empty());
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Stats {
        p50: ms(at(0.5)),
        p99: ms(at(0.99)),
        max: ms(samples[samples.len() - 1]),
    }
}

/// Requests back to back on the handle's current snapshot, alternating filter and prioritize.
/// CPU time of the calling thread: what a request costs when nothing preempts it (the wall
/// times on a shared 2-core machine include other processes' time slices).
fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// The served request path against the previous one (`csi_scheduler::reference`, kept as the
/// baseline) on the same snapshot, interleaved request by request so that both see the same
/// machine: request-thread CPU time per verb, p50 and p99.
fn against_reference(view: &ClusterView, body: &[u8], count: usize) {
    let mut samples: [[Vec<Duration>; 2]; 2] = Default::default();
    for i in 0..count + count / 10 {
        for (which, path) in [answer, reference::answer].into_iter().enumerate() {
            let verb = if i % 2 == 0 {
                Verb::Filter
            } else {
                Verb::Prioritize
            };
            let cpu = thread_cpu();
            black_box(path(verb, view, body).expect("answer"));
            let cpu = thread_cpu() - cpu;
            if i >= count / 10 {
                samples[which][usize::from(verb == Verb::Prioritize)].push(cpu);
            }
        }
    }
    let [[sf, sp], [rf, rp]] = samples.map(|verbs| verbs.map(stats));
    println!(
        "request path, CPU ms (served | previous = reference::answer): filter p50 {:.3} p99 {:.3} | {:.3} {:.3}; prioritize p50 {:.3} p99 {:.3} | {:.3} {:.3}",
        sf.p50, sf.p99, rf.p50, rf.p99, sp.p50, sp.p99, rp.p50, rp.p99
    );
    println!(
        "ratio previous/served: filter p50 {:.2} p99 {:.2}, prioritize p50 {:.2} p99 {:.2}",
        rf.p50 / sf.p50,
        rf.p99 / sf.p99,
        rp.p50 / sp.p50,
        rp.p99 / sp.p99
    );
}

fn requests(handle: &ViewHandle, body: &[u8], count: usize) -> (Stats, Stats) {
    let (mut filter, mut prioritize) = (Vec::new(), Vec::new());
    let (mut filter_cpu, mut prioritize_cpu) = (Vec::new(), Vec::new());
    for i in 0..count + count / 10 {
        let verb = if i % 2 == 0 {
            Verb::Filter
        } else {
            Verb::Prioritize
        };
        let cpu = thread_cpu();
        let started = Instant::now();
        let view = handle.get().expect("a view");
        black_box(answer(verb, &view, body).expect("answer"));
        let took = started.elapsed();
        let cpu = thread_cpu() - cpu;
        if i >= count / 10 {
            match verb {
                Verb::Filter => {
                    filter.push(took);
                    filter_cpu.push(cpu);
                }
                Verb::Prioritize => {
                    prioritize.push(took);
                    prioritize_cpu.push(cpu);
                }
            }
        }
    }
    let (f, p) = (stats(filter_cpu), stats(prioritize_cpu));
    println!(
        "  (request thread CPU time, ms: filter p50 {:.3} p99 {:.3}, prioritize p50 {:.3} p99 {:.3})",
        f.p50, f.p99, p.p50, p.p99
    );
    (stats(filter), stats(prioritize))
}

/// Which writer runs beside the requests.
#[derive(Clone, Copy, PartialEq)]
enum Writer {
    Incremental,
    FullRebuild,
}

/// Requests while `stream` arrives at 100 changes per second; returns the request statistics
/// and the arrival-to-visible times of the changes applied meanwhile.
fn under_churn(
    writer: Writer,
    objects: &mut Objects,
    index: &mut ViewIndex,
    stream: &[Change],
    handle: &ViewHandle,
    body: &[u8],
    count: usize,
) -> (Stats, Stats, Stats, usize) {
    let stop = AtomicBool::new(false);
    let period = Duration::from_secs(1) / CHANGES_PER_SECOND;
    std::thread::scope(|s| {
        let stop = &stop;
        let writer = s.spawn(move || {
            let start = Instant::now();
            let due = |n: usize| start + period * u32::try_from(n).expect("few changes");
            let mut visible = Vec::new();
            let mut next = 0;
            while next < stream.len() && !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < due(next) {
                    std::thread::sleep(due(next) - now);
                    continue;
                }
                match writer {
                    Writer::Incremental => {
                        // Everything that has arrived, applied at once (as the cache task drains
                        // its channel), then published.
                        let first = next;
                        while next < stream.len() && due(next) <= Instant::now() {
                            apply_to_index(index, &stream[next]);
                            next += 1;
                        }
                        handle.set(index.publish());
                        let at = Instant::now();
                        visible.extend((first..next).map(|n| at - due(n)));
                    }
                    Writer::FullRebuild => {
                        // The previous cache task: woken by a change, a 20 ms debounce, then
                        // a rebuild from the stores with whatever has arrived by then.
                        std::thread::sleep(Duration::from_millis(20));
                        let first = next;
                        while next < stream.len() && due(next) <= Instant::now() {
                            apply_to_objects(objects, &stream[next]);
                            next += 1;
                        }
                        handle.set(rebuild(objects));
                        let at = Instant::now();
                        visible.extend((first..next).map(|n| at - due(n)));
                    }
                }
            }
            visible
        });
        let (filter, prioritize) = requests(handle, body, count);
        stop.store(true, Ordering::Relaxed);
        let visible = writer.join().expect("writer");
        let applied = visible.len();
        (filter, prioritize, stats(visible), applied)
    })
}

/// A names-only request of all nodes for a pod with three claims of two classes.
fn request_body() -> Vec<u8> {
    let names: Vec<String> = (0..NODES).map(node_name).collect();
    serde_json::to_vec(&json!({
        "Pod": {"metadata": {"name": "db-0", "namespace": "apps"}, "spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
            {"name": "wal", "persistentVolumeClaim": {"claimName": "wal-db-0"}},
            {"name": "archive", "persistentVolumeClaim": {"claimName": "archive-db-0"}}]}},
        "NodeNames": names, "Nodes": null
    }))
    .expect("body")
}

/// How a `--rss-child` holds the objects it reads.
#[derive(Clone, Copy, PartialEq)]
enum Holding {
    /// Reduced on arrival ([`csi_scheduler::record`]): what the binary does.
    Records,
    /// Also kept whole (LogicalVolumes, claims, pods), as the previous index held them.
    Whole,
}

/// Writes the fixture cluster as one JSON object per line, prefixed by its kind's letter.
fn write_objects(path: &std::path::Path) {
    use std::io::Write;
    let objects = cluster(NODES);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("objects file"));
    let mut line = |tag: &str, json: Vec<u8>| {
        out.write_all(tag.as_bytes()).expect("write");
        out.write_all(&json).expect("write");
        out.write_all(b"\n").expect("write");
    };
    for o in &objects.classes {
        line("C", serde_json::to_vec(&**o).expect("json"));
    }
    for o in &objects.nodes {
        line("N", serde_json::to_vec(&**o).expect("json"));
    }
    for o in &objects.volumes {
        line("V", serde_json::to_vec(&**o).expect("json"));
    }
    for o in &objects.claims {
        line("P", serde_json::to_vec(&**o).expect("json"));
    }
    for o in &objects.pods {
        line("O", serde_json::to_vec(&**o).expect("json"));
    }
    out.flush().expect("flush");
}

/// A `kB` field of `/proc/self/status` in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The child: reads the objects file into an index, publishes, prints `VmRSS VmHWM` in bytes.
fn rss_child(holding: Holding, path: &std::path::Path) {
    use std::io::BufRead;
    fn parse<K: serde::de::DeserializeOwned>(json: &str) -> K {
        serde_json::from_str(json).expect("object")
    }
    let mut index = ViewIndex::new(Placement::Binpack);
    let mut classes = Vec::new();
    let mut volumes: Vec<Arc<LogicalVolume>> = Vec::new();
    let mut claims: Vec<Arc<PersistentVolumeClaim>> = Vec::new();
    let mut pods: Vec<Arc<Pod>> = Vec::new();
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("objects file"));
    for line in file.lines() {
        let line = line.expect("line");
        let (tag, json) = line.split_at(1);
        match tag {
            "C" => classes.push(Arc::new(parse(json))),
            "N" => index.apply_node_storage(StorageRecord::from(parse::<NodeStorage>(json))),
            "V" => {
                let lv: LogicalVolume = parse(json);
                index.apply_volume(VolumeRecord::from(&lv));
                if holding == Holding::Whole {
                    volumes.push(Arc::new(lv));
                }
            }
            "P" => {
                let pvc: PersistentVolumeClaim = parse(json);
                index.apply_claim(ClaimRecord::from(&pvc));
                if holding == Holding::Whole {
                    claims.push(Arc::new(pvc));
                }
            }
            _ => {
                let pod: Pod = parse(json);
                index.apply_pod(PodRecord::from(&pod));
                if holding == Holding::Whole {
                    pods.push(Arc::new(pod));
                }
            }
        }
        if tag == "N" && !classes.is_empty() {
            index.set_storage_classes(std::mem::take(&mut classes));
        }
    }
    let view = index.publish();
    assert_eq!(view.node_count(), NODES);
    println!("{} {}", status_bytes("VmRSS"), status_bytes("VmHWM"));
    black_box((&index, &view, &volumes, &claims, &pods));
}

/// Runs both holdings in child processes and prints their memory side by side.
fn rss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("objects.jsonl");
    write_objects(&path);
    let run = |holding: &str| -> (u64, u64) {
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["--rss-child", holding])
            .arg(&path)
            .output()
            .expect("child");
        assert!(
            out.status.success(),
            "child: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut fields = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().expect("bytes"));
        (fields.next().expect("VmRSS"), fields.next().expect("VmHWM"))
    };
    let (whole, whole_hwm) = run("whole");
    let (records, records_hwm) = run("records");
    println!(
        "index memory at {NODES} nodes (own process, objects read one by one as JSON), VmRSS / VmHWM:"
    );
    println!(
        "  LogicalVolumes, claims and pods kept whole (before): {} / {} MiB",
        whole >> 20,
        whole_hwm >> 20
    );
    println!(
        "  reduced on arrival to placement fields (after):     {} / {} MiB; ratio after/before {:.2}",
        records >> 20,
        records_hwm >> 20,
        records as f64 / whole as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--rss-child") {
        let holding = match args.get(at + 1).map(String::as_str) {
            Some("whole") => Holding::Whole,
            _ => Holding::Records,
        };
        rss_child(holding, std::path::Path::new(&args[at + 2]));
        return;
    }
    if args.iter().any(|a| a == "--rss") {
        rss();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let count = if quick { 600 } else { 3000 };
    // `--requests-only served|reference N`: N filter and N prioritize requests on one path and
    // nothing else, for instruction counts (`valgrind --tool=callgrind --toggle-collect=...`).
    if let Some(at) = args.iter().position(|a| a == "--requests-only") {
        let path = match args.get(at + 1).map(String::as_str) {
            Some("reference") => reference::answer,
            _ => answer,
        };
        let n: usize = args.get(at + 2).and_then(|n| n.parse().ok()).unwrap_or(20);
        let view = index_of(&cluster(NODES)).publish();
        let body = request_body();
        for _ in 0..n {
            for verb in [Verb::Filter, Verb::Prioritize] {
                black_box(path(verb, &view, &body).expect("answer"));
            }
        }
        return;
    }
    let mut objects = cluster(NODES);
    println!(
        "{NODES} nodes, {} LogicalVolumes, {} claims, {} pods; names-only requests of {NODES} nodes; times in ms",
        objects.volumes.len(),
        objects.claims.len(),
        objects.pods.len()
    );

    // Update cost: one full rebuild against one change applied and published.
    let rebuilds: Vec<Duration> = (0..if quick { 3 } else { 8 })
        .map(|_| {
            let started = Instant::now();
            black_box(rebuild(&objects));
            started.elapsed()
        })
        .collect();
    let rebuild_cost = stats(rebuilds);
    let mut index = index_of(&objects);
    let stream = changes(&objects, 20_000);
    let mut costs = Vec::new();
    let mut snapshots = Vec::new();
    for change in &stream[..5000] {
        let started = Instant::now();
        apply_to_index(&mut index, change);
        // Old snapshots stay alive for a while, as requests in flight hold them.
        snapshots.push(index.publish());
        costs.push(started.elapsed());
        if snapshots.len() > 16 {
            snapshots.remove(0);
        }
    }
    drop(snapshots);
    let change_cost = stats(costs);
    println!(
        "update: one change applied + published p50 {:.4} p99 {:.4} max {:.3}; full rebuild p50 {:.1} max {:.1}; ratio rebuild/change p50 {:.0}",
        change_cost.p50,
        change_cost.p99,
        change_cost.max,
        rebuild_cost.p50,
        rebuild_cost.max,
        rebuild_cost.p50 / change_cost.p50
    );
    // The index after these changes equals a fresh build of the changed objects.
    for change in &stream[..5000] {
        apply_to_objects(&mut objects, change);
    }
    let fresh = rebuild(&objects);
    let current = index.publish();
    for i in 0..NODES {
        assert_eq!(current.node(&node_name(i)), fresh.node(&node_name(i)));
    }

    let body = request_body();
    against_reference(&current, &body, count);
    let handle = ViewHandle::default();
    handle.set(current);
    let (f0, p0) = requests(&handle, &body, count);
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "mode",
        "filt p50",
        "filt p99",
        "prio p50",
        "prio p99",
        "visible p50",
        "visible p99",
        "changes"
    );
    let row = |mode: &str, f: Stats, p: Stats, v: Option<(Stats, usize)>| {
        let (v50, v99, n) = v.map_or(("-".into(), "-".into(), "-".into()), |(v, n)| {
            (
                format!("{:.2}", v.p50),
                format!("{:.2}", v.p99),
                n.to_string(),
            )
        });
        println!(
            "{mode:<44} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {v50:>10} {v99:>10} {n:>8}",
            f.p50, f.p99, p.p50, p.p99
        );
    };
    row("no churn", f0, p0, None);
    let (f1, p1, v1, n1) = under_churn(
        Writer::Incremental,
        &mut objects,
        &mut index,
        &stream[5000..],
        &handle,
        &body,
        count,
    );
    row("100 changes/s, incremental view", f1, p1, Some((v1, n1)));
    let (f2, p2, v2, n2) = under_churn(
        Writer::FullRebuild,
        &mut objects,
        &mut index,
        &stream[5000..],
        &handle,
        &body,
        count,
    );
    row(
        "100 changes/s, full rebuild per burst (before)",
        f2,
        p2,
        Some((v2, n2)),
    );
    println!(
        "ratio before/after under churn: filter p99 {:.2}, prioritize p99 {:.2}, visible p99 {:.1}",
        f2.p99 / f1.p99,
        p2.p99 / p1.p99,
        v2.p99 / v1.p99
    );
    println!("goals: filter and prioritize p99 < 5 ms under churn; visible < 50 ms");
    drop((objects, index, handle, stream));
    rss();
}
