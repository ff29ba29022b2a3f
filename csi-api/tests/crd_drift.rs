//! The committed `deploy/crds/*.yaml` must equal what the types generate.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (file, generated) in csi_api::crd::crd_manifests() {
        let path = dir.join(file);
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            committed == generated,
            "{} drifted from the CRD types: run `cargo run -p csi-api --bin crdgen -- --out deploy/crds`",
            path.display()
        );
    }
}
