use std::os::unix::fs::PermissionsExt as _;

use serde_json::json;

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

fn record(id: &str, created: u64, modified: u64) -> Record {
    Record {
        id: id.to_owned(),
        created,
        modified,
        value: Some(crate::json_text::JsonText::new(
            &json!({ "id": id, "uri": "/x" }),
        )),
    }
}

#[test]
fn writes_private_files_and_loads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let mut store = Store::open(&state).unwrap();
        assert_eq!(store.next_revision(), 1);
        store.put(Kind::Route, record("1", 1, 1)).unwrap();
        store.put(Kind::Route, record("1", 1, 2)).unwrap();
        store
            .put(
                Kind::Consumer,
                Record {
                    id: "jack".into(),
                    created: 3,
                    modified: 3,
                    value: None,
                },
            )
            .unwrap();
        assert_eq!(store.revision(), 3);
    }
    for sub in [
        "admin",
        "admin/routes",
        "admin/upstreams",
        "admin/consumers",
    ] {
        assert_eq!(mode(&state.join(sub)), 0o700, "{sub}");
    }
    assert_eq!(mode(&state.join("admin/routes/1.json")), 0o600);
    assert_eq!(mode(&state.join("admin/lock")), 0o600);

    let store = Store::open(&state).unwrap();
    assert_eq!(store.revision(), 3);
    assert_eq!(store.get(Kind::Route, "1"), Some(&record("1", 1, 2)));
    assert_eq!(
        store.get(Kind::Consumer, "jack").map(|r| r.value.is_none()),
        Some(true)
    );
}

#[test]
fn a_delete_keeps_its_revision_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        store.put(Kind::Upstream, record("u", 1, 1)).unwrap();
        store.remove(Kind::Upstream, "u").unwrap();
        assert_eq!(store.revision(), 2);
        assert!(store.get(Kind::Upstream, "u").is_none());
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.revision(),
        2,
        "ids of POST must never be handed out twice"
    );
    assert_eq!(store.records(Kind::Upstream).count(), 0);
}

#[test]
fn leftovers_of_an_interrupted_write_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        store.put(Kind::Route, record("1", 1, 1)).unwrap();
    }
    let routes = dir.path().join("admin/routes");
    let tmp = atomic::tmp_path(&routes, "1.json");
    std::fs::write(&tmp, b"{\"id\":\"1\",\"createdIn").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.get(Kind::Route, "1"), Some(&record("1", 1, 1)));
    assert!(!tmp.exists());
}

#[test]
fn a_damaged_record_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let path = dir.path().join("admin/routes/1.json");
    std::fs::write(
        &path,
        b"{\"id\":\"2\",\"createdIndex\":1,\"modifiedIndex\":1}",
    )
    .unwrap();
    let err = Store::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("1.json") && err.contains("not the file's"),
        "{err}"
    );
    std::fs::write(&path, b"not json").unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn a_second_gateway_cannot_use_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(first);
    Store::open(dir.path()).unwrap();
}
