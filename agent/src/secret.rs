//! Secret values as the agent holds them: zeroized on drop, never printed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use zeroize::Zeroizing;

/// One field's value. `Debug` prints only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldValue(Zeroizing<Vec<u8>>);

impl FieldValue {
    /// Takes ownership of `bytes`; they are zeroized when the value is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
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

/// The fields of one secret (`secret`, `public_key`, `private_key`, ...).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretFields(BTreeMap<String, FieldValue>);

impl SecretFields {
    /// The fields, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &FieldValue)> {
        self.0.iter()
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

impl FromIterator<(String, FieldValue)> for SecretFields {
    fn from_iter<I: IntoIterator<Item = (String, FieldValue)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
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
                let mut fields = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: FieldValue = map.next_value()?;
                    fields.insert(key, value);
                }
                Ok(SecretFields(fields))
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
    fn debug_shows_names_not_values() {
        let fields: SecretFields = serde_json::from_str(r#"{"secret":"hunter2-value"}"#).unwrap();
        let shown = format!("{fields:?} {:?}", fields.iter().next().unwrap().1);
        assert!(shown.contains("secret"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
