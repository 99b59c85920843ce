//! Route matching with APISIX's rules, without scanning every route per request.
//!
//! Exact paths live in one hash map. Prefix paths (`/api/*`) live in a hash map keyed
//! by the prefix, and the router remembers the distinct prefix lengths: a request
//! probes one map entry per distinct length that fits its path, longest first, so the
//! cost depends on how many different prefix lengths exist (bounded by the path
//! length), not on the number of routes. Within one path, candidates are ordered by
//! `priority` (higher first, then configuration order) and the first whose methods and
//! hosts accept the request wins. Exact matches beat prefix matches, longer prefixes
//! beat shorter ones, as in lua-resty-radixtree.

use std::collections::HashMap;

use http::Method;

/// Why a route's matching rules are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No `uri`/`uris`.
    #[error("a route needs uri or uris")]
    NoPath,
    /// A path that does not start with `/`, or has `*` anywhere but at the end.
    #[error("{0:?}: must start with '/' and may only end with '*'")]
    BadPath(String),
    /// An unknown HTTP method.
    #[error("{0:?}: not an HTTP method")]
    BadMethod(String),
    /// A host pattern that is empty or has `*` anywhere but a leading `*.`.
    #[error("{0:?}: a host is a name, or '*.' followed by a name")]
    BadHost(String),
}

/// What a route matches on.
#[derive(Debug, Clone, Default)]
pub struct MatchSpec {
    /// Paths: exact, or prefixes ending in `*`.
    pub paths: Vec<String>,
    /// Methods (any if empty).
    pub methods: Vec<String>,
    /// Host patterns (any if empty).
    pub hosts: Vec<String>,
    /// Higher is tried first among routes of the same path.
    pub priority: i64,
}

#[derive(Debug)]
struct Filters {
    methods: Option<Vec<Method>>,
    hosts: Option<Vec<HostPattern>>,
}

#[derive(Debug)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    fn parse(raw: &str) -> Result<Self, RouteError> {
        let bad = || RouteError::BadHost(raw.to_owned());
        let lower = raw.to_ascii_lowercase();
        let (pattern, name) = match lower.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') => (Self::Suffix(rest.to_owned()), &rest[1..]),
            Some(_) => return Err(bad()),
            None => (Self::Exact(lower.clone()), lower.as_str()),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(bad());
        }
        Ok(pattern)
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

impl Filters {
    fn accept(&self, method: &Method, host: Option<&str>) -> bool {
        if let Some(methods) = &self.methods
            && !methods.contains(method)
        {
            return false;
        }
        match (&self.hosts, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(patterns), Some(host)) => patterns.iter().any(|p| p.matches(host)),
        }
    }
}

#[derive(Debug)]
struct Entry {
    route: usize,
    priority: i64,
}

/// Routes by path. foldhash rather than SipHash: a lookup hashes the request's path
/// once per distinct prefix length, and only configured paths are ever inserted, so
/// a client cannot choose colliding keys.
type PathMap = HashMap<String, Vec<Entry>, foldhash::fast::RandomState>;

/// The matcher, holding `T` for each route.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<(T, Filters)>,
    exact: PathMap,
    prefix: PathMap,
    /// Distinct prefix lengths, longest first.
    prefix_lens: Vec<usize>,
    /// Some route filters on hosts: only then is a request's host worked out (a hash
    /// lookup and a scan of the `Host` value, about 2 % of a proxied request).
    filters_hosts: bool,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            exact: PathMap::default(),
            prefix: PathMap::default(),
            prefix_lens: Vec::new(),
            filters_hosts: false,
        }
    }
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

impl<T> Router<T> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; routes added earlier win ties of priority.
    pub fn add(&mut self, spec: &MatchSpec, value: T) -> Result<(), RouteError> {
        if spec.paths.is_empty() {
            return Err(RouteError::NoPath);
        }
        let methods = spec
            .methods
            .iter()
            .map(|m| {
                let upper = m.to_ascii_uppercase();
                if METHODS.contains(&upper.as_str()) {
                    Method::from_bytes(upper.as_bytes())
                        .map_err(|_| RouteError::BadMethod(m.clone()))
                } else {
                    Err(RouteError::BadMethod(m.clone()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = spec
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()?;
        let mut parsed = Vec::with_capacity(spec.paths.len());
        for path in &spec.paths {
            if !path.starts_with('/') {
                return Err(RouteError::BadPath(path.clone()));
            }
            match path.find('*') {
                None => parsed.push((false, path.clone())),
                Some(at) if at == path.len() - 1 => parsed.push((true, path[..at].to_owned())),
                Some(_) => return Err(RouteError::BadPath(path.clone())),
            }
        }
        let index = self.routes.len();
        self.filters_hosts |= !hosts.is_empty();
        self.routes.push((
            value,
            Filters {
                methods: (!methods.is_empty()).then_some(methods),
                hosts: (!hosts.is_empty()).then_some(hosts),
            },
        ));
        for (is_prefix, path) in parsed {
            let map = if is_prefix {
                &mut self.prefix
            } else {
                &mut self.exact
            };
            if is_prefix && !self.prefix_lens.contains(&path.len()) {
                self.prefix_lens.push(path.len());
                self.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
            }
            let entries = map.entry(path).or_default();
            entries.push(Entry {
                route: index,
                priority: spec.priority,
            });
            // Stable: equal priorities keep configuration order.
            entries.sort_by_key(|e| std::cmp::Reverse(e.priority));
        }
        Ok(())
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True if there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Finds the route for a request's head: its method, path and, where a route filters
    /// on hosts, its host ([`request_host`]).
    pub fn route_for(&self, req: &http::request::Parts) -> Option<&T> {
        let host = if self.filters_hosts {
            request_host(req)
        } else {
            None
        };
        self.find(&req.method, host.as_deref(), req.uri.path())
    }

    /// Finds the route for a request. `host` is lower-case and without port.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&T> {
        if let Some(found) = self.pick(self.exact.get(path), method, host) {
            return Some(found);
        }
        for &len in &self.prefix_lens {
            let Some(prefix) = path.get(..len) else {
                continue;
            };
            if let Some(found) = self.pick(self.prefix.get(prefix), method, host) {
                return Some(found);
            }
        }
        None
    }

    fn pick(
        &self,
        entries: Option<&Vec<Entry>>,
        method: &Method,
        host: Option<&str>,
    ) -> Option<&T> {
        entries?.iter().find_map(|e| {
            let (value, filters) = self.routes.get(e.route)?;
            filters.accept(method, host).then_some(value)
        })
    }
}

/// The request's host for matching: the `Host` header (or the HTTP/2 authority),
/// lower-cased, port removed.
pub fn request_host(req: &http::request::Parts) -> Option<std::borrow::Cow<'_, str>> {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let without_port = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal.
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    // Hosts are almost always lower case already: no copy then.
    Some(if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(without_port)
    })
}

#[cfg(test)]
mod tests;
