//! Compiles `proto/csi.proto` into tonic/prost bindings. Nothing else happens here.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../proto";
    println!("cargo:rerun-if-changed={proto_dir}/csi.proto");
    let descriptors = protox::compile([format!("{proto_dir}/csi.proto")], [proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
