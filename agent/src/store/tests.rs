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
    s.preload(&[a.clone(), b.clone()]);
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
    assert_eq!(snap[0].state, State::Loaded);
    assert_eq!(snap[1].state, State::NotFound);
}

#[test]
fn unchanged_value_keeps_version_and_change_bumps_it() {
    let s = store();
    let a = name("a");
    s.preload(std::slice::from_ref(&a));
    s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None)),
    );
    assert!(!s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None))
    ));
    assert_eq!(s.snapshot(std::slice::from_ref(&a)).unwrap()[0].version, 1);
    assert!(s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"y"}"#), None))
    ));
    assert_eq!(s.snapshot(&[a]).unwrap()[0].version, 2);
}

#[test]
fn failures_keep_the_last_good_value_marked_stale() {
    let s = store();
    let a = name("a");
    s.preload(std::slice::from_ref(&a));
    s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None)),
    );
    assert!(s.apply(&a, Err(VaultError::NoToken)));
    let e = &s.snapshot(std::slice::from_ref(&a)).unwrap()[0];
    assert!(e.stale);
    assert_eq!(e.state, State::Loaded);
    assert_eq!(e.fields.as_deref(), Some(&fields(r#"{"secret":"x"}"#)));
    // A 403 on a loaded secret is not trusted as a deletion either.
    s.apply(&a, Ok(ReadOutcome::Denied));
    assert_eq!(
        s.snapshot(std::slice::from_ref(&a)).unwrap()[0].state,
        State::Loaded
    );
    assert!(s.apply(
        &a,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None))
    ));
    let e = &s.snapshot(&[a]).unwrap()[0];
    assert!(!e.stale);
    assert_eq!(e.version, 1);
}

#[test]
fn failure_before_first_load_stays_pending() {
    let s = store();
    let a = name("a");
    s.preload(std::slice::from_ref(&a));
    assert!(!s.apply(&a, Err(VaultError::NoToken)));
    assert!(s.snapshot(&[a]).is_none());
}

#[test]
fn a_pass_walks_every_name_once_in_batches() {
    let s = store();
    let names: Vec<SecretName> = (0..BATCH * 2 + 10)
        .map(|i| name(&format!("n/{i}")))
        .collect();
    s.preload(&names);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (due, more) = s.due_batch(true, true, after.as_ref());
        assert!(due.len() <= BATCH);
        seen.extend(due.into_iter().map(|(n, _)| n));
        match more {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn idle_names_are_kept_for_a_while_and_bounded() {
    let s = Arc::new(store().with_max_idle(3));
    let (kept, missing, loaded) = (name("pre"), name("made/up"), name("real"));
    s.preload(std::slice::from_ref(&kept));
    let held = s.hold(vec![missing.clone(), loaded.clone(), kept.clone()]);
    let again = s.hold(vec![missing.clone()]);
    s.apply(&missing, Ok(ReadOutcome::NotFound));
    s.apply(&kept, Ok(ReadOutcome::NotFound));
    s.apply(
        &loaded,
        Ok(ReadOutcome::Found(fields(r#"{"secret":"x"}"#), None)),
    );
    drop((held, again));
    // Nobody holds `missing` and `loaded` any more: kept (a client that reconnects
    // finds them answered), and refreshed with the rest on a full pass.
    assert_eq!(s.len(), 3);
    assert!(s.snapshot(&[missing.clone(), loaded.clone()]).is_some());
    let (due, _) = s.due_batch(true, true, None);
    assert_eq!(due.len(), 3);
    // Held again: not idle any more.
    let held = s.hold(vec![missing.clone()]);
    assert_eq!(s.slots().idle, 1);
    drop(held);
    assert_eq!(s.slots().idle, 2);

    // More idle names than the limit: those without a value go first.
    let made_up: Vec<SecretName> = (0..2).map(|i| name(&format!("made/up/{i}"))).collect();
    drop(s.hold(made_up.clone()));
    assert_eq!(
        s.slots().idle,
        1,
        "the made-up names and `missing` forgotten"
    );
    assert!(s.snapshot(std::slice::from_ref(&loaded)).is_some());
    assert!(s.snapshot(std::slice::from_ref(&missing)).is_none());
    assert_eq!(s.len(), 2);
    assert_eq!(s.slots().len(), 2);

    // After a while a full pass forgets idle names, unless Vault is unreachable.
    let s = Arc::new(Store {
        keep_idle: Duration::ZERO,
        ..store()
    });
    s.preload(std::slice::from_ref(&kept));
    drop(s.hold(vec![loaded.clone()]));
    let (due, _) = s.due_batch(true, false, None);
    assert_eq!(due.len(), 2, "kept while Vault is unreachable");
    let (due, _) = s.due_batch(false, false, None);
    assert_eq!(due.len(), 2, "pending names are due");
    let (due, _) = s.due_batch(true, true, None);
    assert_eq!(due.len(), 1);
    assert_eq!(s.len(), 1);
    assert_eq!(s.slots().idle, 0);
    assert!(!s.answered(&[kept]));
}
