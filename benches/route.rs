//! The route matcher against route tables of growing size: the cost should
//! follow the path's segment count, not the number of routes.
//!
//!     cargo bench --bench route

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringway::config::{Action, Respond, Route};
use ringway::route::{Match, RouteTable};

fn route(i: usize, host: Option<String>, prefix: String, methods: Vec<String>) -> Route {
    Route {
        name: format!("r{i}"),
        host,
        prefix,
        methods,
        action: Action::Respond(Respond {
            status: 200,
            body: String::new(),
            content_type: String::new(),
        }),
        strip_prefix: false,
        set_host: None,
        timeout: None,
        max_body_bytes: None,
        underscores_in_headers: false,
        access_log: true,
        access_log_sample: 1.0,
        access_log_body: 0,
        access_log_headers: false,
        retry: None,
        retry_non_idempotent: false,
        rate_limit: ringway::config::RouteLimit::Inherit,
        policy: Default::default(),
        line: i,
    }
}

/// `n` routes over 10 hosts, a wildcard host and the catch-all, two to four segments deep.
fn table(n: usize) -> RouteTable {
    let mut routes: Vec<Route> = (0..n)
        .map(|i| {
            let host = (i % 3 != 0).then(|| format!("svc{}.example.com", i % 10));
            let prefix = match i % 3 {
                0 => format!("/api/v{}/res{i}", i % 4),
                1 => format!("/res{i}"),
                _ => format!("/api/res{i}/items"),
            };
            let methods = if i % 5 == 0 {
                vec!["GET".into(), "POST".into()]
            } else {
                Vec::new()
            };
            route(i, host, prefix, methods)
        })
        .collect();
    routes.push(route(
        n,
        Some("*.example.com".into()),
        "/static".into(),
        Vec::new(),
    ));
    routes.push(route(n + 1, None, "/".into(), Vec::new()));
    RouteTable::compile(&routes).0
}

fn find(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_find");
    for n in [10usize, 100, 1000, 10_000] {
        let t = table(n);
        let hit = format!("/api/res{}/items/42/details", (n / 2) / 3 * 3 + 2);
        let host = format!("svc{}.example.com", ((n / 2) / 3 * 3 + 2) % 10);
        assert!(matches!(t.find(&host, &hit, "GET"), Match::Route(_)));
        g.bench_with_input(BenchmarkId::new("deep_hit", n), &n, |b, _| {
            b.iter(|| black_box(t.find(black_box(&host), black_box(&hit), "GET")))
        });
        g.bench_with_input(BenchmarkId::new("fallback_to_root", n), &n, |b, _| {
            b.iter(|| {
                black_box(t.find(
                    black_box("other.org"),
                    black_box("/no/such/path/here"),
                    "GET",
                ))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, find);
criterion_main!(benches);
