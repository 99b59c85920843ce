//! The declarative configuration: YAML parsing and every semantic check a reload runs
//! (`check-config`). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = keygate_gateway::Config::parse(text) {
        let _ = keygate_gateway::check(&config);
    }
});
