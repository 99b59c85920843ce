//! A load client for the fault-injection suite: a few concurrent HTTP/1.1 clients, each
//! on its own keep-alive connection, sending JWT-signed requests through the gateway at a
//! steady total rate, bounded in count and in time. Every request is recorded (when it
//! was sent, when it finished, the status or the transport error, which credential it
//! carried) so a scenario can say exactly what its clients saw: requests sent, non-2xx,
//! the longest gap between two successes, how long it took to recover after a fault.
//!
//! Tokens are HS256 JWTs signed here with the secret the test wrote to OpenBao, not by the
//! gateway's sign endpoint: the client must not depend on the system under test to know
//! what a valid token is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How a load run is shaped.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The full URL every request goes to (GET).
    pub url: String,
    /// Concurrent clients, each with one keep-alive connection.
    pub workers: usize,
    /// Requests per second over all workers.
    pub rate: f64,
    /// Stop after this many requests in total.
    pub max_requests: u64,
    /// Stop after this long, whatever happens.
    pub max_duration: Duration,
    /// A request that takes longer than this is recorded as a transport error.
    pub request_timeout: Duration,
}

impl LoadConfig {
    /// `workers` clients at `rate` requests per second in total to `url`, for at most
    /// `max_duration` (and `rate * max_duration` requests), 5 s per request.
    pub fn new(url: impl Into<String>, workers: usize, rate: f64, max_duration: Duration) -> Self {
        // Saturating float-to-int conversion; the bound is only a safety net.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive request count far below u64::MAX"
        )]
        let max_requests = (rate * max_duration.as_secs_f64()).ceil().max(1.0) as u64;
        Self {
            url: url.into(),
            workers,
            rate,
            max_requests,
            max_duration,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A credential the workers send: `label` names it in the records (e.g. `jack`,
/// `jack-rotated`), `authorization` is the header value.
#[derive(Debug, Clone)]
pub struct Credential {
    pub label: String,
    pub authorization: String,
}

impl Credential {
    pub fn new(label: impl Into<String>, authorization: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            authorization: authorization.into(),
        }
    }
}

/// One request as the client saw it. Times are since the start of the run.
#[derive(Debug, Clone)]
pub struct Record {
    pub worker: usize,
    /// The credential slot the worker used.
    pub slot: usize,
    /// The label of the credential in that slot when the request was sent.
    pub label: String,
    pub sent: Duration,
    pub done: Duration,
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// The transport error, if none did (or the body could not be read).
    pub error: Option<String>,
    /// The start of the body of a non-2xx response.
    pub body: Option<String>,
}

impl Record {
    /// A 2xx response with its whole body read.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// One line for failure listings.
    pub fn describe(&self) -> String {
        let outcome = match (&self.status, &self.error) {
            (_, Some(err)) => format!("error: {err}"),
            (Some(status), None) => format!(
                "HTTP {status} {}",
                self.body.as_deref().unwrap_or_default().trim()
            ),
            (None, None) => "no outcome".to_owned(),
        };
        format!(
            "t={} ({} ms) worker {} [{}]: {outcome}",
            secs(self.sent),
            (self.done.saturating_sub(self.sent)).as_millis(),
            self.worker,
            self.label
        )
    }
}

#[derive(Debug)]
struct Shared {
    config: LoadConfig,
    start: Instant,
    credentials: RwLock<Vec<Credential>>,
    records: Mutex<Vec<Record>>,
    marks: Mutex<Vec<(String, Duration)>>,
    issued: AtomicU64,
    stopping: AtomicBool,
    stop: Notify,
}

/// A running load. [`Load::stop`] ends it and returns the [`LoadReport`]; dropping it
/// aborts the workers.
#[derive(Debug)]
pub struct Load {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts the workers. Worker `i` sends credential slot `i % credentials.len()`, so
    /// with 4 workers and 2 credentials each credential carries half the load.
    pub fn start(config: LoadConfig, credentials: Vec<Credential>) -> Result<Self> {
        ensure!(config.workers > 0, "a load needs at least one worker");
        ensure!(config.rate > 0.0, "a load needs a positive rate");
        ensure!(!credentials.is_empty(), "a load needs a credential");
        let mut clients = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            clients.push(
                reqwest::Client::builder()
                    .no_proxy()
                    .http1_only()
                    .pool_max_idle_per_host(1)
                    .pool_idle_timeout(Duration::from_secs(60))
                    .tcp_nodelay(true)
                    .timeout(config.request_timeout)
                    .connect_timeout(Duration::from_secs(2))
                    .build()
                    .context("building a load client")?,
            );
        }
        let shared = Arc::new(Shared {
            config,
            start: Instant::now(),
            credentials: RwLock::new(credentials),
            records: Mutex::new(Vec::new()),
            marks: Mutex::new(Vec::new()),
            issued: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        });
        let workers = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| tokio::spawn(worker(shared.clone(), i, client)))
            .collect();
        Ok(Self { shared, workers })
    }

    /// Time since the start of the run.
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// `at` as a time since the start of the run (zero if before it).
    pub fn at(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.shared.start)
    }

    /// Notes an event (a fault injected, a process back) at the current time; returns
    /// that time since the start of the run.
    pub fn mark(&self, what: impl Into<String>) -> Duration {
        let t = self.elapsed();
        self.shared
            .marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((what.into(), t));
        t
    }

    /// Replaces the credential in `slot` from the next request on.
    pub fn set_credential(&self, slot: usize, credential: Credential) -> Result<()> {
        let mut creds = self
            .shared
            .credentials
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = creds
            .get_mut(slot)
            .with_context(|| format!("no credential slot {slot}"))?;
        *entry = credential;
        Ok(())
    }

    /// The records so far (the run goes on).
    pub fn records(&self) -> Vec<Record> {
        self.shared
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether every worker has finished (count or time bound reached).
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Stops the workers (each finishes the request it is on) and reports.
    pub async fn stop(mut self) -> LoadReport {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.notify_waiters();
        for handle in self.workers.drain(..) {
            let _ = handle.await;
        }
        self.report()
    }

    fn report(&self) -> LoadReport {
        let mut records = self.records();
        records.sort_by_key(|r| r.sent);
        LoadReport {
            records,
            marks: self
                .shared
                .marks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            duration: self.elapsed(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for handle in &self.workers {
            handle.abort();
        }
    }
}

async fn worker(shared: Arc<Shared>, index: usize, client: reqwest::Client) {
    let config = &shared.config;
    #[expect(
        clippy::cast_precision_loss,
        reason = "a handful of workers; exact in an f64"
    )]
    let period = Duration::from_secs_f64(config.workers as f64 / config.rate);
    // Spread the workers over one period so the total rate is steady, not bursty.
    #[expect(
        clippy::cast_precision_loss,
        reason = "a handful of workers; exact in an f64"
    )]
    let offset = period.mul_f64(index as f64 / config.workers as f64);
    let mut tick = tokio::time::interval_at((shared.start + offset).into(), period);
    // A slow request delays this worker; it does not make it burst afterwards.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = shared.start + config.max_duration;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.stop.notified() => return,
        }
        if shared.stopping.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        if shared.issued.fetch_add(1, Ordering::SeqCst) >= config.max_requests {
            return;
        }
        let (slot, credential) = {
            let creds = shared
                .credentials
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let slot = index % creds.len().max(1);
            (slot, creds.get(slot).cloned())
        };
        let Some(credential) = credential else {
            return;
        };
        let sent = shared.start.elapsed();
        let outcome = client
            .get(&config.url)
            .header("authorization", &credential.authorization)
            .send()
            .await;
        let (status, error, body) = match outcome {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.text().await {
                    Ok(_) if (200..300).contains(&status) => (Some(status), None, None),
                    Ok(text) => (
                        Some(status),
                        None,
                        Some(text.chars().take(200).collect::<String>()),
                    ),
                    Err(err) => (Some(status), Some(format!("reading the body: {err}")), None),
                }
            }
            Err(err) => (None, Some(error_chain(&err)), None),
        };
        let record = Record {
            worker: index,
            slot,
            label: credential.label,
            sent,
            done: shared.start.elapsed(),
            status,
            error,
            body,
        };
        shared
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(out, ": {cause}");
        source = cause.source();
    }
    out
}

/// What a load run saw. Records are sorted by send time.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub records: Vec<Record>,
    /// Events noted with [`Load::mark`], in order.
    pub marks: Vec<(String, Duration)>,
    pub duration: Duration,
}

impl LoadReport {
    /// Requests sent (and finished).
    pub fn sent(&self) -> usize {
        self.records.len()
    }

    /// 2xx responses.
    pub fn ok(&self) -> usize {
        self.records.iter().filter(|r| r.ok()).count()
    }

    /// Everything that was not a 2xx response: other statuses and transport errors.
    pub fn failures(&self) -> Vec<&Record> {
        self.records.iter().filter(|r| !r.ok()).collect()
    }

    /// The failures among requests with credential `label`.
    pub fn failures_for(&self, label: &str) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| r.label == label && !r.ok())
            .collect()
    }

    /// Transport errors (no response at all).
    pub fn errors(&self) -> usize {
        self.records.iter().filter(|r| r.error.is_some()).count()
    }

    /// Requests per second over the run.
    pub fn rate(&self) -> f64 {
        #[expect(
            clippy::cast_precision_loss,
            reason = "request counts are far below 2^52"
        )]
        let sent = self.sent() as f64;
        sent / self.duration.as_secs_f64().max(1e-3)
    }

    /// How many responses of each status (`error` for transport errors).
    pub fn statuses(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in &self.records {
            let key = match (r.status, &r.error) {
                (_, Some(_)) => "error".to_owned(),
                (Some(s), None) => s.to_string(),
                (None, None) => "none".to_owned(),
            };
            *out.entry(key).or_insert(0) += 1;
        }
        out
    }

    /// The longest time between two consecutive successful responses (by completion
    /// time), and when it started. Zero with fewer than two successes.
    pub fn longest_success_gap(&self) -> (Duration, Duration) {
        let mut done: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| r.ok())
            .map(|r| r.done)
            .collect();
        done.sort();
        done.windows(2)
            .filter_map(|w| match w {
                [a, b] => Some((b.saturating_sub(*a), *a)),
                _ => None,
            })
            .max_by_key(|(gap, _)| *gap)
            .unwrap_or_default()
    }

    /// Recovery after `t`: from `t` until the first success that follows the last
    /// failure among requests sent at or after `t`. Zero if nothing failed after `t`;
    /// `None` if the run ended before a success followed the last failure.
    pub fn recovery_after(&self, t: Duration) -> Option<Duration> {
        let last_failure = self
            .records
            .iter()
            .filter(|r| r.sent >= t && !r.ok())
            .map(|r| r.done)
            .max();
        let Some(last_failure) = last_failure else {
            return Some(Duration::ZERO);
        };
        self.records
            .iter()
            .filter(|r| r.ok() && r.sent >= last_failure)
            .map(|r| r.done)
            .min()
            .map(|first_ok| first_ok.saturating_sub(t))
    }

    /// The first successful request with credential `label` (the record).
    pub fn first_success_with(&self, label: &str) -> Option<&Record> {
        self.records
            .iter()
            .filter(|r| r.label == label && r.ok())
            .min_by_key(|r| r.done)
    }

    /// The time of the mark called `what`, if any.
    pub fn mark(&self, what: &str) -> Option<Duration> {
        self.marks.iter().find(|(m, _)| m == what).map(|(_, t)| *t)
    }

    /// One paragraph: counts, rate, statuses, the longest gap.
    pub fn summary(&self) -> String {
        let (gap, gap_at) = self.longest_success_gap();
        format!(
            "sent {} in {} ({:.0} req/s): {} ok, {} non-2xx ({} transport errors); statuses {:?}; \
             longest gap between successes {} ms (from t={})",
            self.sent(),
            secs(self.duration),
            self.rate(),
            self.ok(),
            self.sent() - self.ok(),
            self.errors(),
            self.statuses(),
            gap.as_millis(),
            secs(gap_at),
        )
    }

    /// The first `max` failures, one per line, and the marks, for assertion messages.
    pub fn failure_listing(&self, max: usize) -> String {
        let failures = self.failures();
        let mut out = String::new();
        for r in failures.iter().take(max) {
            let _ = writeln!(out, "  {}", r.describe());
        }
        if failures.len() > max {
            let _ = writeln!(out, "  ... and {} more", failures.len() - max);
        }
        let _ = writeln!(out, "  marks:");
        for (what, t) in &self.marks {
            let _ = writeln!(out, "    t={} {what}", secs(*t));
        }
        out
    }
}

/// `12.345s`.
pub fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

// ----- HS256 tokens -----

/// An HS256 JWT with claims `{"key": key, "exp": now + lifetime}`, signed with `secret`
/// (its bytes as they are, as jwt-auth does without `base64_secret`).
pub fn hs256_token(key: &str, secret: &str, lifetime: Duration) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(lifetime)
        .as_secs();
    let header = base64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({ "key": key, "exp": exp }).to_string();
    let signing_input = format!("{header}.{}", base64url(claims.as_bytes()));
    let signature = hmac_sha256(secret.as_bytes(), signing_input.as_bytes());
    format!("{signing_input}.{}", base64url(&signature))
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        let digest = Sha256::digest(key);
        for (dst, src) in block_key.iter_mut().zip(digest.iter()) {
            *dst = *src;
        }
    } else {
        for (dst, src) in block_key.iter_mut().zip(key) {
            *dst = *src;
        }
    }
    let ipad: Vec<u8> = block_key.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block_key.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Base64url without padding (RFC 7515).
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let sextet = |v: u32| char::from(ALPHABET.get((v & 63) as usize).copied().unwrap_or(b'A'));
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sextet(n >> 18));
        out.push(sextet(n >> 12));
        if chunk.len() > 1 {
            out.push(sextet(n >> 6));
        }
        if chunk.len() > 2 {
            out.push(sextet(n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 and test case 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn base64url_without_padding() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn token_is_header_claims_and_their_signature() {
        let token = hs256_token("user-key", "my-secret-key", Duration::from_secs(60));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.first().copied(),
            Some("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9")
        );
        let input = format!("{}.{}", parts[0], parts[1]);
        assert_eq!(
            parts[2],
            base64url(&hmac_sha256(b"my-secret-key", input.as_bytes()))
        );
    }

    fn rec(sent_ms: u64, done_ms: u64, status: u16) -> Record {
        Record {
            worker: 0,
            slot: 0,
            label: "a".into(),
            sent: Duration::from_millis(sent_ms),
            done: Duration::from_millis(done_ms),
            status: Some(status),
            error: None,
            body: None,
        }
    }

    #[test]
    fn gaps_and_recovery() {
        let report = LoadReport {
            records: vec![
                rec(0, 10, 200),
                rec(100, 110, 200),
                rec(200, 210, 503),
                rec(300, 310, 503),
                rec(400, 410, 200),
                rec(500, 510, 200),
            ],
            marks: vec![("fault".into(), Duration::from_millis(150))],
            duration: Duration::from_secs(1),
        };
        assert_eq!(report.sent(), 6);
        assert_eq!(report.ok(), 4);
        assert_eq!(report.failures().len(), 2);
        assert_eq!(
            report.longest_success_gap(),
            (Duration::from_millis(300), Duration::from_millis(110))
        );
        // Last failure done at 310 ms; first success sent after it finishes at 410 ms.
        assert_eq!(
            report.recovery_after(Duration::from_millis(150)),
            Some(Duration::from_millis(260))
        );
        assert_eq!(
            report.recovery_after(Duration::from_millis(350)),
            Some(Duration::ZERO)
        );
        assert_eq!(report.mark("fault"), Some(Duration::from_millis(150)));
    }
}
