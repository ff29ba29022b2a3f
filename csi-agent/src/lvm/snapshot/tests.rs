use super::*;
use crate::lvm::thin::THIN_POOL_TAG;
use crate::lvm::{FakeRunner, LvmOptions, Reply};

const VG: &str = "strata-ssd";
const VOL: &str = "pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const SNAP: &str = "snapshot-7a6b5c4d-3e2f-1a0b-9c8d-7e6f5a4b3c2d";
const MIB: u64 = 1 << 20;
const NOT_FOUND: &str = r#"Failed to find logical volume "strata-ssd/x""#;

fn vg_json() -> String {
    format!(
        r#"{{"report":[{{"vg":[{{"vg_name":"{VG}","vg_uuid":"U","vg_size":"1073741824","vg_free":"536870912","vg_extent_size":"4194304","vg_extent_count":"256","vg_free_count":"128","pv_count":"1","lv_count":"1","vg_missing_pv_count":"0","vg_tags":"{OWNER_TAG}"}}]}}]}}"#
    )
}

/// One `lvs` row (the snapshot fields; the thin fields when `segtype` is given).
fn row(name: &str, size: u64, tags: &[String], segtype: &str) -> String {
    format!(
        r#"{{"lv_name":"{name}","vg_name":"{VG}","lv_uuid":"L","lv_size":"{size}","lv_tags":"{}","lv_active":"","lv_attr":"Vwi---tz-k","lv_time":"2026-12-03 01:02:03 +0100","segtype":"{segtype}","pool_lv":"{}","data_percent":"","metadata_percent":"","lv_metadata_size":""}}"#,
        tags.join(","),
        if segtype == "thin" { THIN_POOL_LV } else { "" }
    )
}

fn report(rows: &[String]) -> String {
    format!(r#"{{"report":[{{"lv":[{}]}}]}}"#, rows.join(","))
}

fn volume_tags(volume: &str, thin: bool) -> Vec<String> {
    let mut tags = vec![OWNER_TAG.to_owned(), naming::volume_tag(volume).unwrap()];
    if thin {
        tags.push(THIN_TAG.to_owned());
    }
    tags
}

fn volume_row(volume: &str, size: u64, thin: bool) -> String {
    row(
        &lv_name_for(volume),
        size,
        &volume_tags(volume, thin),
        if thin { "thin" } else { "linear" },
    )
}

fn snapshot_row(id: &str, of: &str, size: u64) -> String {
    let tags = [
        OWNER_TAG.to_owned(),
        THIN_TAG.to_owned(),
        snapshot_tag(id),
        snapshot_of_tag(of),
    ];
    row(&snapshot_lv_name(id), size, &tags, "thin")
}

fn pool_state(thin_rows: &[String]) -> String {
    let pool = format!(
        r#"{{"lv_name":"{THIN_POOL_LV}","vg_name":"{VG}","lv_uuid":"P","lv_size":"{}","lv_tags":"{OWNER_TAG},{THIN_POOL_TAG}","lv_active":"active","lv_attr":"twi-aotz--","segtype":"thin-pool","pool_lv":"","data_percent":"10.00","metadata_percent":"5.00","lv_metadata_size":"8388608"}}"#,
        256 * MIB
    );
    let mut rows = vec![pool];
    rows.extend_from_slice(thin_rows);
    report(&rows)
}

/// The one `lvs` of the whole VG a create decides on.
const READ: [&str; 2] = [reading::CREATE_FIELDS, VG];

fn lvm(fake: FakeRunner) -> Lvm<FakeRunner> {
    Lvm::new(fake, LvmOptions::default())
}

fn args_of(layer: &Lvm<FakeRunner>, sub: &str) -> Vec<Vec<String>> {
    layer
        .runner()
        .calls_of(sub)
        .into_iter()
        .map(|c| c.args)
        .collect()
}

#[test]
fn names_tags_and_times() {
    let name = snapshot_lv_name("a");
    assert!(name.starts_with("strata_") && name.len() == 47, "{name}");
    assert_eq!(snapshot_lv_name("a"), lv_name_for("snapshot/a"));
    assert_ne!(snapshot_lv_name(VOL), lv_name_for(VOL));
    assert_eq!(snapshot_tag("a/b"), "strata.io/snapshot=a_2Fb");
    assert_eq!(snapshot_of_tag(VOL), format!("strata.io/snapshot-of={VOL}"));
    assert_eq!(
        rfc3339_of_lv_time("2026-12-03 01:02:03 +0100").as_deref(),
        Some("2026-12-03T00:02:03Z")
    );
    assert_eq!(rfc3339_of_lv_time(""), None);
    assert_eq!(rfc3339_of_lv_time("yesterday"), None);
}

#[test]
fn only_strata_snapshots_are_parsed_as_snapshots_and_no_volume_listing_takes_them() {
    let json = report(&[
        snapshot_row(SNAP, VOL, 64 * MIB),
        volume_row(VOL, 64 * MIB, true),
        // a foreign LV with a snapshot tag but no owner tag
        row(
            "theirs",
            MIB,
            &[snapshot_tag("x"), snapshot_of_tag("y")],
            "thin",
        ),
    ]);
    let snaps = parse_snapshots("lvs", &json).unwrap();
    assert_eq!(snaps.len(), 1);
    let s = &snaps[0];
    assert_eq!(
        (
            s.snapshot_id.as_str(),
            s.source_volume.as_str(),
            s.size_bytes
        ),
        (SNAP, VOL, 64 * MIB)
    );
    assert_eq!(s.creation_time.as_deref(), Some("2026-12-03T00:02:03Z"));
    assert!(is_snapshot(&s.lv) && is_thin(&s.lv) && s.lv.volume.is_none());
    // every reader of volumes keys on the volume tag, which a snapshot LV lacks
    let lvs = report::parse_lvs("lvs", &json).unwrap();
    assert_eq!(
        lvs.iter()
            .filter_map(|l| l.volume.clone())
            .collect::<Vec<_>>(),
        vec![VOL.to_owned()]
    );
}

#[tokio::test]
async fn find_lv_and_the_thin_state_do_not_take_a_snapshot_for_a_volume() {
    let json = report(&[snapshot_row(SNAP, VOL, 64 * MIB)]);
    let fake = FakeRunner::scripted()
        .expect(&["lvs"], &[], Reply::ok(json.clone()))
        .expect(
            &["lvs"],
            &[VG],
            Reply::ok(pool_state(&[snapshot_row(SNAP, VOL, 64 * MIB)])),
        );
    let layer = lvm(fake);
    assert!(layer.find_lv(SNAP).await.unwrap().is_none());
    let state = layer.thin_state(VG).await.unwrap().unwrap();
    assert!(state.volumes.is_empty());
    // but its virtual size is promised on the pool
    assert_eq!(state.virtual_bytes, 64 * MIB);
    layer.runner().assert_done();
}

#[tokio::test]
async fn a_snapshot_is_read_only_skipped_at_activation_tagged_and_admitted() {
    let snap_lv = snapshot_lv_name(SNAP);
    let origin = volume_row(VOL, 64 * MIB, true);
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json()))
        // one reading decides: no such snapshot, the origin is thin, the pool has room
        .expect(&["lvs"], &READ, Reply::ok(pool_state(&[origin])))
        .expect(&["lvcreate", "-s"], &[], Reply::ok(""))
        // then lvm2's creation time of what was made
        .expect(
            &["lvs"],
            &[&format!("{VG}/{snap_lv}")],
            Reply::ok(report(&[snapshot_row(SNAP, VOL, 64 * MIB)])),
        );
    let layer = lvm(fake);
    let seen = std::sync::Mutex::new(0);
    let snap = layer
        .create_snapshot(VG, VOL, SNAP, |s| {
            *seen.lock().unwrap() = s.virtual_bytes;
            64 * MIB
        })
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), 64 * MIB);
    assert_eq!(snap.snapshot_id, SNAP);
    assert_eq!(snap.source_volume, VOL);
    assert_eq!(snap.size_bytes, 64 * MIB);
    assert_eq!(snap.creation_time.as_deref(), Some("2026-12-03T00:02:03Z"));
    let expected: Vec<String> = [
        "lvcreate",
        "-s",
        "-n",
        &snap_lv,
        "-ky",
        "-p",
        "r",
        "--addtag",
        OWNER_TAG,
        "--addtag",
        THIN_TAG,
        "--addtag",
        &snapshot_tag(SNAP),
        "--addtag",
        &snapshot_of_tag(VOL),
        &format!("{VG}/{VOL}"),
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(args_of(&layer, "lvcreate"), vec![expected]);
    layer.runner().assert_done();
}

#[tokio::test]
async fn a_repeated_snapshot_is_the_same_one_and_another_origin_is_refused() {
    // the origin is gone since: a repeat still answers the snapshot
    let existing = pool_state(&[snapshot_row(SNAP, VOL, 64 * MIB)]);
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json()))
        .expect(&["lvs"], &READ, Reply::ok(existing.clone()))
        .expect(&["lvs"], &READ, Reply::ok(existing));
    let layer = lvm(fake);
    // the closure would refuse: a repeat is not admitted again
    let again = layer.create_snapshot(VG, VOL, SNAP, |_| 0).await.unwrap();
    assert_eq!(again.source_volume, VOL);
    let other = layer
        .create_snapshot(VG, "pvc-other", SNAP, |_| u64::MAX)
        .await;
    assert!(
        matches!(other, Err(LvmError::OtherSource { .. })),
        "{other:?}"
    );
    layer.runner().assert_done();
    assert!(layer.runner().calls_of("lvcreate").is_empty());
}

#[tokio::test]
async fn snapshot_refusals_make_nothing() {
    let linear = volume_row(VOL, 64 * MIB, false);
    let thin = volume_row(VOL, 64 * MIB, true);
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json()))
        // unknown origin
        .expect(&["lvs"], &READ, Reply::ok(pool_state(&[])))
        // linear origin
        .expect(&["lvs"], &READ, Reply::ok(pool_state(&[linear])))
        // no room on the pool
        .expect(&["lvs"], &READ, Reply::ok(pool_state(&[thin])))
        // the snapshot's LV name taken by an LV that is not this snapshot
        .expect(
            &["lvs"],
            &READ,
            Reply::ok(pool_state(&[row(
                &snapshot_lv_name(SNAP),
                MIB,
                &[OWNER_TAG.to_owned()],
                "thin",
            )])),
        );
    let layer = lvm(fake);
    let gone = layer.create_snapshot(VG, VOL, SNAP, |_| u64::MAX).await;
    assert!(matches!(gone, Err(LvmError::NotFound { .. })), "{gone:?}");
    let linear = layer.create_snapshot(VG, VOL, SNAP, |_| u64::MAX).await;
    assert!(
        matches!(linear, Err(LvmError::NotThin { .. })),
        "{linear:?}"
    );
    let full = layer.create_snapshot(VG, VOL, SNAP, |_| 64 * MIB - 1).await;
    assert!(
        matches!(full, Err(LvmError::InsufficientSpace { requested_bytes, .. }) if requested_bytes == 64 * MIB),
        "{full:?}"
    );
    let taken = layer.create_snapshot(VG, VOL, SNAP, |_| u64::MAX).await;
    assert!(matches!(taken, Err(LvmError::NotOwned { .. })), "{taken:?}");
    assert!(matches!(
        layer.create_snapshot(VG, VOL, "", |_| u64::MAX).await,
        Err(LvmError::InvalidArgument(_))
    ));
    layer.runner().assert_done();
    assert!(layer.runner().calls_of("lvcreate").is_empty());
}

#[tokio::test]
async fn a_snapshot_is_removed_only_through_the_tag_restricted_lvremove() {
    let snap_lv = snapshot_lv_name(SNAP);
    let fake = FakeRunner::scripted()
        .expect(
            &["lvremove"],
            &[],
            Reply::ok(format!(
                r#"Logical volume "{snap_lv}" successfully removed"#
            )),
        )
        .expect(&["lvremove"], &[], Reply::fail(5, NOT_FOUND))
        // nothing matched the selection but the LV is there: someone else's
        .expect(&["lvremove"], &[], Reply::ok(""))
        .expect(
            &["lvs"],
            &[],
            Reply::ok(report(&[row(&snap_lv, MIB, &[], "thin")])),
        );
    let layer = lvm(fake);
    assert!(layer.remove_snapshot(VG, SNAP).await.unwrap());
    assert!(!layer.remove_snapshot(VG, SNAP).await.unwrap());
    assert!(matches!(
        layer.remove_snapshot(VG, SNAP).await,
        Err(LvmError::NotOwned { .. })
    ));
    let expected: Vec<String> = [
        "lvremove".to_owned(),
        "-f".to_owned(),
        "-S".to_owned(),
        format!("lv_tags={{{OWNER_TAG},{}}}", snapshot_tag(SNAP)),
        format!("{VG}/{snap_lv}"),
    ]
    .to_vec();
    assert_eq!(args_of(&layer, "lvremove")[0], expected);
    layer.runner().assert_done();
    assert!(
        layer
            .runner()
            .calls()
            .iter()
            .all(|c| c.subcommand() != "lvchange"),
        "a snapshot is never activated or wiped"
    );
}

#[tokio::test]
async fn a_restore_is_a_writable_snapshot_of_the_snapshot_grown_to_the_size_asked() {
    let snap_lv = snapshot_lv_name(SNAP);
    let restored = "pvc-restored";
    let mut tags = volume_tags(restored, true);
    tags.push(LvSource::Snapshot(SNAP).tag());
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json()))
        // one reading: the volume is not there yet, the snapshot is, the pool has room
        .expect(
            &["lvs"],
            &READ,
            Reply::ok(pool_state(&[snapshot_row(SNAP, VOL, 64 * MIB)])),
        )
        .expect(&["lvcreate", "-s"], &[], Reply::ok(""))
        // no re-read: what was made is known
        .expect(
            &["lvextend", "-L", &format!("{}b", 128 * MIB)],
            &[&format!("{VG}/{restored}")],
            Reply::ok(""),
        );
    let layer = lvm(fake);
    let seen = std::sync::Mutex::new(false);
    let lv = layer
        .create_lv_from_source(
            VG,
            LvSource::Snapshot(SNAP),
            restored,
            125 * MIB,
            None,
            |_| {
                *seen.lock().unwrap() = true;
                128 * MIB
            },
        )
        .await
        .unwrap();
    assert!(*seen.lock().unwrap());
    assert_eq!(lv.size_bytes, 128 * MIB);
    assert_eq!(lv.volume.as_deref(), Some(restored));
    assert!(is_thin(&lv) && !is_snapshot(&lv));
    assert_eq!(
        lv_source(&lv),
        Some(csi_api::request::ContentSource::Snapshot(SNAP.to_owned()))
    );
    assert!(!layer.take_fresh(restored), "a restore has content");
    let expected: Vec<String> = [
        "lvcreate",
        "-s",
        "-n",
        restored,
        "-kn",
        "-p",
        "rw",
        "--addtag",
        OWNER_TAG,
        "--addtag",
        &naming::volume_tag(restored).unwrap(),
        "--addtag",
        THIN_TAG,
        "--addtag",
        &LvSource::Snapshot(SNAP).tag(),
        "-ay",
        &format!("{VG}/{snap_lv}"),
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(args_of(&layer, "lvcreate"), vec![expected]);
    layer.runner().assert_done();
}

#[tokio::test]
async fn a_clone_repeat_completes_or_compares_and_refusals_make_nothing() {
    let clone = "pvc-clone";
    let mut tags = volume_tags(clone, true);
    tags.push(LvSource::Volume(VOL).tag());
    let half_done = row(clone, 64 * MIB, &tags, "thin");
    let linear = volume_row(VOL, 64 * MIB, false);
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json()))
        // a repeat after the lvextend failed: completed, no admission, no lvcreate
        .expect(
            &["lvs"],
            &READ,
            Reply::ok(pool_state(std::slice::from_ref(&half_done))),
        )
        .expect(
            &["lvextend", "-L", &format!("{}b", 128 * MIB)],
            &[],
            Reply::ok(""),
        )
        // the same name from another source
        .expect(&["lvs"], &READ, Reply::ok(pool_state(&[half_done])))
        // a linear source
        .expect(&["lvs"], &READ, Reply::ok(pool_state(&[linear])))
        // an unknown snapshot
        .expect(&["lvs"], &READ, Reply::ok(pool_state(&[])))
        // smaller than the source
        .expect(
            &["lvs"],
            &READ,
            Reply::ok(pool_state(&[snapshot_row(SNAP, VOL, 64 * MIB)])),
        );
    let layer = lvm(fake);
    let lv = layer
        .create_lv_from_source(VG, LvSource::Volume(VOL), clone, 128 * MIB, None, |_| 0)
        .await
        .unwrap();
    assert_eq!(lv.size_bytes, 128 * MIB);
    let other = layer
        .create_lv_from_source(VG, LvSource::Snapshot(SNAP), clone, 128 * MIB, None, |_| 0)
        .await;
    assert!(
        matches!(other, Err(LvmError::OtherSource { .. })),
        "{other:?}"
    );
    let linear = layer
        .create_lv_from_source(VG, LvSource::Volume(VOL), "pvc-b", 64 * MIB, None, |_| {
            u64::MAX
        })
        .await;
    assert!(
        matches!(linear, Err(LvmError::NotThin { .. })),
        "{linear:?}"
    );
    let unknown = layer
        .create_lv_from_source(
            VG,
            LvSource::Snapshot("nope"),
            "pvc-c",
            64 * MIB,
            None,
            |_| u64::MAX,
        )
        .await;
    assert!(
        matches!(unknown, Err(LvmError::NotFound { .. })),
        "{unknown:?}"
    );
    let small = layer
        .create_lv_from_source(
            VG,
            LvSource::Snapshot(SNAP),
            "pvc-d",
            32 * MIB,
            None,
            |_| u64::MAX,
        )
        .await;
    assert!(
        matches!(small, Err(LvmError::InvalidArgument(_))),
        "{small:?}"
    );
    layer.runner().assert_done();
    assert!(layer.runner().calls_of("lvcreate").is_empty());
}

#[tokio::test]
async fn a_restore_beyond_the_room_is_refused_and_nothing_is_made() {
    let fake = FakeRunner::scripted()
        .expect(&["vgs"], &[VG], Reply::ok(vg_json()))
        .expect(
            &["lvs"],
            &READ,
            Reply::ok(pool_state(&[snapshot_row(SNAP, VOL, 64 * MIB)])),
        );
    let layer = lvm(fake);
    let err = layer
        .create_lv_from_source(
            VG,
            LvSource::Snapshot(SNAP),
            "pvc-r",
            128 * MIB,
            None,
            |_| 100 * MIB,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, LvmError::InsufficientSpace { requested_bytes, .. } if requested_bytes == 128 * MIB),
        "{err:?}"
    );
    layer.runner().assert_done();
    assert!(layer.runner().calls_of("lvcreate").is_empty());
}
