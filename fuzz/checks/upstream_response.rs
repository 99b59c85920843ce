//! Upstream responses: bytes an upstream sent before closing its connection, parsed and
//! decoded by the gateway's HTTP/1.1 client (`keygate_gateway::pool::decode_response`).
//! The first byte says whether the request was a HEAD. Nothing may panic, and what is
//! accepted must be consistent: a body never longer than the input, exactly its
//! content-length when framed by one, no `content-length` or hop-by-hop header handed
//! on, every line for the client also a field of the header map hyper would get, and a
//! connection reusable only when its body had an end.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/upstream_response.rs` and the CI
//! smoke run `tests/tests/fuzz_smoke.rs`.

use keygate_gateway::pool::{Framing, decode_response};

/// One input: must not panic (and must keep the invariants asserted below).
pub fn check(data: &[u8]) {
    let Some((&flag, bytes)) = data.split_first() else {
        return;
    };
    let head_request = flag & 1 == 1;
    let Ok((reply, framing, reusable)) = decode_response(bytes, head_request) else {
        return;
    };
    // Every line the client would get is a field hyper would get too: none is lost
    // when the lines become a header map.
    let lines = reply.lines().map(|lines| lines.iter().count());
    let response = reply.into_response();
    if let Some(lines) = lines {
        assert_eq!(
            response.headers().len(),
            lines,
            "a field lost on the way to the map"
        );
    }
    let body = response.body();
    assert!(body.len() <= bytes.len(), "a body longer than the input");
    match framing {
        Framing::Empty => assert!(body.is_empty(), "a body where none may be"),
        Framing::Length(n) => assert_eq!(body.len() as u64, n, "a body not of its length"),
        Framing::Chunked => {
            assert!(
                !response.headers().contains_key("content-length"),
                "content-length next to chunked handed on"
            );
        }
        Framing::UntilClose => assert!(!reusable, "a body without an end, reused"),
    }
    for name in [
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
    ] {
        assert!(!response.headers().contains_key(name), "{name} handed on");
    }
    if head_request {
        assert!(body.is_empty(), "a body in the answer to HEAD");
    }
}
