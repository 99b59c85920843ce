use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Response;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;

use super::*;
use crate::body;

fn settings() -> Settings {
    Settings::new(&Limits::default())
}

fn parsed(head: &[u8]) -> Option<Parsed> {
    match parse(head, settings(), &mut [Span::default(); MAX_HEADERS]) {
        Buffered::Ready(parsed) => Some(parsed),
        _ => None,
    }
}

#[test]
fn a_bodiless_http11_request_is_served_here() {
    let p = parsed(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n").unwrap();
    assert_eq!(p.method, Method::GET);
    assert_eq!(p.fields, 2);
    assert!(!p.close);
    let p =
        parsed(b"DELETE /a HTTP/1.1\r\nContent-Length: 0\r\nConnection: keep-alive, close\r\n\r\n")
            .unwrap();
    assert!(p.close, "connection: close is honoured");
}

#[test]
fn everything_else_goes_to_hyper() {
    let mut few = settings();
    few.max_headers = 2;
    few.max_head = 40;
    few.max_uri = 8;
    let cases: &[(&str, &[u8], Settings)] = &[
        (
            "a long body",
            b"POST /a HTTP/1.1\r\nContent-Length: 65537\r\n\r\nabc",
            settings(),
        ),
        (
            "two lengths",
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            settings(),
        ),
        (
            "a signed length",
            b"POST /a HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
            settings(),
        ),
        (
            "chunked",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            settings(),
        ),
        ("HTTP/1.0", b"GET /a HTTP/1.0\r\n\r\n", settings()),
        ("HEAD", b"HEAD /a HTTP/1.1\r\n\r\n", settings()),
        ("CONNECT", b"CONNECT x:443 HTTP/1.1\r\n\r\n", settings()),
        (
            "upgrade",
            b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            settings(),
        ),
        (
            "expect",
            b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            settings(),
        ),
        ("te", b"GET /a HTTP/1.1\r\nTE: trailers\r\n\r\n", settings()),
        (
            "absolute form",
            b"GET http://x/a HTTP/1.1\r\n\r\n",
            settings(),
        ),
        (
            "malformed",
            b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n",
            settings(),
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            settings(),
        ),
        (
            "too many fields",
            b"GET /a HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            few,
        ),
        (
            "head too large",
            b"GET / HTTP/1.1\r\nA: 0123456789012345678901\r\n\r\n",
            few,
        ),
        ("target too long", b"GET /123456789 HTTP/1.1\r\n\r\n", few),
    ];
    for (name, head, settings) in cases {
        let p = parse(head, *settings, &mut [Span::default(); MAX_HEADERS]);
        assert!(matches!(p, Buffered::Other), "{name}: not handed over");
    }
}

#[test]
fn a_head_or_a_short_body_not_all_here_waits_for_more() {
    let mut spans = [Span::default(); MAX_HEADERS];
    let head = parse(b"GET /a HTTP/1.1\r\nHost: x\r\n", settings(), &mut spans);
    assert!(matches!(head, Buffered::PartialHead));
    let body = parse(
        b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
        settings(),
        &mut spans,
    );
    assert!(matches!(body, Buffered::PartialBody));
}

/// The request at the start of `buf`, which the loop must serve; taken off `buf`.
fn served(buf: &mut BytesMut) -> Request<RequestBody> {
    let mut spans = [Span::default(); MAX_HEADERS];
    let Buffered::Ready(p) = parse(buf, settings(), &mut spans) else {
        panic!("not served by the loop");
    };
    build(buf, &p, &spans).unwrap()
}

#[test]
fn field_value_bytes_are_the_ones_header_value_takes() {
    // `build` skips HeaderValue's own check of the bytes (see `field_value`): every
    // byte the loop lets into a field value must be one HeaderValue accepts, and the
    // bytes HeaderValue refuses must not get past the parser. All 256, mid-value.
    let mut taken = 0;
    for byte in 0..=255u8 {
        let mut head = b"GET / HTTP/1.1\r\nX-Probe: a".to_vec();
        head.push(byte);
        head.extend_from_slice(b"b\r\n\r\n");
        let mut spans = [Span::default(); MAX_HEADERS];
        let Buffered::Ready(p) = parse(&head, settings(), &mut spans) else {
            assert!(
                HeaderValue::from_bytes(&[b'a', byte, b'b']).is_err()
                    || byte == b'\r'
                    || byte == b'\n',
                "byte {byte:#04x}: HeaderValue takes it but the loop does not"
            );
            continue;
        };
        let value = wire::part(&head, spans[0].value);
        assert!(
            HeaderValue::from_bytes(value).is_ok(),
            "byte {byte:#04x}: the loop takes it but HeaderValue does not"
        );
        let request = build(&mut BytesMut::from(&head[..]), &p, &spans).unwrap();
        assert_eq!(request.headers()["x-probe"].as_bytes(), value);
        taken += 1;
    }
    // HTAB, SP through `~`, and obs-text.
    assert_eq!(taken, 1 + 95 + 128);
}

#[test]
fn a_short_body_comes_with_its_head() {
    let mut buf = BytesMut::from(
        &b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\n"[..],
    );
    let mut request = served(&mut buf);
    assert_eq!(request.body().size_hint().exact(), Some(3));
    let frame = std::future::poll_fn(|cx| Pin::new(request.body_mut()).poll_frame(cx));
    let data = futures_now(frame).unwrap().unwrap().into_data().unwrap();
    assert_eq!(&data[..], b"abc");
    assert!(request.body().is_end_stream());
    assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n");
}

#[test]
fn the_head_is_taken_off_and_a_pipelined_request_stays() {
    let mut buf = BytesMut::from(
        &b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next HTTP/1.1\r\n"[..],
    );
    let request = served(&mut buf);
    assert_eq!(request.uri(), "/x?y=1");
    assert_eq!(request.version(), Version::HTTP_11);
    assert_eq!(request.headers()["host"], "h");
    let values: Vec<_> = request.headers().get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
    assert!(request.body().is_end_stream());
    assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n");
}

/// A connected pair of loopback TCP streams.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// What `respond` writes for `response`, and whether it kept the connection.
async fn written(response: impl Into<Reply>, close: bool) -> (String, bool) {
    let (mut client, mut server) = pair().await;
    let mut out = Vec::new();
    let kept = respond(
        &mut server,
        &mut out,
        response.into(),
        close,
        Duration::from_secs(5),
    )
    .await;
    drop(server);
    let mut text = String::new();
    client.read_to_string(&mut text).await.unwrap();
    (text, kept)
}

#[tokio::test]
async fn a_known_length_body_gets_content_length_and_a_date() {
    let (text, kept) = written(body::json(StatusCode::UNAUTHORIZED, r#"{"m":1}"#), false).await;
    assert!(kept);
    assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );
    assert!(text.contains("content-length: 7\r\n"), "{text}");
    assert!(
        text.contains("\r\ndate: ") && text.contains(" GMT\r\n"),
        "{text}"
    );
    assert!(!text.contains("connection:"), "{text}");
    assert!(text.ends_with("\r\n\r\n{\"m\":1}"), "{text}");
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked() {
    let frames = futures_stream([Bytes::from_static(b"hello "), Bytes::from_static(b"world")]);
    let (text, kept) = written(Response::new(body::boxed(StreamBody::new(frames))), true).await;
    assert!(kept);
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
        "{text}"
    );
}

/// A reply with `lines` for its fields and the body `abc`.
fn reply_with(lines: FieldLines) -> Reply {
    Reply::with_lines(Response::new(body::full("abc")), lines)
}

/// How often `name:` starts a line in `text`, in any case.
fn count_field(text: &str, name: &str) -> usize {
    text.to_ascii_lowercase()
        .matches(&format!("\r\n{name}:"))
        .count()
}

#[tokio::test]
async fn an_upstreams_lines_are_written_as_they_came() {
    let mut lines = FieldLines::with_capacity(64);
    lines.push(b"Server", b"up");
    lines.push_content_length(3);
    let (text, kept) = written(reply_with(lines.clone()), true).await;
    assert!(kept);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\nServer: up\r\ncontent-length: 3\r\ndate: "),
        "{text}"
    );
    assert_eq!(count_field(&text, "content-length"), 1, "{text}");
    assert!(
        text.ends_with(" GMT\r\nconnection: close\r\n\r\nabc"),
        "{text}"
    );

    // The upstream's date stays, and no second one is added.
    lines.push(b"Date", b"Thu, 03 Dec 2026 14:43:08 GMT");
    lines.set_date(true);
    let (text, kept) = written(reply_with(lines), false).await;
    assert!(kept);
    assert_eq!(count_field(&text, "date"), 1, "{text}");
    assert!(
        text.contains("\r\nDate: Thu, 03 Dec 2026 14:43:08 GMT\r\n"),
        "{text}"
    );

    // The body is held to the lines' length: a short one ends the connection.
    let mut lines = FieldLines::with_capacity(64);
    lines.push_content_length(10);
    let (text, kept) = written(reply_with(lines), false).await;
    assert!(!kept);
    assert!(text.contains("\r\ncontent-length: 10\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nabc"), "{text}");
}

#[tokio::test]
async fn no_content_has_no_body_and_a_short_body_closes() {
    let mut response = Response::new(body::full("ignored"));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let (text, kept) = written(response, false).await;
    assert!(kept);
    assert!(
        text.ends_with("\r\n\r\n") && !text.contains("ignored"),
        "{text}"
    );

    // The declared length is more than the body has: the connection cannot go on.
    let mut response = Response::new(body::full("abc"));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let (text, kept) = written(response, false).await;
    assert!(!kept);
    assert!(text.ends_with("\r\n\r\nabc"), "{text}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_then_a_body_hands_over() {
    let (mut client, mut server) = pair().await;
    client
        .write_all(
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n\
              POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let (_tx, stop) = watch::channel(false);
    let handler = |req: Request<RequestBody>, _| async move {
        body::text(StatusCode::OK, req.uri().path().to_owned())
    };
    let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let ended = serve(&mut server, &handler, remote, settings(), &stop).await;
    let Ended::HandOver(rest) = ended else {
        panic!("the POST was not handed over: {ended:?}");
    };
    assert_eq!(
        &rest[..],
        b"POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    );
    drop(server);
    let mut text = String::new();
    client.read_to_string(&mut text).await.unwrap();
    let first = text.find("\r\n\r\n/1").expect("first answer");
    let second = text.find("\r\n\r\n/2").expect("second answer");
    assert!(first < second, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}

#[tokio::test]
async fn a_stop_ends_a_busy_connection_after_its_answer_and_an_idle_one_at_once() {
    let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (tx, stop) = watch::channel(false);
    // The gateway begins to stop while a request is being handled.
    let (mut client, mut server) = pair().await;
    let handler = |_: Request<RequestBody>, _| {
        let _ = tx.send(true);
        async { body::text(StatusCode::OK, "ok") }
    };
    client
        .write_all(b"GET / HTTP/1.1\r\n\r\nGET /again HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let ended = serve(&mut server, &handler, remote, settings(), &stop).await;
    assert!(matches!(ended, Ended::Closed));
    drop(server);
    let mut text = String::new();
    client.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");

    // Already stopping, nothing in flight: closed without waiting for a request.
    let (_client, mut server) = pair().await;
    let ended = tokio::time::timeout(
        Duration::from_secs(5),
        serve(&mut server, &handler, remote, settings(), &stop),
    )
    .await;
    assert!(matches!(ended, Ok(Ended::Closed)));
}

/// A header read timeout of 3 s under a longer idle timeout: connections go quiet
/// after 3 s, checked every 0.75 s.
fn quiet_after_3s() -> Settings {
    Settings::new(&Limits {
        header_read_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(60),
        ..Limits::default()
    })
}

/// `serve` with [`quiet_after_3s`].
async fn serve_quiet_after_3s<H, F>(
    server: &mut TcpStream,
    handler: &H,
    stop: &watch::Receiver<bool>,
) -> Ended
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
    F: Future<Output: Into<Reply>>,
{
    let remote = "127.0.0.1:1".parse().unwrap();
    serve(server, handler, remote, quiet_after_3s(), stop).await
}

#[tokio::test(start_paused = true)]
async fn a_quiet_connection_is_closed_after_the_shorter_timeout() {
    let (_tx, stop) = watch::channel(false);
    let (_client, mut server) = pair().await;
    let handler = |_: Request<RequestBody>, _| async { body::text(StatusCode::OK, "ok") };
    let started = Instant::now();
    let ended = serve_quiet_after_3s(&mut server, &handler, &stop).await;
    assert!(matches!(ended, Ended::Closed));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_is_kept_for_the_whole_quiet_time_after_a_slow_response() {
    // The idle check reads the clock on its ticks only; a tick that was due while the
    // handler ran must not count the connection idle from before the response.
    let (_tx, stop) = watch::channel(false);
    let (mut client, mut server) = pair().await;
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let handler = |_: Request<RequestBody>, _| async {
        tokio::time::sleep(Duration::from_millis(2900)).await;
        body::text(StatusCode::OK, "ok")
    };
    let started = Instant::now();
    let serving = async {
        let ended = serve_quiet_after_3s(&mut server, &handler, &stop).await;
        (ended, started.elapsed())
    };
    let reading = async {
        let mut answer = vec![0u8; 4096];
        let n = client.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
        started.elapsed()
    };
    let ((ended, closed), answered) = tokio::join!(serving, reading);
    assert!(matches!(ended, Ended::Closed));
    let idle = closed - answered;
    assert!(
        answered >= Duration::from_millis(2900),
        "answered at {answered:?}"
    );
    // Quiet is 3 s, checked every 0.75 s.
    assert!(
        idle >= Duration::from_secs(3) && idle < Duration::from_secs(4),
        "closed {idle:?} after the response"
    );
}

/// A future that is ready at once, resolved without a runtime.
fn futures_now<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the future was not ready"),
    }
}

#[tokio::test]
async fn a_head_in_two_reads_is_served_by_the_loop() {
    let (mut client, mut server) = pair().await;
    let (_tx, stop) = watch::channel(false);
    let handler = |req: Request<RequestBody>, _| async move {
        body::text(StatusCode::OK, req.uri().path().to_owned())
    };
    let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let writer = async {
        client
            .write_all(b"GET /split HTTP/1.1\r\nHost: h\r\nX-A: ")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"1\r\n\r\n").await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = client.read(&mut answer).await.unwrap();
        drop(client);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let (ended, answer) = tokio::join!(
        serve(&mut server, &handler, remote, settings(), &stop),
        writer
    );
    assert!(matches!(ended, Ended::Closed), "{ended:?}");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("/split"),
        "{answer}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stops_coming_is_closed_and_a_slow_body_goes_to_hyper() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let (_tx, stop) = watch::channel(false);
    let handler = |_: Request<RequestBody>, _| async { body::text(StatusCode::OK, "ok") };
    let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();

    let (mut client, mut server) = pair().await;
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let ended = serve(&mut server, &handler, remote, Settings::new(&limits), &stop).await;
    assert!(matches!(ended, Ended::Closed), "{ended:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    let (mut client, mut server) = pair().await;
    client
        .write_all(b"POST /slow HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let ended = serve(&mut server, &handler, remote, Settings::new(&limits), &stop).await;
    let Ended::HandOver(read) = ended else {
        panic!("a slow body was not handed over: {ended:?}");
    };
    assert_eq!(
        &read[..],
        b"POST /slow HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"
    );
}

fn futures_stream(
    chunks: [Bytes; 2],
) -> impl tokio_stream::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    tokio_stream::iter(chunks.map(|c| Ok(Frame::data(c))))
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_loses_its_connection() {
    // The client never reads: once the socket buffers are full, the write stalls.
    let (_client, mut server) = pair().await;
    let big = Bytes::from(vec![b'x'; 64 << 20]);
    let mut out = Vec::new();
    let started = Instant::now();
    let stall = Duration::from_secs(7);
    let kept = respond(
        &mut server,
        &mut out,
        Response::new(body::full(big)).into(),
        false,
        stall,
    )
    .await;
    assert!(!kept, "a stalled write kept the connection");
    let waited = started.elapsed();
    assert!(
        waited >= stall && waited < Duration::from_secs(20),
        "gave up after {waited:?}"
    );
}

#[test]
fn what_the_loop_shows_of_a_request_holds_no_credential() {
    let bytes = b"GET /a?jwt=q-token HTTP/1.1\r\nAuthorization: Bearer h-token\r\n\r\n\
                  POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Key: k-token\r\n\r\n";
    let decoded = decode_requests(bytes, &Limits::default());
    assert!(matches!(
        decoded.as_slice(),
        [Decoded::Served(..), Decoded::HandedOver(_)]
    ));
    let shown = format!(
        "{decoded:?} {:?}",
        Ended::HandOver(BytesMut::from(&bytes[..]))
    );
    for secret in ["q-token", "h-token", "k-token"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// One data frame, then the end by `is_end_stream`; polled again, it fails.
struct EndsByItsWord {
    data: Option<Bytes>,
    polls: Arc<AtomicUsize>,
}

impl hyper::body::Body for EndsByItsWord {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Some(match self.data.take() {
            Some(data) => Ok(Frame::data(data)),
            None => Err(std::io::Error::other("polled after its end")),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }
}

#[tokio::test]
async fn a_body_that_says_it_ended_is_not_polled_again() {
    let polls = Arc::new(AtomicUsize::new(0));
    let body = EndsByItsWord {
        data: Some(Bytes::from_static(b"secure/pong\n")),
        polls: polls.clone(),
    };
    let mut response = Response::new(body::boxed(body));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
    let (text, kept) = written(response, false).await;
    assert!(kept, "{text}");
    assert!(text.ends_with("\r\n\r\nsecure/pong\n"), "{text}");
    assert_eq!(polls.load(Ordering::SeqCst), 1);
}
