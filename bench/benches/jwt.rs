//! Token verification per algorithm: the parse + signature + claims work the gateway
//! does per request (`jwt::parse`, `verify_signature`, `check_times`), and the whole
//! jwt-auth plugin (token lookup in the request, consumer by key, verification).
//!
//! `cargo bench -p keygate-bench --bench jwt`

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: a failed setup should stop it loudly"
)]
#![expect(
    clippy::panic,
    reason = "a benchmark: a missing key file should stop it loudly"
)]

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use keygate_gateway::Config;
use keygate_gateway::jwt::{self, Algorithm, SignKey, TimeRules, VerifyKey};
use keygate_gateway::runtime::{Predecessor, Runtime};
use serde_json::{Map, Value};

fn pem(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../gateway/testdata/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn token(alg: Algorithm, key: &SignKey, consumer_key: &str) -> String {
    let mut claims = Map::new();
    claims.insert("key".into(), Value::String(consumer_key.into()));
    claims.insert("exp".into(), Value::from(now() + 86_400));
    jwt::sign(alg, key, &claims).unwrap()
}

fn keys() -> Vec<(Algorithm, VerifyKey, SignKey)> {
    let hmac = |alg| {
        (
            alg,
            VerifyKey::hmac(alg, b"bench-secret-0123456789", false).unwrap(),
            SignKey::hmac(alg, b"bench-secret-0123456789", false).unwrap(),
        )
    };
    let pair = |alg, public: &str, private: &str| {
        (
            alg,
            VerifyKey::public_pem(alg, &pem(public)).unwrap(),
            SignKey::private_pem(alg, &pem(private)).unwrap(),
        )
    };
    vec![
        hmac(Algorithm::HS256),
        pair(Algorithm::RS256, "rsa_public", "rsa_private"),
        pair(Algorithm::ES256, "ec256_public", "ec256_private"),
        pair(Algorithm::EdDSA, "ed25519_public", "ed25519_private"),
    ]
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for (alg, verify_key, sign_key) in keys() {
        let token = token(alg, &sign_key, "k");
        group.bench_function(alg.as_str(), |b| {
            b.iter(|| {
                let parsed = jwt::parse(black_box(&token)).unwrap();
                assert!(parsed.verify_signature(alg, &verify_key));
                jwt::check_times(&parsed.claims, now(), TimeRules::default()).unwrap();
            })
        });
    }
    group.finish();
}

/// The jwt-auth plugin as the request path runs it, per algorithm.
fn plugin(c: &mut Criterion) {
    let rsa = String::from_utf8(pem("rsa_public")).unwrap();
    let ec = String::from_utf8(pem("ec256_public")).unwrap();
    let indent = |s: &str| s.replace('\n', "\n          ");
    let yaml = format!(
        r#"
consumers:
  - username: hs
    plugins: {{ jwt-auth: {{ key: hs-key, secret: bench-secret-0123456789 }} }}
  - username: rs
    plugins:
      jwt-auth:
        key: rs-key
        algorithm: RS256
        public_key: |
          {}
  - username: es
    plugins:
      jwt-auth:
        key: es-key
        algorithm: ES256
        public_key: |
          {}
routes:
  - uri: /secure/*
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ nodes: {{ "127.0.0.1:9": 1 }} }}
"#,
        indent(&rsa),
        indent(&ec)
    );
    let config = Config::parse(&yaml).unwrap();
    let runtime = Runtime::build(&config, &|_| None, &Predecessor::default()).unwrap();
    let auth = runtime.consumers.resolve(None);
    let route = runtime
        .router
        .find(&http::Method::GET, None, "/secure/ping")
        .unwrap()
        .clone();
    let plugin = route.auth.as_ref().unwrap();
    let mut group = c.benchmark_group("jwt-auth");
    for (alg, consumer_key, sign_key) in [
        (
            Algorithm::HS256,
            "hs-key",
            SignKey::hmac(Algorithm::HS256, b"bench-secret-0123456789", false).unwrap(),
        ),
        (
            Algorithm::RS256,
            "rs-key",
            SignKey::private_pem(Algorithm::RS256, &pem("rsa_private")).unwrap(),
        ),
        (
            Algorithm::ES256,
            "es-key",
            SignKey::private_pem(Algorithm::ES256, &pem("ec256_private")).unwrap(),
        ),
    ] {
        let bearer = format!("Bearer {}", token(alg, &sign_key, consumer_key));
        let request = http::Request::get("http://gw/secure/ping")
            .header("authorization", bearer.as_str())
            .header("user-agent", "bench")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        group.bench_function(alg.as_str(), |b| {
            b.iter_batched_ref(
                || parts.clone(),
                |parts| {
                    let user = plugin.authenticate(&auth, parts, now()).unwrap();
                    black_box(user);
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, verify, plugin);
criterion_main!(benches);
