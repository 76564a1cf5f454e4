//! What a shard owns, below the code that serves connections: `shard`
//! starts tasks over it, `conn` and `proxy` read and count through it, and
//! none of it is seen by another thread.
//!
//! A `Generation` is one loaded config as this shard runs it: the compiled
//! snapshot and the upstream pools built for it. A reload makes a new one;
//! what must outlive a reload moves across in `Generation::new` (today the
//! endpoints of upstreams, with their open and idle connections, failure
//! counts, ejections and health).

use std::cell::{Cell, RefCell};
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Instant, SystemTime};

use monoio::io::{CancelHandle, Canceller};

use crate::accesslog::ShardLog;
use crate::date::HttpDate;
use crate::health::EndpointHealth;
use crate::lease::Mesh;
use crate::metrics::{self, HandshakeOutcome, Record, RouteMetrics, UNROUTED};
use crate::ratelimit::Limiter;
use crate::slab::Slab;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamPool;

/// One loaded config and this shard's pools for it.
pub struct Generation {
    pub snapshot: Arc<Snapshot>,
    /// Counted from 0, the config the shard started with.
    pub number: u64,
    /// Indexed like the snapshot's upstreams.
    pub pools: Vec<UpstreamPool>,
    /// Indexed like the snapshot's routes, then one for requests no route
    /// matched.
    pub route_metrics: Vec<Rc<RouteMetrics>>,
}

impl Generation {
    /// Pools for `snapshot`. An upstream of `previous` with the same name
    /// hands over its endpoints that stay, connections and counts and all;
    /// endpoints and upstreams that are gone close their idle connections
    /// when the last request of `previous` lets go of them.
    pub fn new(snapshot: Arc<Snapshot>, number: u64, previous: Option<&Generation>) -> Generation {
        let pools = snapshot
            .config
            .upstreams
            .iter()
            .map(|cfg| {
                let old =
                    previous.and_then(|p| p.pools.iter().find(|pool| pool.name() == cfg.name));
                UpstreamPool::new(cfg, old, snapshot.config.workers())
            })
            .collect();
        let names = snapshot.config.routes.iter().map(|r| r.name.as_str());
        let route_metrics = names
            .chain([UNROUTED])
            .map(|name| {
                let old = previous.and_then(|p| p.route_metrics.iter().find(|m| m.name == name));
                old.cloned()
                    .unwrap_or_else(|| Rc::new(RouteMetrics::new(name)))
            })
            .collect();
        Generation {
            snapshot,
            number,
            pools,
            route_metrics,
        }
    }

    /// Health checks' verdicts (see `health`): an endpoint marked down is
    /// picked by no pool of this generation or an older one (they share it).
    pub fn set_health(&self, verdicts: &[EndpointHealth]) {
        for v in verdicts {
            if let Some(pool) = self.pools.iter().find(|p| p.name() == v.upstream) {
                pool.set_health(v.addr, v.healthy);
            }
        }
    }

    /// Counts a request that has ended.
    pub fn record(&self, r: &Record) {
        let total_us = r.started.elapsed().as_micros() as u64;
        let route = r.route.unwrap_or(self.route_metrics.len() - 1);
        self.route_metrics[route].record(r, total_us);
        if let Some(u) = r.upstream {
            self.pools[u].metrics.record(r, total_us);
        }
    }
}

impl Deref for Generation {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// Everything a shard owns; shared by its tasks through an `Rc`.
pub struct ShardState {
    pub id: usize,
    /// The config in force with this shard's pools. A reload replaces it;
    /// requests in flight keep the generation they started with. The `Rc`
    /// makes a request's reference a plain increment instead of an atomic
    /// one on a cache line every shard shares.
    current: RefCell<Rc<Generation>>,
    pub slab: Rc<Slab>,
    /// Small buffers for error responses when `slab` has none to give.
    pub replies: Rc<Slab>,
    /// The `Date` header value, current to the second.
    pub date: HttpDate,
    /// Exchanges given up because the client closed before the response.
    pub client_aborts: Cell<u64>,
    /// Requests read whole (heads parsed), answered or proxied.
    pub requests: Cell<u64>,
    /// Client connections accepted.
    pub accepted: Cell<u64>,
    /// TLS handshakes by how they ended, indexed by `HandshakeOutcome`.
    pub tls_handshakes: [Cell<u64>; HandshakeOutcome::COUNT],
    /// The event loop: "io_uring (Coop)", "epoll".
    pub driver: String,
    /// This shard's side of the access log, if there is one.
    pub log: Option<ShardLog>,
    pub limiter: Limiter,
    /// Every connection of one client address comes to one shard (see
    /// `control::steer`): a per-client limit by address is exact here.
    pub steered: bool,
    pub shards: u32,
    conns: Cell<usize>,
    /// Cancel the waits for a next request that hold a read buffer, in two
    /// generations: each second the older one is cancelled, which demotes
    /// connections quiet for one to two seconds (see `conn`).
    waiting: RefCell<[Canceller; 2]>,
    waiting_now: Cell<usize>,
    /// Waits begun on each of `waiting` (or, for a while, on the canceller
    /// it replaced) that have not ended: a generation with none is not
    /// cancelled, as `Canceller::cancel` allocates its successor.
    waiting_open: [Cell<usize>; 2],
    /// Cancel the waits of demoted connections, bucketed by the second
    /// their limit ends (`QUIET_BUCKETS` seconds round): a wheel of timers
    /// that costs a quiet connection no timer of its own.
    quiet: RefCell<Vec<Canceller>>,
    /// As `waiting_open`, for each bucket of `quiet`.
    quiet_open: Box<[Cell<usize>]>,
    /// Seconds are counted from here for `quiet`.
    epoch: Instant,
    /// The last second whose quiet bucket was cancelled.
    expired: Cell<u64>,
    pub(crate) draining: Cell<bool>,
    pub(crate) drained: Cell<Option<Waker>>,
}

impl ShardState {
    pub fn new(
        id: usize,
        driver: String,
        snapshot: Arc<Snapshot>,
        log: Option<ShardLog>,
        steered: bool,
        mesh: Option<Arc<Mesh>>,
    ) -> ShardState {
        let limits = snapshot.config.limits;
        let rl = &snapshot.config.rate_limit;
        let shards = snapshot.config.workers() as u32;
        let limiter = Limiter::new(rl.max_entries, rl.idle_eviction, id, mesh);
        ShardState {
            id,
            current: RefCell::new(Rc::new(Generation::new(snapshot, 0, None))),
            slab: Slab::new(limits.buffer_size.get(), limits.max_buffer_bytes.get()),
            replies: Slab::new(REPLY_BUFFER, REPLY_BUFFER * REPLY_BUFFERS),
            date: HttpDate::new(SystemTime::now()),
            client_aborts: Cell::new(0),
            requests: Cell::new(0),
            accepted: Cell::new(0),
            tls_handshakes: Default::default(),
            driver,
            log,
            limiter,
            steered,
            shards,
            conns: Cell::new(0),
            waiting: RefCell::new([Canceller::new(), Canceller::new()]),
            waiting_now: Cell::new(0),
            waiting_open: [Cell::new(0), Cell::new(0)],
            quiet: RefCell::new((0..QUIET_BUCKETS).map(|_| Canceller::new()).collect()),
            quiet_open: (0..QUIET_BUCKETS).map(|_| Cell::new(0)).collect(),
            epoch: Instant::now(),
            expired: Cell::new(0),
            draining: Cell::new(false),
            drained: Cell::new(None),
        }
    }

    /// The generation new requests use.
    pub fn current(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }

    /// Puts a reloaded config in force: new requests use it, requests in
    /// flight finish on theirs.
    pub fn reload(&self, snapshot: Arc<Snapshot>, number: u64) {
        let rl = &snapshot.config.rate_limit;
        self.limiter.set_bounds(rl.max_entries, rl.idle_eviction);
        let next = Generation::new(snapshot, number, Some(&self.current.borrow()));
        *self.current.borrow_mut() = Rc::new(next);
    }

    /// For a wait for a next request: the handle to pass to the read, and
    /// a guard to hold until the read has ended.
    pub fn waiting_handle(&self) -> (CancelHandle, OpenWait<'_>) {
        let now = self.waiting_now.get();
        let handle = self.waiting.borrow()[now].handle();
        (handle, OpenWait::new(&self.waiting_open[now]))
    }

    /// For a quiet connection whose wait ends at `until`: cancelled in the
    /// first housekeeping tick at or after `until` (or, for a limit more than
    /// `QUIET_BUCKETS` seconds away, earlier: the wait then starts again).
    /// The guard is held until the read has ended, as for `waiting_handle`.
    pub fn quiet_handle(&self, until: Instant) -> (CancelHandle, OpenWait<'_>) {
        let second = until
            .saturating_duration_since(self.epoch)
            .as_secs_f64()
            .ceil() as u64;
        let bucket = second as usize % QUIET_BUCKETS;
        let handle = self.quiet.borrow()[bucket].handle();
        (handle, OpenWait::new(&self.quiet_open[bucket]))
    }

    /// Cancels the waits for a next request that began before the last
    /// tick: such a connection gives its buffer back and goes on as an
    /// `IdleConn`. Waits begun since are left for the next tick. With no
    /// such wait open (a busy connection's waits end within the second)
    /// nothing is cancelled, and nothing allocated.
    pub(crate) fn demote_waiting(&self) {
        let older = self.waiting_now.get() ^ 1;
        if self.waiting_open[older].get() > 0 {
            let mut waiting = self.waiting.borrow_mut();
            cancel(&mut waiting[older]);
        }
        self.waiting_now.set(older);
    }

    /// Cancels the quiet waits whose limit has passed.
    pub(crate) fn expire_quiet(&self, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let from = (self.expired.get() + 1).max(second.saturating_sub(QUIET_BUCKETS as u64 - 1));
        let mut quiet = self.quiet.borrow_mut();
        for s in from..=second {
            let bucket = s as usize % QUIET_BUCKETS;
            if self.quiet_open[bucket].get() > 0 {
                cancel(&mut quiet[bucket]);
            }
        }
        self.expired.set(second);
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    pub fn conns(&self) -> usize {
        self.conns.get()
    }

    /// Stops every wait for a next request, busy and quiet: on a drain,
    /// idle keep-alive connections close.
    pub(crate) fn cancel_waits(&self) {
        let waits = self
            .waiting
            .borrow_mut()
            .iter_mut()
            .map(std::mem::take)
            .collect::<Vec<_>>();
        let quiet = self
            .quiet
            .borrow_mut()
            .iter_mut()
            .map(std::mem::take)
            .collect::<Vec<_>>();
        for waits in waits.into_iter().chain(quiet) {
            waits.cancel();
        }
    }

    /// Counts a TLS handshake that has ended (or was refused).
    pub fn handshake_ended(&self, outcome: HandshakeOutcome) {
        metrics::bump(&self.tls_handshakes[outcome.index()]);
    }

    pub(crate) fn conn_opened(&self) {
        self.conns.set(self.conns.get() + 1);
    }

    pub(crate) fn conn_closed(&self) {
        self.conns.set(self.conns.get() - 1);
        if self.conns.get() == 0
            && let Some(w) = self.drained.take()
        {
            w.wake();
        }
    }
}

/// Cancels the waits on `canceller` and puts its successor in its place.
/// This allocates (the placeholder and the successor): callers do it only
/// when a wait is open, so a tick with nothing to cancel allocates nothing.
fn cancel(canceller: &mut Canceller) {
    *canceller = std::mem::take(canceller).cancel();
}

/// An open wait on one of the shard's cancellers: counted while held.
pub struct OpenWait<'a>(&'a Cell<usize>);

impl<'a> OpenWait<'a> {
    fn new(open: &'a Cell<usize>) -> OpenWait<'a> {
        open.set(open.get() + 1);
        OpenWait(open)
    }
}

impl Drop for OpenWait<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// How many seconds the wheel of quiet-connection limits spans.
const QUIET_BUCKETS: usize = 64;

/// An error response is at most this long (the longest 405 `Allow` list
/// included); that many of them can be in flight when the slab is exhausted.
const REPLY_BUFFER: usize = 1024;
const REPLY_BUFFERS: usize = 64;

/// The TLS handshakes in flight on one listener of a shard, which its
/// `max_handshakes` bounds: each listener has its own (see `shard`).
#[derive(Default)]
pub struct Handshakes(Cell<usize>);

impl Handshakes {
    /// A place for one more handshake in flight, if fewer than `max` are;
    /// given back when the guard drops.
    pub fn slot(&self, max: usize) -> Option<HandshakeSlot<'_>> {
        let n = self.0.get();
        (n < max).then(|| {
            self.0.set(n + 1);
            HandshakeSlot(&self.0)
        })
    }
}

/// One handshake in flight (see `Handshakes::slot`).
pub struct HandshakeSlot<'a>(&'a Cell<usize>);

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_slot_is_given_back_when_its_guard_drops() {
        let (a, b) = (Handshakes::default(), Handshakes::default());
        let first = a.slot(1).expect("a place");
        assert!(a.slot(1).is_none(), "at max");
        assert!(b.slot(1).is_some(), "another listener counts apart");
        drop(first);
        assert!(a.slot(1).is_some(), "given back");
    }
}
