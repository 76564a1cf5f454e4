//! A shard: one thread, pinned to a core, running its own monoio runtime
//! (io_uring, or epoll where io_uring is missing). It owns its listening
//! sockets (SO_REUSEPORT), buffer slab, upstream pools and counters; the
//! request path touches nothing another thread can see.
//!
//! The control thread talks to a shard through its `Mailbox`: a bounded
//! lock-free queue plus a waker, so an idle shard sleeps in the kernel until
//! a message or a connection arrives.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use monoio::io::{CancelHandle, Canceller};
use monoio::net::{TcpListener, TcpStream};

use crate::conn::{self, After, IdleConn};
use crate::date::HttpDate;
use crate::slab::Slab;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamPool;

/// A message from the control thread.
#[derive(Debug)]
pub enum ToShard {
    /// Stop accepting, let in-flight requests finish for at most this long, exit.
    Drain(Duration),
}

pub struct Mailbox {
    queue: ArrayQueue<ToShard>,
    waker: AtomicWaker,
}

impl Mailbox {
    pub fn new() -> Arc<Mailbox> {
        Arc::new(Mailbox {
            queue: ArrayQueue::new(16),
            waker: AtomicWaker::new(),
        })
    }

    /// Gives the message back if the queue is full.
    pub fn send(&self, msg: ToShard) -> Result<(), ToShard> {
        self.queue.push(msg)?;
        self.waker.wake();
        Ok(())
    }

    async fn recv(&self) -> ToShard {
        poll_fn(|cx| {
            if let Some(m) = self.queue.pop() {
                return Poll::Ready(m);
            }
            self.waker.register(cx.waker());
            match self.queue.pop() {
                Some(m) => Poll::Ready(m),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// Everything a shard owns; shared by its tasks through an `Rc`.
pub struct ShardState {
    pub id: usize,
    /// The config in force. A reload replaces the outer `Rc`; requests in
    /// flight keep the snapshot they started with. The `Rc` makes a request's
    /// reference a plain increment instead of an atomic one on a cache line
    /// every shard shares.
    #[allow(clippy::redundant_allocation)]
    snapshot: RefCell<Rc<Arc<Snapshot>>>,
    pub slab: Rc<Slab>,
    /// Indexed like the snapshot's upstreams.
    pub pools: Vec<UpstreamPool>,
    /// Small buffers for error responses when `slab` has none to give.
    pub replies: Rc<Slab>,
    /// The `Date` header value, current to the second.
    pub date: HttpDate,
    /// Exchanges given up because the client closed before the response.
    pub client_aborts: Cell<u64>,
    conns: Cell<usize>,
    /// Cancel the waits for a next request that hold a read buffer, in two
    /// generations: each second the older one is cancelled, which demotes
    /// connections quiet for one to two seconds (see `conn`).
    waiting: RefCell<[Canceller; 2]>,
    waiting_now: Cell<usize>,
    /// Cancel the waits of demoted connections, bucketed by the second
    /// their limit ends (`QUIET_BUCKETS` seconds round): a wheel of timers
    /// that costs a quiet connection no timer of its own.
    quiet: RefCell<Vec<Canceller>>,
    /// Seconds are counted from here for `quiet`.
    epoch: Instant,
    /// The last second whose quiet bucket was cancelled.
    expired: Cell<u64>,
    draining: Cell<bool>,
    drained: Cell<Option<Waker>>,
}

impl ShardState {
    #[allow(clippy::redundant_allocation)]
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    pub fn waiting_handle(&self) -> CancelHandle {
        self.waiting.borrow()[self.waiting_now.get()].handle()
    }

    /// For a quiet connection whose wait ends at `until`: cancelled in the
    /// first housekeeping tick at or after `until` (or, for a limit more than
    /// `QUIET_BUCKETS` seconds away, earlier: the wait then starts again).
    pub fn quiet_handle(&self, until: Instant) -> CancelHandle {
        let second = until
            .saturating_duration_since(self.epoch)
            .as_secs_f64()
            .ceil() as u64;
        self.quiet.borrow()[second as usize % QUIET_BUCKETS].handle()
    }

    /// Cancels the waits for a next request that began before the last
    /// tick: such a connection gives its buffer back and goes on as an
    /// `IdleConn`. Waits begun since are left for the next tick.
    fn demote_waiting(&self) {
        let older = self.waiting_now.get() ^ 1;
        let mut waiting = self.waiting.borrow_mut();
        let cancelled = std::mem::take(&mut waiting[older]).cancel();
        waiting[older] = cancelled;
        self.waiting_now.set(older);
    }

    /// Cancels the quiet waits whose limit has passed.
    fn expire_quiet(&self, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let from = (self.expired.get() + 1).max(second.saturating_sub(QUIET_BUCKETS as u64 - 1));
        let mut quiet = self.quiet.borrow_mut();
        for s in from..=second {
            let bucket = &mut quiet[s as usize % QUIET_BUCKETS];
            *bucket = std::mem::take(bucket).cancel();
        }
        self.expired.set(second);
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    fn conn_opened(&self) {
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

pub struct ShardSpec {
    pub id: usize,
    pub core: Option<core_affinity::CoreId>,
    pub snapshot: Arc<Snapshot>,
    pub listeners: Vec<std::net::TcpListener>,
    pub mailbox: Arc<Mailbox>,
}

type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// The event loop a shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    /// io_uring where the kernel offers it, else epoll. `RINGWAY_DRIVER=epoll`
    /// forces epoll (to compare the two, or to rule io_uring out).
    pub fn pick() -> Driver {
        if std::env::var("RINGWAY_DRIVER").is_ok_and(|v| v == "epoll")
            || !monoio::utils::detect_uring()
        {
            Driver::Epoll
        } else {
            Driver::IoUring
        }
    }
}

/// How a shard's io_uring is set up. A shard owns its ring alone: every
/// submission and every wait is on its own thread, so the kernel need not
/// interrupt it to post completions (`COOP_TASKRUN`), and can even defer
/// that work until the shard next waits (`DEFER_TASKRUN`, which requires
/// `SINGLE_ISSUER`). `RINGWAY_URING=plain|coop|defer` picks one, to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingSetup {
    Plain,
    /// `COOP_TASKRUN` + `TASKRUN_FLAG` (Linux 5.19).
    Coop,
    /// `SINGLE_ISSUER` + `DEFER_TASKRUN` (Linux 6.1).
    Defer,
}

impl RingSetup {
    pub fn pick() -> RingSetup {
        match std::env::var("RINGWAY_URING").as_deref() {
            Ok("plain") => RingSetup::Plain,
            Ok("defer") => RingSetup::Defer,
            _ => RingSetup::Coop,
        }
    }

    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        match self {
            RingSetup::Plain => {}
            RingSetup::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            RingSetup::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
        }
        b
    }
}

/// Runs a shard until it is told to drain; called on the shard's own thread.
pub fn run(spec: ShardSpec) -> std::io::Result<()> {
    if let Some(core) = spec.core
        && !core_affinity::set_for_current(core)
    {
        log::warn!("shard {}: could not pin to core {}", spec.id, core.id);
    }
    let uring = |setup: RingSetup| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .uring_builder(setup.builder())
            .enable_timer()
            .build()
    };
    let mut rt = match Driver::pick() {
        Driver::IoUring => {
            let setup = RingSetup::pick();
            let rt = match uring(setup) {
                Ok(rt) => rt,
                // An older kernel refuses flags it does not know.
                Err(e) if setup != RingSetup::Plain => {
                    log::warn!(
                        "shard {}: io_uring {setup:?} set-up refused ({e}); plain",
                        spec.id
                    );
                    uring(RingSetup::Plain)?
                }
                Err(e) => return Err(e),
            };
            log::info!("shard {}: io_uring driver ({setup:?})", spec.id);
            Runtime::from(rt)
        }
        Driver::Epoll => {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()?;
            log::info!("shard {}: epoll driver", spec.id);
            Runtime::from(rt)
        }
    };
    rt.block_on(serve(spec))
}

async fn serve(spec: ShardSpec) -> std::io::Result<()> {
    let snapshot = spec.snapshot;
    let limits = snapshot.config.limits;
    let shard = Rc::new(ShardState {
        id: spec.id,
        slab: Slab::new(limits.buffer_size.get(), limits.max_buffer_bytes.get()),
        pools: snapshot
            .config
            .upstreams
            .iter()
            .map(UpstreamPool::new)
            .collect(),
        replies: Slab::new(REPLY_BUFFER, REPLY_BUFFER * REPLY_BUFFERS),
        date: HttpDate::new(SystemTime::now()),
        client_aborts: Cell::new(0),
        snapshot: RefCell::new(Rc::new(snapshot)),
        conns: Cell::new(0),
        waiting: RefCell::new([Canceller::new(), Canceller::new()]),
        waiting_now: Cell::new(0),
        quiet: RefCell::new((0..QUIET_BUCKETS).map(|_| Canceller::new()).collect()),
        epoch: Instant::now(),
        expired: Cell::new(0),
        draining: Cell::new(false),
        drained: Cell::new(None),
    });
    monoio::spawn(housekeeping(shard.clone()));
    let stop_accepting = Canceller::new();
    for l in spec.listeners {
        let listener = TcpListener::from_std(l)?;
        monoio::spawn(accept(shard.clone(), listener, stop_accepting.handle()));
    }

    // Control messages. A new snapshot will be handed over here (hot reload).
    match spec.mailbox.recv().await {
        ToShard::Drain(limit) => {
            shard.draining.set(true);
            stop_accepting.cancel();
            let waits = shard
                .waiting
                .borrow_mut()
                .iter_mut()
                .map(std::mem::take)
                .collect::<Vec<_>>();
            let quiet = shard
                .quiet
                .borrow_mut()
                .iter_mut()
                .map(std::mem::take)
                .collect::<Vec<_>>();
            for waits in waits.into_iter().chain(quiet) {
                waits.cancel();
            }
            let all_closed = poll_fn(|cx| {
                if shard.conns.get() == 0 {
                    Poll::Ready(())
                } else {
                    shard.drained.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            });
            if monoio::time::timeout(limit, all_closed).await.is_err() {
                log::warn!(
                    "shard {}: drain timeout, closing {} connections",
                    shard.id,
                    shard.conns.get()
                );
            }
        }
    }
    Ok(())
}

/// How many seconds the wheel of quiet-connection limits spans.
const QUIET_BUCKETS: usize = 64;

/// An error response is at most this long (the longest 405 `Allow` list
/// included); that many of them can be in flight when the slab is exhausted.
const REPLY_BUFFER: usize = 1024;
const REPLY_BUFFERS: usize = 64;

async fn accept(shard: Rc<ShardState>, listener: TcpListener, stop: CancelHandle) {
    let max = shard.snapshot().config.server.max_connections;
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, peer)) => {
                backoff.reset();
                if shard.conns.get() >= max {
                    monoio::spawn(refuse(shard.clone(), stream));
                    continue;
                }
                shard.conn_opened();
                monoio::spawn(serve_conn(shard.clone(), stream, peer));
            }
            Err(_) if shard.draining() => return,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or kernel memory: the
                // pending connection stays queued, so retrying at once would
                // spin. Wait, longer each time, until a descriptor frees up.
                let wait = backoff.failed(Instant::now(), |failures| {
                    log::warn!(
                        "shard {}: accept failed: {e} ({failures} times in the last second); backing off",
                        shard.id
                    );
                });
                monoio::time::sleep(wait).await;
            }
        }
    }
}

/// How long to wait after a failed accept, and when to say so: the wait
/// doubles from 5 ms to 500 ms, and the log speaks at most once a second.
#[derive(Default)]
struct AcceptBackoff {
    wait: Duration,
    failures: u64,
    logged: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(500);

    fn failed(&mut self, now: Instant, log: impl FnOnce(u64)) -> Duration {
        self.failures += 1;
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            log(self.failures);
            self.logged = Some(now);
            self.failures = 0;
        }
        self.wait = (self.wait * 2).clamp(Self::FIRST, Self::MAX);
        self.wait
    }

    fn reset(&mut self) {
        self.wait = Duration::ZERO;
    }
}

/// Once a second, at the turn of the second: the `Date` value, the
/// demotion of quiet connections, the slab's spare buffers trimmed, and
/// the upstream pools swept of idle connections they no longer need.
async fn housekeeping(shard: Rc<ShardState>) {
    for tick in 1.. {
        shard.date.next_second().await;
        shard.date.set(SystemTime::now());
        shard.demote_waiting();
        let now = Instant::now();
        shard.expire_quiet(now);
        shard.slab.trim();
        for pool in &shard.pools {
            pool.sweep(now, tick);
        }
    }
}

/// A connection's task while it is served. A connection that goes quiet
/// moves to a small task of its own (`quiet_conn`), so the memory of this
/// one, sized for a whole proxied exchange, is not kept while it waits.
async fn serve_conn(shard: Rc<ShardState>, stream: TcpStream, peer: SocketAddr) {
    let after = conn::serve(&shard, stream, peer).await;
    carry_on(shard, after);
}

/// A quiet connection's task: small, as it awaits nothing but the wait.
async fn quiet_conn(shard: Rc<ShardState>, mut idle: IdleConn) {
    if conn::wait_idle(&shard, &mut idle).await {
        monoio::spawn(resumed_conn(shard, idle));
    } else {
        shard.conn_closed();
    }
}

async fn resumed_conn(shard: Rc<ShardState>, idle: IdleConn) {
    let after = conn::resume(&shard, idle).await;
    carry_on(shard, after);
}

fn carry_on(shard: Rc<ShardState>, after: After) {
    match after {
        After::Closed => shard.conn_closed(),
        After::Idle(idle) => {
            monoio::spawn(quiet_conn(shard, idle));
        }
    }
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(shard: Rc<ShardState>, mut stream: TcpStream) {
    conn::refuse(&shard, &mut stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_and_logs_once_a_second() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        let mut logs = Vec::new();
        let mut waits = Vec::new();
        for ms in 0..1500u64 {
            let now = t0 + Duration::from_millis(ms);
            waits.push(b.failed(now, |n| logs.push((ms, n))));
        }
        assert_eq!(logs, vec![(0, 1), (1000, 1000)]);
        assert_eq!(waits[0], Duration::from_millis(5));
        assert_eq!(waits[1], Duration::from_millis(10));
        assert_eq!(*waits.last().unwrap(), Duration::from_millis(500));
        b.reset();
        assert_eq!(b.failed(t0, |_| {}), Duration::from_millis(5));
    }
}
