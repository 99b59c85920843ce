use super::*;

fn name(s: &str) -> SecretName {
    SecretName::parse(s).unwrap()
}

fn fields(json: &str) -> SecretFields {
    serde_json::from_str(json).unwrap()
}

fn store() -> Store {
    Store::new(Arc::new(Metrics::default()))
}

#[test]
fn snapshot_waits_until_every_name_is_answered() {
    let s = store();
    let (a, b) = (name("consumer/a/jwt-auth"), name("consumer/b/jwt-auth"));
    s.register(&[a.clone(), b.clone()]);
    assert!(s.snapshot(&[a.clone(), b.clone()]).is_none());
    assert!(s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None))
    ));
    assert!(
        s.snapshot(&[a.clone(), b.clone()]).is_none(),
        "partial snapshot served"
    );
    assert!(s.apply(&b, Ok(ReadOutcome::NotFound)));
    let snap = s.snapshot(&[a, b]).unwrap();
    assert_eq!(snap[0].1.state, State::Loaded);
    assert_eq!(snap[1].1.state, State::NotFound);
}

#[test]
fn unchanged_value_keeps_version_and_change_bumps_it() {
    let s = store();
    let a = name("a");
    s.register(std::slice::from_ref(&a));
    s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None)),
    );
    assert!(!s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None))
    ));
    assert_eq!(
        s.snapshot(std::slice::from_ref(&a)).unwrap()[0].1.version,
        1
    );
    assert!(s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"y"}"#), None))
    ));
    assert_eq!(s.snapshot(&[a]).unwrap()[0].1.version, 2);
}

#[test]
fn failures_keep_the_last_good_value_marked_stale() {
    let s = store();
    let a = name("a");
    s.register(std::slice::from_ref(&a));
    s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None)),
    );
    assert!(s.apply(&a, Err(VaultError::NoToken)));
    let e = &s.snapshot(std::slice::from_ref(&a)).unwrap()[0].1;
    assert!(e.stale);
    assert_eq!(e.state, State::Loaded);
    assert_eq!(e.fields.as_deref(), Some(&fields(r#"{"secret":"x"}"#)));
    // A 403 on a loaded secret is not trusted as a deletion either.
    s.apply(&a, Ok(ReadOutcome::Denied));
    assert_eq!(
        s.snapshot(std::slice::from_ref(&a)).unwrap()[0].1.state,
        State::Loaded
    );
    assert!(s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None))
    ));
    let e = &s.snapshot(&[a]).unwrap()[0].1;
    assert!(!e.stale);
    assert_eq!(e.version, 1);
}

#[test]
fn failure_before_first_load_stays_pending() {
    let s = store();
    let a = name("a");
    s.register(std::slice::from_ref(&a));
    assert!(!s.apply(&a, Err(VaultError::NoToken)));
    assert!(s.snapshot(&[a]).is_none());
}
