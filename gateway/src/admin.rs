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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use serde_json::{Value, json};

use crate::body::{self, ProxyBody, RequestBody};
use crate::catalog::Entry;
use crate::consumers::digest;
use crate::control::{Control, WriteError, Written};
use crate::gateway::Shared;
use crate::kind::{Kind, check_id};
use crate::query;
use crate::secrets;

pub mod patch;
mod write_through;

use write_through::VaultWrite;

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
    ("/apisix/admin/ssls", &["GET", "POST", "PUT"]),
    (
        "/apisix/admin/ssls/{id}",
        &["GET", "PUT", "PATCH", "DELETE"],
    ),
    ("/apisix/admin/ssls/{id}/{path}", &["PATCH"]),
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

/// An answer this large (bytes of JSON) came from a tree worth giving back to the kernel.
const LARGE_ANSWER: usize = 1 << 20;

/// A heap trim is scheduled and has not started yet.
static TRIM_PENDING: AtomicBool = AtomicBool::new(false);

/// Trims the heap a second from now, once for any number of requests in between: a
/// trim holds each arena's lock while it walks it, so a burst of writes must not queue
/// one per write, and a second lets requests still on the old runtime drop it first.
fn schedule_trim() {
    schedule_once(&TRIM_PENDING, Duration::from_secs(1), crate::heap::trim);
}

/// Runs `work` on a blocking thread `delay` from now, unless a run is already pending
/// on `pending`: any number of calls before it starts make one run.
fn schedule_once(pending: &'static AtomicBool, delay: Duration, work: fn()) {
    if pending.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        // Cleared first: a call during the run schedules the next one.
        pending.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(work).await;
    });
}

/// Answers one Admin API request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<RequestBody>,
    remote: SocketAddr,
) -> Response<ProxyBody> {
    let (parts, incoming) = req.into_parts();
    let has_body = !hyper::body::Body::is_end_stream(&incoming);
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
    let text = value.to_string();
    drop(value);
    // A write (taken or refused) built a whole runtime beside the one in use, and a
    // large answer a JSON tree of thousands of resources: both are freed by now or
    // soon, and glibc would keep their pages (after five writes at 10 000 routes and
    // consumers, 113 MB resident instead of 31).
    if parts.method != Method::GET || text.len() > LARGE_ANSWER {
        schedule_trim();
    }
    let mut response = Response::new(body::full(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // An error may leave the body unread (a bad key, a body over max_body, an unknown
    // resource): the connection cannot carry another request, so say so rather than let
    // an HTTP/1 client reuse it and lose its next request.
    if has_body && !status.is_success() && parts.version < http::Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
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
async fn serve(shared: &Arc<Shared>, parts: &Parts, incoming: RequestBody) -> Answer {
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
        Kind::Route | Kind::Upstream | Kind::Ssl => "id",
    }
}

/// Reads the body (at most `max` bytes) as a JSON object.
async fn read_json(incoming: RequestBody, max: usize) -> Result<Value, Answer> {
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
    // The body may hold a credential: wiped once parsed (the whole buffer, when this
    // is its only owner).
    let bytes = zeroize::Zeroizing::new(Vec::<u8>::from(bytes));
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
        "value": entry.json.value(),
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
    // Entries are parsed for the answer only once the page is known, and for a filter
    // only when one is given.
    let filtered = name.is_some() || uri.is_some() || label.is_some();
    let matching: Vec<&Entry> = control
        .catalog()
        .entries(kind)
        .iter()
        .map(|e| &**e)
        .filter(|e| {
            !filtered
                || e.json.with_value(|v| {
                    filters_match(v, name.as_deref(), uri.as_deref(), label.as_deref())
                })
        })
        .collect();
    let total = matching.len();
    let (page, page_size) = (param("page"), param("page_size"));
    if page.is_none() && page_size.is_none() {
        let list: Vec<Value> = matching.into_iter().map(|e| item(kind, e)).collect();
        return (StatusCode::OK, json!({ "total": total, "list": list }));
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
        .map(|e| item(kind, e))
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
            Kind::Route | Kind::Upstream | Kind::Ssl => {
                format!("wrong {} id", kind.singular())
            }
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
                        Kind::Route | Kind::Upstream | Kind::Ssl => {
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
    write(shared, kind, id, Change::Put(body).into(), "PUT").await
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
    write(
        shared,
        kind,
        String::new(),
        Change::Post(body).into(),
        "POST",
    )
    .await
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
    let op = Op::Change(Change::Patch {
        sub_path: sub_path.iter().map(|s| (*s).to_owned()).collect(),
        body,
    });
    write(shared, kind, id.to_owned(), op, "PATCH").await
}

async fn delete(shared: &Arc<Shared>, kind: Kind, id: &str) -> Answer {
    write(shared, kind, id.to_owned(), Op::Delete, "DELETE").await
}

/// A write.
enum Op {
    Change(Change),
    Delete,
}

/// A write that stores a resource.
enum Change {
    Put(Value),
    Post(Value),
    Patch { sub_path: Vec<String>, body: Value },
}

impl From<Change> for Op {
    fn from(change: Change) -> Self {
        Self::Change(change)
    }
}

async fn write(
    shared: &Arc<Shared>,
    kind: Kind,
    id: String,
    op: Op,
    method: &'static str,
) -> Answer {
    let started = Instant::now();
    // One write at a time, in the order they are acknowledged: the control lock alone
    // does not span a write-through's call to the agent.
    let serial = shared.admin_writes.lock().await;
    let answer = match op {
        Op::Change(change) if kind == Kind::Consumer => write_consumer(shared, id, change).await,
        op => on_blocking_thread(shared, move |s| apply(s, kind, id, op))
            .await
            .unwrap_or_else(|answer| answer),
    };
    drop(serial);
    let elapsed = started.elapsed();
    if answer.0.is_success() {
        shared.metrics.observe_admin_write(elapsed);
        let key = answer.1.get("key").and_then(Value::as_str).unwrap_or("");
        tracing::info!(%method, %key, micros = elapsed.as_micros() as u64, "admin: change applied");
    }
    answer
}

/// Runs `f` on a blocking thread (it takes the control lock, which a write holds across
/// its fsync: the request path's threads must never wait for a disk).
async fn on_blocking_thread<T, F>(shared: &Arc<Shared>, f: F) -> Result<T, Answer>
where
    F: FnOnce(&Shared) -> T + Send + 'static,
    T: Send + 'static,
{
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "admin write task failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// A resource as it is about to be stored.
struct Prepared {
    id: String,
    value: Value,
    /// The status of a success, when it does not follow from created/replaced.
    status: Option<StatusCode>,
}

/// The resource a change stores: the body of a `PUT`, the body with a generated id of a
/// `POST`, the stored resource with a `PATCH` applied.
fn prepare(control: &Control, kind: Kind, id: String, change: Change) -> Result<Prepared, Answer> {
    match change {
        Change::Put(value) => Ok(Prepared {
            id,
            value,
            status: None,
        }),
        Change::Post(mut value) => {
            let id = control.generated_id();
            if let Value::Object(map) = &mut value {
                map.insert(kind.id_field().to_owned(), Value::String(id.clone()));
            }
            Ok(Prepared {
                id,
                value,
                status: Some(StatusCode::CREATED),
            })
        }
        Change::Patch { sub_path, body } => {
            let Some(entry) = control.catalog().get(kind, &id) else {
                return Err(not_found());
            };
            let mut value = entry.json.value();
            let stamped = match &body {
                Value::Object(map) => map.contains_key("update_time"),
                _ => false,
            };
            if sub_path.is_empty() {
                patch::merge(&mut value, body);
            } else {
                let segments: Vec<&str> = sub_path.iter().map(String::as_str).collect();
                patch::set_path(&mut value, &segments, body)
                    .map_err(|why| error(StatusCode::BAD_REQUEST, why))?;
            }
            if !stamped && let Value::Object(map) = &mut value {
                map.remove("update_time");
            }
            bind_id(kind, &id, &mut value)?;
            Ok(Prepared {
                id,
                value,
                status: Some(StatusCode::OK),
            })
        }
    }
}

/// A write under the control lock: validated, persisted, swapped in.
fn apply(shared: &Shared, kind: Kind, id: String, op: Op) -> Answer {
    let mut control = shared.control();
    match op {
        Op::Delete => {
            let result = control.delete(kind, &id, &env);
            finish(shared, control, kind, &id, result, None)
        }
        Op::Change(change) => match prepare(&control, kind, id, change) {
            Ok(prepared) => commit(shared, control, kind, prepared),
            Err(answer) => answer,
        },
    }
}

/// Stores `prepared` (under the control lock `control`) and answers.
fn commit(
    shared: &Shared,
    mut control: MutexGuard<'_, Control>,
    kind: Kind,
    prepared: Prepared,
) -> Answer {
    let Prepared { id, value, status } = prepared;
    let result = control.put(kind, &id, value, now(), &env);
    finish(shared, control, kind, &id, result, status)
}

/// Swaps a written change in and answers; or answers why nothing changed.
fn finish(
    shared: &Shared,
    control: MutexGuard<'_, Control>,
    kind: Kind,
    id: &str,
    result: Result<Written, WriteError>,
    status: Option<StatusCode>,
) -> Answer {
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
                    let status = status.unwrap_or(if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    });
                    (
                        status,
                        json!({ "key": kind.key(&entry.id), "value": entry.json.value() }),
                    )
                }
                None => (
                    StatusCode::OK,
                    json!({ "deleted": "1", "key": kind.key(id) }),
                ),
            }
        }
        Err(e) => refused(&e),
    }
}

/// The answer to a refused write.
fn refused(e: &WriteError) -> Answer {
    match e {
        WriteError::NotFound => not_found(),
        WriteError::Invalid(_) | WriteError::Conflict(_) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        WriteError::Persist(_) | WriteError::NoStore => {
            tracing::error!(error = %e, "admin write not persisted; nothing changed");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// What the first step of a consumer write leaves to do.
enum Stage {
    /// Answered (refused, or stored with nothing to write to Vault).
    Done(Answer),
    /// Validated; the credentials go to Vault before the reference is stored.
    Through(Prepared, Vec<VaultWrite>),
}

/// A consumer write: with `admin.vault_write_through`, inline credentials next to
/// `vault: {}` are written to Vault through the agent first (after the consumer is
/// validated both with them inline and with the reference only), then the reference
/// alone is stored. The agent refusing or unreachable: nothing changes, and the
/// credential is never stored inline instead.
async fn write_consumer(shared: &Arc<Shared>, id: String, change: Change) -> Answer {
    let stage = match on_blocking_thread(shared, move |s| stage_consumer(s, id, change)).await {
        Ok(stage) => stage,
        Err(answer) => return answer,
    };
    let (prepared, writes) = match stage {
        Stage::Done(answer) => return answer,
        Stage::Through(prepared, writes) => (prepared, writes),
    };
    let Some(socket) = shared.agent_socket.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot store the credential in Vault: the gateway was started without an agent; nothing was changed",
        );
    };
    let versions = match write_through::put_all(&socket, &writes).await {
        Ok(versions) => versions,
        Err(answer) => return answer,
    };
    for (write, version) in writes.iter().zip(&versions) {
        tracing::info!(
            secret.name = %write.name, fields = ?write.field_names(), version = version.1,
            "admin: credential stored in Vault through the agent"
        );
    }
    drop(writes);
    let answer = on_blocking_thread(shared, move |s| {
        commit(s, s.control(), Kind::Consumer, prepared)
    })
    .await
    .unwrap_or_else(|answer| answer);
    if !answer.0.is_success() {
        // Rare (the file was reloaded in between, or the disk failed): Vault already
        // has the credential; say so.
        let names: Vec<&str> = versions.iter().map(|(n, _)| n.as_str()).collect();
        let msg = answer
            .1
            .get("error_msg")
            .and_then(Value::as_str)
            .unwrap_or("");
        return error(
            answer.0,
            format!(
                "{msg} (the credential was already written to Vault as {})",
                names.join(", ")
            ),
        );
    }
    // Read your writes: answer once this gateway's snapshot has the new versions, so a
    // token signed right after the answer uses the new credential.
    if !write_through::caught_up(shared, &versions).await {
        tracing::debug!("admin: the agent's snapshot with the written credential is late");
    }
    answer
}

/// The first step of a consumer write, under the control lock.
fn stage_consumer(shared: &Shared, id: String, change: Change) -> Stage {
    let control = shared.control();
    let prepared = match prepare(&control, Kind::Consumer, id, change) {
        Ok(prepared) => prepared,
        Err(answer) => return Stage::Done(answer),
    };
    let through = control
        .file()
        .admin
        .as_ref()
        .is_some_and(|a| a.vault_write_through);
    if !through {
        return Stage::Done(commit(shared, control, Kind::Consumer, prepared));
    }
    let plan = match write_through::plan(&prepared.value) {
        Ok(Some(plan)) => plan,
        Ok(None) => return Stage::Done(commit(shared, control, Kind::Consumer, prepared)),
        Err(msg) => {
            secrets::wipe(prepared.value);
            return Stage::Done(error(StatusCode::BAD_REQUEST, msg));
        }
    };
    let Prepared { id, value, status } = prepared;
    secrets::wipe(value);
    let (inline, checked) = control.check(Kind::Consumer, &id, plan.inline, &env);
    secrets::wipe(inline);
    let (stripped, checked) = match checked {
        Ok(()) => control.check(Kind::Consumer, &id, plan.stripped, &env),
        Err(e) => (plan.stripped, Err(e)),
    };
    if let Err(e) = checked {
        return Stage::Done(refused(&e));
    }
    Stage::Through(
        Prepared {
            id,
            value: stripped,
            status,
        },
        plan.writes,
    )
}

#[cfg(test)]
mod tests;
