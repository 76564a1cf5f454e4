//! One proxied request: take an upstream connection, send the rewritten
//! head, then stream the request body (`pump`) while relaying the response
//! (`relay`) — concurrently, so that `100 Continue` reaches the client and
//! an early response is not stuck behind an unread body. The response head
//! timeout starts once the body is sent. A 101 turns the connection into a
//! two-way tunnel.
//!
//! A request may be sent again (see `retry`): to another endpoint after a
//! failure the route's `retry` names, and to the same one on a new
//! connection when a reused one was found closed. An attempt that another
//! may follow has its response held (up to `buffer_limit`) until it is
//! whole, so the client sees one response and never half of a failed one.
//!
//! A response is committed before its first byte is written to the client;
//! from then on a failure closes the connection, never writes an error. A
//! client that closes while the upstream is slow to answer is noticed at
//! once (`client_gone`), and the upstream connection is closed with it.

use std::cell::Cell;
use std::future::{Future, pending, poll_fn};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::capture;
use crate::config::{MAX_HEADERS_CAP, RetryOn, Timeouts};
use crate::conn::{ClientRead, ClientWrite, Conn, Next, Plan};
use crate::error::{Reject, UpstreamError};
use crate::http1::body::{BodyReader, Framing};
use crate::http1::encode::{Reply, response_fields, response_head};
use crate::http1::parse::{BadResponse, parse_response};
use crate::io::{Peeked, Wait, budget, peek, read_more, write_buf, write_range};
use crate::metrics::Record;
use crate::retry::Rules;
use crate::slab::{Lease, Slab};
use crate::snapshot::Snapshot;
use crate::state::Generation;
use crate::tunnel::tunnel;
use crate::upstream::{UpstreamConn, UpstreamPool};

type UpRead = crate::stream::Reader;
type UpWrite = crate::stream::Writer;

/// How long an upstream may take to answer before the client is watched
/// for a close: a fast exchange pays nothing for the watch.
const WATCH_AFTER: Duration = Duration::from_millis(10);

/// The response head's read has no limit of its own: `drive`'s head timer
/// (and the request's deadline) bound it.
const FAR: Duration = Duration::from_secs(24 * 3600);

/// How the request body's streaming failed.
#[derive(Debug, Clone, Copy)]
enum PumpError {
    TooLarge,
    Invalid(&'static str),
    TimedOut,
    /// The client closed or failed mid-body: nobody is left to answer.
    ClientGone,
    /// The upstream stopped taking the body; it may have answered early.
    UpstreamBroken,
}

impl PumpError {
    fn reject(self) -> Option<Reject> {
        match self {
            PumpError::TooLarge => Some(Reject::PayloadTooLarge),
            PumpError::Invalid(why) => Some(Reject::BadRequest(why)),
            PumpError::TimedOut => Some(Reject::RequestTimeout),
            PumpError::ClientGone | PumpError::UpstreamBroken => None,
        }
    }

    /// Whether the exchange ends here, without waiting for the response.
    fn ends_exchange(self) -> bool {
        !matches!(self, PumpError::UpstreamBroken)
    }
}

enum Relayed {
    /// The response went out whole.
    Done { reusable: bool, close: bool },
    /// 101 sent to the client; the upstream's bytes after its head start at `rest`.
    Upgraded { rest: usize },
}

#[derive(Debug, Clone, Copy)]
enum RelayError {
    Upstream(UpstreamError),
    /// A response of a status the route retries on, not sent to the client.
    Status(u16),
    /// Writing to the client failed.
    Client,
    /// The client closed while the upstream had not answered yet.
    ClientGone,
}

pub async fn exchange(
    conn: &mut Conn<'_>,
    snap: &Generation,
    plan: &Plan<'_>,
    wbuf: &mut Lease,
    upstream: usize,
    mut endpoint: usize,
) -> Next {
    let shard = conn.shard;
    let pool = &snap.pools[upstream];
    let t = &snap.config.timeouts;
    // Held until the exchange ends; past `max_concurrent`, a 503 at once.
    let Some(_admitted) = pool.admit() else {
        return fail(conn, snap, plan, wbuf, Reject::Overloaded, None).await;
    };
    let Some(mut ubuf) = shard.slab.lease() else {
        return fail(conn, snap, plan, wbuf, Reject::Unavailable, None).await;
    };
    let client_fd = conn.fd;
    let client_tls = conn.side.tls.is_some();
    let route = plan.route.map(|i| &snap.config.routes[i]);
    let mut rules = Rules::new(
        route.and_then(|r| r.retry.as_ref()),
        pool.retries(),
        pool.endpoints(),
    );
    // Sent again only if the upstream may act on it twice and its body,
    // if any, came whole with the head: it is still in the read buffer.
    rules.resendable = (plan.idempotent || route.is_some_and(|r| r.retry_non_idempotent))
        && body_in_hand(conn.rbuf.get(), plan);
    // A response read for an attempt that may be retried goes to a buffer
    // of its own, so the request head in `wbuf` is there to send again.
    let mut answers = (rules.resendable && rules.attempts > 1 && rules.looks_at_responses())
        .then(|| shard.slab.lease())
        .flatten();
    let mut fresh = false;
    conn.rec.upstream = Some(upstream);
    let asked = Instant::now();
    pool.budget.request(asked);
    conn.rec.proxy_us = Some(micros(asked - conn.rec.started));
    // Endpoints this request has failed on (a bit per index): a retry goes
    // to one it has not, where there is one.
    let mut tried = 0u64;
    let attempt = Cell::new(1);
    loop {
        // Whether an attempt may follow this one. When this attempt's
        // response may be held, that is decided now, not after: a response
        // held for a retry the budget then refused could not be streamed as
        // it came. Otherwise only a failure asks, so a request that does
        // not fail reads no clock for it.
        let may_follow = || {
            attempt.get() < rules.attempts
                && plan.deadline.is_none_or(|d| Instant::now() < d)
                && pool.retry_budget_allows(shard.shards, asked)
        };
        let decided = answers.is_some().then(may_follow);
        let more = || decided.unwrap_or_else(may_follow);
        // After a failure of `endpoint`, where the next attempt goes, if
        // the route retries `why` and another attempt may follow. Only a
        // connect failure is retried for a request that may not be sent twice.
        let retry = |why: RetryOn, endpoint: usize, tried: &mut u64| -> Option<usize> {
            pool.failed(endpoint);
            if !rules.on.has(why) || (why != RetryOn::CONNECT && !rules.resendable) {
                return None;
            }
            let mut now_tried = *tried;
            if endpoint < 64 {
                now_tried |= 1 << endpoint;
            }
            // Another endpoint; the same one only for a route's own retry
            // (a 503 may pass), never for the upstream's default.
            let next = pool
                .pick_besides(now_tried)
                .or(rules.by_route.then_some(endpoint))?;
            if !more() {
                if attempt.get() < rules.attempts {
                    pool.budget_refused();
                }
                return None;
            }
            pool.spend_retry();
            *tried = now_tried;
            attempt.set(attempt.get() + 1);
            Some(next)
        };
        conn.rec.upstream_addr = Some(pool.addr(endpoint));
        let (mut up, reused) = match pool.checkout(endpoint, t, fresh, plan.deadline).await {
            Ok(c) => c,
            // Nothing was sent: any request may go elsewhere.
            Err(UpstreamError::Connect) => {
                if let Some(e) = retry(RetryOn::CONNECT, endpoint, &mut tried) {
                    (endpoint, fresh) = (e, false);
                    conn.rec.retries += 1;
                    backoff(&rules, attempt.get(), plan.deadline).await;
                    continue;
                }
                return fail(conn, snap, plan, wbuf, Reject::BadGateway, None).await;
            }
            Err(e) => return fail(conn, snap, plan, wbuf, e.reject(), None).await,
        };
        let stale = reused && !fresh;
        if write_buf(&mut up.w, wbuf, budget(t.upstream_idle.0, plan.deadline))
            .await
            .is_err()
        {
            pool.discard(up);
            // A pooled connection the upstream had closed: the same
            // endpoint, on a new one.
            if stale && rules.resendable {
                fresh = true;
                conn.rec.retries += 1;
                continue;
            }
            if let Some(e) = retry(RetryOn::RESET, endpoint, &mut tried) {
                (endpoint, fresh) = (e, false);
                conn.rec.retries += 1;
                backoff(&rules, attempt.get(), plan.deadline).await;
                continue;
            }
            return fail(conn, snap, plan, wbuf, Reject::BadGateway, None).await;
        }

        // What a failed response may be retried on: only if another
        // attempt may follow, the request may be sent again, and the head
        // to send is still at hand.
        let may_retry = decided == Some(true) && rules.resendable;
        let committed = Cell::new(false);
        let head_done = Cell::new(false);
        let seen = Seen::default();
        let rx = RelayCx {
            plan,
            t,
            committed: &committed,
            head_done: &head_done,
            seen: &seen,
            max_head: snap.config.limits.buffer_size.get(),
            date: shard.date.get(),
            capture: conn.capture.limit,
            retry_on: if may_retry {
                rules.on
            } else {
                RetryOn::default()
            },
            hold: (may_retry && rules.buffer_limit > 0).then_some(rules.buffer_limit),
            slab: &shard.slab,
        };
        let Conn {
            r,
            w,
            rbuf,
            capture,
            held,
            ..
        } = conn;
        // The request body is captured once, on its first attempt.
        let mut again = capture::Body::default();
        let kept_in = match attempt.get() {
            1 if !fresh => &mut capture.request,
            _ => &mut again,
        };
        let kept_out = &mut capture.response;
        let out = match &mut answers {
            Some(a) => a,
            None => &mut *wbuf,
        };
        // Without a body the pump is done at its first poll.
        let pump = pump(r, rbuf, plan, t, &mut up.w, &seen.bytes_in, kept_in);
        let relay = relay(&rx, &mut up.r, w, &mut ubuf, out, held, kept_out);
        let (pumped, relayed) =
            drive(pump, relay, &head_done, plan, t, client_fd, client_tls).await;
        held.clear();

        // Another attempt, for a failure the client has seen nothing of.
        let head_kept = answers.is_some() || !seen.any_head.get();
        let why = match relayed {
            _ if committed.get() || !head_kept => None,
            Some(Err(RelayError::Status(status))) => Some(RetryOn::of_status(status)),
            Some(Err(RelayError::Upstream(UpstreamError::ClosedEarly))) => Some(RetryOn::RESET),
            // Part of a response came: the upstream acted on the request.
            // Only a route that asked for it sends it again.
            Some(Err(RelayError::Upstream(UpstreamError::Cut(_)))) if rules.by_route => {
                Some(RetryOn::RESET)
            }
            Some(Err(RelayError::Upstream(UpstreamError::Timeout))) => Some(RetryOn::TIMEOUT),
            _ => None,
        };
        if let Some(why) = why
            && !matches!(pumped, Some(Err(e)) if e.ends_exchange())
        {
            let closed_early = matches!(
                relayed,
                Some(Err(RelayError::Upstream(UpstreamError::ClosedEarly)))
            );
            if closed_early && stale && rules.resendable {
                pool.discard(up);
                fresh = true;
                conn.rec.retries += 1;
                continue;
            }
            if let Some(e) = retry(why, endpoint, &mut tried) {
                pool.discard(up);
                (endpoint, fresh) = (e, false);
                conn.rec.retries += 1;
                backoff(&rules, attempt.get(), plan.deadline).await;
                continue;
            }
            // Not retried (its failure is counted): answered as any other.
            seen.into_record(&mut conn.rec, asked);
            let ended = Ended {
                pumped,
                relayed,
                committed: false,
            };
            return conclude(conn, snap, plan, wbuf, (pool, endpoint, up, ubuf), ended).await;
        }
        seen.into_record(&mut conn.rec, asked);
        if let Some(Err(RelayError::Upstream(_))) = relayed {
            pool.failed(endpoint);
        }
        let ended = Ended {
            pumped,
            relayed,
            committed: committed.get(),
        };
        return conclude(conn, snap, plan, wbuf, (pool, endpoint, up, ubuf), ended).await;
    }
}

/// How an attempt ended.
struct Ended {
    pumped: Option<Result<usize, PumpError>>,
    relayed: Option<Result<Relayed, RelayError>>,
    /// A response was on its way to the client.
    committed: bool,
}

/// The upstream side of the attempt that answers: its pool, endpoint,
/// connection and read buffer.
type Link<'a> = (&'a UpstreamPool, usize, UpstreamConn, Lease);

/// Answers the request from the attempt that ended it: the connection goes
/// back to the pool or is closed, the client connection is kept (its
/// request read whole), closed, lingered on, or becomes a tunnel; a failure
/// not yet seen by the client is answered with its error.
async fn conclude(
    conn: &mut Conn<'_>,
    snap: &Generation,
    plan: &Plan<'_>,
    wbuf: &mut Lease,
    link: Link<'_>,
    ended: Ended,
) -> Next {
    let (pool, endpoint, mut up, mut ubuf) = link;
    let shard = conn.shard;
    let consumed = match ended.pumped {
        Some(Ok(end)) => Some(end),
        Some(Err(PumpError::ClientGone)) => {
            pool.discard(up);
            shard.client_aborts.set(shard.client_aborts.get() + 1);
            return Next::Close;
        }
        Some(Err(e)) if let Some(reject) = e.reject() => {
            pool.discard(up);
            if ended.committed {
                return Next::Close;
            }
            return fail(conn, snap, plan, wbuf, reject, None).await;
        }
        Some(Err(_)) | None => None,
    };
    match ended.relayed {
        Some(Ok(Relayed::Done { reusable, close })) => {
            if conn.rec.status >= 500 {
                pool.failed(endpoint);
            } else {
                pool.succeeded(endpoint);
            }
            if reusable && consumed.is_some() {
                pool.checkin(up);
            } else {
                pool.discard(up);
            }
            match consumed {
                Some(end) if !close => {
                    conn.rbuf.get_mut().drain(..end);
                    Next::KeepAlive
                }
                Some(_) => Next::Close,
                None => {
                    // Answered before the body was read: the rest of it must not
                    // be taken for a request.
                    conn.linger().await;
                    Next::Close
                }
            }
        }
        Some(Ok(Relayed::Upgraded { rest })) => {
            let start = consumed.unwrap_or(plan.head_len);
            let idle = snap.config.timeouts.upstream_idle.0;
            let Conn { r, w, rbuf, .. } = conn;
            tunnel(
                (r, w, rbuf, start),
                (&mut up.r, &mut up.w, &mut ubuf, rest),
                idle,
            )
            .await;
            pool.discard(up);
            Next::Close
        }
        Some(Err(RelayError::Upstream(e))) => {
            pool.discard(up);
            log::debug!("upstream {} failed: {e:?}", pool.addr(endpoint));
            if ended.committed {
                return Next::Close;
            }
            fail(conn, snap, plan, wbuf, e.reject(), consumed).await
        }
        // A status another attempt was to take, when none may follow.
        Some(Err(RelayError::Status(_))) => {
            pool.discard(up);
            fail(conn, snap, plan, wbuf, Reject::BadGateway, consumed).await
        }
        Some(Err(RelayError::ClientGone)) => {
            pool.discard(up);
            shard.client_aborts.set(shard.client_aborts.get() + 1);
            log::debug!("client {} closed before the response", conn.peer);
            Next::Close
        }
        Some(Err(RelayError::Client)) | None => {
            pool.discard(up);
            Next::Close
        }
    }
}

/// Waits before attempt `attempt`, as the route's `retry.backoff` says,
/// never past the request's deadline.
async fn backoff(rules: &Rules, attempt: u32, deadline: Option<Instant>) {
    let wait = budget(rules.backoff(attempt - 1), deadline);
    if !wait.is_zero() {
        monoio::time::sleep(wait).await;
    }
}

/// Whether the request's body (if any) is all in `rbuf`, after its head.
fn body_in_hand(rbuf: &[u8], plan: &Plan<'_>) -> bool {
    match plan.framing {
        Framing::None => true,
        Framing::Length(n) => (rbuf.len() - plan.head_len) as u64 >= n,
        Framing::Chunked | Framing::Close => BodyReader::new(plan.framing)
            .advance(&rbuf[plan.head_len..], |_| {})
            .is_ok_and(|p| p.done),
    }
}

/// Answers with a proxy error. `consumed`: where the request ended in the
/// read buffer, if it was read whole (else the connection must close).
async fn fail(
    conn: &mut Conn<'_>,
    snap: &Snapshot,
    plan: &Plan<'_>,
    wbuf: &mut Lease,
    reject: Reject,
    consumed: Option<usize>,
) -> Next {
    let consumed = consumed.or((plan.framing == Framing::None).then_some(plan.head_len));
    let keep = consumed.filter(|_| plan.keep_alive);
    conn.fail(snap, Some(wbuf), reject, "", keep).await
}

/// Polls the body pump and the response relay together. Returns early if
/// the pump fails for good; once the pump is done, starts the response-head
/// timer and watches the client for a close until the head is in.
async fn drive<P, R>(
    pump: P,
    relay: R,
    head_done: &Cell<bool>,
    plan: &Plan<'_>,
    t: &Timeouts,
    client_fd: RawFd,
    client_tls: bool,
) -> (
    Option<Result<usize, PumpError>>,
    Option<Result<Relayed, RelayError>>,
)
where
    P: Future<Output = Result<usize, PumpError>>,
    R: Future<Output = Result<Relayed, RelayError>>,
{
    let mut pump = pin!(pump);
    let mut relay = pin!(relay);
    // One timer for the head: it fires first after `WATCH_AFTER`, to start
    // watching the client, then at the head's deadline.
    let mut timer = pin!(None::<monoio::time::Sleep>);
    let mut head_deadline = None;
    let mut watch = pin!(None);
    let mut pumped = None;
    poll_fn(|cx| {
        if pumped.is_none()
            && let Poll::Ready(res) = pump.as_mut().poll(cx)
        {
            // A body the client got wrong, or a client gone, ends the
            // exchange; an upstream that stopped reading does not, as it
            // may have answered early.
            if res.as_ref().is_err_and(|e| e.ends_exchange()) {
                return Poll::Ready((Some(res), None));
            }
            pumped = Some(res);
            let limit = budget(t.upstream_response_header.0, plan.deadline);
            head_deadline = Some(Instant::now() + limit);
            timer.set(Some(monoio::time::sleep(limit.min(WATCH_AFTER))));
        }
        if let Poll::Ready(res) = relay.as_mut().poll(cx) {
            return Poll::Ready((pumped.take(), Some(res)));
        }
        if !head_done.get() {
            while let (Some(t), Some(deadline)) = (timer.as_mut().as_pin_mut(), head_deadline)
                && t.poll(cx).is_ready()
            {
                let now = Instant::now();
                if now >= deadline {
                    let timeout = Err(RelayError::Upstream(UpstreamError::Timeout));
                    return Poll::Ready((pumped.take(), Some(timeout)));
                }
                if watch.is_none() {
                    watch.set(Some(client_gone(client_fd, client_tls)));
                }
                timer.set(Some(monoio::time::sleep(deadline - now)));
            }
            if let Some(w) = watch.as_mut().as_pin_mut()
                && w.poll(cx).is_ready()
            {
                return Poll::Ready((pumped.take(), Some(Err(RelayError::ClientGone))));
            }
        }
        Poll::Pending
    })
    .await
}

/// Resolves once the client has closed its connection or it failed; never
/// while it is open, or, on plain TCP, once it has sent more (a pipelined
/// request). `drive` starts it only after `WATCH_AFTER`, so an exchange
/// answered sooner costs nothing; a slower one costs a poll on a duplicate
/// of the socket, and a peek when that fires. Treats a client that
/// half-closes as gone, as nginx does.
///
/// Over TLS (`tls`) bytes on the socket tell nothing: a close_notify is
/// ciphertext, as a pipelined request is, and a client that closes sends
/// one before its FIN. There the FIN itself is watched for (`peer_shut`),
/// whatever came before it.
async fn client_gone(fd: RawFd, tls: bool) {
    if tls {
        return peer_shut(fd).await;
    }
    // SAFETY: `fd` is the client's socket, which its `Conn` keeps open for
    // the whole exchange that polls this future.
    let client = unsafe { BorrowedFd::borrow_raw(fd) };
    let Ok(watch) = client
        .try_clone_to_owned()
        .and_then(|dup| TcpStream::from_std(std::net::TcpStream::from(dup)))
    else {
        return pending().await;
    };
    loop {
        if watch.readable(false).await.is_err() {
            return;
        }
        match peek(fd) {
            Peeked::Closed | Peeked::Failed => return,
            Peeked::Data => return pending().await,
            Peeked::Empty => {}
        }
    }
}

/// Resolves once the peer of socket `fd` has shut its sending side (its
/// FIN: `POLLRDHUP`), reset the connection, or it failed, however many
/// bytes wait unread before that; never otherwise. monoio polls for
/// `POLLIN` only, which unread bytes satisfy for good, so an epoll instance
/// of this watch's own has `fd` registered for `EPOLLRDHUP` alone (errors
/// and hang-ups are reported whatever the mask), and the shard's driver
/// polls that instance, which is readable once the socket has one of
/// those. Two system calls and a descriptor, when the watch starts.
async fn peer_shut(fd: RawFd) {
    let Ok(watch) = rdhup_watch(fd) else {
        return pending().await;
    };
    if watch.readable(false).await.is_err() {
        // The watch failed, not the client: no longer watched.
        pending::<()>().await;
    }
}

/// An epoll instance with `fd` registered for `EPOLLRDHUP`, as a monoio
/// stream. monoio has no type for an arbitrary descriptor; its
/// `TcpStream::readable` is a poll for `POLLIN` on whatever descriptor it
/// holds (io_uring's `PollAdd`, or an epoll registration), and nothing else
/// is done with this one.
fn rdhup_watch(fd: RawFd) -> std::io::Result<TcpStream> {
    // SAFETY: no pointer is passed; the descriptor returned is ours alone.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `ep` was just created and nothing else owns it.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut event = libc::epoll_event {
        events: libc::EPOLLRDHUP as u32,
        u64: 0,
    };
    // SAFETY: `fd` is the client's socket, which its `Conn` keeps open for
    // the whole exchange (and closing it ends the registration); `event`
    // outlives the call, which copies it.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    TcpStream::from_std(std::net::TcpStream::from(ep))
}

/// Streams the request body from the client to the upstream, validating its
/// framing and size. Returns where the request ends in the read buffer.
async fn pump(
    cr: &mut ClientRead,
    rbuf: &mut Lease,
    plan: &Plan<'_>,
    t: &Timeouts,
    uw: &mut UpWrite,
    bytes_in: &Cell<u64>,
    kept: &mut capture::Body,
) -> Result<usize, PumpError> {
    let mut reader = BodyReader::new(plan.framing);
    let mut pos = plan.head_len;
    let mut total: u64 = 0;
    loop {
        let input = &rbuf.get()[pos..];
        let progress = reader
            .advance(input, |r| {
                total += r.len() as u64;
                kept.push(&input[r]);
            })
            .map_err(|e| PumpError::Invalid(e.0))?;
        bytes_in.set(total);
        if plan.max_body > 0 && total > plan.max_body {
            return Err(PumpError::TooLarge);
        }
        let end = pos + progress.consumed;
        let limit = budget(t.upstream_idle.0, plan.deadline);
        write_range(uw, rbuf, pos..end, limit)
            .await
            .map_err(|_| PumpError::UpstreamBroken)?;
        if progress.done {
            return Ok(end);
        }
        rbuf.get_mut().clear();
        pos = 0;
        let limit = budget(t.client_body_idle.0, plan.deadline);
        match read_more(cr, rbuf, limit).await {
            Ok(_) => {}
            Err(Wait::TimedOut) => return Err(PumpError::TimedOut),
            Err(_) => return Err(PumpError::ClientGone),
        }
    }
}

/// What an exchange saw, for the request's `Record`.
#[derive(Default)]
struct Seen {
    status: Cell<u16>,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    /// A response head was parsed (into the response buffer).
    any_head: Cell<bool>,
    /// When the final response head was read, and when it was written.
    head_read: Cell<Option<Instant>>,
    head_sent: Cell<Option<Instant>>,
}

impl Seen {
    fn add_out(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }

    /// `asked`: when the pool was asked for a connection.
    fn into_record(self, rec: &mut Record, asked: Instant) {
        if self.status.get() != 0 {
            rec.status = self.status.get();
        }
        rec.bytes_in += self.bytes_in.get();
        rec.bytes_out += self.bytes_out.get();
        if let Some(read) = self.head_read.get() {
            rec.upstream_us = Some(micros(read - asked));
            if let Some(sent) = self.head_sent.get() {
                rec.proxy_us = Some(rec.proxy_us.unwrap_or(0) + micros(sent - read));
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

struct RelayCx<'a> {
    plan: &'a Plan<'a>,
    t: &'a Timeouts,
    seen: &'a Seen,
    /// A response head is on its way to the client, set before its first
    /// byte is written: an error can only close the connection now.
    committed: &'a Cell<bool>,
    head_done: &'a Cell<bool>,
    max_head: usize,
    date: [u8; crate::date::LEN],
    /// The most of a text response body the access log keeps; 0: none.
    capture: usize,
    /// Statuses answered by another attempt rather than sent: none for
    /// the last attempt.
    retry_on: RetryOn,
    /// Hold the response, up to this many body bytes, until it is whole
    /// (another attempt may take over a failure till then).
    hold: Option<usize>,
    slab: &'a Rc<Slab>,
}

enum Head {
    /// A 1xx other than 101, `len` bytes long; its rewrite, if any, is in the write buffer.
    Interim(usize),
    Switch(usize),
    Final(FinalHead),
}

/// A final response head, already rewritten into the write buffer.
struct FinalHead {
    len: usize,
    status: u16,
    framing: Framing,
    /// The upstream may carry another request on this connection.
    reusable: bool,
    /// The client connection closes after this response.
    close: bool,
    /// Strip the chunk framing: the client speaks HTTP/1.0.
    dechunk: bool,
    /// The body is text, and captured for the access log.
    captured: bool,
}

/// Reads the response head and relays the response to the client. The
/// head's own timeout is `drive`'s.
async fn relay(
    cx: &RelayCx<'_>,
    ur: &mut UpRead,
    cw: &mut ClientWrite,
    ubuf: &mut Lease,
    wbuf: &mut Lease,
    held: &mut Vec<Lease>,
    kept: &mut capture::Body,
) -> Result<Relayed, RelayError> {
    let plan = cx.plan;
    let send_limit = cx.t.client_send.0;
    ubuf.get_mut().clear();
    let mut seen_any = false;
    let head = loop {
        let parsed = response(cx, ubuf.get(), wbuf.get_mut());
        if let Ok(Some(_)) = parsed {
            cx.seen.any_head.set(true);
        }
        match parsed {
            Err(BadResponse(why)) => {
                return Err(RelayError::Upstream(UpstreamError::Protocol(why)));
            }
            Ok(Some(Head::Interim(len))) => {
                // The upstream has the request: a close from here on is
                // no reason to send it again.
                seen_any = true;
                if !wbuf.get().is_empty() {
                    cx.committed.set(true);
                    cx.seen.add_out(wbuf.get().len());
                    write_buf(cw, wbuf, send_limit)
                        .await
                        .map_err(|_| RelayError::Client)?;
                }
                ubuf.get_mut().drain(..len);
                continue;
            }
            Ok(Some(Head::Switch(len))) => {
                cx.committed.set(true);
                cx.seen.status.set(101);
                cx.seen.add_out(wbuf.get().len());
                write_buf(cw, wbuf, send_limit)
                    .await
                    .map_err(|_| RelayError::Client)?;
                return Ok(Relayed::Upgraded { rest: len });
            }
            Ok(Some(Head::Final(head))) => break head,
            Ok(None) => {}
        }
        seen_any |= !ubuf.get().is_empty();
        match read_more(ur, ubuf, budget(FAR, plan.deadline)).await {
            Ok(_) => {}
            Err(Wait::TimedOut) => return Err(RelayError::Upstream(UpstreamError::Timeout)),
            Err(_) if !seen_any => return Err(RelayError::Upstream(UpstreamError::ClosedEarly)),
            Err(_) => {
                return Err(RelayError::Upstream(UpstreamError::Cut(
                    "upstream closed mid-head",
                )));
            }
        }
    };
    cx.head_done.set(true);
    // A 1xx the client got commits the exchange: this response is its.
    if !cx.committed.get() && cx.retry_on.status(head.status) {
        return Err(RelayError::Status(head.status));
    }
    cx.seen.head_read.set(Some(Instant::now()));
    cx.seen.status.set(head.status);
    let FinalHead {
        len,
        status: _,
        framing,
        reusable,
        close,
        dechunk,
        captured,
    } = head;
    kept.start(cx.capture, captured);

    let mut reader = BodyReader::new(framing);
    let mut pos = len;
    let mut head_pending = true;
    let mut extra = false;
    // While the response is held: the body bytes held so far, after the
    // head in `wbuf` and then in `held`. Nothing reaches the client until
    // the response is whole, or too big to hold.
    let mut holding = cx.hold.filter(|_| !cx.committed.get()).map(|_| 0);
    loop {
        // Run the framing over what arrived; for an HTTP/1.0 client the chunk
        // framing is squeezed out in place, leaving the payload at pos..out_end.
        let buf = ubuf.get_mut();
        let (progress, out_end) = if dechunk {
            reader
                .advance_dechunk(&mut buf[pos..])
                .inspect(|&(_, payload)| kept.push(&buf[pos..pos + payload]))
                .map(|(p, payload)| (p, pos + payload))
        } else {
            let input = &buf[pos..];
            reader
                .advance(input, |r| kept.push(&input[r]))
                .map(|p| (p, pos + p.consumed))
        }
        .map_err(|e| RelayError::Upstream(UpstreamError::Protocol(e.0)))?;
        let consumed_end = pos + progress.consumed;

        if let (Some(n), Some(limit)) = (holding, cx.hold) {
            let body = &ubuf.get()[pos..out_end];
            let room = limit - n;
            let took = hold(wbuf, held, cx.slab, &body[..body.len().min(room)]);
            if took == body.len() {
                holding = Some(n + took);
            } else {
                // Too big to hold: what is held goes out, the rest streams,
                // and no attempt follows this one.
                release(cx, cw, wbuf, held).await?;
                holding = None;
                head_pending = false;
                cx.seen.add_out(out_end - pos - took);
                write_range(cw, ubuf, pos + took..out_end, send_limit)
                    .await
                    .map_err(|_| RelayError::Client)?;
            }
        } else if head_pending {
            // Small responses go out in one write: head and first body bytes.
            let out = wbuf.get_mut();
            let body = &ubuf.get()[pos..out_end];
            let fits = out.capacity() - out.len() >= body.len();
            if fits {
                out.extend_from_slice(body);
            }
            cx.committed.set(true);
            cx.seen.add_out(wbuf.get().len());
            write_buf(cw, wbuf, send_limit)
                .await
                .map_err(|_| RelayError::Client)?;
            cx.seen.head_sent.set(Some(Instant::now()));
            if !fits {
                cx.seen.add_out(out_end - pos);
                write_range(cw, ubuf, pos..out_end, send_limit)
                    .await
                    .map_err(|_| RelayError::Client)?;
            }
            head_pending = false;
        } else {
            cx.seen.add_out(out_end - pos);
            write_range(cw, ubuf, pos..out_end, send_limit)
                .await
                .map_err(|_| RelayError::Client)?;
        }
        if progress.done {
            extra = ubuf.get().len() > consumed_end;
            break;
        }
        ubuf.get_mut().clear();
        pos = 0;
        let limit = budget(cx.t.upstream_idle.0, plan.deadline);
        match read_more(ur, ubuf, limit).await {
            Ok(_) => {}
            Err(Wait::Closed) if framing == Framing::Close => break,
            Err(Wait::TimedOut) => return Err(RelayError::Upstream(UpstreamError::Timeout)),
            Err(_) => {
                return Err(RelayError::Upstream(UpstreamError::Cut(
                    "upstream closed mid-body",
                )));
            }
        }
    }
    if holding.is_some() {
        release(cx, cw, wbuf, held).await?;
    }
    Ok(Relayed::Done {
        reusable: reusable && !extra,
        close,
    })
}

/// Keeps `bytes` of a held response: in the spare room of `out` (after the
/// head), then in buffers leased for it. Returns how many it kept: fewer
/// when the slab is three quarters leased, so that held responses never
/// take the buffers new connections and requests need.
fn hold(out: &mut Lease, held: &mut Vec<Lease>, slab: &Rc<Slab>, mut bytes: &[u8]) -> usize {
    let total = bytes.len();
    let has_room = |b: &Lease| b.get().len() < b.get().capacity();
    while !bytes.is_empty() {
        let buf = match held.last_mut() {
            Some(last) if has_room(last) => last.get_mut(),
            None if has_room(out) => out.get_mut(),
            _ if slab.leased() * 4 >= slab.max() * 3 => break,
            _ => match slab.lease() {
                Some(lease) => {
                    held.push(lease);
                    continue;
                }
                None => break,
            },
        };
        let n = bytes.len().min(buf.capacity() - buf.len());
        buf.extend_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
    }
    total - bytes.len()
}

/// Sends a held response, head first: from here on it is the client's.
async fn release(
    cx: &RelayCx<'_>,
    cw: &mut ClientWrite,
    out: &mut Lease,
    held: &mut Vec<Lease>,
) -> Result<(), RelayError> {
    let limit = cx.t.client_send.0;
    cx.committed.set(true);
    cx.seen.add_out(out.get().len());
    write_buf(cw, out, limit)
        .await
        .map_err(|_| RelayError::Client)?;
    cx.seen.head_sent.set(Some(Instant::now()));
    for lease in held.iter_mut() {
        cx.seen.add_out(lease.get().len());
        write_buf(cw, lease, limit)
            .await
            .map_err(|_| RelayError::Client)?;
    }
    held.clear();
    Ok(())
}

/// Parses a response head in `buf` and writes its rewrite into `out`.
fn response(cx: &RelayCx<'_>, buf: &[u8], out: &mut Vec<u8>) -> Result<Option<Head>, BadResponse> {
    let plan = cx.plan;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let Some(resp) = parse_response(buf, &mut headers, plan.head_method, cx.max_head)? else {
        return Ok(None);
    };
    out.clear();
    let keep = Reply {
        close: false,
        keep_alive_1_0: false,
        dechunk: false,
        date: &cx.date,
    };
    if resp.status == 101 {
        if !plan.upgrade {
            return Err(BadResponse("101 to a request that asked for no upgrade"));
        }
        response_head(out, &resp, keep);
        return Ok(Some(Head::Switch(resp.head_len)));
    }
    if resp.status < 200 {
        // An HTTP/1.0 client is sent no interim responses (RFC 9110 §15.2).
        if plan.minor_version == 1 {
            response_head(out, &resp, keep);
        }
        return Ok(Some(Head::Interim(resp.head_len)));
    }
    let dechunk = resp.framing == Framing::Chunked && plan.minor_version == 0;
    let close = !plan.keep_alive || resp.framing == Framing::Close || dechunk;
    let reply = Reply {
        close,
        keep_alive_1_0: plan.minor_version == 0 && !close,
        dechunk,
        date: &cx.date,
    };
    match plan.policy {
        None => response_head(out, &resp, reply),
        Some(policy) => {
            response_fields(out, &resp, reply, policy.response_drops());
            policy.response_lines(out, &plan.tags);
            out.extend_from_slice(b"\r\n");
        }
    }
    Ok(Some(Head::Final(FinalHead {
        len: resp.head_len,
        status: resp.status,
        framing: resp.framing,
        reusable: resp.keep_alive,
        close,
        dechunk,
        captured: cx.capture > 0 && capture::text_response(resp.headers),
    })))
}
