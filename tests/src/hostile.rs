//! Helpers for the hostile-input tests: raw HTTP/1.1 over TCP (nothing in between that
//! would normalise what is sent), an upstream that records every request head it gets,
//! and reading a live process's memory and limits from /proc.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code (0 when the connection closed without a status line).
    pub status: u16,
    /// Everything received, lossily decoded.
    pub text: String,
}

impl RawResponse {
    /// The body (after the first blank line).
    pub fn body(&self) -> &str {
        self.text
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
    }

    /// The value of header `name` (case-insensitive) in the first response head.
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self.text.split_once("\r\n\r\n").map_or("", |(h, _)| h);
        head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Writes `request` as is to `addr` and reads until the peer closes or `timeout`
/// passes. A reset connection counts as closed.
pub async fn raw_request(addr: &str, request: &[u8], timeout: Duration) -> Result<RawResponse> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    // A peer that refuses early may close before it has read everything.
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    })
    .await;
    Ok(parse_response(&received))
}

/// The status code and text of raw response bytes.
pub fn parse_response(bytes: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    RawResponse { status, text }
}

/// `GET <path>` over HTTP/1.1 with `Connection: close` and the given header lines
/// (each `Name: value`, written as they are).
pub fn get_request(path: &str, headers: &[String]) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n").into_bytes();
    for header in headers {
        request.extend_from_slice(header.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    request
}

/// An upstream that answers every request `200 ok` (keep-alive, request bodies read by
/// `Content-Length` or chunked framing), or the answer given to
/// [`Recorder::start_answering`], and records each request head as received.
/// It also counts connections, so it doubles as a canary for URLs that must never be
/// fetched. Stops when dropped.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start() -> Result<Self> {
        Self::start_answering(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n",
        )
        .await
    }

    /// Binds 127.0.0.1:0 and answers every request with `response` (a whole
    /// HTTP/1.1 response that leaves the connection open).
    pub async fn start_answering(response: &'static [u8]) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the recorder")?;
        let addr = listener.local_addr().context("recorder address")?;
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (connections.clone(), heads.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(record_connection(stream, h.clone(), response));
            }
        });
        Ok(Self {
            addr,
            connections,
            heads,
            task,
        })
    }

    /// `host:port`.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Request heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.heads().len()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record_connection(
    mut stream: TcpStream,
    heads: Arc<Mutex<Vec<String>>>,
    response: &'static [u8],
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut stream, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
        buf.drain(..head_end);
        let lower = head.to_ascii_lowercase();
        let chunked = lower.contains("\r\ntransfer-encoding: chunked");
        let length = lower
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if chunked {
            // Skip chunks until the last one and its (empty) trailer.
            if read_until(&mut stream, &mut buf, b"0\r\n\r\n")
                .await
                .is_none()
            {
                return;
            }
            if let Some(end) = find(&buf, b"0\r\n\r\n") {
                buf.drain(..end + 5);
            }
        } else {
            while buf.len() < length {
                if !fill(&mut stream, &mut buf).await {
                    return;
                }
            }
            buf.drain(..length);
        }
        heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(head);
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}

/// Reads until `needle` is in `buf`; its end position, or `None` at end of stream.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    loop {
        if let Some(pos) = find(buf, needle) {
            return Some(pos + needle.len());
        }
        if !fill(stream, buf).await {
            return None;
        }
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where a needle was found in a process's memory.
#[derive(Debug, Clone)]
pub struct MemoryHit {
    /// Index of the needle.
    pub needle: usize,
    /// Virtual address.
    pub address: u64,
    /// The mapping (`[heap]`, `[stack]`, a file, or empty for anonymous memory).
    pub mapping: String,
}

/// Reads every readable private mapping of process `pid` through `/proc/<pid>/mem` and
/// returns where each of `needles` occurs. Needs root (or ptrace rights over the
/// process). Mappings that cannot be read (guard pages, vsyscall) are skipped.
pub fn scan_memory(pid: u32, needles: &[&[u8]]) -> Result<Vec<MemoryHit>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("opening /proc/{pid}/mem"))?;
    let mut hits = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let mapping = fields.nth(3).unwrap_or("").to_owned();
        // Readable memory only; the binary's own read-only image holds no secret.
        if !perms.starts_with('r') || mapping == "[vvar]" || mapping == "[vsyscall]" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let Ok(len) = usize::try_from(end - start) else {
            continue;
        };
        let mut region = vec![0u8; len];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        for (index, needle) in needles.iter().enumerate() {
            let mut from = 0;
            while let Some(pos) = region.get(from..).and_then(|r| find(r, needle)) {
                hits.push(MemoryHit {
                    needle: index,
                    address: start + (from + pos) as u64,
                    mapping: mapping.clone(),
                });
                from += pos + 1;
            }
        }
    }
    Ok(hits)
}

/// A line of `/proc/<pid>/status` such as `Uid` (the value after the colon, trimmed).
pub fn proc_status(pid: u32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == field).then(|| v.trim().to_owned())
        })
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// The soft and hard values of a row of `/proc/<pid>/limits`, e.g. "Max core file size".
pub fn proc_limit(pid: u32, name: &str) -> Result<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .with_context(|| format!("reading /proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .ok_or_else(|| anyhow!("no {name:?} in /proc/{pid}/limits"))?;
    let mut values = line.get(name.len()..).unwrap_or("").split_whitespace();
    match (values.next(), values.next()) {
        (Some(soft), Some(hard)) => Ok((soft.to_owned(), hard.to_owned())),
        _ => Err(anyhow!("unexpected limits line {line:?}")),
    }
}

/// `len` bytes of process `pid`'s memory at `address` (root, or ptrace rights).
pub fn read_memory(pid: u32, address: u64, len: usize) -> Result<Vec<u8>> {
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("opening /proc/{pid}/mem"))?;
    mem.seek(SeekFrom::Start(address))
        .context("seeking in process memory")?;
    let mut out = vec![0u8; len];
    mem.read_exact(&mut out).context("reading process memory")?;
    Ok(out)
}
