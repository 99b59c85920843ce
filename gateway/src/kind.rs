//! The four resource kinds the Admin API manages, with their names in URLs, in the
//! configuration file and in APISIX's etcd keys.

/// A kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `routes`, keyed by `id`.
    Route,
    /// `upstreams`, keyed by `id`.
    Upstream,
    /// `consumers`, keyed by `username`.
    Consumer,
    /// `ssls`, keyed by `id`.
    Ssl,
}

impl Kind {
    /// Every kind, in the order the store loads them.
    pub const ALL: [Self; 4] = [Self::Route, Self::Upstream, Self::Consumer, Self::Ssl];

    /// The plural used in URLs, file sections and store directories.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Route => "routes",
            Self::Upstream => "upstreams",
            Self::Consumer => "consumers",
            Self::Ssl => "ssls",
        }
    }

    /// The singular used in messages (APISIX's `kind`).
    pub fn singular(self) -> &'static str {
        match self {
            Self::Route => "route",
            Self::Upstream => "upstream",
            Self::Consumer => "consumer",
            Self::Ssl => "ssl",
        }
    }

    /// The field that holds the key in the resource's JSON.
    pub fn id_field(self) -> &'static str {
        match self {
            Self::Consumer => "username",
            Self::Route | Self::Upstream | Self::Ssl => "id",
        }
    }

    /// Parses the plural.
    pub fn from_plural(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.plural() == s)
    }

    /// APISIX's etcd key of a resource: `/apisix/routes/1`.
    pub fn key(self, id: &str) -> String {
        format!("/apisix/{}/{id}", self.plural())
    }

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            Self::Route => 0,
            Self::Upstream => 1,
            Self::Consumer => 2,
            Self::Ssl => 3,
        }
    }
}

/// APISIX's id rule (`^[a-zA-Z0-9-_.]+$`, at most 64 characters); usernames follow
/// the consumer rule (letters, digits, `_`, `-`, at most 100). Either way the id is
/// one safe file name in the store.
pub fn check_id(kind: Kind, id: &str) -> Result<(), String> {
    let (max, dots) = match kind {
        Kind::Consumer => (100, false),
        Kind::Route | Kind::Upstream | Kind::Ssl => (64, true),
    };
    if id.is_empty() || id.len() > max {
        return Err(format!("must be 1 to {max} characters"));
    }
    if id == "." || id == ".." || id.starts_with('.') {
        return Err(format!("{id:?} must not start with '.'"));
    }
    let ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (dots && b == b'.'));
    if !ok {
        let allowed = if dots {
            "letters, digits, '-', '_' and '.'"
        } else {
            "letters, digits, '-' and '_'"
        };
        return Err(format!("{id:?}: only {allowed} are allowed"));
    }
    Ok(())
}
