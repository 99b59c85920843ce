//! `PATCH` bodies: a JSON merge patch (RFC 7396: objects merge key by key, `null`
//! removes a key, anything else replaces), or a value for one attribute named by the
//! sub-path of the URL (`PATCH /apisix/admin/routes/1/upstream/nodes`).

use serde_json::Value;

/// Applies `patch` to `target` (RFC 7396).
pub fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in patch {
                    if value.is_null() {
                        map.remove(&key);
                    } else {
                        merge(map.entry(key).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other,
    }
}

/// Replaces the attribute at `path` (object keys, from the top) with `value`. Every
/// object on the way must exist; the last key may be new.
pub fn set_path(target: &mut Value, path: &[&str], value: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty sub path".to_owned());
    };
    let mut node = target;
    for (depth, key) in parents.iter().enumerate() {
        node = match node {
            Value::Object(map) => map.get_mut(*key).ok_or_else(|| {
                format!(
                    "invalid sub path: {} does not exist",
                    path.get(..=depth).unwrap_or_default().join("/")
                )
            })?,
            _ => return Err(format!("invalid sub path: {key:?} is not inside an object")),
        };
    }
    match node {
        Value::Object(map) => {
            map.insert((*last).to_owned(), value);
            Ok(())
        }
        _ => Err(format!(
            "invalid sub path: {last:?} is not inside an object"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(
            &mut doc,
            json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }

    #[test]
    fn sub_path_replaces_one_attribute() {
        let mut doc = json!({"upstream": {"nodes": {"a:1": 1}, "type": "roundrobin"}});
        set_path(&mut doc, &["upstream", "nodes"], json!({"b:2": 3})).unwrap();
        assert_eq!(
            doc,
            json!({"upstream": {"nodes": {"b:2": 3}, "type": "roundrobin"}})
        );
        set_path(&mut doc, &["methods"], json!(["GET"])).unwrap();
        assert_eq!(doc["methods"], json!(["GET"]));
        let err = set_path(&mut doc, &["plugins", "jwt-auth"], json!({})).unwrap_err();
        assert!(err.contains("plugins does not exist"), "{err}");
        assert!(set_path(&mut doc, &["methods", "x"], json!(1)).is_err());
    }
}
