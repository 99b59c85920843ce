//! The JWT attack corpus, end to end: a real OpenBao holding jack's and jill's HS256
//! secrets, the real agent serving them over its socket, the real gateway, and a
//! recording upstream. Every row is one hostile request with a name; each must get its
//! expected status (401, or 431/414 for the size rows), never a 5xx or a dropped
//! connection, and must not reach the upstream.
//!
//! Consumers: jack (HS256, secret from OpenBao), jill (HS256 from OpenBao, 10 s grace),
//! jim (RS256, inline public key), eve (ES256, inline public key), doomed (HS256,
//! inline short secret, deleted at the end). Route 1 has jwt-auth with the defaults;
//! route 2 requires `exp` and `nbf` and caps the lifetime at an hour.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "the token builders are test fixtures: a fixture that cannot be built fails the test"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keygate_tests::gateway::GatewayProcess;
use keygate_tests::hostile::{Recorder, get_request, raw_request};
use keygate_tests::seed::{AGENT_POLICY, KV1_PREFIX};
use keygate_tests::{
    AgentConfig, AgentProcess, OpenBao, assert_no_secret_in, eventually, seed_apisix,
};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};

const DOOMED_SECRET: &str = "doomed-short-1234";
const TIMEOUT: Duration = Duration::from_secs(10);

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn testdata(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/testdata")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The DER inside a PEM text.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// How a token's signature is made.
enum Sig<'a> {
    /// HMAC with this key.
    Hmac(ring::hmac::Algorithm, &'a [u8]),
    /// RSA with this padding.
    Rsa(&'a RsaKeyPair, &'static dyn signature::RsaEncoding),
    /// ECDSA (fixed or ASN.1 form, as the key pair was made).
    Ec(&'a EcdsaKeyPair),
}

/// `b64(header).b64(payload).b64(signature)`, the JSON texts used exactly as given.
fn jws(header: &str, payload: &str, sig: &Sig<'_>) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let rng = SystemRandom::new();
    let signature = match sig {
        Sig::Hmac(alg, key) => ring::hmac::sign(&ring::hmac::Key::new(*alg, key), input.as_bytes())
            .as_ref()
            .to_vec(),
        Sig::Rsa(key, padding) => {
            let mut out = vec![0; key.public().modulus_len()];
            key.sign(*padding, &rng, input.as_bytes(), &mut out)
                .unwrap();
            out
        }
        Sig::Ec(key) => key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
    };
    format!("{input}.{}", b64(signature))
}

/// Replaces the signature part of `token`.
fn with_signature(token: &str, signature: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(signature))
}

/// The signature bytes of `token`.
fn signature_of(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(token.rsplit_once('.').unwrap().1)
        .unwrap()
}

struct Keys {
    jack: Vec<u8>,
    jill: Vec<u8>,
    rsa_public_pem: String,
    rsa: RsaKeyPair,
    attacker_rsa: RsaKeyPair,
    ec_public_pem: String,
    ec: EcdsaKeyPair,
    ec_der_form: EcdsaKeyPair,
    attacker_ec: EcdsaKeyPair,
    attacker_cert: Vec<u8>,
}

impl Keys {
    fn new(jack: &str, jill: &str) -> Self {
        let rng = SystemRandom::new();
        let ec_private = pem_der(&testdata("ec256_private.pem"));
        let attacker = rcgen::KeyPair::generate().unwrap();
        let attacker_cert = rcgen::CertificateParams::new(vec!["attacker.test".to_owned()])
            .unwrap()
            .self_signed(&attacker)
            .unwrap()
            .der()
            .to_vec();
        Self {
            jack: jack.as_bytes().to_vec(),
            jill: jill.as_bytes().to_vec(),
            rsa_public_pem: testdata("rsa_public.pem"),
            rsa: RsaKeyPair::from_pkcs8(&pem_der(&testdata("rsa_private.pem"))).unwrap(),
            attacker_rsa: RsaKeyPair::from_pkcs8(&pem_der(&testdata("rsa2_private.pem"))).unwrap(),
            ec_public_pem: testdata("ec256_public.pem"),
            ec: EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &ec_private,
                &rng,
            )
            .unwrap(),
            ec_der_form: EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &ec_private,
                &rng,
            )
            .unwrap(),
            attacker_ec: EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &attacker.serialize_der(),
                &rng,
            )
            .unwrap(),
            attacker_cert,
        }
    }

    fn jack(&self) -> Sig<'_> {
        Sig::Hmac(ring::hmac::HMAC_SHA256, &self.jack)
    }

    fn jill(&self) -> Sig<'_> {
        Sig::Hmac(ring::hmac::HMAC_SHA256, &self.jill)
    }
}

const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
const RS256: &str = r#"{"alg":"RS256","typ":"JWT"}"#;
const ES256: &str = r#"{"alg":"ES256","typ":"JWT"}"#;

/// Claims for `key`, valid for ten minutes.
fn claims(key: &str) -> String {
    format!(r#"{{"key":"{key}","exp":{}}}"#, now() + 600)
}

/// One hostile request.
struct Row {
    name: &'static str,
    path: String,
    headers: Vec<String>,
    expect: u16,
}

fn row(name: &'static str, token: &str) -> Row {
    Row {
        name,
        path: "/secure/ping".to_owned(),
        headers: vec![format!("Authorization: {token}")],
        expect: 401,
    }
}

fn row_on(name: &'static str, path: &str, headers: Vec<String>, expect: u16) -> Row {
    Row {
        name,
        path: path.to_owned(),
        headers,
        expect,
    }
}

fn corpus(k: &Keys, canary: &str) -> Vec<Row> {
    let t = now();
    let jack_claims = claims("test-key");
    let valid_jack = jws(HS256, &jack_claims, &k.jack());
    let valid_jill = jws(HS256, &claims("jill-key"), &k.jill());
    let valid_jim = jws(
        RS256,
        &claims("rsa-key"),
        &Sig::Rsa(&k.rsa, &signature::RSA_PKCS1_SHA256),
    );
    let valid_eve = jws(ES256, &claims("ec-key"), &Sig::Ec(&k.ec));
    let (input, _) = valid_jack.rsplit_once('.').unwrap();
    let mut rows = Vec::new();

    // ---- alg none, in every spelling, with and without a signature. ----
    for (name, alg) in [
        ("alg_none_unsigned", "none"),
        ("alg_None_unsigned", "None"),
        ("alg_NONE_unsigned", "NONE"),
        ("alg_noNE_unsigned", "noNE"),
    ] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        rows.push(row(
            name,
            &format!("{}.{}.", b64(&header), b64(&jack_claims)),
        ));
    }
    for (name, alg) in [
        ("alg_none_signed_with_jacks_secret", "none"),
        ("alg_None_signed_with_jacks_secret", "None"),
        ("alg_NONE_signed_with_jacks_secret", "NONE"),
        ("alg_noNE_signed_with_jacks_secret", "noNE"),
    ] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        rows.push(row(name, &jws(&header, &jack_claims, &k.jack())));
    }

    // ---- Algorithm confusion. ----
    let pem = k.rsa_public_pem.as_bytes();
    rows.push(row(
        "hs256_keyed_with_rs256_public_pem",
        &jws(
            HS256,
            &claims("rsa-key"),
            &Sig::Hmac(ring::hmac::HMAC_SHA256, pem),
        ),
    ));
    rows.push(row(
        "hs256_keyed_with_rs256_public_pem_without_trailing_newline",
        &jws(
            HS256,
            &claims("rsa-key"),
            &Sig::Hmac(
                ring::hmac::HMAC_SHA256,
                k.rsa_public_pem.trim_end().as_bytes(),
            ),
        ),
    ));
    rows.push(row(
        "hs256_keyed_with_rs256_public_key_der",
        &jws(
            HS256,
            &claims("rsa-key"),
            &Sig::Hmac(ring::hmac::HMAC_SHA256, &pem_der(&k.rsa_public_pem)),
        ),
    ));
    rows.push(row(
        "es256_against_rs256_consumer",
        &jws(ES256, &claims("rsa-key"), &Sig::Ec(&k.attacker_ec)),
    ));
    rows.push(row(
        "ps256_with_the_consumers_own_rsa_key_against_rs256",
        &jws(
            r#"{"alg":"PS256"}"#,
            &claims("rsa-key"),
            &Sig::Rsa(&k.rsa, &signature::RSA_PSS_SHA256),
        ),
    ));
    rows.push(row(
        "rs512_with_the_consumers_own_rsa_key_against_rs256",
        &jws(
            r#"{"alg":"RS512"}"#,
            &claims("rsa-key"),
            &Sig::Rsa(&k.rsa, &signature::RSA_PKCS1_SHA512),
        ),
    ));
    rows.push(row(
        "hs512_with_jacks_secret_against_hs256_consumer",
        &jws(
            r#"{"alg":"HS512"}"#,
            &jack_claims,
            &Sig::Hmac(ring::hmac::HMAC_SHA512, &k.jack),
        ),
    ));
    rows.push(row(
        "hs384_with_jacks_secret_against_hs256_consumer",
        &jws(
            r#"{"alg":"HS384"}"#,
            &jack_claims,
            &Sig::Hmac(ring::hmac::HMAC_SHA384, &k.jack),
        ),
    ));
    rows.push(row(
        "rs256_by_an_attacker_key_against_hs256_consumer",
        &jws(
            RS256,
            &jack_claims,
            &Sig::Rsa(&k.attacker_rsa, &signature::RSA_PKCS1_SHA256),
        ),
    ));
    rows.push(row(
        "alg_lowercase_hs256",
        &jws(r#"{"alg":"hs256"}"#, &jack_claims, &k.jack()),
    ));
    rows.push(row(
        "alg_not_a_string",
        &jws(r#"{"alg":["HS256"]}"#, &jack_claims, &k.jack()),
    ));

    // ---- Key claim and kid injection (signed with jack's real secret: only the
    // consumer named by `key` counts, and no such consumer exists). ----
    for (name, key) in [
        ("key_claim_with_quotes", r#"test-key\"}"#.to_owned()),
        (
            "key_claim_path_traversal",
            "../consumer/jack/jwt-auth".to_owned(),
        ),
        ("key_claim_with_nul", r"test-key\u0000".to_owned()),
        ("key_claim_10_kib", "k".repeat(10 * 1024)),
    ] {
        rows.push(row(name, &jws(HS256, &claims(&key), &k.jack())));
    }
    rows.push(row(
        "key_claim_not_a_string",
        &jws(
            HS256,
            &format!(r#"{{"key":["test-key"],"exp":{}}}"#, t + 600),
            &k.jack(),
        ),
    ));
    rows.push(row(
        "kid_injection_with_an_empty_hmac_key",
        &jws(
            r#"{"alg":"HS256","kid":"../../../dev/null\u0000' OR '1'='1"}"#,
            &jack_claims,
            &Sig::Hmac(ring::hmac::HMAC_SHA256, b""),
        ),
    ));

    // ---- Keys offered by the token itself: never fetched, never used. ----
    rows.push(row(
        "jku_pointing_at_an_attacker_jwks",
        &jws(
            &format!(r#"{{"alg":"RS256","kid":"evil","jku":"http://{canary}/jwks.json"}}"#),
            &claims("rsa-key"),
            &Sig::Rsa(&k.attacker_rsa, &signature::RSA_PKCS1_SHA256),
        ),
    ));
    rows.push(row(
        "x5u_pointing_at_an_attacker_certificate",
        &jws(
            &format!(r#"{{"alg":"ES256","x5u":"http://{canary}/cert.pem"}}"#),
            &claims("ec-key"),
            &Sig::Ec(&k.attacker_ec),
        ),
    ));
    rows.push(row(
        "x5c_with_an_attacker_certificate",
        &jws(
            &format!(
                r#"{{"alg":"ES256","x5c":["{}"]}}"#,
                STANDARD.encode(&k.attacker_cert)
            ),
            &claims("ec-key"),
            &Sig::Ec(&k.attacker_ec),
        ),
    ));
    let point = k.attacker_ec.public_key().as_ref();
    rows.push(row(
        "jwk_embedding_the_attackers_ec_key",
        &jws(
            &format!(
                r#"{{"alg":"ES256","jwk":{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}}}"#,
                b64(point.get(1..33).unwrap()),
                b64(point.get(33..65).unwrap())
            ),
            &claims("ec-key"),
            &Sig::Ec(&k.attacker_ec),
        ),
    ));
    rows.push(row(
        "jwk_embedding_an_hmac_key",
        &jws(
            &format!(
                r#"{{"alg":"HS256","jwk":{{"kty":"oct","k":"{}"}}}}"#,
                b64("attacker")
            ),
            &jack_claims,
            &Sig::Hmac(ring::hmac::HMAC_SHA256, b"attacker"),
        ),
    ));

    // ---- Time claims, signed with the real secrets. jack: no grace; jill: 10 s. ----
    let jack_with = |claims: String| jws(HS256, &claims, &k.jack());
    let jill_with = |claims: String| jws(HS256, &claims, &k.jill());
    rows.push(row(
        "exp_equal_to_now",
        &jack_with(format!(r#"{{"key":"test-key","exp":{t}}}"#)),
    ));
    rows.push(row(
        "exp_one_second_ago",
        &jack_with(format!(r#"{{"key":"test-key","exp":{}}}"#, t - 1)),
    ));
    rows.push(row(
        "exp_exactly_at_the_grace_boundary",
        &jill_with(format!(r#"{{"key":"jill-key","exp":{}}}"#, t - 10)),
    ));
    rows.push(row(
        "exp_one_second_past_the_grace",
        &jill_with(format!(r#"{{"key":"jill-key","exp":{}}}"#, t - 11)),
    ));
    rows.push(row(
        "nbf_in_the_future",
        &jack_with(format!(r#"{{"key":"test-key","nbf":{}}}"#, t + 30)),
    ));
    rows.push(row(
        "nbf_beyond_the_grace",
        &jill_with(format!(r#"{{"key":"jill-key","nbf":{}}}"#, t + 15)),
    ));
    rows.push(row(
        "exp_as_a_string",
        &jack_with(format!(r#"{{"key":"test-key","exp":"{}"}}"#, t + 600)),
    ));
    rows.push(row(
        "nbf_as_a_string",
        &jack_with(format!(r#"{{"key":"test-key","nbf":"{}"}}"#, t - 600)),
    ));
    rows.push(row(
        "exp_as_a_float_half_a_second_ago",
        &jack_with(format!(r#"{{"key":"test-key","exp":{}.5}}"#, t - 1)),
    ));
    rows.push(row(
        "exp_negative",
        &jack_with(r#"{"key":"test-key","exp":-1}"#.to_owned()),
    ));
    rows.push(row(
        "exp_null",
        &jack_with(r#"{"key":"test-key","exp":null}"#.to_owned()),
    ));
    rows.push(row(
        "exp_true",
        &jack_with(r#"{"key":"test-key","exp":true}"#.to_owned()),
    ));
    rows.push(row(
        "exp_beyond_f64",
        &jack_with(r#"{"key":"test-key","exp":1e400}"#.to_owned()),
    ));
    rows.push(row(
        "nbf_huge",
        &jack_with(r#"{"key":"test-key","nbf":1e20}"#.to_owned()),
    ));
    rows.push(row_on(
        "exp_huge_on_a_route_capping_the_lifetime",
        "/capped/ping",
        vec![format!(
            "Authorization: {}",
            jack_with(format!(
                r#"{{"key":"test-key","exp":1e20,"nbf":{}}}"#,
                t - 5
            ))
        )],
        401,
    ));
    rows.push(row_on(
        "missing_exp_where_required",
        "/capped/ping",
        vec![format!(
            "Authorization: {}",
            jack_with(format!(r#"{{"key":"test-key","nbf":{}}}"#, t - 5))
        )],
        401,
    ));
    rows.push(row_on(
        "missing_nbf_where_required",
        "/capped/ping",
        vec![format!(
            "Authorization: {}",
            jack_with(format!(r#"{{"key":"test-key","exp":{}}}"#, t + 60))
        )],
        401,
    ));

    // ---- Encoding. ----
    let standard_alphabet = (0..1000)
        .map(|n| jack_with(format!(r#"{{"key":"test-key","exp":{},"n":{n}}}"#, t + 600)))
        .find(|tok| tok.contains(['-', '_']))
        .unwrap()
        .replace('-', "+")
        .replace('_', "/");
    rows.push(row("base64_standard_alphabet", &standard_alphabet));
    rows.push(row(
        "base64_padding_on_the_signature",
        &format!("{valid_jack}="),
    ));
    let (head, rest) = valid_jack.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let pad = "=".repeat((4 - payload.len() % 4) % 4);
    rows.push(row(
        "base64_padding_on_the_payload",
        &format!("{head}.{payload}{pad}==.{sig}"),
    ));
    rows.push(row(
        "whitespace_inside_the_token",
        &format!("{head}. {payload}.{sig}"),
    ));
    rows.push(row(
        "tab_inside_the_token",
        &format!("{head}.{payload}\t.{sig}"),
    ));
    rows.push(row(
        "non_ascii_inside_the_token",
        &format!("{head}.{payload}\u{e9}.{sig}"),
    ));
    rows.push(row_on(
        "newline_inside_the_token_in_the_query",
        &format!("/secure/ping?jwt={head}.{payload}%0A.{sig}"),
        vec![],
        401,
    ));
    rows.push(row_on(
        "non_ascii_inside_the_token_in_the_query",
        &format!("/secure/ping?jwt={head}.{payload}%C3%A9.{sig}"),
        vec![],
        401,
    ));
    rows.push(row_on(
        "invalid_utf8_in_the_query",
        &format!("/secure/ping?jwt={head}.{payload}%FF.{sig}"),
        vec![],
        401,
    ));

    // ---- Structure. ----
    rows.push(row("two_parts", input));
    rows.push(row("four_parts", &format!("{valid_jack}.{sig}")));
    rows.push(row(
        "five_parts_jwe",
        &format!(
            "{}..{}.{}.{}",
            b64(r#"{"alg":"dir","enc":"A256GCM","kid":"test-key"}"#),
            b64([7u8; 12]),
            b64(jack_claims.as_bytes()),
            b64([9u8; 16])
        ),
    ));
    rows.push(row("empty_signature", &format!("{input}.")));
    rows.push(row(
        "header_not_json",
        &format!("{}.{payload}.{sig}", b64("alg=HS256")),
    ));
    rows.push(row(
        "payload_a_json_array",
        &jws(HS256, r#"["test-key"]"#, &k.jack()),
    ));

    // ---- Signatures of the wrong shape. ----
    rows.push(row(
        "es256_signature_in_der_form",
        &jws(ES256, &claims("ec-key"), &Sig::Ec(&k.ec_der_form)),
    ));
    let eve_sig = signature_of(&valid_eve);
    rows.push(row(
        "es256_signature_truncated",
        &with_signature(&valid_eve, eve_sig.get(..63).unwrap()),
    ));
    let jim_sig = signature_of(&valid_jim);
    rows.push(row(
        "rs256_signature_truncated",
        &with_signature(&valid_jim, jim_sig.get(..jim_sig.len() - 1).unwrap()),
    ));
    rows.push(row(
        "rs256_signature_overlong",
        &with_signature(&valid_jim, &[jim_sig.as_slice(), &[0]].concat()),
    ));
    rows.push(row(
        "rs256_signature_with_a_leading_zero",
        &with_signature(&valid_jim, &[&[0], jim_sig.as_slice()].concat()),
    ));
    rows.push(row(
        "rs256_signature_all_zero",
        &with_signature(&valid_jim, &vec![0; jim_sig.len()]),
    ));
    rows.push(row(
        "hs256_mac_truncated_to_16_bytes",
        &with_signature(&valid_jack, signature_of(&valid_jack).get(..16).unwrap()),
    ));

    // ---- Duplicate members and critical extensions (all signed with the real key). ----
    rows.push(row(
        "duplicate_alg_in_the_header",
        &jws(r#"{"alg":"HS256","alg":"HS256"}"#, &jack_claims, &k.jack()),
    ));
    rows.push(row(
        "duplicate_key_in_the_claims",
        &jack_with(format!(
            r#"{{"key":"jill-key","key":"test-key","exp":{}}}"#,
            t + 600
        )),
    ));
    rows.push(row(
        "duplicate_exp_in_the_claims",
        &jack_with(format!(
            r#"{{"key":"test-key","exp":{},"exp":{}}}"#,
            t - 600,
            t + 600
        )),
    ));
    rows.push(row(
        "unknown_crit_extension",
        &jws(
            r#"{"alg":"HS256","crit":["x-keygate-unknown"],"x-keygate-unknown":1}"#,
            &jack_claims,
            &k.jack(),
        ),
    ));
    rows.push(row(
        "crit_b64_false_unencoded_payload",
        &jws(
            r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
            &jack_claims,
            &k.jack(),
        ),
    ));

    // ---- Several different tokens (each one valid on its own). ----
    rows.push(row_on(
        "different_tokens_in_header_and_query",
        &format!("/secure/ping?jwt={valid_jill}"),
        vec![format!("Authorization: {valid_jack}")],
        401,
    ));
    rows.push(row_on(
        "different_tokens_in_header_and_cookie",
        "/secure/ping",
        vec![
            format!("Authorization: Bearer {valid_jack}"),
            format!("Cookie: jwt={valid_jill}"),
        ],
        401,
    ));
    rows.push(row_on(
        "different_tokens_in_query_and_cookie",
        &format!("/secure/ping?jwt={valid_jack}"),
        vec![format!("Cookie: a=1; jwt={valid_jill}")],
        401,
    ));
    rows.push(row_on(
        "two_authorization_headers",
        "/secure/ping",
        vec![
            format!("Authorization: {valid_jack}"),
            format!("Authorization: {valid_jill}"),
        ],
        401,
    ));
    rows.push(row_on(
        "two_jwt_query_parameters",
        &format!("/secure/ping?jwt={valid_jack}&jwt={valid_jill}"),
        vec![],
        401,
    ));
    rows.push(row_on(
        "two_jwt_cookies",
        "/secure/ping",
        vec![format!("Cookie: jwt={valid_jack}; jwt={valid_jill}")],
        401,
    ));

    // ---- Size. ----
    let big = format!("{input}.{}", "A".repeat(9 * 1024));
    rows.push(row("token_over_8_kib_in_the_header", &big));
    rows.push(row_on(
        "token_over_8_kib_in_the_cookie",
        "/secure/ping",
        vec![format!("Cookie: jwt={big}")],
        401,
    ));
    rows.push(row_on(
        "token_over_8_kib_in_the_query",
        &format!("/secure/ping?jwt={}", &big[..big.len() - 2048]),
        vec![],
        401,
    ));
    rows.push(row_on(
        "token_of_64_kib_in_the_header",
        "/secure/ping",
        vec![format!("Authorization: {input}.{}", "A".repeat(64 * 1024))],
        431,
    ));
    rows.push(row_on(
        "token_of_16_kib_in_the_query",
        &format!("/secure/ping?jwt={input}.{}", "A".repeat(16 * 1024)),
        vec![],
        414,
    ));
    rows
}

fn gateway_config(agent: &AgentProcess, upstream: &Recorder, keys: &Keys, doomed: bool) -> String {
    let doomed = if doomed {
        format!(
            "  - username: doomed\n    plugins:\n      jwt-auth: {{ key: doomed-key, secret: {DOOMED_SECRET:?} }}\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"
agent: {{ socket: {socket:?} }}
routes:
  - id: "1"
    uri: /secure/ping
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ nodes: {{ "{node}": 1 }} }}
  - id: "2"
    uri: /capped/ping
    plugins: {{ jwt-auth: {{ claims_to_verify: [exp, nbf], maximum_expiration: 3600 }} }}
    upstream: {{ nodes: {{ "{node}": 1 }} }}
consumers:
  - username: jack
    plugins:
      jwt-auth: {{ key: test-key, vault: {{}} }}
  - username: jill
    plugins:
      jwt-auth: {{ key: jill-key, lifetime_grace_period: 10, vault: {{}} }}
  - username: jim
    plugins:
      jwt-auth: {{ key: rsa-key, algorithm: RS256, public_key: {rsa:?} }}
  - username: eve
    plugins:
      jwt-auth: {{ key: ec-key, algorithm: ES256, public_key: {ec:?} }}
{doomed}"#,
        socket = agent.socket_path(),
        node = upstream.node(),
        rsa = keys.rsa_public_pem,
        ec = keys.ec_public_pem,
    )
}

async fn send(gateway: &GatewayProcess, path: &str, headers: &[String]) -> Result<(u16, bool)> {
    let addr = gateway.base_url().trim_start_matches("http://").to_owned();
    let response = raw_request(&addr, &get_request(path, headers), TIMEOUT).await?;
    let challenge = response.header("www-authenticate") == Some(r#"Bearer realm="jwt""#);
    Ok((response.status, challenge))
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_attack_corpus() -> Result<()> {
    let bao = OpenBao::start().await?;
    let seeded = seed_apisix(&bao).await?;
    let token = bao.create_token(&[AGENT_POLICY], None).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("2s"),
    )
    .await?;
    let upstream = Recorder::start().await?;
    let canary = Recorder::start().await?;
    let keys = Keys::new(&seeded.jack_v1, &seeded.jill_v1);
    let gateway =
        GatewayProcess::start_ready(&gateway_config(&agent, &upstream, &keys, true)).await?;

    // Positive controls: each consumer's well-formed token gets through, so every row
    // below fails for its own reason and not because a consumer is broken.
    let t = now();
    let controls = [
        (
            "/secure/ping",
            jws(HS256, &claims("test-key"), &keys.jack()),
        ),
        (
            "/secure/ping",
            jws(HS256, &claims("jill-key"), &keys.jill()),
        ),
        (
            "/secure/ping",
            jws(
                RS256,
                &claims("rsa-key"),
                &Sig::Rsa(&keys.rsa, &signature::RSA_PKCS1_SHA256),
            ),
        ),
        (
            "/secure/ping",
            jws(ES256, &claims("ec-key"), &Sig::Ec(&keys.ec)),
        ),
        (
            "/secure/ping",
            jws(
                HS256,
                &claims("doomed-key"),
                &Sig::Hmac(ring::hmac::HMAC_SHA256, DOOMED_SECRET.as_bytes()),
            ),
        ),
        (
            "/capped/ping",
            jws(
                HS256,
                &format!(r#"{{"key":"test-key","exp":{},"nbf":{}}}"#, t + 600, t - 5),
                &keys.jack(),
            ),
        ),
        (
            "/secure/ping",
            jws(
                HS256,
                &format!(r#"{{"key":"jill-key","exp":{}}}"#, t - 5),
                &keys.jill(),
            ),
        ),
    ];
    for (path, token) in &controls {
        let (status, _) = send(&gateway, path, &[format!("Authorization: {token}")]).await?;
        ensure!(status == 200, "control token on {path}: HTTP {status}");
    }
    ensure!(
        upstream.hits() == controls.len(),
        "controls did not all reach the upstream"
    );

    let rows = corpus(&keys, &canary.node());
    let mut failures = Vec::new();
    for row in &rows {
        let before = upstream.hits();
        let (status, challenge) = send(&gateway, &row.path, &row.headers).await?;
        let forwarded = upstream.hits() - before;
        if status != row.expect || forwarded != 0 || (status == 401 && !challenge) {
            failures.push(format!(
                "{}: HTTP {status} (expected {}), {forwarded} request(s) reached the upstream{}",
                row.name,
                row.expect,
                if status == 401 && !challenge {
                    ", no WWW-Authenticate"
                } else {
                    ""
                }
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    ensure!(rows.len() >= 40, "only {} rows", rows.len());
    ensure!(
        canary.connections() == 0,
        "the gateway fetched a URL named in a token header"
    );

    // A token accepted (and so remembered as verified) stops working when it expires:
    // the time claims are checked on every request, not only at verification.
    let short = jws(
        HS256,
        &format!(r#"{{"key":"test-key","exp":{}}}"#, now() + 2),
        &keys.jack(),
    );
    let (status, _) = send(
        &gateway,
        "/secure/ping",
        &[format!("Authorization: {short}")],
    )
    .await?;
    ensure!(
        status == 200,
        "short-lived token while valid: HTTP {status}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = upstream.hits();
    let (status, _) = send(
        &gateway,
        "/secure/ping",
        &[format!("Authorization: {short}")],
    )
    .await?;
    ensure!(
        status == 401 && upstream.hits() == before,
        "accepted_token_after_its_expiry: HTTP {status}"
    );

    // A valid token for a consumer deleted a moment ago.
    let doomed = jws(
        HS256,
        &claims("doomed-key"),
        &Sig::Hmac(ring::hmac::HMAC_SHA256, DOOMED_SECRET.as_bytes()),
    );
    gateway.write_config(&gateway_config(&agent, &upstream, &keys, false))?;
    gateway.sighup()?;
    eventually(Duration::from_secs(10), || async {
        let (status, _) = send(
            &gateway,
            "/secure/ping",
            &[format!("Authorization: {doomed}")],
        )
        .await?;
        ensure!(status == 401, "deleted consumer's token: HTTP {status}");
        Ok(())
    })
    .await?;
    let before = upstream.hits();
    let (status, _) = send(
        &gateway,
        "/secure/ping",
        &[format!("Authorization: {doomed}")],
    )
    .await?;
    ensure!(
        status == 401 && upstream.hits() == before,
        "deleted_consumer_token: HTTP {status}"
    );

    // Still alive and serving; short HMAC secrets were warned about at load time; no
    // secret in the log.
    let mut gateway = gateway;
    ensure!(gateway.try_exit_status()?.is_none(), "the gateway exited");
    let (status, _) = send(
        &gateway,
        "/secure/ping",
        &[format!("Authorization: {}", controls[0].1)],
    )
    .await?;
    ensure!(status == 200, "the gateway stopped serving: HTTP {status}");
    let log = gateway.log_contents();
    ensure!(
        log.contains("RFC 8725"),
        "no warning about the short HMAC secret of consumer doomed"
    );
    assert_no_secret_in(&log, &[&seeded.jack_v1, &seeded.jill_v1, DOOMED_SECRET]);
    agent.assert_no_secret_in_log(&[&seeded.jack_v1, &seeded.jill_v1, &token]);
    Ok(())
}

/// The corpus must stay at least 40 named rows.
#[test]
fn corpus_has_at_least_40_named_rows() -> Result<()> {
    let keys = Keys::new(
        "jack-secret-for-counting-rows-only",
        "jill-secret-for-counting-rows-only",
    );
    let rows = corpus(&keys, "127.0.0.1:9");
    let mut names: Vec<&str> = rows.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    ensure!(names.len() == rows.len(), "duplicate row names");
    ensure!(rows.len() >= 40, "only {} rows", rows.len());
    Ok(())
}
