//! Route matching: routes built from the input's first lines (`path|host|method|priority`),
//! then the last line (`method|host|path`) looked up. Nothing may panic, and a route that
//! is found must match the request.
#![no_main]

#[path = "../checks/router.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
