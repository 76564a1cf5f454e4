//! Rate limits, decided on the shard with no lock and no atomic per
//! request.
//!
//! Every limit is a GCRA (the generic cell rate algorithm, a token bucket
//! kept as one number): a bucket is the "theoretical arrival time" `tat`
//! of its next token, in ns; a request at `now` passes if `tat` is at most
//! `(burst - 1)` emission intervals ahead of `now`, and moves `tat` one
//! interval on. Over a long enough time a limit admits `rate × time +
//! burst`.
//!
//! - **Per client**: buckets in the shard's own `Table`, keyed by the
//!   client's address (or a header's value). With `server.steer =
//!   "client-ip"` every connection of one address reaches the same shard
//!   (see `steer`), so the one bucket there is the client's whole limit.
//!   With the kernel's hash, an address's connections spread evenly, and
//!   each shard enforces `rate / shards` and `burst / shards`: exact when
//!   its requests spread evenly, stricter when they do not. A header's
//!   value, or an address taken from `X-Forwarded-For`, may come to any
//!   shard in any share: one shard owns its bucket, and the others lease
//!   tokens from it (see `lease`), so the limit holds whole.
//! - **Global** (the whole proxy, or all of a route's traffic): one
//!   `Shared` bucket for every shard, an atomic `tat`. A shard leases a
//!   batch of tokens at once (`Lease`), so the atomic is touched once per
//!   batch, not per request; the batch is at most 1% of a second's worth
//!   per shard, and a lease not used within `LEASE_TTL` lapses.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::config::Rate;
use crate::lease::{self, Key, MAX_KEY, Mesh, Msg, Remote, Remotes, Taken};

/// Which limit turned a request away (the `X-RateLimit-Scope` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Client,
    Route,
    Global,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Route => "route",
            Scope::Global => "global",
        }
    }
}

/// A request turned away: what the 429 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    /// The bucket's size (`burst`).
    pub limit: u32,
    /// Whole seconds until a request would pass, at least 1.
    pub retry_after: u32,
    /// Seconds the bucket takes to fill from empty (for the draft headers).
    pub window: u32,
}

/// ns since the process's first use of a limiter: one time base for every
/// shard, so a shared bucket means the same on each.
pub fn nanos(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // An instant before the epoch (a request older than the first
    // limiter) counts as the epoch.
    at.saturating_duration_since(epoch).as_nanos() as u64 + 1
}

/// A limit's interval and tolerance, in ns.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    interval: u64,
    tolerance: u64,
    limit: u32,
    window: u32,
}

impl Gcra {
    /// `rate` and `burst` shared out over `parts` shards.
    pub fn new(r: Rate, parts: u32) -> Gcra {
        let parts = parts.max(1);
        let burst = (r.burst / parts).max(1);
        let interval = ((1e9 * f64::from(parts) / r.rate) as u64).max(1);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst - 1)),
            limit: r.burst,
            window: (f64::from(r.burst) / r.rate).ceil().max(1.0) as u32,
        }
    }

    /// One token from the bucket `tat` at `now`: the tokens left, or the ns
    /// to wait.
    pub fn take(&self, tat: &mut u64, now: u64) -> Result<u32, u64> {
        let t = (*tat).max(now);
        let ahead = t - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        *tat = t.saturating_add(self.interval);
        Ok(((self.tolerance - ahead) / self.interval) as u32)
    }

    fn limited(&self, scope: Scope, wait: u64) -> Limited {
        Limited {
            scope,
            limit: self.limit,
            retry_after: wait.div_ceil(1_000_000_000).clamp(1, u64::from(u32::MAX)) as u32,
            window: self.window,
        }
    }
}

/// A bucket every shard draws on: the whole proxy's, or a route's.
pub struct Shared {
    /// Who it is for, to carry it across a reload: "global", "route:NAME".
    pub name: String,
    pub rate: Rate,
    gcra: Gcra,
    tat: AtomicU64,
    /// Tokens a shard takes at once.
    batch: u64,
}

/// A lease not used up within this lapses (its tokens are lost, so a lease
/// can only make the limit stricter, never looser).
const LEASE_TTL: u64 = 50_000_000;

impl Shared {
    pub fn new(name: String, rate: Rate, shards: usize) -> Shared {
        let gcra = Gcra::new(rate, 1);
        let per_shard = rate.rate / 100.0 / shards.max(1) as f64;
        let batch = (per_shard as u64).clamp(
            1,
            u64::from(rate.burst)
                .div_ceil(2 * shards.max(1) as u64)
                .max(1),
        );
        Shared {
            name,
            rate,
            gcra,
            tat: AtomicU64::new(0),
            batch,
        }
    }

    /// Up to `batch` tokens, or the ns to wait.
    fn lease(&self, now: u64) -> Result<u64, u64> {
        let g = &self.gcra;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let t = tat.max(now);
            let ahead = t - now;
            if ahead > g.tolerance {
                return Err(ahead - g.tolerance);
            }
            // Never past the burst: the tokens this one may take.
            let n = self.batch.min(1 + (g.tolerance - ahead) / g.interval);
            match self.tat.compare_exchange_weak(
                tat,
                t.saturating_add(n.saturating_mul(g.interval)),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(n),
                Err(now_tat) => tat = now_tat,
            }
        }
    }
}

/// A shard's tokens from one `Shared` bucket.
#[derive(Default)]
struct Lease {
    tokens: Cell<u64>,
    until: Cell<u64>,
}

/// What a route is limited by, compiled from the config.
#[derive(Clone, Default)]
pub struct Policy {
    /// The per-client limit and the id of its buckets (the route's name
    /// for a route's own, 0 for `[rate_limit]`'s).
    pub per_client: Option<(u64, Rate)>,
    pub route: Option<Arc<Shared>>,
    pub global: Option<Arc<Shared>>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.per_client.is_none() && self.route.is_none() && self.global.is_none()
    }
}

/// One bucket of the per-client table.
#[derive(Clone, Copy)]
struct Bucket {
    tat: u64,
    seen: u64,
    hits: u64,
}

/// How a per-client key's requests reach the shards, which decides how
/// its limit is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// All to this shard (an address, with client-ip steering): its bucket
    /// here is the whole limit.
    Pinned,
    /// To any shard, evenly (an address, with the kernel's hash): each
    /// shard keeps `rate / shards` and `burst / shards` of it.
    Even,
    /// To any shard, in any share (a header's value, an address from
    /// `X-Forwarded-For`): one shard owns the bucket, the others lease
    /// tokens from it (see `lease`).
    Owned,
}

/// What a request that did not pass at once is told.
pub enum Verdict {
    Limited(Limited),
    /// Its key's owner was asked for tokens: `Limiter::settle` waits for
    /// the answer.
    Wait(Ticket),
}

/// A request waiting on its key's owner.
pub struct Ticket {
    remote: Rc<Remote>,
    rate: Rate,
    owner: usize,
}

/// Which per-client token a request took, to give back if a shared bucket
/// then refuses it.
enum Spent {
    Nothing,
    /// From this shard's table, under this limit.
    Here(Gcra),
    Lease(Rc<Remote>),
}

/// The most times a request waiting for a lease asks again (its tokens
/// went to others) before its shard decides alone.
const MAX_ROUNDS: usize = 4;

/// A shard's rate-limit state: per-client buckets and global leases.
pub struct Limiter {
    table: RefCell<AHashMap<Box<[u8]>, Bucket>>,
    max_entries: Cell<usize>,
    idle: Cell<u64>,
    leases: RefCell<AHashMap<usize, Lease>>,
    /// This shard, how many there are, and the queues to the others.
    me: usize,
    shards: usize,
    mesh: Option<Arc<Mesh>>,
    /// Leases on keys other shards own.
    remotes: Remotes,
    /// Requests turned away, by scope (client, route, global).
    pub rejected: [Cell<u64>; 3],
    pub evicted: Cell<u64>,
    /// Requests of an owned key decided by this shard alone, with its
    /// share of the limit: the owner's queue was full or it did not answer.
    pub decided_alone: Cell<u64>,
    /// When a full table was last swept of idle buckets (ns): at most once
    /// a second, so a stream of new keys into a full table costs a sample,
    /// not a pass over the table, per key.
    full_sweep: Cell<u64>,
}

impl Limiter {
    /// A limiter for shard `me` of `mesh`'s (or the only one, without).
    pub fn new(max_entries: usize, idle: Duration, me: usize, mesh: Option<Arc<Mesh>>) -> Limiter {
        Limiter {
            table: RefCell::new(AHashMap::with_capacity(1024.min(max_entries))),
            max_entries: Cell::new(max_entries),
            idle: Cell::new(idle.as_nanos() as u64),
            leases: RefCell::new(AHashMap::new()),
            me,
            shards: mesh.as_ref().map_or(1, |m| m.shards()),
            mesh,
            remotes: Remotes::default(),
            rejected: Default::default(),
            evicted: Cell::new(0),
            decided_alone: Cell::new(0),
            full_sweep: Cell::new(0),
        }
    }

    /// After a reload: the table's bounds may have changed; its buckets stay.
    pub fn set_bounds(&self, max_entries: usize, idle: Duration) {
        self.max_entries.set(max_entries);
        self.idle.set(idle.as_nanos() as u64);
    }

    /// Whether a request may pass `policy`. `client` is the key (an
    /// address's octets or a header's value); `spread` says how its
    /// requests reach the shards. `Verdict::Wait`: ask `settle`.
    pub fn check(
        &self,
        policy: &Policy,
        client: &[u8],
        spread: Spread,
        now: u64,
    ) -> Result<(), Verdict> {
        let mut buf = [0u8; MAX_KEY];
        let key = match policy.per_client {
            Some((id, _)) => bucket_key(id, client, &mut buf),
            None => &[],
        };
        let mut spent = Spent::Nothing;
        if let Some((_, rate)) = policy.per_client {
            let owner = match spread {
                Spread::Owned if self.shards > 1 => lease::owner(key, self.shards),
                _ => self.me,
            };
            if owner == self.me {
                let parts = if spread == Spread::Even {
                    self.shards
                } else {
                    1
                };
                let g = Gcra::new(rate, parts as u32);
                self.take_here(key, g, now).map_err(Verdict::Limited)?;
                spent = Spent::Here(g);
            } else {
                let remote = self
                    .remotes
                    .get(key, self.max_entries.get(), self.idle.get(), now);
                let Some(remote) = remote else {
                    let g = self.alone(key, rate, now).map_err(Verdict::Limited)?;
                    return self
                        .draw_after(policy, now, key, Spent::Here(g))
                        .map_err(Verdict::Limited);
                };
                match remote.take(now) {
                    Taken::Yes => spent = Spent::Lease(remote),
                    Taken::No(wait) => {
                        let limited = Gcra::new(rate, 1).limited(Scope::Client, wait);
                        return Err(Verdict::Limited(self.reject(limited)));
                    }
                    Taken::Ask { asking } => {
                        if asking || self.ask(owner, rate, &remote, now) {
                            return Err(Verdict::Wait(Ticket {
                                remote,
                                rate,
                                owner,
                            }));
                        }
                        let g = self.alone(key, rate, now).map_err(Verdict::Limited)?;
                        spent = Spent::Here(g);
                    }
                }
            }
        }
        self.draw_after(policy, now, key, spent)
            .map_err(Verdict::Limited)
    }

    /// Waits for the owner's answer to a request's ask, then decides it:
    /// a token of the new lease, a refusal until the owner's bucket has
    /// one, or, if the owner does not answer in time, this shard's own
    /// decision with its share of the limit.
    pub async fn settle(&self, ticket: Ticket, policy: &Policy) -> Result<(), Limited> {
        let Ticket {
            remote,
            rate,
            owner,
        } = ticket;
        // However the rounds go, a request waits at most this long.
        let give_up = nanos(Instant::now()) + 2 * lease::ASK_TIMEOUT;
        for _ in 0..MAX_ROUNDS {
            let asked_at = remote.asked_at();
            if asked_at != 0 {
                remote.answered(asked_at).await;
            }
            let now = nanos(Instant::now());
            if now >= give_up {
                break;
            }
            match remote.take(now) {
                // The key is for a token of this shard's table; none here.
                Taken::Yes => return self.draw_after(policy, now, &[], Spent::Lease(remote)),
                Taken::No(wait) => {
                    let limited = Gcra::new(rate, 1).limited(Scope::Client, wait);
                    return Err(self.reject(limited));
                }
                Taken::Ask { asking: true } => {}
                // Unanswered in time: the owner is stuck or gone.
                Taken::Ask { asking: false } if asked_at != 0 && remote.asked_at() == asked_at => {
                    break;
                }
                // Others spent the tokens first.
                Taken::Ask { asking: false } => {
                    if !self.ask(owner, rate, &remote, now) {
                        break;
                    }
                }
            }
        }
        let now = nanos(Instant::now());
        let g = self.alone(&remote.key, rate, now)?;
        self.draw_after(policy, now, &remote.key, Spent::Here(g))
    }

    /// The owner's side of an ask: up to `want` tokens of `key`'s bucket,
    /// or the ns until it has one.
    pub fn grant(&self, key: &[u8], rate: Rate, want: u32, now: u64) -> (u32, u64) {
        let g = Gcra::new(rate, 1);
        self.with_bucket(key, now, |b| {
            let mut tokens = 0;
            while tokens < want {
                match g.take(&mut b.tat, now) {
                    Ok(_) => tokens += 1,
                    Err(wait) => {
                        b.hits += u64::from(tokens);
                        return (tokens, wait);
                    }
                }
            }
            b.hits += u64::from(tokens);
            (tokens, 0)
        })
    }

    /// An owner's answer, for the lease on `key`.
    pub fn granted(&self, key: &[u8], tokens: u32, wait: u64, now: u64) {
        if let Some(r) = self.remotes.find(key) {
            r.granted(tokens, wait, now);
        }
    }

    /// Asks `owner` for tokens; `false` if its queue is full.
    fn ask(&self, owner: usize, rate: Rate, remote: &Remote, now: u64) -> bool {
        let Some(mesh) = &self.mesh else {
            return false;
        };
        let msg = Msg::Ask {
            key: Key::new(&remote.key),
            rate,
            want: lease::want(rate, self.shards),
        };
        if !mesh.send(self.me, owner, msg) {
            return false;
        }
        remote.asking(now);
        true
    }

    /// Decides a request of a key owned elsewhere with this shard's share
    /// of its limit, kept in this shard's table.
    fn alone(&self, key: &[u8], rate: Rate, now: u64) -> Result<Gcra, Limited> {
        self.decided_alone.set(self.decided_alone.get() + 1);
        let g = Gcra::new(rate, self.shards as u32);
        self.take_here(key, g, now).map(|()| g)
    }

    /// One token of `key`'s bucket in this shard's table.
    fn take_here(&self, key: &[u8], g: Gcra, now: u64) -> Result<(), Limited> {
        let taken = self.with_bucket(key, now, |b| {
            b.hits += 1;
            g.take(&mut b.tat, now)
        });
        match taken {
            Ok(_) => Ok(()),
            Err(wait) => Err(self.reject(g.limited(Scope::Client, wait))),
        }
    }

    /// Runs `f` on `key`'s bucket, made (room made for it) if new.
    fn with_bucket<T>(&self, key: &[u8], now: u64, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut table = self.table.borrow_mut();
        if let Some(b) = table.get_mut(key) {
            b.seen = now;
            return f(b);
        }
        if table.len() >= self.max_entries.get() {
            self.make_room(&mut table, now);
        }
        let mut b = Bucket {
            tat: 0,
            seen: now,
            hits: 0,
        };
        let out = f(&mut b);
        table.insert(key.into(), b);
        out
    }

    /// A token from each shared bucket of `policy`: the route's, then the
    /// global one.
    fn draw_all(&self, policy: &Policy, now: u64) -> Result<(), Limited> {
        if let Some(s) = &policy.route
            && let Err(wait) = self.draw(s, now)
        {
            return Err(self.reject(s.gcra.limited(Scope::Route, wait)));
        }
        if let Some(s) = &policy.global
            && let Err(wait) = self.draw(s, now)
        {
            // The route's token goes back: a refused request takes none.
            if let Some(route) = &policy.route {
                self.undraw(route);
            }
            return Err(self.reject(s.gcra.limited(Scope::Global, wait)));
        }
        Ok(())
    }

    /// The shared buckets after the per-client one, whose token (`spent`,
    /// of `key`) goes back if they refuse the request.
    fn draw_after(
        &self,
        policy: &Policy,
        now: u64,
        key: &[u8],
        spent: Spent,
    ) -> Result<(), Limited> {
        let drawn = self.draw_all(policy, now);
        if drawn.is_err() {
            match spent {
                Spent::Nothing => {}
                Spent::Here(g) => {
                    if let Some(b) = self.table.borrow_mut().get_mut(key) {
                        b.tat = b.tat.saturating_sub(g.interval);
                    }
                }
                Spent::Lease(remote) => remote.give_back(),
            }
        }
        drawn
    }

    /// A token of this shard's lease on `s` goes back, unspent.
    fn undraw(&self, s: &Arc<Shared>) {
        if let Some(lease) = self.leases.borrow().get(&(Arc::as_ptr(s) as usize)) {
            lease.tokens.set(lease.tokens.get() + 1);
        }
    }

    fn reject(&self, l: Limited) -> Limited {
        let c = &self.rejected[l.scope as usize];
        c.set(c.get() + 1);
        l
    }

    /// One token from a shared bucket, through this shard's lease.
    fn draw(&self, s: &Arc<Shared>, now: u64) -> Result<(), u64> {
        let mut leases = self.leases.borrow_mut();
        let lease = leases.entry(Arc::as_ptr(s) as usize).or_default();
        if lease.tokens.get() == 0 || lease.until.get() < now {
            lease.tokens.set(s.lease(now)?);
            lease.until.set(now + LEASE_TTL);
        }
        lease.tokens.set(lease.tokens.get() - 1);
        Ok(())
    }

    /// The table is full: drop the idle buckets, or else the least recently
    /// seen of a sample of 32 (as Redis does), so it never grows past its
    /// bound.
    fn make_room(&self, table: &mut AHashMap<Box<[u8]>, Bucket>, now: u64) {
        let before = table.len();
        let idle = self.idle.get();
        if now.saturating_sub(self.full_sweep.get()) >= 1_000_000_000 {
            self.full_sweep.set(now);
            table.retain(|_, b| now.saturating_sub(b.seen) < idle);
        }
        if table.len() >= self.max_entries.get() {
            let oldest = table
                .iter()
                .take(32)
                .min_by_key(|(_, b)| b.seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                table.remove(&k);
            }
        }
        self.evicted
            .set(self.evicted.get() + (before - table.len()) as u64);
    }

    /// Once a second: buckets idle for `idle_eviction` go; so do leases of
    /// shared buckets no longer in the config.
    pub fn sweep(&self, now: u64) {
        let idle = self.idle.get();
        let mut table = self.table.borrow_mut();
        let before = table.len();
        table.retain(|_, b| now.saturating_sub(b.seen) < idle);
        self.evicted
            .set(self.evicted.get() + (before - table.len()) as u64);
        self.leases.borrow_mut().retain(|_, l| l.until.get() >= now);
        self.remotes.sweep(idle, now);
    }

    pub fn entries(&self) -> usize {
        self.table.borrow().len()
    }

    /// The `n` keys with the most requests, most first: (bucket id, key,
    /// requests). A heap of `n`, not a copy of the table.
    pub fn top(&self, n: usize) -> Vec<(u64, Vec<u8>, u64)> {
        let table = self.table.borrow();
        let mut heap = BinaryHeap::with_capacity(n + 1);
        for (k, b) in table.iter() {
            heap.push(Reverse((b.hits, k)));
            if heap.len() > n {
                heap.pop();
            }
        }
        let mut top: Vec<_> = heap
            .into_iter()
            .map(|Reverse((hits, k))| {
                let id = u64::from_le_bytes(k[..8].try_into().unwrap_or_default());
                (id, k[8..].to_vec(), hits)
            })
            .collect();
        top.sort_by_key(|t| Reverse(t.2));
        top
    }
}

/// A per-client bucket's key: its id, then the client's key, cut to fit.
fn bucket_key<'a>(id: u64, client: &[u8], buf: &'a mut [u8; MAX_KEY]) -> &'a [u8] {
    buf[..8].copy_from_slice(&id.to_le_bytes());
    let len = 8 + client.len().min(MAX_KEY - 8);
    buf[8..len].copy_from_slice(&client[..len - 8]);
    &buf[..len]
}

/// The id of a route's own per-client buckets: its name's hash, so they
/// survive a reload that keeps the name.
pub fn bucket_id(route: &str) -> u64 {
    // Fixed keys: the same name gives the same id in every shard.
    ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(route) | 1
}

/// The octets of an address, as a table key.
pub fn ip_key(ip: IpAddr, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => {
            buf.copy_from_slice(&v6.octets());
            &buf[..]
        }
    }
}

/// The client an `X-Forwarded-For` value names, read from the right: the
/// first address that is not one of the trusted proxies. An entry that is
/// not a bare address ends the search (`None`: the peer is the client), as
/// what lies left of it was not written by a proxy we trust.
pub fn forwarded_client(value: &str, trusted: &[crate::config::Cidr]) -> Option<IpAddr> {
    for entry in value.rsplit(',') {
        let ip = entry.trim().parse::<IpAddr>().ok()?;
        if !trusted.iter().any(|c| c.contains(ip)) {
            return Some(ip);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn gcra_admits_rate_times_time_plus_burst() {
        let g = Gcra::new(
            Rate {
                rate: 10.0,
                burst: 5,
            },
            1,
        );
        let mut tat = 0;
        let mut passed = 0;
        // 1,000 requests a second for 3 s.
        for i in 0..3000u64 {
            if g.take(&mut tat, SEC + i * SEC / 1000).is_ok() {
                passed += 1;
            }
        }
        assert_eq!(passed, 5 + 30 - 1, "burst, then one per 100 ms");
        let end = SEC + 3 * SEC;
        while g.take(&mut tat, end).is_ok() {}
        let wait = g.take(&mut tat, end).unwrap_err();
        assert!(wait <= SEC / 10, "{wait}");
        let l = g.limited(Scope::Client, wait);
        assert_eq!((l.retry_after, l.limit, l.window), (1, 5, 1));
    }

    #[test]
    fn a_request_a_later_limit_refuses_takes_no_earlier_token() {
        let rate = |rate, burst| Rate { rate, burst };
        let global = Arc::new(Shared::new("global".into(), rate(1.0, 1), 1));
        let route = Arc::new(Shared::new("route:r".into(), rate(1000.0, 1000), 1));
        let policy = Policy {
            per_client: Some((0, rate(1.0, 3))),
            route: Some(route),
            global: Some(global),
        };
        let l = Limiter::new(10, Duration::from_secs(60), 0, None);
        // The global bucket passes one request, then refuses 20: none of
        // them may take a token of the client's or the route's.
        assert!(l.check(&policy, b"c", Spread::Pinned, SEC).is_ok());
        for i in 1..=20 {
            let refused = l.check(&policy, b"c", Spread::Pinned, SEC + i);
            assert!(matches!(refused, Err(Verdict::Limited(x)) if x.scope == Scope::Global));
        }
        // The client's bucket still holds its other 2.
        let without_global = Policy {
            global: None,
            ..policy.clone()
        };
        let now = SEC + 21;
        assert!(l.check(&without_global, b"c", Spread::Pinned, now).is_ok());
        assert!(l.check(&without_global, b"c", Spread::Pinned, now).is_ok());
        let third = l.check(&without_global, b"c", Spread::Pinned, now);
        assert!(matches!(third, Err(Verdict::Limited(x)) if x.scope == Scope::Client));
    }

    #[test]
    fn a_shared_limit_holds_across_shards() {
        let shared = Arc::new(Shared::new(
            "global".into(),
            Rate {
                rate: 1000.0,
                burst: 100,
            },
            2,
        ));
        let shards = [
            Limiter::new(10, Duration::from_secs(60), 0, None),
            Limiter::new(10, Duration::from_secs(60), 0, None),
        ];
        let policy = Policy {
            global: Some(shared),
            ..Policy::default()
        };
        let mut passed = 0;
        // Each shard 10,000 requests a second for 2 s.
        for i in 0..20_000u64 {
            let now = SEC + i * SEC / 10_000;
            for s in &shards {
                if s.check(&policy, b"", Spread::Pinned, now).is_ok() {
                    passed += 1;
                }
            }
        }
        let expected = 1000 * 2 + 100;
        assert!(
            (passed as f64 - expected as f64).abs() / (expected as f64) < 0.05,
            "{passed} of {expected}"
        );
    }

    #[test]
    fn the_table_stays_within_its_bound() {
        let l = Limiter::new(100, Duration::from_secs(60), 0, None);
        let policy = Policy {
            per_client: Some((
                0,
                Rate {
                    rate: 1.0,
                    burst: 1,
                },
            )),
            ..Policy::default()
        };
        for i in 0..1000u32 {
            let _ = l.check(
                &policy,
                &i.to_le_bytes(),
                Spread::Pinned,
                SEC + u64::from(i),
            );
        }
        assert!(l.entries() <= 100);
        assert_eq!(l.evicted.get(), 900);
        // A second request of the newest key is refused: its bucket is kept.
        assert!(
            l.check(&policy, &999u32.to_le_bytes(), Spread::Pinned, SEC + 1000)
                .is_err()
        );
        l.sweep(SEC + 61 * SEC);
        assert_eq!(l.entries(), 0);
        let top = l.top(3);
        assert!(top.is_empty());
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_past_trusted_proxies() {
        let trusted = [crate::config::Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = forwarded_client("203.0.113.9, 198.51.100.2, 10.1.2.3", &trusted);
        assert_eq!(ip, Some("198.51.100.2".parse().unwrap()));
        assert_eq!(forwarded_client("10.0.0.1", &trusted), None);
        // Past an entry that is not an address, the client wrote it.
        assert_eq!(
            forwarded_client("6.6.6.6, unknown, 10.1.2.3", &trusted),
            None
        );
    }
}
