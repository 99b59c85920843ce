//! The structures the request path reads, built from a [`Config`] in one go. Building
//! is also validation: `check-config`, start-up and reloads all go through
//! [`Runtime::build`], and any error names the offending field.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::ExposeSecret as _;

use crate::auth::RouteAuth;
use crate::basic_auth::BasicAuthRoute;
use crate::config::{Config, ConfigError, invalid};
use crate::consumers::{ConsumerSet, EnvLookup};
use crate::jwt_auth::JwtAuthRoute;
use crate::key_auth::KeyAuthRoute;
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
}

impl Predecessor {
    /// `runtime`'s routes and upstreams (shared, not copied).
    pub fn of(runtime: &Runtime) -> Self {
        Self {
            routes: runtime.routes.clone(),
            upstreams: runtime.upstreams.clone(),
        }
    }
}

impl Runtime {
    /// Validates `config` and builds the runtime. `env` resolves `$env://` references.
    /// From `predecessor` (the runtime this one replaces; empty at start) a route's
    /// [`ResponseCounts`] pass to the route of the same id, and node state
    /// ([`Upstream::adopt_state`]) to the upstream of the same id, or for an inline
    /// upstream to the inline upstream of the route of the same id.
    pub fn build(
        config: &Config,
        env: EnvLookup<'_>,
        predecessor: &Predecessor,
    ) -> Result<Self, ConfigError> {
        let previous_upstreams: HashMap<&str, &Upstream> = predecessor
            .upstreams
            .iter()
            .filter_map(|up| Some((up.id.as_deref()?, &**up)))
            .collect();
        let previous: HashMap<&str, &Route> = predecessor
            .routes
            .iter()
            .map(|route| (&*route.id, &**route))
            .collect();
        let mut consumers = ConsumerSet::build(&config.consumers, env)?;
        if let Some(admin) = &config.admin {
            consumers.set_admin_key(
                admin.key.expose_secret(),
                admin.listen.ip().is_loopback(),
                env,
            )?;
            if admin.max_body == 0 {
                return Err(invalid("admin.max_body", "must be above 0"));
            }
            if admin.vault_write_through && config.agent.is_none() {
                return Err(invalid(
                    "admin.vault_write_through",
                    "needs agent: credentials are written to Vault through the agent",
                ));
            }
        }
        let consumers = Arc::new(consumers);
        if config.agent.is_none() && !consumers.agent_names().is_empty() {
            return Err(invalid(
                "agent",
                "required: credentials come from the agent (vault: {} or $secret://)",
            ));
        }
        if let Some(agent) = &config.agent
            && (agent.backoff_min.is_zero() || agent.backoff_min > agent.backoff_max)
        {
            return Err(invalid(
                "agent.backoff_min",
                "must be above 0 and at most backoff_max",
            ));
        }

        let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
        for (i, conf) in config.upstreams.iter().enumerate() {
            let at = format!("upstreams[{i}]");
            let id = conf
                .id
                .as_deref()
                .ok_or_else(|| invalid(format!("{at}.id"), "required"))?;
            let mut upstream = Upstream::build(conf, &at, env)?;
            upstream.id = Some(Arc::from(id));
            if let Some(before) = previous_upstreams.get(id) {
                upstream.adopt_state(before);
            }
            if upstreams.insert(id, Arc::new(upstream)).is_some() {
                return Err(invalid(
                    format!("{at}.id"),
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
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut ids = HashSet::new();
        for (i, conf) in config.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let id: Arc<str> = Arc::from(conf.id.clone().unwrap_or_else(|| i.to_string()));
            if !ids.insert(id.clone()) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!("duplicate route id {id:?}"),
                ));
            }
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
                (None, Some(ref_id)) => {
                    upstreams.get(ref_id.as_str()).cloned().ok_or_else(|| {
                        invalid(
                            format!("{at}.upstream_id"),
                            format!("no upstream with id {ref_id:?}"),
                        )
                    })?
                }
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
                    &consumers,
                    &format!("{at}.plugins.jwt-auth"),
                )?)),
                (None, Some(k), None) => Some(RouteAuth::Key(KeyAuthRoute::build(
                    k,
                    &consumers,
                    &format!("{at}.plugins.key-auth"),
                )?)),
                (None, None, Some(b)) => Some(RouteAuth::Basic(BasicAuthRoute::build(
                    b,
                    &consumers,
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
            let responses = previous
                .get(&*id)
                .map_or_else(Default::default, |before| Arc::clone(&before.responses));
            let route = Arc::new(Route {
                id,
                auth,
                upstream,
                responses,
            });
            if conf.status > 1 {
                return Err(invalid(format!("{at}.status"), "must be 0 or 1"));
            }
            if conf.status == 1 {
                router.add(&spec, route.clone()).map_err(|e| {
                    let field = match e {
                        crate::router::RouteError::BadMethod(_) => "methods",
                        crate::router::RouteError::BadHost(_) if conf.host.is_some() => "host",
                        crate::router::RouteError::BadHost(_) => "hosts",
                        _ => paths_field,
                    };
                    invalid(format!("{at}.{field}"), e.to_string())
                })?;
            }
            routes.push(route);
        }
        let tls = TlsSpec::build(&config.ssls, config.tls.as_ref(), env)?;
        let runtime = Self {
            router,
            routes,
            consumers,
            sign_endpoint: config.plugin_attr.jwt_auth.sign_endpoint,
            access_log: config.access_log,
            tls,
            tls_upstreams,
            upstreams: upstreams.into_values().collect(),
        };
        if config.agent.is_none() && !runtime.agent_names().is_empty() {
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
        let mut names: std::collections::BTreeSet<String> =
            self.consumers.agent_names().into_iter().collect();
        names.extend(self.tls.agent_names().map(str::to_owned));
        for upstream in &self.tls_upstreams {
            if let Some(tls) = &upstream.tls {
                names.extend(tls.agent_names().map(str::to_owned));
            }
        }
        names.into_iter().collect()
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
