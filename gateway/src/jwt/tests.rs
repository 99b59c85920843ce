use super::*;
use serde_json::json;

pub(crate) fn pem(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}.pem", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (algorithm, verify key, sign key) for every supported algorithm.
fn keys() -> Vec<(Algorithm, VerifyKey, SignKey)> {
    let hmac = |alg| {
        (
            alg,
            VerifyKey::hmac(alg, b"s3cret", false).unwrap(),
            SignKey::hmac(alg, b"s3cret", false).unwrap(),
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
        hmac(Algorithm::HS384),
        hmac(Algorithm::HS512),
        pair(Algorithm::RS256, "rsa_public", "rsa_private"),
        pair(Algorithm::RS384, "rsa_public", "rsa_private"),
        pair(Algorithm::RS512, "rsa_public", "rsa_private"),
        pair(Algorithm::PS256, "rsa_public", "rsa_private"),
        pair(Algorithm::ES256, "ec256_public", "ec256_private"),
        pair(Algorithm::ES384, "ec384_public", "ec384_private"),
        pair(Algorithm::EdDSA, "ed25519_public", "ed25519_private"),
    ]
}

fn claims(v: serde_json::Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

#[test]
fn every_algorithm_signs_and_verifies() {
    for (alg, verify, sign_key) in keys() {
        let token = sign(alg, &sign_key, &claims(json!({"key": "k", "exp": 10}))).unwrap();
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.alg, alg.as_str());
        assert_eq!(parsed.claims["key"], "k");
        assert!(parsed.verify_signature(alg, &verify), "{alg:?}");
    }
}

#[test]
fn tampered_tokens_fail() {
    for (alg, verify, sign_key) in keys() {
        let token = sign(alg, &sign_key, &claims(json!({"key": "k"}))).unwrap();
        // Another payload under the same signature.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged_payload = B64URL.encode(br#"{"key":"admin"}"#);
        let forged = format!("{head}.{forged_payload}.{sig}");
        assert!(
            !parse(&forged).unwrap().verify_signature(alg, &verify),
            "{alg:?}"
        );
        // A flipped signature character.
        let mut bytes = token.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert!(
            !parse(&flipped).unwrap().verify_signature(alg, &verify),
            "{alg:?}"
        );
    }
}

#[test]
fn wrong_keys_fail() {
    let other_hmac = VerifyKey::hmac(Algorithm::HS256, b"other", false).unwrap();
    let k = SignKey::hmac(Algorithm::HS256, b"s3cret", false).unwrap();
    let token = sign(Algorithm::HS256, &k, &Map::new()).unwrap();
    assert!(
        !parse(&token)
            .unwrap()
            .verify_signature(Algorithm::HS256, &other_hmac)
    );

    let other_rsa = VerifyKey::public_pem(Algorithm::RS256, &pem("rsa2_public")).unwrap();
    let k = SignKey::private_pem(Algorithm::RS256, &pem("rsa_private")).unwrap();
    let token = sign(Algorithm::RS256, &k, &Map::new()).unwrap();
    assert!(
        !parse(&token)
            .unwrap()
            .verify_signature(Algorithm::RS256, &other_rsa)
    );
}

#[test]
fn hmac_with_the_public_key_as_secret_does_not_verify_against_rsa() {
    // The classic confusion attack: an HS256 token keyed with the RSA public key text.
    let public = pem("rsa_public");
    let forger = SignKey::hmac(Algorithm::HS256, &public, false).unwrap();
    let token = sign(Algorithm::HS256, &forger, &claims(json!({"key": "k"}))).unwrap();
    let rsa = VerifyKey::public_pem(Algorithm::RS256, &public).unwrap();
    let parsed = parse(&token).unwrap();
    assert!(!parsed.verify_signature(Algorithm::RS256, &rsa));
}

#[test]
fn base64_secrets_are_decoded() {
    let k = SignKey::hmac(Algorithm::HS256, b"c2VjcmV0", true).unwrap();
    let token = sign(Algorithm::HS256, &k, &Map::new()).unwrap();
    let plain = VerifyKey::hmac(Algorithm::HS256, b"secret", false).unwrap();
    assert!(
        parse(&token)
            .unwrap()
            .verify_signature(Algorithm::HS256, &plain)
    );
    assert_eq!(
        VerifyKey::hmac(Algorithm::HS256, b"not base64!", true)
            .err()
            .map(|e| e.to_string()),
        Some(KeyError::Base64.to_string())
    );
}

#[test]
fn bad_key_material_is_rejected() {
    assert!(VerifyKey::hmac(Algorithm::HS256, b"", false).is_err());
    assert!(VerifyKey::public_pem(Algorithm::RS256, b"not a pem").is_err());
    assert!(VerifyKey::public_pem(Algorithm::ES256, &pem("rsa_public")).is_err());
    assert!(VerifyKey::public_pem(Algorithm::HS256, &pem("rsa_public")).is_err());
    assert!(SignKey::private_pem(Algorithm::EdDSA, &pem("ec256_private")).is_err());
    assert!(SignKey::hmac(Algorithm::RS256, b"x", false).is_err());
}

#[test]
fn malformed_tokens() {
    let header = B64URL.encode(br#"{"alg":"HS256"}"#);
    let payload = B64URL.encode(br#"{"key":"k"}"#);
    for bad in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        format!("{header}.{payload}"),
        format!("{header}.{payload}."),
        format!("{header}.{payload}.sig.extra"),
        format!("{header}..sig"),
        format!(".{payload}.sig"),
        format!("{header}.{payload}.s!g"),
        format!("{}.{payload}.sig", B64URL.encode(b"not json")),
        format!("{}.{payload}.sig", B64URL.encode(br#"{"typ":"JWT"}"#)),
        format!("{header}.{}.sig", B64URL.encode(b"[1,2]")),
        format!("{header}.%%%.sig"),
        // Padding, the standard alphabet, whitespace.
        format!("{header}=.{payload}.sig"),
        format!("{header}.{payload}.sig="),
        format!("{header}.{payload}.s+g"),
        format!("{header}.{payload}.s/g"),
        format!("{header}.{payload} .sig"),
        // Duplicate members, `crit`, a non-string alg.
        format!(
            "{}.{payload}.sig",
            B64URL.encode(br#"{"alg":"HS256","alg":"none"}"#)
        ),
        format!(
            "{header}.{}.sig",
            B64URL.encode(br#"{"key":"k","key":"admin"}"#)
        ),
        format!(
            "{}.{payload}.sig",
            B64URL.encode(br#"{"alg":"HS256","crit":["exp"]}"#)
        ),
        format!("{}.{payload}.sig", B64URL.encode(br#"{"alg":["HS256"]}"#)),
        // Longer than the limit.
        format!("{header}.{payload}.{}", "A".repeat(MAX_TOKEN_BYTES)),
    ] {
        assert_eq!(parse(&bad).err(), Some(Malformed), "{bad:?}");
    }
    assert!(parse(&format!("{header}.{payload}.sig")).is_ok());
}

#[test]
fn exp_and_nbf_with_grace_at_the_boundaries() {
    let rules = |grace| TimeRules {
        grace,
        ..TimeRules::default()
    };
    let c = |v| claims(v);
    // exp: valid while now < exp + grace.
    assert_eq!(check_times(&c(json!({"exp": 100})), 99, rules(0)), Ok(()));
    assert_eq!(
        check_times(&c(json!({"exp": 100})), 100, rules(0)),
        Err(ClaimError::Expired)
    );
    assert_eq!(check_times(&c(json!({"exp": 100})), 104, rules(5)), Ok(()));
    assert_eq!(
        check_times(&c(json!({"exp": 100})), 105, rules(5)),
        Err(ClaimError::Expired)
    );
    // nbf: valid once now >= nbf - grace.
    assert_eq!(check_times(&c(json!({"nbf": 100})), 100, rules(0)), Ok(()));
    assert_eq!(
        check_times(&c(json!({"nbf": 100})), 99, rules(0)),
        Err(ClaimError::NotYetValid)
    );
    assert_eq!(check_times(&c(json!({"nbf": 100})), 95, rules(5)), Ok(()));
    assert_eq!(
        check_times(&c(json!({"nbf": 100})), 94, rules(5)),
        Err(ClaimError::NotYetValid)
    );
    // Absent claims are fine unless required.
    assert_eq!(check_times(&Map::new(), 1, rules(0)), Ok(()));
    let strict = rules(0).requiring(&[TimeClaim::Exp, TimeClaim::Nbf]);
    assert_eq!(
        check_times(&c(json!({"nbf": 1})), 5, strict),
        Err(ClaimError::Missing)
    );
    assert_eq!(
        check_times(&c(json!({"exp": 10})), 5, strict),
        Err(ClaimError::Missing)
    );
    assert_eq!(
        check_times(&c(json!({"exp": 10, "nbf": 1})), 5, strict),
        Ok(())
    );
    // Not numbers.
    assert_eq!(
        check_times(&c(json!({"exp": "100"})), 5, rules(0)),
        Err(ClaimError::NotANumber)
    );
    // null is not an absent claim.
    assert_eq!(
        check_times(&c(json!({"exp": null})), 5, rules(0)),
        Err(ClaimError::NotANumber)
    );
    // Fractional NumericDate.
    assert_eq!(
        check_times(&c(json!({"exp": 100.5})), 100, rules(0)),
        Ok(())
    );
}

#[test]
fn maximum_expiration() {
    let rules = TimeRules {
        maximum_expiration: 60,
        ..TimeRules::default()
    };
    assert_eq!(
        check_times(&claims(json!({"exp": 160})), 100, rules),
        Ok(())
    );
    assert_eq!(
        check_times(&claims(json!({"exp": 161})), 100, rules),
        Err(ClaimError::TooLong)
    );
    assert_eq!(
        check_times(&Map::new(), 100, rules),
        Err(ClaimError::Missing)
    );
}

#[test]
fn keys_never_print() {
    let v = VerifyKey::hmac(Algorithm::HS256, b"hunter2", false).unwrap();
    let s = SignKey::private_pem(Algorithm::RS256, &pem("rsa_private")).unwrap();
    let printed = format!("{v:?} {s:?}");
    assert!(
        !printed.contains("hunter2") && !printed.contains("PRIVATE"),
        "{printed}"
    );
}
