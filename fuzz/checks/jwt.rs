//! Token parsing, signature verification (HMAC and RSA) and time-claim checks on
//! arbitrary input: nothing may panic, and no input may verify without the key.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/jwt.rs` and the CI smoke run
//! `tests/tests/fuzz_smoke.rs`.

use std::sync::LazyLock;

use keygate_gateway::jwt::{self, Algorithm, TimeRules, VerifyKey};

static HMAC: LazyLock<Option<VerifyKey>> = LazyLock::new(|| {
    VerifyKey::hmac(
        Algorithm::HS256,
        b"fuzz-secret-0123456789abcdef-0123",
        false,
    )
    .ok()
});
static RSA: LazyLock<Option<VerifyKey>> = LazyLock::new(|| {
    VerifyKey::public_pem(
        Algorithm::RS256,
        include_bytes!("../../gateway/testdata/rsa_public.pem"),
    )
    .ok()
});

/// One input: must not panic (and must keep the invariants asserted below).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = jwt::parse(text) else {
        return;
    };
    for (alg, key) in [(Algorithm::HS256, &*HMAC), (Algorithm::RS256, &*RSA)] {
        if let Some(key) = key {
            // A random input that verifies would mean a forgery.
            assert!(
                !token.verify_signature(alg, key),
                "an arbitrary token verified"
            );
        }
    }
    for now in [0, 1_700_000_000, u64::MAX] {
        let _ = jwt::check_times(
            &token.claims,
            now,
            TimeRules {
                grace: 10,
                require_exp: true,
                require_nbf: false,
                maximum_expiration: 3600,
            },
        );
    }
}
