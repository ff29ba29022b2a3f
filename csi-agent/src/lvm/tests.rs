//! Unit tests of [`Lvm`] operations with the scripted [`FakeRunner`]: the exact commands each
//! operation runs, idempotency, and every error kind (stderr texts as captured in
//! `fixtures/stderr.txt` from lvm2 2.03).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;

const VG: &str = "strata-ssd";
const VOL: &str = "pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const MIB: u64 = 1 << 20;

fn lvm(fake: FakeRunner) -> Lvm<FakeRunner> {
    Lvm::new(
        fake,
        LvmOptions {
            activate: false,
            ..LvmOptions::default()
        },
    )
}

fn vg_json(name: &str, owned: bool, missing: u32) -> String {
    format!(
        r#"{{"report":[{{"vg":[{{"vg_name":"{name}","vg_uuid":"U","vg_size":"125829120","vg_free":"37748736","vg_extent_size":"4194304","vg_extent_count":"30","vg_free_count":"9","pv_count":"2","lv_count":"0","vg_missing_pv_count":"{missing}","vg_tags":"{}"}}]}}]}}"#,
        if owned { OWNER_TAG } else { "" }
    )
}

fn lv_json(vg: &str, name: &str, size: u64, tags: &[&str]) -> String {
    format!(
        r#"{{"report":[{{"lv":[{{"lv_name":"{name}","vg_name":"{vg}","lv_uuid":"L","lv_size":"{size}","lv_tags":"{}","lv_active":"","lv_attr":"-wi-------"}}]}}]}}"#,
        tags.join(",")
    )
}

fn pv_json(dev: &str, vg: &str, pv_tags: &str, vg_tags: &str) -> String {
    format!(
        r#"{{"report":[{{"pv":[{{"pv_name":"{dev}","pv_uuid":"P","vg_name":"{vg}","pv_size":"67108864","pv_free":"67108864","pv_tags":"{pv_tags}","pv_missing":"","vg_tags":"{vg_tags}"}}]}}]}}"#
    )
}

fn our_tags(volume: &str) -> Vec<String> {
    vec![OWNER_TAG.to_owned(), naming::volume_tag(volume).unwrap()]
}

fn ours(vg: &str, volume: &str, size: u64) -> String {
    let tags = our_tags(volume);
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    lv_json(vg, &lv_name_for(volume), size, &tags)
}

const NO_LV: &str = r#"Failed to find logical volume "strata-ssd/x""#;
const NO_VG: &str =
    "Volume group \"strata-ssd\" not found\n  Cannot process volume group strata-ssd";
const NO_PV: &str = r#"Failed to find physical volume "/dev/loop7"."#;

// ---- create_lv --------------------------------------------------------------------------------

#[tokio::test]
async fn create_lv_runs_one_tagged_lvcreate_rounded_to_extents() {
    let pvc = PvcRef {
        namespace: "default".into(),
        name: "data-0".into(),
        uid: "0f1e".into(),
    };
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["lvcreate", "-n", VOL, "-L", "12582912b"],
            &[
                OWNER_TAG,
                "strata.io/pvc=default/data-0/0f1e",
                "-an",
                "-Zn",
                VG,
            ],
            Reply::ok("  Logical volume created."),
        );
    let lvm = lvm(fake);
    let lv = lvm
        .create_lv(VG, VOL, 10 * MIB + 1, Some(&pvc))
        .await
        .unwrap();
    assert_eq!(lv.size_bytes, 12 * MIB);
    assert_eq!(lv.name, VOL);
    assert_eq!(lv.volume.as_deref(), Some(VOL));
    assert_eq!(lv.pvc.as_ref(), Some(&pvc));
    assert_eq!(lv.device_path(), PathBuf::from(format!("/dev/{VG}/{VOL}")));
    assert_eq!(lv.active, Activation::Inactive);
    lvm.runner().assert_done();
    let create = &lvm.runner().calls_of("lvcreate")[0];
    assert!(create.args.contains(&naming::volume_tag(VOL).unwrap()));
    assert!(!create.args.iter().any(|a| a == "-y" || a == "--yes"));
}

#[tokio::test]
async fn create_lv_activates_zeroes_and_wipes_when_activation_is_on() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["lvcreate"],
            &["-ay", "-Zy", "-Wy", "--yes"],
            Reply::ok(""),
        );
    let lvm = Lvm::new(fake, LvmOptions::default());
    let lv = lvm.create_lv(VG, VOL, 4 * MIB, None).await.unwrap();
    assert_eq!(lv.active, Activation::Active);
    lvm.runner().assert_done();
}

#[tokio::test]
async fn create_lv_that_exists_with_same_size_is_success() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["lvcreate"],
            &[],
            Reply::fail(
                5,
                format!(r#"Logical Volume "{VOL}" already exists in volume group "{VG}""#),
            ),
        )
        .expect(
            &["lvs"],
            &[&format!("{VG}/{VOL}")],
            Reply::ok(ours(VG, VOL, 12 * MIB)),
        );
    let lvm = lvm(fake);
    let lv = lvm.create_lv(VG, VOL, 12 * MIB, None).await.unwrap();
    assert_eq!(lv.size_bytes, 12 * MIB);
    assert_eq!(lv.uuid.as_deref(), Some("L"));
    lvm.runner().assert_done();
}

#[tokio::test]
async fn create_lv_that_exists_with_other_size_is_a_conflict() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["lvcreate"],
            &[],
            Reply::fail(5, "Logical Volume \"x\" already exists in volume group"),
        )
        .expect(&["lvs"], &[], Reply::ok(ours(VG, VOL, 8 * MIB)));
    let err = lvm(fake)
        .create_lv(VG, VOL, 12 * MIB, None)
        .await
        .unwrap_err();
    match err {
        LvmError::AlreadyExistsDifferent {
            existing_bytes,
            requested_bytes,
            other_volume,
            ..
        } => {
            assert_eq!(
                (existing_bytes, requested_bytes, other_volume),
                (8 * MIB, 12 * MIB, false)
            );
        }
        e => panic!("expected AlreadyExistsDifferent, got {e:?}"),
    }
}

#[tokio::test]
async fn create_lv_over_a_foreign_or_other_volume_lv_is_refused() {
    let foreign = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["lvcreate"],
            &[],
            Reply::fail(5, "already exists in volume group"),
        )
        .expect(&["lvs"], &[], Reply::ok(lv_json(VG, VOL, 12 * MIB, &[])));
    let err = lvm(foreign)
        .create_lv(VG, VOL, 12 * MIB, None)
        .await
        .unwrap_err();
    assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");

    let other = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["lvcreate"],
            &[],
            Reply::fail(5, "already exists in volume group"),
        )
        .expect(
            &["lvs"],
            &[],
            Reply::ok(lv_json(
                VG,
                VOL,
                12 * MIB,
                &[OWNER_TAG, "strata.io/volume=else"],
            )),
        );
    let err = lvm(other)
        .create_lv(VG, VOL, 12 * MIB, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LvmError::AlreadyExistsDifferent {
                other_volume: true,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn create_lv_without_space_is_insufficient_space() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["lvcreate"],
            &[],
            Reply::fail(5, r#"Volume group "strata-ssd" has insufficient free space (9 extents): 256 required."#),
        );
    let err = lvm(fake)
        .create_lv(VG, VOL, 1 << 30, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LvmError::InsufficientSpace { ref vg, requested_bytes, .. } if vg == VG && requested_bytes == 1 << 30),
        "{err:?}"
    );
}

#[tokio::test]
async fn create_lv_in_foreign_missing_or_degraded_vg() {
    let foreign = FakeRunner::scripted().expect(&["vgs"], &[], Reply::ok(vg_json(VG, false, 0)));
    let lvm1 = lvm(foreign);
    let err = lvm1.create_lv(VG, VOL, MIB, None).await.unwrap_err();
    assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
    assert!(
        lvm1.runner().calls_of("lvcreate").is_empty(),
        "a foreign VG is never changed"
    );

    let missing = FakeRunner::scripted().expect(&["vgs"], &[], Reply::fail(5, NO_VG));
    let err = lvm(missing)
        .create_lv(VG, VOL, MIB, None)
        .await
        .unwrap_err();
    assert!(matches!(err, LvmError::NotFound { .. }), "{err:?}");

    let degraded = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 1)))
        .expect(
            &["lvcreate"],
            &[],
            Reply::fail(
                5,
                "WARNING: Couldn't find device with uuid 11dEsL.\n  Cannot change VG strata-ssd while PVs are missing.\n  Cannot process volume group strata-ssd",
            ),
        );
    let err = lvm(degraded)
        .create_lv(VG, VOL, MIB, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LvmError::DeviceMissing(ref f) if f.code == Some(5)),
        "{err:?}"
    );
}

#[tokio::test]
async fn vg_facts_are_cached_between_creates_and_dropped_after_errors() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["lvcreate"], &["pvc-a"], Reply::ok(""))
        .expect(&["lvcreate"], &["pvc-b"], Reply::fail(5, "Something odd."))
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["lvcreate"], &["pvc-c"], Reply::ok(""));
    let lvm = lvm(fake);
    lvm.create_lv(VG, "pvc-a", MIB, None).await.unwrap();
    let err = lvm.create_lv(VG, "pvc-b", MIB, None).await.unwrap_err();
    assert!(
        matches!(err, LvmError::Other(ref f) if f.stderr == "Something odd."),
        "{err:?}"
    );
    lvm.create_lv(VG, "pvc-c", MIB, None).await.unwrap();
    lvm.runner().assert_done();
}

#[tokio::test]
async fn vg_facts_follow_the_reports_the_layer_reads_without_a_timer() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["lvcreate"], &["pvc-a"], Reply::ok(""))
        // a report read by someone else (the claim pass): the VG lost its owner tag
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, false, 0)))
        // a later report: owned again
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["lvcreate"], &["pvc-c"], Reply::ok(""))
        // a full report without the VG: forgotten, the next create reads it
        .expect(&["vgs"], &[], Reply::ok(r#"{"report":[{"vg":[]}]}"#))
        .expect(&["vgs"], &[VG], Reply::fail(5, NO_VG));
    let lvm = lvm(fake);
    lvm.create_lv(VG, "pvc-a", MIB, None).await.unwrap();
    lvm.vgs().await.unwrap();
    // refused from the refreshed facts, with no vgs of its own and no lvcreate
    let err = lvm.create_lv(VG, "pvc-b", MIB, None).await.unwrap_err();
    assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
    lvm.vgs().await.unwrap();
    lvm.create_lv(VG, "pvc-c", MIB, None).await.unwrap();
    lvm.vgs().await.unwrap();
    let err = lvm.create_lv(VG, "pvc-d", MIB, None).await.unwrap_err();
    assert!(matches!(err, LvmError::NotFound { .. }), "{err:?}");
    lvm.runner().assert_done();
}

#[tokio::test]
async fn a_created_lv_is_fresh_once_and_known_unmarked_until_marked_or_removed() {
    let select = format!(
        "lv_tags={{{OWNER_TAG},{}}}",
        naming::volume_tag("pvc-b").unwrap()
    );
    let fake = FakeRunner::from_fn(move |inv: &Invocation| match inv.subcommand() {
        "vgs" => Reply::ok(vg_json(VG, true, 0)),
        "lvcreate" | "lvextend" => Reply::ok(""),
        "lvchange" => Reply::ok("  Logical volume strata-ssd/pvc-a changed."),
        "lvs" => Reply::ok(ours(VG, "pvc-a", 4 * MIB)),
        "lvremove" if inv.args.contains(&select) => {
            Reply::ok("  Logical volume \"pvc-b\" successfully removed.")
        }
        other => Reply::fail(5, format!("unexpected {other}")),
    });
    // zeroed (activation on): fresh exactly once; handing it out consumes it
    let lvm = Lvm::new(fake, LvmOptions::default());
    let lv = lvm.create_lv(VG, "pvc-a", 4 * MIB, None).await.unwrap();
    assert_eq!(
        lvm.created_lv("pvc-a").unwrap().device_path(),
        lv.device_path()
    );
    assert!(lvm.take_fresh("pvc-a"));
    assert!(!lvm.take_fresh("pvc-a"), "fresh only until handed out");
    assert!(lvm.created_lv("pvc-a").is_some(), "still known unmarked");
    // marking forgets it first: its mark is read from lvm2 again
    lvm.mark_wiping(VG, "pvc-a").await.unwrap();
    assert!(lvm.created_lv("pvc-a").is_none());
    // growing ends freshness (new extents are not zeroed); removal forgets
    lvm.create_lv(VG, "pvc-b", 4 * MIB, None).await.unwrap();
    lvm.note_grown("pvc-b", 8 * MIB);
    assert!(!lvm.take_fresh("pvc-b"));
    assert_eq!(lvm.created_lv("pvc-b").unwrap().size_bytes, 8 * MIB);
    assert!(lvm.remove_lv(VG, "pvc-b").await.unwrap());
    assert!(lvm.created_lv("pvc-b").is_none());
    // never fresh: an LV nobody here created, or one created unzeroed (activation off)
    assert!(!lvm.take_fresh("pvc-other"));
    let cold = Lvm::new(
        FakeRunner::from_fn(|inv: &Invocation| match inv.subcommand() {
            "vgs" => Reply::ok(vg_json(VG, true, 0)),
            _ => Reply::ok(""),
        }),
        LvmOptions {
            activate: false,
            ..LvmOptions::default()
        },
    );
    cold.create_lv(VG, "pvc-c", 4 * MIB, None).await.unwrap();
    assert!(cold.created_lv("pvc-c").is_some());
    assert!(!cold.take_fresh("pvc-c"), "-Zn: not zeroed, never fresh");
}

#[tokio::test]
async fn odd_volume_names_get_hashed_lv_names_and_bad_input_is_refused() {
    let volume = "Weird_Name/With Spaces";
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["lvcreate", "-n", &lv_name_for(volume)],
            &["strata.io/volume=Weird_5FName_2FWith_20Spaces"],
            Reply::ok(""),
        );
    let lvm = lvm(fake);
    let lv = lvm.create_lv(VG, volume, MIB, None).await.unwrap();
    assert!(lv.name.starts_with("strata_"));
    for (vg, vol, size) in [
        (VG, "", MIB),
        (VG, VOL, 0),
        ("-vg", VOL, MIB),
        ("a b", VOL, MIB),
    ] {
        let err = lvm.create_lv(vg, vol, size, None).await.unwrap_err();
        assert!(
            matches!(err, LvmError::InvalidArgument(_)),
            "{vg:?} {vol:?} {size}: {err:?}"
        );
    }
    lvm.runner().assert_done();
}

// ---- extend_lv ----------------------------------------------------------------------------------

#[tokio::test]
async fn extend_lv_grows_to_whole_extents_and_never_shrinks() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["lvs"], &[], Reply::ok(ours(VG, VOL, 8 * MIB)))
        .expect(
            &["lvextend", "-L", "16777216b", &format!("{VG}/{VOL}")],
            &[],
            Reply::ok(""),
        )
        .expect(&["lvs"], &[], Reply::ok(ours(VG, VOL, 16 * MIB)));
    let lvm = lvm(fake);
    assert_eq!(
        lvm.extend_lv(VG, VOL, 13 * MIB).await.unwrap().size_bytes,
        16 * MIB
    );
    // Smaller than the current size: unchanged, no lvextend.
    assert_eq!(
        lvm.extend_lv(VG, VOL, 4 * MIB).await.unwrap().size_bytes,
        16 * MIB
    );
    lvm.runner().assert_done();
}

#[tokio::test]
async fn extend_lv_refusals() {
    let missing = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["lvs"], &[], Reply::fail(5, NO_LV));
    let err = lvm(missing).extend_lv(VG, VOL, MIB).await.unwrap_err();
    assert!(matches!(err, LvmError::NotFound { .. }), "{err:?}");

    let foreign = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["lvs"], &[], Reply::ok(lv_json(VG, VOL, MIB, &[])));
    let err = lvm(foreign).extend_lv(VG, VOL, 8 * MIB).await.unwrap_err();
    assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");

    let full = FakeRunner::scripted()
        .expect(&["vgs"], &[], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["lvs"], &[], Reply::ok(ours(VG, VOL, 4 * MIB)))
        .expect(
            &["lvextend"],
            &[],
            Reply::fail(
                5,
                "Insufficient free space: 256 extents needed, but only 9 available",
            ),
        );
    let err = lvm(full).extend_lv(VG, VOL, 1 << 30).await.unwrap_err();
    assert!(matches!(err, LvmError::InsufficientSpace { .. }), "{err:?}");
}

// ---- remove_lv ----------------------------------------------------------------------------------

#[tokio::test]
async fn remove_lv_selects_on_owner_and_volume_tags() {
    let select = format!(
        "lv_tags={{{OWNER_TAG},{}}}",
        naming::volume_tag(VOL).unwrap()
    );
    let fake = FakeRunner::scripted().expect(
        &["lvremove", "-f", "-S", &select, &format!("{VG}/{VOL}")],
        &[],
        Reply::ok(format!("  Logical volume \"{VOL}\" successfully removed.")),
    );
    let lvm = lvm(fake);
    assert!(lvm.remove_lv(VG, VOL).await.unwrap());
    lvm.runner().assert_done();
}

#[tokio::test]
async fn remove_lv_is_idempotent_and_refuses_foreign_and_busy() {
    let gone = FakeRunner::scripted().expect(&["lvremove"], &[], Reply::fail(5, NO_LV));
    assert!(!lvm(gone).remove_lv(VG, VOL).await.unwrap());

    // Selection matched nothing and the LV is not there: gone meanwhile.
    let raced = FakeRunner::scripted()
        .expect(&["lvremove"], &[], Reply::ok(""))
        .expect(&["lvs"], &[], Reply::fail(5, NO_LV));
    assert!(!lvm(raced).remove_lv(VG, VOL).await.unwrap());

    // Selection matched nothing but an LV of that name exists: not ours, untouched.
    let foreign = FakeRunner::scripted()
        .expect(&["lvremove"], &[], Reply::ok(""))
        .expect(&["lvs"], &[], Reply::ok(lv_json(VG, VOL, MIB, &[])));
    let err = lvm(foreign).remove_lv(VG, VOL).await.unwrap_err();
    assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");

    let busy = FakeRunner::scripted().expect(
        &["lvremove"],
        &[],
        Reply::fail(
            5,
            format!("Logical volume {VG}/{VOL} contains a filesystem in use."),
        ),
    );
    let err = lvm(busy).remove_lv(VG, VOL).await.unwrap_err();
    assert!(
        matches!(err, LvmError::Busy(_)) && err.is_transient(),
        "{err:?}"
    );

    let no_vg = FakeRunner::scripted().expect(&["lvremove"], &[], Reply::fail(5, NO_VG));
    let err = lvm(no_vg).remove_lv(VG, VOL).await.unwrap_err();
    assert!(matches!(err, LvmError::NotFound { .. }), "{err:?}");
}

// ---- reads --------------------------------------------------------------------------------------

fn fixture(name: &str) -> String {
    let path = format!("{}/src/lvm/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn finds_lvs_by_volume_tag_across_vgs_and_lists_only_strata_objects() {
    let fake = FakeRunner::from_fn(|inv| match inv.subcommand() {
        "lvs" => Reply::ok(fixture("lvs.json")),
        "vgs" => Reply::ok(fixture("vgs.json")),
        "pvs" => Reply::ok(fixture("pvs_degraded.json")),
        _ => Reply::fail(3, "unexpected"),
    });
    let lvm = lvm(fake);
    let lv = lvm
        .find_lv("Weird_Name/With Spaces")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lv.vg, VG);
    assert!(
        lvm.find_lv("keep").await.unwrap().is_none(),
        "foreign LVs are not found"
    );
    assert!(lvm.find_lv("pvc-nope").await.unwrap().is_none());
    assert_eq!(lvm.strata_lvs(None).await.unwrap().len(), 2);
    let vgs = lvm.strata_vgs().await.unwrap();
    assert_eq!(
        vgs.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        [VG]
    );
    let pvs = lvm.vg_pvs(VG).await.unwrap();
    assert_eq!(pvs.len(), 2);
    assert_eq!(
        pvs.iter()
            .filter(|p| p.missing && p.device.is_none())
            .count(),
        1
    );
    assert_eq!(lvm.strata_pvs().await.unwrap().len(), 2);
}

#[tokio::test]
async fn lv_lookup_by_volume_refuses_a_foreign_lv_of_the_same_name() {
    let fake = FakeRunner::scripted()
        .expect(
            &["lvs"],
            &[&format!("{VG}/{VOL}")],
            Reply::ok(ours(VG, VOL, MIB)),
        )
        .expect(&["lvs"], &[], Reply::fail(5, NO_LV))
        .expect(&["lvs"], &[], Reply::ok(lv_json(VG, VOL, MIB, &[])));
    let lvm = lvm(fake);
    assert!(lvm.lv(VG, VOL).await.unwrap().is_some());
    assert!(lvm.lv(VG, VOL).await.unwrap().is_none());
    assert!(matches!(
        lvm.lv(VG, VOL).await,
        Err(LvmError::NotOwned { .. })
    ));
}

#[tokio::test]
async fn vg_lookup_and_extent_size() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 1)))
        .expect(
            &["vgs"],
            &["other"],
            Reply::fail(5, "Volume group \"other\" not found"),
        )
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)));
    let lvm = lvm(fake);
    let vg = lvm.vg(VG).await.unwrap().unwrap();
    assert_eq!((vg.missing_pv_count, vg.extent_size), (1, 4 * MIB));
    assert!(lvm.vg("other").await.unwrap().is_none());
    assert_eq!(lvm.extent_size(VG).await.unwrap(), 4 * MIB);
    assert_eq!(lvm.extent_size(VG).await.unwrap(), 4 * MIB, "cached");
    lvm.runner().assert_done();
}

// ---- PVs and VGs --------------------------------------------------------------------------------

const DEV: &str = "/dev/loop7";

#[tokio::test]
async fn create_pv_on_a_blank_device_and_again() {
    let fake = FakeRunner::scripted()
        .expect(&["pvs"], &[DEV], Reply::fail(5, NO_PV))
        .expect_tool(
            Tool::Blkid,
            &["-p", "-o", "export", DEV],
            &[],
            Reply::fail(2, ""),
        )
        .expect(&["pvcreate", DEV], &[], Reply::ok(""))
        .expect(&["pvs"], &[DEV], Reply::ok(pv_json(DEV, "", "", "")))
        // Second call: an orphan this process created is accepted.
        .expect(&["pvs"], &[DEV], Reply::ok(pv_json(DEV, "", "", "")));
    let lvm = lvm(fake);
    let pv = lvm.create_pv(Path::new(DEV)).await.unwrap();
    assert_eq!(pv.device.as_deref(), Some(Path::new(DEV)));
    assert_eq!(pv.vg, None);
    lvm.create_pv(Path::new(DEV)).await.unwrap();
    lvm.runner().assert_done();
    let pvcreate = &lvm.runner().calls_of("pvcreate")[0];
    assert!(
        !pvcreate
            .args
            .iter()
            .any(|a| a.starts_with("-y") || a == "--yes" || a.starts_with("-f")),
        "never force or auto-confirm: {pvcreate:?}"
    );
}

#[tokio::test]
async fn create_pv_refuses_signatures_and_foreign_pvs() {
    let sig = FakeRunner::scripted()
        .expect(&["pvs"], &[], Reply::fail(5, NO_PV))
        .expect_tool(
            Tool::Blkid,
            &[],
            &[],
            Reply::ok("DEVNAME=/dev/loop7\nUUID=x\nTYPE=ext4\nUSAGE=filesystem\n"),
        );
    let lvm1 = lvm(sig);
    let err = lvm1.create_pv(Path::new(DEV)).await.unwrap_err();
    assert!(
        matches!(err, LvmError::HasSignature { ref detail, .. } if detail == "TYPE=ext4"),
        "{err:?}"
    );
    assert!(lvm1.runner().calls_of("pvcreate").is_empty());

    let table = FakeRunner::scripted()
        .expect(&["pvs"], &[], Reply::fail(5, NO_PV))
        .expect_tool(
            Tool::Blkid,
            &[],
            &[],
            Reply::ok("DEVNAME=/dev/loop7\nPTUUID=7a\nPTTYPE=dos\n"),
        );
    let err = lvm(table).create_pv(Path::new(DEV)).await.unwrap_err();
    assert!(
        matches!(err, LvmError::HasSignature { ref detail, .. } if detail == "PTTYPE=dos"),
        "{err:?}"
    );

    // Our probe saw nothing but pvcreate's own check refuses: still HasSignature.
    let lvm_refuses = FakeRunner::scripted()
        .expect(&["pvs"], &[], Reply::fail(5, NO_PV))
        .expect_tool(Tool::Blkid, &[], &[], Reply::fail(2, ""))
        .expect(
            &["pvcreate"],
            &[],
            Reply::fail(5, "WARNING: ext4 signature detected on /dev/loop7 at offset 1080. Wipe it? [y/n]: [n]\n  Aborted wiping of ext4.\n  1 existing signature left on the device."),
        );
    let err = lvm(lvm_refuses)
        .create_pv(Path::new(DEV))
        .await
        .unwrap_err();
    assert!(matches!(err, LvmError::HasSignature { .. }), "{err:?}");

    let foreign =
        FakeRunner::scripted().expect(&["pvs"], &[], Reply::ok(pv_json(DEV, "data", "", "")));
    let err = lvm(foreign).create_pv(Path::new(DEV)).await.unwrap_err();
    assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");

    let orphan = FakeRunner::scripted().expect(&["pvs"], &[], Reply::ok(pv_json(DEV, "", "", "")));
    let err = lvm(orphan).create_pv(Path::new(DEV)).await.unwrap_err();
    assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");

    let absent = FakeRunner::scripted().expect(
        &["pvs"],
        &[],
        Reply::fail(5, "Cannot use /dev/loop7: device not found"),
    );
    let err = lvm(absent).create_pv(Path::new(DEV)).await.unwrap_err();
    assert!(matches!(err, LvmError::NotFound { .. }), "{err:?}");

    let relative = lvm(FakeRunner::scripted())
        .create_pv(Path::new("loop7"))
        .await
        .unwrap_err();
    assert!(matches!(relative, LvmError::InvalidArgument(_)));
}

#[tokio::test]
async fn create_vg_on_blank_devices_tags_vg_and_pvs() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::fail(5, NO_VG))
        .expect(&["pvs"], &[DEV], Reply::fail(5, NO_PV))
        .expect_tool(Tool::Blkid, &[], &[DEV], Reply::fail(2, ""))
        .expect(
            &["vgcreate", "--addtag", OWNER_TAG, VG, DEV],
            &[],
            Reply::ok(""),
        )
        .expect(
            &["pvchange", "--addtag", OWNER_TAG, DEV],
            &[],
            Reply::ok(""),
        )
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)));
    let lvm = lvm(fake);
    let vg = lvm.create_vg(VG, &[PathBuf::from(DEV)]).await.unwrap();
    assert!(vg.owned);
    lvm.runner().assert_done();
}

#[tokio::test]
async fn create_vg_again_is_success_and_foreign_vg_is_refused() {
    let again = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)))
        .expect(
            &["pvs"],
            &[DEV],
            Reply::ok(pv_json(DEV, VG, OWNER_TAG, OWNER_TAG)),
        )
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)));
    let lvm1 = lvm(again);
    lvm1.create_vg(VG, &[PathBuf::from(DEV)]).await.unwrap();
    lvm1.runner().assert_done();

    // A PV of our VG that lost (or never got) its tag is tagged, nothing else.
    let untagged = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["pvs"], &[DEV], Reply::ok(pv_json(DEV, VG, "", OWNER_TAG)))
        .expect(
            &["pvchange", "--addtag", OWNER_TAG, DEV],
            &[],
            Reply::ok(""),
        )
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)));
    let lvm2 = lvm(untagged);
    lvm2.create_vg(VG, &[PathBuf::from(DEV)]).await.unwrap();
    lvm2.runner().assert_done();

    let foreign = FakeRunner::scripted().expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, false, 0)));
    let err = lvm(foreign)
        .create_vg(VG, &[PathBuf::from(DEV)])
        .await
        .unwrap_err();
    assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
}

#[tokio::test]
async fn extend_vg_adds_a_blank_device_and_refuses_others() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["pvs"], &[DEV], Reply::fail(5, NO_PV))
        .expect_tool(Tool::Blkid, &[], &[DEV], Reply::fail(2, ""))
        .expect(&["vgextend", VG, DEV], &[], Reply::ok(""))
        .expect(
            &["pvchange", "--addtag", OWNER_TAG, DEV],
            &[],
            Reply::ok(""),
        )
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)));
    let lvm1 = lvm(fake);
    lvm1.extend_vg(VG, Path::new(DEV)).await.unwrap();
    lvm1.runner().assert_done();

    let other_vg = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json(VG, true, 0)))
        .expect(&["pvs"], &[DEV], Reply::ok(pv_json(DEV, "data", "", "")));
    let err = lvm(other_vg)
        .extend_vg(VG, Path::new(DEV))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LvmError::NotOwned { ref what } if what.contains("data")),
        "{err:?}"
    );

    let no_vg = FakeRunner::scripted().expect(&["vgs"], &[VG], Reply::fail(5, NO_VG));
    let err = lvm(no_vg).extend_vg(VG, Path::new(DEV)).await.unwrap_err();
    assert!(matches!(err, LvmError::NotFound { .. }), "{err:?}");
}

// ---- plumbing: config, concurrency, cancellation ------------------------------------------------

#[tokio::test]
async fn config_is_passed_to_every_lvm_command() {
    let fake = FakeRunner::scripted()
        .expect(
            &["vgs", "--config", "devices { filter = [ \"a|.*|\" ] }"],
            &[],
            Reply::ok(vg_json(VG, true, 0)),
        )
        .expect(
            &["lvcreate", "--config", "devices { filter = [ \"a|.*|\" ] }"],
            &[],
            Reply::ok(""),
        )
        .expect(&["lvremove", "--config"], &[], Reply::fail(5, NO_LV));
    let lvm = Lvm::new(
        fake,
        LvmOptions {
            activate: false,
            config: Some("devices { filter = [ \"a|.*|\" ] }".into()),
            ..LvmOptions::default()
        },
    );
    lvm.create_lv(VG, VOL, MIB, None).await.unwrap();
    lvm.remove_lv(VG, VOL).await.unwrap();
    lvm.runner().assert_done();
}

fn slow_fake() -> FakeRunner {
    FakeRunner::from_fn(|inv| {
        let vg = inv.args.last().cloned().unwrap_or_default();
        match inv.subcommand() {
            "vgs" => Reply::ok(vg_json(&vg, true, 0)),
            "lvcreate" => Reply::ok("").after(Duration::from_millis(20)),
            _ => Reply::fail(3, "unexpected"),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_on_one_vg_are_serialised() {
    let lvm = lvm(slow_fake());
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let lvm = lvm.clone();
            tokio::spawn(async move { lvm.create_lv(VG, &format!("pvc-{i}"), MIB, None).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(lvm.runner().calls_of("lvcreate").len(), 10);
    assert_eq!(lvm.runner().max_in_flight(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_on_different_vgs_run_in_parallel() {
    let lvm = lvm(slow_fake());
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let tasks: Vec<_> = ["strata-nvme", "strata-ssd", "strata-hdd"]
        .into_iter()
        .map(|vg| {
            let (lvm, barrier) = (lvm.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                for i in 0..5 {
                    lvm.create_lv(vg, &format!("pvc-{i}"), MIB, None).await?;
                }
                Ok::<_, LvmError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(
        lvm.runner().max_in_flight() > 1,
        "VGs must not wait for each other"
    );
}

#[tokio::test]
async fn cancellation_stops_a_running_command() {
    let lvm = lvm(FakeRunner::from_fn(|_| {
        Reply::ok("").after(Duration::from_secs(30))
    }));
    let token = CancellationToken::new();
    let handle = lvm.with_cancellation(token.clone());
    let task = tokio::spawn(async move { handle.vgs().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    token.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(err, LvmError::Cancelled { .. }) && err.is_transient(),
        "{err:?}"
    );
}

// ---- the reserve ------------------------------------------------------------------------------

const GIB: u64 = 1 << 30;

/// A VG of `size` bytes with `free` of them free (4 MiB extents).
fn vg_with(size: u64, free: u64) -> String {
    format!(
        r#"{{"report":[{{"vg":[{{"vg_name":"{VG}","vg_uuid":"U","vg_size":"{size}","vg_free":"{free}","vg_extent_size":"4194304","vg_extent_count":"{}","vg_free_count":"{}","pv_count":"1","lv_count":"0","vg_missing_pv_count":"0","vg_tags":"{OWNER_TAG}"}}]}}]}}"#,
        size / (4 * MIB),
        free / (4 * MIB)
    )
}

#[tokio::test]
async fn the_reserve_is_kept_on_create_and_on_extend() {
    // 20 GiB VG, 10 GiB reserved: a 9 GiB volume fits, growing it to 19 GiB does not, and the
    // refusal runs no lvextend (the script has none: nothing changed).
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_with(20 * GIB, 20 * GIB)))
        .expect(&["vgs"], &[VG], Reply::ok(vg_with(20 * GIB, 20 * GIB)))
        .expect(
            &["lvcreate", "-n", VOL, "-L", "9663676416b"],
            &[VG],
            Reply::ok(""),
        )
        .expect(&["lvs"], &[], Reply::ok(ours(VG, VOL, 9 * GIB)))
        .expect(&["vgs"], &[VG], Reply::ok(vg_with(20 * GIB, 11 * GIB)));
    let lvm = lvm(fake);
    let made = lvm
        .create_lv_within(VG, VOL, 9 * GIB, None, 10 * GIB)
        .await
        .unwrap();
    assert_eq!(made.size_bytes, 9 * GIB);
    let err = lvm
        .extend_lv_within(VG, VOL, 19 * GIB, 10 * GIB)
        .await
        .unwrap_err();
    match &err {
        LvmError::InsufficientSpace {
            requested_bytes, ..
        } => assert_eq!(*requested_bytes, 10 * GIB),
        other => panic!("{other:?}"),
    }
    lvm.runner().assert_done();
}

#[tokio::test]
async fn a_create_into_the_reserve_is_refused_unless_the_lv_already_exists() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_with(20 * GIB, 12 * GIB)))
        .expect(&["vgs"], &[VG], Reply::ok(vg_with(20 * GIB, 12 * GIB)))
        .expect(&["lvs"], &[], Reply::fail(5, NO_LV));
    let lvm = lvm(fake);
    let err = lvm
        .create_lv_within(VG, VOL, 3 * GIB, None, 10 * GIB)
        .await
        .unwrap_err();
    assert!(matches!(err, LvmError::InsufficientSpace { .. }), "{err:?}");
    lvm.runner().assert_done();

    // The same request repeated after the LV was made (the VG is now short): success.
    let again = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_with(20 * GIB, 9 * GIB)))
        .expect(&["vgs"], &[VG], Reply::ok(vg_with(20 * GIB, 9 * GIB)))
        .expect(&["lvs"], &[], Reply::ok(ours(VG, VOL, 3 * GIB)))
        .expect(
            &["lvcreate"],
            &[],
            Reply::fail(
                5,
                format!("Logical Volume \"{VOL}\" already exists in volume group \"{VG}\""),
            ),
        )
        .expect(&["lvs"], &[], Reply::ok(ours(VG, VOL, 3 * GIB)));
    let lvm = self::lvm(again);
    let lv = lvm
        .create_lv_within(VG, VOL, 3 * GIB, None, 10 * GIB)
        .await
        .unwrap();
    assert_eq!(lv.size_bytes, 3 * GIB);
    lvm.runner().assert_done();
}

#[tokio::test]
async fn a_device_lvm2_declines_is_probed_and_refused() {
    let fake = FakeRunner::scripted()
        .expect(
            &["pvs"],
            &[DEV],
            Reply::fail(5, "Cannot use /dev/loop7: device is partitioned"),
        )
        .expect_tool(
            Tool::Blkid,
            &[],
            &[DEV],
            Reply::ok("DEVNAME=/dev/loop7\nPTUUID=1\nPTTYPE=gpt\n"),
        );
    let lvm = lvm(fake);
    let err = lvm.create_pv(Path::new(DEV)).await.unwrap_err();
    assert!(
        matches!(err, LvmError::HasSignature { ref detail, .. } if detail == "PTTYPE=gpt"),
        "{err:?}"
    );
    lvm.runner().assert_done();
}
