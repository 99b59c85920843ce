use super::*;

fn parse(yaml: &str) -> Result<Settings, ConfigError> {
    let config: Config = serde_yaml_ng::from_str(yaml).map_err(|source| ConfigError::Parse {
        path: PathBuf::from("test.yaml"),
        source,
    })?;
    Settings::from_config(config, &|_| None)
}

const SEED: &str = r#"
vault:
  host: 'http://0.0.0.0:8200'
  timeout: 10
  token: 's.KUWFVhIXgoRuQbbp3j1eMVGa'
  prefix: 'kv/apisix'
socket:
  path: /run/keygate/agent.sock
"#;

#[test]
fn seed_vault_block_is_accepted() {
    let s = parse(SEED).unwrap();
    assert_eq!(s.vault_addr, "http://0.0.0.0:8200");
    assert_eq!(s.timeout, Duration::from_secs(10));
    assert_eq!(s.prefix, "kv/apisix");
    assert!(matches!(s.auth, AuthMethod::Token(_)));
    assert_eq!(s.kv_version, KvVersion::Auto);
    assert_eq!(s.refresh_interval, Duration::from_secs(30));
    assert_eq!(s.socket.mode, 0o660);
}

#[test]
fn token_never_appears_in_debug() {
    let s = parse(SEED).unwrap();
    assert!(!format!("{s:?}").contains("KUWFVhIXgoRuQbbp3j1eMVGa"));
}

#[test]
fn approle_and_durations() {
    let s = parse(
        r#"
vault:
  host: http://127.0.0.1:8200
  timeout: 2s
  approle: { role_id_file: /r, secret_id_file: /s }
  prefix: /secret/apisix/
  kv_version: 2
secrets: { refresh_interval: 1500ms, preload: [consumer/jack/jwt-auth] }
socket: { path: /tmp/a.sock, mode: "0600", group: "1001" }
peers:
  - { name: gateway, uids: [1001], paths: ["consumer/*"] }
ops: { listen: 127.0.0.1:9102 }
"#,
    )
    .unwrap();
    assert!(matches!(&s.auth, AuthMethod::AppRole { mount, .. } if mount == "approle"));
    assert_eq!(s.timeout, Duration::from_secs(2));
    assert_eq!(s.prefix, "secret/apisix");
    assert_eq!(s.kv_version, KvVersion::V2);
    assert_eq!(s.refresh_interval, Duration::from_millis(1500));
    assert_eq!(s.preload.len(), 1);
    assert_eq!(s.socket.mode, 0o600);
    assert_eq!(s.peers.len(), 1);
    assert!(s.peers[0].matches(1001, 5));
    assert!(!s.peers[0].matches(1002, 5));
}

fn error_of(yaml: &str) -> String {
    match parse(yaml) {
        Ok(_) => panic!("accepted: {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_name_their_field() {
    let base = "socket: { path: /tmp/a.sock }\n";
    let cases = [
        (
            "vault: { host: http://x, prefix: kv }\n",
            "no authentication",
        ),
        (
            "vault: { host: http://x, prefix: kv, token: a, token_file: /t }\n",
            "only one",
        ),
        (
            "vault: { host: ftp://x, prefix: kv, token: a }\n",
            "vault.host",
        ),
        ("vault: { prefix: kv, token: a }\n", "vault.host"),
        (
            "vault: { host: http://x, prefix: '/', token: a }\n",
            "vault.prefix",
        ),
        (
            "vault: { host: http://x, prefix: kv, token: a, kv_version: 3 }\n",
            "kv_version",
        ),
        (
            "vault: { host: http://x, prefix: kv, token: a, timeout: soon }\n",
            "not a duration",
        ),
        (
            "vault: { host: http://x, prefix: kv, token: a, tokn: b }\n",
            "unknown field",
        ),
        (
            "vault: { host: http://x, prefix: kv, token: a }\npeers: [{ name: g, paths: ['*'] }]\n",
            "peers.uids",
        ),
        (
            "vault: { host: http://x, prefix: kv, token: a }\npeers: [{ name: g, uids: [1], paths: ['../*'] }]\n",
            "peers.paths",
        ),
        (
            "vault: { host: http://x, prefix: kv, token: a }\nsecrets: { preload: ['a//b'] }\n",
            "secrets.preload",
        ),
    ];
    for (vault, expected) in cases {
        let err = error_of(&format!("{vault}{base}"));
        assert!(
            err.contains(expected),
            "{vault:?}: {err:?} lacks {expected:?}"
        );
    }
    let err = error_of(
        "vault: { host: http://x, prefix: kv, token: a }\nsocket: { path: /a, mode: '9' }\n",
    );
    assert!(err.contains("octal"), "{err}");
}

#[test]
fn env_fallbacks_are_used_only_when_fields_are_absent() {
    let config: Config =
        serde_yaml_ng::from_str("vault: { prefix: kv }\nsocket: { path: /tmp/a.sock }\n").unwrap();
    let env = |k: &str| match k {
        "BAO_ADDR" => Some("http://bao:8200/".to_owned()),
        "VAULT_TOKEN" => Some("t".to_owned()),
        _ => None,
    };
    let s = Settings::from_config(config, &env).unwrap();
    assert_eq!(s.vault_addr, "http://bao:8200");
    assert!(matches!(s.auth, AuthMethod::Token(_)));
}

#[test]
fn name_limits_have_defaults_and_are_checked() {
    let s = parse(SEED).unwrap();
    assert_eq!(s.limits, Limits::default());
    assert_eq!(s.limits.names_per_call, 16_384);
    assert_eq!(s.limits.names_per_uid, 65_536);
    let s = parse(&format!(
        "{SEED}limits:\n  names_per_call: 10\n  names_per_uid: 30\n"
    ))
    .unwrap();
    assert_eq!((s.limits.names_per_call, s.limits.names_per_uid), (10, 30));
    // Only one given: the other keeps its default.
    let s = parse(&format!("{SEED}limits:\n  names_per_uid: 100000\n")).unwrap();
    assert_eq!(
        (s.limits.names_per_call, s.limits.names_per_uid),
        (16_384, 100_000)
    );
    for (bad, field) in [
        ("names_per_call: 0", "limits.names_per_call"),
        ("names_per_uid: 0", "limits.names_per_uid"),
        ("names_per_uid: 2000000", "limits.names_per_uid"),
        (
            "names_per_call: 200\n  names_per_uid: 100",
            "limits.names_per_call",
        ),
    ] {
        let err = parse(&format!("{SEED}limits:\n  {bad}\n")).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { field: f, .. } if *f == field),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("out of range"), "{err}");
    }
    for bad in ["names_per_call: -1", "names_per_call: lots", "names: 3"] {
        assert!(
            matches!(
                parse(&format!("{SEED}limits:\n  {bad}\n")),
                Err(ConfigError::Parse { .. })
            ),
            "{bad} accepted"
        );
    }
}
