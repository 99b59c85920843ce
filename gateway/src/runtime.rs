//! The structures the request path reads, built from a [`Config`] in one go. Building
//! is also validation: `check-config`, start-up and reloads all go through
//! [`Runtime::build`], and any error names the offending field.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

// The build's maps are keyed by configured names and addresses, not by what clients
// send: foldhash, not SipHash (which was a tenth of an Admin API write at 10 000).
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use secrecy::ExposeSecret as _;

use crate::auth::RouteAuth;
use crate::basic_auth::BasicAuthRoute;
use crate::catalog::{Catalog, Entry};
use crate::config::{Config, ConfigError, RouteConfig, SslConfig, UpstreamConfig, invalid};
use crate::consumers::{AdminKey, ConsumerSet, EnvLookup};
use crate::jwt_auth::JwtAuthRoute;
use crate::key_auth::KeyAuthRoute;
use crate::kind::Kind;
use crate::router::{MatchSpec, Router};
use crate::secrets::SecretSnapshot;
use crate::tls::{ServerCerts, TlsSpec};
use crate::upstream::Upstream;

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// `id` from the configuration (or the position in the list).
    pub id: Arc<str>,
    /// The authentication plugin, if any.
    pub auth: Option<RouteAuth>,
    /// Where requests go.
    pub upstream: Arc<Upstream>,
    /// Responses by status class, for metrics.
    pub responses: Arc<ResponseCounts>,
    /// What it was built from, for the next build to take it over.
    source: RouteSource,
}

/// The catalog entry a route was built from, and what the router matches it on (`None`
/// while the route is disabled, `status: 0`).
#[derive(Debug)]
struct RouteSource {
    entry: Arc<Entry>,
    spec: Option<MatchSpec>,
}

impl Route {
    /// Counts a response.
    pub fn count(&self, status: u16) {
        self.responses.count(status);
    }
}

/// A route's responses by status class (1xx..5xx), a Prometheus counter. A rebuild (an
/// Admin API write, a reload) hands a route's counts to the route of the same id in the
/// new runtime, so that the counter does not fall back to zero for every route on any
/// write, and requests still finishing on the old runtime count into the same place.
#[derive(Debug, Default)]
pub struct ResponseCounts([AtomicU64; 5]);

impl ResponseCounts {
    fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(c) = self.0.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts of 1xx, 2xx, 3xx, 4xx and 5xx.
    pub fn by_class(&self) -> [u64; 5] {
        self.0.each_ref().map(|c| c.load(Ordering::Relaxed))
    }
}

/// Everything derived from one configuration.
#[derive(Debug)]
pub struct Runtime {
    /// Route matching.
    pub router: Router<Arc<Route>>,
    /// All routes in configuration order (metrics).
    pub routes: Vec<Arc<Route>>,
    /// Consumers and where their keys come from.
    pub consumers: Arc<ConsumerSet>,
    /// `plugin_attr.jwt-auth.sign_endpoint`.
    pub sign_endpoint: bool,
    /// Log each request.
    pub access_log: bool,
    /// The `ssls` the HTTPS listener serves.
    pub tls: TlsSpec,
    /// Upstreams with `scheme: https` (their TLS material follows the snapshots).
    pub tls_upstreams: Vec<Arc<Upstream>>,
    /// The `upstreams` list (what the next build takes node state over from).
    pub upstreams: Vec<Arc<Upstream>>,
}

/// What a build carries on from the runtime it replaces ([`Runtime::build`]).
#[derive(Debug, Default)]
pub struct Predecessor {
    routes: Vec<Arc<Route>>,
    upstreams: Vec<Arc<Upstream>>,
    consumers: Arc<ConsumerSet>,
}

impl Predecessor {
    /// `runtime`'s routes and upstreams (shared, not copied).
    pub fn of(runtime: &Runtime) -> Self {
        Self {
            routes: runtime.routes.clone(),
            upstreams: runtime.upstreams.clone(),
            consumers: runtime.consumers.clone(),
        }
    }
}

impl Runtime {
    /// Validates `config` and builds the runtime (its resources go through a
    /// [`Catalog`] of their own, as the control plane's do). `env` resolves `$env://`
    /// references. See [`Self::from_catalog`] for what passes on from `predecessor`.
    pub fn build(
        config: &Config,
        env: EnvLookup<'_>,
        predecessor: &Predecessor,
    ) -> Result<Self, ConfigError> {
        Self::from_catalog(&Catalog::build(config, None), config, env, predecessor)
    }

    /// Validates `catalog`'s resources over `file`'s settings and builds the runtime.
    ///
    /// From `predecessor` (the runtime this one replaces; empty at start): a route or an
    /// upstream or a consumer built from the very same catalog entry (an Admin API write
    /// shares the entries it does not change) is taken over as it is, not parsed and
    /// built again,
    /// with its counters, node state, round-robin position and verified tokens; a route
    /// only while its upstream is the same object and its `anonymous_consumer` still
    /// exists. Otherwise a route's [`ResponseCounts`] pass to the route of the same id,
    /// and node state ([`Upstream::adopt_state`]) to the upstream of the same id, or for
    /// an inline upstream to the inline upstream of the route of the same id. The
    /// checks between resources (duplicate ids, references) run on every build.
    pub fn from_catalog(
        catalog: &Catalog,
        file: &Config,
        env: EnvLookup<'_>,
        predecessor: &Predecessor,
    ) -> Result<Self, ConfigError> {
        let previous_upstreams: HashMap<&str, &Upstream> = predecessor
            .upstreams
            .iter()
            .filter_map(|up| Some((up.id.as_deref()?, &**up)))
            .collect();
        let upstream_of_entry: HashMap<*const Entry, &Arc<Upstream>> = predecessor
            .upstreams
            .iter()
            .filter_map(|up| Some((Arc::as_ptr(up.source.as_ref()?), up)))
            .collect();
        let previous: HashMap<&str, &Route> = predecessor
            .routes
            .iter()
            .map(|route| (&*route.id, &**route))
            .collect();
        let route_of_entry: HashMap<*const Entry, &Arc<Route>> = predecessor
            .routes
            .iter()
            .map(|route| (Arc::as_ptr(&route.source.entry), route))
            .collect();
        let consumers = ConsumerSet::from_catalog(
            catalog.entries(Kind::Consumer),
            file.admin.as_ref().map(|admin| AdminKey {
                raw: admin.key.expose_secret(),
                loopback: admin.listen.ip().is_loopback(),
            }),
            env,
            &predecessor.consumers,
        )?;
        if let Some(admin) = &file.admin {
            if admin.max_body == 0 {
                return Err(invalid("admin.max_body", "must be above 0"));
            }
            if admin.vault_write_through && file.agent.is_none() {
                return Err(invalid(
                    "admin.vault_write_through",
                    "needs agent: credentials are written to Vault through the agent",
                ));
            }
        }
        if file.agent.is_none() && consumers.agent_name_iter().next().is_some() {
            return Err(invalid(
                "agent",
                "required: credentials come from the agent (vault: {} or $secret://)",
            ));
        }
        if let Some(agent) = &file.agent
            && (agent.backoff_min.is_zero() || agent.backoff_min > agent.backoff_max)
        {
            return Err(invalid(
                "agent.backoff_min",
                "must be above 0 and at most backoff_max",
            ));
        }

        let mut upstreams: HashMap<Arc<str>, Arc<Upstream>> = HashMap::new();
        for (i, entry) in catalog.entries(Kind::Upstream).iter().enumerate() {
            let upstream = match upstream_of_entry.get(&Arc::as_ptr(entry)) {
                Some(&same) => same.clone(),
                None => {
                    let conf: UpstreamConfig = entry.parse(Kind::Upstream, i)?;
                    let at = format!("upstreams[{i}]");
                    let id = conf
                        .id
                        .as_deref()
                        .ok_or_else(|| invalid(format!("{at}.id"), "required"))?;
                    let mut upstream = Upstream::build(&conf, &at, env)?;
                    upstream.id = Some(Arc::from(id));
                    upstream.source = Some(entry.clone());
                    if let Some(before) = previous_upstreams.get(id) {
                        upstream.adopt_state(before);
                    }
                    Arc::new(upstream)
                }
            };
            let Some(id) = upstream.id.clone() else {
                continue;
            };
            if upstreams.insert(id.clone(), upstream).is_some() {
                return Err(invalid(
                    format!("upstreams[{i}].id"),
                    format!("duplicate upstream id {id:?}"),
                ));
            }
        }

        let mut tls_upstreams: Vec<Arc<Upstream>> = upstreams
            .values()
            .filter(|u| u.tls.is_some())
            .cloned()
            .collect();
        let mut router = Router::new();
        let route_entries = catalog.entries(Kind::Route);
        let mut routes = Vec::with_capacity(route_entries.len());
        let mut ids = HashSet::with_capacity(route_entries.len());
        for (i, entry) in route_entries.iter().enumerate() {
            let taken_over = route_of_entry
                .get(&Arc::as_ptr(entry))
                .filter(|before| still_valid(before, &upstreams, &consumers));
            let route = match taken_over {
                Some(&same) => {
                    if same.upstream.id.is_none() && same.upstream.tls.is_some() {
                        tls_upstreams.push(same.upstream.clone());
                    }
                    same.clone()
                }
                None => {
                    let conf: RouteConfig = entry.parse(Kind::Route, i)?;
                    build_route(
                        &conf,
                        entry,
                        i,
                        env,
                        &upstreams,
                        &consumers,
                        &previous,
                        &mut tls_upstreams,
                    )?
                }
            };
            if !ids.insert(route.id.clone()) {
                return Err(invalid(
                    format!("routes[{i}].id"),
                    format!("duplicate route id {:?}", route.id),
                ));
            }
            if let Some(spec) = &route.source.spec {
                // Checked when the route was built, where the field is known.
                router
                    .add(spec, route.clone())
                    .map_err(|e| invalid(format!("routes[{i}]"), e.to_string()))?;
            }
            routes.push(route);
        }
        let mut ssls: Vec<SslConfig> = catalog.typed(Kind::Ssl)?;
        for (ssl, entry) in ssls.iter_mut().zip(catalog.entries(Kind::Ssl)) {
            // Ids by position would shift when an entry before is hidden.
            ssl.id = Some(entry.id.clone());
        }
        let tls = TlsSpec::build(&ssls, file.tls.as_ref(), env)?;
        drop(ssls);
        let runtime = Self {
            router,
            routes,
            consumers,
            sign_endpoint: file.plugin_attr.jwt_auth.sign_endpoint,
            access_log: file.access_log,
            tls,
            tls_upstreams,
            upstreams: upstreams.into_values().collect(),
        };
        if file.agent.is_none() && !runtime.agent_names().is_empty() {
            return Err(invalid(
                "agent",
                "required: certificates or keys come from the agent ($secret:// or pki:)",
            ));
        }
        Ok(runtime)
    }

    /// Every agent name this configuration needs (sorted, unique): consumers'
    /// credentials, certificates and upstream TLS material.
    pub fn agent_names(&self) -> Vec<String> {
        // Borrowed until the end: each name is copied once (10 000 consumers' names on
        // every Admin API write).
        let mut names: std::collections::BTreeSet<&str> =
            self.consumers.agent_name_iter().collect();
        names.extend(self.tls.agent_names());
        for upstream in &self.tls_upstreams {
            if let Some(tls) = &upstream.tls {
                names.extend(tls.agent_names());
            }
        }
        names.into_iter().map(str::to_owned).collect()
    }

    /// Resolves the TLS material against `snapshot`: upstreams take theirs for new
    /// connections; the listener's certificates are returned, to be swapped in.
    pub fn resolve_tls(
        &self,
        snapshot: Option<&SecretSnapshot>,
        previous: Option<&ServerCerts>,
    ) -> ServerCerts {
        let now = crate::tls::unix_now();
        for upstream in &self.tls_upstreams {
            if let Some(tls) = &upstream.tls {
                tls.resolve(snapshot, now);
            }
        }
        self.tls.resolve(snapshot, previous, now)
    }
}

/// Whether a route built before from the same entry can be taken over: the upstream it
/// names is still the same object, and its `anonymous_consumer` still exists.
fn still_valid(
    route: &Route,
    upstreams: &HashMap<Arc<str>, Arc<Upstream>>,
    consumers: &ConsumerSet,
) -> bool {
    let upstream_same = match &route.upstream.id {
        Some(id) => upstreams
            .get(id)
            .is_some_and(|now| Arc::ptr_eq(now, &route.upstream)),
        None => true,
    };
    let anonymous_exists = route
        .auth
        .as_ref()
        .and_then(RouteAuth::anonymous)
        .is_none_or(|name| consumers.has_username(name));
    upstream_same && anonymous_exists
}

/// Builds route `i` of the catalog from its configuration `conf` (parsed from `entry`),
/// checking what concerns it alone; its node state and counts pass on from `previous`
/// by route id.
#[expect(
    clippy::too_many_arguments,
    reason = "one route's build: its source, and the parts of the runtime built before it"
)]
fn build_route(
    conf: &RouteConfig,
    entry: &Arc<Entry>,
    i: usize,
    env: EnvLookup<'_>,
    upstreams: &HashMap<Arc<str>, Arc<Upstream>>,
    consumers: &ConsumerSet,
    previous: &HashMap<&str, &Route>,
    tls_upstreams: &mut Vec<Arc<Upstream>>,
) -> Result<Arc<Route>, ConfigError> {
    let at = format!("routes[{i}]");
    let id: Arc<str> = Arc::from(entry.id.as_str());
    let upstream = match (&conf.upstream, &conf.upstream_id) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{at}.upstream_id"),
                "give either upstream or upstream_id, not both",
            ));
        }
        (Some(up), None) => {
            let mut inline = Upstream::build(up, &format!("{at}.upstream"), env)?;
            if let Some(before) = previous.get(&*id)
                && before.upstream.id.is_none()
            {
                inline.adopt_state(&before.upstream);
            }
            let inline = Arc::new(inline);
            if inline.tls.is_some() {
                tls_upstreams.push(inline.clone());
            }
            inline
        }
        (None, Some(ref_id)) => upstreams.get(ref_id.as_str()).cloned().ok_or_else(|| {
            invalid(
                format!("{at}.upstream_id"),
                format!("no upstream with id {ref_id:?}"),
            )
        })?,
        (None, None) => {
            return Err(invalid(
                format!("{at}.upstream"),
                "required (or upstream_id)",
            ));
        }
    };
    let plugins = &conf.plugins;
    let auth = match (&plugins.jwt_auth, &plugins.key_auth, &plugins.basic_auth) {
        (None, None, None) => None,
        (Some(j), None, None) => Some(RouteAuth::Jwt(JwtAuthRoute::build(
            j,
            consumers,
            &format!("{at}.plugins.jwt-auth"),
        )?)),
        (None, Some(k), None) => Some(RouteAuth::Key(KeyAuthRoute::build(
            k,
            consumers,
            &format!("{at}.plugins.key-auth"),
        )?)),
        (None, None, Some(b)) => Some(RouteAuth::Basic(BasicAuthRoute::build(
            b,
            consumers,
            &format!("{at}.plugins.basic-auth"),
        )?)),
        _ => {
            return Err(invalid(
                format!("{at}.plugins"),
                "at most one authentication plugin per route",
            ));
        }
    };
    let (paths, paths_field) = match (&conf.uri, conf.uris.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                format!("{at}.uris"),
                "give either uri or uris, not both",
            ));
        }
        (Some(uri), true) => (vec![uri.clone()], "uri"),
        (None, empty) => (conf.uris.clone(), if empty { "uri" } else { "uris" }),
    };
    let hosts = match (&conf.host, conf.hosts.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                format!("{at}.hosts"),
                "give either host or hosts, not both",
            ));
        }
        (Some(host), true) => vec![host.clone()],
        (None, _) => conf.hosts.clone(),
    };
    let spec = MatchSpec {
        paths,
        methods: conf.methods.clone(),
        hosts,
        priority: conf.priority,
    };
    if conf.status > 1 {
        return Err(invalid(format!("{at}.status"), "must be 0 or 1"));
    }
    let enabled = conf.status == 1;
    if enabled {
        // The runtime's router takes the route later, in configuration order; the
        // rules are checked here, where the field they came from is known.
        Router::new().add(&spec, ()).map_err(|e| {
            let field = match e {
                crate::router::RouteError::BadMethod(_) => "methods",
                crate::router::RouteError::BadHost(_) if conf.host.is_some() => "host",
                crate::router::RouteError::BadHost(_) => "hosts",
                _ => paths_field,
            };
            invalid(format!("{at}.{field}"), e.to_string())
        })?;
    }
    let responses = previous
        .get(&*id)
        .map_or_else(Default::default, |before| Arc::clone(&before.responses));
    Ok(Arc::new(Route {
        id,
        auth,
        upstream,
        responses,
        source: RouteSource {
            entry: entry.clone(),
            spec: enabled.then_some(spec),
        },
    }))
}
