//! Route matching: routes built from the input's first lines (`path|host|method|priority`),
//! then the last line (`method|host|path`) looked up. Nothing may panic, and a route that
//! is found must match the request.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/router.rs` and the CI smoke run
//! `tests/tests/fuzz_smoke.rs`.

use http::Method;
use keygate_gateway::router::{MatchSpec, Router};

/// One input: must not panic (and must keep the invariants asserted below).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(request) = lines.pop() else {
        return;
    };
    let mut router = Router::new();
    let mut specs = Vec::new();
    for (index, line) in lines.iter().take(64).enumerate() {
        let mut parts = line.split('|');
        let spec = MatchSpec {
            paths: parts.next().map(|p| vec![p.to_owned()]).unwrap_or_default(),
            hosts: parts
                .next()
                .filter(|h| !h.is_empty())
                .map(|h| vec![h.to_owned()])
                .unwrap_or_default(),
            methods: parts
                .next()
                .filter(|m| !m.is_empty())
                .map(|m| vec![m.to_owned()])
                .unwrap_or_default(),
            priority: parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
        };
        if router.add(&spec, index).is_ok() {
            specs.push((index, spec));
        }
    }
    let mut parts = request.splitn(3, '|');
    let (Some(method), Some(host), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let host = (!host.is_empty()).then_some(host);
    if let Some(found) = router.find(&method, host, path) {
        let (_, spec) = specs
            .iter()
            .find(|(i, _)| i == found)
            .expect("the router returned a route it was never given");
        let path_ok = spec.paths.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => p == path,
        });
        assert!(path_ok, "route {found} does not match path {path:?}");
        assert!(
            // Methods in the configuration are normalised to upper case.
            spec.methods.is_empty()
                || spec
                    .methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(method.as_str())),
            "route {found} does not allow {method}"
        );
    }
}
