//! Compiles the `.proto` files with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["meshgate/v1/envelope.proto", "meshgate/v1/link.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    prost_build::Config::new()
        // Payloads and keys are `Bytes`: an MQTT payload moves into the envelope without a copy.
        .bytes(["."])
        .compile_fds(fds)?;
    Ok(())
}
