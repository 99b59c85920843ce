//! Limits on what one client may send or hold, with a clear answer for each: a request
//! head too large or with too many fields gets 431, a request target too long 414, a
//! head that does not arrive in time or a connection that stays silent is closed, and
//! a connection beyond the limit gets 503 and is closed.

use std::time::Duration;

use serde::Deserialize;

/// The `limits` block of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawLimits")]
pub struct Limits {
    /// Request line plus header fields (HTTP/1: the connection's read buffer, so at
    /// least 8 KiB), or the header list (HTTP/2), in bytes; beyond it: 431.
    pub max_header_bytes: usize,
    /// Header fields per request (HTTP/1); beyond it: 431.
    pub max_headers: usize,
    /// Request target (path and query), in bytes; beyond it: 414.
    pub max_uri_bytes: usize,
    /// The whole request head must arrive within this time, or the connection is
    /// closed (slow-loris clients). On HTTP/1 this is also the longest wait for the
    /// next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// A connection that moves no byte in either direction for this long is shut down
    /// gracefully (requests in flight finish).
    pub idle_timeout: Duration,
    /// Open client connections per listener; more are answered 503 and closed.
    pub max_connections: usize,
}

/// Smallest `max_header_bytes` accepted (hyper's smallest read buffer).
const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Largest `max_header_bytes` accepted (hyper's read buffer is about 400 KiB).
const MAX_HEADER_BYTES: usize = 256 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
        }
    }
}

/// A value in the `limits` block that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{field}: {reason}")]
pub struct LimitError {
    field: &'static str,
    reason: String,
}

/// `limits` as written, before the ranges are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_header_bytes: Option<usize>,
    #[serde(default)]
    max_headers: Option<usize>,
    #[serde(default)]
    max_uri_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default)]
    max_connections: Option<usize>,
}

impl TryFrom<RawLimits> for Limits {
    type Error = LimitError;

    fn try_from(raw: RawLimits) -> Result<Self, LimitError> {
        let d = Self::default();
        let limits = Self {
            max_header_bytes: raw.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_headers: raw.max_headers.unwrap_or(d.max_headers),
            max_uri_bytes: raw.max_uri_bytes.unwrap_or(d.max_uri_bytes),
            header_read_timeout: raw.header_read_timeout.unwrap_or(d.header_read_timeout),
            idle_timeout: raw.idle_timeout.unwrap_or(d.idle_timeout),
            max_connections: raw.max_connections.unwrap_or(d.max_connections),
        };
        let err = |field, reason: String| Err(LimitError { field, reason });
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&limits.max_header_bytes) {
            return err(
                "max_header_bytes",
                format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
            );
        }
        if limits.max_headers == 0 {
            return err("max_headers", "must be at least 1".into());
        }
        if limits.max_uri_bytes < 16 {
            return err("max_uri_bytes", "must be at least 16".into());
        }
        if limits.max_connections == 0 {
            return err("max_connections", "must be at least 1".into());
        }
        for (field, value) in [
            ("header_read_timeout", limits.header_read_timeout),
            ("idle_timeout", limits.idle_timeout),
        ] {
            if value.is_zero() {
                return err(field, "must be more than 0".into());
            }
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let limits: Limits = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(limits, Limits::default());
        let limits: Limits =
            serde_yaml_ng::from_str("{ max_uri_bytes: 100, idle_timeout: 5s }").unwrap();
        assert_eq!(limits.max_uri_bytes, 100);
        assert_eq!(limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(limits.max_headers, 100);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for bad in [
            "{ max_header_bytes: 10 }",
            "{ max_header_bytes: 10000000 }",
            "{ max_headers: 0 }",
            "{ max_connections: 0 }",
            "{ idle_timeout: 0s }",
            "{ max_uri_bytes: 1 }",
            "{ unknown: 1 }",
        ] {
            assert!(serde_yaml_ng::from_str::<Limits>(bad).is_err(), "{bad}");
        }
    }
}
