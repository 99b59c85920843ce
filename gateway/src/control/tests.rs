use serde_json::json;

use super::*;

const FILE: &str = r#"
agent: { socket: /nonexistent/agent.sock }
routes:
  - id: "1"
    uri: /a
    upstream_id: up
upstreams:
  - id: up
    nodes: { "127.0.0.1:2": 1 }
consumers:
  - username: jack
    plugins: { jwt-auth: { key: test-key, secret: file-secret } }
"#;

fn env(_: &str) -> Option<String> {
    None
}

/// Route `id` of `runtime` (the same object the runtime holds).
fn route(runtime: &Runtime, id: &str) -> std::sync::Arc<crate::runtime::Route> {
    let found = runtime.routes.iter().find(|r| &*r.id == id);
    std::sync::Arc::clone(found.unwrap_or_else(|| panic!("no route {id}")))
}

fn control(dir: &std::path::Path) -> Control {
    Control::new(
        Config::parse(FILE).unwrap(),
        Some(Store::open(dir).unwrap()),
    )
}

#[test]
fn a_write_that_does_not_build_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = control(dir.path());
    let before = control.catalog().clone();
    let body =
        json!({"username": "jim", "plugins": {"jwt-auth": {"key": "test-key", "secret": "x"}}});
    let Err(WriteError::Invalid(msg)) = control.put(Kind::Consumer, "jim", body, 1, &env) else {
        panic!("accepted a duplicate key");
    };
    assert_eq!(
        msg,
        "invalid configuration: plugins.jwt-auth.key: key \"test-key\" is used by another consumer"
    );
    let body = json!({"username": "jim", "plugins": {"jwt-auth": {"key": "k2"}}});
    let Err(WriteError::Invalid(msg)) = control.put(Kind::Consumer, "jim", body, 1, &env) else {
        panic!("accepted a consumer without a secret");
    };
    assert!(
        msg.starts_with("invalid configuration: plugins.jwt-auth.secret: "),
        "{msg}"
    );
    assert_eq!(control.catalog(), &before);
    assert_eq!(control.store().map(Store::revision), Some(0));
}

#[test]
fn writes_persist_and_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut control = control(dir.path());
        let body =
            json!({"username": "jack", "plugins": {"jwt-auth": {"key": "test-key", "vault": {}}}});
        let written = control
            .put(Kind::Consumer, "jack", body, 100, &env)
            .unwrap();
        assert!(!written.created, "jack existed in the file");
        let value = written.entry.map(|e| e.json.value()).unwrap();
        assert_eq!(value["create_time"], 100);
        assert_eq!(
            written.runtime.consumers.agent_names(),
            ["consumer/jack/jwt-auth"]
        );
        let written = control.delete(Kind::Route, "1", &env).unwrap();
        assert!(written.runtime.routes.is_empty());
    }
    // After a restart: jack from the store, route 1 still deleted (a tombstone).
    let mut control = control(dir.path());
    let runtime = control.runtime(&env).unwrap();
    assert!(runtime.routes.is_empty());
    assert_eq!(runtime.consumers.agent_names(), ["consumer/jack/jwt-auth"]);
    assert_eq!(control.generated_id(), "00000000000000000003");
}

#[test]
fn an_upstream_in_use_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = control(dir.path());
    let Err(WriteError::Conflict(msg)) = control.delete(Kind::Upstream, "up", &env) else {
        panic!("deleted an upstream in use");
    };
    assert_eq!(
        msg,
        "can not delete this upstream, route [1] is still using it now"
    );
    assert!(matches!(
        control.delete(Kind::Upstream, "nope", &env),
        Err(WriteError::NotFound)
    ));
}

#[test]
fn a_reload_keeps_the_admin_changes_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = control(dir.path());
    let body = json!({"id": "1", "uri": "/from-admin", "upstream_id": "up"});
    control.put(Kind::Route, "1", body, 1, &env).unwrap();
    let new_file = Config::parse(&FILE.replace("/a", "/changed")).unwrap();
    let runtime = control.reload(new_file, &env).unwrap();
    assert_eq!(runtime.routes.len(), 1);
    let route = control.catalog().get(Kind::Route, "1").unwrap();
    assert_eq!(route.json.value()["uri"], "/from-admin");
    // A file that clashes with the store is refused, naming the resource.
    let clash = Config::parse(&FILE.replace("username: jack", "username: jill")
        .replace("consumers:", "consumers:\n  - username: jo\n    plugins: { jwt-auth: { key: dup, secret: a } }\n  - username: jo2\n    plugins: { jwt-auth: { key: dup, secret: b } }")).unwrap();
    let err = control.reload(clash, &env).unwrap_err().to_string();
    assert!(err.contains("consumers[1].plugins.jwt-auth.key"), "{err}");
}

#[test]
fn the_file_resources_live_in_the_catalog_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = control(dir.path());
    let shown = |control: &Control| {
        control
            .catalog()
            .get(Kind::Consumer, "jack")
            .map(|e| e.json.value()["plugins"]["jwt-auth"]["key"].clone())
    };
    let no_resources = |file: &Config| {
        file.routes.is_empty()
            && file.upstreams.is_empty()
            && file.consumers.is_empty()
            && file.ssls.is_empty()
            && file.raw.routes.is_empty()
            && file.raw.upstreams.is_empty()
            && file.raw.consumers.is_empty()
            && file.raw.ssls.is_empty()
    };
    assert_eq!(shown(&control), Some(json!("test-key")));
    assert!(no_resources(control.file()));
    // What runs is parsed from the catalog's JSON.
    let runtime = control.runtime(&env).unwrap();
    assert_eq!(runtime.routes.len(), 1);
    assert!(
        runtime.consumers.agent_names().is_empty(),
        "jack's secret is literal"
    );

    let second_route = "routes:\n  - id: \"2\"\n    uri: /b\n    upstream_id: up";
    let reloaded = Config::parse(&FILE.replace("routes:", second_route)).unwrap();
    assert_eq!(control.reload(reloaded, &env).unwrap().routes.len(), 2);
    assert_eq!(shown(&control), Some(json!("test-key")));
    assert!(no_resources(control.file()));
    // Route 2 is the reloaded file's: deleting it leaves a tombstone, so that a
    // restart does not bring the file's copy back.
    control.delete(Kind::Route, "2", &env).unwrap();
    let tombstone = control
        .store()
        .and_then(|s| s.records(Kind::Route).find(|r| r.id == "2"))
        .map(|r| r.value.is_none());
    assert_eq!(tombstone, Some(true));
}

#[test]
fn a_file_upstream_without_an_id_is_refused() {
    let file = Config::parse(&FILE.replace("  - id: up\n    nodes", "  - nodes")).unwrap();
    let mut control = Control::new(file, None);
    let Err(ConfigError::Invalid { field, reason }) = control.runtime(&env) else {
        panic!("ran an upstream that no route can name");
    };
    assert_eq!(
        (field.as_str(), reason.as_str()),
        ("upstreams[0].id", "required")
    );
}

/// `keygate_gateway_http_responses_total` is a counter: an Admin API write or a reload
/// builds a new runtime, and each route's counts carry on under its id (the old
/// runtime's requests still in flight count into the same place), where they used to
/// start again from zero for every route.
#[test]
fn response_counts_carry_on_by_route_id_across_writes_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = control(dir.path());
    let first = control.runtime(&env).unwrap();
    route(&first, "1").count(200);
    route(&first, "1").count(503);

    let body = json!({"uri": "/b", "upstream_id": "up"});
    let second = control
        .put(Kind::Route, "2", body, 1, &env)
        .unwrap()
        .runtime;
    assert_eq!(route(&second, "1").responses.by_class(), [0, 1, 0, 0, 1]);
    assert_eq!(route(&second, "2").responses.by_class(), [0; 5]);
    // A request that finishes on the old runtime after the swap.
    route(&first, "1").count(404);
    assert_eq!(route(&second, "1").responses.by_class(), [0, 1, 0, 1, 1]);

    route(&second, "2").count(201);

    let third = control.reload(Config::parse(FILE).unwrap(), &env).unwrap();
    assert_eq!(route(&third, "1").responses.by_class(), [0, 1, 0, 1, 1]);
    assert_eq!(route(&third, "2").responses.by_class(), [0, 1, 0, 0, 0]);

    // A deleted route's counts go with it: created again, it starts from zero.
    control.delete(Kind::Route, "2", &env).unwrap();
    let body = json!({"uri": "/b", "upstream_id": "up"});
    let recreated = control
        .put(Kind::Route, "2", body, 3, &env)
        .unwrap()
        .runtime;
    assert_eq!(route(&recreated, "2").responses.by_class(), [0; 5]);
    assert_eq!(route(&recreated, "1").responses.by_class(), [0, 1, 0, 1, 1]);
}

/// Passive health outlives rebuilds: a node ejected a moment before stays ejected
/// after a write that does not touch its upstream (every write builds every upstream
/// afresh), after a route moves onto its upstream, and after its upstream is rewritten
/// with the node still in it; a failure reported on the old runtime counts in the new
/// one; a shorter `eject` or no checks bring it back.
#[test]
fn passive_health_outlives_writes() {
    let file = FILE.replace(
        r#"    nodes: { "127.0.0.1:2": 1 }"#,
        r#"    nodes: { "127.0.0.1:2": 1, "127.0.0.1:3": 1 }
    checks: { passive: { failures: 1, eject: 1h } }
  - id: other
    nodes: { "127.0.0.1:5": 1 }"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut control = Control::new(
        Config::parse(&file).unwrap(),
        Some(Store::open(dir.path()).unwrap()),
    );
    let upstream =
        |runtime: &Runtime, id: &str| std::sync::Arc::clone(&route(runtime, id).upstream);
    let port =
        |up: &crate::upstream::Upstream, index: usize| up.nodes()[index].authority.port_u16();
    let index_of = |up: &crate::upstream::Upstream, p: u16| {
        (0..up.nodes().len())
            .find(|&i| port(up, i) == Some(p))
            .unwrap()
    };
    // Which ports `up` sends to, over enough picks to see every healthy node.
    let ports = |up: &crate::upstream::Upstream| {
        let mut seen: Vec<u16> = (0..12)
            .filter_map(|_| port(up, up.pick(&[], None)?))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    };
    // Route 2 on the other upstream; route 1 on `up`, where 127.0.0.1:3 is ejected.
    let body = json!({"uri": "/b", "upstream_id": "other"});
    control.put(Kind::Route, "2", body, 1, &env).unwrap();
    let first = control.runtime(&env).unwrap();
    let mut put =
        |kind, id, body, revision| control.put(kind, id, body, revision, &env).unwrap().runtime;
    let up = upstream(&first, "1");
    up.report_failure(index_of(&up, 3));
    assert_eq!(ports(&up), [2]);

    let jim = json!({"username": "jim", "plugins": {"jwt-auth": {"key": "jim-key", "secret": "jim-secret"}}});
    let second = put(Kind::Consumer, "jim", jim, 2);
    assert_eq!(
        ports(&upstream(&second, "1")),
        [2],
        "a consumer write brought it back"
    );

    // Route 1 moves off `up` (no route uses it for a moment), then route 2 onto it: the
    // upstream's own id decides, not the routes that use it.
    let body = json!({"uri": "/a", "upstream_id": "other"});
    put(Kind::Route, "1", body, 3);
    let body = json!({"uri": "/b", "upstream_id": "up"});
    let third = put(Kind::Route, "2", body, 4);
    assert_eq!(
        ports(&upstream(&third, "2")),
        [2],
        "moving a route onto it brought it back"
    );

    // The upstream rewritten with a third node: the ejected one is still out.
    let body = json!({"id": "up", "nodes": {"127.0.0.1:2": 1, "127.0.0.1:3": 1, "127.0.0.1:4": 1},
        "checks": {"passive": {"failures": 1, "eject": "1h"}}});
    let fourth = put(Kind::Upstream, "up", body, 5);
    let up = upstream(&fourth, "2");
    assert_eq!(ports(&up), [2, 4]);

    // A request that finishes on the old runtime after the swap and fails.
    let old = upstream(&third, "2");
    old.report_failure(index_of(&old, 2));
    assert_eq!(ports(&up), [4], "a failure on the old runtime was lost");

    // A shorter eject (0: back at once) applies to the nodes already ejected.
    let body = json!({"id": "up", "nodes": {"127.0.0.1:2": 1, "127.0.0.1:3": 1, "127.0.0.1:4": 1},
        "checks": {"passive": {"failures": 1, "eject": "0s"}}});
    let fifth = put(Kind::Upstream, "up", body, 6);
    assert_eq!(ports(&upstream(&fifth, "2")), [2, 3, 4]);

    // And without checks every node takes traffic.
    let body = json!({"id": "up", "nodes": {"127.0.0.1:2": 1, "127.0.0.1:3": 1}});
    let sixth = put(Kind::Upstream, "up", body, 7);
    upstream(&fourth, "2").report_failure(0);
    assert_eq!(ports(&upstream(&sixth, "2")), [2, 3]);

    // Checks back: no ejection from before comes back with them.
    let body = json!({"id": "up", "nodes": {"127.0.0.1:2": 1, "127.0.0.1:3": 1},
        "checks": {"passive": {"failures": 1, "eject": "1h"}}});
    let seventh = put(Kind::Upstream, "up", body, 8);
    assert_eq!(ports(&upstream(&seventh, "2")), [2, 3]);
}

/// least_conn across a rebuild: a request still in flight on the old runtime keeps its
/// node busy in the new one (the new upstream used to start every count at zero).
#[test]
fn least_conn_sees_the_old_runtime_requests_in_flight() {
    let file = FILE.replace(
        r#"    nodes: { "127.0.0.1:2": 1 }"#,
        r#"    type: least_conn
    nodes: { "127.0.0.1:2": 1, "127.0.0.1:3": 1 }"#,
    );
    let mut control = Control::new(Config::parse(&file).unwrap(), None);
    let first = control.runtime(&env).unwrap();
    let old = std::sync::Arc::clone(&first.routes[0].upstream);
    let busy = old.pick(&[], None).unwrap();
    let _in_flight = old.start(busy);

    let second = control.reload(Config::parse(&file).unwrap(), &env).unwrap();
    let new = &second.routes[0].upstream;
    let busy_port = old.nodes()[busy].authority.port_u16();
    for _ in 0..4 {
        let picked = new.pick(&[], None).unwrap();
        assert_ne!(new.nodes()[picked].authority.port_u16(), busy_port);
    }
}

/// A write rebuilds what it changes and what depends on it; every other route and
/// upstream is taken over as it is (the same object, not built again): an Admin API
/// write at 10 000 routes used to parse and build all of them.
#[test]
fn a_write_rebuilds_only_what_it_changes() {
    let file = FILE.replace(
        "    upstream_id: up\n",
        r#"    upstream_id: up
  - id: "2"
    uri: /b
    plugins: { jwt-auth: { anonymous_consumer: jack } }
    upstream: { nodes: { "127.0.0.1:4": 1 } }
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut control = Control::new(
        Config::parse(&file).unwrap(),
        Some(Store::open(dir.path()).unwrap()),
    );
    let same =
        |a: &Runtime, b: &Runtime, id: &str| std::sync::Arc::ptr_eq(&route(a, id), &route(b, id));
    let first = control.runtime(&env).unwrap();
    let mut put =
        |kind, id, body, revision| control.put(kind, id, body, revision, &env).unwrap().runtime;

    let jim = json!({"username": "jim", "plugins": {"jwt-auth": {"key": "jim-key", "secret": "jim-secret"}}});
    let second = put(Kind::Consumer, "jim", jim, 1);
    assert!(same(&first, &second, "1") && same(&first, &second, "2"));

    let other = json!({"id": "other", "nodes": {"127.0.0.1:5": 1}});
    let third = put(Kind::Upstream, "other", other, 2);
    assert!(
        same(&second, &third, "1"),
        "an unrelated upstream rebuilt route 1"
    );

    // Route 1's upstream rewritten: route 1 is built again, onto the new upstream.
    let up = json!({"id": "up", "nodes": {"127.0.0.1:3": 1}});
    let fourth = put(Kind::Upstream, "up", up, 3);
    assert!(!same(&third, &fourth, "1"));
    let port = |runtime: &Runtime| route(runtime, "1").upstream.nodes()[0].authority.port_u16();
    assert_eq!((port(&third), port(&fourth)), (Some(2), Some(3)));
    assert!(same(&third, &fourth, "2"));

    // Route 2 rewritten: built again.
    let body = json!({"uri": "/c", "plugins": {"jwt-auth": {"anonymous_consumer": "jack"}},
        "upstream": {"nodes": {"127.0.0.1:4": 1}}});
    let fifth = put(Kind::Route, "2", body, 4);
    assert!(!same(&fourth, &fifth, "2") && same(&fourth, &fifth, "1"));

    // Its anonymous consumer cannot go: route 2 is checked again, not taken over.
    let Err(WriteError::Conflict(msg)) = control.delete(Kind::Consumer, "jack", &env) else {
        panic!("deleted the anonymous consumer of route 2");
    };
    assert!(msg.contains("anonymous_consumer"), "{msg}");
}

/// The consumers a write does not change keep their resolved keys: the same objects
/// (no key parsed again, and the tokens routes remember as verified by them stay so).
/// A changed consumer, or a new agent snapshot, makes new ones.
#[test]
fn a_write_keeps_the_resolved_keys_of_the_consumers_it_does_not_change() {
    use crate::consumers::AuthState;
    use crate::secrets::SecretSnapshot;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut control = control(dir.path());
    let same = |a: &AuthState, b: &AuthState, key: &str| {
        Arc::ptr_eq(a.jwt_consumer(key).unwrap(), b.jwt_consumer(key).unwrap())
    };
    let first = control.runtime(&env).unwrap();
    let auth1 = first.consumers.resolve_after(None, &AuthState::default());
    let mut put = |kind, id, body, revision| control.put(kind, id, body, revision, &env);

    let jim = json!({"username": "jim", "plugins": {"jwt-auth": {"key": "jim-key", "secret": "jim-secret"}}});
    let second = put(Kind::Consumer, "jim", jim, 1).unwrap().runtime;
    let auth2 = second.consumers.resolve_after(None, &auth1);
    assert!(same(&auth1, &auth2, "test-key"));

    // Taken over, jack's key is still checked against the others.
    let clash =
        json!({"username": "joe", "plugins": {"jwt-auth": {"key": "test-key", "secret": "s"}}});
    let Err(WriteError::Invalid(msg)) = put(Kind::Consumer, "joe", clash, 2) else {
        panic!("accepted a second consumer with jack's key");
    };
    assert!(msg.contains("is used by another consumer"), "{msg}");

    let jack = json!({"username": "jack", "plugins": {"jwt-auth": {"key": "test-key", "secret": "new-secret"}}});
    let third = put(Kind::Consumer, "jack", jack, 3).unwrap().runtime;
    let auth3 = third.consumers.resolve_after(None, &auth2);
    assert!(
        !same(&auth2, &auth3, "test-key"),
        "jack's new secret was not taken"
    );
    assert!(same(&auth2, &auth3, "jim-key"));

    let snapshot = Arc::new(SecretSnapshot::from_proto(Default::default()));
    let auth4 = third.consumers.resolve_after(Some(&snapshot), &auth3);
    assert!(
        !same(&auth3, &auth4, "jim-key"),
        "a new snapshot was not resolved"
    );
    let auth5 = third.consumers.resolve_after(Some(&snapshot), &auth4);
    assert!(same(&auth4, &auth5, "jim-key"));
    // Resolved without a record of the snapshot: nothing is taken over from it.
    let plain = third.consumers.resolve(Some(&snapshot));
    assert!(!same(
        &plain,
        &third.consumers.resolve_after(Some(&snapshot), &plain),
        "jim-key"
    ));
}

/// A write that changes no consumer shares the consumer set, and with it the keys
/// resolved from it (the gateway keeps its auth state as it is); a consumer written or
/// deleted, or a reload, gives a new set.
#[test]
fn a_write_that_changes_no_consumer_shares_the_consumer_set() {
    use crate::consumers::AuthState;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut control = control(dir.path());
    let first = control.runtime(&env).unwrap();
    let auth = first.consumers.resolve_after(None, &AuthState::default());

    let new_route = json!({"uri": "/new", "upstream_id": "up"});
    let second = control
        .put(Kind::Route, "new", new_route, 1, &env)
        .unwrap()
        .runtime;
    assert!(Arc::ptr_eq(&first.consumers, &second.consumers));
    assert!(auth.is_resolution_of(&second.consumers, None));
    let up = json!({"id": "up", "nodes": {"127.0.0.1:3": 1}});
    let third = control
        .put(Kind::Upstream, "up", up, 2, &env)
        .unwrap()
        .runtime;
    assert!(Arc::ptr_eq(&second.consumers, &third.consumers));

    let jim = json!({"username": "jim", "plugins": {"jwt-auth": {"key": "jim-key", "secret": "jim-secret"}}});
    let fourth = control
        .put(Kind::Consumer, "jim", jim, 3, &env)
        .unwrap()
        .runtime;
    assert!(!Arc::ptr_eq(&third.consumers, &fourth.consumers));
    assert!(!auth.is_resolution_of(&fourth.consumers, None));

    let fifth = control.delete(Kind::Route, "new", &env).unwrap().runtime;
    assert!(Arc::ptr_eq(&fourth.consumers, &fifth.consumers));
    let sixth = control.delete(Kind::Consumer, "jim", &env).unwrap().runtime;
    assert!(!Arc::ptr_eq(&fifth.consumers, &sixth.consumers));
    let seventh = control.reload(Config::parse(FILE).unwrap(), &env).unwrap();
    assert!(!Arc::ptr_eq(&sixth.consumers, &seventh.consumers));
}

/// The dry run judges a resource as a write would, taking over from the runtime in
/// use, and changes nothing: the write after it still takes over from that runtime (a
/// route built onto the upstream another route already uses shares it).
#[test]
fn the_dry_run_judges_as_a_write_and_changes_nothing() {
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut control = control(dir.path());
    let first = control.runtime(&env).unwrap();
    let check = |control: &Control, kind, id, body| control.check(kind, id, body, &env).1;

    let body = json!({"uri": "/b", "upstream_id": "up"});
    assert!(check(&control, Kind::Route, "2", body.clone()).is_ok());
    let clash =
        json!({"username": "joe", "plugins": {"jwt-auth": {"key": "test-key", "secret": "s"}}});
    match check(&control, Kind::Consumer, "joe", clash) {
        Err(WriteError::Invalid(msg)) => {
            assert!(msg.contains("is used by another consumer"), "{msg}")
        }
        other => panic!("a second consumer with jack's key: {other:?}"),
    }
    let orphan = json!({"uri": "/c", "upstream_id": "missing"});
    match check(&control, Kind::Route, "3", orphan) {
        Err(WriteError::Invalid(msg)) => {
            assert!(msg.contains(r#"no upstream with id "missing""#), "{msg}")
        }
        other => panic!("a route onto a missing upstream: {other:?}"),
    }
    assert_eq!(control.catalog().entries(Kind::Route).len(), 1);
    assert_eq!(control.catalog().entries(Kind::Consumer).len(), 1);

    let second = control
        .put(Kind::Route, "2", body, 1, &env)
        .unwrap()
        .runtime;
    assert!(Arc::ptr_eq(&route(&first, "1"), &route(&second, "1")));
    assert!(Arc::ptr_eq(
        &route(&first, "1").upstream,
        &route(&second, "2").upstream
    ));
    assert!(Arc::ptr_eq(&first.consumers, &second.consumers));
}
