//! The declarative configuration: YAML parsing and every semantic check a reload runs
//! (`check-config`). Nothing may panic.
#![no_main]

#[path = "../checks/config.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
