//! The access log's shard-side work: one line formatted, one line logged
//! into a `ShardLog` (its buffers going round a writer to /dev/null), and a
//! captured body redacted. Every one of them into a reused buffer, counted
//! by a global allocator wrapped around the system one.
//!
//!     cargo bench --bench accesslog
//!
//! Under `cargo test` it only checks, briefly, that none of them allocates.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use criterion::{Criterion, Throughput};
use ringway::accesslog::{Entry, LogWriter, format_line};
use ringway::redact::Redactor;

mod counting;
use counting::ALLOCS;

fn entry(seq: u64) -> Entry<'static> {
    Entry {
        unix_ms: 1_795_435_200_000 + seq,
        request_id: Some(b"01JD8X3Q4M2V7K9T5R6P0N1B2C"),
        client: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        method: b"GET",
        path: b"/api/v2/users/12345/orders?page=3&sort=desc",
        route: Some("api"),
        upstream: Some("10.0.0.2:8080".parse().unwrap()),
        status: 200,
        bytes_in: 912,
        bytes_out: 18_734,
        total_us: 1_482,
        upstream_us: Some(1_210),
        retries: 0,
        captured: None,
    }
}

const BODY: &[u8] = br#"{"user":{"name":"ann","email":"ann@example.com","password":"hunter2"},"items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}],"access_token":"eyJhbGciOiJIUzI1NiJ9.e30.x","note":"leave at the door"}"#;

/// Heap allocations made by `n` calls of `f`, after `n` to warm up.
fn allocs(n: u64, mut f: impl FnMut(u64)) -> u64 {
    (0..n).for_each(&mut f);
    let a0 = ALLOCS.load(Ordering::Relaxed);
    (n..2 * n).for_each(f);
    ALLOCS.load(Ordering::Relaxed) - a0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let writer = LogWriter::start(PathBuf::from("/dev/null")).unwrap();
    let log = writer.shard();
    let redactor = Redactor::default();
    let mut line = Vec::with_capacity(1024);
    let mut body = Vec::with_capacity(1024);

    // 20,000 lines are some 90 buffers handed to the writer and back.
    let n = 20_000;
    let formatted = allocs(n, |i| {
        line.clear();
        format_line(&mut line, &entry(i));
    });
    let logged = allocs(n, |i| log.log(&entry(i)));
    let redacted = allocs(n, |_| {
        body.clear();
        redactor.redact_json(BODY, &mut body);
    });
    assert_eq!(
        (formatted, logged, redacted),
        (0, 0, 0),
        "allocations in {n} lines formatted, logged, bodies redacted"
    );
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("accesslog");
    g.throughput(Throughput::Elements(1));
    g.bench_function("format_line", |b| {
        b.iter(|| {
            line.clear();
            format_line(&mut line, black_box(&entry(7)));
        })
    });
    g.bench_function("shard_log", |b| b.iter(|| log.log(black_box(&entry(7)))));
    g.throughput(Throughput::Bytes(BODY.len() as u64));
    g.bench_function("redact_json", |b| {
        b.iter(|| {
            body.clear();
            redactor.redact_json(black_box(BODY), &mut body);
        })
    });
    g.finish();
    drop(log);
    writer.stop();
    c.final_summary();
}
