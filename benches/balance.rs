//! The cost of picking an endpoint, per balance, over 2 and 16 endpoints,
//! against the round-robin loop that came before balancing (a copy of it
//! here, `before`): the default must stay as cheap.
//!
//!     cargo bench --bench balance

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringway::balance::PickKey;
use ringway::upstream::UpstreamPool;

fn pool(n: usize, balance: &str) -> UpstreamPool {
    let endpoints: Vec<String> = (0..n).map(|i| format!("\"10.0.0.{}:80\"", i + 1)).collect();
    let text = format!(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"u\"\nendpoints = [{}]\nbalance = \"{balance}\"\n",
        endpoints.join(", ")
    );
    let cfg = ringway::Config::parse(Path::new("bench.toml"), &text).unwrap();
    UpstreamPool::new(&cfg.upstreams[0], None, 1)
}

/// The round-robin of `UpstreamPool::pick_besides` before balancing: the
/// next endpoint not ejected, behind an `Rc` per endpoint as in the pool.
struct Before {
    endpoints: Vec<Rc<BeforeEndpoint>>,
    next: Cell<usize>,
}

struct BeforeEndpoint {
    _idle: RefCell<Vec<u64>>,
    _open: Cell<usize>,
    ejected_until: Cell<Option<Instant>>,
}

impl Before {
    fn pick(&self) -> Option<usize> {
        let n = self.endpoints.len();
        let mut now = None;
        for step in 0..n {
            let i = (self.next.get() + step) % n;
            if let Some(until) = self.endpoints[i].ejected_until.get()
                && *now.get_or_insert_with(Instant::now) < until
            {
                continue;
            }
            self.next.set((i + 1) % n);
            return Some(i);
        }
        None
    }
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    let header = b"user-12345".as_slice();
    let key = PickKey {
        client: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        header: Some(header),
    };
    for n in [2usize, 16] {
        let before = Before {
            endpoints: (0..n)
                .map(|_| {
                    Rc::new(BeforeEndpoint {
                        _idle: RefCell::new(Vec::new()),
                        _open: Cell::new(0),
                        ejected_until: Cell::new(None),
                    })
                })
                .collect(),
            next: Cell::new(0),
        };
        g.bench_with_input(BenchmarkId::new("round-robin-before", n), &n, |b, _| {
            b.iter(|| black_box(before.pick()))
        });
        for balance in [
            "round-robin",
            "least-conn",
            "p2c",
            "hash-client-ip",
            "hash-header:X-User",
        ] {
            let p = pool(n, balance);
            g.bench_with_input(BenchmarkId::new(balance, n), &n, |b, _| {
                b.iter(|| black_box(p.pick(black_box(&key))))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
