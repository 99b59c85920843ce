//! Body types shared by the server and the proxy, and the gateway's own small responses.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the gateway sends or forwards: streamed, never buffered whole. Bytes
/// the gateway already holds whole (its own answers, an upstream answer that came
/// with its head) are kept as they are; any other body is boxed. Most proxied
/// answers are whole, and a box for each was an allocation and a free per request.
pub struct ProxyBody(Kind);

enum Kind {
    /// The whole body, or none; `Some` is never empty.
    Whole(Option<Bytes>),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Lengths only: a body can carry a secret.
        match &self.0 {
            Kind::Whole(data) => write!(
                f,
                "ProxyBody::Whole({} bytes)",
                data.as_ref().map_or(0, Bytes::len)
            ),
            Kind::Boxed(_) => f.write_str("ProxyBody::Boxed"),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(data) => data.is_none(),
            Kind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Boxed(body) => body.size_hint(),
        }
    }
}

/// An empty body.
pub fn empty() -> ProxyBody {
    ProxyBody(Kind::Whole(None))
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    let bytes: Bytes = bytes.into();
    ProxyBody(Kind::Whole((!bytes.is_empty()).then_some(bytes)))
}

/// Wraps any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ProxyBody(Kind::Boxed(body.map_err(Into::into).boxed_unsync()))
}

/// A response with a JSON body (the gateway's own answers, shaped like APISIX's).
pub fn json(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A response with a plain text body.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The upstream stopped sending its body for longer than the read timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("upstream body read timed out")]
pub struct ReadTimeout;

/// A body that fails if no frame arrives within `timeout` of the previous one
/// (APISIX's `timeout.read` between two reads).
///
/// The clock runs only while the body waits for its upstream: it is armed when the
/// inner body first answers `Pending` after a frame, and disarmed by the next frame.
/// A body whose frames are already there (most small responses) never touches the
/// timer wheel, nor allocates a timer.
#[derive(Debug)]
pub struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`; the clock starts the first time it has to wait.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let sleep = match &mut this.sleep {
                    Some(sleep) => {
                        if !this.armed {
                            sleep.as_mut().reset(Instant::now() + this.timeout);
                        }
                        sleep
                    }
                    None => this
                        .sleep
                        .insert(Box::pin(tokio::time::sleep(this.timeout))),
                };
                this.armed = true;
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ReadTimeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body as the server hands it to the handler. Its `Debug` shows lengths,
/// never bytes (an Admin API body can carry credentials).
pub enum RequestBody {
    /// The request has none.
    Empty,
    /// Read whole with the head by the gateway's own HTTP/1.1 loop (short bodies);
    /// `None` once taken.
    Full(Option<Bytes>),
    /// Streamed by hyper from the client.
    Streamed(Incoming),
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("RequestBody::Empty"),
            Self::Full(data) => f
                .debug_struct("RequestBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Self::Streamed(_) => f.write_str("RequestBody::Streamed"),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Streamed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(data) => data.is_none(),
            Self::Streamed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Streamed(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_body_is_never_printed() {
        let body = RequestBody::Full(Some(Bytes::from_static(b"{\"secret\":\"s3cr3t\"}")));
        let shown = format!("{body:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("len: 19"), "{shown}");
    }

    /// Sends one frame, then never anything again.
    struct OneThenSilence(bool);

    impl Body for OneThenSilence {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"a")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_between_frames() {
        let mut body = IdleTimeout::new(OneThenSilence(false), Duration::from_secs(5));
        let first = body.frame().await;
        assert!(matches!(first, Some(Ok(_))));
        // Nothing more arrives; the paused clock auto-advances past 5 s.
        let second = body.frame().await;
        assert!(matches!(second, Some(Err(e)) if e.is::<ReadTimeout>()));
    }

    /// A frame every `gap`, `left` times.
    struct Steady {
        gap: Duration,
        sleep: Pin<Box<Sleep>>,
        left: u32,
    }

    impl Body for Steady {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.left -= 1;
                    let next = Instant::now() + self.gap;
                    self.sleep.as_mut().reset(next);
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"a")))))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_body_is_not_cut() {
        let gap = Duration::from_secs(3);
        let inner = Steady {
            gap,
            sleep: Box::pin(tokio::time::sleep(gap)),
            left: 4,
        };
        // 12 s in all, but never more than 3 s between frames.
        let mut body = IdleTimeout::new(inner, Duration::from_secs(5));
        for _ in 0..4 {
            assert!(matches!(body.frame().await, Some(Ok(_))));
        }
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn whole_bodies_are_one_frame_of_their_length() {
        let body = full("pong");
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(4));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "pong");
        // Empty bytes are the empty body: ended before a poll, length 0.
        for body in [full(""), empty()] {
            assert!(body.is_end_stream());
            assert_eq!(body.size_hint().exact(), Some(0));
            assert!(body.collect().await.unwrap().to_bytes().is_empty());
        }
    }

    #[tokio::test]
    async fn boxed_bodies_keep_their_frames_and_hints() {
        let body = boxed(http_body_util::Full::new(Bytes::from_static(b"abc")));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
    }

    #[test]
    fn a_proxy_body_is_printed_as_its_length() {
        assert_eq!(format!("{:?}", full("secret")), "ProxyBody::Whole(6 bytes)");
        assert!(!format!("{:?}", full("secret")).contains("secret"));
    }
}
