use super::*;

fn spec(paths: &[&str]) -> MatchSpec {
    MatchSpec {
        paths: paths.iter().map(|s| s.to_string()).collect(),
        ..MatchSpec::default()
    }
}

fn get(router: &Router<&'static str>, path: &str) -> Option<&'static str> {
    router.find(&Method::GET, None, path).copied()
}

#[test]
fn exact_and_prefix_paths() {
    let mut r = Router::new();
    r.add(&spec(&["/secure/ping"]), "exact").unwrap();
    r.add(&spec(&["/secure/*"]), "secure-prefix").unwrap();
    r.add(&spec(&["/*"]), "root").unwrap();
    r.add(&spec(&["/api*"]), "api").unwrap();
    assert_eq!(get(&r, "/secure/ping"), Some("exact"));
    assert_eq!(get(&r, "/secure/pong"), Some("secure-prefix"));
    assert_eq!(get(&r, "/secure/"), Some("secure-prefix"));
    // "/secure/*" needs the slash: "/secure" falls to the root prefix.
    assert_eq!(get(&r, "/secure"), Some("root"));
    assert_eq!(get(&r, "/apix/y"), Some("api"));
    assert_eq!(get(&r, "/other"), Some("root"));
    assert_eq!(get(&r, "/secure/ping/more"), Some("secure-prefix"));
}

#[test]
fn no_match_without_catch_all() {
    let mut r = Router::new();
    r.add(&spec(&["/a", "/b/*"]), "ab").unwrap();
    assert_eq!(get(&r, "/a"), Some("ab"));
    assert_eq!(get(&r, "/b/c"), Some("ab"));
    assert_eq!(get(&r, "/a/"), None);
    assert_eq!(get(&r, "/c"), None);
    assert_eq!(get(&r, ""), None);
}

#[test]
fn longest_prefix_wins_over_priority() {
    let mut r = Router::new();
    let mut short = spec(&["/a/*"]);
    short.priority = 100;
    r.add(&short, "short").unwrap();
    r.add(&spec(&["/a/b/*"]), "long").unwrap();
    assert_eq!(get(&r, "/a/b/c"), Some("long"));
    assert_eq!(get(&r, "/a/c"), Some("short"));
}

#[test]
fn priority_then_order_within_a_path() {
    let mut r = Router::new();
    r.add(&spec(&["/p"]), "first").unwrap();
    r.add(&spec(&["/p"]), "second").unwrap();
    assert_eq!(get(&r, "/p"), Some("first"));
    let mut high = spec(&["/p"]);
    high.priority = 5;
    r.add(&high, "high").unwrap();
    assert_eq!(get(&r, "/p"), Some("high"));
}

#[test]
fn methods_filter_and_fall_through() {
    let mut r = Router::new();
    let mut post = spec(&["/x"]);
    post.methods = vec!["post".into()];
    r.add(&post, "post-only").unwrap();
    r.add(&spec(&["/*"]), "fallback").unwrap();
    assert_eq!(
        r.find(&Method::POST, None, "/x").copied(),
        Some("post-only")
    );
    // A method mismatch on the exact route falls through to the prefix.
    assert_eq!(r.find(&Method::GET, None, "/x").copied(), Some("fallback"));
}

#[test]
fn hosts_with_wildcards() {
    let mut r = Router::new();
    let mut wild = spec(&["/h"]);
    wild.hosts = vec!["*.Example.com".into()];
    r.add(&wild, "wild").unwrap();
    let mut exact = spec(&["/h"]);
    exact.hosts = vec!["example.com".into()];
    r.add(&exact, "bare").unwrap();
    let find = |host| r.find(&Method::GET, host, "/h").copied();
    assert_eq!(find(Some("api.example.com")), Some("wild"));
    assert_eq!(find(Some("a.b.example.com")), Some("wild"));
    assert_eq!(find(Some("example.com")), Some("bare"));
    assert_eq!(find(Some("badexample.com")), None);
    assert_eq!(find(None), None);
}

fn head(host: Option<&str>, path: &str) -> http::request::Parts {
    let mut builder = http::Request::get(path);
    if let Some(host) = host {
        builder = builder.header(http::header::HOST, host);
    }
    builder.body(()).unwrap().into_parts().0
}

#[test]
fn route_for_reads_the_host_once_a_route_filters_on_it() {
    let mut r = Router::new();
    r.add(&spec(&["/h"]), "any host").unwrap();
    // No route filters on hosts: whatever the Host says, the path decides.
    assert_eq!(
        r.route_for(&head(Some("Other.Test:8080"), "/h")),
        Some(&"any host")
    );
    assert_eq!(r.route_for(&head(None, "/h")), Some(&"any host"));

    let mut filtered = spec(&["/h"]);
    filtered.hosts = vec!["api.example.com".into()];
    filtered.priority = 1;
    r.add(&filtered, "api").unwrap();
    // The Host header, port removed and lower-cased, now picks the route.
    assert_eq!(
        r.route_for(&head(Some("API.example.com:8443"), "/h")),
        Some(&"api")
    );
    assert_eq!(
        r.route_for(&head(Some("other.test"), "/h")),
        Some(&"any host")
    );
    assert_eq!(r.route_for(&head(None, "/h")), Some(&"any host"));
    // An HTTP/2 request's authority stands in for the header.
    let h2 = http::Request::get("https://api.example.com/h")
        .body(())
        .unwrap();
    assert_eq!(r.route_for(&h2.into_parts().0), Some(&"api"));
}

#[test]
fn invalid_specs() {
    let mut r: Router<()> = Router::new();
    assert_eq!(r.add(&spec(&[]), ()), Err(RouteError::NoPath));
    assert!(matches!(
        r.add(&spec(&["nope"]), ()),
        Err(RouteError::BadPath(_))
    ));
    assert!(matches!(
        r.add(&spec(&["/a*b"]), ()),
        Err(RouteError::BadPath(_))
    ));
    let mut m = spec(&["/a"]);
    m.methods = vec!["FETCH".into()];
    assert!(matches!(r.add(&m, ()), Err(RouteError::BadMethod(_))));
    for bad in ["", "*", "a.*.com", "*example.com", "exa mple.com"] {
        let mut h = spec(&["/a"]);
        h.hosts = vec![bad.into()];
        assert!(
            matches!(r.add(&h, ()), Err(RouteError::BadHost(_))),
            "{bad:?}"
        );
    }
    assert!(r.is_empty());
}

#[test]
fn ten_thousand_routes() {
    let mut r = Router::new();
    for i in 0..10_000 {
        r.add(&spec(&[&format!("/svc{i}/ping")]), i).unwrap();
        r.add(&spec(&[&format!("/svc{i}/api/*")]), 100_000 + i)
            .unwrap();
    }
    assert_eq!(r.len(), 20_000);
    assert_eq!(r.find(&Method::GET, None, "/svc9999/ping"), Some(&9999));
    assert_eq!(r.find(&Method::GET, None, "/svc42/api/x/y"), Some(&100_042));
    assert_eq!(r.find(&Method::GET, None, "/svc42/nope"), None);
    // Distinct prefix lengths stay few, whatever the route count.
    assert!(r.prefix_lens.len() <= 5, "{:?}", r.prefix_lens);
}

#[test]
fn request_host_forms() {
    let parts = |uri: &str, host: Option<&str>| {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap().into_parts().0
    };
    assert_eq!(
        request_host(&parts("/", Some("API.example.com:8080"))).as_deref(),
        Some("api.example.com")
    );
    assert_eq!(
        request_host(&parts("/", Some("[::1]:80"))).as_deref(),
        Some("::1")
    );
    assert_eq!(
        request_host(&parts("http://h2.example/x", None)).as_deref(),
        Some("h2.example")
    );
    assert_eq!(request_host(&parts("/", None)).as_deref(), None);
}
