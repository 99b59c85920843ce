//! Counters the request path bumps with relaxed atomics (no lock, no allocation),
//! rendered as Prometheus text by the status listener.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::{FAILURE_COUNT, failure_labels};

/// Upper bounds of the upstream latency histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Gateway-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests that matched no route.
    pub no_route: AtomicU64,
    /// Authentication failures by plugin and reason ([`failure_labels`] order).
    pub auth_failures: [AtomicU64; FAILURE_COUNT],
    /// Requests let through as the anonymous consumer.
    pub anonymous: AtomicU64,
    /// Upstream attempts that ended in 502.
    pub upstream_unreachable: AtomicU64,
    /// Upstream attempts that ended in 504.
    pub upstream_timeouts: AtomicU64,
    /// Sign endpoint calls by outcome: ok, bad request, unknown key, unavailable.
    pub sign: [AtomicU64; 4],
    /// Admin API answers by status class (1xx..5xx).
    pub admin_responses: [AtomicU64; 5],
    /// Admin API requests refused for a bad or missing key.
    pub admin_auth_failures: AtomicU64,
    /// Admin API writes applied.
    pub admin_writes: AtomicU64,
    /// Time spent in applied admin writes (validate, persist, swap), microseconds.
    pub admin_write_micros: AtomicU64,
    /// Observations per bucket, not cumulative: (previous bound, bound].
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Records the time to the upstream's response head.
    pub fn observe_upstream(&self, elapsed: Duration) {
        // One bucket per observation (summed when rendered): each bucket is a write
        // every worker makes on a shared line, and most requests fall in the first.
        let secs = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .and_then(|i| self.latency_buckets.get(i))
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts an Admin API answer.
    pub fn count_admin(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(c) = self.admin_responses.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records an applied admin write.
    pub fn observe_admin_write(&self, elapsed: Duration) {
        self.admin_writes.fetch_add(1, Ordering::Relaxed);
        self.admin_write_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Appends these counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            out,
            "keygate_gateway_no_route_total",
            "Requests that matched no route.",
        );
        let _ = writeln!(
            out,
            "keygate_gateway_no_route_total {}",
            get(&self.no_route)
        );
        counter(
            out,
            "keygate_gateway_auth_failures_total",
            "Authentication failures by plugin and reason.",
        );
        for ((plugin, reason), c) in failure_labels().zip(&self.auth_failures) {
            let _ = writeln!(
                out,
                "keygate_gateway_auth_failures_total{{plugin=\"{plugin}\",reason=\"{reason}\"}} {}",
                get(c)
            );
        }
        counter(
            out,
            "keygate_gateway_anonymous_total",
            "Requests admitted as the anonymous consumer.",
        );
        let _ = writeln!(
            out,
            "keygate_gateway_anonymous_total {}",
            get(&self.anonymous)
        );
        counter(
            out,
            "keygate_gateway_upstream_errors_total",
            "Requests answered 502 or 504.",
        );
        let _ = writeln!(
            out,
            "keygate_gateway_upstream_errors_total{{kind=\"unreachable\"}} {}",
            get(&self.upstream_unreachable)
        );
        let _ = writeln!(
            out,
            "keygate_gateway_upstream_errors_total{{kind=\"timeout\"}} {}",
            get(&self.upstream_timeouts)
        );
        counter(
            out,
            "keygate_gateway_sign_requests_total",
            "Sign endpoint calls by outcome.",
        );
        for (outcome, c) in ["ok", "bad_request", "unknown_key", "unavailable"]
            .iter()
            .zip(&self.sign)
        {
            let _ = writeln!(
                out,
                "keygate_gateway_sign_requests_total{{outcome=\"{outcome}\"}} {}",
                get(c)
            );
        }
        counter(
            out,
            "keygate_gateway_admin_responses_total",
            "Admin API answers by status class.",
        );
        for (i, c) in self.admin_responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "keygate_gateway_admin_responses_total{{code=\"{}xx\"}} {}",
                i + 1,
                get(c)
            );
        }
        counter(
            out,
            "keygate_gateway_admin_auth_failures_total",
            "Admin API requests refused for a bad or missing key.",
        );
        let _ = writeln!(
            out,
            "keygate_gateway_admin_auth_failures_total {}",
            get(&self.admin_auth_failures)
        );
        counter(
            out,
            "keygate_gateway_admin_writes_total",
            "Admin API changes applied (validated, persisted, swapped in).",
        );
        let _ = writeln!(
            out,
            "keygate_gateway_admin_writes_total {}",
            get(&self.admin_writes)
        );
        counter(
            out,
            "keygate_gateway_admin_write_seconds_total",
            "Time spent applying admin changes.",
        );
        let _ = writeln!(
            out,
            "keygate_gateway_admin_write_seconds_total {}",
            get(&self.admin_write_micros) as f64 / 1e6
        );
        let name = "keygate_gateway_upstream_latency_seconds";
        let _ = writeln!(out, "# HELP {name} Time to the upstream's response head.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, c) in BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += get(c);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = get(&self.latency_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", get(&self.latency_sum_us) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Writes HELP and TYPE lines of a counter.
pub fn counter(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
}

/// Writes HELP and TYPE lines of a gauge.
pub fn gauge(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_histogram_renders_cumulative_buckets() {
        let metrics = Metrics::default();
        for ms in [0.5, 0.9, 3.0, 20_000.0] {
            metrics.observe_upstream(Duration::from_secs_f64(ms / 1000.0));
        }
        let mut out = String::new();
        metrics.render(&mut out);
        let bucket = |le: &str| {
            let prefix = format!("keygate_gateway_upstream_latency_seconds_bucket{{le=\"{le}\"}} ");
            out.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in {out}"))
                .to_owned()
        };
        assert_eq!(bucket("0.001"), "2");
        assert_eq!(bucket("0.0025"), "2");
        assert_eq!(bucket("0.005"), "3");
        assert_eq!(bucket("10"), "3");
        assert_eq!(bucket("+Inf"), "4");
    }
}
