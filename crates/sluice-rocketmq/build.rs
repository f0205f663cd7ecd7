//! Compiles the RocketMQ 5 protocol (`proto/apache/rocketmq/v2`) with protox, a pure-Rust
//! protobuf compiler, so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["apache/rocketmq/v2/service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(true)
        // Message bodies as `Bytes`: delivered without a copy out of the stored batch.
        .bytes(".apache.rocketmq.v2.Message.body")
        .compile_fds(files)?;
    Ok(())
}
