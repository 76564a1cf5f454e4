//! The control thread and a shard talk through two bounded lock-free
//! queues, one each way, each with one producer and one consumer.
//!
//! Control → shard: a push, then a wake of the shard's mailbox task (an
//! `AtomicWaker`; monoio turns a wake from another thread into a write to
//! the shard's eventfd, so a shard asleep in the kernel gets up at once).
//! Shard → control: a push, then an unpark of the control thread. A shard
//! never waits on the control thread: if its reply queue is full the reply
//! is dropped and the control thread, which waits with a deadline, says the
//! shard did not answer. A full queue to a shard is the control thread's to
//! handle (it retries with back-off).

use std::future::poll_fn;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::thread::Thread;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use serde::Serialize;

use crate::health::EndpointHealth;
use crate::metrics::{Report, Reset};
use crate::snapshot::Snapshot;

/// A message from the control thread to a shard.
pub enum ToShard {
    /// A new config: put it in force, start accepting on the listeners it
    /// adds (bound for this shard), stop those it removes (by name).
    Reload {
        snapshot: Arc<Snapshot>,
        generation: u64,
        listen: Vec<(String, std::net::TcpListener)>,
        unlisten: Vec<String>,
    },
    /// Report `ShardStats`; the number comes back with them.
    Stats(u64),
    /// Report the `top` per-client rate-limit keys with the most requests.
    RateLimitTop { n: u64, top: usize },
    /// Report the metrics (`metrics::Report`), with copies of the latency
    /// histograms if `latency`, clearing those `reset` names after.
    Metrics { n: u64, latency: bool, reset: Reset },
    /// Stop accepting, close idle connections, let the others finish; stay up.
    Drain,
    /// Drain for at most this long, then end the shard.
    Stop(Duration),
    /// Health checks' verdicts: what changed, or after a reload every
    /// endpoint's (see `health`).
    Health(Arc<[EndpointHealth]>),
}

/// A message from a shard to the control thread.
pub enum FromShard {
    Stats(u64, ShardStats),
    Metrics(u64, Box<Report>),
    /// (bucket id, key, requests), most requests first.
    RateLimitTop(u64, Vec<(u64, Vec<u8>, u64)>),
    Reloaded(u64),
}

/// What a shard reports of itself.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStats {
    pub shard: usize,
    pub generation: u64,
    pub driver: String,
    pub connections: usize,
    pub requests: u64,
    pub client_aborts: u64,
    pub buffers_leased: usize,
    pub buffers_max: usize,
    pub draining: bool,
}

/// Both queues between the control thread and one shard.
pub struct Mailbox {
    inbox: ArrayQueue<ToShard>,
    waker: AtomicWaker,
    outbox: ArrayQueue<FromShard>,
    /// The control thread, to unpark when a reply is in; set when it starts.
    control: OnceLock<Thread>,
}

/// Messages either way that may wait in a queue: the control thread asks
/// one thing at a time, so a few are plenty.
const DEPTH: usize = 16;

impl Mailbox {
    pub fn new() -> Arc<Mailbox> {
        Arc::new(Mailbox {
            inbox: ArrayQueue::new(DEPTH),
            waker: AtomicWaker::new(),
            outbox: ArrayQueue::new(DEPTH),
            control: OnceLock::new(),
        })
    }

    /// Control side: the thread to unpark when a shard replies.
    pub fn attach_control(&self, thread: Thread) {
        let _ = self.control.set(thread);
    }

    /// Control side. Gives the message back if the queue is full.
    pub fn send(&self, msg: ToShard) -> Result<(), ToShard> {
        self.inbox.push(msg)?;
        self.waker.wake();
        Ok(())
    }

    /// Control side: a reply, if one is in.
    pub fn reply(&self) -> Option<FromShard> {
        self.outbox.pop()
    }

    /// Shard side: the next message, waiting (asleep) until one comes.
    pub async fn recv(&self) -> ToShard {
        poll_fn(|cx| {
            if let Some(m) = self.inbox.pop() {
                return Poll::Ready(m);
            }
            self.waker.register(cx.waker());
            match self.inbox.pop() {
                Some(m) => Poll::Ready(m),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Shard side: answers the control thread, never waiting for it.
    pub fn answer(&self, msg: FromShard) {
        if self.outbox.push(msg).is_err() {
            log::warn!("control queue full; a reply is dropped");
        }
        if let Some(t) = self.control.get() {
            t.unpark();
        }
    }
}
