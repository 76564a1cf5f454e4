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
use std::time::Duration;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use monoio::io::{AsyncWriteRentExt, CancelHandle, Canceller};
use monoio::net::{TcpListener, TcpStream};

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
    conns: Cell<usize>,
    /// Cancels every keep-alive connection's wait for its next request.
    idle: RefCell<Canceller>,
    draining: Cell<bool>,
    drained: Cell<Option<Waker>>,
}

impl ShardState {
    #[allow(clippy::redundant_allocation)]
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    pub fn idle_handle(&self) -> CancelHandle {
        self.idle.borrow().handle()
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

/// Runs a shard until it is told to drain; called on the shard's own thread.
pub fn run(spec: ShardSpec) -> std::io::Result<()> {
    if let Some(core) = spec.core
        && !core_affinity::set_for_current(core)
    {
        log::warn!("shard {}: could not pin to core {}", spec.id, core.id);
    }
    let mut rt = match Driver::pick() {
        Driver::IoUring => {
            let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(1024)
                .enable_timer()
                .build()?;
            log::info!("shard {}: io_uring driver", spec.id);
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
        snapshot: RefCell::new(Rc::new(snapshot)),
        conns: Cell::new(0),
        idle: RefCell::new(Canceller::new()),
        draining: Cell::new(false),
        drained: Cell::new(None),
    });
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
            let idle = std::mem::take(&mut *shard.idle.borrow_mut());
            idle.cancel();
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

async fn accept(shard: Rc<ShardState>, listener: TcpListener, stop: CancelHandle) {
    let max = shard.snapshot().config.server.max_connections;
    loop {
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, peer)) => {
                if shard.conns.get() >= max {
                    monoio::spawn(refuse(stream));
                    continue;
                }
                shard.conn_opened();
                monoio::spawn(serve_conn(shard.clone(), stream, peer));
            }
            Err(_) if shard.draining() => return,
            Err(e) => {
                // Out of file descriptors, most likely: back off rather than spin.
                log::warn!("shard {}: accept failed: {e}", shard.id);
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_conn(shard: Rc<ShardState>, stream: TcpStream, peer: SocketAddr) {
    crate::conn::serve(&shard, stream, peer).await;
    shard.conn_closed();
}

/// Answers a connection over the limit with a 503 and closes it.
pub(crate) async fn refuse(mut stream: TcpStream) {
    let mut out = Vec::new();
    crate::error::Reject::Unavailable.write(&mut out, true, "");
    let _ = monoio::time::timeout(Duration::from_secs(1), stream.write_all(out)).await;
}
