//! Prints the CRDs as YAML (`crdgen`), or writes them into a folder (`crdgen --out deploy/crds`).
//! A test compares the committed files under `deploy/crds` with this output, so the YAML never
//! drifts from the Rust types.

use std::path::PathBuf;

use clap::Parser;

/// Generate Strata's CustomResourceDefinitions from the Rust types.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Write one file per CRD into this folder instead of printing them all to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    for (file, yaml) in csi_api::crd::crd_manifests() {
        match &args.out {
            Some(dir) => std::fs::write(dir.join(file), yaml)?,
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
