//! Thin pools against real lvm2 on loop devices (host, root, activation off): what lvm2 does
//! without device-mapper. A thin pool's metadata is formatted through the kernel's thin target,
//! so lvm2 refuses to make one inactive; the layer must report that as an error and leave the VG
//! as it was (no half-made pool). The real pool lifecycle runs in the node VM (`tests/node_lvm`).
//! Skips like `lvm_loop` when not root or no loop device can be set up.

mod lvm_lab;

use csi_agent::lvm::{THIN_POOL_LV, THIN_TAG};
use lvm_lab::Lab;

#[tokio::test]
async fn without_activation_a_pool_is_refused_and_the_vg_is_unchanged() {
    let lab = match Lab::new(1, 256) {
        Ok(lab) => lab,
        Err(why) => {
            lvm_lab::skip(module_path!(), &why);
            return;
        }
    };
    let lvm = lab.lvm();
    let vg = "strata-it-thin";
    let before = lvm.create_vg(vg, &lab.loops).await.unwrap();
    let made = lvm.create_thin_pool(vg, 64 << 20).await;
    let after = lvm.vg(vg).await.unwrap().unwrap();
    match made {
        // lvm2 versions that can format the pool's metadata without activation
        Ok(pool) => {
            assert_eq!(pool.name, THIN_POOL_LV);
            assert!(pool.owned);
            assert!(after.free_bytes < before.free_bytes);
            let state = lvm.thin_state(vg).await.unwrap().unwrap();
            assert_eq!(state.virtual_bytes, 0);
        }
        Err(e) => {
            eprintln!("lvm2 without activation: {e}");
            assert_eq!(
                after.free_bytes, before.free_bytes,
                "nothing half-made: {e}"
            );
            assert!(lvm.thin_state(vg).await.unwrap().is_none());
        }
    }
    // no pool (or an inactive one): a thin volume is refused or made, never made elsewhere
    let thin = lvm
        .create_thin_lv(vg, "pvc-thin", 8 << 20, None, |s| s.pool.size_bytes)
        .await;
    if let Ok(lv) = &thin {
        assert!(lv.tags.iter().any(|t| t == THIN_TAG));
    }
    let lvs = lvm.strata_lvs(Some(vg)).await.unwrap();
    assert!(
        lvs.iter().all(|l| l.volume.as_deref() != Some("pvc-thin")) || thin.is_ok(),
        "{lvs:?}"
    );
}
