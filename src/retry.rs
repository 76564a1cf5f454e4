//! When a proxied request is sent again, and how many retries an upstream
//! takes.
//!
//! A route's `retry` (or, without one, the upstream's default: connect
//! failures and closes before any response byte, an attempt per endpoint)
//! decides which failures are retried: `Rules`, worked out as an exchange
//! begins. An attempt after which none may follow is the last, and its
//! response is streamed to the client as it comes; others are held until
//! known good (see `proxy`).
//!
//! `Budget` is a shard's count of an upstream's requests and retries in
//! this whole second and the one before: a retry is allowed while the
//! retries stay under `percent` of the requests or twice the shard's share
//! of `min_per_sec`, whichever is more. Plain `Cell`s: each shard keeps its
//! own, and the budget survives a reload with the upstream's name.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::config::{MAX_ATTEMPTS, Retry, RetryBudget, RetryOn};

/// A shard's retry budget for one upstream.
pub struct Budget {
    /// Counted from here, in whole seconds.
    epoch: Instant,
    second: Cell<u64>,
    /// Requests and retries this second, and the one before.
    requests: [Cell<u64>; 2],
    retries: [Cell<u64>; 2],
}

impl Budget {
    pub fn new() -> Budget {
        Budget {
            epoch: Instant::now(),
            second: Cell::new(0),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Moves the window on to the second of `now`.
    fn roll(&self, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let gap = second.saturating_sub(self.second.get());
        if gap == 0 {
            return;
        }
        let (req, ret) = if gap == 1 {
            (self.requests[0].get(), self.retries[0].get())
        } else {
            (0, 0)
        };
        self.requests[1].set(req);
        self.retries[1].set(ret);
        self.requests[0].set(0);
        self.retries[0].set(0);
        self.second.set(second);
    }

    /// A request to the upstream began.
    pub fn request(&self, now: Instant) {
        self.roll(now);
        self.requests[0].set(self.requests[0].get() + 1);
    }

    /// Whether one more retry fits under `limit` over `shards` shards.
    pub fn allows(&self, limit: &RetryBudget, shards: u32, now: Instant) -> bool {
        self.roll(now);
        let requests = self.requests[0].get() + self.requests[1].get();
        let retries = self.retries[0].get() + self.retries[1].get();
        let share = (limit.percent / 100.0 * requests as f64) as u64;
        let floor = 2 * u64::from(limit.min_per_sec.div_ceil(shards.max(1)));
        retries < share.max(floor)
    }

    /// A retry is sent.
    pub fn spend(&self) {
        self.retries[0].set(self.retries[0].get() + 1);
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

/// What a request may retry, worked out when its exchange begins.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub attempts: u32,
    pub on: RetryOn,
    pub backoff: Duration,
    pub buffer_limit: usize,
    /// The request may be sent again once sent: it is idempotent (or the
    /// route allows others) and its body, if any, is still in hand.
    pub resendable: bool,
    /// The route's own `retry`, not the upstream's default: a response
    /// cut part-way counts as a reset, and with no other endpoint left the
    /// same one is tried again.
    pub by_route: bool,
}

impl Rules {
    /// A route's `retry`, or the upstream's default: with `retry = true`,
    /// connect failures and closes before any response byte, once per
    /// endpoint (at most `MAX_ATTEMPTS`), no backoff, nothing held.
    pub fn new(route: Option<&Retry>, upstream_retry: bool, endpoints: usize) -> Rules {
        match route {
            Some(r) => Rules {
                attempts: r.attempts.min(MAX_ATTEMPTS),
                on: r.on,
                backoff: r.backoff,
                buffer_limit: r.buffer_limit,
                resendable: false,
                by_route: true,
            },
            None if upstream_retry => Rules {
                attempts: (endpoints as u32).clamp(1, MAX_ATTEMPTS),
                on: RetryOn(RetryOn::CONNECT.0 | RetryOn::RESET.0),
                backoff: Duration::ZERO,
                buffer_limit: 0,
                resendable: false,
                by_route: false,
            },
            None => Rules {
                attempts: 1,
                on: RetryOn::default(),
                backoff: Duration::ZERO,
                buffer_limit: 0,
                resendable: false,
                by_route: false,
            },
        }
    }

    /// Whether an attempt's response may be turned down for another
    /// attempt (a status, a timeout, a failure part-way through a held
    /// one): the request head must then outlive the response.
    pub fn looks_at_responses(&self) -> bool {
        let statuses = RetryOn::S502.0 | RetryOn::S503.0 | RetryOn::S504.0 | RetryOn::TIMEOUT.0;
        self.on.0 & statuses != 0 || self.buffer_limit > 0
    }

    /// The wait before attempt `n` (the second is 1): `backoff`, doubled
    /// each time, at most a second.
    pub fn backoff(&self, n: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1 << n.saturating_sub(1).min(10));
        doubled.min(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_retries_to_a_share_of_requests() {
        let b = Budget::new();
        let limit = RetryBudget {
            percent: 20.0,
            min_per_sec: 2,
        };
        let t = b.epoch;
        for _ in 0..100 {
            b.request(t);
        }
        let mut sent = 0;
        while b.allows(&limit, 1, t) {
            b.spend();
            sent += 1;
        }
        assert_eq!(sent, 20, "20% of 100");
        // Two seconds on, the window is empty: the floor, 2 a second.
        let later = t + Duration::from_secs(3);
        let mut sent = 0;
        while b.allows(&limit, 1, later) {
            b.spend();
            sent += 1;
        }
        assert_eq!(sent, 4, "min_per_sec over two seconds");
        assert!(!b.allows(&limit, 1, later));
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let r = Rules {
            attempts: 8,
            on: RetryOn::default(),
            backoff: Duration::from_millis(25),
            buffer_limit: 0,
            resendable: true,
            by_route: true,
        };
        assert_eq!(r.backoff(1), Duration::from_millis(25));
        assert_eq!(r.backoff(3), Duration::from_millis(100));
        assert_eq!(r.backoff(9), Duration::from_secs(1));
    }
}
