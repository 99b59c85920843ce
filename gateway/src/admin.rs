//! The APISIX-compatible Admin API on its own listener:
//!
//! ```text
//! GET                  /apisix/admin/{routes,upstreams,consumers}          list
//! GET PUT PATCH DELETE /apisix/admin/{routes,upstreams}/{id}
//! PATCH                /apisix/admin/{routes,upstreams}/{id}/{sub/path}
//! POST                 /apisix/admin/{routes,upstreams}                   generated id
//! PUT                  /apisix/admin/{routes,upstreams}                   id in the body
//! PUT                  /apisix/admin/consumers                            username in the body
//! GET PUT PATCH DELETE /apisix/admin/consumers/{username}
//! GET                  /apisix/admin/plugins/list
//! ```
//!
//! Every request needs the key (`X-API-KEY` header, `api_key` query argument or
//! `X-API-KEY` cookie, as APISIX), compared as SHA-256 digests in constant time; else 401
//! `{"error_msg":"failed to check token"}`. Answers are shaped as APISIX 3.x's:
//! `{"key":"/apisix/routes/1","value":{...}}`, lists `{"total":N,"list":[...]}`, errors
//! `{"error_msg":"..."}` (not found: `{"message":"Key not found"}`).
//!
//! Writes go through [`Control`](crate::control::Control): validated by building the
//! whole new runtime, persisted, then swapped in, on a blocking thread under the control
//! lock, so writes are applied one at a time in the order they are acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::{self, ProxyBody};
use crate::catalog::Entry;
use crate::consumers::digest;
use crate::control::{WriteError, Written};
use crate::gateway::Shared;
use crate::kind::{Kind, check_id};
use crate::query;

pub mod patch;

/// The path prefix.
pub const PREFIX: &str = "/apisix/admin/";

/// The plugins this gateway has (`GET /apisix/admin/plugins/list`).
pub const PLUGINS: [&str; 3] = ["basic-auth", "jwt-auth", "key-auth"];

/// Every (path template, methods) the API serves; the OpenAPI description in
/// `gateway/openapi/admin.yaml` is checked against this table by a test.
pub const ENDPOINTS: &[(&str, &[&str])] = &[
    ("/apisix/admin/routes", &["GET", "POST", "PUT"]),
    (
        "/apisix/admin/routes/{id}",
        &["GET", "PUT", "PATCH", "DELETE"],
    ),
    ("/apisix/admin/routes/{id}/{path}", &["PATCH"]),
    ("/apisix/admin/upstreams", &["GET", "POST", "PUT"]),
    (
        "/apisix/admin/upstreams/{id}",
        &["GET", "PUT", "PATCH", "DELETE"],
    ),
    ("/apisix/admin/upstreams/{id}/{path}", &["PATCH"]),
    ("/apisix/admin/consumers", &["GET", "PUT"]),
    (
        "/apisix/admin/consumers/{username}",
        &["GET", "PUT", "PATCH", "DELETE"],
    ),
    ("/apisix/admin/consumers/{username}/{path}", &["PATCH"]),
    ("/apisix/admin/plugins/list", &["GET"]),
];

/// An answer: status and JSON body.
type Answer = (StatusCode, Value);

fn error(status: StatusCode, msg: impl Into<String>) -> Answer {
    (status, json!({ "error_msg": msg.into() }))
}

fn not_found() -> Answer {
    (StatusCode::NOT_FOUND, json!({ "message": "Key not found" }))
}

/// Answers one Admin API request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<ProxyBody> {
    let (parts, incoming) = req.into_parts();
    let (status, value) = match authorize(&shared, &parts) {
        Err(answer) => {
            shared
                .metrics
                .admin_auth_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %remote.ip(), "admin request refused: bad or missing key");
            answer
        }
        Ok(()) => serve(&shared, &parts, incoming).await,
    };
    shared.metrics.count_admin(status.as_u16());
    let mut response = Response::new(body::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Checks the key before anything else (the body is not read for a bad key).
fn authorize(shared: &Shared, parts: &Parts) -> Result<(), Answer> {
    let refused = || error(StatusCode::UNAUTHORIZED, "failed to check token");
    let auth = shared.auth.load();
    let expected = match auth.admin_key() {
        Some(Ok(d)) => *d,
        Some(Err(_)) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin key is not available from the agent yet",
            ));
        }
        None => return Err(refused()),
    };
    let presented = presented_key(parts).ok_or_else(refused)?;
    if constant_time_eq(&digest(presented.as_bytes()), &expected) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The key from the `X-API-KEY` header, the `api_key` query argument or the
/// `X-API-KEY` cookie, in APISIX's order of preference.
fn presented_key(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get("x-api-key") {
        return v.to_str().ok().map(str::to_owned);
    }
    if let Some(v) = parts.uri.query().and_then(|q| query::param(q, "api_key")) {
        return Some(v);
    }
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            name.eq_ignore_ascii_case("x-api-key")
                .then(|| value.to_owned())
        })
}

/// Equality of two digests in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The request, once authorized.
async fn serve(shared: &Arc<Shared>, parts: &Parts, incoming: Incoming) -> Answer {
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return error(StatusCode::NOT_FOUND, "404 Route Not Found");
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = &parts.method;
    let query = parts.uri.query().unwrap_or("");
    if query::param(query, "ttl").is_some() {
        return error(StatusCode::BAD_REQUEST, "ttl is not supported");
    }
    let (resource, id, sub_path) = match segments.as_slice() {
        ["plugins", "list"] if *method == Method::GET => {
            return (StatusCode::OK, json!(PLUGINS));
        }
        [resource] => (*resource, None, &[][..]),
        [resource, id, sub @ ..] => (*resource, Some(*id), sub),
        [] => return error(StatusCode::NOT_FOUND, "404 Route Not Found"),
    };
    let Some(kind) = Kind::from_plural(resource) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unsupported resource type: {resource}"),
        );
    };
    if !sub_path.is_empty() && *method != Method::PATCH {
        return error(StatusCode::NOT_FOUND, "404 Route Not Found");
    }
    let body = if matches!(*method, Method::PUT | Method::POST | Method::PATCH) {
        match read_json(incoming, shared.admin_max_body).await {
            Ok(v) => Some(v),
            Err(answer) => return answer,
        }
    } else {
        None
    };
    match (method.clone(), id, body) {
        (Method::GET, id, _) => read(shared, kind, id, query).await,
        (Method::PUT, id, Some(body)) => put(shared, kind, id, body).await,
        (Method::POST, None, Some(body)) => post(shared, kind, body).await,
        (Method::POST, Some(_), _) => error(StatusCode::NOT_FOUND, "404 Route Not Found"),
        (Method::PATCH, Some(id), Some(body)) => patch(shared, kind, id, sub_path, body).await,
        (Method::DELETE, Some(id), _) => delete(shared, kind, id).await,
        (Method::PATCH | Method::DELETE, None, _) => error(
            StatusCode::BAD_REQUEST,
            format!("missing {} {}", kind.singular(), id_word(kind)),
        ),
        (m, _, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("not supported `{m}` method for {}", kind.singular()),
        ),
    }
}

/// A read: on a blocking thread too, since the control lock may be held by a write
/// waiting for its fsync (the request path's threads must never wait for a disk).
async fn read(shared: &Arc<Shared>, kind: Kind, id: Option<&str>, query: &str) -> Answer {
    let shared = shared.clone();
    let id = id.map(str::to_owned);
    let query = query.to_owned();
    tokio::task::spawn_blocking(move || match id {
        None => list(&shared, kind, &query),
        Some(id) => get(&shared, kind, &id),
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "admin read task failed");
        error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })
}

fn id_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Consumer => "name",
        Kind::Route | Kind::Upstream => "id",
    }
}

/// Reads the body (at most `max` bytes) as a JSON object.
async fn read_json(incoming: Incoming, max: usize) -> Result<Value, Answer> {
    let bytes = match Limited::new(incoming, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("invalid request body: larger than {max} bytes"),
            ));
        }
        Err(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid request body: the body could not be read",
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(error(StatusCode::BAD_REQUEST, "missing configurations"));
    }
    // The error names a position, never the content (which may hold a secret).
    serde_json::from_slice::<Value>(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

/// `{"key": ..., "value": ..., "createdIndex": ..., "modifiedIndex": ...}`.
fn item(kind: Kind, entry: &Entry) -> Value {
    json!({
        "key": kind.key(&entry.id),
        "value": entry.value,
        "createdIndex": entry.created,
        "modifiedIndex": entry.modified,
    })
}

fn list(shared: &Shared, kind: Kind, query: &str) -> Answer {
    let control = shared.control();
    let param = |name: &str| query::param(query, name).filter(|v| !v.is_empty());
    let name = param("name");
    let uri = param("uri");
    let label = param("label");
    let matching: Vec<Value> = control
        .catalog()
        .entries(kind)
        .iter()
        .filter(|e| filters_match(&e.value, name.as_deref(), uri.as_deref(), label.as_deref()))
        .map(|e| item(kind, e))
        .collect();
    drop(control);
    let total = matching.len();
    let (page, page_size) = (param("page"), param("page_size"));
    if page.is_none() && page_size.is_none() {
        return (StatusCode::OK, json!({ "total": total, "list": matching }));
    }
    let page = match page.map_or(Ok(1), |p| p.parse::<usize>()) {
        Ok(p) if p >= 1 => p,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "page: must be an integer of at least 1",
            );
        }
    };
    let page_size = match page_size.map_or(Ok(10), |p| p.parse::<usize>()) {
        Ok(p) if (10..=500).contains(&p) => p,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "page_size: must be an integer from 10 to 500",
            );
        }
    };
    let list: Vec<Value> = matching
        .into_iter()
        .skip((page - 1).saturating_mul(page_size))
        .take(page_size)
        .collect();
    (StatusCode::OK, json!({ "total": total, "list": list }))
}

/// APISIX 3.x list filters: `name` and `uri` match substrings, `label` is `key` or
/// `key:value`.
fn filters_match(
    value: &Value,
    name: Option<&str>,
    uri: Option<&str>,
    label: Option<&str>,
) -> bool {
    let text = |field: &str| value.get(field).and_then(Value::as_str);
    if let Some(name) = name
        && !text("name").is_some_and(|n| n.contains(name))
    {
        return false;
    }
    if let Some(uri) = uri {
        let in_uris = value
            .get("uris")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().filter_map(Value::as_str).any(|u| u.contains(uri)));
        if !in_uris && !text("uri").is_some_and(|u| u.contains(uri)) {
            return false;
        }
    }
    if let Some(label) = label {
        let (k, v) = label
            .split_once(':')
            .map_or((label, None), |(k, v)| (k, Some(v)));
        let found = value.get("labels").and_then(|l| l.get(k));
        match (found, v) {
            (None, _) => return false,
            (Some(actual), Some(v)) if actual.as_str() != Some(v) => return false,
            _ => {}
        }
    }
    true
}

fn get(shared: &Shared, kind: Kind, id: &str) -> Answer {
    let control = shared.control();
    match control.catalog().get(kind, id) {
        Some(entry) => (StatusCode::OK, item(kind, entry)),
        None => not_found(),
    }
}

/// The id field of a body as a string (APISIX accepts numbers).
fn body_id(kind: Kind, body: &Value) -> Result<Option<String>, Answer> {
    match body.get(kind.id_field()) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if kind != Kind::Consumer => Ok(Some(n.to_string())),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid configuration: {}: must be a string",
                kind.id_field()
            ),
        )),
    }
}

/// Checks that `body` is an object whose id field (if any) agrees with `id` and sets
/// it to `id`.
fn bind_id(kind: Kind, id: &str, body: &mut Value) -> Result<(), Answer> {
    if !body.is_object() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid configuration: expected a JSON object",
        ));
    }
    check_id(kind, id).map_err(|why| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid configuration: {}: {why}", kind.id_field()),
        )
    })?;
    if let Some(given) = body_id(kind, body)?
        && given != id
    {
        let msg = match kind {
            Kind::Consumer => "wrong username".to_owned(),
            Kind::Route | Kind::Upstream => format!("wrong {} id", kind.singular()),
        };
        return Err(error(StatusCode::BAD_REQUEST, msg));
    }
    if let Value::Object(map) = body {
        map.insert(kind.id_field().to_owned(), Value::String(id.to_owned()));
    }
    Ok(())
}

async fn put(shared: &Arc<Shared>, kind: Kind, id: Option<&str>, mut body: Value) -> Answer {
    if !body.is_object() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid configuration: expected a JSON object",
        );
    }
    let id = match id {
        Some(id) => id.to_owned(),
        None => match body_id(kind, &body) {
            Ok(Some(id)) => id,
            Ok(None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    match kind {
                        Kind::Consumer => "invalid configuration: username: required".to_owned(),
                        Kind::Route | Kind::Upstream => {
                            format!("missing {} id", kind.singular())
                        }
                    },
                );
            }
            Err(answer) => return answer,
        },
    };
    if let Err(answer) = bind_id(kind, &id, &mut body) {
        return answer;
    }
    write(shared, kind, id, Op::Put(body), "PUT").await
}

async fn post(shared: &Arc<Shared>, kind: Kind, body: Value) -> Answer {
    if kind == Kind::Consumer {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "not supported `POST` method for consumer",
        );
    }
    if !body.is_object() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid configuration: expected a JSON object",
        );
    }
    match body_id(kind, &body) {
        Ok(None) => {}
        Ok(Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("wrong {} id, do not need it", kind.singular()),
            );
        }
        Err(answer) => return answer,
    }
    write(shared, kind, String::new(), Op::Post(body), "POST").await
}

async fn patch(
    shared: &Arc<Shared>,
    kind: Kind,
    id: &str,
    sub_path: &[&str],
    body: Value,
) -> Answer {
    if sub_path.is_empty() && !body.is_object() {
        return error(StatusCode::BAD_REQUEST, "invalid configuration");
    }
    let op = Op::Patch {
        sub_path: sub_path.iter().map(|s| (*s).to_owned()).collect(),
        body,
    };
    write(shared, kind, id.to_owned(), op, "PATCH").await
}

async fn delete(shared: &Arc<Shared>, kind: Kind, id: &str) -> Answer {
    write(shared, kind, id.to_owned(), Op::Delete, "DELETE").await
}

/// A write, done on a blocking thread under the control lock.
enum Op {
    Put(Value),
    Post(Value),
    Patch { sub_path: Vec<String>, body: Value },
    Delete,
}

async fn write(
    shared: &Arc<Shared>,
    kind: Kind,
    id: String,
    op: Op,
    method: &'static str,
) -> Answer {
    let started = Instant::now();
    let task_shared = shared.clone();
    let result = tokio::task::spawn_blocking(move || apply(&task_shared, kind, id, op)).await;
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, "admin write task failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    };
    let elapsed = started.elapsed();
    if answer.0.is_success() {
        shared.metrics.observe_admin_write(elapsed);
        let key = answer.1.get("key").and_then(Value::as_str).unwrap_or("");
        tracing::info!(%method, %key, micros = elapsed.as_micros() as u64, "admin: change applied");
    }
    answer
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn apply(shared: &Shared, kind: Kind, id: String, op: Op) -> Answer {
    let env = |k: &str| std::env::var(k).ok();
    let mut control = shared.control();
    let (result, id, method_created) = match op {
        Op::Put(body) => (control.put(kind, &id, body, now(), &env), id, None),
        Op::Post(mut body) => {
            let id = control.generated_id();
            if let Value::Object(map) = &mut body {
                map.insert(kind.id_field().to_owned(), Value::String(id.clone()));
            }
            (
                control.put(kind, &id, body, now(), &env),
                id,
                Some(StatusCode::CREATED),
            )
        }
        Op::Patch { sub_path, body } => {
            let Some(entry) = control.catalog().get(kind, &id) else {
                return not_found();
            };
            let mut value = entry.value.clone();
            let stamped = match &body {
                Value::Object(map) => map.contains_key("update_time"),
                _ => false,
            };
            if sub_path.is_empty() {
                patch::merge(&mut value, body);
            } else {
                let segments: Vec<&str> = sub_path.iter().map(String::as_str).collect();
                if let Err(why) = patch::set_path(&mut value, &segments, body) {
                    return error(StatusCode::BAD_REQUEST, why);
                }
            }
            if !stamped && let Value::Object(map) = &mut value {
                map.remove("update_time");
            }
            if let Err(answer) = bind_id(kind, &id, &mut value) {
                return answer;
            }
            (
                control.put(kind, &id, value, now(), &env),
                id,
                Some(StatusCode::OK),
            )
        }
        Op::Delete => (control.delete(kind, &id, &env), id, None),
    };
    match result {
        Ok(Written {
            runtime,
            entry,
            created,
        }) => {
            shared.install(runtime);
            drop(control);
            match entry {
                Some(entry) => {
                    let status = method_created.unwrap_or(if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    });
                    (
                        status,
                        json!({ "key": kind.key(&entry.id), "value": entry.value }),
                    )
                }
                None => (
                    StatusCode::OK,
                    json!({ "deleted": "1", "key": kind.key(&id) }),
                ),
            }
        }
        Err(WriteError::NotFound) => not_found(),
        Err(e @ (WriteError::Invalid(_) | WriteError::Conflict(_))) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e @ (WriteError::Persist(_) | WriteError::NoStore)) => {
            tracing::error!(error = %e, "admin write not persisted; nothing changed");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests;
