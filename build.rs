//! Compiles flagd's sync protocol (proto/flagd/sync/v1/sync.proto) into the server and
//! client of `sluice::sync`, with protox (a protobuf compiler in Rust: no `protoc` on
//! the build machine) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/flagd/sync/v1/sync.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
