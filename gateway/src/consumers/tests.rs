use super::*;
use crate::config::Config;
use crate::secrets::SecretState;
use keygate_proto::agent::v1 as pb;

fn set(yaml: &str) -> ConsumerSet {
    let config = Config::parse(yaml).unwrap();
    ConsumerSet::build(&config.consumers, &|_| None).unwrap()
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/testdata/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// (name, state, fields) of each secret.
type Entry<'a> = (&'a str, pb::SecretState, &'a [(&'a str, &'a [u8])]);

fn snapshot(secrets: &[Entry<'_>]) -> SecretSnapshot {
    SecretSnapshot::from_proto(pb::Snapshot {
        version: 1,
        boot_id: "b".into(),
        secrets: secrets
            .iter()
            .map(|(name, state, fields)| pb::Secret {
                name: (*name).into(),
                state: *state as i32,
                version: 1,
                fields: fields
                    .iter()
                    .map(|(k, v)| ((*k).into(), v.to_vec()))
                    .collect(),
                ..Default::default()
            })
            .collect(),
    })
}

#[test]
fn vault_consumer_fails_closed_until_its_secret_arrives() {
    let s = set("consumers: [{username: jack, plugins: {jwt-auth: {key: test-key, vault: {}}}}]");
    let before = s.resolve(None);
    let jack = before.jwt_consumer("test-key").unwrap();
    assert!(matches!(
        jack.verify,
        Err(Unavailable::Missing {
            missing: Missing::NotInSnapshot,
            ..
        })
    ));
    assert!(jack.sign.is_err());
    assert_eq!(before.unavailable_count(), 1);

    let not_found = snapshot(&[("consumer/jack/jwt-auth", pb::SecretState::NotFound, &[])]);
    let jack = s
        .resolve(Some(&not_found))
        .jwt_consumer("test-key")
        .cloned()
        .unwrap();
    assert!(matches!(
        jack.verify,
        Err(Unavailable::Missing {
            missing: Missing::State(SecretState::NotFound),
            ..
        })
    ));

    let wrong_field = snapshot(&[(
        "consumer/jack/jwt-auth",
        pb::SecretState::Loaded,
        &[("password", b"x")],
    )]);
    let jack = s
        .resolve(Some(&wrong_field))
        .jwt_consumer("test-key")
        .cloned()
        .unwrap();
    assert!(matches!(
        jack.verify,
        Err(Unavailable::Missing {
            missing: Missing::NoSuchField,
            ..
        })
    ));

    let loaded = snapshot(&[(
        "consumer/jack/jwt-auth",
        pb::SecretState::Loaded,
        &[("secret", b"$ecr3t-c0d3")],
    )]);
    let state = s.resolve(Some(&loaded));
    let jack = state.jwt_consumer("test-key").unwrap();
    assert!(jack.verify.is_ok() && jack.sign.is_ok());
    assert_eq!(&*jack.username, "jack");
    assert_eq!(state.unavailable_count(), 0);
}

#[test]
fn seed_key_layouts() {
    let public = String::from_utf8(pem("rsa_public")).unwrap();
    let s = set(&format!(
        "consumers:\n  - {{username: jim, plugins: {{jwt-auth: {{key: rsa-keypair, algorithm: RS256, vault: {{}}}}}}}}\n  - {{username: john, plugins: {{jwt-auth: {{key: user-key, algorithm: RS256, public_key: {public:?}, vault: {{}}}}}}}}"
    ));
    assert_eq!(
        s.agent_names(),
        ["consumer/jim/jwt-auth", "consumer/john/jwt-auth"]
    );
    let private = pem("rsa_private");
    let public = pem("rsa_public");
    let snap = snapshot(&[
        (
            "consumer/jim/jwt-auth",
            pb::SecretState::Loaded,
            &[("public_key", &public), ("private_key", &private)],
        ),
        (
            "consumer/john/jwt-auth",
            pb::SecretState::Loaded,
            &[("private_key", &private)],
        ),
    ]);
    let state = s.resolve(Some(&snap));
    for key in ["rsa-keypair", "user-key"] {
        let c = state.jwt_consumer(key).unwrap();
        assert!(c.verify.is_ok() && c.sign.is_ok(), "{key}: {c:?}");
    }
    // john's public key is inline: verification works before any snapshot.
    let before = s.resolve(None);
    assert!(before.jwt_consumer("user-key").unwrap().verify.is_ok());
    assert!(before.jwt_consumer("user-key").unwrap().sign.is_err());
    assert!(before.jwt_consumer("rsa-keypair").unwrap().verify.is_err());
}

#[test]
fn unusable_agent_values_are_reported_not_used() {
    let s = set(
        "consumers: [{username: jim, plugins: {jwt-auth: {key: k, algorithm: ES256, vault: {}}}}]",
    );
    let snap = snapshot(&[(
        "consumer/jim/jwt-auth",
        pb::SecretState::Loaded,
        &[("public_key", b"garbage")],
    )]);
    let state = s.resolve(Some(&snap));
    let jim = state.jwt_consumer("k").unwrap();
    assert!(matches!(jim.verify, Err(Unavailable::Invalid { .. })));
    assert!(matches!(
        jim.sign,
        Err(Unavailable::Missing {
            missing: Missing::NoSuchField,
            ..
        })
    ));
}

#[test]
fn inline_only_consumers_need_no_agent() {
    let s = set(
        "consumers: [{username: bob, plugins: {jwt-auth: {key: bob-key, secret: inline-secret}}}, {username: nobody}]",
    );
    assert!(s.agent_names().is_empty());
    assert!(s.has_username("nobody"));
    let state = s.resolve(None);
    assert!(state.jwt_consumer("bob-key").unwrap().verify.is_ok());
    assert!(state.jwt_consumer("nobody").is_none());
}

#[test]
fn names_follow_the_agent_rules() {
    assert!(check_name("consumer/jack/jwt-auth").is_ok());
    assert!(check_name("a/b@c+d=e.f_g-h").is_ok());
    for bad in ["", "/a", "a/", "a//b", "a/./b", "a/../b", "a b", "a/é"] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    assert!(check_name(&"a".repeat(513)).is_err());
}

/// What `f` logs at warn level and above, without colours.
fn warnings(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn short_hmac_secrets_are_warned_about_once_per_consumer_and_never_shown() {
    let consumer = |name: &str, secret: &str| {
        format!(
            "{{username: {name}, plugins: {{jwt-auth: {{key: key-{name}, secret: {secret}}}}}}}"
        )
    };
    let mut list: Vec<String> = (0..7)
        .map(|i| consumer(&format!("c{i}"), &format!("tiny-secret-{i}")))
        .collect();
    list.push(consumer("strong", &"x".repeat(32)));
    let first = set(&format!("consumers: [{}]", list.join(", "))).resolve(None);

    let logged = warnings(|| warn_short_secrets(&AuthState::default(), &first));
    assert_eq!(logged.lines().count(), 6, "{logged}");
    for name in ["c0", "c1", "c2", "c3", "c4"] {
        assert!(logged.contains(&format!("consumer={name} ")), "{logged}");
    }
    assert!(
        logged.contains("secret.bytes=13 secret.minimum_bytes=32"),
        "{logged}"
    );
    assert!(
        logged.contains("2 more consumers have HMAC secrets shorter"),
        "{logged}"
    );
    assert!(!logged.contains("strong"), "{logged}");
    assert!(
        !logged.contains("tiny-secret"),
        "a secret was logged: {logged}"
    );

    // The same consumers again (a rebuild after an unrelated change): nothing.
    let again = set(&format!("consumers: [{}]", list.join(", "))).resolve(None);
    assert_eq!(warnings(|| warn_short_secrets(&first, &again)), "");

    // One more short secret: that consumer alone.
    list.push(consumer("c7", "tiny-secret-7"));
    let third = set(&format!("consumers: [{}]", list.join(", "))).resolve(None);
    let logged = warnings(|| warn_short_secrets(&again, &third));
    assert_eq!(logged.lines().count(), 1, "{logged}");
    assert!(logged.contains("consumer=c7 "), "{logged}");
}

/// A build from the very same entries and Admin API key is the set in use (what a
/// write that changes no consumer shares, resolution included); anything else in
/// either gives a new set.
#[test]
fn the_same_entries_and_admin_key_give_the_same_set() {
    use crate::catalog::{Entry as CatalogEntry, Origin};
    let consumer = |name: &str| {
        let value = serde_json::json!({"username": name,
            "plugins": {"jwt-auth": {"key": format!("{name}-key"), "secret": format!("{name}-secret")}}});
        Arc::new(CatalogEntry::new(name, Origin::Admin, 0, 0, &value))
    };
    let env = |_: &str| None;
    let entries = vec![consumer("jack"), consumer("jim")];
    let key = |raw| {
        Some(AdminKey {
            raw,
            loopback: false,
        })
    };
    let one = "admin-key-one-0123456789abcdef";
    let build = |entries: &[Arc<CatalogEntry>], admin, previous: &Arc<ConsumerSet>| {
        ConsumerSet::from_catalog(entries, admin, &env, previous).unwrap()
    };

    let first = build(&entries, key(one), &Arc::default());
    let again = build(&entries, key(one), &first);
    assert!(Arc::ptr_eq(&first, &again));
    let auth = first.resolve_after(None, &AuthState::default());
    assert!(auth.is_resolution_of(&again, None));
    // The same set against a snapshot (the first, or a new one): resolved again.
    let older = Arc::new(snapshot(&[]));
    assert!(!auth.is_resolution_of(&again, Some(&older)));
    let against = again.resolve_after(Some(&older), &auth);
    assert!(against.is_resolution_of(&again, Some(&older)));
    let newer = Arc::new(snapshot(&[]));
    assert!(!against.is_resolution_of(&again, Some(&newer)));

    let two = "admin-key-two-0123456789abcdef";
    let other_key = build(&entries, key(two), &first);
    assert!(
        !Arc::ptr_eq(&first, &other_key),
        "a new admin key was not taken"
    );
    assert!(!auth.is_resolution_of(&other_key, None));
    assert_eq!(
        other_key.resolve(None).admin_key(),
        Some(&Ok(digest(two.as_bytes())))
    );
    let no_key = build(&entries, None, &other_key);
    assert!(!Arc::ptr_eq(&other_key, &no_key));
    assert_eq!(no_key.resolve(None).admin_key(), None);

    // An entry replaced, even by an equal one, or removed: a new set.
    let replaced = vec![entries[0].clone(), consumer("jim")];
    assert!(!Arc::ptr_eq(&first, &build(&replaced, key(one), &first)));
    assert!(!Arc::ptr_eq(
        &first,
        &build(&entries[..1], key(one), &first)
    ));

    // From the agent: the same secret and field, the same set; another field, a new one.
    let from_agent = build(&entries, key("$secret://vault/admin/key"), &first);
    assert_eq!(from_agent.agent_names(), ["admin"]);
    let same = build(&entries, key("$secret://vault/admin/key"), &from_agent);
    assert!(Arc::ptr_eq(&from_agent, &same));
    let other_field = build(&entries, key("$secret://vault/admin/other"), &from_agent);
    assert!(!Arc::ptr_eq(&from_agent, &other_field));
}
