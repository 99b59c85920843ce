//! The effective resources: the configuration file's `routes`, `upstreams` and
//! `consumers`, with the Admin API's records laid over them by id. A record replaces the
//! file's resource of the same id in place, a tombstone hides it, and the other records
//! come after the file's, oldest first. The file seeds; the Admin API overrides.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{Config, ConfigError, invalid, located, resource_field};
use crate::json_text::JsonText;
use crate::kind::Kind;
use crate::store::Store;

/// Where an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Position in the file's list.
    File(usize),
    /// The Admin API's store.
    Admin,
}

/// One effective resource. Its JSON is compact text (see [`JsonText`]), wiped when the
/// entry is dropped (a reload or an Admin API write replaces entries); `Debug` does not
/// show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its id (or username).
    pub id: String,
    /// Where it comes from.
    pub origin: Origin,
    /// Revision of the first admin write (0 for the file's).
    pub created: u64,
    /// Revision of the last admin write (0 for the file's).
    pub modified: u64,
    /// The JSON the Admin API shows (and merges `PATCH` bodies into).
    pub json: JsonText,
}

impl Entry {
    /// An entry showing `value`.
    pub fn new(id: &str, origin: Origin, created: u64, modified: u64, value: &Value) -> Self {
        Self {
            id: id.to_owned(),
            origin,
            created,
            modified,
            json: JsonText::new(value),
        }
    }
}

impl Entry {
    /// The resource, typed; an error names the field under `kind` and `position`
    /// (`routes[3].plugins...`).
    pub fn parse<T: DeserializeOwned>(
        &self,
        kind: Kind,
        position: usize,
    ) -> Result<T, ConfigError> {
        let parsed = match self.origin {
            // Written from the parsed file, so without the Admin API's bookkeeping
            // fields: read straight from the text, no tree between.
            Origin::File(_) => self.json.deserialize(),
            Origin::Admin => self.json.with_value(parse),
        };
        parsed.map_err(|(path, reason)| {
            invalid(resource_field(kind.plural(), position, &path), reason)
        })
    }
}

/// The effective resources of each kind, in order. Entries are shared: a write copies
/// the lists (a pointer per entry, not the JSON), and a runtime remembers which entry
/// each of its routes, upstreams and consumers was built from, so that the next build
/// takes over what an unchanged entry gave (see [`crate::runtime::Predecessor`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    lists: [Vec<Arc<Entry>>; 4],
}

/// Fields the Admin API keeps in a resource's JSON that the configuration has no use for.
const BOOKKEEPING: [&str; 2] = ["create_time", "update_time"];

impl Catalog {
    /// The file's resources with `store`'s records over them.
    pub fn build(file: &Config, store: Option<&Store>) -> Self {
        let mut catalog = Self::default();
        for kind in Kind::ALL {
            let list = file_entries(file, kind);
            if let Some(slot) = catalog.lists.get_mut(kind.index()) {
                *slot = list;
            }
            let Some(store) = store else { continue };
            let mut records: Vec<_> = store.records(kind).collect();
            records.sort_by_key(|r| (r.created, r.modified));
            for record in records {
                match &record.value {
                    Some(json) => catalog.set(
                        kind,
                        Entry {
                            id: record.id.clone(),
                            origin: Origin::Admin,
                            created: record.created,
                            modified: record.modified,
                            json: json.clone(),
                        },
                    ),
                    None => {
                        catalog.remove(kind, &record.id);
                    }
                }
            }
        }
        catalog
    }

    /// The entries of `kind`, in order.
    pub fn entries(&self, kind: Kind) -> &[Arc<Entry>] {
        self.lists.get(kind.index()).map_or(&[], Vec::as_slice)
    }

    /// The entry of `kind` with this id.
    pub fn get(&self, kind: Kind, id: &str) -> Option<&Entry> {
        self.entries(kind).iter().find(|e| e.id == id).map(|e| &**e)
    }

    /// Replaces the entry with the same id in place, or appends.
    pub fn set(&mut self, kind: Kind, entry: Entry) {
        let Some(list) = self.lists.get_mut(kind.index()) else {
            return;
        };
        match list.iter_mut().find(|e| e.id == entry.id) {
            Some(slot) => *slot = Arc::new(entry),
            None => list.push(Arc::new(entry)),
        }
    }

    /// Removes the entry with this id; returns it.
    pub fn remove(&mut self, kind: Kind, id: &str) -> Option<Arc<Entry>> {
        let list = self.lists.get_mut(kind.index())?;
        let pos = list.iter().position(|e| e.id == id)?;
        Some(list.remove(pos))
    }

    /// Every entry of `kind`, typed (parsed from its JSON, as [`Entry::parse`]).
    pub fn typed<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>, ConfigError> {
        self.entries(kind)
            .iter()
            .enumerate()
            .map(|(i, entry)| entry.parse(kind, i))
            .collect()
    }

    /// Rewrites a field path of the merged configuration (`routes[3].plugins...`) in
    /// terms a reader can find: relative to `focus` (the resource being written) when it
    /// is that one, else `route "7".plugins...` for a resource of the Admin API, or the
    /// position in the file for one of the file's.
    pub fn describe_field(&self, field: &str, focus: Option<(Kind, &str)>) -> String {
        let Some((kind, index, rest)) = split_field(field) else {
            return field.to_owned();
        };
        let Some(entry) = self.entries(kind).get(index) else {
            return field.to_owned();
        };
        if focus == Some((kind, entry.id.as_str())) {
            return rest.trim_start_matches('.').to_owned();
        }
        match entry.origin {
            Origin::File(j) => format!("{}[{j}]{rest}", kind.plural()),
            Origin::Admin => format!("{} {:?}{rest}", kind.singular(), entry.id),
        }
    }

    /// Routes that use upstream `id` through `upstream_id`.
    pub fn routes_using_upstream(&self, id: &str) -> Vec<&str> {
        self.entries(Kind::Route)
            .iter()
            .filter(|e| e.json.with_value(upstream_ref).as_deref() == Some(id))
            .map(|e| e.id.as_str())
            .collect()
    }

    /// The highest revision of any entry.
    pub fn max_revision(&self) -> u64 {
        self.lists
            .iter()
            .flatten()
            .map(|e| e.modified)
            .max()
            .unwrap_or(0)
    }
}

/// `upstream_id` of a route's JSON, as a string (APISIX accepts numbers).
fn upstream_ref(value: &Value) -> Option<String> {
    match value.get("upstream_id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `routes[12].rest` -> (Route, 12, ".rest").
fn split_field(field: &str) -> Option<(Kind, usize, &str)> {
    let (plural, tail) = field.split_once('[')?;
    let kind = Kind::from_plural(plural)?;
    let (index, rest) = tail.split_once(']')?;
    Some((kind, index.parse().ok()?, rest))
}

/// Deserializes a resource's JSON (without the Admin API's bookkeeping fields); an error
/// comes with the path of the offending field.
pub fn parse<T: DeserializeOwned>(value: &Value) -> Result<T, (String, String)> {
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        for field in BOOKKEEPING {
            map.remove(field);
        }
    }
    serde_path_to_error::deserialize(value).map_err(located)
}

/// The ids of the file's resources of `kind`, in file order (a position where a
/// resource has no id).
pub fn file_ids(file: &Config, kind: Kind) -> Vec<String> {
    let by_position = |i: usize, id: &Option<String>| id.clone().unwrap_or_else(|| i.to_string());
    match kind {
        Kind::Route => file
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| by_position(i, &r.id))
            .collect(),
        Kind::Upstream => file
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| by_position(i, &u.id))
            .collect(),
        Kind::Consumer => file.consumers.iter().map(|c| c.username.clone()).collect(),
        Kind::Ssl => file
            .ssls
            .iter()
            .enumerate()
            .map(|(i, s)| by_position(i, &s.id))
            .collect(),
    }
}

/// The file's resources of `kind` as entries.
fn file_entries(file: &Config, kind: Kind) -> Vec<Arc<Entry>> {
    let ids = file_ids(file, kind);
    let raw: &[Value] = match kind {
        Kind::Route => &file.raw.routes,
        Kind::Upstream => &file.raw.upstreams,
        Kind::Consumer => &file.raw.consumers,
        Kind::Ssl => &file.raw.ssls,
    };
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let mut value = raw
            .get(i)
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(map) = &mut value {
            // An upstream the file gives no id keeps none: routes find upstreams by id,
            // and the runtime build refuses it (`upstreams[i].id: required`).
            let unnamed_upstream =
                kind == Kind::Upstream && map.get(kind.id_field()).is_none_or(Value::is_null);
            if !unnamed_upstream {
                map.insert(kind.id_field().to_owned(), Value::String(id.clone()));
            }
        }
        // Duplicate ids are kept: the runtime build reports them.
        out.push(Arc::new(Entry::new(id, Origin::File(i), 0, 0, &value)));
        crate::secrets::wipe(value);
    }
    out
}

#[cfg(test)]
mod tests;
