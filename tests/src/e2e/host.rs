//! The host side of the e2e suite: building the binaries, the node VM running the supervisor
//! (booted through `tests/nodevm/nodevm` with one forwarded port to the fake API server), the
//! commands sent to it, and the host processes (csi-controller, csi-scheduler) with their logs.
//! Every process started here is stopped by pid when its handle drops.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::protocol::{self, Op, Reply};
use crate::apiserver::FakeApiServer;
use crate::csi_client::Csi;

/// The folder of the workspace's binaries: the test binary is `<dir>/deps/<name>-<hash>`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary folder");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("target profile folder").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Set to `1` to run the binaries already in the target folder without building them.
pub const ENV_SKIP_BUILD: &str = "STRATA_E2E_SKIP_BUILD";

/// Builds csi-agent, csi-controller and csi-scheduler (once per process) with the cargo that runs
/// the tests, so that the suite never runs stale binaries (unless `STRATA_E2E_SKIP_BUILD=1`).
pub fn build_binaries() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        if std::env::var(ENV_SKIP_BUILD).is_ok_and(|v| v == "1") {
            eprintln!(
                "e2e: {ENV_SKIP_BUILD}=1: using the binaries in {}",
                bin_dir().display()
            );
            return;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(repo())
            // The workspace's binaries as every script builds them (`--workspace`: one feature
            // resolution, so no stage rebuilds another's artifacts); the crash points
            // (`csi_api::fault`) come from strata-tests by feature unification.
            .args(["build", "--workspace", "--bins"])
            .status()
            .expect("cannot run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    for bin in ["csi-agent", "csi-controller", "csi-scheduler"] {
        let path = bin_dir().join(bin);
        assert!(path.exists(), "{} is missing", path.display());
    }
}

/// One node VM at a time on this machine (each takes a core or two under TCG): an exclusive
/// lock on a file in the target folder, held while the guard lives.
pub struct VmLock(#[allow(dead_code)] Flock<File>);

impl VmLock {
    pub fn acquire() -> VmLock {
        let path = bin_dir().join("e2e-vm.lock");
        let file = File::create(&path).expect("lock file");
        VmLock(
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .expect("flock"),
        )
    }
}

fn signal(child: &Child, sig: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Waits for `child` at most `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a log file (for failure messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` of the kernel console of the nodevm run under `run_parent` (nodevm's
/// `nodevm.XXXXXX/console.log`).
fn console_tail(run_parent: &Path, lines: usize) -> String {
    let Ok(entries) = std::fs::read_dir(run_parent) else {
        return format!("(no run folder under {})", run_parent.display());
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("console.log"))
        .filter(|p| p.is_file())
        .map(|p| tail(&p, lines))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `name` found in `$PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The node VM with the lab disks, running the supervisor.
pub struct Vm {
    child: Child,
    client: Client,
    seq: AtomicU64,
    pub log: PathBuf,
    pub dir: PathBuf,
}

impl Vm {
    /// How long a boot may take until the supervisor answers. A boot takes 7–20 s under TCG; a
    /// guest that has not answered after this long is stuck (seen once in CI, with nothing on
    /// its console copy), so it is stopped and booted once more, its console printed.
    const BOOT_DEADLINE: Duration = Duration::from_secs(150);

    /// Boots the VM; its supervisor reaches `api` at `10.0.2.100:6443`. `dir` (inside the
    /// repository, which the VM shares) receives the VM's kubeconfig and logs. A boot that does
    /// not answer within [`Self::BOOT_DEADLINE`] is retried once (test-harness resilience: the
    /// product's code has not run yet at that point); the second failure panics with both
    /// consoles.
    pub async fn boot(api: &FakeApiServer, dir: &Path, node: &str) -> Vm {
        let mut failures = Vec::new();
        for attempt in 1..=2 {
            match Self::boot_once(api, dir, node).await {
                Ok(vm) => return vm,
                Err(why) => {
                    eprintln!("e2e: node VM boot {attempt} failed: {why}");
                    failures.push(format!("boot {attempt}: {why}"));
                }
            }
        }
        panic!(
            "the node VM did not come up twice:\n{}",
            failures.join("\n\n")
        )
    }

    async fn boot_once(api: &FakeApiServer, dir: &Path, node: &str) -> Result<Vm, String> {
        let nodevm = repo().join("tests/nodevm/nodevm");
        // the VM's kubeconfig names the forwarded address instead of the loopback one
        let kubeconfig = crate::apiserver::kubeconfig::yaml(
            &format!("http://{}:{}", protocol::VM_API_HOST, protocol::VM_API_PORT),
            "default",
        );
        std::fs::write(dir.join("kubeconfig-vm"), kubeconfig).expect("kubeconfig");
        // kube's rustls client loads the system's CA roots even for plain http; the VM image
        // has none, so it gets the host's bundle (SSL_CERT_FILE is read by rustls-native-certs)
        let roots = dir.join("ca-certificates.crt");
        std::fs::copy("/etc/ssl/certs/ca-certificates.crt", &roots)
            .expect("the host's CA bundle /etc/ssl/certs/ca-certificates.crt (ca-certificates)");
        let log = dir.join("vm.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("vm log");
        // nodevm's run folder (disk images, the kernel console) goes under `dir`, so that a
        // stuck boot's console can be read before the VM is stopped
        let run_parent = dir.join("nodevm-run");
        let _ = std::fs::remove_dir_all(&run_parent);
        std::fs::create_dir_all(&run_parent).expect("nodevm run folder");
        // A `tcp:` chardev behind guestfwd is one stream for all guest connections (kube
        // clients open several); `cmd:` starts a relay per connection instead.
        let socat = find_program("socat").unwrap_or_else(|| {
            panic!("the e2e tests need socat on the host to relay the VM's API connections (apt-get install socat)")
        });
        let netdev = format!(
            "user,id=n0,restrict=on,guestfwd=tcp:{}:{}-cmd:{} STDIO TCP:127.0.0.1:{}",
            protocol::VM_API_HOST,
            protocol::VM_API_PORT,
            socat.display(),
            api.addr().port()
        );
        let exe = std::env::current_exe().expect("current_exe");
        let child = Command::new(&nodevm)
            .args(["run", "--lab", "--timeout", "1200", "--mem", "1536"])
            .args(["--qemu", "-netdev", "--qemu", &netdev])
            .args([
                "--qemu",
                "-device",
                "--qemu",
                "virtio-net-pci,netdev=n0,addr=0x17",
            ])
            .arg("--env")
            .arg(format!("SSL_CERT_FILE={}", roots.display()))
            .arg("--")
            .arg(&exe)
            .args(["--ignored", "--exact", "vm_supervisor", "--nocapture"])
            .env(protocol::ENV_DIR, dir)
            .env(protocol::ENV_NODE, node)
            .env("TMPDIR", &run_parent)
            .env_remove(csi_api::fault::ENV)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nodevm.display()));
        let mut vm = Vm {
            child,
            client: api.client().expect("client"),
            seq: AtomicU64::new(0),
            log,
            dir: dir.to_path_buf(),
        };
        let ready: Api<ConfigMap> = Api::namespaced(vm.client.clone(), protocol::NAMESPACE);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = vm.child.try_wait() {
                panic!(
                    "the node VM ended before its supervisor served ({status}; 125 = no VM: is \
                     qemu installed?):\n{}",
                    tail(&vm.log, 60)
                );
            }
            if ready
                .get_opt(protocol::READY)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                break;
            }
            if start.elapsed() > Self::BOOT_DEADLINE {
                let console = console_tail(&run_parent, 60);
                let why = format!(
                    "the supervisor did not answer within {:?}\n-- vm.log --\n{}\n-- kernel \
                     console --\n{console}",
                    Self::BOOT_DEADLINE,
                    tail(&vm.log, 40)
                );
                // stops qemu (nodevm's trap) and waits: nothing of this boot survives it
                drop(vm);
                let _ = ready.delete(protocol::READY, &Default::default()).await;
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        eprintln!("e2e: node VM ready after {:?}", start.elapsed());
        Ok(vm)
    }

    /// Sends one command and waits at most `timeout` for its reply.
    pub async fn call(&self, op: Op, timeout: Duration) -> Result<Value, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), protocol::NAMESPACE);
        let name = format!("cmd-{}", self.seq.fetch_add(1, Ordering::SeqCst));
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(protocol::LABEL.into(), "true".into())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                protocol::KEY_OP.into(),
                serde_json::to_string(&op).expect("op"),
            )])),
            ..Default::default()
        };
        api.create(&PostParams::default(), &cm)
            .await
            .map_err(|e| format!("sending {op:?}: {e}"))?;
        let start = Instant::now();
        loop {
            let cm = api
                .get(&name)
                .await
                .map_err(|e| format!("reading the reply to {op:?}: {e}"))?;
            if let Some(reply) = cm.data.as_ref().and_then(|d| d.get(protocol::KEY_REPLY)) {
                return match serde_json::from_str(reply) {
                    Ok(Reply::Ok(v)) => Ok(v),
                    Ok(Reply::Err(e)) => Err(e),
                    Err(e) => Err(format!("bad reply {reply:?}: {e}")),
                };
            }
            if start.elapsed() > timeout {
                return Err(format!("no reply to {op:?} within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Vm::call`] that panics on error, with the agent's log tail.
    pub async fn must(&self, op: Op) -> Value {
        let what = format!("{op:?}");
        match self.call(op, Duration::from_secs(180)).await {
            Ok(v) => v,
            Err(e) => panic!(
                "VM command {what} failed: {e}\nagent log:\n{}",
                tail(&self.dir.join("agent.log"), 40)
            ),
        }
    }

    /// Asks the supervisor to stop and waits for the VM to power off with success.
    pub async fn shutdown(mut self) {
        let _ = self.call(Op::Shutdown, Duration::from_secs(60)).await;
        let status = wait_timeout(&mut self.child, Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "the node VM did not end cleanly ({status:?}):\n{}",
            tail(&self.log, 40)
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // nodevm traps SIGTERM, stops qemu (SIGKILL after 5 s) and removes its run folder
            signal(&self.child, Signal::SIGTERM);
            if wait_timeout(&mut self.child, Duration::from_secs(30)).is_none() {
                signal(&self.child, Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
    }
}

/// A host process (controller, scheduler) with its stderr in a log file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(mut cmd: Command, log: &Path) -> Process {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Process {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits at most `timeout` for the process to end by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, Signal::SIGTERM);
            if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
                signal(&self.child, Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The csi-controller command line of the tests: CSI on unix `socket`, metrics on an ephemeral
/// port, Lease identity `identity`, `KUBECONFIG=kubeconfig`, `args`, and crash point `fault`
/// (never one inherited from the test's own environment).
pub fn controller_command<S: AsRef<std::ffi::OsStr>>(
    socket: &Path,
    identity: &str,
    kubeconfig: &Path,
    args: &[S],
    fault: Option<&str>,
) -> Command {
    let mut cmd = Command::new(bin_dir().join("csi-controller"));
    cmd.arg("--csi-endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(["--metrics-addr", "127.0.0.1:0", "--identity", identity])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("STRATA_LOG", "info")
        .env_remove(csi_api::fault::ENV);
    if let Some(point) = fault {
        cmd.env(csi_api::fault::ENV, point);
    }
    cmd
}

/// csi-controller on the host, on a unix socket.
pub struct Controller {
    pub process: Process,
    pub csi: Csi,
}

impl Controller {
    /// Starts it with `KUBECONFIG=kubeconfig` and `args`, waits until Probe answers ready.
    pub async fn start(
        dir: &Path,
        kubeconfig: &Path,
        args: &[String],
        fault: Option<&str>,
    ) -> Controller {
        let socket = dir.join("controller.sock");
        let cmd = controller_command(&socket, "e2e-controller", kubeconfig, args, fault);
        let mut process = Process::spawn(cmd, &dir.join("controller.log"));
        let csi = Csi::connect_lazy(&socket).expect("controller channel");
        let start = Instant::now();
        loop {
            if let Some(status) = process.exited() {
                panic!(
                    "csi-controller exited at start ({status}):\n{}",
                    tail(&process.log, 30)
                );
            }
            if socket.exists() && csi.ready().await {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "csi-controller not ready within 30 s:\n{}",
                tail(&process.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Controller { process, csi }
    }
}

/// csi-scheduler on the host.
pub struct Scheduler {
    pub process: Process,
    pub addr: String,
}

impl Scheduler {
    pub async fn start(dir: &Path, kubeconfig: &Path) -> Scheduler {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin_dir().join("csi-scheduler"));
        cmd.args(["--listen", &addr])
            .env("KUBECONFIG", kubeconfig)
            .env("STRATA_LOG", "info");
        let mut process = Process::spawn(cmd, &dir.join("scheduler.log"));
        let start = Instant::now();
        loop {
            if let Some(status) = process.exited() {
                panic!(
                    "csi-scheduler exited at start ({status}):\n{}",
                    tail(&process.log, 30)
                );
            }
            if let Ok((200, _)) = http(&addr, "GET", "/readyz", "").await {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "csi-scheduler not ready within 30 s:\n{}",
                tail(&process.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Scheduler { process, addr }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status code and the body. Enough
/// for the extender's JSON endpoints (no chunked encoding: axum sends a length for these).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((code, body.to_owned()))
}
