//! Upstream responses: bytes an upstream sent, parsed and decoded by the gateway's
//! HTTP/1.1 client. Nothing may panic, and what is accepted must be consistent.
#![no_main]

#[path = "../checks/upstream_response.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
