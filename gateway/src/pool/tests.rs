use super::*;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::header;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `Pool::send` for a whole request: its head borrowed as the proxy borrows the
/// client's.
trait SendRequest {
    async fn send_request(
        &self,
        index: usize,
        request: Request<ProxyBody>,
        forwarding: Option<&Forwarding>,
        deadline: tokio::time::Instant,
    ) -> Result<Reply<PooledBody>, PoolError>;
}

impl SendRequest for Arc<Pool> {
    async fn send_request(
        &self,
        index: usize,
        request: Request<ProxyBody>,
        forwarding: Option<&Forwarding>,
        deadline: tokio::time::Instant,
    ) -> Result<Reply<PooledBody>, PoolError> {
        let (parts, body) = request.into_parts();
        let root = PathAndQuery::from_static("/");
        let outbound = Outbound {
            method: &parts.method,
            target: parts.uri.path_and_query().unwrap_or(&root),
            headers: &parts.headers,
            host: None,
            forwarding,
        };
        self.send(index, outbound, body, deadline).await
    }
}

/// An upstream counting its connections; `close` answers `Connection: close`.
async fn upstream(close: bool) -> (Authority, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let mut response = Response::new(crate::body::full(format!("{}", req.uri())));
                    if close {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr.to_string().parse().unwrap(), accepted)
}

/// A deadline no test reaches.
fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

fn get(authority: &Authority, path: &str) -> Request<ProxyBody> {
    Request::get(format!("http://{authority}{path}"))
        .body(crate::body::empty())
        .unwrap()
}

async fn body(response: Reply<PooledBody>) -> String {
    let bytes = response
        .into_response()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn connections_are_reused_and_requests_go_in_origin_form() {
    let (authority, accepted) = upstream(false).await;
    let pool = Arc::new(Pool::new([authority.clone()], Duration::from_secs(5)));
    for i in 0..5 {
        let response = pool
            .send_request(0, get(&authority, &format!("/a?i={i}")), None, far())
            .await
            .unwrap();
        assert_eq!(body(response).await, format!("/a?i={i}"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(0).unwrap().len(), 1);
}

#[tokio::test]
async fn connections_the_upstream_closed_are_not_reused() {
    let (authority, accepted) = upstream(true).await;
    let pool = Arc::new(Pool::new([authority.clone()], Duration::from_secs(5)));
    for _ in 0..3 {
        let response = pool
            .send_request(0, get(&authority, "/c"), None, far())
            .await
            .unwrap();
        assert_eq!(body(response).await, "/c");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    drop(listener);
    let pool = Arc::new(Pool::new([authority.clone()], Duration::from_secs(5)));
    let err = pool
        .send_request(0, get(&authority, "/"), None, far())
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

/// An upstream on one connection at a time that answers the n-th request head with
/// `script[n]` verbatim, and reports each request it read (head and body, as bytes).
async fn scripted(
    script: Vec<&'static [u8]>,
) -> (Authority, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut seen = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let n = match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                seen.extend_from_slice(&chunk[..n]);
                // A request is complete at its blank line, or at its chunked end.
                let text = String::from_utf8_lossy(&seen).to_string();
                let Some(head_end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let head = &text[..head_end].to_ascii_lowercase();
                let body = &text[head_end + 4..];
                let complete = if head.contains("transfer-encoding: chunked") {
                    body.ends_with("0\r\n\r\n")
                } else if let Some(at) = head.find("content-length: ") {
                    let n: usize = head[at + 16..]
                        .lines()
                        .next()
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    body.len() >= n
                } else {
                    true
                };
                if !complete {
                    continue;
                }
                tx.send(std::mem::take(&mut seen)).unwrap();
                let Some(answer) = script.next() else { return };
                if answer.is_empty() {
                    break; // close without answering
                }
                stream.write_all(answer).await.unwrap();
            }
        }
    });
    (authority, rx)
}

fn request(method: &str, authority: &Authority, path: &str, body: ProxyBody) -> Request<ProxyBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
        .body(body)
        .unwrap()
}

async fn text(response: Reply<PooledBody>) -> Result<String, PoolError> {
    let bytes = response
        .into_response()
        .into_body()
        .collect()
        .await?
        .to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

/// A bodiless `method` request for `path`, sent through `pool` to its first node.
async fn send_empty(
    pool: &Arc<Pool>,
    method: &str,
    path: &str,
) -> Result<Reply<PooledBody>, PoolError> {
    let authority = pool.nodes[0].authority.clone();
    pool.send_request(
        0,
        request(method, &authority, path, crate::body::empty()),
        None,
        far(),
    )
    .await
}

/// The header fields of a reply of the pool, which keeps them as the upstream's lines.
fn fields(reply: &Reply<PooledBody>) -> http::HeaderMap {
    reply
        .lines()
        .expect("the plain client keeps the upstream's lines")
        .to_header_map()
}

fn pool(authority: &Authority) -> Arc<Pool> {
    Arc::new(Pool::new([authority.clone()], Duration::from_secs(5)))
}

#[tokio::test]
async fn chunked_bodies_are_decoded_and_the_connection_reused() {
    let (authority, mut seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let pool = pool(&authority);
    let response = send_empty(&pool, "GET", "/a").await.unwrap();
    assert!(
        fields(&response).get(header::CONTENT_LENGTH).is_none(),
        "content-length next to chunked must not reach the client"
    );
    assert!(fields(&response).get(header::TRANSFER_ENCODING).is_none());
    assert_eq!(text(response).await.unwrap(), "hello, world");
    // Transfer-Encoding next to Content-Length: the connection is not trusted again.
    assert_eq!(pool.idle(0).unwrap().len(), 0);
    let first = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(first.starts_with("GET /a HTTP/1.1\r\nhost: "), "{first}");
}

#[tokio::test]
async fn fields_go_on_as_the_upstreams_lines_without_hop_by_hop_ones() {
    let (authority, _seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\nX-Private: 1\r\nContent-Length: 2\r\ncontent-length: 2\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nProxy-Connection: x\r\nX-Last:  spaced \r\n\r\nok",
    ])
    .await;
    let pool = pool(&authority);
    let reply = send_empty(&pool, "GET", "/").await.unwrap();
    let lines = reply.lines().unwrap();
    // Order and case as sent; the connection's fields (and the one it names) left
    // out; one content-length however often it came.
    assert_eq!(
        String::from_utf8_lossy(lines.as_bytes()),
        "Server: up\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-Last: spaced\r\n"
    );
    assert_eq!(lines.content_length(), Some(2));
    assert!(!lines.has_date());
    assert_eq!(text(reply).await.unwrap(), "ok");
    assert_eq!(pool.idle(0).unwrap().len(), 1);
}

#[tokio::test]
async fn a_clean_chunked_body_gives_its_connection_back() {
    let (authority, _seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let pool = pool(&authority);
    let response = send_empty(&pool, "GET", "/").await.unwrap();
    assert_eq!(text(response).await.unwrap(), "abc");
    assert_eq!(pool.idle(0).unwrap().len(), 1);
    let response = send_empty(&pool, "GET", "/").await.unwrap();
    assert_eq!(text(response).await.unwrap(), "ok");
}

#[tokio::test]
async fn a_body_without_length_runs_until_close_and_is_not_reused() {
    let (authority, _seen) =
        scripted(vec![b"HTTP/1.0 200 OK\r\nx-a: 1\r\n\r\nuntil the end", b""]).await;
    let pool = pool(&authority);
    let response = send_empty(&pool, "GET", "/").await;
    // The scripted upstream keeps the connection open after its answer until the next
    // request: close it by reading what arrived so far in a task, then dropping.
    let response = response.unwrap();
    assert_eq!(fields(&response)["x-a"], "1");
    let body = tokio::time::timeout(Duration::from_millis(300), text(response)).await;
    // Still open: the body has no end yet (this is what "until close" means).
    assert!(body.is_err());
    assert_eq!(pool.idle(0).unwrap().len(), 0);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_their_headers_say() {
    let (authority, _seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast",
    ])
    .await;
    let pool = pool(&authority);
    let response = send_empty(&pool, "HEAD", "/").await.unwrap();
    assert_eq!(fields(&response)[header::CONTENT_LENGTH], "5");
    assert_eq!(text(response).await.unwrap(), "");
    for expected in [204, 304] {
        let response = send_empty(&pool, "GET", "/").await.unwrap();
        assert_eq!(response.status(), expected);
        assert_eq!(text(response).await.unwrap(), "");
    }
    let response = send_empty(&pool, "GET", "/").await.unwrap();
    assert_eq!(text(response).await.unwrap(), "last");
}

#[tokio::test]
async fn informational_responses_are_skipped_and_upgrades_refused() {
    let (authority, _seen) = scripted(vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
    ])
    .await;
    let pool = pool(&authority);
    let response = send_empty(&pool, "GET", "/").await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(text(response).await.unwrap(), "x");
    let err = send_empty(&pool, "GET", "/").await.unwrap_err();
    assert!(matches!(err, PoolError::Malformed(_)), "{err}");
}

#[tokio::test]
async fn malformed_heads_and_lengths_are_errors() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 999999 Nope\r\n\r\n",
    ] {
        let (authority, _seen) = scripted(vec![answer]).await;
        let err = send_empty(&pool(&authority), "GET", "/").await.unwrap_err();
        assert!(matches!(err, PoolError::Malformed(_)), "{err}");
    }
    // A body cut short is an error of the body, and the connection is not reused.
    let (authority, _seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
        b"",
    ])
    .await;
    let pool = pool(&authority);
    let response = send_empty(&pool, "GET", "/").await.unwrap();
    // The upstream closes when the next request... there is none: close it ourselves
    // by waiting for the body with a bound.
    let cut = tokio::time::timeout(Duration::from_millis(300), text(response)).await;
    assert!(cut.is_err(), "the body waits for its missing bytes");
    assert_eq!(pool.idle(0).unwrap().len(), 0);
}

#[tokio::test]
async fn request_bodies_go_with_their_length_or_chunked() {
    let (authority, mut seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ])
    .await;
    let pool = pool(&authority);
    let mut post = request(
        "POST",
        &authority,
        "/p?q=1",
        crate::body::full("0123456789"),
    );
    // A client's own (wrong) content-length is replaced by the body's.
    post.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
    let response = pool.send_request(0, post, None, far()).await.unwrap();
    assert_eq!(text(response).await.unwrap(), "");
    let sent = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(sent.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{sent}");
    assert!(
        sent.contains("content-length: 10\r\n") && !sent.contains("content-length: 3"),
        "{sent}"
    );
    assert!(sent.ends_with("\r\n\r\n0123456789"), "{sent}");

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let stream = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
        .await
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"defgh"))))
        .await
        .unwrap();
    drop(tx);
    let response = pool
        .send_request(
            0,
            request("PUT", &authority, "/c", crate::body::boxed(stream)),
            None,
            far(),
        )
        .await
        .unwrap();
    assert_eq!(text(response).await.unwrap(), "");
    let sent = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(sent.contains("transfer-encoding: chunked\r\n"), "{sent}");
    assert!(
        sent.ends_with("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"),
        "{sent}"
    );
}

#[tokio::test]
async fn an_early_answer_ends_the_exchange_and_closes_the_connection() {
    // The upstream answers 413 after the head, without reading the body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut chunk = [0u8; 1024];
        let _ = stream.read(&mut chunk).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let stream = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let pool = pool(&authority);
    let response = tokio::time::timeout(
        Duration::from_secs(2),
        pool.send_request(
            0,
            request("POST", &authority, "/", crate::body::boxed(stream)),
            None,
            far(),
        ),
    )
    .await
    .expect("the answer does not wait for the body")
    .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(text(response).await.unwrap(), "big");
    assert_eq!(pool.idle(0).unwrap().len(), 0);
    drop(tx);
}

/// A pool whose upstream answers "a" (read by this function), then closes that
/// connection without a byte when the next request comes, then answers "b" on a new
/// connection.
async fn answering_once_then_closing() -> (Arc<Pool>, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>)
{
    let (authority, seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
        b"",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
    ])
    .await;
    let pool = pool(&authority);
    let response = send_empty(&pool, "GET", "/").await.unwrap();
    assert_eq!(text(response).await.unwrap(), "a");
    (pool, seen)
}

#[tokio::test]
async fn a_reused_connection_closed_by_the_upstream_is_replaced_for_idempotent_requests() {
    // The first connection answers once and then closes when the next request comes,
    // without a byte: the pool sees it only then, and sends the GET again on a new one.
    let (pool, mut seen) = answering_once_then_closing().await;
    let response = send_empty(&pool, "GET", "/").await.unwrap();
    assert_eq!(text(response).await.unwrap(), "b");
    for _ in 0..3 {
        seen.recv().await.unwrap();
    }
}

#[tokio::test]
async fn a_post_on_a_connection_closed_without_answer_is_not_sent_again() {
    let (pool, mut seen) = answering_once_then_closing().await;
    let err = send_empty(&pool, "POST", "/").await.unwrap_err();
    assert!(matches!(err, PoolError::Closed), "{err}");
    seen.recv().await.unwrap();
    seen.recv().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), seen.recv())
            .await
            .is_err(),
        "sent twice"
    );
}

#[test]
fn decoding_what_an_upstream_sent_before_closing() {
    let (response, framing, reusable) =
        decode_response(b"HTTP/1.0 200 OK\r\nx-a: 1\r\n\r\nuntil the end", false).unwrap();
    assert_eq!(response.lines().unwrap().as_bytes(), b"x-a: 1\r\n");
    let response = response.into_response();
    assert_eq!(framing, Framing::UntilClose);
    assert_eq!(response.body().as_ref(), b"until the end");
    assert!(!reusable);

    let (response, framing, reusable) =
        decode_response(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", false).unwrap();
    let response = response.into_response();
    assert_eq!(
        (framing, response.body().as_ref(), reusable),
        (Framing::Length(3), &b"abc"[..], true)
    );

    // Bytes beyond the body: the connection is not trusted again.
    let (_, _, reusable) =
        decode_response(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab", false).unwrap();
    assert!(!reusable);

    // Cut short: a length or chunked body without its end is an error.
    for cut in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        assert!(
            decode_response(cut, false).is_err(),
            "{}",
            String::from_utf8_lossy(cut)
        );
    }
}

#[test]
fn lines_not_in_the_usual_form_are_rewritten_and_a_date_is_noted() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\nDate: Thu, 03 Dec 2026 14:43:08 GMT\nA:b\r\nContent-Length: 007\r\nC: d\r\nE: f\r\n\r\nbody"[..],
    );
    let exchange::Parsed::Final(head) = exchange::parse_head(&mut buf, false).unwrap() else {
        panic!("a whole head");
    };
    assert_eq!(
        String::from_utf8_lossy(head.lines.as_bytes()),
        "Date: Thu, 03 Dec 2026 14:43:08 GMT\r\nA: b\r\ncontent-length: 7\r\nC: d\r\nE: f\r\n"
    );
    assert!(head.lines.has_date());
    assert_eq!(head.lines.content_length(), Some(7));
    assert_eq!(head.framing, Framing::Length(7));
    assert_eq!(&buf[..], b"body");
}

#[tokio::test]
async fn forwarding_fields_replace_the_clients_own() {
    let (authority, mut seen) =
        scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
    let pool = pool(&authority);
    let (mut parts, body) = request("GET", &authority, "/f", crate::body::empty()).into_parts();
    for (name, value) in [
        ("host", "api.example"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-real-ip", "10.6.6.6"),
        ("x-forwarded-host", "forged.example"),
        ("x-kept", "1"),
    ] {
        parts.headers.append(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let client = crate::proxy::ClientInfo {
        ip: "192.0.2.7".parse().unwrap(),
        https: false,
    };
    let mut forwarding = crate::proxy::prepare_head(&mut parts, client);
    forwarding.set_consumer(HeaderValue::from_static("jack"));
    let reply = pool
        .send_request(
            0,
            Request::from_parts(parts, body),
            Some(&forwarding),
            far(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let sent = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(
        sent.starts_with("GET /f HTTP/1.1\r\nhost: api.example\r\n"),
        "{sent}"
    );
    for line in [
        "\r\nx-kept: 1\r\n",
        "\r\nx-forwarded-for: 10.0.0.1, 192.0.2.7\r\n",
        "\r\nx-real-ip: 192.0.2.7\r\n",
        "\r\nx-forwarded-proto: http\r\n",
        "\r\nx-forwarded-host: api.example\r\n",
        "\r\nx-consumer-username: jack\r\n",
    ] {
        assert_eq!(sent.matches(line).count(), 1, "{line:?} in {sent}");
    }
    assert!(
        !sent.contains("10.6.6.6") && !sent.contains("forged"),
        "{sent}"
    );
}

#[tokio::test]
async fn no_head_by_the_deadline_is_a_timeout_and_the_connection_is_dropped() {
    // The upstream reads the request and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut chunk = [0u8; 1024];
        let _ = stream.read(&mut chunk).await.unwrap();
        // The next read ends when the gateway closes the connection.
        let _ = closed_tx.send(stream.read(&mut chunk).await.map(|n| n == 0));
    });
    let pool = pool(&authority);
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_millis(200);
    let err = pool
        .send_request(0, get(&authority, "/slow"), None, deadline)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(pool.idle(0).unwrap().len(), 0);
    let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the connection is closed")
        .unwrap();
    assert!(closed.unwrap(), "closed without another byte");
}

#[tokio::test]
async fn a_reused_connection_gets_each_requests_own_deadline() {
    let (authority, _accepted) = upstream(false).await;
    let pool = pool(&authority);
    // The first deadline passes while the connection is idle in the pool: the next
    // request on it must not inherit it.
    let soon = tokio::time::Instant::now() + Duration::from_millis(50);
    let reply = pool
        .send_request(0, get(&authority, "/1"), None, soon)
        .await
        .unwrap();
    assert_eq!(body(reply).await, "/1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.idle(0).unwrap().len(), 1);
    let reply = pool
        .send_request(0, get(&authority, "/2"), None, far())
        .await
        .unwrap();
    assert_eq!(body(reply).await, "/2");
}

#[tokio::test]
async fn a_replacement_host_is_sent_once_in_place_of_the_requests_own() {
    let (authority, mut seen) =
        scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
    let pool = pool(&authority);
    let (parts, _) = Request::get("/r")
        .header(header::HOST, "client.example")
        .header("x-kept", "1")
        .body(())
        .unwrap()
        .into_parts();
    let replacement = HeaderValue::from_static("upstream.example");
    let outbound = Outbound {
        method: &parts.method,
        target: parts.uri.path_and_query().unwrap(),
        headers: &parts.headers,
        host: Some(&replacement),
        forwarding: None,
    };
    let reply = pool
        .send(0, outbound, crate::body::empty(), far())
        .await
        .unwrap();
    assert_eq!(text(reply).await.unwrap(), "ok");
    let head = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert_eq!(
        head,
        "GET /r HTTP/1.1\r\nhost: upstream.example\r\nx-kept: 1\r\n\r\n"
    );
}

#[tokio::test]
async fn a_reused_connection_sends_only_the_new_requests_head() {
    let (authority, mut seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
    ])
    .await;
    let pool = pool(&authority);
    let long = "/first-and-much-longer-path?with=a&query=string";
    let first = pool
        .send_request(
            0,
            Request::get(long)
                .header("x-first", "1")
                .body(crate::body::empty())
                .unwrap(),
            None,
            far(),
        )
        .await
        .unwrap();
    assert_eq!(text(first).await.unwrap(), "a");
    let second = send_empty(&pool, "GET", "/b").await.unwrap();
    assert_eq!(text(second).await.unwrap(), "b");
    let first = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(
        first.starts_with(&format!("GET {long} HTTP/1.1\r\n")),
        "{first}"
    );
    // The buffer the first head was written in is reused: nothing of it is left.
    let second = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert_eq!(
        second,
        format!("GET /b HTTP/1.1\r\nhost: {authority}\r\n\r\n")
    );
}

#[test]
fn an_outbound_head_is_printed_without_its_fields_or_target() {
    let (parts, _) = Request::get("/p?api_key=query-secret")
        .header(header::AUTHORIZATION, "Bearer field-secret")
        .body(())
        .unwrap()
        .into_parts();
    let outbound = Outbound {
        method: &parts.method,
        target: parts.uri.path_and_query().unwrap(),
        headers: &parts.headers,
        host: None,
        forwarding: None,
    };
    let printed = format!("{outbound:?}");
    assert!(printed.contains("GET"), "{printed}");
    assert!(!printed.contains("secret"), "{printed}");
}
