//! Admin API bodies: JSON into routes, upstreams and consumers (as the Admin API parses
//! them), and JSON merge patches. Nothing may panic.
#![no_main]

#[path = "../checks/admin_json.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
