//! Wiping an LV before it is removed, so that its extents never reach another volume with data.
//! The LV is first *marked* with [`WIPING_TAG`] (an LVM tag, so the mark survives a crash and a
//! restarted agent finishes the job before removing the LV), then wiped with util-linux
//! `blkdiscard` (discard, or `--zeroout`) in chunks through the layer's runner, reporting progress
//! after each chunk and stopping between chunks when the handle's token is cancelled.
//! Only LVs carrying the owner tag and the volume's own tag are ever marked or wiped; a wipe
//! refuses an LV that is not marked. Progress is kept with the LV too ([`WIPED_TAG_PREFIX`]
//! `<bytes>`, replaced after each chunk), so a wipe resumed after a crash starts at its last
//! completed chunk. `blkdiscard` runs without `--force`: it opens the LV exclusively, so the
//! kernel refuses a mounted or held LV even if the in-use check before the mark was raced.
//! The wipe policy chosen at creation can be kept in
//! [`WIPE_POLICY_TAG_PREFIX`]`<policy>` (standalone mode has nowhere else to keep it).

use std::path::Path;

use super::error::{LvmError, Result, Subject, classify};
use super::naming::{self, OWNER_TAG, lv_name_for};
use super::report::{Activation, Lv};
use super::runner::{Invocation, LvmRunner, Tool};
use super::{Lvm, name_arg};

/// Tag of an LV whose wipe has started: it is never handed out again, only finished and removed.
pub const WIPING_TAG: &str = "strata.io/wiping";
/// Prefix of the tag holding the wipe policy asked for at creation (`discard`, `zero`, `none`).
pub const WIPE_POLICY_TAG_PREFIX: &str = "strata.io/wipe=";
/// Prefix of the tag holding how many bytes from the start of a marked LV are already wiped.
pub const WIPED_TAG_PREFIX: &str = "strata.io/wiped=";
/// Default size of one `blkdiscard` call (one progress step).
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 30;
/// Chunks are whole multiples of this (any logical block size divides it).
const CHUNK_ALIGN: u64 = 1 << 20;

/// How the bytes of an LV are destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WipeMethod {
    /// `blkdiscard`: the device deallocates the blocks (only where reads then return zeroes).
    Discard,
    /// `blkdiscard --zeroout`: zeroes written (offloaded as WRITE ZEROES where the device can).
    Zero,
}

impl WipeMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            WipeMethod::Discard => "discard",
            WipeMethod::Zero => "zero",
        }
    }
}

/// Whether `lv` carries the wiping mark.
pub fn is_wiping(lv: &Lv) -> bool {
    lv.tags.iter().any(|t| t == WIPING_TAG)
}

/// The wipe policy recorded on `lv` at creation, if any.
pub fn recorded_policy(lv: &Lv) -> Option<&str> {
    lv.tags
        .iter()
        .find_map(|t| t.strip_prefix(WIPE_POLICY_TAG_PREFIX))
}

/// Bytes from the start of `lv` that a previous wipe completed (0 without a progress tag, or
/// with one that is not a whole MiB count within the LV: such a tag is not trusted).
pub fn wiped_bytes(lv: &Lv) -> u64 {
    lv.tags
        .iter()
        .find_map(|t| t.strip_prefix(WIPED_TAG_PREFIX))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&b| b <= lv.size_bytes && b % CHUNK_ALIGN == 0)
        .unwrap_or(0)
}

/// `chunk` rounded down to whole MiB, at least one MiB.
fn aligned_chunk(chunk: u64) -> u64 {
    (chunk / CHUNK_ALIGN).max(1) * CHUNK_ALIGN
}

impl<R: LvmRunner> Lvm<R> {
    /// Records the wipe policy of `volume` as a tag (idempotent; any earlier policy tag is
    /// replaced). `policy` must be a legal tag value (`discard`, `zero`, `none`).
    pub async fn record_wipe_policy(&self, vg: &str, volume: &str, policy: &str) -> Result<Lv> {
        let tag = format!("{WIPE_POLICY_TAG_PREFIX}{policy}");
        if !policy.bytes().all(|b| b.is_ascii_lowercase()) || policy.is_empty() {
            return Err(LvmError::InvalidArgument(format!(
                "invalid wipe policy {policy:?}"
            )));
        }
        let lv = self.owned_lv(vg, volume).await?;
        if lv.tags.contains(&tag) {
            return Ok(lv);
        }
        let mut args = vec![];
        for old in lv
            .tags
            .iter()
            .filter(|t| t.starts_with(WIPE_POLICY_TAG_PREFIX))
        {
            args.extend(["--deltag".to_owned(), old.clone()]);
        }
        args.extend(["--addtag".to_owned(), tag.clone()]);
        let mut lv = self.change_tags(&lv, args).await?;
        lv.tags.retain(|t| !t.starts_with(WIPE_POLICY_TAG_PREFIX));
        lv.tags.push(tag);
        Ok(lv)
    }

    /// Marks the LV of `volume` as being wiped (before its first byte is touched). Idempotent.
    /// From then on the LV is only ever finished and removed. Refuses LVs that are not Strata's
    /// LV of `volume` ([`LvmError::NotOwned`]); a missing LV is [`LvmError::NotFound`].
    pub async fn mark_wiping(&self, vg: &str, volume: &str) -> Result<Lv> {
        // First: from here on its mark is read from lvm2 (see `Lvm::created_lv`).
        self.forget_created(volume);
        let lv = self.owned_lv(vg, volume).await?;
        if is_wiping(&lv) {
            return Ok(lv);
        }
        let mut lv = self
            .change_tags(&lv, vec!["--addtag".to_owned(), WIPING_TAG.to_owned()])
            .await?;
        lv.tags.push(WIPING_TAG.to_owned());
        Ok(lv)
    }

    /// The Strata LVs that carry the wiping mark (all VGs): work a restarted agent must finish.
    pub async fn wiping_lvs(&self) -> Result<Vec<Lv>> {
        Ok(self
            .strata_lvs(None)
            .await?
            .into_iter()
            .filter(|l| l.volume.is_some() && is_wiping(l))
            .collect())
    }

    /// Wipes the whole LV of `volume` with `method`, `chunk_bytes` (rounded down to whole MiB)
    /// per `blkdiscard` call, starting where the LV's progress tag says a previous wipe stopped
    /// ([`wiped_bytes`]) and recording the progress after every chunk; `progress(done, total)`
    /// is called before the first and after every chunk. The LV must be Strata's LV of
    /// `volume` and already marked ([`Lvm::mark_wiping`]); otherwise nothing is run. An
    /// inactive LV is activated first. Cancellation of the handle's token stops the wipe
    /// between chunks (and the running chunk) with [`LvmError::Cancelled`]; the mark and the
    /// progress stay, so a later call resumes. Returns the bytes wiped by this call.
    pub async fn wipe_lv(
        &self,
        vg: &str,
        volume: &str,
        method: WipeMethod,
        chunk_bytes: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64> {
        let mut lv = self.owned_lv(vg, volume).await?;
        if !is_wiping(&lv) {
            return Err(LvmError::InvalidArgument(format!(
                "logical volume {vg}/{} is not marked {WIPING_TAG}; refusing to wipe it",
                lv.name
            )));
        }
        if lv.active == Activation::Inactive {
            lv = self.activate_lv(vg, volume).await?;
        }
        let device = lv.device_path();
        let total = lv.size_bytes;
        let chunk = aligned_chunk(chunk_bytes);
        let start = wiped_bytes(&lv);
        let mut done = start;
        progress(done, total);
        while done < total {
            if self.cancel.is_cancelled() {
                return Err(LvmError::Cancelled {
                    command: format!("wipe of {}", device.display()),
                });
            }
            let len = chunk.min(total - done);
            self.blkdiscard(&device, method, done, len, &lv.name, vg)
                .await?;
            done += len;
            if done < total {
                lv = self.record_wiped(&lv, done).await?;
            }
            progress(done, total);
        }
        Ok(total - start)
    }

    /// Replaces the LV's progress tag with `done` bytes.
    async fn record_wiped(&self, lv: &Lv, done: u64) -> Result<Lv> {
        self.replace_tag(lv, WIPED_TAG_PREFIX, &done.to_string())
            .await
    }

    /// Replaces the tags of `lv` starting with `prefix` by `<prefix><value>` (one `lvchange`,
    /// selected on the owner and volume tags like every tag change). `value` must be a legal
    /// LVM tag fragment (digits here).
    pub async fn replace_tag(&self, lv: &Lv, prefix: &str, value: &str) -> Result<Lv> {
        let tag = format!("{prefix}{value}");
        let mut args = vec![];
        for old in lv.tags.iter().filter(|t| t.starts_with(prefix)) {
            args.extend(["--deltag".to_owned(), old.clone()]);
        }
        args.extend(["--addtag".to_owned(), tag.clone()]);
        let mut lv = self.change_tags(lv, args).await?;
        lv.tags.retain(|t| !t.starts_with(prefix));
        lv.tags.push(tag);
        Ok(lv)
    }

    async fn blkdiscard(
        &self,
        device: &Path,
        method: WipeMethod,
        offset: u64,
        len: u64,
        lv_name: &str,
        vg: &str,
    ) -> Result<()> {
        // No `--force`: blkdiscard's exclusive open makes the kernel refuse a mounted or held LV.
        let mut args = vec![];
        if method == WipeMethod::Zero {
            args.push("--zeroout".to_owned());
        }
        args.extend([
            "--offset".to_owned(),
            offset.to_string(),
            "--length".to_owned(),
            len.to_string(),
            super::path_arg(device)?,
        ]);
        let inv = Invocation {
            tool: Tool::Blkdiscard,
            args,
        };
        let (inv, out) = self.run(inv).await?;
        if out.success() {
            return Ok(());
        }
        Err(classify(
            super::failure(&inv, &out),
            Subject::Lv(vg, lv_name),
            0,
        ))
    }

    /// Strata's LV of `volume` in `vg`, freshly read; refusals as in [`Lvm::lv`].
    async fn owned_lv(&self, vg: &str, volume: &str) -> Result<Lv> {
        name_arg(vg)?;
        match self.lv(vg, volume).await? {
            Some(lv) => Ok(lv),
            None => Err(LvmError::NotFound {
                what: format!(
                    "logical volume {vg}/{} of volume {volume:?}",
                    lv_name_for(volume)
                ),
            }),
        }
    }

    /// `lvchange <tag args>` restricted by `--select` to the LV carrying the owner and volume
    /// tags (under the VG lock), so a concurrent change of ownership cannot be overridden.
    async fn change_tags(&self, lv: &Lv, tag_args: Vec<String>) -> Result<Lv> {
        let volume = lv.volume.as_deref().unwrap_or_default();
        let volume_tag = naming::volume_tag(volume)?;
        let lock = self.vg_lock(&lv.vg);
        let _slot = lock.lock().await;
        let mut args = self.lvm_args("lvchange");
        args.extend(tag_args);
        args.extend([
            "-S".to_owned(),
            format!("lv_tags={{{OWNER_TAG},{volume_tag}}}"),
            format!("{}/{}", name_arg(&lv.vg)?, lv.name),
        ]);
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        if !out.success() {
            return Err(classify(
                super::failure(&inv, &out),
                Subject::Lv(&lv.vg, &lv.name),
                0,
            ));
        }
        // An empty selection changes nothing and still exits 0: prove the LV took the change.
        if !out.stdout.contains("changed") && !out.stderr.contains("changed") {
            return Err(LvmError::NotOwned {
                what: format!("logical volume {}/{}", lv.vg, lv.name),
            });
        }
        Ok(lv.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::lvm::naming::volume_tag;
    use crate::lvm::{FakeRunner, LvmOptions, Reply};

    const VG: &str = "strata-nvme";
    const MIB: u64 = 1 << 20;

    fn lvs_row(name: &str, size: u64, tags: &[&str], active: bool) -> Reply {
        Reply::ok(format!(
            r#"{{"report":[{{"lv":[{{"lv_name":"{name}","vg_name":"{VG}","lv_uuid":"U","lv_size":"{size}","lv_tags":"{}","lv_active":"{}","lv_attr":"{}"}}]}}]}}"#,
            tags.join(","),
            if active { "active" } else { "" },
            if active { "-wi-a-----" } else { "-wi-------" }
        ))
    }

    fn layer(runner: FakeRunner) -> Lvm<FakeRunner> {
        Lvm::new(runner, LvmOptions::default())
    }

    fn vtag() -> String {
        volume_tag("pvc-1").unwrap()
    }

    #[tokio::test]
    async fn refuses_to_mark_or_wipe_an_lv_without_the_owner_tag() {
        let foreign = lvs_row("pvc-1", 8 * MIB, &[], true);
        let runner = FakeRunner::scripted()
            .expect(&["lvs"], &["strata-nvme/pvc-1"], foreign.clone())
            .expect(&["lvs"], &["strata-nvme/pvc-1"], foreign);
        let lvm = layer(runner);
        let err = lvm.mark_wiping(VG, "pvc-1").await.unwrap_err();
        assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
        let err = lvm
            .wipe_lv(VG, "pvc-1", WipeMethod::Zero, MIB, &|_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
        lvm.runner().assert_done();
        assert!(lvm.runner().calls_of("blkdiscard").is_empty());
        assert!(lvm.runner().calls_of("lvchange").is_empty());
    }

    #[tokio::test]
    async fn refuses_another_volumes_lv_and_an_unmarked_lv() {
        let other = volume_tag("pvc-2").unwrap();
        let runner = FakeRunner::scripted()
            .expect(
                &["lvs"],
                &[],
                lvs_row("pvc-1", 8 * MIB, &[OWNER_TAG, &other], true),
            )
            .expect(
                &["lvs"],
                &[],
                lvs_row("pvc-1", 8 * MIB, &[OWNER_TAG, &vtag()], true),
            );
        let lvm = layer(runner);
        let err = lvm
            .wipe_lv(VG, "pvc-1", WipeMethod::Zero, MIB, &|_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
        // Ours but not marked: the mark must come first, so a crash can never lose the wipe.
        let err = lvm
            .wipe_lv(VG, "pvc-1", WipeMethod::Zero, MIB, &|_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::InvalidArgument(_)), "{err:?}");
        assert!(lvm.runner().calls_of("blkdiscard").is_empty());
        lvm.runner().assert_done();
    }

    #[tokio::test]
    async fn mark_is_a_selected_addtag_and_idempotent() {
        let vt = vtag();
        let runner = FakeRunner::scripted()
            .expect(
                &["lvs"],
                &[],
                lvs_row("pvc-1", 8 * MIB, &[OWNER_TAG, &vt], true),
            )
            .expect(
                &["lvchange", "--addtag", WIPING_TAG, "-S"],
                &["strata-nvme/pvc-1"],
                Reply::ok("  Logical volume strata-nvme/pvc-1 changed."),
            )
            .expect(
                &["lvs"],
                &[],
                lvs_row("pvc-1", 8 * MIB, &[OWNER_TAG, &vt, WIPING_TAG], true),
            );
        let lvm = layer(runner);
        let lv = lvm.mark_wiping(VG, "pvc-1").await.unwrap();
        assert!(is_wiping(&lv));
        let sel = &lvm.runner().calls_of("lvchange")[0].args;
        assert!(
            sel.contains(&format!("lv_tags={{{OWNER_TAG},{vt}}}")),
            "{sel:?}"
        );
        // Already marked: no second lvchange.
        assert!(is_wiping(&lvm.mark_wiping(VG, "pvc-1").await.unwrap()));
        lvm.runner().assert_done();
    }

    #[tokio::test]
    async fn an_empty_selection_is_not_taken_for_a_mark() {
        let runner = FakeRunner::scripted()
            .expect(
                &["lvs"],
                &[],
                lvs_row("pvc-1", 8 * MIB, &[OWNER_TAG, &vtag()], true),
            )
            .expect(&["lvchange"], &[], Reply::ok(""));
        let err = layer(runner).mark_wiping(VG, "pvc-1").await.unwrap_err();
        assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn wipes_in_chunks_with_progress() {
        let vt = vtag();
        let size = 10 * MIB;
        let runner = FakeRunner::from_fn(move |inv| match inv.subcommand() {
            "lvs" => lvs_row("pvc-1", size, &[OWNER_TAG, &vt, WIPING_TAG], true),
            "lvchange" => Reply::ok("  Logical volume strata-nvme/pvc-1 changed."),
            "blkdiscard" => Reply::ok(""),
            other => Reply::fail(5, format!("unexpected {other}")),
        });
        let lvm = layer(runner);
        let seen = Mutex::new(Vec::new());
        // 3.5 MiB asks are rounded down to whole MiB: chunks of 3, 3, 3, 1 MiB.
        let wiped = lvm
            .wipe_lv(VG, "pvc-1", WipeMethod::Zero, 3 * MIB + MIB / 2, &|d, t| {
                seen.lock().unwrap().push((d, t))
            })
            .await
            .unwrap();
        assert_eq!(wiped, size);
        let calls = lvm.runner().calls_of("blkdiscard");
        let ranges: Vec<(u64, u64)> = calls
            .iter()
            .map(|c| {
                let at = |f: &str| {
                    let i = c.args.iter().position(|a| a == f).unwrap();
                    c.args[i + 1].parse::<u64>().unwrap()
                };
                assert!(c.args.contains(&"--zeroout".to_owned()), "{:?}", c.args);
                assert_eq!(c.args.last().unwrap(), "/dev/strata-nvme/pvc-1");
                (at("--offset"), at("--length"))
            })
            .collect();
        assert_eq!(
            ranges,
            vec![
                (0, 3 * MIB),
                (3 * MIB, 3 * MIB),
                (6 * MIB, 3 * MIB),
                (9 * MIB, MIB)
            ]
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (0, size),
                (3 * MIB, size),
                (6 * MIB, size),
                (9 * MIB, size),
                (size, size)
            ]
        );
        // Progress kept with the LV after every chunk but the last (the LV goes next).
        let recorded: Vec<String> = lvm
            .runner()
            .calls_of("lvchange")
            .iter()
            .map(|c| {
                let i = c.args.iter().position(|a| a == "--addtag").unwrap();
                c.args[i + 1].clone()
            })
            .collect();
        assert_eq!(
            recorded,
            [3, 6, 9].map(|m| format!("{WIPED_TAG_PREFIX}{}", m * MIB))
        );
    }

    #[tokio::test]
    async fn a_resumed_wipe_starts_at_the_recorded_progress() {
        let vt = vtag();
        let size = 8 * MIB;
        let done = format!("{WIPED_TAG_PREFIX}{}", 5 * MIB);
        let runner = FakeRunner::from_fn(move |inv| match inv.subcommand() {
            "lvs" => lvs_row("pvc-1", size, &[OWNER_TAG, &vt, WIPING_TAG, &done], true),
            "lvchange" => Reply::ok("  Logical volume strata-nvme/pvc-1 changed."),
            "blkdiscard" => Reply::ok(""),
            other => Reply::fail(5, format!("unexpected {other}")),
        });
        let lvm = layer(runner);
        let wiped = lvm
            .wipe_lv(VG, "pvc-1", WipeMethod::Zero, 2 * MIB, &|_, _| {})
            .await
            .unwrap();
        assert_eq!(wiped, 3 * MIB);
        let offsets: Vec<String> = lvm
            .runner()
            .calls_of("blkdiscard")
            .iter()
            .map(|c| c.args[c.args.iter().position(|a| a == "--offset").unwrap() + 1].clone())
            .collect();
        assert_eq!(offsets, [5 * MIB, 7 * MIB].map(|b| b.to_string()));
        // The recorded tag is replaced, never accumulated.
        let change = &lvm.runner().calls_of("lvchange")[0].args;
        assert!(change.contains(&"--deltag".to_owned()), "{change:?}");
    }

    #[test]
    fn an_untrustworthy_progress_tag_means_from_the_start() {
        let lv = |tag: &str| Lv {
            vg: VG.into(),
            name: "pvc-1".into(),
            uuid: None,
            size_bytes: 8 * MIB,
            tags: vec![tag.to_owned()],
            active: Activation::Active,
            volume: Some("pvc-1".into()),
            pvc: None,
            owned: true,
            open: false,
        };
        assert_eq!(
            wiped_bytes(&lv(&format!("{WIPED_TAG_PREFIX}{}", 4 * MIB))),
            4 * MIB
        );
        assert_eq!(
            wiped_bytes(&lv(&format!("{WIPED_TAG_PREFIX}{}", 9 * MIB))),
            0
        );
        assert_eq!(wiped_bytes(&lv(&format!("{WIPED_TAG_PREFIX}12345"))), 0);
        assert_eq!(wiped_bytes(&lv("strata.io/wiped=x")), 0);
    }

    #[tokio::test]
    async fn discard_runs_without_zeroout_and_activates_an_inactive_lv() {
        let vt = vtag();
        let runner = FakeRunner::scripted()
            .expect(
                &["lvs"],
                &[],
                lvs_row("pvc-1", 4 * MIB, &[OWNER_TAG, &vt, WIPING_TAG], false),
            )
            .expect(
                &["lvs"],
                &[],
                lvs_row("pvc-1", 4 * MIB, &[OWNER_TAG, &vt, WIPING_TAG], false),
            )
            .expect(&["lvchange", "-ay"], &[], Reply::ok(""))
            .expect_tool(
                Tool::Blkdiscard,
                &["--offset", "0"],
                &["/dev/strata-nvme/pvc-1"],
                Reply::ok(""),
            );
        let lvm = layer(runner);
        lvm.wipe_lv(
            VG,
            "pvc-1",
            WipeMethod::Discard,
            DEFAULT_CHUNK_BYTES,
            &|_, _| {},
        )
        .await
        .unwrap();
        let call = &lvm.runner().calls_of("blkdiscard")[0];
        assert!(!call.args.contains(&"--zeroout".to_owned()));
        assert!(!call.args.contains(&"--force".to_owned()));
        lvm.runner().assert_done();
    }

    #[tokio::test]
    async fn a_failed_chunk_stops_the_wipe_with_the_error() {
        let vt = vtag();
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = n.clone();
        let runner = FakeRunner::from_fn(move |inv| match inv.subcommand() {
            "lvs" => lvs_row("pvc-1", 8 * MIB, &[OWNER_TAG, &vt, WIPING_TAG], true),
            "blkdiscard" if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 => {
                Reply::fail(
                    1,
                    "blkdiscard: BLKZEROOUT: /dev/dm-3 ioctl failed: Input/output error",
                )
            }
            "lvchange" => Reply::ok("  Logical volume strata-nvme/pvc-1 changed."),
            "blkdiscard" => Reply::ok(""),
            other => Reply::fail(5, format!("unexpected {other}")),
        });
        let lvm = layer(runner);
        let err = lvm
            .wipe_lv(VG, "pvc-1", WipeMethod::Zero, 2 * MIB, &|_, _| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Input/output error"), "{err}");
        assert_eq!(lvm.runner().calls_of("blkdiscard").len(), 2);
    }

    #[tokio::test]
    async fn cancellation_stops_between_chunks() {
        let vt = vtag();
        let runner = FakeRunner::from_fn(move |inv| match inv.subcommand() {
            "lvs" => lvs_row("pvc-1", 64 * MIB, &[OWNER_TAG, &vt, WIPING_TAG], true),
            "lvchange" => Reply::ok("  Logical volume strata-nvme/pvc-1 changed."),
            "blkdiscard" => Reply::ok("").after(Duration::from_millis(20)),
            other => Reply::fail(5, format!("unexpected {other}")),
        });
        let token = CancellationToken::new();
        let lvm = layer(runner).with_cancellation(token.clone());
        let trigger = token.clone();
        let err = lvm
            .wipe_lv(VG, "pvc-1", WipeMethod::Zero, MIB, &move |done, _| {
                if done >= 2 * MIB {
                    trigger.cancel();
                }
            })
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::Cancelled { .. }), "{err:?}");
        assert_eq!(lvm.runner().calls_of("blkdiscard").len(), 2);
    }

    #[tokio::test]
    async fn create_never_hands_out_an_lv_being_wiped() {
        let vg_row = format!(
            r#"{{"report":[{{"vg":[{{"vg_name":"{VG}","vg_uuid":"U","vg_size":"1073741824","vg_free":"0","vg_extent_size":"4194304","vg_extent_count":"256","vg_free_count":"0","pv_count":"1","lv_count":"1","vg_missing_pv_count":"0","vg_tags":"{OWNER_TAG}"}}]}}]}}"#
        );
        let runner = FakeRunner::scripted()
            .expect(&["vgs"], &[], Reply::ok(vg_row))
            .expect(
                &["lvcreate"],
                &[],
                Reply::fail(
                    5,
                    "  Logical Volume \"pvc-1\" already exists in volume group",
                ),
            )
            .expect(
                &["lvs"],
                &[],
                lvs_row("pvc-1", 4 * MIB, &[OWNER_TAG, &vtag(), WIPING_TAG], true),
            );
        let lvm = layer(runner);
        let err = lvm.create_lv(VG, "pvc-1", 4 * MIB, None).await.unwrap_err();
        assert!(matches!(err, LvmError::Busy(_)), "{err:?}");
        assert!(err.is_transient());
        lvm.runner().assert_done();
    }

    #[tokio::test]
    async fn records_the_policy_replacing_an_older_one() {
        let vt = vtag();
        let runner = FakeRunner::scripted()
            .expect(
                &["lvs"],
                &[],
                lvs_row(
                    "pvc-1",
                    4 * MIB,
                    &[OWNER_TAG, &vt, "strata.io/wipe=zero"],
                    true,
                ),
            )
            .expect(
                &[
                    "lvchange",
                    "--deltag",
                    "strata.io/wipe=zero",
                    "--addtag",
                    "strata.io/wipe=none",
                ],
                &[],
                Reply::ok("  Logical volume strata-nvme/pvc-1 changed."),
            );
        let lvm = layer(runner);
        let lv = lvm.record_wipe_policy(VG, "pvc-1", "none").await.unwrap();
        assert_eq!(recorded_policy(&lv), Some("none"));
        assert!(matches!(
            lvm.record_wipe_policy(VG, "pvc-1", "Bad,tag").await,
            Err(LvmError::InvalidArgument(_))
        ));
        lvm.runner().assert_done();
    }
}
