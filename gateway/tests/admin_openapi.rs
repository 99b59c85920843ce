//! `gateway/openapi/admin.yaml` against the implementation: the documented operations
//! are exactly the ones served ([`keygate_gateway::admin::ENDPOINTS`]), and each one,
//! called on a real gateway with the document's own example body, answers a status the
//! document lists, in the documented shape; without the key, 401 (documented too).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use anyhow::{Context as _, Result, anyhow, ensure};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate_gateway::{Config, Gateway};
use serde_json::Value;

const SPEC: &str = include_str!("../openapi/admin.yaml");
const KEY: &str = "openapi-test-admin-key";

fn spec() -> Result<Value> {
    Ok(serde_yaml_ng::from_str(SPEC)?)
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => spec
            .pointer(r.trim_start_matches('#'))
            .unwrap_or(&Value::Null),
        None => v,
    }
}

/// (path, METHOD, operation), in document order.
fn operations(spec: &Value) -> Result<Vec<(String, String, Value)>> {
    let paths = spec["paths"].as_object().context("no paths")?;
    let mut out = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().context("path item")? {
            if method != "parameters" {
                out.push((path.clone(), method.to_uppercase(), op.clone()));
            }
        }
    }
    Ok(out)
}

#[test]
fn documented_operations_are_the_served_ones() -> Result<()> {
    let spec = spec()?;
    let documented: BTreeSet<(String, String)> = operations(&spec)?
        .into_iter()
        .map(|(p, m, _)| (p, m))
        .collect();
    let served: BTreeSet<(String, String)> = keygate_gateway::admin::ENDPOINTS
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(|m| ((*p).to_owned(), (*m).to_owned())))
        .collect();
    ensure!(
        documented == served,
        "documented but not served: {:?}; served but not documented: {:?}",
        documented.difference(&served).collect::<Vec<_>>(),
        served.difference(&documented).collect::<Vec<_>>()
    );
    Ok(())
}

async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> Result<(u16, Value)> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes())?)
        .uri(format!("http://{admin}{path}"));
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = client.request(req).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{method} {path}: not JSON: {bytes:?}"))?;
    Ok((status, value))
}

/// The properties a documented response schema requires.
fn required(spec: &Value, response: &Value) -> Vec<String> {
    let response = resolve(spec, response);
    let schema = resolve(spec, &response["content"]["application/json"]["schema"]);
    schema["required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_answers_as_documented() -> Result<()> {
    let spec = spec()?;
    let state = tempfile::tempdir()?;
    let config = Config::parse(&format!(
        "listen: 127.0.0.1:0\nagent: {{ socket: {:?} }}\nadmin: {{ listen: 127.0.0.1:0, key: {KEY}, state_dir: {:?} }}\n",
        state.path().join("no-agent.sock"),
        state.path().join("state"),
    ))?;
    let gateway = Gateway::bind(config).await?;
    let admin = gateway.admin_addr().ok_or_else(|| anyhow!("no admin"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));

    // Fixtures for the {id}/{username} of the paths.
    for (path, body) in [
        (
            "/apisix/admin/upstreams/1",
            r#"{"nodes":{"127.0.0.1:9999":1}}"#,
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"uri":"/r1","upstream_id":"1"}"#,
        ),
        (
            "/apisix/admin/consumers",
            r#"{"username":"jack","plugins":{"jwt-auth":{"key":"k","secret":"fixture-secret"}}}"#,
        ),
        (
            "/apisix/admin/ssls/1",
            r#"{"snis":["fixture.example.com"],"cert":"$secret://vault/tls/fixture/cert","key":"$secret://vault/tls/fixture/key"}"#,
        ),
    ] {
        let (status, v) = call(admin, "PUT", path, Some(KEY), Some(body.to_owned())).await?;
        ensure!(status == 201, "fixture {path}: {status} {v}");
    }

    let mut ops = operations(&spec)?;
    // Deletes last, so the other operations find their resources.
    ops.sort_by_key(|(_, m, _)| m == "DELETE");
    for (template, method, op) in ops {
        let path = template
            .replace("{id}", "1")
            .replace("{username}", "jack")
            .replace("{path}", "desc");
        let body = op
            .get("requestBody")
            .map(|rb| resolve(&spec, rb)["content"]["application/json"]["example"].to_string());
        let responses = op["responses"].as_object().context("responses")?;
        ensure!(
            responses.contains_key("401"),
            "{method} {template}: 401 not documented"
        );
        let (status, _) = call(admin, &method, &path, None, body.clone()).await?;
        ensure!(status == 401, "{method} {path} without the key: {status}");

        let (status, value) = call(admin, &method, &path, Some(KEY), body).await?;
        let documented = responses
            .get(&status.to_string())
            .ok_or_else(|| anyhow!("{method} {path}: {status} {value} is not documented"))?;
        for field in required(&spec, documented) {
            ensure!(
                value.get(&field).is_some(),
                "{method} {path}: {status} lacks {field:?}: {value}"
            );
        }
        let expect_success = !(method == "DELETE" && template.contains("upstreams"));
        ensure!(
            (200..300).contains(&status) == expect_success,
            "{method} {path}: {status} {value}"
        );
        // What a POST created is removed again, so that the next example (the same
        // body, e.g. an ssl's SNI) does not clash with it.
        if method == "POST"
            && let Some(key) = value["key"].as_str()
            && let Some(id) = key.rsplit('/').next()
        {
            let base = template.trim_end_matches('/');
            let (status, value) =
                call(admin, "DELETE", &format!("{base}/{id}"), Some(KEY), None).await?;
            ensure!(status == 200, "cleaning up {key}: {status} {value}");
        }
    }
    let _ = stop.send(());
    task.await?;
    Ok(())
}
