//! Admin API bodies: JSON into routes, upstreams and consumers (as the Admin API parses
//! them), and JSON merge patches. Nothing may panic.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/admin_json.rs` and the CI smoke run
//! `tests/tests/fuzz_smoke.rs`.

use keygate_gateway::admin::patch;
use keygate_gateway::catalog;
use keygate_gateway::config::{ConsumerConfig, RouteConfig, UpstreamConfig};

/// One input: must not panic (and must keep the invariants asserted below).
pub fn check(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = catalog::parse::<RouteConfig>(&value);
    let _ = catalog::parse::<UpstreamConfig>(&value);
    let _ = catalog::parse::<ConsumerConfig>(&value);
    let mut target = serde_json::json!({
        "uri": "/a",
        "plugins": { "jwt-auth": {} },
        "upstream": { "nodes": { "127.0.0.1:1": 1 } }
    });
    patch::merge(&mut target, value.clone());
    let _ = catalog::parse::<RouteConfig>(&target);
    if let serde_json::Value::String(path) = &value {
        let segments: Vec<&str> = path.split('/').collect();
        let _ = patch::set_path(&mut target, &segments, value.clone());
    }
}
