//! The declarative configuration: YAML parsing and every semantic check a reload runs
//! (`check-config`). Nothing may panic.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/config.rs` and the CI smoke run
//! `tests/tests/fuzz_smoke.rs`.

/// One input: must not panic (and must keep the invariants asserted below).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = keygate_gateway::Config::parse(text) {
        let _ = keygate_gateway::check(&config);
    }
}
