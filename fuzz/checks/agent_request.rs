//! The agent's request handling up to the store: a protobuf Get/Watch request from raw
//! bytes, each name validated and checked against policy patterns. Nothing may panic,
//! and no accepted name may escape its prefix.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/agent_request.rs` and the CI smoke run
//! `tests/tests/fuzz_smoke.rs`.

use keygate_agent::name::{NamePattern, SecretName};
use keygate_proto::agent::v1::{GetRequest, WatchRequest};
use prost::Message as _;

/// One input: must not panic (and must keep the invariants asserted below).
pub fn check(data: &[u8]) {
    let mut names = Vec::new();
    if let Ok(request) = GetRequest::decode(data) {
        names.extend(request.names);
    }
    if let Ok(request) = WatchRequest::decode(data) {
        names.extend(request.names);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        names.extend(text.lines().map(str::to_owned));
    }
    let jack = NamePattern::parse("consumer/jack/*").expect("a valid pattern");
    for raw in names.iter().take(64) {
        let _ = NamePattern::parse(raw);
        if let Ok(name) = SecretName::parse(raw) {
            let text = name.as_str();
            assert!(
                !text
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == ".."),
                "accepted {text:?}"
            );
            if jack.matches(&name) {
                assert!(
                    text.starts_with("consumer/jack/"),
                    "{text:?} escaped the prefix"
                );
            }
        }
    }
}
