//! Route matching at 10 and 10 000 routes (exact and prefix), hits and misses.
//!
//! `cargo bench -p keygate-bench --bench router`

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: a failed setup should stop it loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use keygate_gateway::router::{MatchSpec, Router};

fn router(n: usize) -> Router<usize> {
    let mut r = Router::new();
    for i in 0..n {
        // Half exact paths, half prefixes; some with methods and hosts.
        let path = if i % 2 == 0 {
            format!("/api/v1/items{i}")
        } else {
            format!("/svc{i}/*")
        };
        let spec = MatchSpec {
            paths: vec![path],
            methods: if i % 3 == 0 {
                vec!["GET".into(), "POST".into()]
            } else {
                Vec::new()
            },
            hosts: if i % 5 == 0 {
                vec!["*.example.com".into()]
            } else {
                Vec::new()
            },
            priority: 0,
        };
        r.add(&spec, i).unwrap();
    }
    r
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in [10usize, 10_000] {
        let r = router(n);
        let mid = n / 2;
        let exact = format!("/api/v1/items{}", mid & !1);
        let prefix = format!("/svc{}/a/b/c", mid | 1);
        let host = Some("api.example.com");
        group.bench_function(format!("exact/{n}"), |b| {
            b.iter(|| black_box(r.find(&Method::GET, host, black_box(&exact))))
        });
        group.bench_function(format!("prefix/{n}"), |b| {
            b.iter(|| black_box(r.find(&Method::GET, host, black_box(&prefix))))
        });
        group.bench_function(format!("miss/{n}"), |b| {
            b.iter(|| black_box(r.find(&Method::GET, host, black_box("/nothing/here"))))
        });
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
