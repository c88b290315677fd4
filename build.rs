//! Compiles the gRPC contract with the pure-Rust `protox` compiler, so a build needs only cargo.

use std::{env, fs, path::PathBuf};

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tokend/v1/tokend.proto"];
    let includes = ["proto"];
    let fds = protox::compile(protos, includes)?;

    // Server reflection serves this encoded set (imports included).
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("tokend_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The `Connect` RPC would clash with the generated `connect` constructor: clients are
        // built from a `Channel` with `new` instead.
        .build_transport(false)
        // Messages that carry secrets get a hand-written, redacting Debug (src/api/redact.rs).
        .skip_debug(["tokend.v1.Profile", "tokend.v1.AccessToken", "tokend.v1.CompleteConnectRequest"])
        .compile_fds(fds)?;

    // compile_fds emits no rerun-if-changed; a directory makes cargo watch every file in it.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
