use super::*;
use crate::runtime::{Predecessor, Runtime};

const RSA_PUBLIC: &str = include_str!("../../testdata/rsa_public.pem");

/// The example of the gateway's documentation: every shape it shows must load.
fn example() -> String {
    format!(
        r#"
listen: 127.0.0.1:9080
status_listen: 127.0.0.1:9091
agent: {{ socket: /run/keygate/agent.sock }}
plugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}
routes:
  - id: "1"
    uri: /secure/ping
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ type: roundrobin, nodes: {{ "127.0.0.1:9999": 1 }} }}
  - id: 2
    uris: [/api/*, /v2/*]
    methods: [GET, post]
    hosts: ["*.example.com"]
    priority: 10
    upstream_id: backend
consumers:
  - username: jack
    plugins:
      jwt-auth: {{ key: test-key, vault: {{}} }}
  - username: jim
    plugins:
      jwt-auth:
        key: user-key
        algorithm: RS256
        public_key: {public:?}
        vault: {{}}
  - username: bob
    plugins:
      jwt-auth: {{ key: bob-key, secret: "inline-secret" }}
upstreams:
  - id: backend
    nodes: [{{host: 127.0.0.1, port: 8080, weight: 2}}, {{host: 127.0.0.1, port: 8081}}]
    timeout: {{connect: 0.5, send: 2, read: 3}}
    retries: 1
"#,
        public = RSA_PUBLIC
    )
}

fn build(yaml: &str) -> Result<Runtime, String> {
    let config = Config::parse(yaml).map_err(|e| e.to_string())?;
    Runtime::build(
        &config,
        &|k| (k == "JWT_SECRET").then(|| "from-env".to_owned()),
        &Predecessor::default(),
    )
    .map_err(|e| e.to_string())
}

fn err(yaml: &str) -> String {
    match build(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

#[test]
fn the_documented_example_loads() {
    let config = Config::parse(&example()).unwrap();
    assert!(config.plugin_attr.jwt_auth.sign_endpoint);
    assert_eq!(config.routes[1].id.as_deref(), Some("2"));
    let runtime = Runtime::build(&config, &|_| None, &Predecessor::default()).unwrap();
    assert_eq!(runtime.routes.len(), 2);
    assert_eq!(
        runtime.consumers.agent_names(),
        ["consumer/jack/jwt-auth", "consumer/jim/jwt-auth"]
    );
}

#[test]
fn defaults() {
    let config = Config::parse("{}").unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:9080");
    assert!(!config.plugin_attr.jwt_auth.sign_endpoint);
    assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    let jwt: JwtAuthRouteConfig = serde_yaml_ng::from_str("{}").unwrap();
    assert_eq!(
        (jwt.header.as_str(), jwt.query.as_str(), jwt.cookie.as_str()),
        ("authorization", "jwt", "jwt")
    );
    assert_eq!(jwt.key_claim_name, "key");
}

#[test]
fn parse_errors_name_the_field() {
    let cases = [
        ("listen: nope", "listen"),
        (
            "routes: [{uri: /a, upstream: {nodes: {a:1: 1}}, plugin: {}}]",
            "plugin",
        ),
        (
            "routes: [{uri: /a, plugins: {limit-count: {}}, upstream: {nodes: {\"a:1\": 1}}}]",
            "limit-count",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {secret: x}}}]",
            "key",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, algorithm: HS999}}}]",
            "HS999",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, vault: {path: x}}}}]",
            "path",
        ),
        ("agent: {}", "socket"),
        (
            "routes: [{uri: /a, upstream: {type: ewma, nodes: {\"a:1\": 1}}}]",
            "ewma",
        ),
    ];
    for (yaml, needle) in cases {
        let e = err(yaml);
        assert!(e.contains(needle), "{yaml}\n  -> {e}");
    }
}

#[test]
fn semantic_errors_name_the_field() {
    let up = r#"upstream: {nodes: {"127.0.0.1:1": 1}}"#;
    let cases: Vec<(String, &str)> = vec![
        (format!("routes: [{{{up}}}]"), "routes[0].uri"),
        (format!("routes: [{{uri: x, {up}}}]"), "routes[0].uri"),
        (format!("routes: [{{uri: /a, uris: [/b], {up}}}]"), "routes[0].uris"),
        (format!("routes: [{{uris: [/a, b], {up}}}]"), "routes[0].uris"),
        (format!("routes: [{{uri: /a, methods: [FETCH], {up}}}]"), "routes[0].methods"),
        (format!("routes: [{{uri: /a, host: '*', {up}}}]"), "routes[0].host"),
        (format!("routes: [{{uri: /a, {up}}}, {{uri: /a, id: '0', {up}}}]"), "routes[1].id"),
        ("routes: [{uri: /a}]".into(), "routes[0].upstream"),
        ("routes: [{uri: /a, upstream_id: nope}]".into(), "routes[0].upstream_id"),
        (format!("routes: [{{uri: /a, upstream_id: x, {up}}}]"), "routes[0].upstream_id"),
        (
            r#"routes: [{uri: /a, upstream: {nodes: {"127.0.0.1": 1}}}]"#.into(),
            "routes[0].upstream.nodes",
        ),
        ("upstreams: [{nodes: {\"a:1\": 1}}]".into(), "upstreams[0].id"),
        (
            format!("routes: [{{uri: /a, plugins: {{jwt-auth: {{anonymous_consumer: ghost}}}}, {up}}}]"),
            "routes[0].plugins.jwt-auth.anonymous_consumer",
        ),
        (
            format!("routes: [{{uri: /a, plugins: {{jwt-auth: {{header: 'a b'}}}}, {up}}}]"),
            "routes[0].plugins.jwt-auth.header",
        ),
        (
            "consumers: [{username: jack, plugins: {jwt-auth: {key: k, vault: {}}}}]".into(),
            "agent",
        ),
        (
            "consumers: [{username: 'a/b', plugins: {jwt-auth: {key: k, secret: s}}}]".into(),
            "consumers[0].username",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: s}}}, {username: a}]".into(),
            "consumers[1].username",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: s}}}, {username: b, plugins: {jwt-auth: {key: k, secret: t}}}]".into(),
            "consumers[1].plugins.jwt-auth.key",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k}}}]".into(),
            "consumers[0].plugins.jwt-auth.secret",
        ),
        (
            "agent: {socket: /s}\nconsumers: [{username: a, plugins: {jwt-auth: {key: k, secret: s, vault: {}}}}]".into(),
            "consumers[0].plugins.jwt-auth.secret",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, algorithm: RS256}}}]".into(),
            "consumers[0].plugins.jwt-auth.public_key",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, algorithm: RS256, public_key: nope}}}]".into(),
            "consumers[0].plugins.jwt-auth.public_key",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: s, public_key: p}}}]".into(),
            "consumers[0].plugins.jwt-auth.public_key",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: $env://MISSING}}}]".into(),
            "consumers[0].plugins.jwt-auth.secret",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: $secret://aws/x/y}}}]".into(),
            "consumers[0].plugins.jwt-auth.secret",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: $secret://vault/../x/secret}}}]".into(),
            "consumers[0].plugins.jwt-auth.secret",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: s, exp: 0}}}]".into(),
            "consumers[0].plugins.jwt-auth.exp",
        ),
        (
            format!("routes: [{{uri: /a, plugins: {{jwt-auth: {{}}, key-auth: {{}}}}, {up}}}]"),
            "routes[0].plugins",
        ),
        (
            "consumers: [{username: a, plugins: {key-auth: {}}}]".into(),
            "consumers[0].plugins.key-auth.key",
        ),
        (
            "consumers: [{username: a, plugins: {key-auth: {key: k}}}, {username: b, plugins: {key-auth: {key: k}}}]".into(),
            "consumers[1].plugins.key-auth.key",
        ),
        (
            "agent: {socket: /s}\nconsumers: [{username: a, plugins: {key-auth: {key: k, vault: {}}}}]".into(),
            "consumers[0].plugins.key-auth.key",
        ),
        (
            "consumers: [{username: a, plugins: {basic-auth: {username: 'x:y', password: p}}}]".into(),
            "consumers[0].plugins.basic-auth.username",
        ),
        (
            "consumers: [{username: a, plugins: {basic-auth: {username: x}}}]".into(),
            "consumers[0].plugins.basic-auth.password",
        ),
    ];
    for (yaml, field) in cases {
        let e = err(&yaml);
        assert!(
            e.contains(&format!("{field}:")),
            "{yaml}\n  -> {e}\n  expected field {field}"
        );
    }
}

#[test]
fn references_resolve() {
    let yaml = "agent: {socket: /s}\nconsumers:\n  - {username: a, plugins: {jwt-auth: {key: k1, secret: $env://JWT_SECRET}}}\n  - {username: b, plugins: {jwt-auth: {key: k2, secret: $secret://vault/shared/jwt/hmac}}}";
    let runtime = build(yaml).unwrap();
    assert_eq!(runtime.consumers.agent_names(), ["shared/jwt"]);
}

#[test]
fn load_reports_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.yaml");
    assert!(matches!(
        Config::load(&missing),
        Err(ConfigError::Read { .. })
    ));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "routes: 5").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.yaml") && e.contains("routes"), "{e}");
}

#[test]
fn literal_secrets_never_print() {
    let config = Config::parse("consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: hunter2, private_key: pk}}}]").unwrap();
    let printed = format!("{config:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[test]
fn a_scalar_where_text_is_expected_is_refused_by_field_without_its_value() {
    let upstream = "upstream: {nodes: {\"a:1\": 1}}";
    for (yaml, field) in [
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: 1001, secret: a-long-enough-secret}}}]".to_owned(),
            "consumers[0].plugins.jwt-auth.key",
        ),
        (
            "consumers: [{username: a, plugins: {jwt-auth: {key: k, secret: 87654321}}}]".to_owned(),
            "consumers[0].plugins.jwt-auth.secret",
        ),
        (
            format!("routes: [{{uri: /a, labels: {{build: true}}, {upstream}}}]"),
            "routes[0].labels.build",
        ),
    ] {
        // YAML alone reads these as text; the JSON the gateway runs would not.
        let e = Config::parse(&yaml).unwrap_err().to_string();
        assert!(e.contains(&format!("{field}: invalid type: ")), "{yaml}\n  -> {e}");
        assert!(e.contains("expected a string (quote it in YAML)"), "{e}");
        for value in ["1001", "87654321"] {
            assert!(!e.contains(value), "the value is in the error: {e}");
        }
    }
    // Quoted, they load.
    Config::parse(
        "consumers: [{username: a, plugins: {jwt-auth: {key: \"1001\", secret: \"87654321\"}}}]",
    )
    .unwrap();
}
