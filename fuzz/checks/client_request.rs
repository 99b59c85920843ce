//! Client requests: bytes a client sent on one connection, as the gateway's own
//! HTTP/1.1 loop takes them (`keygate_gateway::http1::decode_requests`), under the
//! default limits. Nothing may panic, and what is taken must be consistent: the bytes
//! of the served requests and of what goes on to hyper add up to the input (nothing
//! lost, nothing read twice); a served request is HTTP/1.1 with a path, not HEAD or
//! CONNECT, without `transfer-encoding`, `upgrade`, `expect` or `te`, and carries
//! exactly the body its `content-length` says (none without one).
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/client_request.rs` and the CI
//! smoke run `tests/tests/fuzz_smoke.rs`.

use keygate_gateway::body::RequestBody;
use keygate_gateway::http1::{Decoded, decode_requests};
use keygate_gateway::limits::Limits;

/// One input: must not panic (and must keep the invariants asserted below).
pub fn check(data: &[u8]) {
    let mut taken = 0;
    for decoded in decode_requests(data, &Limits::default()) {
        match decoded {
            Decoded::Served(request, len) => {
                taken += len;
                assert!(taken <= data.len(), "more taken than sent");
                assert_eq!(request.version(), http::Version::HTTP_11);
                assert!(request.uri().path().starts_with('/'), "not a path");
                assert!(request.method() != http::Method::HEAD);
                assert!(request.method() != http::Method::CONNECT);
                for name in ["transfer-encoding", "upgrade", "expect", "te"] {
                    assert!(!request.headers().contains_key(name), "{name} served");
                }
                let declared = request
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().parse::<usize>().unwrap_or(usize::MAX));
                let body = match request.body() {
                    RequestBody::Empty => Some(0),
                    RequestBody::Full(Some(bytes)) => Some(bytes.len()),
                    _ => None,
                };
                assert_eq!(
                    body,
                    Some(declared.unwrap_or(0)),
                    "a body not of its length"
                );
            }
            Decoded::HandedOver(rest) | Decoded::Incomplete(rest) => {
                assert_eq!(taken + rest.len(), data.len(), "bytes lost or read twice");
                assert_eq!(&data[taken..], &rest[..], "not the rest of the input");
            }
            _ => {}
        }
    }
}
