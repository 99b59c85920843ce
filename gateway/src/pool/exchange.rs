//! One HTTP/1.1 exchange on an upstream connection, driven by the request's own task:
//! no connection task and no channel between the two (hyper's client has both, and
//! they cost a third of a proxied request). The head goes out in one write, a body
//! streams while the response head is awaited (an upstream may answer early), and the
//! response head is parsed into a status, the header fields as lines for the client
//! ([`FieldLines`]), and the framing of the body that follows.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header;
use http::uri::Authority;
use http::{HeaderValue, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::{Instant, Sleep};

use super::{Outbound, PoolError};
use crate::body::ProxyBody;
use crate::proxy::{Forwarding, is_hop_by_hop_name};
use crate::reply::FieldLines;
use crate::wire::{self, push_hex, tokens};

/// Longest response head; hyper's client allows about as much.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a response head (hyper's client default).
const MAX_HEADERS: usize = 100;
/// What one read asks for.
pub(super) const READ_CHUNK: usize = 8 * 1024;
/// The most a connection keeps of the buffer its last request head was written in.
const KEPT_HEAD_CAPACITY: usize = 16 * 1024;

/// A connection to a node and the bytes read from it but not consumed yet.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    /// Kept across exchanges: once the previous response's bytes are dropped, its
    /// allocation is reused rather than a new one made per request.
    pub(super) buf: BytesMut,
    /// The request head being sent, kept for the same reason.
    out: Vec<u8>,
    /// The response head's deadline. Kept with the connection and moved later for
    /// each exchange, which the timer wheel takes as a compare-and-swap; a timer made
    /// per request (`tokio::time::timeout`) was inserted into and removed from the
    /// wheel every time.
    deadline: Pin<Box<Sleep>>,
}

/// How a request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outgoing {
    /// No body.
    Empty,
    /// `content-length`.
    Length(u64),
    /// `transfer-encoding: chunked` (a body of unknown length).
    Chunked,
}

impl Outgoing {
    pub(super) fn of(body: &ProxyBody) -> Self {
        if body.is_end_stream() {
            Self::Empty
        } else if let Some(n) = body.size_hint().exact() {
            Self::Length(n)
        } else {
            Self::Chunked
        }
    }
}

/// How the response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// None (a HEAD request, 204, 304, `content-length: 0`).
    Empty,
    /// `content-length`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
pub(super) struct ResponseHead {
    /// Status and version; the header fields are in `lines`.
    pub(super) response: Response<()>,
    pub(super) lines: FieldLines,
    pub(super) framing: Framing,
    /// The connection may carry another request once the body has been read.
    pub(super) keep_alive: bool,
}

/// Why an exchange failed, and whether the request may go out again on another
/// connection.
pub(super) struct Failure {
    pub(super) error: PoolError,
    pub(super) replay: Replay,
}

/// What the upstream may have seen of a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Nothing was written: safe to send again.
    Unsent,
    /// The head (and no body) was written, and the connection closed without a byte
    /// of response: a reused connection the upstream had closed. Safe to send again
    /// when the method is idempotent.
    NoResponse,
    /// Possibly processed.
    Never,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::new(),
            // Not armed until the first exchange sets it.
            deadline: Box::pin(tokio::time::sleep(Duration::MAX)),
        }
    }

    /// Whether an idle connection can take a request: nothing arrived while it was
    /// idle. An upstream that closes an idle connection sends a FIN, which the
    /// reactor has usually seen by now; when it has not, the request fails with
    /// [`Replay::NoResponse`] and goes out on another connection.
    pub(super) fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            // Readable while idle: EOF, an error or bytes nobody asked for, unless the
            // readiness is stale, which a read that would block tells.
            std::task::Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Sends `outbound`'s head to the node at `authority` (and `body`, taken only once
    /// the head is out) and reads the response head by `deadline`. 1xx responses
    /// other than 101 are skipped.
    pub(super) async fn exchange(
        &mut self,
        outbound: &Outbound<'_>,
        authority: &Authority,
        body: &mut Option<ProxyBody>,
        outgoing: Outgoing,
        head_request: bool,
        deadline: Instant,
    ) -> Result<ResponseHead, Failure> {
        let Self {
            stream,
            buf,
            out,
            deadline: timer,
        } = self;
        out.clear();
        encode_head(out, outbound, outgoing, authority);
        timer.as_mut().reset(deadline);
        let exchange = Self::send_and_read(stream, buf, out, body, outgoing, head_request);
        let result = tokio::select! {
            biased;
            result = exchange => result,
            () = timer.as_mut() => Err(Failure {
                error: PoolError::Timeout,
                replay: Replay::Never,
            }),
        };
        // A head far larger than most is not kept with the connection while it idles.
        if out.capacity() > KEPT_HEAD_CAPACITY {
            *out = Vec::new();
        }
        result
    }

    async fn send_and_read(
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        head: &[u8],
        body: &mut Option<ProxyBody>,
        outgoing: Outgoing,
        head_request: bool,
    ) -> Result<ResponseHead, Failure> {
        let (mut reader, mut writer) = stream.split();
        if let Err(e) = writer.write_all(head).await {
            return Err(Failure {
                error: PoolError::Io(e),
                replay: Replay::Unsent,
            });
        }
        let Some(body) = body.take() else {
            return read_head(&mut reader, buf, head_request)
                .await
                .map_err(|error| Failure {
                    replay: if matches!(error, PoolError::Closed) {
                        Replay::NoResponse
                    } else {
                        Replay::Never
                    },
                    error,
                });
        };
        // Boxed: the body's state is most of this future's size, and most requests
        // have no body; unboxed, every request would carry and move it.
        Box::pin(exchange_body(
            reader,
            writer,
            buf,
            body,
            outgoing,
            head_request,
        ))
        .await
    }
}

/// The rest of an exchange whose request has a body: the body streams while the
/// response head is awaited.
async fn exchange_body(
    mut reader: ReadHalf<'_>,
    mut writer: WriteHalf<'_>,
    buf: &mut BytesMut,
    mut body: ProxyBody,
    outgoing: Outgoing,
    head_request: bool,
) -> Result<ResponseHead, Failure> {
    let never = |error| Failure {
        error,
        replay: Replay::Never,
    };
    let send = write_body(&mut writer, &mut body, outgoing);
    let read = read_head(&mut reader, buf, head_request);
    tokio::pin!(send, read);
    tokio::select! {
        biased;
        head = &mut read => {
            // An early answer: the rest of the body is not sent, and the
            // connection cannot carry another request.
            let mut head = head.map_err(never)?;
            head.keep_alive = false;
            Ok(head)
        }
        sent = &mut send => match sent {
            Ok(()) => read.await.map_err(never),
            // The upstream may have answered and stopped reading.
            Err(error) => match read.await {
                Ok(mut head) => {
                    head.keep_alive = false;
                    Ok(head)
                }
                Err(_) => Err(never(error)),
            },
        },
    }
}

/// The request head in origin form; `Host` is the node's when the request has none,
/// the body's framing is the one [`Outgoing`] says (a client's own `content-length`
/// is replaced by the length the body will have), and `forwarding`'s fields replace
/// the request's own of those names.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    outbound: &Outbound<'_>,
    outgoing: Outgoing,
    authority: &Authority,
) {
    let Outbound {
        method,
        target,
        headers,
        host,
        forwarding,
    } = *outbound;
    // The Host line: the replacement, else the request's own (sent with its other
    // fields), else the node's. A scan of the few names rather than a lookup, which
    // would hash the name.
    let target = target.as_str();
    let own_host = host.is_none() && headers.keys().any(|name| name == header::HOST);
    // Sized once: growing the buffer midway copies the head.
    out.reserve(
        64 + target.len()
            + authority.as_str().len()
            + host.map_or(0, HeaderValue::len)
            + wire::fields_len(headers)
            + forwarding.map_or(0, Forwarding::encoded_len),
    );
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match host {
        Some(host) => wire::push_field(out, b"host", host.as_bytes()),
        None if !own_host => wire::push_field(out, b"host", authority.as_str().as_bytes()),
        None => {}
    }
    for (name, value) in headers {
        if (outgoing != Outgoing::Empty && name == header::CONTENT_LENGTH)
            || (host.is_some() && name == header::HOST)
            || (forwarding.is_some() && Forwarding::replaces(name))
        {
            continue;
        }
        wire::push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(forwarding) = forwarding {
        forwarding.write(out);
    }
    match outgoing {
        Outgoing::Empty => {}
        Outgoing::Length(n) => wire::push_content_length(out, n),
        Outgoing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

async fn write_body(
    writer: &mut WriteHalf<'_>,
    body: &mut ProxyBody,
    outgoing: Outgoing,
) -> Result<(), PoolError> {
    let mut sent: u64 = 0;
    let mut chunk = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(PoolError::RequestBody)?;
        // Trailers are not forwarded.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent = sent.saturating_add(data.len() as u64);
        match outgoing {
            Outgoing::Length(n) => {
                if sent > n {
                    return Err(PoolError::RequestBody(
                        "the request body is longer than its content-length".into(),
                    ));
                }
                writer.write_all(&data).await.map_err(PoolError::Io)?;
            }
            Outgoing::Chunked => {
                chunk.clear();
                push_hex(&mut chunk, data.len() as u64);
                chunk.extend_from_slice(b"\r\n");
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                writer.write_all(&chunk).await.map_err(PoolError::Io)?;
            }
            Outgoing::Empty => {}
        }
    }
    match outgoing {
        Outgoing::Chunked => writer
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(PoolError::Io)?,
        Outgoing::Length(n) if sent != n => {
            return Err(PoolError::RequestBody(
                "the request body ended before its content-length".into(),
            ));
        }
        _ => {}
    }
    Ok(())
}

async fn read_head(
    reader: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<ResponseHead, PoolError> {
    let mut received = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match parse_head(buf, head_request)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Informational => continue,
                Parsed::Partial if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(PoolError::Malformed("response head too large".into()));
                }
                Parsed::Partial => {}
            }
        }
        buf.reserve(READ_CHUNK);
        let n = reader.read_buf(buf).await.map_err(PoolError::Io)?;
        if n == 0 {
            return Err(if received {
                PoolError::Malformed("connection closed in the middle of the response head".into())
            } else {
                PoolError::Closed
            });
        }
        received = true;
    }
}

pub(super) enum Parsed {
    Partial,
    /// A 1xx head, consumed.
    Informational,
    Final(ResponseHead),
}

pub(super) fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, PoolError> {
    // The slots are left uninitialised (zeroing them costs more than parsing).
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut raw = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut raw, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(PoolError::Malformed(e.to_string())),
    };
    let code = raw.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)
        .map_err(|_| PoolError::Malformed(format!("status code {code}")))?;
    let version = match raw.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(PoolError::Malformed(
                "101 Switching Protocols: protocol upgrades are not proxied".into(),
            ));
        }
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let fields = &*raw.headers;

    // The framing and the connection's own fields first: which fields go on to the
    // client depends on them.
    let mut content_length: Option<u64> = None;
    let (mut transfer_encoding, mut chunked) = (false, false);
    let (mut close, mut keep_alive_token, mut names_listed) = (false, false, false);
    for field in fields {
        let name = field.name.as_bytes();
        if wire::is_name(name, b"connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else {
                    names_listed = true;
                }
            }
        } else if wire::is_name(name, b"transfer-encoding") {
            transfer_encoding = true;
            chunked = tokens(field.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if wire::is_name(name, b"content-length") {
            for token in tokens(field.value) {
                let n = std::str::from_utf8(token)
                    .ok()
                    .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or_else(|| PoolError::Malformed("invalid content-length".into()))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(PoolError::Malformed("conflicting content-length".into()));
                }
                content_length = Some(n);
            }
        }
    }
    // The fields for the client, as lines: the head's size is room enough. Lines
    // already in the form `name: value\r\n` are copied as they are, several in one
    // copy where they follow each other in the head (most upstreams write every line
    // that way, and drop only their `Connection`).
    let head = buf.get(..len).unwrap_or_default();
    let mut lines = FieldLines::with_capacity(len);
    let mut run = Run::new(head);
    let (mut length_sent, mut dated) = (false, false);
    for field in fields {
        let name = field.name.as_bytes();
        if is_hop_by_hop_name(name) || (names_listed && named_by_connection(fields, name)) {
            continue;
        }
        if wire::is_name(name, b"content-length") {
            // Transfer-Encoding wins over Content-Length (RFC 9112 6.3), which must
            // not reach the client then; otherwise the one length, once.
            let Some(n) = content_length.filter(|_| !transfer_encoding && !length_sent) else {
                continue;
            };
            length_sent = true;
            let decimal = field.value.first() != Some(&b'0') || field.value.len() == 1;
            if !(decimal && field.value.iter().all(u8::is_ascii_digit)) {
                // `5, 5` or `007`: the client gets the one length, in decimal.
                run.copy_into(&mut lines);
                lines.push_content_length(n);
                continue;
            }
            lines.set_content_length(n);
        }
        dated |= wire::is_name(name, b"date");
        if !run.extend(&mut lines, name, field.value) {
            run.copy_into(&mut lines);
            lines.push(name, field.value);
        }
    }
    run.copy_into(&mut lines);
    lines.set_date(dated);
    buf.advance(len);
    let framing =
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else if transfer_encoding {
            if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else {
            match content_length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
    let keep_alive = !close
        && (version == Version::HTTP_11 || keep_alive_token)
        && framing != Framing::UntilClose
        && !(transfer_encoding && content_length.is_some());
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    Ok(Parsed::Final(ResponseHead {
        response,
        lines,
        framing,
        keep_alive,
    }))
}

/// Lines of a head that follow each other in it, gathered to be copied in one go.
struct Run<'h> {
    head: &'h [u8],
    lines: std::ops::Range<usize>,
}

impl<'h> Run<'h> {
    fn new(head: &'h [u8]) -> Self {
        Self { head, lines: 0..0 }
    }

    /// Adds the field `name: value` if it is a whole line of the head in the form
    /// `name: value\r\n` (`false` if not). A line that does not follow the run starts
    /// a new one, the run so far copied first.
    fn extend(&mut self, into: &mut FieldLines, name: &[u8], value: &[u8]) -> bool {
        let start = wire::span_in(self.head, name).0 as usize;
        let value_at = wire::span_in(self.head, value).0 as usize;
        let Some(end) = value_at.checked_add(value.len() + 2) else {
            return false;
        };
        let canonical = self.head.get(start + name.len()..value_at) == Some(b": ")
            && self.head.get(end - 2..end) == Some(b"\r\n");
        if !canonical {
            return false;
        }
        if start != self.lines.end {
            self.copy_into(into);
            self.lines.start = start;
        }
        self.lines.end = end;
        true
    }

    /// Copies the run into `into` and starts an empty one.
    fn copy_into(&mut self, into: &mut FieldLines) {
        if let Some(bytes) = self.head.get(self.lines.clone())
            && !bytes.is_empty()
        {
            into.push_verbatim(bytes);
        }
        self.lines = 0..0;
    }
}

/// Whether a `Connection` field names the field `name` (which then describes the
/// connection too, and is not forwarded).
fn named_by_connection(fields: &[httparse::Header<'_>], name: &[u8]) -> bool {
    fields.iter().any(|field| {
        field.name.eq_ignore_ascii_case("connection")
            && tokens(field.value).any(|t| t.eq_ignore_ascii_case(name))
    })
}

/// Bytes handed out as body data.
pub(super) fn take(buf: &mut BytesMut, at_most: u64) -> Bytes {
    let n = usize::try_from(at_most)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    buf.split_to(n).freeze()
}
