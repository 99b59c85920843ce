//! The generated gRPC code is checked in so that building keygate needs no `protoc`
//! and no build script. This test regenerates it from `schema/` with protox (pure Rust)
//! and fails when the checked-in copy has drifted. Run with `KEYGATE_BLESS=1` to
//! rewrite the checked-in file after changing the schema.

use std::path::PathBuf;

const GENERATED: &str = "keygate.agent.v1.rs";

#[test]
fn generated_code_matches_schema() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schema = root.join("schema");
    let fds =
        protox::compile(["keygate/agent/v1/agent.proto"], [&schema]).expect("schema compiles");

    let out = tempfile::tempdir().expect("tempdir");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("codegen");

    let fresh = std::fs::read_to_string(out.path().join(GENERATED)).expect("generated file");
    let checked_in_path = root.join("src/generated").join(GENERATED);
    if std::env::var_os("KEYGATE_BLESS").is_some() {
        std::fs::write(&checked_in_path, &fresh).expect("write generated code");
        return;
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} is out of date with schema/: run `KEYGATE_BLESS=1 cargo test -p keygate-proto --test codegen`",
        checked_in_path.display()
    );
}
