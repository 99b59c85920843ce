//! The control plane: the configuration file, the Admin API's [`Store`] and the
//! [`Catalog`] merged from the two. Every change (a reload of the file, a write through
//! the Admin API) builds a complete new [`Runtime`] from the merge first; only a change
//! that builds is persisted and handed back to be swapped in. Anything else changes
//! nothing, on disk or in memory. A write shares the catalog entries it does not change,
//! and the build takes over what the runtime in use made of them
//! ([`Runtime::from_catalog`]): its cost is the changed resource plus the checks between
//! resources, not a parse and build of every one (at 10 000 routes and 10 000
//! consumers, a consumer `PUT` went from about 90 to 10 ms, a route `PUT` from 55 to 7).

use serde_json::Value;

use crate::catalog::{self, Catalog, Entry, Origin};
use crate::config::{Config, ConfigError, RawResources};
use crate::consumers::EnvLookup;
use crate::kind::Kind;
use crate::runtime::{Predecessor, Runtime};
use crate::secrets::wipe;
use crate::store::{Record, Store, StoreError};

/// Why an admin write was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The change does not validate (400); the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such resource (404).
    #[error("Key not found")]
    NotFound,
    /// The change is valid but would break another resource (400).
    #[error("{0}")]
    Conflict(String),
    /// The change could not be persisted (503); nothing changed.
    #[error("cannot persist the change: {0}")]
    Persist(#[from] StoreError),
    /// The Admin API is not enabled (no store).
    #[error("the Admin API has no state directory")]
    NoStore,
}

/// The result of a successful write: the runtime to swap in, and what the Admin API
/// answers.
#[derive(Debug)]
pub struct Written {
    /// The new runtime.
    pub runtime: Runtime,
    /// The entry as stored (`None` after a delete).
    pub entry: Option<Entry>,
    /// The resource did not exist before.
    pub created: bool,
}

/// The file, the store and their merge.
#[derive(Debug)]
pub struct Control {
    /// The file's settings; its resources live in the catalog only.
    file: Config,
    /// The ids of the file's resources of each kind (deleting one of them through the
    /// Admin API leaves a tombstone, so that the file's copy does not come back).
    file_ids: [Vec<String>; 4],
    store: Option<Store>,
    catalog: Catalog,
    /// The last runtime handed out, what the next build carries response counts and
    /// node state on from.
    predecessor: Predecessor,
}

impl Control {
    /// Starts from `file` and, with the Admin API enabled, its loaded `store`.
    pub fn new(mut file: Config, store: Option<Store>) -> Self {
        let catalog = Catalog::build(&file, store.as_ref());
        let file_ids = strip_resources(&mut file);
        Self {
            file,
            file_ids,
            store,
            catalog,
            predecessor: Predecessor::default(),
        }
    }

    /// The effective resources.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The store, if the Admin API is enabled.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The configuration file in effect: its settings. Its resources (typed lists and
    /// `Config::raw`) are empty; they are in the catalog only.
    pub fn file(&self) -> &Config {
        &self.file
    }

    /// Whether [`Self::put`] of `value` as resource `id` of `kind` would validate,
    /// without persisting or changing anything. `value` is handed back (it may hold
    /// credentials the caller wipes).
    pub fn check(
        &self,
        kind: Kind,
        id: &str,
        value: Value,
        env: EnvLookup<'_>,
    ) -> (Value, Result<(), WriteError>) {
        let mut candidate = self.catalog.clone();
        candidate.set(kind, Entry::new(id, Origin::Admin, 0, 0, &value));
        // Taking over from the runtime in use only shares what it has (nothing in it is
        // changed), so the dry run is as quick as the write.
        let result = build(
            &candidate,
            &self.file,
            env,
            &self.predecessor,
            Some((kind, id)),
        )
        .map(drop)
        .map_err(|(field, reason)| WriteError::Invalid(message(&field, &reason)));
        // The candidate's copy is wiped as it drops; the caller wipes this one.
        (value, result)
    }

    /// The runtime of the current state (start-up), handed out: the next build carries
    /// on from it.
    pub fn runtime(&mut self, env: EnvLookup<'_>) -> Result<Runtime, ConfigError> {
        let runtime = build(&self.catalog, &self.file, env, &self.predecessor, None)
            .map_err(|(field, reason)| ConfigError::Invalid { field, reason })?;
        Ok(self.hand_out(runtime))
    }

    /// Records `runtime` as the one in use, for the next build to carry on from.
    fn hand_out(&mut self, runtime: Runtime) -> Runtime {
        self.predecessor = Predecessor::of(&runtime);
        runtime
    }

    /// Takes a new configuration file. On success the state is updated and the runtime
    /// is returned to be swapped in; on error nothing changes.
    pub fn reload(&mut self, mut file: Config, env: EnvLookup<'_>) -> Result<Runtime, ConfigError> {
        let catalog = Catalog::build(&file, self.store.as_ref());
        // Wiped whether or not the new file is taken.
        let file_ids = strip_resources(&mut file);
        let runtime = build(&catalog, &file, env, &self.predecessor, None)
            .map_err(|(field, reason)| ConfigError::Invalid { field, reason })?;
        self.file = file;
        self.file_ids = file_ids;
        self.catalog = catalog;
        Ok(self.hand_out(runtime))
    }

    /// The id a `POST` gets: the next revision, zero-padded to 20 digits as APISIX does.
    pub fn generated_id(&self) -> String {
        let next = self.store.as_ref().map_or(1, Store::next_revision);
        format!("{next:020}")
    }

    /// Creates or replaces resource `id` of `kind` with `value` (a JSON object whose id
    /// field is already `id`). `now` is Unix seconds, for `create_time`/`update_time`.
    pub fn put(
        &mut self,
        kind: Kind,
        id: &str,
        mut value: Value,
        now: u64,
        env: EnvLookup<'_>,
    ) -> Result<Written, WriteError> {
        // `value` may hold credentials: wiped on every way out.
        let Some(store) = self.store.as_ref() else {
            wipe(value);
            return Err(WriteError::NoStore);
        };
        if let Err(e) = crate::tls::admin::check_stored(kind, &value) {
            wipe(value);
            return Err(WriteError::Invalid(e));
        }
        let revision = store.next_revision();
        let previous = self.catalog.get(kind, id);
        let created = match previous {
            Some(Entry {
                origin: Origin::Admin,
                created,
                ..
            }) => *created,
            _ => revision,
        };
        if let Value::Object(map) = &mut value {
            let create_time = previous
                .and_then(|p| p.json.with_value(|v| v.get("create_time").cloned()))
                .unwrap_or_else(|| Value::from(now));
            map.entry("create_time").or_insert(create_time);
            map.entry("update_time").or_insert_with(|| Value::from(now));
        }
        let entry = Entry::new(id, Origin::Admin, created, revision, &value);
        wipe(value);
        let existed = previous.is_some();
        let mut candidate = self.catalog.clone();
        candidate.set(kind, entry.clone());
        let runtime = build(
            &candidate,
            &self.file,
            env,
            &self.predecessor,
            Some((kind, id)),
        )
        .map_err(|(field, reason)| WriteError::Invalid(message(&field, &reason)))?;
        let store = self.store.as_mut().ok_or(WriteError::NoStore)?;
        store.put(
            kind,
            Record {
                id: id.to_owned(),
                created,
                modified: revision,
                value: Some(entry.json.clone()),
            },
        )?;
        self.catalog = candidate;
        Ok(Written {
            runtime: self.hand_out(runtime),
            entry: Some(entry),
            created: !existed,
        })
    }

    /// Deletes resource `id` of `kind`. A resource of the file (or one the Admin API
    /// replaced) is hidden by a tombstone, so the file's version does not come back.
    pub fn delete(
        &mut self,
        kind: Kind,
        id: &str,
        env: EnvLookup<'_>,
    ) -> Result<Written, WriteError> {
        let store = self.store.as_ref().ok_or(WriteError::NoStore)?;
        let previous = self.catalog.get(kind, id).ok_or(WriteError::NotFound)?;
        if kind == Kind::Upstream {
            let users = self.catalog.routes_using_upstream(id);
            if let Some(route) = users.first() {
                return Err(WriteError::Conflict(format!(
                    "can not delete this upstream, route [{route}] is still using it now"
                )));
            }
        }
        let created = previous.created;
        let revision = store.next_revision();
        let mut candidate = self.catalog.clone();
        candidate.remove(kind, id);
        let runtime = build(&candidate, &self.file, env, &self.predecessor, None).map_err(
            |(field, reason)| {
                WriteError::Conflict(format!(
                    "can not delete this {}: {}",
                    kind.singular(),
                    message(&field, &reason)
                ))
            },
        )?;
        let in_file = self
            .file_ids
            .get(kind.index())
            .is_some_and(|ids| ids.iter().any(|i| i == id));
        let store = self.store.as_mut().ok_or(WriteError::NoStore)?;
        if in_file {
            store.put(
                kind,
                Record {
                    id: id.to_owned(),
                    created,
                    modified: revision,
                    value: None,
                },
            )?;
        } else {
            store.remove(kind, id)?;
        }
        self.catalog = candidate;
        Ok(Written {
            runtime: self.hand_out(runtime),
            entry: None,
            created: false,
        })
    }
}

/// `invalid configuration: <field>: <reason>` (without the field when it is the whole
/// resource).
fn message(field: &str, reason: &str) -> String {
    if field.is_empty() {
        format!("invalid configuration: {reason}")
    } else {
        format!("invalid configuration: {field}: {reason}")
    }
}

/// Builds the runtime of `catalog` over `file`, carrying the response counts and node
/// state of `predecessor` on; an error comes as (field, reason) with the field described
/// relative to `focus`.
fn build(
    catalog: &Catalog,
    file: &Config,
    env: EnvLookup<'_>,
    predecessor: &Predecessor,
    focus: Option<(Kind, &str)>,
) -> Result<Runtime, (String, String)> {
    Runtime::from_catalog(catalog, file, env, predecessor).map_err(|e| match e {
        ConfigError::Invalid { field, reason } => (catalog.describe_field(&field, focus), reason),
        other => (String::new(), other.to_string()),
    })
}

/// Takes the file's resources out once the catalog holds them, and gives back their
/// ids. The catalog's JSON is what every runtime is built from (file entries are parsed
/// from it as the Admin API's are); kept, the typed lists and the file's JSON were two
/// more copies of every route and consumer (with 10 000 of each, about 13 MB resident). They may
/// hold literal credentials (`secret`, `private_key`): the JSON is wiped, the typed
/// credentials are `SecretString`s, zeroized as they drop.
fn strip_resources(file: &mut Config) -> [Vec<String>; 4] {
    let ids = Kind::ALL.map(|kind| catalog::file_ids(file, kind));
    file.routes = Vec::new();
    file.upstreams = Vec::new();
    file.consumers = Vec::new();
    file.ssls = Vec::new();
    file.raw = RawResources::default();
    ids
}

#[cfg(test)]
mod tests;
