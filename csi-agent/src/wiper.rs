//! Wipe, then remove: the one deletion path of every LV (standalone DeleteVolume, the Kubernetes
//! reconciler's removal — which also serves orphans and node loss — and the resume at start).
//! The policy comes from the request (LogicalVolume `spec.wipe`), else the tag recorded at
//! creation, else the agent's class default; [`crate::wipe_policy`] turns it into a method from
//! sysfs. Nothing is touched while the LV is in use ([`crate::in_use`], asked before the mark,
//! before every wipe and before a removal): the answer is [`WipeError::InUse`] with who holds
//! it. The LV is marked before the first byte is wiped and removed only after the last, so its
//! extents stay allocated (never counted free) until then; progress is kept with the LV, so a
//! crash leaves a mark that [`Wiper::resume`] finishes from the last completed chunk.
//! One wipe per volume at a time (a per-volume lock shared by all clones), and one background
//! worker per process ([`Wiper::spawn_worker`]) for the wipes nobody waits for: standalone
//! DeleteVolume marks ([`Wiper::mark`]) and queues ([`Wiper::enqueue`]); the resume queues too.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csi_api::names::DeviceClass;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::in_use::{InUse, InUseCheck};

use crate::lvm::wipe::{DEFAULT_CHUNK_BYTES, recorded_policy};
use crate::lvm::{Activation, Lv, Lvm, LvmError, LvmRunner, WipeMethod, is_wiping};
use crate::metrics::Metrics;
use crate::wipe_policy::{self, ClassPolicies, Policy};

/// How deleted volumes are wiped.
#[derive(Debug, Clone)]
pub struct WipeConfig {
    /// Policy per device class (`--wipe-policy CLASS=POLICY`); defaults elsewhere.
    pub policies: ClassPolicies,
    /// Bytes per `blkdiscard` call (one progress step).
    pub chunk_bytes: u64,
    /// Root of sysfs (the disks' discard facts).
    pub sysfs: PathBuf,
    /// The host's procfs (its mount table and open files), for the in-use check.
    pub host_proc: PathBuf,
}

impl Default for WipeConfig {
    fn default() -> Self {
        WipeConfig {
            policies: ClassPolicies::default(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            sysfs: PathBuf::from("/sys"),
            host_proc: PathBuf::from("/proc"),
        }
    }
}

/// Why a wipe (or its mark) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    #[error(transparent)]
    Lvm(#[from] LvmError),
    /// The LV is open, held or mounted: nothing was touched.
    #[error(transparent)]
    InUse(#[from] InUse),
}

/// What [`Wiper::mark`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// The LV does not exist (already removed).
    Gone,
    /// Policy `none`: the LV was removed at once, unwiped.
    Removed,
    /// The LV carries the mark; the wipe can run (or is running).
    Marked,
}

/// First retry delay of a queued wipe that failed (doubling up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(120);

/// Where a wipe is: the method used (`discard`, `zero`), bytes done and in total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub method: &'static str,
    pub done: u64,
    pub total: u64,
}

#[derive(Default)]
struct State {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `vg/volume` of LVs marked and not removed yet (the `wipes_pending` gauge).
    pending: Mutex<HashSet<String>>,
    /// `vg/volume` queued for the worker (each once).
    queued: Mutex<HashSet<String>>,
    /// The worker's queue, once it runs.
    queue: Mutex<Option<mpsc::UnboundedSender<(String, String)>>>,
}

/// See the module head. Cheap to clone; clones share the per-volume locks.
pub struct Wiper<R: LvmRunner> {
    lvm: Lvm<R>,
    config: Arc<WipeConfig>,
    metrics: Option<Metrics>,
    state: Arc<State>,
    in_use: InUseCheck,
}

impl<R: LvmRunner> Clone for Wiper<R> {
    fn clone(&self) -> Self {
        Wiper {
            lvm: self.lvm.clone(),
            config: Arc::clone(&self.config),
            metrics: self.metrics.clone(),
            state: Arc::clone(&self.state),
            in_use: self.in_use.clone(),
        }
    }
}

impl<R: LvmRunner> Wiper<R> {
    pub fn new(lvm: Lvm<R>, config: WipeConfig, metrics: Option<Metrics>) -> Self {
        let in_use = InUseCheck {
            host_proc: config.host_proc.clone(),
            sysfs: config.sysfs.clone(),
        };
        Wiper {
            lvm,
            config: Arc::new(config),
            metrics,
            state: Arc::default(),
            in_use,
        }
    }

    pub fn lvm(&self) -> &Lvm<R> {
        &self.lvm
    }

    /// The policy of an LV: `asked`, else the recorded tag, else the class default. A policy
    /// that cannot be read is taken as `zero` (never as `none`).
    pub fn policy(&self, vg: &str, asked: Option<&str>, lv: &Lv) -> Policy {
        if crate::lvm::is_thin(lv) {
            // The pool zeroes every chunk before a thin LV can read it (`--zero y`), so a deleted
            // thin volume's blocks never reach another volume; zeroing it would only provision
            // every chunk and fill the pool. Its removal returns its chunks to the pool.
            return Policy::None;
        }
        let named = asked.or_else(|| recorded_policy(lv));
        match named.map(str::parse::<Policy>) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                warn!(error = %e, lv = %lv.name, "unreadable wipe policy; zeroing");
                Policy::Zero
            }
            None => match DeviceClass::from_vg_name(vg) {
                Some(class) => self.config.policies.get(class),
                None => Policy::Zero,
            },
        }
    }

    fn volume_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.state.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(key.to_owned()).or_default())
    }

    fn set_pending(&self, key: &str, pending: bool) {
        let mut set = self.state.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending {
            set.insert(key.to_owned());
        } else {
            set.remove(key);
        }
        if let Some(m) = &self.metrics {
            m.wipes_pending
                .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
        }
    }

    /// Marks the LV of `volume` in `vg` for its wipe, after recording the asked policy, and
    /// only if it is not in use; policy `none` removes it at once (also only if not in use).
    /// Repeatable: an LV already marked (or being wiped now) answers [`Marked::Marked`].
    pub async fn mark(
        &self,
        vg: &str,
        volume: &str,
        asked: Option<&str>,
    ) -> Result<Marked, WipeError> {
        let key = format!("{vg}/{volume}");
        let lock = self.volume_lock(&key);
        let Ok(_one_at_a_time) = lock.try_lock() else {
            // A wipe of this LV is running: it is marked.
            return Ok(Marked::Marked);
        };
        let Some(lv) = self.lvm.lv(vg, volume).await? else {
            self.set_pending(&key, false);
            return Ok(Marked::Gone);
        };
        if is_wiping(&lv) {
            return Ok(Marked::Marked);
        }
        self.in_use.check(&lv).await?;
        let policy = self.policy(vg, asked, &lv);
        if policy == Policy::None {
            info!(volume, %vg, "wipe policy none: removing the LV without wiping it");
            self.lvm.remove_lv(vg, volume).await?;
            return Ok(Marked::Removed);
        }
        self.record_asked(vg, volume, asked, &lv).await?;
        self.set_pending(&key, true);
        self.lvm.mark_wiping(vg, volume).await?;
        Ok(Marked::Marked)
    }

    async fn record_asked(
        &self,
        vg: &str,
        volume: &str,
        asked: Option<&str>,
        lv: &Lv,
    ) -> Result<(), LvmError> {
        if let Some(asked) = asked
            && recorded_policy(lv) != Some(asked)
        {
            // Kept for a resume after a crash, which has no request to read it from.
            self.lvm.record_wipe_policy(vg, volume, asked).await?;
        }
        Ok(())
    }

    /// Queues the wipe and removal of `volume` in `vg` for the worker (once; a second call
    /// while it is queued or running does nothing). Without a worker the wipe waits for the
    /// next start's resume (its mark stays).
    pub fn enqueue(&self, vg: &str, volume: &str) {
        let key = format!("{vg}/{volume}");
        {
            let mut queued = self.state.queued.lock().unwrap_or_else(|p| p.into_inner());
            if !queued.insert(key.clone()) {
                return;
            }
        }
        let sent = self
            .state
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|q| q.send((vg.to_owned(), volume.to_owned())).is_ok());
        if !sent {
            warn!(volume, %vg, "no wipe worker: the marked LV is finished at the next start");
            self.unqueue(&key);
        }
    }

    fn unqueue(&self, key: &str) {
        self.state
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Starts the process's one wipe worker: it wipes and removes the queued LVs one after
    /// another, retrying a failed one with backoff (an LV in use meanwhile is left untouched
    /// and retried), until `shutdown` (the running wipe stops between chunks if the LVM
    /// handle carries the same token; its progress stays with the LV).
    pub fn spawn_worker(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()>
    where
        R: 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        *self.state.queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let mut delays: HashMap<String, Duration> = HashMap::new();
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = rx.recv() => next,
                };
                let Some((vg, volume)) = next else { break };
                let key = format!("{vg}/{volume}");
                match this.wipe_and_remove(&vg, &volume, None, &|_| {}).await {
                    Ok(_) => {
                        delays.remove(&key);
                        this.unqueue(&key);
                    }
                    Err(_) if shutdown.is_cancelled() => break,
                    Err(e) => {
                        let delay = delays.entry(key.clone()).or_insert(FIRST_RETRY / 2);
                        *delay = (*delay * 2).min(MAX_RETRY);
                        warn!(volume, %vg, error = %e, retry_in = ?*delay, "wipe not finished; retrying");
                        let (tx, delay, stop) = (tx.clone(), *delay, shutdown.clone());
                        tokio::spawn(async move {
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = tokio::time::sleep(delay) => { let _ = tx.send((vg, volume)); }
                            }
                        });
                    }
                }
            }
        })
    }

    /// Wipes the LV of `volume` in `vg` as its policy says, then removes it. `Ok(false)` when
    /// the LV was already gone. `progress` is called as the wipe advances (not for `none`).
    /// An LV in use is not touched ([`WipeError::InUse`], asked before the mark and again
    /// before the wipe of an LV already marked). On any error the LV stays (marked, if the
    /// wipe had started) and the call can be repeated; a repeat resumes from the last chunk.
    pub async fn wipe_and_remove(
        &self,
        vg: &str,
        volume: &str,
        asked: Option<&str>,
        progress: &(dyn Fn(&Progress) + Send + Sync),
    ) -> Result<bool, WipeError> {
        let key = format!("{vg}/{volume}");
        let lock = self.volume_lock(&key);
        let _one_at_a_time = lock.lock().await;
        let Some(lv) = self.lvm.lv(vg, volume).await? else {
            self.set_pending(&key, false);
            return Ok(false);
        };
        self.in_use.check(&lv).await?;
        let mut policy = self.policy(vg, asked, &lv);
        if policy == Policy::None && is_wiping(&lv) {
            // A wipe that has started is finished, whatever the policy says now.
            policy = Policy::Zero;
        }
        if policy == Policy::None {
            info!(volume, %vg, "wipe policy none: removing the LV without wiping it");
            return Ok(self.lvm.remove_lv(vg, volume).await?);
        }
        self.record_asked(vg, volume, asked, &lv).await?;
        self.set_pending(&key, true);
        let mut lv = self.lvm.mark_wiping(vg, volume).await?;
        if lv.active == Activation::Inactive {
            lv = self.lvm.activate_lv(vg, volume).await?;
        }
        let choice = match wipe_policy::kernel_name(&lv.device_path()) {
            Some(kname) => wipe_policy::choose_for_device(&self.config.sysfs, &kname, policy),
            None => wipe_policy::choose(policy, None, &[]),
        };
        let method = choice.method.unwrap_or(WipeMethod::Zero);
        info!(volume, %vg, %policy, method = method.as_str(), reason = %choice.reason, bytes = lv.size_bytes, "wiping LV");
        let started = Instant::now();
        let report = |done: u64, total: u64| {
            progress(&Progress {
                method: method.as_str(),
                done,
                total,
            })
        };
        let bytes = self
            .lvm
            .wipe_lv(vg, volume, method, self.config.chunk_bytes, &report)
            .await?;
        let took = started.elapsed();
        info!(volume, %vg, method = method.as_str(), bytes, seconds = took.as_secs_f64(), "LV wiped");
        if let Some(m) = &self.metrics {
            let class = DeviceClass::from_vg_name(vg).map_or("other".to_owned(), |c| c.to_string());
            m.wiped(method.as_str(), &class, bytes, took);
        }
        let removed = self.lvm.remove_lv(vg, volume).await?;
        self.set_pending(&key, false);
        Ok(removed)
    }

    /// Queues every LV a previous run left marked for the worker (which resumes each from its
    /// last completed chunk). Returns how many were queued.
    pub async fn resume_in_background(&self) -> Result<usize, LvmError> {
        let marked = self.lvm.wiping_lvs().await?;
        let mut queued = 0;
        for lv in &marked {
            if let Some(volume) = &lv.volume {
                self.set_pending(&format!("{}/{volume}", lv.vg), true);
                self.enqueue(&lv.vg, volume);
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Finishes every LV a previous run left marked, in this task: wipes it from its last
    /// completed chunk and removes it. Returns how many were finished; the others are logged
    /// and stay marked.
    pub async fn resume(&self) -> Result<usize, LvmError> {
        let marked = self.lvm.wiping_lvs().await?;
        for lv in &marked {
            if let Some(volume) = &lv.volume {
                self.set_pending(&format!("{}/{volume}", lv.vg), true);
            }
        }
        let mut finished = 0;
        for lv in marked {
            let Some(volume) = lv.volume.as_deref() else {
                continue;
            };
            info!(volume, vg = %lv.vg, "resuming an interrupted wipe");
            match self.wipe_and_remove(&lv.vg, volume, None, &|_| {}).await {
                Ok(_) => finished += 1,
                Err(e) => warn!(volume, vg = %lv.vg, error = %e, "interrupted wipe not finished"),
            }
        }
        Ok(finished)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::lvm::naming::volume_tag;
    use crate::lvm::{FakeRunner, Invocation, LvmOptions, OWNER_TAG, Reply, WIPING_TAG};

    const MIB: u64 = 1 << 20;
    /// Not a tag: makes the fake report the LV open (`lv_attr` `o`).
    const OPEN: &str = "test-open";

    /// `(vg, lv name, tags)` of each LV the fake lvm2 holds.
    type FakeLvs = Arc<StdMutex<Vec<(String, String, Vec<String>)>>>;

    /// A tiny lvm2 holding LVs `(vg, name, tags)` of 4 MiB, inactive (no device node on the
    /// host, so the wipe method falls back to what needs no sysfs facts).
    fn fake(lvs: FakeLvs) -> FakeRunner {
        FakeRunner::from_fn(move |inv: &Invocation| {
            let mut lvs = lvs.lock().unwrap();
            let row = |(vg, name, tags): &(String, String, Vec<String>)| {
                format!(
                    r#"{{"lv_name":"{name}","vg_name":"{vg}","lv_uuid":"U","lv_size":"{}","lv_tags":"{}","lv_active":"active","lv_attr":"{}"}}"#,
                    4 * MIB,
                    tags.iter()
                        .filter(|t| *t != OPEN)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(","),
                    if tags.iter().any(|t| t == OPEN) {
                        "-wi-ao----"
                    } else {
                        "-wi-a-----"
                    }
                )
            };
            let target = inv.args.last().cloned().unwrap_or_default();
            let find = |lvs: &Vec<(String, String, Vec<String>)>| {
                lvs.iter()
                    .position(|(vg, n, _)| format!("{vg}/{n}") == target)
            };
            match inv.subcommand() {
                "lvs" => {
                    let rows: Vec<String> = match find(&lvs) {
                        Some(i) => vec![row(&lvs[i])],
                        None if target.contains('/') => {
                            return Reply::fail(5, "  Failed to find logical volume \"x\"");
                        }
                        None => lvs.iter().map(row).collect(),
                    };
                    Reply::ok(format!(r#"{{"report":[{{"lv":[{}]}}]}}"#, rows.join(",")))
                }
                "lvchange" => {
                    let i = find(&lvs).unwrap();
                    let mut it = inv.args.iter();
                    while let Some(a) = it.next() {
                        match a.as_str() {
                            "--addtag" => lvs[i].2.push(it.next().unwrap().clone()),
                            "--deltag" => {
                                let t = it.next().unwrap();
                                lvs[i].2.retain(|x| x != t)
                            }
                            _ => {}
                        }
                    }
                    Reply::ok("  Logical volume changed.")
                }
                "lvremove" => {
                    let i = find(&lvs).unwrap();
                    lvs.remove(i);
                    Reply::ok("  Logical volume \"x\" successfully removed.")
                }
                "blkdiscard" => Reply::ok(""),
                other => Reply::fail(5, format!("unexpected {other}")),
            }
        })
    }

    fn tags(volume: &str, extra: &[&str]) -> Vec<String> {
        let mut t = vec![OWNER_TAG.to_owned(), volume_tag(volume).unwrap()];
        t.extend(extra.iter().map(|s| s.to_string()));
        t
    }

    fn wiper(lvs: Vec<(String, String, Vec<String>)>) -> (Wiper<FakeRunner>, FakeLvs) {
        let state = Arc::new(StdMutex::new(lvs));
        let lvm = Lvm::new(fake(state.clone()), LvmOptions::default());
        let w = Wiper::new(
            lvm,
            WipeConfig {
                chunk_bytes: MIB,
                ..WipeConfig::default()
            },
            Some(Metrics::new()),
        );
        (w, state)
    }

    fn lv(vg: &str, name: &str, extra: &[&str]) -> (String, String, Vec<String>) {
        (vg.into(), name.into(), tags(name, extra))
    }

    #[tokio::test]
    async fn marks_before_the_first_byte_and_removes_after_the_last() {
        let (w, state) = wiper(vec![lv("strata-hdd", "pvc-1", &[])]);
        let seen = StdMutex::new(Vec::new());
        let removed = w
            .wipe_and_remove("strata-hdd", "pvc-1", None, &|p| {
                seen.lock().unwrap().push(p.clone())
            })
            .await
            .unwrap();
        assert!(removed);
        assert!(state.lock().unwrap().is_empty());
        let order: Vec<String> = w
            .lvm()
            .runner()
            .calls()
            .iter()
            .filter(|c| c.subcommand() != "lvs")
            .map(|c| c.subcommand().to_owned())
            .collect();
        assert_eq!(
            order,
            [
                "lvchange",
                "blkdiscard",
                "lvchange",
                "blkdiscard",
                "lvchange",
                "blkdiscard",
                "lvchange",
                "blkdiscard",
                "lvremove"
            ]
        );
        let mark = &w.lvm().runner().calls_of("lvchange")[0];
        assert!(mark.args.contains(&WIPING_TAG.to_owned()));
        // hdd's default is zero.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.first().unwrap().method, "zero");
        assert_eq!((seen.last().unwrap().done, seen.len()), (4 * MIB, 5));
        let text = w.metrics.as_ref().unwrap().encode();
        assert!(
            text.contains(r#"strata_agent_wiped_bytes_total{method="zero",class="hdd"} 4194304"#),
            "{text}"
        );
        assert!(text.contains("strata_agent_wipes_pending 0"), "{text}");
    }

    #[tokio::test]
    async fn an_open_lv_is_neither_marked_wiped_nor_removed() {
        for policy in [None, Some("none"), Some("zero")] {
            let (w, state) = wiper(vec![lv("strata-hdd", "pvc-1", &[OPEN])]);
            let err = w
                .wipe_and_remove("strata-hdd", "pvc-1", policy, &|_| {})
                .await
                .unwrap_err();
            assert!(matches!(err, WipeError::InUse(_)), "{err:?}");
            assert!(
                err.to_string().contains("strata-hdd/pvc-1 is in use"),
                "{err}"
            );
            let err = w.mark("strata-hdd", "pvc-1", policy).await.unwrap_err();
            assert!(matches!(err, WipeError::InUse(_)), "{err:?}");
            let calls = w.lvm().runner().calls();
            assert!(calls.iter().all(|c| c.subcommand() == "lvs"), "{calls:?}");
            assert_eq!(state.lock().unwrap().len(), 1);
        }
    }

    #[tokio::test]
    async fn mark_marks_once_and_the_worker_finishes_each_lv_once() {
        let (w, state) = wiper(vec![
            lv("strata-hdd", "pvc-1", &[]),
            lv("strata-hdd", "pvc-2", &[]),
        ]);
        assert_eq!(
            w.mark("strata-hdd", "pvc-1", None).await.unwrap(),
            Marked::Marked
        );
        assert_eq!(
            w.mark("strata-hdd", "pvc-1", None).await.unwrap(),
            Marked::Marked
        );
        assert_eq!(
            w.mark("strata-hdd", "pvc-2", None).await.unwrap(),
            Marked::Marked
        );
        assert_eq!(
            w.mark("strata-hdd", "pvc-3", None).await.unwrap(),
            Marked::Gone
        );
        let marks = w.lvm().runner().calls_of("lvchange");
        assert_eq!(marks.len(), 2, "{marks:?}");
        assert!(w.lvm().runner().calls_of("blkdiscard").is_empty());
        // Queued twice (DeleteVolume repeated, then the resume pass): wiped once.
        let stop = CancellationToken::new();
        let worker = w.spawn_worker(stop.clone());
        w.enqueue("strata-hdd", "pvc-1");
        w.enqueue("strata-hdd", "pvc-1");
        // pvc-2 at least (pvc-1 may be finished already).
        assert!(w.resume_in_background().await.unwrap() >= 1);
        for _ in 0..200 {
            if state.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(state.lock().unwrap().is_empty());
        // 4 MiB in 1 MiB chunks, per LV: one wipe each.
        assert_eq!(w.lvm().runner().calls_of("blkdiscard").len(), 8);
        assert_eq!(w.lvm().runner().calls_of("lvremove").len(), 2);
        stop.cancel();
        worker.await.unwrap();
    }

    #[tokio::test]
    async fn policy_none_removes_without_marking_or_wiping() {
        let (w, state) = wiper(vec![lv("strata-ssd", "pvc-1", &["strata.io/wipe=none"])]);
        assert!(
            w.wipe_and_remove("strata-ssd", "pvc-1", None, &|_| {})
                .await
                .unwrap()
        );
        assert!(state.lock().unwrap().is_empty());
        assert!(w.lvm().runner().calls_of("blkdiscard").is_empty());
        assert!(w.lvm().runner().calls_of("lvchange").is_empty());
    }

    #[tokio::test]
    async fn a_started_wipe_is_finished_even_if_the_policy_became_none() {
        let (w, _) = wiper(vec![lv("strata-ssd", "pvc-1", &[WIPING_TAG])]);
        assert!(
            w.wipe_and_remove("strata-ssd", "pvc-1", Some("none"), &|_| {})
                .await
                .unwrap()
        );
        assert_eq!(w.lvm().runner().calls_of("blkdiscard").len(), 4);
    }

    #[tokio::test]
    async fn the_asked_policy_is_recorded_before_the_mark() {
        let (w, _) = wiper(vec![lv("strata-nvme", "pvc-1", &[])]);
        w.wipe_and_remove("strata-nvme", "pvc-1", Some("zero"), &|_| {})
            .await
            .unwrap();
        let changes = w.lvm().runner().calls_of("lvchange");
        assert!(changes[0].args.contains(&"strata.io/wipe=zero".to_owned()));
        assert!(changes[1].args.contains(&WIPING_TAG.to_owned()));
        let zeroed = w.lvm().runner().calls_of("blkdiscard");
        assert!(
            zeroed
                .iter()
                .all(|c| c.args.contains(&"--zeroout".to_owned()))
        );
    }

    #[tokio::test]
    async fn discard_without_sysfs_evidence_zeroes() {
        // The fake LV has no device node: no evidence, so nvme's default discard zeroes.
        let (w, _) = wiper(vec![lv("strata-nvme", "pvc-1", &[])]);
        w.wipe_and_remove("strata-nvme", "pvc-1", None, &|_| {})
            .await
            .unwrap();
        let calls = w.lvm().runner().calls_of("blkdiscard");
        assert!(
            calls
                .iter()
                .all(|c| c.args.contains(&"--zeroout".to_owned()))
        );
    }

    #[tokio::test]
    async fn gone_is_success_and_resume_finishes_only_marked_lvs() {
        let (w, state) = wiper(vec![
            lv("strata-ssd", "pvc-1", &[WIPING_TAG]),
            lv("strata-ssd", "pvc-2", &[]),
            lv("strata-hdd", "pvc-3", &[WIPING_TAG, "strata.io/wipe=none"]),
        ]);
        assert!(
            !w.wipe_and_remove("strata-ssd", "pvc-9", None, &|_| {})
                .await
                .unwrap()
        );
        assert_eq!(w.resume().await.unwrap(), 2);
        let left: Vec<String> = state.lock().unwrap().iter().map(|l| l.1.clone()).collect();
        assert_eq!(left, ["pvc-2"]);
        // Both marked LVs were wiped in full (4 chunks each), the none-tagged one too.
        assert_eq!(w.lvm().runner().calls_of("blkdiscard").len(), 8);
    }

    #[test]
    fn policy_precedence() {
        let (w, _) = wiper(vec![]);
        let lv = |extra: &[&str]| Lv {
            vg: "strata-ssd".into(),
            name: "pvc-1".into(),
            uuid: None,
            size_bytes: 0,
            tags: tags("pvc-1", extra),
            active: Activation::Active,
            volume: Some("pvc-1".into()),
            pvc: None,
            owned: true,
            open: false,
        };
        assert_eq!(w.policy("strata-ssd", None, &lv(&[])), Policy::Discard);
        // a thin LV: never wiped, whatever was asked (the pool zeroes chunks before reuse)
        assert_eq!(
            w.policy("strata-hdd", Some("zero"), &lv(&[crate::lvm::THIN_TAG])),
            Policy::None
        );
        assert_eq!(w.policy("strata-hdd", None, &lv(&[])), Policy::Zero);
        assert_eq!(
            w.policy("strata-ssd", None, &lv(&["strata.io/wipe=none"])),
            Policy::None
        );
        assert_eq!(
            w.policy("strata-ssd", Some("zero"), &lv(&["strata.io/wipe=none"])),
            Policy::Zero
        );
        assert_eq!(
            w.policy("strata-ssd", Some("bogus"), &lv(&[])),
            Policy::Zero
        );
    }
}
