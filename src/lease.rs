//! Owner leases: exact per-client limits for keys no shard is pinned to.
//!
//! A key taken from a header, or an address taken from `X-Forwarded-For`,
//! may arrive on any shard. One shard owns it, chosen by a hash of the key
//! that every shard computes alike (`owner`), and keeps its one bucket. A
//! request for the key on another shard spends a token of that shard's
//! lease on the key; when the lease is spent the shard asks the owner for
//! another (`Msg::Ask`), and the owner takes up to `want` tokens from the
//! bucket and sends them back (`Msg::Grant`), or says how long until the
//! bucket has one. Requests that find no token wait for the answer, a
//! round trip between two shards; a shard told to wait turns requests away
//! until then without asking again. Every token comes out of the owner's
//! bucket, so together the shards never admit more than the limit; tokens
//! of a lease that lapses unspent (`LEASE_TTL`) are lost, which can only
//! make it stricter.
//!
//! The shards talk directly, one bounded lock-free queue for each ordered
//! pair (`Mesh`), each with one producer and one consumer, rather than
//! through the control thread: a lease is on the request path, and the
//! control thread reads files and parses configs, which no request should
//! wait behind. A full queue, or an owner that does not answer within
//! `ASK_TIMEOUT`, makes the shard decide alone with its share of the limit
//! (`rate / shards`), the mode without leases.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use ahash::AHashMap;
use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

use crate::config::Rate;

/// The longest key: the bucket id, then an address or a header value (cut
/// at this length).
pub const MAX_KEY: usize = 8 + 128;

/// A lease not spent within this lapses.
pub const LEASE_TTL: u64 = 1_000_000_000;

/// How long requests wait for an owner's answer before their shard decides
/// alone.
pub const ASK_TIMEOUT: u64 = 20_000_000;

/// Messages one shard may have in flight to another: a full queue makes
/// the sender decide alone. 32 × 160 bytes per ordered pair of shards.
const DEPTH: usize = 32;

/// A bucket's key, as the table keeps it, in a message.
#[derive(Clone, Copy)]
pub struct Key {
    len: u8,
    bytes: [u8; MAX_KEY],
}

impl Key {
    pub fn new(key: &[u8]) -> Key {
        let len = key.len().min(MAX_KEY);
        let mut bytes = [0; MAX_KEY];
        bytes[..len].copy_from_slice(&key[..len]);
        Key {
            len: len as u8,
            bytes,
        }
    }

    pub fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

pub enum Msg {
    /// Up to `want` tokens of the bucket `key`, whose limit is `rate`.
    Ask { key: Key, rate: Rate, want: u32 },
    /// `tokens` for `key`; with none, the ns until the bucket has one.
    Grant { key: Key, tokens: u32, wait: u64 },
}

/// The queues between shards: `lanes[to * n + from]`, and a waker per
/// receiving shard.
pub struct Mesh {
    n: usize,
    lanes: Box<[ArrayQueue<Msg>]>,
    wakers: Box<[AtomicWaker]>,
}

impl Mesh {
    pub fn new(shards: usize) -> Arc<Mesh> {
        Arc::new(Mesh {
            n: shards,
            lanes: (0..shards * shards)
                .map(|_| ArrayQueue::new(DEPTH))
                .collect(),
            wakers: (0..shards).map(|_| AtomicWaker::new()).collect(),
        })
    }

    pub fn shards(&self) -> usize {
        self.n
    }

    /// `false`, the message dropped, if the queue to `to` is full.
    pub fn send(&self, from: usize, to: usize, msg: Msg) -> bool {
        if self.lanes[to * self.n + from].push(msg).is_err() {
            return false;
        }
        self.wakers[to].wake();
        true
    }

    /// The next message to `me`, and who sent it; waits asleep until one
    /// comes. `next` is where the search starts, moved on past each sender
    /// taken, so that no shard's queue waits behind another's.
    pub async fn recv(&self, me: usize, next: &mut usize) -> (usize, Msg) {
        let n = self.n;
        let lanes = &self.lanes[me * n..(me + 1) * n];
        let mut pop = || {
            let start = *next;
            (0..n).map(|i| (start + i) % n).find_map(|from| {
                let m = lanes[from].pop()?;
                *next = (from + 1) % n;
                Some((from, m))
            })
        };
        poll_fn(|cx| {
            if let Some(m) = pop() {
                return Poll::Ready(m);
            }
            self.wakers[me].register(cx.waker());
            pop().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }
}

/// The shard that owns `key` among `shards`: the same on every shard.
pub fn owner(key: &[u8], shards: usize) -> usize {
    let h = ahash::RandomState::with_seeds(5, 6, 7, 8).hash_one(key);
    (h % shards as u64) as usize
}

/// Tokens to ask for at once: a few, so that a lease lapsing unspent loses
/// little, and never more than this shard's share of the burst.
pub fn want(rate: Rate, shards: usize) -> u32 {
    (rate.burst / (2 * shards as u32)).clamp(1, 16)
}

/// This shard's lease on one key owned elsewhere.
pub struct Remote {
    /// The bucket's key, to ask for it again.
    pub key: Box<[u8]>,
    tokens: Cell<u32>,
    /// When the tokens lapse (ns).
    until: Cell<u64>,
    /// The owner said the bucket is empty until then.
    denied_until: Cell<u64>,
    /// When an ask went out that is not answered yet; 0: none.
    asked: Cell<u64>,
    seen: Cell<u64>,
    /// Requests waiting for the answer.
    waiters: RefCell<Vec<Waker>>,
}

/// What a lease says of one request.
pub enum Taken {
    Yes,
    /// Not before this many ns.
    No(u64),
    /// Ask the owner (unless `asking`: an ask is out), and wait.
    Ask {
        asking: bool,
    },
}

impl Remote {
    pub fn new(key: &[u8]) -> Remote {
        Remote {
            key: key.into(),
            tokens: Cell::new(0),
            until: Cell::new(0),
            denied_until: Cell::new(0),
            asked: Cell::new(0),
            seen: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
        }
    }

    pub fn take(&self, now: u64) -> Taken {
        self.seen.set(now);
        if self.tokens.get() > 0 && self.until.get() >= now {
            self.tokens.set(self.tokens.get() - 1);
            return Taken::Yes;
        }
        if self.denied_until.get() > now {
            return Taken::No(self.denied_until.get() - now);
        }
        let asked = self.asked.get();
        Taken::Ask {
            asking: asked != 0 && now.saturating_sub(asked) < ASK_TIMEOUT,
        }
    }

    /// A token taken by a request that a later limit refused.
    pub fn give_back(&self) {
        self.tokens.set(self.tokens.get() + 1);
    }

    pub fn asking(&self, now: u64) {
        self.asked.set(now);
    }

    /// The owner's answer: tokens, or how long to wait.
    pub fn granted(&self, tokens: u32, wait: u64, now: u64) {
        self.asked.set(0);
        if tokens > 0 {
            self.tokens.set(tokens);
            self.until.set(now + LEASE_TTL);
        } else {
            self.tokens.set(0);
            self.denied_until.set(now + wait);
        }
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits until the owner answers, or `ASK_TIMEOUT` after the ask.
    /// Says nothing of the answer: `take` again.
    pub async fn answered(&self, asked_at: u64) {
        let sleep = monoio::time::sleep(std::time::Duration::from_nanos(ASK_TIMEOUT));
        let mut sleep = std::pin::pin!(sleep);
        poll_fn(|cx| {
            if self.asked.get() != asked_at || sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    pub fn asked_at(&self) -> u64 {
        self.asked.get()
    }
}

/// A shard's leases on keys owned elsewhere, bounded like its table.
#[derive(Default)]
pub struct Remotes {
    map: RefCell<AHashMap<Box<[u8]>, Rc<Remote>>>,
}

impl Remotes {
    /// The lease on `key`; with `max` leases already, the least recently
    /// seen of a sample that no request waits on makes room, else the idle
    /// ones. `None` if none can go: the shard then decides alone.
    pub fn get(&self, key: &[u8], max: usize, idle: u64, now: u64) -> Option<Rc<Remote>> {
        let mut map = self.map.borrow_mut();
        if let Some(r) = map.get(key) {
            return Some(r.clone());
        }
        if map.len() >= max {
            let victim = map
                .iter()
                .take(32)
                .filter(|(_, r)| r.waiters.borrow().is_empty())
                .min_by_key(|(_, r)| r.seen.get())
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    map.remove(&k);
                }
                None => self.sweep_locked(&mut map, idle, now),
            }
            if map.len() >= max {
                return None;
            }
        }
        let r = Rc::new(Remote::new(key));
        map.insert(key.into(), r.clone());
        Some(r)
    }

    pub fn find(&self, key: &[u8]) -> Option<Rc<Remote>> {
        self.map.borrow().get(key).cloned()
    }

    /// Drops leases idle for `idle` that no request waits on. The wakers
    /// of an ask answered or given up on are stale (their requests went on
    /// when it timed out) and are dropped first.
    pub fn sweep(&self, idle: u64, now: u64) {
        self.sweep_locked(&mut self.map.borrow_mut(), idle, now);
    }

    fn sweep_locked(&self, map: &mut AHashMap<Box<[u8]>, Rc<Remote>>, idle: u64, now: u64) {
        map.retain(|_, r| {
            let asked = r.asked.get();
            if asked == 0 || now.saturating_sub(asked) >= ASK_TIMEOUT {
                r.waiters.borrow_mut().clear();
            }
            now.saturating_sub(r.seen.get()) < idle || !r.waiters.borrow().is_empty()
        });
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_names_the_same_owner_and_keys_spread() {
        let mut per = [0usize; 4];
        for i in 0..4000u32 {
            let key = i.to_le_bytes();
            let o = owner(&key, 4);
            assert_eq!(o, owner(&key, 4));
            per[o] += 1;
        }
        assert!(per.iter().all(|&n| n > 800), "{per:?}");
    }

    #[test]
    fn a_lease_is_spent_then_asked_for_then_refused_until_told() {
        let r = Remote::new(b"k");
        let now = 1_000;
        assert!(matches!(r.take(now), Taken::Ask { asking: false }));
        r.asking(now);
        assert!(matches!(r.take(now + 1), Taken::Ask { asking: true }));
        r.granted(2, 0, now + 2);
        assert!(matches!(r.take(now + 3), Taken::Yes));
        assert!(matches!(r.take(now + 4), Taken::Yes));
        assert!(matches!(r.take(now + 5), Taken::Ask { asking: false }));
        r.asking(now + 5);
        r.granted(0, 500, now + 6);
        assert!(matches!(r.take(now + 7), Taken::No(499)));
        assert!(matches!(r.take(now + 506), Taken::Ask { asking: false }));
        // An unanswered ask is given up on after ASK_TIMEOUT.
        r.asking(now + 506);
        assert!(matches!(
            r.take(now + 506 + ASK_TIMEOUT),
            Taken::Ask { asking: false }
        ));
        // A lapsed lease is not spent.
        r.granted(5, 0, now);
        assert!(matches!(r.take(now + LEASE_TTL + 1), Taken::Ask { .. }));
    }

    #[test]
    fn the_mesh_carries_messages_between_shards() {
        let mesh = Mesh::new(3);
        let key = Key::new(b"k");
        let ask = Msg::Ask {
            key,
            rate: Rate {
                rate: 1.0,
                burst: 1,
            },
            want: 1,
        };
        assert!(mesh.send(2, 0, ask));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let (from, msg) = rt.block_on(mesh.recv(0, &mut 0));
        assert_eq!(from, 2);
        assert!(matches!(msg, Msg::Ask { key, want: 1, .. } if key.get() == b"k"));
        for _ in 0..DEPTH {
            assert!(mesh.send(
                1,
                0,
                Msg::Grant {
                    key,
                    tokens: 1,
                    wait: 0
                }
            ));
        }
        assert!(!mesh.send(
            1,
            0,
            Msg::Grant {
                key,
                tokens: 1,
                wait: 0
            }
        ));
    }
}
