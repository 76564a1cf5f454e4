//! Upstream connections of one shard: a pool per endpoint with a LIFO idle
//! list, a cap on open connections (a request waits a bounded time for a
//! slot), idle timeout, lifetime and request limits. `balance` picks the
//! endpoint among those neither ejected (passive outlier detection, here)
//! nor marked down by a health check (`health`, through the shard's
//! mailbox); `max_concurrent` caps the requests in flight.
//!
//! Lifecycle of a connection: `checkout` (reuse an idle one that is still
//! open, or connect) → one exchange → `checkin` (back to the idle list if
//! it may carry another request) or `discard`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::balance::{Balancer, PickKey};
use crate::config::{Timeouts, Upstream};
use crate::error::UpstreamError;
use crate::io::{Peeked, peek};
use crate::metrics::{UpstreamMetrics, bump};
use crate::retry::Budget;
use crate::stream::{Reader, Writer};

pub struct UpstreamConn {
    pub r: Reader,
    pub w: Writer,
    fd: RawFd,
    endpoint: usize,
    created: Instant,
    requests: u64,
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

struct Endpoint {
    addr: SocketAddr,
    /// Most recently used last: reuse pops from the end.
    idle: RefCell<Vec<Idle>>,
    /// Open connections, idle ones included.
    open: Cell<usize>,
    /// The most connections in use at once, this window and the last
    /// (`PEAK_WINDOW`): the idle list keeps what steady traffic needs.
    peak: Cell<usize>,
    last_peak: Cell<usize>,
    waiters: RefCell<VecDeque<(u64, Waker)>>,
    /// Failures in a row (connect errors, resets, 5xx), for ejection.
    failures: Cell<u32>,
    /// Left out of the rotation until then.
    ejected_until: Cell<Option<Instant>>,
    /// Ejections in a row: each lasts twice the one before.
    ejections: Cell<u32>,
    /// What the last health check said (`health`); true until one says
    /// otherwise, and always without health checks.
    healthy: Cell<bool>,
}

impl Endpoint {
    fn busy(&self) -> usize {
        self.open.get() - self.idle.borrow().len()
    }
}

pub struct UpstreamPool {
    cfg: Upstream,
    /// Kept across reloads with the upstream's name.
    pub metrics: Rc<UpstreamMetrics>,
    /// This shard's count of retries against `cfg.retry_budget`, kept
    /// across reloads with the upstream's name.
    pub budget: Rc<Budget>,
    /// Shared with the pools of other generations of the same upstream
    /// that have the same endpoint: its connections outlive a reload.
    endpoints: Vec<Rc<Endpoint>>,
    balancer: Balancer,
    /// Requests in flight to the upstream on this shard, kept across
    /// reloads with the upstream's name (a request holds it in the pool it
    /// started with), and this shard's share of `max_concurrent`.
    active: Rc<Cell<u32>>,
    active_cap: Option<u32>,
    next_waiter: Cell<u64>,
    /// When a failed TLS handshake was last logged: once per
    /// `TLS_LOG_EVERY`, not once per request.
    tls_logged: Cell<Option<Instant>>,
}

/// How often a pool says why its TLS handshakes fail.
const TLS_LOG_EVERY: Duration = Duration::from_secs(10);

/// A request's place under `max_concurrent`, given back when it ends.
pub struct Admission<'a>(&'a Cell<u32>);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl UpstreamPool {
    /// A pool for `cfg`; the endpoints it shares with `previous` (the same
    /// upstream in the config before a reload) are taken over as they are,
    /// open and idle connections included. `shards`: how many share
    /// `max_concurrent`.
    pub fn new(cfg: &Upstream, previous: Option<&UpstreamPool>, shards: usize) -> UpstreamPool {
        UpstreamPool {
            metrics: previous.map_or_else(
                || Rc::new(UpstreamMetrics::new(&cfg.name)),
                |p| p.metrics.clone(),
            ),
            budget: previous.map_or_else(Default::default, |p| p.budget.clone()),
            endpoints: cfg
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let addr = e.addr;
                    // Pooled connections speak what the upstream spoke: an
                    // endpoint it would now connect to otherwise (TLS or
                    // not, the CA certificates, the name verified) starts
                    // afresh.
                    let kept = previous.and_then(|p| {
                        let j = p.endpoints.iter().position(|e| e.addr == addr)?;
                        let alike = match (&p.cfg.tls, &cfg.tls) {
                            (None, None) => true,
                            (Some(old), Some(new)) => old.connects_alike(j, new, i),
                            _ => false,
                        };
                        alike.then(|| p.endpoints[j].clone())
                    });
                    match kept {
                        Some(ep) => ep,
                        None => Rc::new(Endpoint {
                            addr,
                            idle: RefCell::new(Vec::with_capacity(cfg.max_idle_per_endpoint)),
                            open: Cell::new(0),
                            peak: Cell::new(0),
                            last_peak: Cell::new(0),
                            waiters: RefCell::new(VecDeque::new()),
                            failures: Cell::new(0),
                            ejected_until: Cell::new(None),
                            ejections: Cell::new(0),
                            healthy: Cell::new(true),
                        }),
                    }
                })
                .collect(),
            balancer: Balancer::new(&cfg.balance, &cfg.endpoints),
            active: previous.map_or_else(|| Rc::new(Cell::new(0)), |p| p.active.clone()),
            active_cap: cfg
                .max_concurrent
                .map(|max| max.div_ceil(shards.max(1) as u32)),
            cfg: cfg.clone(),
            next_waiter: Cell::new(0),
            tls_logged: Cell::new(previous.and_then(|p| p.tls_logged.get())),
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The endpoint a new request goes to, by the upstream's `balance`,
    /// among those neither ejected nor down. `None`: every one is, and the
    /// request is answered 503 at once rather than sent where it would
    /// wait out a timeout.
    pub fn pick(&self, key: &PickKey) -> Option<usize> {
        let now = Cell::new(None);
        let picked = self.balancer.pick(
            key,
            |i| self.usable(i, 0, &now),
            |i| self.endpoints[i].busy(),
        );
        if picked.is_none() {
            bump(&self.metrics.no_endpoint);
        }
        picked
    }

    /// Where a request that failed on the endpoints in `tried` (a bit per
    /// endpoint index; the first 64 endpoints) goes next: the next in the
    /// weighted rotation that is usable and not tried.
    pub fn pick_besides(&self, tried: u64) -> Option<usize> {
        let now = Cell::new(None);
        self.balancer.in_turn(|i| self.usable(i, tried, &now))
    }

    /// The header `hash-header:NAME` hashes, if that is the balance.
    pub fn hash_header(&self) -> Option<&str> {
        self.balancer.hash_header()
    }

    /// Whether endpoint `i` may be picked: not in `tried`, not down, and not
    /// ejected (an ejection that is over ends here). `now` is read once per
    /// pick, and only if an endpoint is ejected.
    fn usable(&self, i: usize, tried: u64, now: &Cell<Option<Instant>>) -> bool {
        if i < 64 && tried & (1 << i) != 0 {
            return false;
        }
        let ep = &self.endpoints[i];
        if !ep.healthy.get() {
            return false;
        }
        if let Some(until) = ep.ejected_until.get() {
            let t = now.get().unwrap_or_else(Instant::now);
            now.set(Some(t));
            if t < until {
                return false;
            }
            // Back in the rotation; a failure ejects it again, for longer.
            ep.ejected_until.set(None);
            log::info!(
                "upstream '{}': endpoint {} back in rotation",
                self.cfg.name,
                ep.addr
            );
        }
        true
    }

    /// A place for one more request in flight, or `None` if this shard's
    /// share of `max_concurrent` is taken: the request is answered 503 with
    /// `Retry-After` at once, never queued.
    pub fn admit(&self) -> Option<Admission<'_>> {
        let active = &*self.active;
        if self.active_cap.is_some_and(|cap| active.get() >= cap) {
            bump(&self.metrics.overloaded);
            return None;
        }
        active.set(active.get() + 1);
        Some(Admission(active))
    }

    /// A health check's verdict on the endpoint at `addr`, if this pool has
    /// it. The endpoint is shared with the other generations' pools.
    pub fn set_health(&self, addr: SocketAddr, healthy: bool) {
        if let Some(ep) = self.endpoints.iter().find(|e| e.addr == addr)
            && ep.healthy.replace(healthy) != healthy
        {
            log::debug!(
                "upstream '{}': endpoint {addr} marked {}",
                self.cfg.name,
                if healthy { "up" } else { "down" }
            );
        }
    }

    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether some endpoint is in the rotation (not marked down by a
    /// health check, not ejected at `now`): what `[endpoints] ready`
    /// reports, from this shard's view, without dialling anything.
    pub fn ready(&self, now: Instant) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.healthy.get() && e.ejected_until.get().is_none_or(|until| now >= until))
    }

    pub fn retries(&self) -> bool {
        self.cfg.retry
    }

    /// Whether the retry budget has room for one more retry now.
    pub fn retry_budget_allows(&self, shards: u32, now: Instant) -> bool {
        self.cfg
            .retry_budget
            .is_none_or(|limit| self.budget.allows(&limit, shards, now))
    }

    /// A retry is sent.
    pub fn spend_retry(&self) {
        self.budget.spend();
    }

    /// A retry was wanted that the budget did not allow.
    pub fn budget_refused(&self) {
        bump(&self.metrics.retries_refused);
    }

    /// An exchange with `endpoint` failed: a connect error, a reset or
    /// close before any response byte, or a 5xx. Enough in a row eject it.
    pub fn failed(&self, endpoint: usize) {
        let Some(o) = self.cfg.outlier else { return };
        let ep = &self.endpoints[endpoint];
        ep.failures.set(ep.failures.get() + 1);
        if ep.failures.get() < o.consecutive_failures || ep.ejected_until.get().is_some() {
            return;
        }
        let now = Instant::now();
        // Those a health check marked down count as out too: ejection never
        // takes the last endpoints the health checks left.
        let out = self
            .endpoints
            .iter()
            .filter(|e| !e.healthy.get() || e.ejected_until.get().is_some_and(|u| u > now))
            .count();
        if (out + 1) * 100 > self.endpoints.len() * o.max_ejected_percent as usize {
            return;
        }
        let times = ep.ejections.get().min(5);
        let length = o.eject_for.0.saturating_mul(1 << times).min(MAX_EJECTION);
        ep.ejections.set(ep.ejections.get() + 1);
        ep.failures.set(0);
        ep.ejected_until.set(now.checked_add(length));
        bump(&self.metrics.ejections);
        log::warn!(
            "upstream '{}': endpoint {} ejected for {length:?} after {} failures in a row",
            self.cfg.name,
            ep.addr,
            o.consecutive_failures
        );
    }

    /// An exchange with `endpoint` got a response that was not a 5xx.
    pub fn succeeded(&self, endpoint: usize) {
        let ep = &self.endpoints[endpoint];
        if ep.failures.get() != 0 {
            ep.failures.set(0);
        }
        if ep.ejections.get() != 0 && ep.ejected_until.get().is_none() {
            ep.ejections.set(0);
        }
    }

    pub fn addr(&self, endpoint: usize) -> SocketAddr {
        self.endpoints[endpoint].addr
    }

    /// A connection to `endpoint`; the flag says whether it was reused.
    pub async fn checkout(
        &self,
        endpoint: usize,
        timeouts: &Timeouts,
        fresh: bool,
        deadline: Option<Instant>,
    ) -> Result<(UpstreamConn, bool), UpstreamError> {
        let ep = &self.endpoints[endpoint];
        // Counted as in use from here: this request needs a connection.
        ep.peak.set(ep.peak.get().max(ep.busy() + 1));
        if !fresh && let Some(mut conn) = self.take_idle(ep, Instant::now()) {
            // Put in by another generation's pool, maybe at another index.
            conn.endpoint = endpoint;
            bump(&self.metrics.reuses);
            return Ok((conn, true));
        }
        if ep.open.get() >= self.cfg.max_per_endpoint {
            let wait = self.wait_for_slot(ep, fresh);
            match monoio::time::timeout(self.cfg.queue_timeout, wait).await {
                Ok(Some(mut conn)) => {
                    conn.endpoint = endpoint;
                    bump(&self.metrics.reuses);
                    return Ok((conn, true));
                }
                Ok(None) => {}
                Err(_) => return Err(UpstreamError::Saturated),
            }
        }
        ep.open.set(ep.open.get() + 1);
        // One budget for the TCP connect and the TLS handshake after it.
        let limit = crate::io::budget(timeouts.upstream_connect.0, deadline);
        let connect_by = Instant::now() + limit;
        let connected = monoio::time::timeout(limit, TcpStream::connect_addr(ep.addr)).await;
        let mut stream = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                log::debug!("connect to {} failed: {e}", ep.addr);
                self.release(ep);
                bump(&self.metrics.failures);
                return Err(UpstreamError::Connect);
            }
            Err(_) => {
                self.release(ep);
                bump(&self.metrics.failures);
                return Err(UpstreamError::Connect);
            }
        };
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let (r, w) = match &self.cfg.tls {
            None => {
                let (r, w) = stream.into_split();
                (Reader::Plain(r), Writer::Plain(w))
            }
            Some(tls) => {
                let limit = connect_by.saturating_duration_since(Instant::now());
                let name = tls.names[endpoint].clone();
                match crate::tls::connect(&mut stream, tls.client.clone(), name, limit).await {
                    Ok(session) => {
                        let (r, w) = crate::tls::split(stream, session);
                        (Reader::Tls(r), Writer::Tls(w))
                    }
                    Err(e) => {
                        self.tls_failed(ep.addr, &e);
                        self.release(ep);
                        bump(&self.metrics.failures);
                        return Err(UpstreamError::Connect);
                    }
                }
            }
        };
        bump(&self.metrics.connects);
        Ok((
            UpstreamConn {
                r,
                w,
                fd,
                endpoint,
                created: Instant::now(),
                requests: 0,
            },
            false,
        ))
    }

    /// Says why a TLS handshake with `addr` failed, at most once per
    /// `TLS_LOG_EVERY`: the client gets a 502 (or a retry elsewhere) each time.
    fn tls_failed(&self, addr: SocketAddr, e: &crate::tls::Refused) {
        let now = Instant::now();
        if self
            .tls_logged
            .get()
            .is_none_or(|t| now.duration_since(t) >= TLS_LOG_EVERY)
        {
            self.tls_logged.set(Some(now));
            log::warn!("upstream '{}': {addr}: {e}", self.cfg.name);
        }
    }

    /// Waits until a connection slot frees or an idle connection comes back.
    async fn wait_for_slot(&self, ep: &Endpoint, fresh: bool) -> Option<UpstreamConn> {
        let id = self.next_waiter.get();
        self.next_waiter.set(id + 1);
        // Removes our waker if we stop waiting before being woken.
        struct Leave<'a>(&'a Endpoint, u64);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.waiters.borrow_mut().retain(|(w, _)| *w != self.1);
            }
        }
        let _leave = Leave(ep, id);
        poll_fn(|cx| {
            if !fresh && let Some(conn) = self.take_idle(ep, Instant::now()) {
                return Poll::Ready(Some(conn));
            }
            if ep.open.get() < self.cfg.max_per_endpoint {
                return Poll::Ready(None);
            }
            let mut waiters = ep.waiters.borrow_mut();
            match waiters.iter_mut().find(|(w, _)| *w == id) {
                Some((_, waker)) => waker.clone_from(cx.waker()),
                None => waiters.push_back((id, cx.waker().clone())),
            }
            Poll::Pending
        })
        .await
    }

    fn take_idle(&self, ep: &Endpoint, now: Instant) -> Option<UpstreamConn> {
        loop {
            let idle = ep.idle.borrow_mut().pop()?;
            let quiet = now.duration_since(idle.since);
            let expired = quiet >= self.cfg.idle_timeout
                || now.duration_since(idle.conn.created) >= self.cfg.max_lifetime;
            if !expired && (quiet < TRUSTED_IDLE || still_open(idle.conn.fd)) {
                return Some(idle.conn);
            }
            self.release(ep);
        }
    }

    /// Returns a connection after a complete exchange that left it reusable.
    pub fn checkin(&self, mut conn: UpstreamConn) {
        let ep = &self.endpoints[conn.endpoint];
        conn.requests += 1;
        let now = Instant::now();
        let retire = (self.cfg.max_requests > 0 && conn.requests >= self.cfg.max_requests)
            || now.duration_since(conn.created) >= self.cfg.max_lifetime
            || ep.idle.borrow().len() >= self.idle_cap(ep);
        if retire {
            drop(conn);
            self.release(ep);
            return;
        }
        ep.idle.borrow_mut().push(Idle { conn, since: now });
        wake_one(ep);
    }

    /// Closes a connection that must not be reused.
    pub fn discard(&self, conn: UpstreamConn) {
        let ep = &self.endpoints[conn.endpoint];
        drop(conn);
        self.release(ep);
    }

    fn release(&self, ep: &Endpoint) {
        ep.open.set(ep.open.get() - 1);
        wake_one(ep);
    }

    /// How many idle connections an endpoint keeps: `max_idle_per_endpoint`,
    /// or as many as were in use at once lately if that is more, so steady
    /// traffic above the configured number does not close and reopen
    /// connections all the time; never above `max_per_endpoint`.
    fn idle_cap(&self, ep: &Endpoint) -> usize {
        let recent = ep.peak.get().max(ep.last_peak.get());
        self.cfg
            .max_idle_per_endpoint
            .max(recent)
            .min(self.cfg.max_per_endpoint)
    }

    /// Once a second (from the shard's housekeeping): closes idle
    /// connections past `idle_timeout` and those beyond the idle cap,
    /// oldest first, and every `PEAK_WINDOW` ticks starts a new peak window.
    pub fn sweep(&self, now: Instant, tick: u64) {
        for ep in &self.endpoints {
            if tick.is_multiple_of(PEAK_WINDOW) {
                ep.last_peak.set(ep.peak.get());
                ep.peak.set(ep.busy());
            }
            let cap = self.idle_cap(ep);
            let mut idle = ep.idle.borrow_mut();
            let stale = idle
                .iter()
                .take_while(|i| now.duration_since(i.since) >= self.cfg.idle_timeout)
                .count();
            let close = stale.max(idle.len().saturating_sub(cap));
            let closed = idle.drain(..close).count();
            drop(idle);
            for _ in 0..closed {
                self.release(ep);
            }
        }
    }
}

/// The longest an endpoint is left out, however often it is ejected.
const MAX_EJECTION: Duration = Duration::from_secs(3600);

/// Ticks (seconds) in a window of the peak count of connections in use.
const PEAK_WINDOW: u64 = 10;

fn wake_one(ep: &Endpoint) {
    let waker = ep.waiters.borrow_mut().pop_front();
    if let Some((_, w)) = waker {
        w.wake();
    }
}

/// A connection back in the pool for less than this is reused without a
/// look: servers close idle keep-alive connections after seconds (gunicorn's
/// 2 s is among the shortest), so under steady load the check would cost a
/// syscall per request to find what is all but certain. A request whose
/// connection closed anyway in that moment is retried when idempotent and
/// bodiless, like any other.
const TRUSTED_IDLE: Duration = Duration::from_millis(200);

/// An idle upstream connection is usable if reading it would block: no EOF,
/// no stray bytes. One non-blocking peek; it saves a request sent down a
/// connection the upstream already closed.
fn still_open(fd: RawFd) -> bool {
    peek(fd) == Peeked::Empty
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn pool(extra: &str, shards: usize) -> UpstreamPool {
        let text = format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"u\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n{extra}\n"
        );
        let cfg = crate::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        UpstreamPool::new(&cfg.upstreams[0], None, shards)
    }

    const KEY: PickKey = PickKey {
        client: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        header: None,
    };

    #[test]
    fn down_or_ejected_endpoints_are_not_picked_and_none_left_is_none() {
        let p = pool(
            "outlier_detection = { consecutive_failures = 1, max_ejected_percent = 100 }",
            1,
        );
        p.set_health(p.addr(0), false);
        assert!((0..4).all(|_| p.pick(&KEY) == Some(1)));
        p.failed(1);
        assert_eq!(p.pick(&KEY), None);
        assert_eq!(p.pick_besides(0), None);
        p.set_health(p.addr(0), true);
        assert_eq!(p.pick(&KEY), Some(0));
    }

    #[test]
    fn ejection_leaves_the_endpoint_health_checks_left() {
        let p = pool("outlier_detection = { consecutive_failures = 1 }", 1);
        p.set_health(p.addr(0), false);
        // At 50%, one of two is out already: the other stays in.
        p.failed(1);
        assert_eq!(p.pick(&KEY), Some(1));
    }

    #[test]
    fn max_concurrent_is_shared_out_over_the_shards() {
        // ceil(5 / 2) = 3 on each shard.
        let p = pool("max_concurrent = 5", 2);
        let held: Vec<_> = (0..3).map(|_| p.admit().unwrap()).collect();
        assert!(p.admit().is_none());
        drop(held);
        assert!(p.admit().is_some());
        // A reload's pool shares the count with the one before.
        let first = p.admit().unwrap();
        let next = UpstreamPool::new(&p.cfg, Some(&p), 2);
        let _two = (next.admit().unwrap(), next.admit().unwrap());
        assert!(next.admit().is_none());
        drop(first);
        assert!(next.admit().is_some());
    }
}
