use serde_json::json;

use super::*;
use crate::config::RouteConfig;
use crate::store::Record;

fn file() -> Config {
    Config::parse(
        r#"
routes:
  - uri: /a
    upstream: { nodes: { "127.0.0.1:1": 1 } }
  - id: r2
    uri: /b
    upstream_id: up
upstreams:
  - id: up
    nodes: { "127.0.0.1:2": 1 }
consumers:
  - username: jack
    plugins: { jwt-auth: { key: k, secret: s3cret-value } }
"#,
    )
    .unwrap()
}

fn put(store: &mut Store, kind: Kind, id: &str, value: Option<Value>) {
    let revision = store.next_revision();
    store
        .put(
            kind,
            Record {
                id: id.into(),
                created: revision,
                modified: revision,
                value: value.as_ref().map(crate::json_text::JsonText::new),
            },
        )
        .unwrap();
}

#[test]
fn file_resources_show_with_their_ids() {
    let catalog = Catalog::build(&file(), None);
    let routes = catalog.entries(Kind::Route);
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].id, "0");
    assert_eq!(routes[0].json.value()["id"], "0");
    assert_eq!(routes[0].json.value()["uri"], "/a");
    assert_eq!(routes[0].origin, Origin::File(0));
    assert_eq!(
        catalog
            .get(Kind::Consumer, "jack")
            .map(|e| e.json.value()["username"].clone()),
        Some(json!("jack"))
    );
    assert_eq!(catalog.routes_using_upstream("up"), vec!["r2"]);
}

#[test]
fn admin_records_replace_hide_and_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    put(
        &mut store,
        Kind::Route,
        "z",
        Some(json!({"id": "z", "uri": "/z", "upstream_id": "up"})),
    );
    put(&mut store, Kind::Route, "0", None);
    put(
        &mut store,
        Kind::Route,
        "r2",
        Some(json!({"id": "r2", "uri": "/b2", "upstream_id": "up", "create_time": 1})),
    );
    put(
        &mut store,
        Kind::Route,
        "m",
        Some(json!({"id": "m", "uri": "/m", "upstream_id": "up"})),
    );
    let file = file();
    let catalog = Catalog::build(&file, Some(&store));
    let ids: Vec<_> = catalog
        .entries(Kind::Route)
        .iter()
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(ids, ["r2", "z", "m"], "file order first, then oldest first");
    assert_eq!(
        catalog.get(Kind::Route, "r2").map(|e| e.origin),
        Some(Origin::Admin)
    );

    let routes: Vec<RouteConfig> = catalog.typed(Kind::Route).unwrap();
    let uris: Vec<_> = routes
        .iter()
        .map(|r| r.uri.clone().unwrap_or_default())
        .collect();
    assert_eq!(uris, ["/b2", "/z", "/m"]);
    assert_eq!(catalog.entries(Kind::Consumer).len(), 1);
}

#[test]
fn errors_are_described_by_resource() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    put(&mut store, Kind::Route, "0", None);
    put(
        &mut store,
        Kind::Route,
        "bad",
        Some(json!({"id": "bad", "uri": "/x", "upstream": {"nodez": {}}})),
    );
    let file = file();
    let catalog = Catalog::build(&file, Some(&store));
    let ConfigError::Invalid { field, reason } =
        catalog.typed::<RouteConfig>(Kind::Route).unwrap_err()
    else {
        panic!("not an Invalid error");
    };
    assert_eq!(field, "routes[1].upstream.nodez");
    assert!(reason.contains("unknown field `nodez`"), "{reason}");
    assert_eq!(
        catalog.describe_field(&field, Some((Kind::Route, "bad"))),
        "upstream.nodez"
    );
    assert_eq!(
        catalog.describe_field(&field, None),
        "route \"bad\".upstream.nodez"
    );
    // routes[0] of the merge is the file's routes[1] (its routes[0] is hidden).
    assert_eq!(
        catalog.describe_field("routes[0].uri", None),
        "routes[1].uri"
    );
    assert_eq!(catalog.describe_field("agent", None), "agent");
}

#[test]
fn debug_shows_no_resource_json() {
    let entry = Entry::new(
        "jack",
        Origin::Admin,
        3,
        4,
        &json!({"username": "jack", "plugins": {"jwt-auth": {"secret": "s3cr3t-value"}}}),
    );
    let shown = format!(
        "{:?}",
        Catalog {
            lists: [vec![Arc::new(entry)], vec![], vec![], vec![]]
        }
    );
    assert!(shown.contains("jack"), "{shown}");
    assert!(!shown.contains("s3cr3t-value"), "{shown}");
}
