//! The seed tutorial's sign endpoint, `GET /apisix/plugin/jwt/sign?key=<key>[&payload=<json>]`:
//! a token for the consumer with that key, signed with its secret or private key.
//! Off unless `plugin_attr.jwt-auth.sign_endpoint` is set.

use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::{Map, Value};

use crate::body::{self, ProxyBody};
use crate::consumers::AuthState;
use crate::jwt;
use crate::metrics::Metrics;
use crate::query;

/// The endpoint's path (APISIX's public API path).
pub const PATH: &str = "/apisix/plugin/jwt/sign";

/// Answers a sign request. `now` is Unix seconds.
pub fn handle(
    auth: &AuthState,
    query_string: Option<&str>,
    now: u64,
    metrics: &Metrics,
) -> Response<ProxyBody> {
    let outcome = |i: usize| {
        if let Some(c) = metrics.sign.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    };
    let param = |name: &str| query_string.and_then(|q| query::param(q, name));
    let Some(key) = param("key").filter(|k| !k.is_empty()) else {
        outcome(1);
        return body::text(StatusCode::BAD_REQUEST, "missing key");
    };
    let mut claims = match param("payload") {
        None => Map::new(),
        Some(raw) => match serde_json::from_str::<Value>(&raw) {
            Ok(Value::Object(map)) => map,
            _ => {
                outcome(1);
                return body::text(StatusCode::BAD_REQUEST, "payload must be a JSON object");
            }
        },
    };
    let Some(consumer) = auth.jwt_consumer(&key) else {
        outcome(2);
        return body::text(StatusCode::NOT_FOUND, "consumer not found");
    };
    let Ok(sign_key) = consumer.sign.as_ref() else {
        outcome(3);
        tracing::warn!(consumer = %consumer.username, "cannot sign: key not available");
        return body::text(StatusCode::SERVICE_UNAVAILABLE, "failed to sign jwt");
    };
    // Set last: the caller's payload cannot choose the key or the lifetime.
    claims.insert("key".to_owned(), Value::String(key));
    claims.insert(
        "exp".to_owned(),
        Value::from(now.saturating_add(consumer.exp)),
    );
    match jwt::sign(consumer.algorithm, sign_key, &claims) {
        Ok(token) => {
            outcome(0);
            body::text(StatusCode::OK, token)
        }
        Err(e) => {
            outcome(3);
            tracing::warn!(consumer = %consumer.username, error = %e, "cannot sign");
            body::text(StatusCode::SERVICE_UNAVAILABLE, "failed to sign jwt")
        }
    }
}
