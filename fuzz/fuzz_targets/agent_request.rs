//! The agent's request handling up to the store: a protobuf Get/Watch request from raw
//! bytes, each name validated and checked against policy patterns. Nothing may panic,
//! and no accepted name may escape its prefix.
#![no_main]

#[path = "../checks/agent_request.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
