//! The JSON objects of a token (header and claims set), parsed strictly: a member named
//! twice makes the object invalid instead of the last one silently winning.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::Malformed;

/// Parses `bytes` as one JSON object whose members all have distinct names.
pub(super) fn parse(bytes: &[u8]) -> Result<Map<String, Value>, Malformed> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let map = de.deserialize_map(UniqueMembers).map_err(|_| Malformed)?;
    de.end().map_err(|_| Malformed)?;
    Ok(map)
}

struct UniqueMembers;

impl<'de> Visitor<'de> for UniqueMembers {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with distinct member names")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            if map.contains_key(&name) {
                return Err(de::Error::custom("duplicate member name"));
            }
            let value: Value = access.next_value()?;
            map.insert(name, value);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_with_distinct_members_parse() {
        let map = parse(br#"{"a":1,"b":{"a":2,"a":3},"c":"x"}"#).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map["c"], "x");
    }

    #[test]
    fn duplicates_and_non_objects_are_refused() {
        for bad in [
            &br#"{"a":1,"a":1}"#[..],
            br#"{"alg":"HS256","alg":"none"}"#,
            br#"{"a":1,"\u0061":2}"#,
            b"[1]",
            b"\"x\"",
            b"{} {}",
            b"{",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
