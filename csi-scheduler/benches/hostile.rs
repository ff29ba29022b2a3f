//! The extender's HTTP server under hostile load: the real routes on the real server function
//! (`csi_api::http::serve` with the binary's default limits) over loopback, a view of 5,000
//! nodes / 40,000 LogicalVolumes, and a names-only /filter body of 5,000 names. Measures the
//! legitimate p50/p99 (one keep-alive client, back to back) alone, then while 200 slow clients
//! hold connections stalled in the head or the body and 300 more sit idle (together over the
//! connection cap; all reconnect when cut off) and four clients send 64 MiB bodies (declared,
//! and chunked); prints the process's resident memory (VmRSS) before and its peak under the
//! load. The process includes the bench's own clients and view.
//!
//! Second part, the binary alone: the real `csi-scheduler` process (`--listen` on loopback)
//! reading a fake API server process (`fake-apiserver` of strata-tests) seeded with the same
//! 5,000 nodes / 40,000 LogicalVolumes / 45,003 claims / 5,000 pods; this bench only drives the
//! requests, and reads the scheduler's own VmRSS/VmHWM from `/proc/PID/status`: after the
//! caches synced (idle), sampled under the same hostile load, and idle after it. With
//! `STRATA_SCHEDULER_BASELINE=<path of another csi-scheduler build>` that binary runs first
//! against the same API server, and both are printed side by side.
//!
//! Run: `cargo build --release -p strata-tests --bin fake-apiserver && cargo bench -p
//! csi-scheduler --bench hostile` (add `-- --quick` for a shorter run, `-- --binary` for the
//! second part only). Without the fake-apiserver binary the second part says so and is skipped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use csi_api::names::Placement;
use csi_scheduler::fixtures::{Objects, cluster, node_name};
use csi_scheduler::http::{
    AppState, DEFAULT_MAX_CONNECTIONS, NAMES_ONLY_MAX_BODY_BYTES, ViewHandle, limits, router,
};
use csi_scheduler::metrics::Metrics;
use csi_scheduler::view::ClusterView;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const NODES: usize = 5000;
/// Clients stalling mid-request: half in the head, half in the body.
const SLOW_CLIENTS: usize = 200;
/// Clients opening connections and sending nothing, so that together with the slow ones they
/// exceed the connection cap (256).
const IDLE_CLIENTS: usize = 300;
const BIG_BODY: usize = 64 << 20;

fn rss_bytes() -> u64 {
    status_bytes("self", "VmRSS")
}

/// A `kB` field of `/proc/<pid>/status` in bytes (0 if unreadable).
fn status_bytes(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// One request on a keep-alive connection; the answer's status code.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> u16 {
    stream.write_all(request).await.expect("write");
    buf.clear();
    let mut chunk = [0u8; 64 << 10];
    loop {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "server closed a legitimate connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text[9..12].parse().unwrap_or(0);
            }
        }
    }
}

/// `count` requests back to back on `stream`, a keep-alive connection (kube-scheduler's is
/// opened once: a new connection while the cap is taken by hostile ones is closed at once).
async fn legit(stream: &mut TcpStream, request: Arc<Vec<u8>>, count: usize) -> Vec<Duration> {
    let mut buf = Vec::new();
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let status = exchange(stream, &request, &mut buf).await;
        samples.push(started.elapsed());
        assert_eq!(status, 200);
    }
    samples
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.5).as_secs_f64() * 1e3, at(0.99).as_secs_f64() * 1e3)
}

/// What a slow client sends before it stalls.
#[derive(Clone, Copy)]
enum Stall {
    /// Part of the request head (the blank line never comes).
    InHead,
    /// The head and a little of a declared 1 MiB body.
    InBody,
    /// Nothing at all: an idle connection taking a slot.
    Idle,
}

/// A client that sends what `stall` says, then stalls; reconnects 50 ms after it is cut.
async fn slow_client(addr: SocketAddr, stall: Stall, stop: Arc<AtomicBool>, cut: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let head = match stall {
            Stall::InHead => "POST /filter HTTP/1.1\r\nhost: x\r\ncontent-len",
            Stall::InBody => {
                "POST /filter HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n{\"Pod\":"
            }
            Stall::Idle => "",
        };
        if s.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let mut buf = [0u8; 1024];
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => {
                    cut.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Ok(_)) => {}
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that sends 64 MiB bodies, alternately declared and chunked, as fast as it can.
async fn big_client(addr: SocketAddr, stop: Arc<AtomicBool>, refused: Arc<AtomicU64>) {
    let chunk = vec![b' '; 1 << 20];
    let mut chunked = false;
    while !stop.load(Ordering::Relaxed) {
        chunked = !chunked;
        let Ok(mut s) = TcpStream::connect(addr).await else {
            continue;
        };
        let head = if chunked {
            "POST /filter HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
        } else {
            format!("POST /filter HTTP/1.1\r\nhost: x\r\ncontent-length: {BIG_BODY}\r\n\r\n")
        };
        if s.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let (mut rd, mut wr) = s.into_split();
        let writer = {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                for _ in 0..(BIG_BODY / chunk.len()) {
                    let ok = if chunked {
                        wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await
                            .is_ok()
                            && wr.write_all(&chunk).await.is_ok()
                            && wr.write_all(b"\r\n").await.is_ok()
                    } else {
                        wr.write_all(&chunk).await.is_ok()
                    };
                    if !ok {
                        return;
                    }
                }
            })
        };
        let mut answer = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut answer)).await
            && answer[..n].starts_with(b"HTTP/1.1 413")
        {
            refused.fetch_add(1, Ordering::Relaxed);
        }
        writer.abort();
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !std::env::args().any(|a| a == "--binary") {
        in_process(quick);
    }
    binary_alone(quick);
}

fn in_process(quick: bool) {
    let count = if quick { 200 } else { 1000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Objects {
        nodes,
        volumes,
        claims,
        classes,
        pods,
    } = cluster(NODES);
    let view = ClusterView::build(
        &nodes,
        &volumes,
        &claims,
        &classes,
        &pods,
        Placement::Binpack,
    );
    drop((nodes, volumes, claims, classes, pods));
    let request = Arc::new(filter_request());

    runtime.block_on(async {
        let state = AppState {
            view: ViewHandle::default(),
            metrics: Arc::new(Metrics::new()),
        };
        state.view.set(view);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let limits = limits(NAMES_ONLY_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS);
        let server = tokio::spawn(csi_api::http::serve(
            listener,
            router(state),
            limits,
            shutdown.clone(),
        ));

        println!("-- in process (the bench's own fixtures, view and clients included in the RSS)");
        drive(addr, request, count, quick, rss_bytes).await;
        shutdown.cancel();
        let _ = server.await;
    });
}

/// The names-only /filter request of all nodes, as HTTP/1.1 bytes.
fn filter_request() -> Vec<u8> {
    let names: Vec<String> = (0..NODES).map(node_name).collect();
    let body = serde_json::to_vec(&json!({
        "Pod": {"metadata": {"name": "db-0", "namespace": "apps"}, "spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
            {"name": "wal", "persistentVolumeClaim": {"claimName": "wal-db-0"}},
            {"name": "archive", "persistentVolumeClaim": {"claimName": "archive-db-0"}}]}},
        "NodeNames": names, "Nodes": null
    }))
    .expect("body");
    let mut request = format!(
        "POST /filter HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// What [`drive`] measured: legitimate p50/p99 alone and under the load, in ms; RSS in bytes.
#[derive(Clone, Copy)]
struct Load {
    p50: f64,
    p99: f64,
    p50_hostile: f64,
    p99_hostile: f64,
    rss_peak: u64,
}

/// Legitimate latency alone, then under 200 slow clients (100 stalled in the head, 100 in the
/// body), 300 idle connections (over the connection cap together) and four 64 MiB senders, with
/// the server's memory sampled by `rss` every 10 ms.
async fn drive(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    count: usize,
    quick: bool,
    rss: impl Fn() -> u64 + Send + 'static,
) -> Load {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let (p50, p99) = percentiles(legit(&mut conn, request.clone(), count).await);
    let rss_before = rss();
    println!(
        "{NODES} nodes, names-only /filter body {} KiB; limits: body {} MiB, {} connections",
        request.len() / 1024,
        NAMES_ONLY_MAX_BODY_BYTES >> 20,
        DEFAULT_MAX_CONNECTIONS
    );
    println!(
        "legit alone:            p50 {p50:.3} ms  p99 {p99:.3} ms   RSS {} MiB",
        rss_before >> 20
    );

    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut hostile = Vec::new();
    for i in 0..SLOW_CLIENTS + IDLE_CLIENTS {
        let stall = match i {
            i if i >= SLOW_CLIENTS => Stall::Idle,
            i if i % 2 == 0 => Stall::InHead,
            _ => Stall::InBody,
        };
        hostile.push(tokio::spawn(slow_client(
            addr,
            stall,
            stop.clone(),
            cut.clone(),
        )));
    }
    for _ in 0..4 {
        hostile.push(tokio::spawn(big_client(
            addr,
            stop.clone(),
            refused.clone(),
        )));
    }
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (p50h, p99h) = percentiles(legit(&mut conn, request.clone(), count).await);
    // Keep the pressure on past the request deadline, so that slow clients are cut.
    let window = Duration::from_secs(if quick { 6 } else { 12 });
    if started.elapsed() < window {
        tokio::time::sleep(window - started.elapsed()).await;
    }
    let (p50l, p99l) = percentiles(legit(&mut conn, request.clone(), count / 2).await);
    stop.store(true, Ordering::Relaxed);
    for task in hostile {
        task.abort();
    }
    let _ = sampler.await;
    println!(
        "legit + {SLOW_CLIENTS} slow clients (head/body) + {IDLE_CLIENTS} idle connections + 4 x 64 MiB senders: p50 {p50h:.3} ms  p99 {p99h:.3} ms (ratio p50 {:.2}, p99 {:.2}); after {} s: p50 {p50l:.3} ms  p99 {p99l:.3} ms",
        p50h / p50,
        p99h / p99,
        window.as_secs()
    );
    println!(
        "peak RSS under the hostile load: {} MiB (goal < 128 MiB, half the 256Mi pod limit); slow and idle connections cut or refused: {}; 64 MiB bodies refused with 413: {}",
        peak.load(Ordering::Relaxed) >> 20,
        cut.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    Load {
        p50,
        p99,
        p50_hostile: p50h,
        p99_hostile: p99h,
        rss_peak: peak.load(Ordering::Relaxed),
    }
}

/// A child process killed (by its own pid) when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fake API server binary: `STRATA_FAKE_APISERVER`, else beside this bench's build of
/// csi-scheduler (target/<profile>/), else target/debug.
fn fake_apiserver() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("STRATA_FAKE_APISERVER") {
        return Some(path.into());
    }
    let own = std::path::Path::new(env!("CARGO_BIN_EXE_csi-scheduler"));
    let dir = own.parent()?;
    [
        dir.join("fake-apiserver"),
        dir.join("../debug/fake-apiserver"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// The cluster of the fixtures as seed documents (JSON, one per `---`).
fn write_seed(path: &std::path::Path) -> usize {
    use std::io::Write;
    let Objects {
        nodes,
        volumes,
        claims,
        classes,
        pods,
    } = cluster(NODES);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("seed file"));
    let mut n = 0;
    let mut doc = |value: serde_json::Value| {
        writeln!(out, "---").expect("write");
        serde_json::to_writer(&mut out, &value).expect("write");
        writeln!(out).expect("write");
        n += 1;
    };
    for o in &classes {
        doc(serde_json::to_value(&**o).expect("json"));
    }
    for o in &nodes {
        doc(serde_json::to_value(&**o).expect("json"));
    }
    for o in &volumes {
        doc(serde_json::to_value(&**o).expect("json"));
    }
    for o in &claims {
        doc(serde_json::to_value(&**o).expect("json"));
    }
    for o in &pods {
        doc(serde_json::to_value(&**o).expect("json"));
    }
    out.flush().expect("flush");
    n
}

/// What one scheduler binary did against the fake API server.
struct Alone {
    ready: Duration,
    idle_rss: u64,
    idle_hwm: u64,
    load: Load,
    after_rss: u64,
}

fn binary_alone(quick: bool) {
    println!("-- the csi-scheduler binary alone, against a fake API server process");
    let Some(apiserver) = fake_apiserver() else {
        println!(
            "NOT RUN: no fake-apiserver binary (cargo build --release -p strata-tests --bin fake-apiserver, or set STRATA_FAKE_APISERVER)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = dir.path().join("seed.yaml");
    let kubeconfig = dir.path().join("kubeconfig");
    let objects = write_seed(&seed);
    let mut child = std::process::Command::new(&apiserver)
        .args(["--listen", "127.0.0.1:0", "--history", "100000"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--seed")
        .arg(&seed)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting fake-apiserver");
    let stdout = child.stdout.take().expect("stdout");
    let apiserver = Reaped(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("fake-apiserver output");
    assert!(line.starts_with("listening on"), "fake-apiserver: {line}");

    // The baseline binary first (e.g. a build of the previous commit), then this build, against
    // the same API server process.
    let mut binaries = Vec::new();
    if let Some(baseline) = std::env::var_os("STRATA_SCHEDULER_BASELINE") {
        binaries.push(("baseline", std::path::PathBuf::from(baseline)));
    }
    binaries.push(("this build", env!("CARGO_BIN_EXE_csi-scheduler").into()));
    let mut results = Vec::new();
    for (label, binary) in &binaries {
        println!("- {label}: {}", binary.display());
        let alone = scheduler_alone(binary, &kubeconfig, objects, quick);
        results.push((label, alone));
    }
    drop(apiserver);
    println!(
        "{:<12} {:>8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "binary",
        "ready s",
        "idle RSS",
        "idle HWM",
        "peak RSS",
        "after RSS",
        "p50 ms",
        "p99 ms",
        "p50 load",
        "p99 load"
    );
    for (label, a) in &results {
        println!(
            "{label:<12} {:>8.1} {:>10} {:>10} {:>10} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            a.ready.as_secs_f64(),
            format!("{} MiB", a.idle_rss >> 20),
            format!("{} MiB", a.idle_hwm >> 20),
            format!("{} MiB", a.load.rss_peak >> 20),
            format!("{} MiB", a.after_rss >> 20),
            a.load.p50,
            a.load.p99,
            a.load.p50_hostile,
            a.load.p99_hostile
        );
    }
    if let [(_, before), (_, after)] = &results[..] {
        println!(
            "ratio this build / baseline: idle RSS {:.2}, peak RSS {:.2}",
            after.idle_rss as f64 / before.idle_rss as f64,
            after.load.rss_peak as f64 / before.load.rss_peak as f64
        );
    }
    println!("goal: RSS < 128 MiB (half the 256Mi pod limit), idle and under the hostile load");
}

/// Starts `binary` against the API server of `kubeconfig`, waits until it is ready, and drives
/// the legitimate and hostile requests at it, reading its `/proc/PID/status`.
fn scheduler_alone(
    binary: &std::path::Path,
    kubeconfig: &std::path::Path,
    objects: usize,
    quick: bool,
) -> Alone {
    let count = if quick { 200 } else { 1000 };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    let scheduler = Reaped(
        std::process::Command::new(binary)
            .args(["--listen", &addr.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("starting csi-scheduler"),
    );
    let pid = scheduler.0.id().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Ready once the caches synced and the first view is published.
        loop {
            assert!(started.elapsed() < Duration::from_secs(300), "csi-scheduler never ready");
            if let Ok(mut s) = TcpStream::connect(addr).await {
                let mut buf = Vec::new();
                if exchange(&mut s, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n", &mut buf).await == 200 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ready = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mib = |field: &str| status_bytes(&pid, field) >> 20;
        let (idle_rss, idle_hwm) = (status_bytes(&pid, "VmRSS"), status_bytes(&pid, "VmHWM"));
        println!(
            "{objects} objects seeded; ready after {:.1} s; idle after sync: VmRSS {} MiB, VmHWM {} MiB",
            ready.as_secs_f64(),
            idle_rss >> 20,
            idle_hwm >> 20
        );
        let request = Arc::new(filter_request());
        let sampled = pid.clone();
        let load = drive(addr, request, count, quick, move || status_bytes(&sampled, "VmRSS")).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after_rss = status_bytes(&pid, "VmRSS");
        println!(
            "idle after the load: VmRSS {} MiB, VmHWM {} MiB (VmHWM includes the initial list)",
            mib("VmRSS"),
            mib("VmHWM")
        );
        Alone {
            ready,
            idle_rss,
            idle_hwm,
            load,
            after_rss,
        }
    })
}
