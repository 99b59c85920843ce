//! Client requests: bytes a client sent, as the gateway's own HTTP/1.1 loop takes
//! them. Nothing may panic, and what is taken must be consistent.
#![no_main]

#[path = "../checks/client_request.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
