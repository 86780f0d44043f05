//! Generates the gRPC code with a vendored `protoc` (no system protobuf compiler needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-build runs protoc from $PROTOC; the build script is single-threaded.
    std::env::set_var("PROTOC", protoc);
    let proto = "../../proto/resnet_cluster/v1/cluster.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .file_descriptor_set_path(out.join("resnet_cluster_v1.bin"))
        .compile_protos(&[proto], &["../../proto"])?;
    Ok(())
}
