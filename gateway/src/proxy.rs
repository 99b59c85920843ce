//! Forwarding a request to an upstream: header rewriting, node choice, timeouts,
//! retries. Bodies stream through in both directions.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use hyper::body::Body as _;
use smallvec::SmallVec;

use crate::body::{self, IdleTimeout, RequestBody};
use crate::config::PassHost;
use crate::pool::Outbound;
use crate::reply::Reply;
use crate::upstream::{Upstream, UpstreamError};

/// Why no upstream response could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Every attempt failed to connect or errored (502).
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The last attempt timed out (504).
    #[error("upstream timed out")]
    Timeout,
    /// The request cannot be expressed upstream (bad path).
    #[error("bad request: {0}")]
    BadRequest(String),
}

// Names the request path sets or removes, built once: a `&str` name is parsed (and a
// non-standard one allocated) on every use.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
/// The forwarding fields only the gateway sets: a client's are dropped.
static FORWARDING: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_REAL_IP,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` describes one connection rather than the message.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == KEEP_ALIVE || name == PROXY_CONNECTION
}

/// The names [`is_hop_by_hop`] knows, as bytes (a test keeps the two in step):
/// comparing `HeaderName`s' text instead cost three times as much per upstream head.
const HOP_BY_HOP_BYTES: [&[u8]; 9] = [
    b"connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"keep-alive",
    b"proxy-connection",
];

/// [`is_hop_by_hop`] for a name as it came in a head, in any case.
pub(crate) fn is_hop_by_hop_name(name: &[u8]) -> bool {
    // `is_name` compares the lengths first: most names differ from all of these there.
    HOP_BY_HOP_BYTES
        .iter()
        .any(|known| crate::wire::is_name(name, known))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names, nothing hashed.
    if headers.keys().any(is_hop_by_hop) {
        remove_hop_by_hop(headers);
    }
}

/// [`strip_hop_by_hop`] once a hop-by-hop name was seen.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close")
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
}

/// Removes identity headers only the gateway may set, so a client cannot forge them.
pub fn strip_identity(headers: &mut HeaderMap) {
    let forged = |name: &HeaderName| {
        let name = name.as_str();
        name.starts_with("x-consumer-") || name == "x-credential-identifier"
    };
    // Nearly every request has none: one scan, and no list is made.
    if !headers.keys().any(forged) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| forged(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Everything about the client connection the upstream should learn.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The peer address.
    pub ip: IpAddr,
    /// It came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
}

/// The forwarding fields an upstream request gets: `X-Forwarded-For`, `X-Real-IP`,
/// `X-Forwarded-Proto` and `X-Forwarded-Host`, in place of any the client sent.
///
/// They are kept beside the request's headers rather than inserted into its map: the
/// gateway's own HTTP/1.1 client writes them straight into the request head (four
/// map inserts, each hashing its name, were a twentieth of a proxied request), and
/// [`Forwarding::apply`] inserts them for the TLS client. `Debug` shows which are set,
/// not their values.
#[derive(Clone, Default)]
pub struct Forwarding {
    forwarded_for: Option<HeaderValue>,
    real_ip: Option<HeaderValue>,
    proto: Option<HeaderValue>,
    host: Option<HeaderValue>,
    /// `X-Consumer-Username`: the client's own were removed ([`strip_identity`]).
    consumer: Option<HeaderValue>,
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("forwarded_for", &self.forwarded_for.is_some())
            .field("real_ip", &self.real_ip.is_some())
            .field("proto", &self.proto)
            .field("host", &self.host.is_some())
            .field("consumer", &self.consumer.is_some())
            .finish()
    }
}

impl Forwarding {
    /// Whether `name` is one of the fields a forwarded request gets from the gateway
    /// only (the client's are dropped).
    pub(crate) fn replaces(name: &HeaderName) -> bool {
        FORWARDING.contains(name)
    }

    /// Adds `X-Consumer-Username: name`, the consumer authentication found.
    pub fn set_consumer(&mut self, name: HeaderValue) {
        self.consumer = Some(name);
    }

    fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let [forwarded_for, real_ip, proto, host] = &FORWARDING;
        [
            (forwarded_for, &self.forwarded_for),
            (real_ip, &self.real_ip),
            (proto, &self.proto),
            (host, &self.host),
            (&X_CONSUMER_USERNAME, &self.consumer),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_ref()?)))
    }

    /// How many bytes [`Self::write`] writes.
    pub(crate) fn encoded_len(&self) -> usize {
        self.fields()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum()
    }

    /// Appends the fields as `name: value\r\n` lines.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in self.fields() {
            crate::wire::push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }

    /// Puts the fields into `headers` in place of the client's (the client's
    /// `X-Consumer-Username` is gone already).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &FORWARDING {
            headers.remove(name);
        }
        for (name, value) in self.fields() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Prepares the request head for the upstream: hop-by-hop headers removed, Host kept
/// (HTTP/2 authority turned into Host); and the forwarding fields it is to get.
pub fn prepare_head(parts: &mut Parts, client: ClientInfo) -> Forwarding {
    // One pass over the fields finds what three lookups by name would (each hashes
    // the name; a request has few fields): the Host values, the client's
    // X-Forwarded-For, whether any field is hop-by-hop.
    let (mut from_header, mut several, mut hop_by_hop) = (None, false, false);
    let mut previous_for: Option<HeaderValue> = None;
    for (name, value) in &parts.headers {
        if name == header::HOST {
            if from_header.is_some() {
                several = true;
            } else {
                from_header = Some(value.clone());
            }
        } else if name == X_FORWARDED_FOR {
            previous_for.get_or_insert_with(|| value.clone());
        } else if is_hop_by_hop(name) {
            hop_by_hop = true;
        }
    }
    let insert_host = from_header.is_none() || several;
    // One Host for the upstream: the first (hyper refuses two; this loop does not).
    let host = from_header.or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if hop_by_hop {
        remove_hop_by_hop(&mut parts.headers);
        // `Connection` may have named X-Forwarded-For.
        previous_for = parts.headers.get(&X_FORWARDED_FOR).cloned();
    }
    if insert_host && let Some(host) = &host {
        parts.headers.insert(header::HOST, host.clone());
    }
    let ip = client_ip_value(client.ip);
    let forwarded_for = match previous_for.as_ref().and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => ip.as_ref().and_then(|ip| {
            let mut joined = Vec::with_capacity(prev.len() + 2 + ip.len());
            joined.extend_from_slice(prev.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }),
        _ => ip.clone(),
    };
    Forwarding {
        forwarded_for,
        real_ip: ip,
        proto: Some(HeaderValue::from_static(if client.https {
            "https"
        } else {
            "http"
        })),
        host,
        consumer: None,
    }
}

/// The consumer's name as a header value (`X-Consumer-Username`). The last one is
/// kept per worker thread, as the client's address is (see [`client_ip_value`]): a
/// sidecar's requests mostly come as one consumer, and they take a reference to it
/// instead of copying the name into a value of their own. `None` when the name
/// cannot be a header value.
pub fn consumer_value(name: &Arc<str>) -> Option<HeaderValue> {
    thread_local! {
        static LAST: RefCell<Option<(Arc<str>, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        if let Some((cached, value)) = &*last
            && **cached == **name
        {
            return Some(value.clone());
        }
        let value = HeaderValue::from_str(name).ok()?;
        *last = Some((name.clone(), value.clone()));
        Some(value)
    })
}

/// `ip` as a header value. The last one is kept per worker thread: requests come
/// over kept-alive connections, mostly from few addresses (a sidecar's are one), so
/// most take a reference to it instead of formatting and allocating their own.
fn client_ip_value(ip: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        if let Some((cached, value)) = &*last
            && *cached == ip
        {
            return Some(value.clone());
        }
        let mut buf = [0u8; 48];
        let value = HeaderValue::from_bytes(format_ip(ip, &mut buf)).ok()?;
        *last = Some((ip, value.clone()));
        Some(value)
    })
}

/// `ip` as text in `buf`; IPv4 by hand (`fmt` costs a third of this function's time).
fn format_ip(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + (octet / 10) % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            &buf[..len]
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            let len = usize::try_from(cursor.position()).unwrap_or(0);
            buf.get(..len).unwrap_or_default()
        }
    }
}

/// Sends the request to the upstream, retrying on other nodes where that is safe:
/// only requests without a body can be re-sent (the body streams through and is gone
/// after the first attempt), and a request that may have reached a node is only
/// re-sent when its method is idempotent. The first attempt's head timeout runs from
/// `started` (the caller's clock read, shared with its latency metric). The head is
/// borrowed, not taken: each attempt encodes it from `parts` (nothing of it is moved
/// into this future or copied per attempt).
pub async fn forward(
    upstream: &Upstream,
    parts: &Parts,
    body: RequestBody,
    hash: Option<u64>,
    forwarding: &Forwarding,
    started: tokio::time::Instant,
) -> Result<Reply, ProxyError> {
    let root;
    let target = match parts.uri.path_and_query() {
        Some(target) => target,
        None => {
            root = PathAndQuery::from_static("/");
            &root
        }
    };
    let replayable = body.is_end_stream();
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let mut body = Some(body);
    // Nodes tried so far, held inline (no allocation per request) up to a few retries.
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let max_attempts = 1 + usize::try_from(upstream.retries).unwrap_or(usize::MAX);
    let mut last = ProxyError::Unreachable("no node".into());
    while tried.len() < max_attempts {
        let Some(index) = upstream.pick(&tried, hash) else {
            break;
        };
        tried.push(index);
        let Some(node) = upstream.nodes().get(index) else {
            break;
        };
        // A request without a body (most) sends the empty body: no box to allocate.
        let request_body = match body.take() {
            Some(b) if !replayable => body::boxed(b),
            _ => body::empty(),
        };
        let node_host;
        let host = match upstream.pass_host {
            PassHost::Pass => None,
            PassHost::Node => {
                node_host = HeaderValue::from_str(node.authority.as_str()).ok();
                node_host.as_ref()
            }
            PassHost::Rewrite => upstream.upstream_host.as_ref(),
        };
        let outbound = Outbound {
            method: &parts.method,
            target,
            headers: &parts.headers,
            host,
            forwarding: Some(forwarding),
        };
        let in_flight = upstream.start(index);
        // The first attempt starts when the caller did (one clock read less per request).
        let attempt_started = if tried.len() == 1 {
            started
        } else {
            tokio::time::Instant::now()
        };
        let deadline = attempt_started + upstream.head_timeout;
        let outcome = upstream
            .client
            .request(index, &node.authority, outbound, request_body, deadline)
            .await;
        drop(in_flight);
        let retry_safe = match outcome {
            Ok(mut reply) => {
                let status = reply.status().as_u16();
                if (502..=504).contains(&status) {
                    upstream.report_failure(index);
                } else {
                    upstream.report_success(index);
                }
                // Lines from the plain client come without hop-by-hop fields.
                if reply.lines().is_none() {
                    strip_hop_by_hop(reply.headers_mut());
                }
                // Answer in the client's protocol version, not the upstream's (an
                // HTTP/1.0 upstream must not downgrade an HTTP/1.1 client).
                *reply.response_mut().version_mut() = parts.version;
                // A body that came whole with the head waits for nothing: no read
                // timeout, no box.
                let read = upstream.read_timeout;
                return Ok(reply.map(|b| match b.into_whole() {
                    Ok(data) => body::full(data.unwrap_or_default()),
                    Err(b) => body::boxed(IdleTimeout::new(b, read)),
                }));
            }
            Err(UpstreamError::Target(e)) => return Err(ProxyError::BadRequest(e.to_string())),
            Err(e) if e.is_timeout() => {
                upstream.report_failure(index);
                tracing::debug!(node = %node.authority, "upstream timed out");
                last = ProxyError::Timeout;
                idempotent
            }
            Err(e) => {
                upstream.report_failure(index);
                // The whole chain: "client error (Connect)" alone hides a TLS refusal.
                let why = error_chain(&e);
                tracing::debug!(node = %node.authority, error = %why, "upstream request failed");
                let connect = e.is_connect();
                last = ProxyError::Unreachable(why);
                connect || idempotent
            }
        };
        if !(replayable && retry_safe) {
            break;
        }
    }
    Err(last)
}

/// `error: source: source...`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri("/a?b=c");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut p = parts(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut p.headers);
        let names: Vec<_> = p.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn hop_by_hop_names_as_bytes_are_the_same_as_header_names() {
        let mut names: Vec<HeaderName> = HOP_BY_HOP.to_vec();
        names.extend([KEEP_ALIVE, PROXY_CONNECTION]);
        let mut texts: Vec<&[u8]> = names.iter().map(|n| n.as_str().as_bytes()).collect();
        let mut bytes = HOP_BY_HOP_BYTES.to_vec();
        texts.sort();
        bytes.sort();
        assert_eq!(texts, bytes, "the two lists name the same headers");
        for name in &names {
            assert!(is_hop_by_hop(name), "{name}");
            assert!(is_hop_by_hop_name(
                name.as_str().to_ascii_uppercase().as_bytes()
            ));
        }
        for other in [
            "host",
            "x-connection",
            "tes",
            "content-length",
            "keep-alivex",
        ] {
            assert!(!is_hop_by_hop_name(other.as_bytes()), "{other}");
            assert!(!is_hop_by_hop(&HeaderName::from_static(other)), "{other}");
        }
    }

    #[test]
    fn forwarded_headers_are_set() {
        let mut p = parts(&[
            ("host", "api.example.com"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-real-ip", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let forwarding = prepare_head(
            &mut p,
            ClientInfo {
                https: false,
                ip: "192.0.2.7".parse().unwrap(),
            },
        );
        let mut written = Vec::new();
        forwarding.write(&mut written);
        assert_eq!(
            String::from_utf8(written.clone()).unwrap(),
            "x-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-real-ip: 192.0.2.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: api.example.com\r\n"
        );
        assert_eq!(forwarding.encoded_len(), written.len());
        for name in ["x-forwarded-for", "x-real-ip", "x-forwarded-proto"] {
            assert!(Forwarding::replaces(&HeaderName::from_static(name)));
        }
        assert!(!Forwarding::replaces(&header::HOST));
        forwarding.apply(&mut p.headers);
        assert_eq!(p.headers.get_all("x-real-ip").iter().count(), 1);
        assert_eq!(p.headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(p.headers["x-real-ip"], "192.0.2.7");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-host"], "api.example.com");
        assert_eq!(p.headers["host"], "api.example.com");
    }

    #[test]
    fn hop_by_hop_fields_go_before_the_forwarding_fields_are_worked_out() {
        let client = ClientInfo {
            https: false,
            ip: "192.0.2.7".parse().unwrap(),
        };
        // `Connection` names X-Forwarded-For: it describes the client's hop only,
        // so the upstream gets the gateway's view alone.
        let mut p = parts(&[
            ("host", "a.example"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "x-forwarded-for"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        let forwarding = prepare_head(&mut p, client);
        let names: Vec<_> = p.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-kept"]);
        forwarding.apply(&mut p.headers);
        assert_eq!(p.headers["x-forwarded-for"], "192.0.2.7");
        // Without hop-by-hop fields, the client's own X-Forwarded-For is extended.
        let mut p = parts(&[("x-forwarded-for", "10.0.0.1"), ("x-kept", "1")]);
        prepare_head(&mut p, client).apply(&mut p.headers);
        assert_eq!(p.headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(p.headers["x-kept"], "1");
    }

    #[test]
    fn the_upstream_gets_one_host() {
        let client = ClientInfo {
            https: true,
            ip: "192.0.2.7".parse().unwrap(),
        };
        let mut p = parts(&[("host", "a.example"), ("host", "b.example")]);
        let forwarding = prepare_head(&mut p, client);
        let hosts: Vec<_> = p.headers.get_all("host").iter().collect();
        assert_eq!(hosts, ["a.example"]);
        forwarding.apply(&mut p.headers);
        assert_eq!(p.headers["x-forwarded-host"], "a.example");
        assert_eq!(p.headers["x-forwarded-proto"], "https");

        // HTTP/2: the authority becomes Host.
        let mut p = Request::get("https://c.example/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        prepare_head(&mut p, client).apply(&mut p.headers);
        assert_eq!(p.headers["host"], "c.example");
        assert_eq!(p.headers["x-forwarded-host"], "c.example");
    }

    #[test]
    fn each_request_gets_its_own_clients_address() {
        // The per-thread cache of the last address must follow a change of client.
        for ip in ["192.0.2.7", "192.0.2.7", "10.0.0.1", "::1", "192.0.2.7"] {
            let mut p = parts(&[]);
            prepare_head(
                &mut p,
                ClientInfo {
                    https: false,
                    ip: ip.parse().unwrap(),
                },
            )
            .apply(&mut p.headers);
            assert_eq!(p.headers["x-real-ip"], ip);
            assert_eq!(p.headers["x-forwarded-for"], ip);
        }
    }

    #[test]
    fn addresses_are_formatted_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "192.168.100.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 48];
            assert_eq!(format_ip(ip, &mut buf), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn identity_headers_from_clients_are_dropped() {
        let mut p = parts(&[
            ("x-consumer-username", "admin"),
            ("X-Consumer-Custom-Id", "1"),
            ("x-credential-identifier", "x"),
            ("x-other", "1"),
        ]);
        strip_identity(&mut p.headers);
        let names: Vec<_> = p.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-other"]);
    }

    #[test]
    fn consumer_values_follow_the_name_asked_for() {
        let jack: Arc<str> = Arc::from("jack");
        // The same name again (another Arc of it, as after a reload), then another.
        assert_eq!(consumer_value(&jack).unwrap(), "jack");
        assert_eq!(consumer_value(&Arc::from("jack")).unwrap(), "jack");
        assert_eq!(consumer_value(&Arc::from("jill")).unwrap(), "jill");
        assert_eq!(consumer_value(&jack).unwrap(), "jack");
        // A name no header value can carry is not sent, and does not replace the last.
        assert!(consumer_value(&Arc::from("line\nbreak")).is_none());
        assert_eq!(consumer_value(&jack).unwrap(), "jack");
    }
}
