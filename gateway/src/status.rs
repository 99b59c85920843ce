//! The status listener: `/healthz`, `/readyz`, `/metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, Response, StatusCode};

use crate::body::{self, ProxyBody, RequestBody};
use crate::gateway::Shared;
use crate::metrics::{counter, gauge};

/// Answers one status request.
pub async fn handle(shared: Arc<Shared>, req: Request<RequestBody>) -> Response<ProxyBody> {
    match req.uri().path() {
        "/healthz" => body::text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(&shared),
        "/metrics" => {
            let mut response = body::text(StatusCode::OK, metrics(&shared));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => body::json(
            StatusCode::NOT_FOUND,
            r#"{"error_msg":"404 Route Not Found"}"#,
        ),
    }
}

fn readyz(shared: &Shared) -> Response<ProxyBody> {
    let ready = shared.ready();
    let body = serde_json::json!({
        "ready": ready,
        "agent": {
            "connected": shared.agent.connected.load(Ordering::Relaxed),
            "watched_names": shared.watched_names(),
            "snapshot_age_seconds": shared.snapshot_age().map(|d| d.as_secs_f64()),
            "stale_secrets": shared.snapshot.load().as_deref().map(|s| s.stale_count()),
        },
        "consumers_unavailable": shared.auth.load().unavailable_count(),
        "tls": tls_status(shared),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = body::text(status, body.to_string());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The HTTPS listener's certificates: `null` without a listener.
fn tls_status(shared: &Shared) -> serde_json::Value {
    if shared.tls_listen.is_none() {
        return serde_json::Value::Null;
    }
    let now = crate::tls::unix_now();
    let certs = shared.certs.load();
    let unavailable: serde_json::Map<String, serde_json::Value> = certs
        .unavailable(now)
        .map(|(id, why)| (id.to_owned(), serde_json::Value::from(why)))
        .collect();
    let served: Vec<serde_json::Value> = certs
        .ssls
        .iter()
        .filter_map(|s| s.cert.as_ref().ok())
        .map(|c| {
            serde_json::json!({
                "id": &*c.id,
                "serial": c.info.serial,
                "not_after": c.info.not_after,
            })
        })
        .collect();
    serde_json::json!({
        "ready": shared.tls_ready(),
        "ssls": certs.ssls.len(),
        "certificates": served,
        "unavailable": unavailable,
    })
}

fn tls_metrics(out: &mut String, shared: &Shared) {
    if shared.tls_listen.is_none() {
        return;
    }
    let c = &shared.tls_counters;
    for (name, help, value) in [
        (
            "keygate_gateway_tls_handshakes_total",
            "TLS handshakes completed on the HTTPS listener.",
            &c.handshakes,
        ),
        (
            "keygate_gateway_tls_handshake_failures_total",
            "TLS handshakes that failed (refused, bad client, timeout).",
            &c.failures,
        ),
        (
            "keygate_gateway_tls_unknown_sni_total",
            "Handshakes refused: no certificate for the server name and no fallback.",
            &c.unknown_sni,
        ),
        (
            "keygate_gateway_tls_expired_refused_total",
            "Handshakes refused: the certificate for the server name has expired.",
            &c.expired,
        ),
    ] {
        counter(out, name, help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
    let now = crate::tls::unix_now();
    let certs = shared.certs.load();
    gauge(
        out,
        "keygate_gateway_tls_certificates_unavailable",
        "Enabled ssls without a usable certificate (their handshakes are refused).",
    );
    let _ = writeln!(
        out,
        "keygate_gateway_tls_certificates_unavailable {}",
        certs.unavailable(now).count()
    );
    gauge(
        out,
        "keygate_gateway_tls_certificate_not_after_seconds",
        "Expiry (Unix time) of the certificate each ssl serves.",
    );
    for ssl in &certs.ssls {
        if let Ok(served) = &ssl.cert {
            let _ = writeln!(
                out,
                "keygate_gateway_tls_certificate_not_after_seconds{{ssl=\"{}\"}} {}",
                escape(&ssl.id),
                served.info.not_after
            );
        }
    }
}

fn metrics(shared: &Shared) -> String {
    let mut out = String::new();
    let b = |v: bool| u8::from(v);
    gauge(
        &mut out,
        "keygate_gateway_ready",
        "1 once secrets are loaded (or none are needed).",
    );
    let _ = writeln!(out, "keygate_gateway_ready {}", b(shared.ready()));
    gauge(
        &mut out,
        "keygate_gateway_uptime_seconds",
        "Seconds since start.",
    );
    let _ = writeln!(
        out,
        "keygate_gateway_uptime_seconds {}",
        shared.uptime().as_secs_f64()
    );
    gauge(
        &mut out,
        "keygate_gateway_agent_connected",
        "1 while a Watch stream to the agent is open.",
    );
    let _ = writeln!(
        out,
        "keygate_gateway_agent_connected {}",
        b(shared.agent.connected.load(Ordering::Relaxed))
    );
    gauge(
        &mut out,
        "keygate_gateway_agent_snapshot_age_seconds",
        "Seconds since the last snapshot from the agent (-1: none yet).",
    );
    let age = shared.snapshot_age().map_or(-1.0, |d| d.as_secs_f64());
    let _ = writeln!(out, "keygate_gateway_agent_snapshot_age_seconds {age}");
    gauge(
        &mut out,
        "keygate_gateway_agent_watched_names",
        "Secret names watched.",
    );
    let _ = writeln!(
        out,
        "keygate_gateway_agent_watched_names {}",
        shared.watched_names()
    );
    gauge(
        &mut out,
        "keygate_gateway_agent_stale_secrets",
        "Secrets the agent marks stale.",
    );
    let stale = shared
        .snapshot
        .load()
        .as_deref()
        .map_or(0, |s| s.stale_count());
    let _ = writeln!(out, "keygate_gateway_agent_stale_secrets {stale}");
    counter(
        &mut out,
        "keygate_gateway_agent_snapshots_total",
        "Snapshots received.",
    );
    let _ = writeln!(
        out,
        "keygate_gateway_agent_snapshots_total {}",
        shared.agent.snapshots.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "keygate_gateway_agent_disconnects_total",
        "Watch streams that ended.",
    );
    let _ = writeln!(
        out,
        "keygate_gateway_agent_disconnects_total {}",
        shared.agent.disconnects.load(Ordering::Relaxed)
    );
    gauge(
        &mut out,
        "keygate_gateway_consumers_unavailable",
        "Consumers whose verification key is not available (requests fail closed).",
    );
    let _ = writeln!(
        out,
        "keygate_gateway_consumers_unavailable {}",
        shared.auth.load().unavailable_count()
    );
    counter(
        &mut out,
        "keygate_gateway_http_responses_total",
        "Responses by route and status class.",
    );
    // Only the classes a route has answered with, as APISIX's prometheus plugin: a
    // series per route and class from the start made a scrape at 10 000 routes 50 000
    // lines (3.2 MB, 14-20 ms of the worker that also serves requests).
    let runtime = shared.runtime.load();
    for route in &runtime.routes {
        for (i, n) in route.responses.by_class().into_iter().enumerate() {
            if n == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "keygate_gateway_http_responses_total{{route=\"{}\",code=\"{}xx\"}} {n}",
                escape(&route.id),
                i + 1,
            );
        }
    }
    shared.metrics.render(&mut out);
    tls_metrics(&mut out, shared);
    out
}

/// Escapes a Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
