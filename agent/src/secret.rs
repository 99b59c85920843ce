//! Secret values as the agent holds them: zeroized on drop, never printed.
//!
//! Compact on purpose: the agent may hold tens of thousands of secrets, most with one
//! or two fields. A secret is one boxed slice of (name, value) pairs sorted by name
//! (binary search), each value one boxed byte slice: about 100 bytes of heap for a
//! one-field secret where a `BTreeMap<String, Vec<u8>>` took over 600 (a B-tree leaf
//! is allocated for 11 entries even when it holds one).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use zeroize::{Zeroize as _, Zeroizing};

/// One field's value. `Debug` prints only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldValue(Zeroizing<Box<[u8]>>);

impl FieldValue {
    /// Takes ownership of `bytes`; they are zeroized when the value is dropped (and a
    /// vector with spare capacity is zeroized whole once its bytes are moved out).
    pub fn new(mut bytes: Vec<u8>) -> Self {
        if bytes.len() == bytes.capacity() {
            return Self(Zeroizing::new(bytes.into_boxed_slice()));
        }
        // `into_boxed_slice` would shrink in place, where the allocator lets it, and
        // leave the spare capacity (which may hold earlier bytes) unwiped.
        let exact: Box<[u8]> = bytes.as_slice().into();
        bytes.zeroize();
        Self(Zeroizing::new(exact))
    }

    /// The value. Callers must not log or keep unzeroized copies of it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldValue(<redacted, {} bytes>)", self.0.len())
    }
}

/// The fields of one secret (`secret`, `public_key`, `private_key`, ...): sorted by
/// name, names unique.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretFields(Box<[(Box<str>, FieldValue)]>);

impl SecretFields {
    /// Sorts `pairs` by name; of two fields with one name the later one wins (as in
    /// a JSON object read into a map).
    fn from_pairs(mut pairs: Vec<(Box<str>, FieldValue)>) -> Self {
        // Stable: equal names keep their order, so the later one is the last of its run.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        Self(pairs.into_boxed_slice())
    }

    /// The fields, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Box<str>>> FromIterator<(K, FieldValue)> for SecretFields {
    fn from_iter<I: IntoIterator<Item = (K, FieldValue)>>(iter: I) -> Self {
        Self::from_pairs(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Deserializes a Vault `data` object straight into zeroizing values: string values
/// keep their bytes, anything else is kept as its JSON text.
impl<'de> Deserialize<'de> for SecretFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = SecretFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of secret fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretFields, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(key) = map.next_key::<String>()? {
                    let value: FieldValue = map.next_value()?;
                    fields.push((key.into_boxed_str(), value));
                }
                Ok(SecretFields::from_pairs(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = FieldValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret field value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue, E> {
                Ok(FieldValue::new(v.as_bytes().to_vec()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<FieldValue, E> {
                Ok(FieldValue::new(v.into_bytes()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldValue, E> {
                Ok(FieldValue::new(v.to_string().into_bytes()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldValue, E> {
                Ok(FieldValue::new(v.to_string().into_bytes()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldValue, E> {
                Ok(FieldValue::new(v.to_string().into_bytes()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FieldValue, E> {
                Ok(FieldValue::new(v.to_string().into_bytes()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<FieldValue, E> {
                Ok(FieldValue::new(b"null".to_vec()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldValue, A::Error> {
                let value =
                    serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(FieldValue::new(value.to_string().into_bytes()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<FieldValue, A::Error> {
                let value =
                    serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(FieldValue::new(value.to_string().into_bytes()))
            }
        }
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_strings_and_other_json_values() {
        let fields: SecretFields =
            serde_json::from_str(r#"{"secret":"s3\ncr3t","n":5,"b":true,"o":{"a":[1]}}"#).unwrap();
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.expose().to_vec())
                .unwrap()
        };
        assert_eq!(get("secret"), b"s3\ncr3t");
        assert_eq!(get("n"), b"5");
        assert_eq!(get("b"), b"true");
        assert_eq!(get("o"), br#"{"a":[1]}"#);
    }

    #[test]
    fn fields_are_sorted_unique_and_found_by_name() {
        let fields: SecretFields =
            serde_json::from_str(r#"{"b":"1","a":"2","c":"3","a":"4"}"#).unwrap();
        let names: Vec<&str> = fields.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // The later of two equal names wins, as it would in a map.
        assert_eq!(fields.get("a").unwrap().expose(), b"4");
        assert_eq!(fields.get("c").unwrap().expose(), b"3");
        assert!(fields.get("d").is_none());
        assert_eq!(fields.len(), 3);
    }

    #[test]
    fn values_keep_exactly_their_bytes() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"abc");
        assert_eq!(FieldValue::new(v).expose(), b"abc");
        assert_eq!(FieldValue::new(b"xyz".to_vec()).expose(), b"xyz");
        assert_eq!(FieldValue::new(Vec::new()).expose(), b"");
    }

    #[test]
    fn debug_shows_names_not_values() {
        let fields: SecretFields = serde_json::from_str(r#"{"secret":"hunter2-value"}"#).unwrap();
        let shown = format!("{fields:?} {:?}", fields.iter().next().unwrap().1);
        assert!(shown.contains("secret"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
