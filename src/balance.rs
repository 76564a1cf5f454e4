//! How a shard chooses the endpoint of a request (`upstream.balance`).
//!
//! Each shard balances with what it alone sees: its own rotation, its own
//! random numbers, its own count of requests in flight per endpoint (the
//! connections its pool has in use). Nothing here is shared between
//! shards, so a pick costs no lock and no atomic. The price is that
//! `least-conn` and `p2c` are exact per shard, not over the whole proxy: a
//! shard does not know that another shard has ten requests waiting on an
//! endpoint. Spread over the shards by the kernel, traffic evens out; a
//! slow endpoint is still avoided, since every shard sees its own requests
//! pile up on it. Hashing needs no state at all: every shard, and every
//! ringway with the same endpoints, maps a key to the same endpoint.
//!
//! Which endpoints may be picked is the pool's to say (`usable`): not
//! ejected, not marked down by a health check, not already tried by this
//! request. Every strategy skips the others; a hash takes its next choice.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::hash::BuildHasher;
use std::net::IpAddr;

use crate::config::{Balance, Endpoint};

/// What a pick may depend on besides the endpoints' state: the client's
/// address, and for `hash-header:NAME` that header's value if the request
/// has one.
#[derive(Debug, Clone, Copy)]
pub struct PickKey<'a> {
    pub client: IpAddr,
    pub header: Option<&'a [u8]>,
}

/// One upstream's balancing on one shard: built with the pool, per config
/// generation; the rotation restarts on a reload.
pub struct Balancer {
    balance: Balance,
    /// The weighted rotation: endpoint indices, each `weight` times, spread
    /// out (smooth weighted round-robin). With equal weights it is
    /// `0, 1, .., n-1`, and a pick costs what plain round-robin does.
    cycle: Box<[u32]>,
    weights: Box<[u32]>,
    /// A hash of each endpoint's address, for rendezvous hashing: stable
    /// across shards, reloads and processes.
    ids: Box<[u64]>,
    /// Where the rotation goes on (an index into `cycle`); for least-conn,
    /// where the search for the least loaded starts, so ties take turns.
    next: Cell<usize>,
    rng: Cell<u64>,
}

impl Balancer {
    pub fn new(balance: &Balance, endpoints: &[Endpoint]) -> Balancer {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let seed = std::collections::hash_map::RandomState::new().hash_one(endpoints.len());
        let cycle = smooth_cycle(&weights);
        Balancer {
            balance: balance.clone(),
            // Each shard, and each generation, starts the rotation at its
            // own place: not every shard's first request to endpoint 0.
            next: Cell::new((seed % cycle.len() as u64) as usize),
            cycle: cycle.into(),
            ids: endpoints
                .iter()
                .map(|e| hash_bytes(e.addr.to_string().as_bytes()))
                .collect(),
            weights: weights.into(),
            rng: Cell::new(seed | 1),
        }
    }

    /// The header a `hash-header:NAME` upstream hashes (lower case).
    pub fn hash_header(&self) -> Option<&str> {
        match &self.balance {
            Balance::HashHeader(name) => Some(name),
            _ => None,
        }
    }

    /// The endpoint for a new request, among those `usable`; `load` is an
    /// endpoint's requests in flight on this shard. `None`: none is usable.
    pub fn pick(
        &self,
        key: &PickKey,
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        match self.balance {
            Balance::RoundRobin => self.in_turn(usable),
            Balance::LeastConn => self.least_loaded(usable, load),
            Balance::PowerOfTwo => self.two_choices(usable, load),
            Balance::HashClientIp => self.rendezvous(ip_hash(key.client), usable),
            Balance::HashHeader(_) => {
                let h = key.header.map_or_else(|| ip_hash(key.client), hash_bytes);
                self.rendezvous(h, usable)
            }
        }
    }

    /// The next endpoint of the weighted rotation that is `usable`: every
    /// round-robin pick, and where a retry goes whatever the balance (the
    /// key of a hash is not kept for it).
    pub fn in_turn(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.cycle.len();
        let mut pos = self.next.get();
        for _ in 0..n {
            let i = self.cycle[pos] as usize;
            // No division: this is every round-robin pick.
            pos = if pos + 1 == n { 0 } else { pos + 1 };
            if usable(i) {
                self.next.set(pos);
                return Some(i);
            }
        }
        None
    }

    /// The usable endpoint with the fewest in flight per unit of weight.
    /// The search starts at the next endpoint of the weighted rotation, so
    /// ties (an idle upstream: all at 0) go by weight, in turn.
    fn least_loaded(
        &self,
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let n = self.weights.len();
        let pos = self.next.get() % self.cycle.len();
        self.next.set((pos + 1) % self.cycle.len());
        let start = self.cycle[pos] as usize;
        let mut best: Option<(usize, usize)> = None;
        for step in 0..n {
            let i = (start + step) % n;
            if !usable(i) {
                continue;
            }
            let l = load(i);
            if best.is_none_or(|(b, bl)| self.lighter(i, l, b, bl)) {
                best = Some((i, l));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Power of two choices: two different endpoints drawn at random,
    /// each as likely as its weight; the one with fewer in flight per
    /// weight. Near least-conn's balance without looking at every endpoint,
    /// and no herd on the one that looks idle. A first draw that is not
    /// usable falls back to least-conn; a second one, to the first.
    fn two_choices(
        &self,
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let a = self.draw();
        if !usable(a) {
            return self.least_loaded(usable, load);
        }
        let Some(b) = self.draw_besides(a).filter(|&b| usable(b)) else {
            return Some(a);
        };
        let (la, lb) = (load(a), load(b));
        Some(if self.lighter(b, lb, a, la) { b } else { a })
    }

    /// Weighted rendezvous hashing: each endpoint scores the key, the
    /// highest usable score wins. Taking an endpoint away moves only the
    /// keys it had (to their second choice); adding one takes from each
    /// endpoint in proportion to weight.
    fn rendezvous(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        rendezvous(key, &self.ids, &self.weights, usable)
    }

    /// Whether `a` with `la` in flight is less loaded than `b` with `lb`,
    /// per unit of weight: `la / wa < lb / wb`, without dividing.
    fn lighter(&self, a: usize, la: usize, b: usize, lb: usize) -> bool {
        let (wa, wb) = (self.weights[a] as usize, self.weights[b] as usize);
        la * wb < lb * wa
    }

    /// An endpoint at random, each as likely as its weight.
    fn draw(&self) -> usize {
        self.cycle[self.random_position()] as usize
    }

    /// An endpoint other than `a` at random: from a random place in the
    /// rotation, the first that is not `a` (`None` if there is no other).
    fn draw_besides(&self, a: usize) -> Option<usize> {
        let n = self.cycle.len();
        let start = self.random_position();
        (0..n)
            .map(|k| self.cycle[(start + k) % n] as usize)
            .find(|&i| i != a)
    }

    /// A random index into the rotation.
    fn random_position(&self) -> usize {
        // xorshift64*: a few instructions, and this shard's alone.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (((r >> 32) * self.cycle.len() as u64) >> 32) as usize
    }
}

/// The endpoint a key maps to by weighted rendezvous hashing, among those
/// `usable`: score `weight / -ln(u)`, `u` the key and the endpoint's id
/// hashed together into (0, 1). Each endpoint wins a share of the keys in
/// proportion to its weight.
pub fn rendezvous(
    key: u64,
    ids: &[u64],
    weights: &[u32],
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (&id, &w)) in ids.iter().zip(weights).enumerate() {
        if !usable(i) {
            continue;
        }
        let h = mix(key ^ id);
        // 53 bits, strictly between 0 and 1.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(w) / -u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// The smooth weighted round-robin sequence (nginx's): each endpoint
/// appears `weight` times, and the heavy ones are spread out instead of
/// coming in a row. `[1, 3]` gives `1, 0, 1, 1`.
fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    // Weights 2 and 4 are 1 and 2: a shorter cycle, the same shares.
    let gcd = weights.iter().fold(0, |a, &w| gcd(a, w)).max(1);
    let weights: Vec<u32> = weights.iter().map(|&w| w / gcd).collect();
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(&weights) {
            *c += i64::from(w);
        }
        // The first of the highest, so equal weights give 0, 1, .., n-1.
        let mut top = 0;
        for i in 1..current.len() {
            if current[i] > current[top] {
                top = i;
            }
        }
        current[top] -= total;
        cycle.push(top as u32);
    }
    cycle
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// FNV-1a, then a mixer: a hash that is the same in every process.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

/// splitmix64's finaliser: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Endpoint {
                addr: format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                weight,
            })
            .collect()
    }

    fn key(i: u32) -> PickKey<'static> {
        PickKey {
            client: IpAddr::from(i.to_be_bytes()),
            header: None,
        }
    }

    #[test]
    fn equal_weights_rotate_in_order() {
        assert_eq!(smooth_cycle(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(smooth_cycle(&[1, 3]), [1, 0, 1, 1]);
        assert_eq!(smooth_cycle(&[5, 5]), [0, 1]);
        assert_eq!(smooth_cycle(&[2, 6]), [1, 0, 1, 1]);
        let b = Balancer::new(&Balance::RoundRobin, &endpoints(&[1, 1, 1]));
        let picks: Vec<_> = (0..6).map(|i| b.pick(&key(i), |_| true, |_| 0)).collect();
        let first = picks[0].unwrap();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(|i| Some((first + i) % 3)));
        b.next.set(0);
        // An endpoint that cannot be picked is skipped; none at all: None.
        assert_eq!(b.pick(&key(0), |i| i != 0, |_| 0), Some(1));
        assert_eq!(b.pick(&key(0), |_| false, |_| 0), None);
    }

    #[test]
    fn weights_split_the_rotation() {
        let b = Balancer::new(&Balance::RoundRobin, &endpoints(&[1, 3, 6]));
        let mut count = [0; 3];
        for i in 0..1000 {
            count[b.pick(&key(i), |_| true, |_| 0).unwrap()] += 1;
        }
        assert_eq!(count, [100, 300, 600]);
    }

    #[test]
    fn least_conn_takes_the_least_loaded_per_weight() {
        let b = Balancer::new(&Balance::LeastConn, &endpoints(&[1, 1, 2]));
        let load = [3, 1, 3];
        // 3/2 per weight on the third is above 1/1 on the second.
        assert_eq!(b.pick(&key(0), |_| true, |i| load[i]), Some(1));
        assert_eq!(b.pick(&key(0), |i| i != 1, |i| load[i]), Some(2));
        // Ties go by weight, in turn.
        let mut count = [0; 3];
        for _ in 0..400 {
            count[b.pick(&key(0), |_| true, |_| 0).unwrap()] += 1;
        }
        assert_eq!(count, [100, 100, 200]);
    }

    #[test]
    fn two_choices_never_take_the_busier_of_two() {
        let b = Balancer::new(&Balance::PowerOfTwo, &endpoints(&[1, 1]));
        let load = [5, 0];
        for _ in 0..100 {
            assert_eq!(b.pick(&key(0), |_| true, |i| load[i]), Some(1));
        }
        // Over many endpoints the busiest is never picked, the idle often.
        let b = Balancer::new(&Balance::PowerOfTwo, &endpoints(&[1; 8]));
        let mut count = [0; 8];
        for _ in 0..8000 {
            count[b.pick(&key(0), |_| true, |i| i).unwrap()] += 1;
        }
        assert_eq!(count[7], 0);
        assert!(count[0] > count[6] * 3, "{count:?}");
    }

    #[test]
    fn removing_one_of_four_moves_only_its_quarter() {
        let eps = endpoints(&[1, 1, 1, 1]);
        let all = Balancer::new(&Balance::HashClientIp, &eps);
        let three = Balancer::new(&Balance::HashClientIp, &eps[..3]);
        let mut moved = 0;
        let mut share = [0; 4];
        for i in 0..10_000 {
            let before = all.pick(&key(i), |_| true, |_| 0).unwrap();
            let after = three.pick(&key(i), |_| true, |_| 0).unwrap();
            share[before] += 1;
            if before != after {
                // Only the removed endpoint's keys move.
                assert_eq!(before, 3);
                moved += 1;
            }
        }
        assert!((2_200..=2_800).contains(&moved), "{moved} of 10000 moved");
        for s in share {
            assert!((2_200..=2_800).contains(&s), "{share:?}");
        }
        // Marking it down instead moves the same keys: each to its next choice.
        for i in 0..10_000 {
            let down = all.pick(&key(i), |e| e != 3, |_| 0);
            assert_eq!(down, three.pick(&key(i), |_| true, |_| 0));
        }
    }

    #[test]
    fn weighted_hashing_follows_weights() {
        let b = Balancer::new(&Balance::HashHeader("x-user".into()), &endpoints(&[1, 3]));
        let mut count = [0; 2];
        for i in 0..10_000u32 {
            let v = format!("user-{i}");
            let k = PickKey {
                client: IpAddr::from([127, 0, 0, 1]),
                header: Some(v.as_bytes()),
            };
            count[b.pick(&k, |_| true, |_| 0).unwrap()] += 1;
        }
        assert!((2_200..=2_800).contains(&count[0]), "{count:?}");
        // The same value, the same endpoint, every time.
        let k = PickKey {
            client: IpAddr::from([10, 1, 1, 1]),
            header: Some(b"alice"),
        };
        let first = b.pick(&k, |_| true, |_| 0);
        assert!((0..100).all(|_| b.pick(&k, |_| true, |_| 0) == first));
    }
}
