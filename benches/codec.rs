//! The request path's pure work: parse a request head and write its
//! rewrite for the upstream; parse a response head and write it back; and
//! what a route's policies (request ID, CORS, two header rules) add to both.
//!
//!     cargo bench --bench codec

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringway::http1::encode::{
    Forward, Reply, request_fields, request_head, response_fields, response_head,
};
use ringway::http1::parse::{EMPTY_HEADER, HeadLimits, parse_request, parse_response};
use ringway::policy::{RoutePolicy, Tags, Vars};

const SMALL: &[u8] = b"GET /api/items?id=7 HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n";

/// A browser-like head: 14 headers, cookies, ~900 bytes.
const BROWSER: &[u8] = b"GET /api/v2/users/12345/orders?page=3&sort=desc HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://shop.example.com/account/orders\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; cart=3; _ga=GA1.2.1234567890.1700000000\r\n\
Connection: keep-alive\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
Cache-Control: max-age=0\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\
Cache-Control: no-store\r\nDate: Sun, 22 Nov 2026 09:00:00 GMT\r\nServer: origin\r\nConnection: keep-alive\r\n\r\n";

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8192,
    max_header_bytes: 16384,
};

fn parse_and_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_head");
    for (name, raw) in [("small", SMALL), ("browser", BROWSER)] {
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| {
                let mut headers = [EMPTY_HEADER; 100];
                let req = parse_request(black_box(raw), &mut headers, LIMITS)
                    .unwrap()
                    .unwrap();
                black_box(req.head_len);
            })
        });
        let mut out = Vec::with_capacity(4096);
        g.bench_function(format!("parse+rewrite/{name}"), |b| {
            b.iter(|| {
                let mut headers = [EMPTY_HEADER; 100];
                let req = parse_request(black_box(raw), &mut headers, LIMITS)
                    .unwrap()
                    .unwrap();
                out.clear();
                let fwd = Forward {
                    client_ip: "10.1.2.3".parse().unwrap(),
                    target_lead: "",
                    target: req.target,
                    set_host: None,
                    fallback_host: "127.0.0.1:9000",
                    underscores: false,
                    https: false,
                    client_cert: None,
                };
                request_head(&mut out, &req, &fwd);
                black_box(out.len());
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("response_head");
    g.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    let mut out = Vec::with_capacity(4096);
    g.bench_function("parse+rewrite", |b| {
        b.iter(|| {
            let mut headers = [EMPTY_HEADER; 100];
            let resp = parse_response(black_box(RESPONSE), &mut headers, false, 16384)
                .unwrap()
                .unwrap();
            out.clear();
            let reply = Reply {
                close: false,
                keep_alive_1_0: false,
                dechunk: false,
                date: b"Mon, 23 Nov 2026 12:00:00 GMT",
            };
            response_head(&mut out, &resp, reply);
            black_box(out.len());
        })
    });
    g.finish();
}

/// A browser's API call from another origin.
const CROSS_ORIGIN: &[u8] =
    b"GET /api/items?id=7 HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: curl/8.5\r\n\
Accept: */*\r\nOrigin: https://app.example.com\r\nCookie: s=1\r\n\r\n";

/// The policies measured: a request ID, CORS, and two header rules (one
/// request field set from a template, one removed).
fn policies() -> RoutePolicy {
    let text = "[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\
        [[route]]\nname = \"api\"\nprefix = \"/\"\nrespond = { status = 200 }\n\
        request_id = true\n\
        cors = { origins = [\"https://app.example.com\"], credentials = true, expose = [\"X-Total\"] }\n\
        request_headers = { set = { X-Client = \"${client_ip}\" }, remove = [\"Cookie\"] }\n";
    let config = ringway::Config::parse(std::path::Path::new("bench.toml"), text).unwrap();
    config.routes[0].policy.clone()
}

/// The same request and response, through a route without policies and
/// one with them: the difference is what the policies cost.
fn with_policies(c: &mut Criterion) {
    let policy = policies();
    let none = RoutePolicy::default();
    let client_ip = "10.1.2.3".parse().unwrap();
    let mut g = c.benchmark_group("policies");
    let mut out = Vec::with_capacity(4096);
    for (name, policy) in [("none", &none), ("id+cors+2rules", &policy)] {
        g.bench_function(format!("request/{name}"), |b| {
            b.iter(|| {
                let mut headers = [EMPTY_HEADER; 100];
                let req = parse_request(black_box(CROSS_ORIGIN), &mut headers, LIMITS)
                    .unwrap()
                    .unwrap();
                let mut tags = Tags::new(client_ip);
                policy.tag(req.headers, &mut tags);
                out.clear();
                let fwd = Forward {
                    client_ip,
                    target_lead: "",
                    target: req.target,
                    set_host: None,
                    fallback_host: "127.0.0.1:9000",
                    underscores: false,
                    https: false,
                    client_cert: None,
                };
                request_fields(&mut out, &req, &fwd, policy.request_drops());
                if !policy.is_empty() {
                    let vars = Vars {
                        client_ip,
                        request_id: tags.request_id().unwrap_or_default(),
                        host: req.host,
                        path: req.path,
                        query: "",
                    };
                    policy.request_lines(&mut out, &tags, &vars);
                }
                out.extend_from_slice(b"\r\n");
                black_box((out.len(), tags));
            })
        });
        let mut headers = [EMPTY_HEADER; 100];
        let req = parse_request(CROSS_ORIGIN, &mut headers, LIMITS)
            .unwrap()
            .unwrap();
        let mut tags = Tags::new(client_ip);
        policy.tag(req.headers, &mut tags);
        g.bench_function(format!("response/{name}"), |b| {
            b.iter(|| {
                let mut headers = [EMPTY_HEADER; 100];
                let resp = parse_response(black_box(RESPONSE), &mut headers, false, 16384)
                    .unwrap()
                    .unwrap();
                out.clear();
                let reply = Reply {
                    close: false,
                    keep_alive_1_0: false,
                    dechunk: false,
                    date: b"Mon, 23 Nov 2026 12:00:00 GMT",
                };
                if policy.touches_response() {
                    response_fields(&mut out, &resp, reply, policy.response_drops());
                    policy.response_lines(&mut out, &tags);
                    out.extend_from_slice(b"\r\n");
                } else {
                    response_head(&mut out, &resp, reply);
                }
                black_box(out.len());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse_and_rewrite, with_policies);
criterion_main!(benches);
