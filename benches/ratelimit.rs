//! The rate limiter's decision: a request of a key already in the table, of
//! a new key, and of a new key into a full table (an eviction), and a draw
//! on a shared (global) bucket. Allocations are counted by a global
//! allocator wrapped around the system one.
//!
//!     cargo bench --bench ratelimit
//!
//! Under `cargo test` it only checks, briefly, that a hit allocates nothing.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use ringway::config::Rate;
use ringway::lease::{self, Mesh};
use ringway::ratelimit::{Limiter, Policy, Shared, Spread, nanos};

mod counting;
use counting::ALLOCS;

const RATE: Rate = Rate {
    rate: 1e6,
    burst: 1000,
};

fn per_client() -> Policy {
    Policy {
        per_client: Some((0, RATE)),
        ..Policy::default()
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let policy = per_client();
    let limiter = Limiter::new(100_000, Duration::from_secs(60), 0, None);
    let key = [203u8, 0, 113, 7];
    let now = nanos(Instant::now());
    let _ = limiter.check(&policy, &key, Spread::Pinned, now);
    let before = ALLOCS.load(Ordering::Relaxed);
    for i in 0..10_000 {
        let _ = limiter.check(&policy, &key, Spread::Pinned, now + i * 1000);
    }
    let hits = ALLOCS.load(Ordering::Relaxed) - before;
    println!("hit on a key in the table: {hits} allocations in 10,000 decisions");
    assert_eq!(hits, 0, "a hit allocates");
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("ratelimit");
    g.throughput(Throughput::Elements(1));
    let mut t = now;
    g.bench_function("hit", |b| {
        b.iter(|| {
            t += 1000;
            black_box(limiter.check(&policy, black_box(&key), Spread::Pinned, t))
        })
    });
    let fresh = Limiter::new(usize::MAX, Duration::from_secs(60), 0, None);
    let mut n = 0u64;
    g.bench_function("new_key", |b| {
        b.iter(|| {
            n += 1;
            black_box(fresh.check(&policy, &n.to_le_bytes(), Spread::Pinned, t))
        })
    });
    let full = Limiter::new(10_000, Duration::from_secs(3600), 0, None);
    for i in 0..10_000u64 {
        let _ = full.check(&policy, &i.to_le_bytes(), Spread::Pinned, t);
    }
    g.bench_function("new_key_evicting", |b| {
        b.iter(|| {
            n += 1;
            t += 1;
            black_box(full.check(&policy, &n.to_le_bytes(), Spread::Pinned, t))
        })
    });
    let global = Policy {
        global: Some(Arc::new(Shared::new("global".into(), RATE, 2))),
        ..Policy::default()
    };
    g.bench_function("global_draw", |b| {
        b.iter(|| {
            t += 1000;
            black_box(limiter.check(&global, &key, Spread::Pinned, t))
        })
    });
    // A key another shard owns, on a lease that has tokens: what a request
    // on a shard that does not own its key costs while its lease lasts.
    let leasing = Limiter::new(100_000, Duration::from_secs(60), 0, Some(Mesh::new(2)));
    let remote = (0u64..)
        .map(|i| i.to_le_bytes())
        .find(|k| {
            let mut full = [0u8; 16];
            full[8..].copy_from_slice(k);
            lease::owner(&full, 2) == 1
        })
        .unwrap();
    let mut bucket = [0u8; 16];
    bucket[8..].copy_from_slice(&remote);
    assert!(
        leasing.check(&policy, &remote, Spread::Owned, t).is_err(),
        "asks first"
    );
    g.bench_function("lease_hit", |b| {
        b.iter(|| {
            t += 1000;
            // Refilled as the owner would, outside what is timed but cheap.
            leasing.granted(&bucket, 1, 0, t);
            black_box(leasing.check(&policy, black_box(&remote), Spread::Owned, t))
        })
    });
    g.finish();
    c.final_summary();
}
