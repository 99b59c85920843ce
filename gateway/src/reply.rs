//! What the request path answers: an `http` response whose header fields may still be
//! the upstream's HTTP/1.1 lines.
//!
//! A proxied answer's fields go from the upstream's response head to the client as
//! lines. Building a `HeaderMap` of them (each name parsed into a `HeaderName` and
//! hashed, each value checked again) and encoding it back into lines was about a
//! seventh of a proxied request's user-space instructions, for headers nobody on the
//! path reads. hyper (HTTP/2, and HTTP/1.1 connections the gateway's own loop handed
//! over) takes only a `HeaderMap`: it gets one built from the lines
//! ([`Reply::into_response`]).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ProxyBody;
use crate::wire;

/// Response header fields as `name: value\r\n` lines, in the order the upstream sent
/// them, hop-by-hop fields left out. Names and values are those httparse accepted,
/// which are the bytes `HeaderName` and `HeaderValue` accept. `Debug` shows sizes only:
/// a response header can carry a session cookie or a token.
#[derive(Clone)]
pub struct FieldLines {
    lines: Vec<u8>,
    content_length: Option<u64>,
    date: bool,
}

impl std::fmt::Debug for FieldLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldLines")
            .field("bytes", &self.lines.len())
            .field("content_length", &self.content_length)
            .field("date", &self.date)
            .finish()
    }
}

impl FieldLines {
    /// Room for `bytes` of lines (in an earlier answer's buffer where this worker has
    /// one: see [`Self::recycle`]).
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        let mut lines = crate::recycle::take_lines().unwrap_or_default();
        lines.reserve(bytes);
        Self {
            lines,
            content_length: None,
            date: false,
        }
    }

    /// Gives the buffer back, emptied, for a later answer on this worker.
    pub(crate) fn recycle(self) {
        crate::recycle::give_lines(self.lines);
    }

    /// Appends the field `name: value`. `name` and `value` must be what httparse
    /// accepts in a head (token characters; visible characters, spaces and tabs).
    pub(crate) fn push(&mut self, name: &[u8], value: &[u8]) {
        wire::push_field(&mut self.lines, name, value);
    }

    /// Appends whole lines, each `name: value\r\n` with a name and value as
    /// [`Self::push`] takes them.
    pub(crate) fn push_verbatim(&mut self, lines: &[u8]) {
        self.lines.extend_from_slice(lines);
    }

    /// Records the `content-length` among the lines (the one the body is held to).
    pub(crate) fn set_content_length(&mut self, length: u64) {
        self.content_length = Some(length);
    }

    /// Records whether a `date` field is among the lines.
    pub(crate) fn set_date(&mut self, date: bool) {
        self.date = date;
    }

    /// Appends `content-length: length`, the length the response's framing follows.
    pub(crate) fn push_content_length(&mut self, length: u64) {
        self.content_length = Some(length);
        wire::push_content_length(&mut self.lines, length);
    }

    /// The lines, each ending in CRLF.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    /// The `content-length` among the fields.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether a `date` field is among them.
    pub(crate) fn has_date(&self) -> bool {
        self.date
    }

    /// Each field's name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines
            .split(|b| *b == b'\n')
            .filter_map(|line| line.strip_suffix(b"\r"))
            .filter_map(|line| {
                let colon = line.iter().position(|b| *b == b':')?;
                let (name, value) = line.split_at(colon);
                Some((name, value.get(2..).unwrap_or_default()))
            })
    }

    /// The fields as a `HeaderMap`.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in self.iter() {
            // Both parse: httparse accepted them (see the type's doc). A field that
            // did not would be left out rather than fail the whole response.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        headers
    }
}

/// A response from the request path. Its header fields are either the response's
/// `HeaderMap` or, for an answer of the gateway's own HTTP/1.1 upstream client,
/// [`FieldLines`] (the map is then empty). `Debug` shows the status and sizes, never
/// a field.
pub struct Reply<B = ProxyBody> {
    response: Response<B>,
    lines: Option<FieldLines>,
}

impl<B> std::fmt::Debug for Reply<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.response.status())
            .field("headers", &self.response.headers().len())
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

impl<B> From<Response<B>> for Reply<B> {
    fn from(response: Response<B>) -> Self {
        Self {
            response,
            lines: None,
        }
    }
}

impl<B> Reply<B> {
    /// A response whose header fields are `lines` (its own map is left empty).
    pub(crate) fn with_lines(mut response: Response<B>, lines: FieldLines) -> Self {
        response.headers_mut().clear();
        Self {
            response,
            lines: Some(lines),
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The response, to change its status, version or body. Its header map is empty
    /// when the fields are [`Self::lines`]: use [`Self::headers_mut`] to change them.
    pub(crate) fn response_mut(&mut self) -> &mut Response<B> {
        &mut self.response
    }

    /// The header fields as the upstream's lines, when they are kept that way.
    pub fn lines(&self) -> Option<&FieldLines> {
        self.lines.as_ref()
    }

    /// The header fields as a map, built from the lines if they were kept as lines.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        if let Some(lines) = self.lines.take() {
            *self.response.headers_mut() = lines.to_header_map();
        }
        self.response.headers_mut()
    }

    /// The response and its lines (`None` when the map holds the fields).
    pub(crate) fn into_parts(self) -> (Response<B>, Option<FieldLines>) {
        (self.response, self.lines)
    }

    /// The `http` response, its header map built from the lines if needed.
    pub fn into_response(self) -> Response<B> {
        let Self {
            mut response,
            lines,
        } = self;
        if let Some(lines) = lines {
            *response.headers_mut() = lines.to_header_map();
        }
        response
    }

    /// The same reply with its body mapped.
    pub fn map<C>(self, f: impl FnOnce(B) -> C) -> Reply<C> {
        Reply {
            response: self.response.map(f),
            lines: self.lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> FieldLines {
        let mut lines = FieldLines::with_capacity(64);
        lines.push(b"Server", b"nginx");
        lines.push(b"x-empty", b"");
        lines.push_content_length(12);
        lines.push(b"Date", b"Thu, 03 Dec 2026 14:43:08 GMT");
        lines.set_date(true);
        lines.push(b"set-cookie", b"a=1");
        lines.push(b"set-cookie", b"b=2");
        lines
    }

    #[test]
    fn lines_are_the_fields_in_order() {
        let lines = lines();
        assert_eq!(
            lines.as_bytes(),
            b"Server: nginx\r\nx-empty: \r\ncontent-length: 12\r\nDate: Thu, 03 Dec 2026 14:43:08 GMT\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n"
        );
        assert_eq!(lines.content_length(), Some(12));
        assert!(lines.has_date());
        let fields: Vec<_> = lines.iter().collect();
        assert_eq!(fields.len(), 6);
        assert_eq!(fields[1], (&b"x-empty"[..], &b""[..]));
        assert_eq!(fields[3].1, b"Thu, 03 Dec 2026 14:43:08 GMT");
    }

    #[test]
    fn the_map_holds_every_field() {
        let map = lines().to_header_map();
        assert_eq!(map.len(), 6);
        assert_eq!(map["server"], "nginx");
        assert_eq!(map["x-empty"], "");
        assert_eq!(map["content-length"], "12");
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn a_reply_with_lines_becomes_a_response_with_those_headers() {
        let stale = || {
            let mut response = Response::new(());
            response
                .headers_mut()
                .insert("x-stale", HeaderValue::from_static("1"));
            response
        };
        assert!(
            Reply::with_lines(stale(), lines())
                .into_parts()
                .0
                .headers()
                .is_empty()
        );
        let response = Reply::with_lines(stale(), lines()).into_response();
        assert_eq!(response.headers()["server"], "nginx");
        assert!(response.headers().get("x-stale").is_none());
    }

    #[test]
    fn headers_mut_turns_lines_into_the_map() {
        let mut reply = Reply::with_lines(Response::new(()), lines());
        reply.headers_mut().remove("server");
        assert!(reply.lines().is_none());
        assert_eq!(reply.headers_mut().len(), 5);
        assert_eq!(reply.into_response().headers()["x-empty"], "");
    }

    #[test]
    fn debug_shows_no_field() {
        let shown = format!("{:?}", Reply::with_lines(Response::new(()), lines()));
        assert!(!shown.contains("a=1"), "{shown}");
        assert!(!shown.contains("nginx"), "{shown}");
    }
}
