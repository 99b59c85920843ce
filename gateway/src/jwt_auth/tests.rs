use super::*;
use crate::config::Config;
use crate::consumers::ConsumerSet;
use crate::jwt::{Algorithm, SignKey};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};

const NOW: u64 = 1_700_000_000;

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/testdata/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

struct Fixture {
    consumers: ConsumerSet,
    auth: AuthState,
}

fn fixture() -> Fixture {
    let public = String::from_utf8(pem("rsa_public")).unwrap();
    let yaml = format!(
        "agent: {{socket: /s}}\nconsumers:\n\
         - {{username: bob, plugins: {{jwt-auth: {{key: bob-key, secret: bob-secret, lifetime_grace_period: 10}}}}}}\n\
         - {{username: jim, plugins: {{jwt-auth: {{key: jim-key, algorithm: RS256, public_key: {public:?}}}}}}}\n\
         - {{username: jack, plugins: {{jwt-auth: {{key: jack-key, vault: {{}}}}}}}}\n\
         - {{username: anon}}"
    );
    let config = Config::parse(&yaml).unwrap();
    let consumers = ConsumerSet::build(&config.consumers, &|_| None).unwrap();
    let auth = consumers.resolve(None);
    Fixture { consumers, auth }
}

fn route(f: &Fixture, yaml: &str) -> JwtAuthRoute {
    let conf: JwtAuthRouteConfig = serde_yaml_ng::from_str(yaml).unwrap();
    JwtAuthRoute::build(&conf, &f.consumers, "r").unwrap()
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn hs(secret: &[u8], c: Value) -> String {
    let key = SignKey::hmac(Algorithm::HS256, secret, false).unwrap();
    jwt::sign(Algorithm::HS256, &key, &claims(c)).unwrap()
}

fn bob(c: Value) -> String {
    hs(b"bob-secret", c)
}

fn rs256(c: Value) -> String {
    let key = SignKey::private_pem(Algorithm::RS256, &pem("rsa_private")).unwrap();
    jwt::sign(Algorithm::RS256, &key, &claims(c)).unwrap()
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn run(f: &Fixture, conf: &JwtAuthRoute, mut parts: Parts) -> Result<String, Failure> {
    authenticate(conf, &f.auth, &mut parts, NOW).map(|u| u.to_string())
}

#[test]
fn token_locations() {
    let f = fixture();
    let default = route(&f, "{}");
    let t = bob(json!({"key": "bob-key", "exp": NOW + 60}));
    let custom = route(&f, "{header: x-token, query: token, cookie: session}");
    type Case<'a> = (
        &'a JwtAuthRoute,
        String,
        Vec<(&'a str, String)>,
        Result<String, Failure>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            &default,
            "/".into(),
            vec![("authorization", format!("Bearer {t}"))],
            Ok("bob".into()),
        ),
        (
            &default,
            "/".into(),
            vec![("authorization", format!("bearer {t}"))],
            Ok("bob".into()),
        ),
        (
            &default,
            "/".into(),
            vec![("authorization", t.clone())],
            Ok("bob".into()),
        ),
        (&default, format!("/?a=1&jwt={t}"), vec![], Ok("bob".into())),
        (
            &default,
            "/".into(),
            vec![("cookie", format!("a=1; jwt={t}; b=2"))],
            Ok("bob".into()),
        ),
        (&default, "/".into(), vec![], Err(Failure::Missing)),
        (
            &default,
            "/?jwt=".into(),
            vec![("authorization", "Bearer ".into())],
            Err(Failure::Missing),
        ),
        (
            &default,
            "/".into(),
            vec![("x-token", t.clone())],
            Err(Failure::Missing),
        ),
        (
            &custom,
            "/".into(),
            vec![("x-token", format!("Bearer {t}"))],
            Ok("bob".into()),
        ),
        (&custom, format!("/?token={t}"), vec![], Ok("bob".into())),
        (
            &custom,
            "/".into(),
            vec![("cookie", format!("session={t}"))],
            Ok("bob".into()),
        ),
        (
            &custom,
            "/".into(),
            vec![("authorization", t.clone())],
            Err(Failure::Missing),
        ),
        // The same token twice is fine; two different ones are refused.
        (
            &default,
            format!("/?jwt={t}"),
            vec![("authorization", t.clone())],
            Ok("bob".into()),
        ),
        (
            &default,
            format!("/?jwt={}", bob(json!({"key": "bob-key"}))),
            vec![("authorization", t.clone())],
            Err(Failure::Multiple),
        ),
    ];
    for (conf, uri, headers, expected) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            run(&f, conf, request(&uri, &headers)),
            expected,
            "{uri} {headers:?}"
        );
    }
}

#[test]
fn verification_outcomes() {
    let f = fixture();
    let conf = route(&f, "{}");
    let forged_hs_with_public_key = hs(&pem("rsa_public"), json!({"key": "jim-key"}));
    let none_alg = {
        let t = bob(json!({"key": "bob-key"}));
        let (_, rest) = t.split_once('.').unwrap();
        let (payload, _) = rest.split_once('.').unwrap();
        format!("eyJhbGciOiJub25lIn0.{payload}.c2ln")
    };
    let tampered = {
        let t = bob(json!({"key": "bob-key"}));
        let (head, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"key":"bob-key","admin":true}"#,
        );
        format!("{head}.{payload}.{sig}")
    };
    let cases: Vec<(&str, String, Result<String, Failure>)> = vec![
        (
            "valid hs256",
            bob(json!({"key": "bob-key"})),
            Ok("bob".into()),
        ),
        (
            "valid rs256",
            rs256(json!({"key": "jim-key", "exp": NOW + 5})),
            Ok("jim".into()),
        ),
        ("malformed", "not.a.jwt".into(), Err(Failure::Malformed)),
        ("garbage", "garbage".into(), Err(Failure::Malformed)),
        (
            "no key claim",
            bob(json!({"sub": "x"})),
            Err(Failure::NoKeyClaim),
        ),
        (
            "numeric key claim",
            bob(json!({"key": 5})),
            Err(Failure::NoKeyClaim),
        ),
        (
            "unknown key",
            bob(json!({"key": "eve-key"})),
            Err(Failure::UnknownConsumer),
        ),
        (
            "wrong secret",
            hs(b"other", json!({"key": "bob-key"})),
            Err(Failure::BadSignature),
        ),
        ("tampered payload", tampered, Err(Failure::BadSignature)),
        (
            "rs256 token for an hs256 consumer",
            rs256(json!({"key": "bob-key"})),
            Err(Failure::AlgMismatch),
        ),
        (
            "hs256 keyed with the rsa public key",
            forged_hs_with_public_key,
            Err(Failure::AlgMismatch),
        ),
        ("alg none", none_alg, Err(Failure::AlgMismatch)),
        (
            "expired",
            bob(json!({"key": "bob-key", "exp": NOW - 11})),
            Err(Failure::Claims(ClaimError::Expired)),
        ),
        (
            "expired within grace",
            bob(json!({"key": "bob-key", "exp": NOW - 10 + 1})),
            Ok("bob".into()),
        ),
        (
            "expired at grace boundary",
            bob(json!({"key": "bob-key", "exp": NOW - 10})),
            Err(Failure::Claims(ClaimError::Expired)),
        ),
        (
            "nbf ahead",
            bob(json!({"key": "bob-key", "nbf": NOW + 11})),
            Err(Failure::Claims(ClaimError::NotYetValid)),
        ),
        (
            "nbf within grace",
            bob(json!({"key": "bob-key", "nbf": NOW + 10})),
            Ok("bob".into()),
        ),
        (
            "rs256 expired, no grace",
            rs256(json!({"key": "jim-key", "exp": NOW})),
            Err(Failure::Claims(ClaimError::Expired)),
        ),
        (
            "vault consumer, secret not loaded",
            hs(b"x", json!({"key": "jack-key"})),
            Err(Failure::Unavailable),
        ),
    ];
    for (name, token, expected) in cases {
        let parts = request("/", &[("authorization", &token)]);
        assert_eq!(run(&f, &conf, parts), expected, "{name}");
    }
}

#[test]
fn route_claim_rules() {
    let f = fixture();
    let strict = route(
        &f,
        "{claims_to_verify: [exp, nbf], key_claim_name: iss, maximum_expiration: 3600}",
    );
    let check = |c: Value| run(&f, &strict, request("/", &[("authorization", &bob(c))]));
    assert_eq!(
        check(json!({"iss": "bob-key", "exp": NOW + 60, "nbf": NOW})),
        Ok("bob".into())
    );
    assert_eq!(
        check(json!({"key": "bob-key", "exp": NOW + 60, "nbf": NOW})),
        Err(Failure::NoKeyClaim)
    );
    assert_eq!(
        check(json!({"iss": "bob-key", "exp": NOW + 60})),
        Err(Failure::Claims(ClaimError::Missing))
    );
    assert_eq!(
        check(json!({"iss": "bob-key", "exp": NOW + 7200, "nbf": NOW})),
        Err(Failure::Claims(ClaimError::TooLong))
    );
}

#[test]
fn hide_credentials_removes_the_token_everywhere() {
    let f = fixture();
    let conf = route(&f, "{hide_credentials: true}");
    let t = bob(json!({"key": "bob-key"}));
    let mut parts = request(
        &format!("/p?a=1&jwt={t}&b=2"),
        &[
            ("authorization", &t),
            ("cookie", &format!("x=1; jwt={t}")),
            ("x-keep", "1"),
        ],
    );
    assert_eq!(
        authenticate(&conf, &f.auth, &mut parts, NOW).as_deref(),
        Ok("bob")
    );
    assert_eq!(parts.uri.to_string(), "/p?a=1&b=2");
    assert!(parts.headers.get("authorization").is_none());
    assert_eq!(parts.headers["cookie"], "x=1");
    assert_eq!(parts.headers["x-keep"], "1");

    let mut parts = request(&format!("/p?jwt={t}"), &[("cookie", &format!("jwt={t}"))]);
    assert!(authenticate(&conf, &f.auth, &mut parts, NOW).is_ok());
    assert_eq!(parts.uri.to_string(), "/p");
    assert!(parts.headers.get("cookie").is_none());

    // Without hide_credentials the request is untouched.
    let keep = route(&f, "{}");
    let mut parts = request("/p", &[("authorization", &t)]);
    assert!(authenticate(&keep, &f.auth, &mut parts, NOW).is_ok());
    assert!(parts.headers.get("authorization").is_some());
}

#[test]
fn anonymous_consumer_is_validated() {
    let f = fixture();
    assert_eq!(
        route(&f, "{anonymous_consumer: anon}")
            .anonymous()
            .map(|a| &**a),
        Some("anon")
    );
    let conf: JwtAuthRouteConfig = serde_yaml_ng::from_str("{anonymous_consumer: ghost}").unwrap();
    assert!(JwtAuthRoute::build(&conf, &f.consumers, "r").is_err());
}

#[tokio::test]
async fn responses_match_apisix() {
    let cases = [
        (
            Failure::Missing,
            401,
            r#"{"message":"Missing JWT token in request"}"#,
        ),
        (
            Failure::Malformed,
            401,
            r#"{"message":"JWT token invalid"}"#,
        ),
        (Failure::Multiple, 401, r#"{"message":"JWT token invalid"}"#),
        (
            Failure::UnknownConsumer,
            401,
            r#"{"message":"failed to verify jwt"}"#,
        ),
        (
            Failure::BadSignature,
            401,
            r#"{"message":"failed to verify jwt"}"#,
        ),
        (
            Failure::Claims(ClaimError::Expired),
            401,
            r#"{"message":"failed to verify jwt"}"#,
        ),
        (
            Failure::Unavailable,
            503,
            r#"{"message":"failed to verify jwt"}"#,
        ),
    ];
    for (failure, status, body) in cases {
        let response = failure.response();
        assert_eq!(response.status().as_u16(), status, "{failure:?}");
        let www = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            www.as_deref(),
            (status == 401).then_some(r#"Bearer realm="jwt""#),
            "{failure:?}"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, body.as_bytes(), "{failure:?}");
    }
}

#[test]
fn verified_tokens_are_remembered_but_time_claims_are_checked_every_time() {
    let f = fixture();
    let conf = route(&f, "{}");
    let t = bob(json!({"key": "bob-key", "exp": NOW + 60}));
    let req = || request("/", &[("authorization", t.as_str())]);
    assert_eq!(run(&f, &conf, req()), Ok("bob".into()));
    assert_eq!(conf.verified.lock().unwrap().len(), 1);
    // From the cache.
    assert_eq!(run(&f, &conf, req()), Ok("bob".into()));
    // Still expires (grace 10 s).
    let mut parts = req();
    assert_eq!(
        authenticate(&conf, &f.auth, &mut parts, NOW + 70),
        Err(Failure::Claims(ClaimError::Expired))
    );
    // The same signature on another payload is not taken from the cache.
    let (head_payload, sig) = t.rsplit_once('.').unwrap();
    let (head, _) = head_payload.split_once('.').unwrap();
    let other = bob(json!({"key": "bob-key", "exp": NOW + 600}));
    let other_payload = other.split('.').nth(1).unwrap();
    let forged = format!("{head}.{other_payload}.{sig}");
    assert_eq!(
        run(
            &f,
            &conf,
            request("/", &[("authorization", forged.as_str())])
        ),
        Err(Failure::BadSignature)
    );
    // An RS256 token is remembered as well.
    let r = rs256(json!({"key": "jim-key"}));
    let rreq = || request("/", &[("authorization", r.as_str())]);
    assert_eq!(run(&f, &conf, rreq()), Ok("jim".into()));
    assert_eq!(run(&f, &conf, rreq()), Ok("jim".into()));
}

#[test]
fn a_new_key_verifies_remembered_tokens_again() {
    let f = fixture();
    let conf = route(&f, "{}");
    let t = bob(json!({"key": "bob-key"}));
    let req = || request("/", &[("authorization", t.as_str())]);
    assert_eq!(run(&f, &conf, req()), Ok("bob".into()));
    // bob's secret rotates: the remembered token no longer verifies.
    let yaml =
        "consumers:\n- {username: bob, plugins: {jwt-auth: {key: bob-key, secret: new-secret}}}";
    let config = Config::parse(yaml).unwrap();
    let rotated = ConsumerSet::build(&config.consumers, &|_| None)
        .unwrap()
        .resolve(None);
    let mut parts = req();
    assert_eq!(
        authenticate(&conf, &rotated, &mut parts, NOW),
        Err(Failure::BadSignature)
    );
    // The same key material in a rebuilt state (a new snapshot) verifies again, and
    // the old state's consumer is not kept alive by the cache.
    let rebuilt = f.consumers.resolve(None);
    drop(f.auth);
    let mut parts = req();
    assert_eq!(
        authenticate(&conf, &rebuilt, &mut parts, NOW).map(|u| u.to_string()),
        Ok("bob".into())
    );
    assert!(
        conf.verified
            .lock()
            .unwrap()
            .values()
            .all(|v| v.by.upgrade().is_some())
    );
}

#[test]
fn each_worker_remembers_its_own_verified_tokens() {
    crate::pool::set_workers(2);
    let tokens = VerifiedTokens::default();
    crate::pool::set_workers(1);
    assert_eq!(tokens.entries.len(), 2);
    tokens.insert(Verified {
        token: Box::<str>::from("a.b.c").into(),
        alg: "HS256".into(),
        key: "k".into(),
        times: jwt::TimeClaims::of(&Map::new()),
        by: Weak::new(),
    });
    assert!(tokens.get(b"a.b.c").is_some(), "this thread is worker 0");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            crate::pool::enter_worker(1);
            assert!(tokens.get(b"a.b.c").is_none(), "worker 1 has its own map");
        });
    });
}

#[test]
fn tokens_are_found_by_their_bytes_and_checked_as_text_before_decoding() {
    let f = fixture();
    let conf = route(&f, "{}");
    let t = bob(json!({"key": "bob-key", "exp": NOW + 60}));
    let with = |value: &[u8]| {
        let mut parts = request("/", &[]);
        parts.headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).unwrap(),
        );
        parts
    };
    // The scheme in any case, then spaces or tabs; remembered once verified.
    for value in [format!("Bearer {t}"), format!("BEARER \t {t} "), t.clone()] {
        assert_eq!(run(&f, &conf, with(value.as_bytes())), Ok("bob".into()));
    }
    assert!(conf.verified.get(t.as_bytes()).is_some());
    // No space after the scheme: the whole value is the token, and it is no JWT.
    assert_eq!(
        run(&f, &conf, with(format!("Bearer{t}").as_bytes())),
        Err(Failure::Malformed)
    );
    // A byte that is not UTF-8 (a header may carry obs-text) after the remembered
    // token: not the remembered token, and refused before it is decoded.
    let mut bad = format!("Bearer {t}").into_bytes();
    bad.push(0xff);
    assert_eq!(run(&f, &conf, with(&bad)), Err(Failure::Malformed));
}
