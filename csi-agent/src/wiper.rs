//! Wipe, then remove: the one deletion path of every LV (standalone DeleteVolume, the Kubernetes
//! reconciler's removal — which also serves orphans and node loss — and the resume at start).
//! The policy comes from the request (LogicalVolume `spec.wipe`), else the tag recorded at
//! creation, else the agent's class default; [`crate::wipe_policy`] turns it into a method from
//! sysfs. The LV is marked before the first byte is wiped and removed only after the last, so its
//! extents stay allocated (never counted free) until then, and a crash leaves a mark that
//! [`Wiper::resume`] finishes (from the start) after a restart. One wipe per volume at a time.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use csi_api::names::DeviceClass;
use tracing::{info, warn};

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
}

impl Default for WipeConfig {
    fn default() -> Self {
        WipeConfig {
            policies: ClassPolicies::default(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            sysfs: PathBuf::from("/sys"),
        }
    }
}

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
}

/// See the module head. Cheap to clone; clones share the per-volume locks.
pub struct Wiper<R: LvmRunner> {
    lvm: Lvm<R>,
    config: Arc<WipeConfig>,
    metrics: Option<Metrics>,
    state: Arc<State>,
}

impl<R: LvmRunner> Clone for Wiper<R> {
    fn clone(&self) -> Self {
        Wiper {
            lvm: self.lvm.clone(),
            config: Arc::clone(&self.config),
            metrics: self.metrics.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

impl<R: LvmRunner> Wiper<R> {
    pub fn new(lvm: Lvm<R>, config: WipeConfig, metrics: Option<Metrics>) -> Self {
        Wiper {
            lvm,
            config: Arc::new(config),
            metrics,
            state: Arc::default(),
        }
    }

    pub fn lvm(&self) -> &Lvm<R> {
        &self.lvm
    }

    /// The policy of an LV: `asked`, else the recorded tag, else the class default. A policy
    /// that cannot be read is taken as `zero` (never as `none`).
    pub fn policy(&self, vg: &str, asked: Option<&str>, lv: &Lv) -> Policy {
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

    /// Wipes the LV of `volume` in `vg` as its policy says, then removes it. `Ok(false)` when
    /// the LV was already gone. `progress` is called as the wipe advances (not for `none`).
    /// On any error the LV stays (marked, if the wipe had started) and the call can be repeated.
    pub async fn wipe_and_remove(
        &self,
        vg: &str,
        volume: &str,
        asked: Option<&str>,
        progress: &(dyn Fn(&Progress) + Send + Sync),
    ) -> Result<bool, LvmError> {
        let key = format!("{vg}/{volume}");
        let lock = self.volume_lock(&key);
        let _one_at_a_time = lock.lock().await;
        let Some(lv) = self.lvm.lv(vg, volume).await? else {
            self.set_pending(&key, false);
            return Ok(false);
        };
        let mut policy = self.policy(vg, asked, &lv);
        if policy == Policy::None && is_wiping(&lv) {
            // A wipe that has started is finished, whatever the policy says now.
            policy = Policy::Zero;
        }
        if policy == Policy::None {
            info!(volume, %vg, "wipe policy none: removing the LV without wiping it");
            return self.lvm.remove_lv(vg, volume).await;
        }
        if let Some(asked) = asked
            && recorded_policy(&lv) != Some(asked)
        {
            // Kept for a resume after a crash, which has no request to read it from.
            self.lvm.record_wipe_policy(vg, volume, asked).await?;
        }
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

    /// Finishes every LV a previous run left marked: wipes it again from the start and removes
    /// it. Returns how many were finished; the others are logged and stay marked.
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

    /// `(vg, lv name, tags)` of each LV the fake lvm2 holds.
    type FakeLvs = Arc<StdMutex<Vec<(String, String, Vec<String>)>>>;

    /// A tiny lvm2 holding LVs `(vg, name, tags)` of 4 MiB, inactive (no device node on the
    /// host, so the wipe method falls back to what needs no sysfs facts).
    fn fake(lvs: FakeLvs) -> FakeRunner {
        FakeRunner::from_fn(move |inv: &Invocation| {
            let mut lvs = lvs.lock().unwrap();
            let row = |(vg, name, tags): &(String, String, Vec<String>)| {
                format!(
                    r#"{{"lv_name":"{name}","vg_name":"{vg}","lv_uuid":"U","lv_size":"{}","lv_tags":"{}","lv_active":"active","lv_attr":"-wi-a-----"}}"#,
                    4 * MIB,
                    tags.join(",")
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
                "blkdiscard",
                "blkdiscard",
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
        };
        assert_eq!(w.policy("strata-ssd", None, &lv(&[])), Policy::Discard);
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
