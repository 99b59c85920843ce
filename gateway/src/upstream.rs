//! Upstreams: their nodes, load balancing, passive health and connection pool.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{self, Authority, Scheme};
use http::{HeaderValue, Request, Uri, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{BoxError, ProxyBody};
use crate::config::{
    ConfigError, HashOn, LbType, Nodes, PassHost, PassiveCheckConfig, UpstreamConfig, invalid,
};
use crate::consumers::EnvLookup;
use crate::pool::{Outbound, Pool, PoolError, PooledBody};
use crate::reply::Reply;
use crate::tls::upstream::UpstreamTls;

/// One upstream server.
#[derive(Debug)]
pub struct Node {
    /// `host:port`.
    pub authority: Authority,
    weight: u32,
    /// Requests in flight (least_conn), shared with the same node of the upstream this
    /// one replaced: least_conn sees the old runtime's requests still in flight.
    inflight: Arc<AtomicUsize>,
    /// Passive health, shared likewise where both upstreams have passive checks.
    health: Arc<NodeHealth>,
}

/// A node's passive health. A rebuild (any Admin API write, a reload) builds every
/// upstream afresh; the new upstream shares this with the old one's node of the same
/// `host:port` ([`Upstream::adopt_state`]), so a node ejected a moment before does not
/// take traffic again after a write that did not touch it, and a failure reported by a
/// request still finishing on the old runtime counts in the new one.
#[derive(Debug)]
struct NodeHealth {
    /// Consecutive failures.
    failures: AtomicU32,
    /// When the node was ejected ([`now_ms`]), or [`NOT_EJECTED`]. The time, not the
    /// end of the ejection: the end follows the current `eject`, so shortening it brings
    /// nodes already ejected back sooner.
    ejected_at: AtomicU64,
}

const NOT_EJECTED: u64 = u64::MAX;

impl Default for NodeHealth {
    fn default() -> Self {
        Self {
            failures: AtomicU32::new(0),
            ejected_at: AtomicU64::new(NOT_EJECTED),
        }
    }
}

/// One clock for every upstream's ejections, so that health outlives the upstream that
/// recorded it.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since [`EPOCH`].
fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An upstream, ready to pick nodes and send requests.
#[derive(Debug)]
pub struct Upstream {
    nodes: Vec<Node>,
    /// Node indexes in smooth weighted round-robin order, one cycle long.
    schedule: Vec<usize>,
    next: AtomicUsize,
    lb: LbType,
    /// Consistent-hash ring (chash): points sorted by hash, each naming a node.
    ring: Vec<(u64, usize)>,
    hash_on: HashOn,
    hash_key: String,
    /// TCP connect timeout (enforced by the connector).
    pub connect_timeout: Duration,
    /// Deadline for the response head: `send + read`.
    pub head_timeout: Duration,
    /// Longest pause between two body frames of the response.
    pub read_timeout: Duration,
    /// Extra attempts on other nodes.
    pub retries: u32,
    /// How to set the upstream Host header.
    pub pass_host: PassHost,
    /// With [`PassHost::Rewrite`].
    pub upstream_host: Option<HeaderValue>,
    passive: Option<PassiveCheckConfig>,
    /// `passive.eject` in milliseconds (0 without passive checks).
    eject_ms: u64,
    /// The `id` of an upstream of the `upstreams` list (inline ones have none).
    pub(crate) id: Option<Arc<str>>,
    /// The catalog entry of an upstream of the `upstreams` list: a later build with the
    /// same entry takes this upstream over as it is.
    pub(crate) source: Option<Arc<crate::catalog::Entry>>,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// With `https`: verification and client certificate (swapped per snapshot).
    pub tls: Option<Arc<UpstreamTls>>,
    /// Keep-alive pool for this upstream.
    pub client: UpstreamClient,
}

/// The keep-alive pool: the gateway's own for plain HTTP/1.1, hyper-util's client for TLS.
#[derive(Debug)]
pub enum UpstreamClient {
    /// `scheme: http`.
    Http(Arc<Pool>),
    /// `scheme: https`.
    Https(Box<Client<HttpsConnector<HttpConnector>, ProxyBody>>),
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// From the plain pool.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// From the TLS client.
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
    /// The TLS client had no response head by the deadline.
    #[error("no response head by the deadline")]
    Timeout,
    /// The request's target makes no URI for the TLS client (nothing was sent).
    #[error("request target: {0}")]
    Target(#[from] uri::InvalidUriParts),
}

impl UpstreamError {
    /// True when no connection could be made.
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Pool(e) => e.is_connect(),
            Self::Client(e) => e.is_connect(),
            Self::Timeout | Self::Target(_) => false,
        }
    }

    /// True when the deadline passed before a response head came.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Pool(e) => e.is_timeout(),
            Self::Client(_) | Self::Target(_) => false,
            Self::Timeout => true,
        }
    }
}

/// A response body from either client.
#[derive(Debug)]
pub enum UpstreamBody {
    /// From the plain pool.
    Pooled(PooledBody),
    /// From the TLS client.
    Incoming(Incoming),
}

impl UpstreamBody {
    /// The body's bytes, when the pool had them all with the head (`None`: an empty
    /// body); else the body as it was.
    #[expect(
        clippy::result_large_err,
        reason = "not an error: the body itself, handed back, moved as it would be anyway"
    )]
    pub fn into_whole(self) -> Result<Option<Bytes>, Self> {
        match self {
            Self::Pooled(body) => body.into_whole().map_err(Self::Pooled),
            incoming @ Self::Incoming(_) => Err(incoming),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Pooled(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Pooled(b) => b.is_end_stream(),
            Self::Incoming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Pooled(b) => b.size_hint(),
            Self::Incoming(b) => b.size_hint(),
        }
    }
}

impl UpstreamClient {
    /// Sends `outbound` with `body` to node `index` (at `authority`) on a pooled
    /// connection (or a new one); the response head must come by `deadline`.
    pub async fn request(
        &self,
        index: usize,
        authority: &Authority,
        outbound: Outbound<'_>,
        body: ProxyBody,
        deadline: tokio::time::Instant,
    ) -> Result<Reply<UpstreamBody>, UpstreamError> {
        match self {
            Self::Http(pool) => Ok(pool
                .send(index, outbound, body, deadline)
                .await?
                .map(UpstreamBody::Pooled)),
            Self::Https(client) => {
                let request = https_request(authority, &outbound, body)?;
                let response = tokio::time::timeout_at(deadline, client.request(request))
                    .await
                    .map_err(|_| UpstreamError::Timeout)??;
                Ok(Reply::from(response.map(UpstreamBody::Incoming)))
            }
        }
    }
}

/// `outbound` as a request for hyper's client: an absolute URI and fields of its own.
fn https_request(
    authority: &Authority,
    outbound: &Outbound<'_>,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, UpstreamError> {
    let mut target = uri::Parts::default();
    target.scheme = Some(Scheme::HTTPS);
    target.authority = Some(authority.clone());
    target.path_and_query = Some(outbound.target.clone());
    let mut request = Request::new(body);
    *request.method_mut() = outbound.method.clone();
    *request.uri_mut() = Uri::from_parts(target)?;
    let headers = request.headers_mut();
    *headers = outbound.headers.clone();
    if let Some(host) = outbound.host {
        headers.insert(header::HOST, host.clone());
    }
    if let Some(forwarding) = outbound.forwarding {
        forwarding.apply(headers);
    }
    Ok(request)
}

fn seconds(field: String, value: f64) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        return Err(invalid(field, "must be a number of seconds above 0"));
    }
    Ok(Duration::from_secs_f64(value))
}

impl Upstream {
    /// Validates `conf` (reported under `at`) and builds the upstream. `env` resolves
    /// `$env://` references of its `tls` block.
    pub fn build(conf: &UpstreamConfig, at: &str, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let (scheme, tls) = match (conf.scheme.as_str(), &conf.tls) {
            ("http", None) => (Scheme::HTTP, None),
            ("http", Some(_)) => {
                return Err(invalid(format!("{at}.tls"), "only used with scheme: https"));
            }
            ("https", tls) => {
                let rewrite = match conf.pass_host {
                    PassHost::Rewrite => conf.upstream_host.as_deref(),
                    PassHost::Pass | PassHost::Node => None,
                };
                let tls = UpstreamTls::build(
                    &tls.clone().unwrap_or_default(),
                    rewrite,
                    &format!("{at}.tls"),
                    env,
                )?;
                (Scheme::HTTPS, Some(Arc::new(tls)))
            }
            (other, _) => {
                return Err(invalid(
                    format!("{at}.scheme"),
                    format!("{other:?} is not supported (http or https)"),
                ));
            }
        };
        let raw: Vec<(String, u32)> = match &conf.nodes {
            Nodes::Map(map) => map.iter().map(|(k, w)| (k.clone(), *w)).collect(),
            Nodes::List(list) => list
                .iter()
                .map(|n| {
                    let host = if n.host.contains(':') && !n.host.starts_with('[') {
                        format!("[{}]", n.host)
                    } else {
                        n.host.clone()
                    };
                    (format!("{host}:{}", n.port.unwrap_or(80)), n.weight)
                })
                .collect(),
        };
        let mut nodes = Vec::new();
        for (addr, weight) in raw {
            let authority: Authority = addr.parse().map_err(|_| {
                invalid(format!("{at}.nodes"), format!("{addr:?} is not host:port"))
            })?;
            if authority.port_u16().is_none() {
                return Err(invalid(
                    format!("{at}.nodes"),
                    format!("{addr:?} needs a port"),
                ));
            }
            if weight > 0 {
                nodes.push(Node {
                    authority,
                    weight,
                    inflight: Arc::default(),
                    health: Arc::default(),
                });
            }
        }
        if nodes.is_empty() {
            return Err(invalid(
                format!("{at}.nodes"),
                "needs at least one node with a weight above 0",
            ));
        }
        let timeout = conf.timeout.unwrap_or_default();
        let connect_timeout = seconds(format!("{at}.timeout.connect"), timeout.connect)?;
        let send = seconds(format!("{at}.timeout.send"), timeout.send)?;
        let read_timeout = seconds(format!("{at}.timeout.read"), timeout.read)?;
        let upstream_host = match (conf.pass_host, &conf.upstream_host) {
            (PassHost::Rewrite, Some(host)) => {
                Some(HeaderValue::from_str(host).map_err(|_| {
                    invalid(format!("{at}.upstream_host"), "not a valid header value")
                })?)
            }
            (PassHost::Rewrite, None) => {
                return Err(invalid(
                    format!("{at}.upstream_host"),
                    "required with pass_host: rewrite",
                ));
            }
            _ => None,
        };
        if let Some(checks) = conf.checks
            && checks.passive.failures == 0
        {
            return Err(invalid(
                format!("{at}.checks.passive.failures"),
                "must be at least 1",
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let mut pool = Client::builder(TokioExecutor::new());
        pool.pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new());
        let client = match &tls {
            None => UpstreamClient::Http(Arc::new(Pool::new(
                nodes.iter().map(|n| n.authority.clone()),
                connect_timeout,
            ))),
            Some(tls) => {
                connector.enforce_http(false);
                let builder = HttpsConnectorBuilder::new()
                    .with_tls_config(tls.client_config())
                    .https_only();
                let builder = match &tls.server_name {
                    Some(name) => builder
                        .with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
                    None => builder,
                };
                UpstreamClient::Https(Box::new(
                    pool.build(builder.enable_http1().wrap_connector(connector)),
                ))
            }
        };
        let schedule = smooth_wrr(&nodes.iter().map(|n| n.weight).collect::<Vec<_>>());
        let hash_key = match (conf.hash_on, &conf.key) {
            (_, Some(k)) if k.is_empty() => {
                return Err(invalid(format!("{at}.key"), "must not be empty"));
            }
            (HashOn::Header | HashOn::Cookie, None) if conf.lb == LbType::Chash => {
                return Err(invalid(
                    format!("{at}.key"),
                    "required with hash_on: header or cookie",
                ));
            }
            (HashOn::Vars, None) => "remote_addr".to_owned(),
            (HashOn::Vars, Some(k)) => {
                let known = ["remote_addr", "uri", "request_uri", "host"].contains(&k.as_str())
                    || k.starts_with("arg_")
                    || k.starts_with("http_")
                    || k.starts_with("cookie_");
                if !known {
                    return Err(invalid(
                        format!("{at}.key"),
                        format!(
                            "{k:?}: unsupported variable (remote_addr, uri, request_uri, host, arg_*, http_*, cookie_*)"
                        ),
                    ));
                }
                k.clone()
            }
            (_, key) => key.clone().unwrap_or_default(),
        };
        let ring = if conf.lb == LbType::Chash {
            chash_ring(&nodes)
        } else {
            Vec::new()
        };
        let retries = conf
            .retries
            .unwrap_or_else(|| u32::try_from(nodes.len().saturating_sub(1)).unwrap_or(u32::MAX));
        Ok(Self {
            nodes,
            schedule,
            next: AtomicUsize::new(0),
            lb: conf.lb,
            ring,
            hash_on: conf.hash_on,
            hash_key,
            connect_timeout,
            head_timeout: send + read_timeout,
            read_timeout,
            retries,
            pass_host: conf.pass_host,
            upstream_host,
            passive: conf.checks.map(|c| c.passive),
            eject_ms: conf.checks.map_or(0, |c| {
                u64::try_from(c.passive.eject.as_millis()).unwrap_or(u64::MAX)
            }),
            id: None,
            source: None,
            scheme,
            tls,
            client,
        })
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    fn healthy(&self, index: usize, now_ms: u64) -> bool {
        self.nodes.get(index).is_some_and(|n| {
            let at = n.health.ejected_at.load(Ordering::Relaxed);
            at == NOT_EJECTED || now_ms >= at.saturating_add(self.eject_ms)
        })
    }

    /// The chash key of a request (`None` for other balancers, or when the request
    /// lacks the header/cookie/argument: such requests are balanced round robin).
    pub fn hash_of(
        &self,
        parts: &http::request::Parts,
        consumer: Option<&str>,
        client: std::net::IpAddr,
    ) -> Option<u64> {
        if self.lb != LbType::Chash {
            return None;
        }
        let header = |name: &str| parts.headers.get(name).map(|v| v.as_bytes().to_vec());
        let cookie = |name: &str| {
            parts
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().as_bytes().to_vec())
                })
        };
        let key = self.hash_key.as_str();
        let value: Option<Vec<u8>> = match self.hash_on {
            HashOn::Consumer => consumer.map(|c| c.as_bytes().to_vec()),
            // The gateway sets this one for the upstream; the client's is dropped.
            HashOn::Header if key.eq_ignore_ascii_case("x-consumer-username") => {
                consumer.map(|c| c.as_bytes().to_vec())
            }
            HashOn::Header => header(key),
            HashOn::Cookie => cookie(key),
            HashOn::Vars => match key {
                "remote_addr" => Some(client.to_string().into_bytes()),
                "uri" => Some(parts.uri.path().as_bytes().to_vec()),
                "request_uri" => parts
                    .uri
                    .path_and_query()
                    .map(|pq| pq.as_str().as_bytes().to_vec()),
                "host" => crate::router::request_host(parts).map(|h| h.into_owned().into_bytes()),
                _ => {
                    if let Some(arg) = key.strip_prefix("arg_") {
                        parts
                            .uri
                            .query()
                            .and_then(|q| crate::query::param(q, arg))
                            .map(String::into_bytes)
                    } else if let Some(h) = key.strip_prefix("http_") {
                        header(&h.replace('_', "-"))
                    } else if let Some(c) = key.strip_prefix("cookie_") {
                        cookie(c)
                    } else {
                        None
                    }
                }
            },
        };
        value.map(|v| hash64(&v))
    }

    /// Picks a node not in `tried`: a healthy one by the balancing rule if there is one,
    /// else any untried one (an ejected node beats no node). `None` once all were tried.
    /// `hash` is the request's chash key ([`Self::hash_of`]).
    pub fn pick(&self, tried: &[usize], hash: Option<u64>) -> Option<usize> {
        // Only passive checks eject nodes: without them every node is healthy, and
        // the clock is not read.
        let now = self.passive.map(|_| now_ms());
        let usable = |i: usize| !tried.contains(&i) && now.is_none_or(|now| self.healthy(i, now));
        let picked = match (self.lb, hash) {
            (LbType::Chash, Some(h)) => {
                // The first point at or after the hash, then onwards around the ring:
                // a node going away only moves the keys it owned.
                let start = self.ring.partition_point(|(p, _)| *p < h);
                (0..self.ring.len()).find_map(|k| {
                    let (_, i) = self.ring.get((start + k) % self.ring.len())?;
                    usable(*i).then_some(*i)
                })
            }
            (LbType::Roundrobin | LbType::Chash, _) if self.nodes.len() == 1 => {
                // Nothing to balance: no shared counter to bump.
                usable(0).then_some(0)
            }
            (LbType::Roundrobin | LbType::Chash, _) => {
                // At most one cycle: every healthy untried node appears in it.
                (0..self.schedule.len()).find_map(|_| {
                    let n = self.next.fetch_add(1, Ordering::Relaxed);
                    let i = *self.schedule.get(n % self.schedule.len())?;
                    usable(i).then_some(i)
                })
            }
            (LbType::LeastConn, _) => {
                (0..self.nodes.len())
                    .filter(|&i| usable(i))
                    .min_by(|&a, &b| {
                        // Compare inflight/weight without division: a.in * b.w vs b.in * a.w.
                        let load = |i: usize| {
                            self.nodes.get(i).map_or((u64::MAX, 1), |n| {
                                (
                                    n.inflight.load(Ordering::Relaxed) as u64 + 1,
                                    u64::from(n.weight),
                                )
                            })
                        };
                        let (ia, wa) = load(a);
                        let (ib, wb) = load(b);
                        (u128::from(ia) * u128::from(wb)).cmp(&(u128::from(ib) * u128::from(wa)))
                    })
            }
        };
        picked.or_else(|| (0..self.nodes.len()).find(|i| !tried.contains(i)))
    }

    /// Counts a request in flight on `index` until the guard drops.
    pub fn start(&self, index: usize) -> InFlight<'_> {
        // Only least_conn reads the count: other balancers skip two atomic writes
        // per request on a line every worker touches.
        let counted = self.lb == LbType::LeastConn;
        if counted && let Some(node) = self.nodes.get(index) {
            node.inflight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            upstream: self,
            index,
            counted,
        }
    }

    /// Shares the state of the nodes `previous` also has (same `host:port`), `previous`
    /// being the upstream this one replaces: the in-flight counts always, the health
    /// ([`NodeHealth`]) where both have passive checks (removing the checks brings
    /// ejected nodes back, and adding them again later revives no old ejection). Only
    /// shares, never changes, what `previous` holds: the build calling this may yet be
    /// refused. Nodes are few per upstream: a linear search each.
    pub(crate) fn adopt_state(&mut self, previous: &Upstream) {
        let health = self.passive.is_some() && previous.passive.is_some();
        for node in &mut self.nodes {
            if let Some(old) = previous
                .nodes
                .iter()
                .find(|old| old.authority == node.authority)
            {
                node.inflight = Arc::clone(&old.inflight);
                if health {
                    node.health = Arc::clone(&old.health);
                }
            }
        }
    }

    /// Passive health: a request to `index` succeeded.
    pub fn report_success(&self, index: usize) {
        if self.passive.is_some()
            && let Some(node) = self.nodes.get(index)
        {
            node.health.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Passive health: a request to `index` failed (connect error, timeout, 502-504).
    pub fn report_failure(&self, index: usize) {
        let (Some(passive), Some(node)) = (self.passive, self.nodes.get(index)) else {
            return;
        };
        let failures = node.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= passive.failures {
            node.health.failures.store(0, Ordering::Relaxed);
            node.health.ejected_at.store(now_ms(), Ordering::Relaxed);
            tracing::warn!(node = %node.authority, failures, eject = ?passive.eject, "upstream node ejected");
        }
    }
}

/// Decrements a node's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    upstream: &'a Upstream,
    index: usize,
    counted: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.counted
            && let Some(node) = self.upstream.nodes.get(self.index)
        {
            node.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One cycle of nginx's smooth weighted round robin: each node appears `weight` times
/// (after dividing by the common divisor), spread out rather than in runs. Very large
/// weight sums are scaled down to keep the cycle short.
fn smooth_wrr(weights: &[u32]) -> Vec<usize> {
    const MAX_CYCLE: u64 = 10_000;
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g)).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_CYCLE {
        w = w.iter().map(|&x| (x * MAX_CYCLE / total).max(1)).collect();
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &weight) in current.iter_mut().zip(&w) {
            *c += weight as i64;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
        else {
            break;
        };
        if let Some(c) = current.get_mut(best) {
            *c -= total;
        }
        out.push(best);
    }
    out
}

/// Points per unit of weight on the chash ring.
const POINTS_PER_WEIGHT: u32 = 40;

/// The chash ring: each node gets points in proportion to its weight (capped), at the
/// hashes of `"<host:port>#<n>"`, so every gateway builds the same ring.
fn chash_ring(nodes: &[Node]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let points = node.weight.min(100) * POINTS_PER_WEIGHT;
        for n in 0..points {
            ring.push((hash64(format!("{}#{n}", node.authority).as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a, then a splitmix64 finalizer to spread similar keys.
fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(yaml: &str) -> Upstream {
        let conf: UpstreamConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Upstream::build(&conf, "upstream", &|_| None).unwrap()
    }

    /// A build adopts what the upstream in use holds without changing it: the build may
    /// yet be refused, and the upstream in use then goes on as it was.
    #[tokio::test]
    async fn adopting_state_leaves_the_previous_upstream_as_it_was() {
        let nodes = "nodes: [{host: 127.0.0.1, port: 1}, {host: 127.0.0.1, port: 2}]";
        let old = upstream(&format!(
            "{nodes}\nchecks: {{passive: {{failures: 1, eject: 1h}}}}"
        ));
        old.report_failure(0);
        let mut new = upstream(nodes);
        new.adopt_state(&old);
        for _ in 0..4 {
            assert_eq!(old.pick(&[], None), Some(1));
        }
        let picked: std::collections::HashSet<_> =
            (0..4).filter_map(|_| new.pick(&[], None)).collect();
        assert_eq!(picked.len(), 2, "no checks here: both nodes take traffic");
    }

    #[test]
    fn smooth_wrr_spreads_by_weight() {
        assert_eq!(smooth_wrr(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&[2, 2]), vec![0, 1]);
        assert_eq!(smooth_wrr(&[3]), vec![0]);
    }

    #[tokio::test]
    async fn roundrobin_honours_weights() {
        let up = upstream("nodes: {\"127.0.0.1:1\": 3, \"127.0.0.1:2\": 1}");
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[up.pick(&[], None).unwrap()] += 1;
        }
        let first = up.nodes()[0].authority.port_u16();
        let heavy = if first == Some(1) { 0 } else { 1 };
        assert_eq!(counts[heavy], 300);
        assert_eq!(counts[1 - heavy], 100);
    }

    #[tokio::test]
    async fn pick_skips_tried_and_ejected_nodes() {
        let up = upstream(
            "nodes: [{host: 127.0.0.1, port: 1}, {host: 127.0.0.1, port: 2}]\nchecks: {passive: {failures: 2, eject: 1h}}",
        );
        assert_eq!(up.pick(&[0], None), Some(1));
        assert_eq!(up.pick(&[0, 1], None), None);
        up.report_failure(0);
        up.report_failure(0);
        for _ in 0..10 {
            assert_eq!(up.pick(&[], None), Some(1));
        }
        // The only healthy node was tried: the ejected one is still better than none.
        assert_eq!(up.pick(&[1], None), Some(0));
    }

    #[tokio::test]
    async fn least_conn_prefers_idle_nodes() {
        let up = upstream("type: least_conn\nnodes: {\"127.0.0.1:1\": 1, \"127.0.0.1:2\": 1}");
        let a = up.pick(&[], None).unwrap();
        let _busy = up.start(a);
        assert_eq!(up.pick(&[], None), Some(1 - a));
    }

    #[tokio::test]
    async fn chash_is_sticky_and_spreads() {
        let up = upstream(
            "type: chash\nhash_on: header\nkey: x-user\nnodes: {\"127.0.0.1:1\": 1, \"127.0.0.1:2\": 1, \"127.0.0.1:3\": 1}",
        );
        let req = |user: &str| {
            http::Request::builder()
                .header("x-user", user)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let ip = "127.0.0.1".parse().unwrap();
        let mut counts = [0; 3];
        for u in 0..300 {
            let h = up.hash_of(&req(&format!("user{u}")), None, ip);
            let first = up.pick(&[], h).unwrap();
            // Same key, same node.
            assert_eq!(up.pick(&[], h), Some(first));
            // Retries move on to another node.
            assert_ne!(up.pick(&[first], h), Some(first));
            counts[first] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
        // No header: round robin.
        let none = http::Request::builder().body(()).unwrap().into_parts().0;
        assert_eq!(up.hash_of(&none, None, ip), None);
        assert!(up.pick(&[], None).is_some());
    }

    #[test]
    fn bad_upstreams_are_rejected_by_field() {
        let err = |yaml: &str| {
            let conf: UpstreamConfig = serde_yaml_ng::from_str(yaml).unwrap();
            Upstream::build(&conf, "u", &|_| None)
                .unwrap_err()
                .to_string()
        };
        assert!(err("nodes: {\"nohost\": 1}").contains("u.nodes"));
        assert!(err("nodes: {\"a:1\": 0}").contains("u.nodes"));
        assert!(err("nodes: {\"a:1\": 1}\nscheme: ftp").contains("u.scheme"));
        assert!(err("nodes: {\"a:1\": 1}\ntls: {}").contains("u.tls"));
        assert!(
            err("nodes: {\"a:1\": 1}\nscheme: https\ntls: {verify: false}")
                .contains("u.tls.verify")
        );
        assert!(err("nodes: {\"a:1\": 1}\ntimeout: {connect: 0}").contains("u.timeout.connect"));
        assert!(err("nodes: {\"a:1\": 1}\npass_host: rewrite").contains("u.upstream_host"));
        assert!(err("nodes: {\"a:1\": 1}\ntype: chash\nhash_on: header").contains("u.key"));
        assert!(err("nodes: {\"a:1\": 1}\ntype: chash\nkey: nope").contains("u.key"));
    }
}
