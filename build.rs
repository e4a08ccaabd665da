//! Generates the Rust types for `proto/hotlead/v1/*.proto` with prost.
//!
//! The protobuf files are compiled by `protox`, a pure-Rust protobuf compiler,
//! so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/hotlead/v1/events.proto", "proto/hotlead/v1/alerts.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("hotlead_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    prost_build::Config::new().btree_map(["."]).compile_fds(descriptors)?;
    Ok(())
}
