//! CI's short smoke of every fuzz target: the same checks cargo-fuzz runs
//! (`fuzz/checks/*.rs`, driven by `scripts/fuzz.sh` for real fuzzing), fed here with a
//! few valid seeds and thousands of deterministic random mutations of them. No
//! coverage guidance and no sanitizer: it catches panics and broken invariants on
//! inputs near valid ones, on the stable toolchain, in seconds.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "../../fuzz/checks/admin_json.rs"]
mod admin_json;
#[expect(
    clippy::expect_used,
    reason = "the check asserts by panicking, as a fuzz target does"
)]
#[path = "../../fuzz/checks/agent_request.rs"]
mod agent_request;
#[path = "../../fuzz/checks/client_request.rs"]
mod client_request;
#[path = "../../fuzz/checks/config.rs"]
mod config;
#[path = "../../fuzz/checks/jwt.rs"]
mod jwt;
#[expect(
    clippy::expect_used,
    reason = "the check asserts by panicking, as a fuzz target does"
)]
#[path = "../../fuzz/checks/router.rs"]
mod router;
#[path = "../../fuzz/checks/upstream_response.rs"]
mod upstream_response;

/// Mutated inputs per target.
const ROUNDS: usize = 20_000;

/// Runs `check` on each seed and on `ROUNDS` mutations of them (byte flips, inserts,
/// deletions, splices of two seeds), from a fixed RNG seed so a failure replays.
fn smoke(name: &str, seeds: &[&[u8]], check: fn(&[u8])) {
    let mut rng = StdRng::seed_from_u64(0x006b_6579_6761_7465);
    for seed in seeds {
        check(seed);
    }
    for round in 0..ROUNDS {
        let mut input = seeds[rng.random_range(0..seeds.len())].to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let len = input.len();
            match rng.random_range(0..4) {
                0 if len > 0 => {
                    let i = rng.random_range(0..len);
                    input[i] ^= 1 << rng.random_range(0..8);
                }
                1 => {
                    let i = rng.random_range(0..=len);
                    input.insert(i, rng.random());
                }
                2 if len > 0 => {
                    let i = rng.random_range(0..len);
                    let end = (i + rng.random_range(1..=8)).min(len);
                    input.drain(i..end);
                }
                _ => {
                    let other = seeds[rng.random_range(0..seeds.len())];
                    let cut = rng.random_range(0..=input.len());
                    let from = rng.random_range(0..=other.len());
                    input.truncate(cut);
                    input.extend_from_slice(&other[from..]);
                }
            }
        }
        let result = std::panic::catch_unwind(|| check(&input));
        assert!(
            result.is_ok(),
            "{name}: round {round} panicked on input {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

#[test]
fn jwt_smoke() {
    smoke(
        "jwt",
        &[
            b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJ0ZXN0LWtleSIsImV4cCI6MTY0MjU3ODU5M30.IYudBr7FTgRme70u4rEBoYNtGmGByzgfGlt8hctI__Q",
            b"eyJhbGciOiJSUzI1NiJ9.eyJrZXkiOiJrIiwibmJmIjowfQ.c2ln",
            b"eyJhbGciOiJub25lIn0.eyJrZXkiOiJrIn0.",
            b"a.b.c",
        ],
        jwt::check,
    );
}

#[test]
fn upstream_response_smoke() {
    smoke(
        "upstream_response",
        &[
            b"\x00HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            b"\x00HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nt: 1\r\n\r\n",
            b"\x00HTTP/1.0 200 OK\r\nconnection: keep-alive, x-b\r\nx-b: 2\r\n\r\nuntil close",
            b"\x01HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            b"\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"\x00HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ],
        upstream_response::check,
    );
}

#[test]
fn client_request_smoke() {
    smoke(
        "client_request",
        &[
            b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcDELETE /c HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 9\r\n\r\npart",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET http://x/a HTTP/1.0\r\nUpgrade: h2c\r\n\r\n",
        ],
        client_request::check,
    );
}

#[test]
fn router_smoke() {
    smoke(
        "router",
        &[
            b"/a|example.com|GET|1\n/b*|||\n/c/*|*.example.com|POST|2\nGET|example.com|/a",
            b"/secure/ping|||\n/*|||0\nGET||/secure/ping",
            b"/x*|a.example.com|get|5\nPOST|a.example.com|/xyz",
        ],
        router::check,
    );
}

#[test]
fn config_smoke() {
    smoke(
        "config",
        &[
            b"listen: 127.0.0.1:9080\nconsumers:\n  - username: jack\n    plugins:\n      jwt-auth: { key: test-key, secret: s3cr3t-0123456789-0123456789-01 }\nroutes:\n  - id: \"1\"\n    uri: /secure/ping\n    plugins: { jwt-auth: {} }\n    upstream: { type: roundrobin, nodes: { \"127.0.0.1:9999\": 1 } }\n",
            b"listen: 127.0.0.1:0\nroutes:\n  - { id: a, uris: [/a, /b*], methods: [GET], hosts: [\"*.example.com\"], priority: 3, upstream: { nodes: [{ host: 127.0.0.1, port: 1, weight: 2 }] } }\n",
        ],
        config::check,
    );
}

#[test]
fn admin_json_smoke() {
    smoke(
        "admin_json",
        &[
            br#"{"uri":"/secure/ping","plugins":{"jwt-auth":{}},"upstream":{"nodes":{"127.0.0.1:9999":1},"type":"roundrobin"}}"#,
            br#"{"username":"jack","plugins":{"jwt-auth":{"key":"test-key","vault":{}}}}"#,
            br#"{"nodes":{"127.0.0.1:1":1},"type":"chash","hash_on":"header","key":"x"}"#,
            br#""plugins/jwt-auth/key""#,
        ],
        admin_json::check,
    );
}

#[test]
fn agent_request_smoke() {
    let get = prost::Message::encode_to_vec(&keygate_proto::agent::v1::GetRequest {
        names: vec![
            "consumer/jack/jwt-auth".to_owned(),
            "@pki/gateway".to_owned(),
        ],
    });
    smoke(
        "agent_request",
        &[
            &get,
            b"consumer/jack/jwt-auth\nconsumer/jack/../jill\nconsumer/jack//x",
            b"consumer/jack/a.b@c+d=e-f_g\n./x\n/abs",
        ],
        agent_request::check,
    );
}
