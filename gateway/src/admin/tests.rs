use serde_json::json;

use super::*;

fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().uri(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).unwrap().into_parts().0
}

#[test]
fn the_key_comes_from_header_query_or_cookie() {
    let p = parts("/apisix/admin/routes", &[("X-API-KEY", "h")]);
    assert_eq!(presented_key(&p).as_deref(), Some("h"));
    let p = parts("/apisix/admin/routes?api_key=q", &[]);
    assert_eq!(presented_key(&p).as_deref(), Some("q"));
    let p = parts("/apisix/admin/routes", &[("cookie", "a=1; X-API-KEY=c")]);
    assert_eq!(presented_key(&p).as_deref(), Some("c"));
    let p = parts("/apisix/admin/routes", &[("cookie", "a=1")]);
    assert_eq!(presented_key(&p), None);
}

#[test]
fn digests_compare_equal_only_when_equal() {
    let a = digest(b"edd1c9f034335f136f87ad84b625c8f1");
    assert!(constant_time_eq(
        &a,
        &digest(b"edd1c9f034335f136f87ad84b625c8f1")
    ));
    assert!(!constant_time_eq(
        &a,
        &digest(b"edd1c9f034335f136f87ad84b625c8f2")
    ));
    assert!(!constant_time_eq(&a, &digest(b"")));
}

#[test]
fn list_filters_as_apisix() {
    let route = json!({"name": "ping-route", "uris": ["/secure/ping"], "labels": {"env": "prod"}});
    assert!(filters_match(
        &route,
        Some("ping"),
        Some("/secure"),
        Some("env:prod")
    ));
    assert!(filters_match(&route, None, None, Some("env")));
    assert!(!filters_match(&route, Some("pong"), None, None));
    assert!(!filters_match(&route, None, Some("/other"), None));
    assert!(!filters_match(&route, None, None, Some("env:dev")));
}

#[test]
fn ids_in_bodies_must_agree_with_the_url() {
    let mut body = json!({"uri": "/x"});
    assert!(bind_id(Kind::Route, "1", &mut body).is_ok());
    assert_eq!(body["id"], "1");
    let mut body = json!({"id": 2, "uri": "/x"});
    let (status, msg) = bind_id(Kind::Route, "1", &mut body).unwrap_err();
    assert_eq!(
        (status, msg),
        (
            StatusCode::BAD_REQUEST,
            json!({"error_msg": "wrong route id"})
        )
    );
    let mut body = json!({"username": "jim"});
    let (_, msg) = bind_id(Kind::Consumer, "jack", &mut body).unwrap_err();
    assert_eq!(msg, json!({"error_msg": "wrong username"}));
    let mut body = json!({});
    let (_, msg) = bind_id(Kind::Route, "../x", &mut body).unwrap_err();
    assert!(
        msg["error_msg"]
            .as_str()
            .unwrap()
            .starts_with("invalid configuration: id: ")
    );
}

/// The heap trim after Admin API writes: a burst of writes makes one trim, a second
/// after the first of them; a write after it has started makes the next one.
#[tokio::test(start_paused = true)]
async fn a_burst_of_writes_makes_one_heap_trim() {
    use std::sync::atomic::AtomicUsize;
    static PENDING: AtomicBool = AtomicBool::new(false);
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    fn count() {
        RUNS.fetch_add(1, Ordering::SeqCst);
    }
    // The run is on a blocking thread, outside the paused clock: waited for in real time.
    async fn runs_reach(n: usize) {
        for _ in 0..1000 {
            if RUNS.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("{n} runs expected, {} seen", RUNS.load(Ordering::SeqCst));
    }
    let delay = Duration::from_secs(1);

    for _ in 0..5 {
        schedule_once(&PENDING, delay, count);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 0, "ran before its delay");
    tokio::time::sleep(Duration::from_millis(100)).await;
    runs_reach(1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        1,
        "one burst ran more than once"
    );

    schedule_once(&PENDING, delay, count);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    runs_reach(2).await;
}
