//! Token parsing, signature verification (HMAC and RSA) and time-claim checks on
//! arbitrary input: nothing may panic, and no input may verify without the key.
#![no_main]

#[path = "../checks/jwt.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
