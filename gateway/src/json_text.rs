//! A resource's JSON kept as compact text. A `serde_json::Value` tree costs a B-tree
//! node of about 600 bytes per object (three for a consumer or a route), so at 10 000
//! resources the trees were most of the gateway's memory. The text is parsed when a
//! runtime is built from it (start, reload, Admin API write) and when the Admin API
//! shows or changes a resource. The text holds literal secrets (a consumer's `secret`,
//! an SSL's `key`): it is zeroized when dropped, never reallocated, and `Debug` does not
//! show it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use zeroize::{Zeroize as _, Zeroizing};

/// Compact JSON text, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonText(Box<str>);

impl JsonText {
    /// `value` as text, written into a buffer of its exact size: a growing buffer would
    /// leave copies of the secrets in freed memory.
    pub fn new(value: &Value) -> Self {
        // A `Value` always serializes (its keys are strings); `null` stands in otherwise.
        let Ok(mut text) = to_exact_vec(value) else {
            return Self("null".into());
        };
        // Exactly full, so the conversion to a boxed slice does not reallocate.
        match String::from_utf8(std::mem::take(&mut *text)) {
            Ok(text) => Self(text.into_boxed_str()),
            Err(e) => {
                e.into_bytes().zeroize();
                Self("null".into())
            }
        }
    }

    /// The JSON, parsed (a copy the caller owns).
    pub fn value(&self) -> Value {
        // The text is JSON (written by `new` or validated when deserialized).
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// `f` of the JSON, parsed for it and wiped after.
    pub fn with_value<T>(&self, f: impl FnOnce(&Value) -> T) -> T {
        let value = self.value();
        let out = f(&value);
        crate::secrets::wipe(value);
        out
    }

    /// The JSON read straight into `T`, without a tree in between; an error comes with
    /// the path of the offending field.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, (String, String)> {
        let mut json = serde_json::Deserializer::from_str(&self.0);
        serde_path_to_error::deserialize(&mut json).map_err(crate::config::located)
    }

    /// Whether the JSON is an object.
    pub fn is_object(&self) -> bool {
        self.0.trim_start().starts_with('{')
    }
}

/// `value` as JSON bytes, written into a buffer of exactly their size (a growing buffer
/// leaves copies of what it held in freed memory), wiped when dropped.
pub fn to_exact_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Zeroizing<Vec<u8>>> {
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *bytes, value)?;
    Ok(bytes)
}

/// Counts what would be written.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for JsonText {
    fn drop(&mut self) {
        String::from(std::mem::take(&mut self.0)).zeroize();
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Written as the JSON itself, not as a string; borrowed, so no copy is made.
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Validated JSON text, kept as read (no tree is built).
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Self(raw.into()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn gives_back_the_json_it_was_given() {
        let value = json!({
            "id": "r1",
            "priority": -3,
            "weight": 1.5,
            // Floats that a fast, inexact parse gives back one bit off (serde_json
            // without `float_roundtrip` reads these back so).
            "drift": [1.0715660391465826e-75, -1.81996730402717e-179, -1.603964615428183e143],
            "timeout": {"connect": 0.30000000000000004, "send": 1.7976931348623157e308, "read": 5e-324},
            "big": 18_446_744_073_709_551_615_u64,
            "negative": -9_223_372_036_854_775_808_i64,
            "hosts": ["a.example", "b.example"],
            "plugins": {"jwt-auth": {}, "limit-count": {"count": 10, "key": null}},
            "enable_websocket": false,
        });
        let text = JsonText::new(&value);
        assert_eq!(text.value(), value);
        assert_eq!(text.clone().value(), value);
        assert!(text.is_object());
        assert!(!JsonText::new(&json!([1])).is_object());
    }

    #[test]
    fn serializes_as_json_and_reads_back_without_a_tree() {
        #[derive(Serialize, Deserialize)]
        struct Holder {
            value: JsonText,
        }
        let value = json!({"username": "jack", "plugins": {"jwt-auth": {"secret": "s3cr3t"}}});
        let written = serde_json::to_string(&Holder {
            value: JsonText::new(&value),
        })
        .unwrap();
        assert_eq!(
            written,
            r#"{"value":{"plugins":{"jwt-auth":{"secret":"s3cr3t"}},"username":"jack"}}"#
        );
        let read: Holder = serde_json::from_str(&written).unwrap();
        assert_eq!(read.value.value(), value);
        assert!(serde_json::from_str::<Holder>(r#"{"value": {"a": }"#).is_err());
    }

    #[test]
    fn debug_shows_no_json() {
        let text = JsonText::new(&json!({"secret": "s3cr3t-value"}));
        assert_eq!(format!("{text:?}"), "[REDACTED]");
    }
}
