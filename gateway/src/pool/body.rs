//! The body of a pooled upstream response: read from the connection as the client
//! takes it, decoded by its framing, and the connection given back to its pool at its
//! end. A body whose bytes all came with the head (most small responses) is handed
//! over whole, its connection back in the pool before the response leaves.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use super::exchange::{Conn, READ_CHUNK, take};
use super::{Pool, PoolError};

/// Longest chunk-size line, and most trailer bytes, of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// A response body that gives its connection back to the pool once read to the end.
pub struct PooledBody {
    kind: Kind,
}

enum Kind {
    /// Already read (or empty); the connection is back in its pool or closed.
    Whole(Option<Bytes>),
    Streaming(Streaming),
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

/// Where the connection goes when the body ends: its pool and node, or nowhere
/// (closed) when it cannot carry another request.
pub(super) type Home = Option<(Arc<Pool>, usize)>;

struct Streaming {
    conn: Option<Conn>,
    decoder: Decoder,
    home: Home,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Decoder {
    Length(u64),
    UntilClose,
    Chunk(Chunk),
    Done,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

pub(super) enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

impl Decoder {
    /// Decodes what `buf` holds: the next piece of body data, the end, or the need
    /// for more bytes.
    pub(super) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, PoolError> {
        loop {
            match self {
                Decoder::Done => return Ok(Step::End),
                Decoder::UntilClose | Decoder::Length(_) if buf.is_empty() => {
                    return Ok(Step::NeedMore);
                }
                Decoder::UntilClose => return Ok(Step::Data(buf.split().freeze())),
                Decoder::Length(left) => {
                    let data = take(buf, *left);
                    *left -= data.len() as u64;
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Step::Data(data));
                }
                Decoder::Chunk(Chunk::Size) => {
                    let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(PoolError::Malformed("chunk size line too long".into()));
                        }
                        return Ok(Step::NeedMore);
                    };
                    let line = buf.split_to(eol + 1);
                    let size = chunk_size(&line)?;
                    *self = Decoder::Chunk(if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    });
                }
                Decoder::Chunk(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let data = take(buf, *left);
                    *left -= data.len() as u64;
                    if *left == 0 {
                        *self = Decoder::Chunk(Chunk::DataEnd);
                    }
                    return Ok(Step::Data(data));
                }
                Decoder::Chunk(Chunk::DataEnd) => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                    } else if buf.starts_with(b"\n") {
                        let _ = buf.split_to(1);
                    } else if buf.is_empty() || buf.as_ref() == b"\r" {
                        return Ok(Step::NeedMore);
                    } else {
                        return Err(PoolError::Malformed(
                            "chunk data longer than its size".into(),
                        ));
                    }
                    *self = Decoder::Chunk(Chunk::Size);
                }
                Decoder::Chunk(Chunk::Trailers(seen)) => {
                    let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                        if *seen + buf.len() > MAX_TRAILER_BYTES {
                            return Err(PoolError::Malformed("chunked trailers too large".into()));
                        }
                        return Ok(Step::NeedMore);
                    };
                    let line = buf.split_to(eol + 1);
                    // Trailers are not forwarded; the empty line ends the body.
                    if line.as_ref() == b"\r\n" || line.as_ref() == b"\n" {
                        *self = Decoder::Done;
                        return Ok(Step::End);
                    }
                    *seen += line.len();
                    if *seen > MAX_TRAILER_BYTES {
                        return Err(PoolError::Malformed("chunked trailers too large".into()));
                    }
                }
            }
        }
    }
}

impl PooledBody {
    /// A body already read whole (`None`: empty).
    pub(super) fn whole(data: Option<Bytes>) -> Self {
        Self {
            kind: Kind::Whole(data.filter(|d| !d.is_empty())),
        }
    }

    /// The body's bytes, when they are all here (`None`: an empty body); else the
    /// body as it was.
    #[expect(
        clippy::result_large_err,
        reason = "not an error: the body itself, handed back, moved as it would be anyway"
    )]
    pub fn into_whole(self) -> Result<Option<Bytes>, Self> {
        match self.kind {
            Kind::Whole(data) => Ok(data),
            kind @ Kind::Streaming(_) => Err(Self { kind }),
        }
    }

    /// A body still to be read from `conn`.
    pub(super) fn streaming(conn: Conn, decoder: Decoder, home: Home) -> Self {
        Self {
            kind: Kind::Streaming(Streaming {
                conn: Some(conn),
                decoder,
                home,
            }),
        }
    }
}

impl Streaming {
    /// The end: the connection goes home if nothing beyond the body was sent.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let (Some(conn), Some((pool, index))) = (self.conn.take(), self.home.take())
            && conn.buf.is_empty()
        {
            pool.checkin(index, conn);
        }
    }

    fn fail(&mut self, error: PoolError) -> Poll<Option<Result<Frame<Bytes>, PoolError>>> {
        self.decoder = Decoder::Done;
        self.conn = None;
        self.home = None;
        Poll::Ready(Some(Err(error)))
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PoolError>>> {
        loop {
            let step = match self.conn.as_mut() {
                Some(conn) => self.decoder.step(&mut conn.buf),
                None => Ok(Step::End),
            };
            match step {
                Ok(Step::Data(data)) => {
                    if matches!(self.decoder, Decoder::Done) {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => return self.fail(e),
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if conn.buf.capacity() - conn.buf.len() < READ_CHUNK / 4 {
                conn.buf.reserve(READ_CHUNK);
            }
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.buf
            ));
            match read {
                Ok(0) if matches!(self.decoder, Decoder::UntilClose) => {
                    // The end of such a body; the connection cannot be reused.
                    self.home = None;
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return self.fail(PoolError::Malformed(
                        "the upstream closed the connection before the body ended".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return self.fail(PoolError::Io(e)),
            }
        }
    }
}

/// The size of a chunk from its line (`1a;ext=v\r\n`).
fn chunk_size(line: &[u8]) -> Result<u64, PoolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let bad = || PoolError::Malformed("invalid chunk size".into());
    if digits.is_empty() || digits.len() > 16 {
        return Err(bad());
    }
    let mut size: u64 = 0;
    for d in digits {
        let v = char::from(*d).to_digit(16).ok_or_else(bad)?;
        size = (size << 4) | u64::from(v);
    }
    Ok(size)
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = PoolError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PoolError>>> {
        match &mut self.kind {
            Kind::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Streaming(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole(data) => data.is_none(),
            Kind::Streaming(s) => matches!(s.decoder, Decoder::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Streaming(Streaming {
                decoder: Decoder::Length(left),
                ..
            }) => SizeHint::with_exact(*left),
            Kind::Streaming(Streaming {
                decoder: Decoder::Done,
                ..
            }) => SizeHint::with_exact(0),
            Kind::Streaming(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_parse_with_extensions_and_refuse_junk() {
        assert_eq!(chunk_size(b"1a\r\n").unwrap(), 26);
        assert_eq!(chunk_size(b"FF;name=value\r\n").unwrap(), 255);
        assert_eq!(chunk_size(b"0\n").unwrap(), 0);
        assert!(chunk_size(b"\r\n").is_err());
        assert!(chunk_size(b"zz\r\n").is_err());
        assert!(chunk_size(b"-1\r\n").is_err());
        assert!(chunk_size(b"11111111111111111\r\n").is_err());
    }
}
