//! The gateway's own HTTP/1.1 loop for the requests that make up nearly all of an API
//! gateway's traffic: HTTP/1.1, no body or a short one given by `content-length`.
//! hyper's server cost about a third of a proxied request's user-space instructions
//! (its dispatcher, a header-read timer armed per request, the response encoder); this
//! loop parses the head with httparse into an `http` head whose values share the bytes
//! read, calls the handler inline, and writes the response head with the first body
//! bytes in one write. A head split over several reads is waited for (bounded by the
//! header read timeout), and so is a short body.
//!
//! Anything else hands the connection, with every byte read so far, to hyper for the
//! rest of its life: a chunked or longer body (or a short one still incomplete when
//! the header read timeout is up), HTTP/1.0, HEAD, CONNECT, an upgrade, `Expect` or
//! `TE`, a target that is not a path or is longer than the limit, a head that does not
//! parse, is too large or has too many fields, and HTTP/2's preface. hyper then answers
//! as the limits say (400, 414, 431), as it did for every request before this loop.

use std::cell::Cell;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::limits::Limits;
use crate::reply::{FieldLines, Reply};
use crate::wire::{self, Span, push_hex, span_in, tokens};

use super::woken::Woken;

/// Most header fields this loop takes; a request with more goes to hyper, which
/// applies `limits.max_headers`.
const MAX_HEADERS: usize = 100;
/// What one read asks for (hyper's first read buffer is as large).
const READ_CHUNK: usize = 8 * 1024;
/// Largest request body this loop takes (read whole before the handler runs); a
/// longer one goes to hyper, which streams it.
const MAX_BODY: usize = 64 * 1024;
/// Response bytes gathered before they are written, while the body has more at hand.
const WRITE_AT: usize = 64 * 1024;
/// Header fields the request path may add to the client's (forwarding fields and the
/// consumer's name go beside them, see `proxy::Forwarding`): room for them up front,
/// so the map does not grow and rehash midway.
const ADDED_HEADERS: usize = 2;

/// The limits this loop applies itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    max_head: usize,
    max_headers: usize,
    max_uri: usize,
    /// How long a connection may wait for its next request: the shorter of the idle
    /// timeout and the header read timeout (hyper's header read timer also covers the
    /// wait for the next request).
    quiet: Duration,
    /// Longest a head may take to arrive once its first bytes have (hyper's
    /// `header_read_timeout`).
    head_timeout: Duration,
    /// Longest a write may go without the client taking a byte (`idle_timeout`): a
    /// client that stops reading does not keep its connection.
    stall: Duration,
}

impl Settings {
    pub(super) fn new(limits: &Limits) -> Self {
        Self {
            max_head: limits.max_header_bytes,
            max_headers: limits.max_headers.min(MAX_HEADERS),
            max_uri: limits.max_uri_bytes,
            quiet: limits.idle_timeout.min(limits.header_read_timeout),
            head_timeout: limits.header_read_timeout,
            stall: limits.idle_timeout,
        }
    }
}

/// How the loop left the connection. `Debug` shows lengths: the bytes are a client's
/// request, credentials included.
pub(super) enum Ended {
    /// Done with: closed by either side, an error, idle, or the gateway stopping.
    Closed,
    /// A request this loop does not serve: hyper takes the connection with these bytes.
    HandOver(BytesMut),
}

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("Closed"),
            Self::HandOver(read) => write!(f, "HandOver({} bytes)", read.len()),
        }
    }
}

/// A request head that passed every check, by offsets into the read buffer.
struct Parsed {
    len: usize,
    method: Method,
    target: (u32, u32),
    fields: usize,
    /// The body's length (`content-length`, 0 without one); it follows the head in
    /// the buffer, maybe not all read yet.
    body: usize,
    /// The client asked for the connection to close after this response.
    close: bool,
}

/// What the buffer holds.
enum Buffered {
    /// A request this loop serves, whole.
    Ready(Parsed),
    /// The start of a head: more must be read.
    PartialHead,
    /// A whole head, and the start of a body short enough for this loop.
    PartialBody,
    /// A request for hyper.
    Other,
}

/// Serves `stream` until it closes or a request needs hyper.
pub(super) async fn serve<H, F>(
    stream: &mut TcpStream,
    handler: &H,
    remote: SocketAddr,
    settings: Settings,
    stop: &watch::Receiver<bool>,
) -> Ended
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
    F: Future<Output: Into<Reply>>,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut spans = [Span::default(); MAX_HEADERS];
    // A stop that came after this connection began: checked after each response (an
    // atomic load, no lock), waited for only while the connection is idle.
    let stopping = stop.clone();
    let mut waiter = stop.clone();
    let stopped = waiter.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    // Both wrapped in `Woken`: each request's wait for the next polls neither (see
    // there).
    let mut stopped = Woken::new(stopped);
    let period = (settings.quiet / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut last = Instant::now();
    let mut check = Woken::new(Box::pin(tokio::time::sleep_until(last + period)));
    // The clock is read on the check's ticks, not per request (a clock read costs as
    // much as a few hundred instructions of the request path): a read marks the
    // connection `active`, and the next tick takes that as activity up to now. Ticks
    // are only looked at here, between requests, so the first one after a request's
    // answer still finds the mark its read left: an idle connection closes `quiet` to
    // `quiet + period` after its last answer, never earlier.
    let mut active = false;
    loop {
        while buf.is_empty() {
            // Once the previous heads are gone this takes their allocation back.
            buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => active = true,
                },
                _ = &mut stopped => return Ended::Closed,
                () = &mut check => {
                    let now = Instant::now();
                    if std::mem::take(&mut active) {
                        last = now;
                    } else if now.duration_since(last) >= settings.quiet {
                        tracing::debug!(%remote, "closing an idle connection");
                        return Ended::Closed;
                    }
                    check.get_mut().as_mut().reset(now + period);
                }
            }
        }
        // When this head's first bytes came, read once a head needs a second read.
        let mut head_started: Option<Instant> = None;
        let parsed = loop {
            match parse(&buf, settings, &mut spans) {
                Buffered::Ready(parsed) => break parsed,
                Buffered::Other => return Ended::HandOver(buf),
                partial => {
                    // A head split over several reads (a large one over a network
                    // with a small MTU) is bounded by the header read timeout from its
                    // first bytes, as hyper bounds it; a body that is not all here by
                    // then goes to hyper, which streams it without that bound.
                    let head = matches!(partial, Buffered::PartialHead);
                    if head && buf.len() >= settings.max_head {
                        return Ended::HandOver(buf);
                    }
                    buf.reserve(READ_CHUNK);
                    let deadline =
                        *head_started.get_or_insert_with(Instant::now) + settings.head_timeout;
                    tokio::select! {
                        biased;
                        read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => match read {
                            Ok(Ok(n)) if n > 0 => {}
                            Ok(_) => return Ended::Closed,
                            Err(_) if head => {
                                tracing::debug!(%remote, "request head not complete in time; closing");
                                return Ended::Closed;
                            }
                            Err(_) => return Ended::HandOver(buf),
                        },
                        _ = &mut stopped => return Ended::Closed,
                    }
                }
            }
        };
        let close = parsed.close;
        let Some(request) = build(&mut buf, &parsed, &spans) else {
            // What hyper answers a head the `http` types refuse.
            let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            send(stream, bad, settings.stall).await;
            return Ended::Closed;
        };
        let reply = handler(request, remote).await.into();
        let close = close || stopping.has_changed().unwrap_or(true);
        let kept = respond(stream, &mut out, reply, close, settings.stall).await;
        if !kept || close {
            let _ = stream.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// What the start of `buf` is: a whole request this loop serves, the start of one, or
/// a request for hyper.
fn parse(buf: &[u8], settings: Settings, spans: &mut [Span; MAX_HEADERS]) -> Buffered {
    match parse_head(buf, settings, spans) {
        Some(Some(parsed)) if buf.len() - parsed.len >= parsed.body => Buffered::Ready(parsed),
        // A body this loop would take once the rest of it is here.
        Some(Some(parsed)) if parsed.body <= MAX_BODY => Buffered::PartialBody,
        Some(Some(_)) => Buffered::Other,
        Some(None) => Buffered::PartialHead,
        None => Buffered::Other,
    }
}

/// The head at the start of `buf`: `Some(None)` while it is incomplete, `None` if it is
/// not one this loop serves.
fn parse_head(
    buf: &[u8],
    settings: Settings,
    spans: &mut [Span; MAX_HEADERS],
) -> Option<Option<Parsed>> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let slots = slots.get_mut(..settings.max_headers)?;
    let mut raw = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut raw, buf, slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Some(None),
        Err(_) => return None,
    };
    if len > settings.max_head || raw.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(raw.method?.as_bytes()).ok()?;
    if method == Method::HEAD || method == Method::CONNECT {
        return None;
    }
    let target = raw.path?;
    if !target.starts_with('/') || target.len() > settings.max_uri {
        return None;
    }
    let mut close = false;
    let mut body: Option<usize> = None;
    for (span, field) in spans.iter_mut().zip(raw.headers.iter()) {
        let name = field.name.as_bytes();
        let is = |known: &str| wire::is_name(name, known.as_bytes());
        if is("content-length") {
            // Digits only, and one length however often it is repeated (hyper
            // refuses the rest with 400).
            let value = field.value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n = std::str::from_utf8(value).ok()?.parse::<usize>().ok()?;
            if body.is_some_and(|b| b != n) {
                return None;
            }
            body = Some(n);
        } else if is("transfer-encoding") || is("expect") || is("upgrade") || is("te") {
            return None;
        } else if is("connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        }
        span.name = span_in(buf, name);
        span.value = span_in(buf, field.value);
    }
    Some(Some(Parsed {
        len,
        method,
        target: span_in(buf, target.as_bytes()),
        fields: raw.headers.len(),
        body: body.unwrap_or(0),
        close,
    }))
}

/// The request, its head taken off `buf`; `None` if the `http` types refuse a part.
fn build(
    buf: &mut BytesMut,
    parsed: &Parsed,
    spans: &[Span; MAX_HEADERS],
) -> Option<Request<RequestBody>> {
    let head = buf.split_to(parsed.len).freeze();
    let share = |span| head.slice_ref(wire::part(&head, span));
    let uri = Uri::from_maybe_shared(share(parsed.target)).ok()?;
    let body = match parsed.body {
        0 => RequestBody::Empty,
        n => RequestBody::Full(Some(buf.split_to(n).freeze())),
    };
    let mut request = Request::new(body);
    *request.method_mut() = parsed.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    // Filled where it lies: a map built beside it would be moved in and the empty
    // one dropped. An earlier request's map, where there is one, has the room.
    if let Some(spare) = crate::recycle::take_headers() {
        *request.headers_mut() = spare;
    }
    let headers = request.headers_mut();
    headers.reserve(parsed.fields + ADDED_HEADERS);
    for span in spans.get(..parsed.fields)? {
        let name = HeaderName::from_bytes(wire::part(&head, span.name)).ok()?;
        headers.append(name, field_value(share(span.value))?);
    }
    Some(request)
}

/// A header value httparse accepted, as a `HeaderValue`. An ASCII one (nearly all) is
/// not checked byte by byte a second time: `is_ascii` reads a word at a time, where
/// `HeaderValue`'s own check takes each byte of every value, a bearer token's included.
fn field_value(value: bytes::Bytes) -> Option<HeaderValue> {
    if !value.is_ascii() {
        // obs-text: not UTF-8, which the unchecked constructor requires.
        return HeaderValue::from_maybe_shared(value).ok();
    }
    #[expect(
        unsafe_code,
        reason = "ASCII bytes httparse checked against the set HeaderValue allows"
    )]
    // SAFETY: the constructor requires UTF-8, and ASCII is. `HeaderValue` itself
    // holds HTAB, SP, VCHAR and obs-text, and httparse takes a request field value
    // only if every byte is one of those
    // (`field_value_bytes_are_the_ones_header_value_takes` checks all 256).
    let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
    Some(value)
}

/// What the loop makes of bytes a client sent. `Debug` shows lengths and the method,
/// never header values, targets or bytes (a token can be in any of them).
#[non_exhaustive]
pub enum Decoded {
    /// A request it serves: the request, and how many bytes of the input it took.
    Served(Box<Request<RequestBody>>, usize),
    /// A head the `http` types refuse: answered 400, connection closed.
    Refused,
    /// Handed to hyper with these bytes (the rest of the input).
    HandedOver(BytesMut),
    /// An incomplete head or short body: more would be read.
    Incomplete(BytesMut),
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Served(request, len) => write!(f, "Served({} {len} bytes)", request.method()),
            Self::Refused => f.write_str("Refused"),
            Self::HandedOver(rest) => write!(f, "HandedOver({} bytes)", rest.len()),
            Self::Incomplete(rest) => write!(f, "Incomplete({} bytes)", rest.len()),
        }
    }
}

/// Every request the loop takes from `bytes` under `limits`, in order, up to the first
/// one it does not serve. The same parsing as on a live connection; for tests and the
/// fuzz target.
pub fn decode_requests(bytes: &[u8], limits: &Limits) -> Vec<Decoded> {
    let settings = Settings::new(limits);
    let mut buf = BytesMut::from(bytes);
    let mut spans = [Span::default(); MAX_HEADERS];
    let mut decoded = Vec::new();
    while !buf.is_empty() {
        match parse(&buf, settings, &mut spans) {
            Buffered::Ready(parsed) => {
                let before = buf.len();
                match build(&mut buf, &parsed, &spans) {
                    Some(request) => {
                        decoded.push(Decoded::Served(Box::new(request), before - buf.len()));
                    }
                    None => {
                        decoded.push(Decoded::Refused);
                        break;
                    }
                }
            }
            Buffered::Other => {
                decoded.push(Decoded::HandedOver(buf));
                break;
            }
            Buffered::PartialHead | Buffered::PartialBody => {
                decoded.push(Decoded::Incomplete(buf));
                break;
            }
        }
    }
    decoded
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// Writes `reply`; whether the connection can carry another request.
async fn respond(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    reply: Reply,
    close: bool,
    stall: Duration,
) -> bool {
    let (response, lines) = reply.into_parts();
    let (parts, mut body) = response.into_parts();
    out.clear();
    let status = parts.status;
    let fields = match &lines {
        Some(lines) => Fields::Lines(lines),
        None => Fields::Map(&parts.headers),
    };
    let declared = match fields {
        Fields::Lines(lines) => lines.content_length().map(Some),
        Fields::Map(headers) => headers.get(header::CONTENT_LENGTH).map(|v| {
            std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        }),
    };
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else {
        match declared {
            Some(Some(n)) => Framing::Length(n),
            // A length nobody can parse: the connection cannot be delimited.
            Some(None) => return false,
            None => match body.size_hint().exact() {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            },
        }
    };
    encode_head(out, status, fields, framing, declared.is_some(), close);
    // The lines are in `out` now.
    if let Some(lines) = lines {
        lines.recycle();
    }
    if framing == Framing::Empty {
        drop(body);
        return send(stream, out, stall).await;
    }
    let mut sent: u64 = 0;
    loop {
        // Frames already at hand join the head in one write; the buffer goes out
        // before waiting for more.
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
        let frame = match polled.await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    if !send(stream, out, stall).await {
                        return false;
                    }
                    out.clear();
                }
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers are not forwarded.
                Err(_) => continue,
            },
            Some(Err(e)) => {
                // Cut short: what was sent cannot be taken back; the client sees the
                // connection close before the body's end.
                tracing::debug!(error = %e, "response body failed");
                send(stream, out, stall).await;
                return false;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent = sent.saturating_add(data.len() as u64);
        match framing {
            Framing::Length(n) if sent > n => {
                send(stream, out, stall).await;
                return false;
            }
            Framing::Chunked => {
                push_hex(out, data.len() as u64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(&data),
        }
        if out.len() >= WRITE_AT {
            if !send(stream, out, stall).await {
                return false;
            }
            out.clear();
        }
        // A body that says it has nothing more (and no trailers) is not polled for
        // its end: an upstream answer that came whole with its head is one poll, not
        // two, through the body's layers.
        if body.is_end_stream() {
            break;
        }
    }
    drop(body);
    let complete = match framing {
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            true
        }
        Framing::Length(n) => sent == n,
        Framing::Empty => true,
    };
    send(stream, out, stall).await && complete
}

/// Writes all of `out`; false if the stream failed or took no byte for `stall`.
async fn send(stream: &mut TcpStream, out: &[u8], stall: Duration) -> bool {
    // Most answers fit in the socket's buffer: written at once, no timer armed.
    let mut rest = out;
    match stream.try_write(rest) {
        Ok(n) => rest = rest.get(n..).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => return false,
    }
    while !rest.is_empty() {
        match tokio::time::timeout(stall, stream.write(rest)).await {
            Ok(Ok(n)) if n > 0 => rest = rest.get(n..).unwrap_or_default(),
            _ => return false,
        }
    }
    true
}

/// A response's header fields, in either of the forms a [`Reply`] holds them.
#[derive(Clone, Copy)]
enum Fields<'a> {
    Map(&'a HeaderMap),
    /// Without hop-by-hop fields (Transfer-Encoding and Connection among them).
    Lines(&'a FieldLines),
}

/// The status line and fields. Transfer-Encoding and Connection are the loop's own.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: Fields<'_>,
    framing: Framing,
    declared: bool,
    close: bool,
) {
    let size = match fields {
        Fields::Map(headers) => wire::fields_len(headers),
        Fields::Lines(lines) => lines.as_bytes().len(),
    };
    out.reserve(128 + size);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let dated = match fields {
        Fields::Map(headers) => {
            for (name, value) in headers {
                if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
                    continue;
                }
                wire::push_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
            headers.contains_key(header::DATE)
        }
        Fields::Lines(lines) => {
            out.extend_from_slice(lines.as_bytes());
            lines.has_date()
        }
    };
    match framing {
        Framing::Length(n) if !declared => wire::push_content_length(out, n),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !dated {
        push_date(out);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `date: <IMF-fixdate>\r\n`, formatted once a second per worker thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let second = crate::clock::unix_seconds();
    let text = DATE.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second));
        if let Some(dst) = text.get_mut(..formatted.len()) {
            dst.copy_from_slice(formatted.as_bytes());
        }
        cached.set((second, text));
        text
    });
    wire::push_field(out, b"date", &text);
}

#[cfg(test)]
mod tests;
