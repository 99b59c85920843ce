//! The agent's Prometheus metrics: plain atomics, rendered as text on demand.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters and gauges, shared by every task of the agent.
#[derive(Debug, Default)]
pub struct Metrics {
    /// 1 once authenticated, preloaded and listening.
    pub ready: AtomicU64,
    /// 1 while the agent holds a token it believes valid.
    pub authenticated: AtomicU64,
    /// Remaining TTL of the token when last renewed or obtained (0: never expires).
    pub token_ttl_seconds: AtomicU64,
    /// Successful logins (including the first).
    pub auth_logins: AtomicU64,
    /// Failed logins.
    pub auth_login_failures: AtomicU64,
    /// Successful token renewals.
    pub token_renewals: AtomicU64,
    /// Failed token renewals.
    pub token_renewal_failures: AtomicU64,
    /// Every HTTP request sent to Vault.
    pub vault_requests: AtomicU64,
    /// Vault requests that failed (transport error or non-2xx other than 404).
    pub vault_errors: AtomicU64,
    /// Secrets currently loaded.
    pub secrets_loaded: AtomicI64,
    /// Loaded secrets whose last refresh failed.
    pub secrets_stale: AtomicI64,
    /// Names the agent tracks (preloaded, asked for by an open call, or loaded and
    /// kept until the next full refresh).
    pub secrets_tracked: AtomicI64,
    /// Value changes seen on refresh (first loads included).
    pub secret_changes: AtomicU64,
    /// Open Watch streams.
    pub watchers: AtomicI64,
    /// Calls refused because of the peer's credentials.
    pub denied_peers: AtomicU64,
    /// Calls refused for a missing header, a bad name or a name outside policy.
    pub denied_requests: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let r = Ordering::Relaxed;
        let gauges: [(&str, &str, i64); 8] = [
            (
                "keygate_agent_ready",
                "1 once authenticated, preloaded and listening",
                self.ready.load(r) as i64,
            ),
            (
                "keygate_agent_authenticated",
                "1 while the agent holds a valid token",
                self.authenticated.load(r) as i64,
            ),
            (
                "keygate_agent_token_ttl_seconds",
                "TTL of the token when last obtained or renewed",
                self.token_ttl_seconds.load(r) as i64,
            ),
            (
                "keygate_agent_secrets_loaded",
                "Secrets currently loaded",
                self.secrets_loaded.load(r),
            ),
            (
                "keygate_agent_secrets_stale",
                "Loaded secrets whose last refresh failed",
                self.secrets_stale.load(r),
            ),
            (
                "keygate_agent_secrets_tracked",
                "Names the agent tracks: preloaded, asked for by an open call, or loaded and kept until the next full refresh",
                self.secrets_tracked.load(r),
            ),
            (
                "keygate_agent_watchers",
                "Open Watch streams",
                self.watchers.load(r),
            ),
            ("keygate_agent_up", "Always 1", 1),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "keygate_agent_auth_logins_total",
                "Successful logins",
                &self.auth_logins,
            ),
            (
                "keygate_agent_auth_login_failures_total",
                "Failed logins",
                &self.auth_login_failures,
            ),
            (
                "keygate_agent_token_renewals_total",
                "Successful token renewals",
                &self.token_renewals,
            ),
            (
                "keygate_agent_token_renewal_failures_total",
                "Failed token renewals",
                &self.token_renewal_failures,
            ),
            (
                "keygate_agent_vault_requests_total",
                "HTTP requests sent to Vault",
                &self.vault_requests,
            ),
            (
                "keygate_agent_vault_errors_total",
                "Failed Vault requests",
                &self.vault_errors,
            ),
            (
                "keygate_agent_secret_changes_total",
                "Secret values loaded or changed",
                &self.secret_changes,
            ),
            (
                "keygate_agent_denied_peers_total",
                "Calls refused for the peer's credentials",
                &self.denied_peers,
            ),
            (
                "keygate_agent_denied_requests_total",
                "Calls refused for header, name or policy",
                &self.denied_requests,
            ),
            ("keygate_agent_build_info", "Always 1", &AtomicU64::new(1)),
        ];
        for (name, help, value) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(r)
            );
        }
        out
    }
}
