//! One client connection, request after request.
//!
//! Lifecycle: wait for the first byte (header timeout on a new connection,
//! keep-alive timeout after a response) → read and parse the head (header
//! timeout, size limits) → route → answer directly, or hand the request to
//! `proxy::exchange` → keep the pipelined bytes that followed and loop, or
//! close.
//!
//! A connection that is served holds its read buffer and, per request, a
//! write buffer. One that stays quiet is demoted: once a second the shard
//! cancels every wait for a next request (`ShardState::demote_waiting`);
//! the wait hands back its buffer, the connection becomes an `IdleConn` of a
//! few hundred bytes with no slab buffer, and `shard` keeps it in a small
//! task that reads the next request's first byte into one byte of its own.
//! A busy connection never notices: its next request comes before the tick.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::BufResult;
use monoio::io::{
    AsyncWriteRent, CancelableAsyncReadRent, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::accesslog::{Entry, ShardLog};
use crate::balance::PickKey;
use crate::capture::Capture;
use crate::config::{Action, LimitKey, Listener, ListenerTls, MAX_HEADERS_CAP};
use crate::error::Reject;
use crate::http1::body::{BodyReader, Framing};
use crate::http1::encode::{Forward, connection_line, request_fields};
use crate::http1::parse::{HeadError, Request, parse_request};
use crate::io::{Wait, budget, read_more, write_buf};
use crate::metrics::{self, HandshakeOutcome, Record};
use crate::policy::{RoutePolicy, Tags, Vars};
use crate::ratelimit::{self, Policy, Spread, Ticket, Verdict, forwarded_client, ip_key};
use crate::route::Match;
use crate::slab::Lease;
use crate::snapshot::Snapshot;
use crate::state::{Generation, Handshakes, OpenWait, ShardState};

pub type ClientRead = crate::stream::Reader;
pub type ClientWrite = crate::stream::Writer;

/// What a connection's listener asks of it, as the config in force when it
/// was accepted has it.
#[derive(Clone)]
pub struct Side {
    /// A TLS listener's certificates and settings.
    pub tls: Option<Arc<ListenerTls>>,
    /// The Host must be one the connection's certificate covers (else 421).
    pub strict_sni: bool,
}

impl Side {
    pub fn of(l: &Listener) -> Side {
        Side {
            tls: l.tls.clone(),
            strict_sni: l.strict_sni,
        }
    }
}

/// What a served request leaves the connection to do.
pub enum Next {
    KeepAlive,
    Close,
}

/// How a connection's turn on the shard ended.
pub enum After {
    Closed,
    Idle(IdleConn),
}

/// A client connection between requests that holds no slab buffer: what
/// the shard keeps, in a small task, for a client that is quiet.
pub struct IdleConn {
    halves: IdleHalves,
    side: Side,
    peer: IpAddr,
    fd: RawFd,
    /// The next request's first byte is read here (absent while a read has it).
    byte: Option<Box<[u8; 1]>>,
    /// When the wait ends: `client_header` from accept before the first
    /// request (so also the first head's deadline), `keepalive_idle` from
    /// the end of the last response after.
    until: Instant,
    first: bool,
}

/// A quiet connection's halves. A TLS connection's, with its session and
/// stash, wait in a box: the task of every quiet connection is sized for
/// a plain one, two pointers here instead of 112 bytes.
enum IdleHalves {
    Plain(OwnedReadHalf<TcpStream>, OwnedWriteHalf<TcpStream>),
    Boxed(Box<(ClientRead, ClientWrite)>),
}

impl IdleHalves {
    fn new(r: ClientRead, w: ClientWrite) -> IdleHalves {
        match (r, w) {
            (ClientRead::Plain(r), ClientWrite::Plain(w)) => IdleHalves::Plain(r, w),
            (r, w) => IdleHalves::Boxed(Box::new((r, w))),
        }
    }

    fn into_parts(self) -> (ClientRead, ClientWrite) {
        match self {
            IdleHalves::Plain(r, w) => (ClientRead::Plain(r), ClientWrite::Plain(w)),
            IdleHalves::Boxed(halves) => *halves,
        }
    }

    fn tcp(&mut self) -> &mut OwnedReadHalf<TcpStream> {
        match self {
            IdleHalves::Plain(r, _) => r,
            IdleHalves::Boxed(halves) => halves.0.tcp(),
        }
    }
}

/// A quiet connection's read of its next byte: how many came (1, or 0 at
/// the end), and the byte's buffer back.
pub type ByteRead = BufResult<usize, Box<[u8; 1]>>;

/// What a quiet connection's wait for its next byte came to.
pub enum Woken {
    /// The next request's first byte is in: `resume` serves it.
    Request,
    /// The shard cancelled the wait (its second came, or a drain): wait
    /// again, or close if `IdleConn::wait` says so.
    Cancelled,
    /// Closed, or failed.
    Closed,
}

pub struct Conn<'s> {
    pub shard: &'s ShardState,
    pub r: ClientRead,
    pub w: ClientWrite,
    pub side: Side,
    /// Bytes from the client not yet handled: a head, body bytes, pipelined requests.
    pub rbuf: Lease,
    pub peer: IpAddr,
    /// The client socket, to watch for its close while an upstream is slow.
    pub fd: RawFd,
    /// No request served yet: the head timer runs from `accepted`.
    first: bool,
    accepted: Instant,
    /// Kept for when the connection goes quiet (see `IdleConn`).
    byte: Option<Box<[u8; 1]>>,
    /// What the request being served did, for the metrics.
    pub rec: Record,
    /// With an access log: the request's method, target and X-Request-Id,
    /// copied from its head (which is gone by the time it is logged), and
    /// their lengths. Allocated at the first request logged.
    logged: Vec<u8>,
    logged_lens: [usize; 3],
    /// What the access log keeps of the request and response, on a route
    /// that asks for it.
    pub capture: Capture,
    /// Buffers of a response held until it is whole (see `proxy`); empty
    /// between requests.
    pub held: Vec<Lease>,
}

/// A request once its head is parsed, reduced to what serving it needs.
pub struct Plan<'s> {
    pub head_len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    pub minor_version: u8,
    pub head_method: bool,
    pub idempotent: bool,
    pub upgrade: bool,
    /// 0: no limit.
    pub max_body: u64,
    pub deadline: Option<Instant>,
    pub action: Step<'s>,
    /// The route matched, if any, and the method (see `metrics::METHODS`).
    pub route: Option<usize>,
    pub method: u8,
    /// The rate limiter waits on the key's owner shard for a verdict.
    pub ticket: Option<Ticket>,
    /// The route's policies when they change the response, and what they
    /// took from the request for it.
    pub policy: Option<&'s RoutePolicy>,
    pub tags: Tags,
}

#[derive(Debug, Clone, Copy)]
pub enum Step<'s> {
    /// A `respond` route: the response is already in the write buffer.
    Answer {
        close: bool,
        status: u16,
    },
    /// An error response; `allow` is the Allow header of a 405.
    Reject {
        reject: Reject,
        allow: &'s str,
    },
    Proxy {
        upstream: usize,
        endpoint: usize,
    },
    /// A built-in endpoint (`[endpoints]`): the response is in the write
    /// buffer; it is not traffic, so neither counted nor logged.
    Builtin {
        close: bool,
    },
}

/// Serves a new connection until it closes or goes quiet; on a TLS
/// listener, after its handshake (`handshakes`: those in flight on it).
pub async fn serve(
    shard: &ShardState,
    mut stream: TcpStream,
    peer: SocketAddr,
    side: Side,
    handshakes: &Handshakes,
) -> After {
    let _ = stream.set_nodelay(true);
    let Some(mut rbuf) = shard.slab.lease() else {
        // A TLS client could not read a plain 503.
        if side.tls.is_none() {
            refuse(shard, &mut stream).await;
        }
        return After::Closed;
    };
    let fd = stream.as_raw_fd();
    let (r, w) = match &side.tls {
        None => {
            let (r, w) = stream.into_split();
            (ClientRead::Plain(r), ClientWrite::Plain(w))
        }
        Some(tls) => match handshake(shard, &mut stream, tls, handshakes, rbuf.get_mut()).await {
            Some(session) => {
                let (r, w) = crate::tls::split(stream, session);
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
            None => return After::Closed,
        },
    };
    let conn = Conn {
        shard,
        r,
        w,
        side,
        rbuf,
        peer: peer.ip(),
        fd,
        first: true,
        accepted: Instant::now(),
        byte: None,
        rec: Record::new(Instant::now()),
        logged: Vec::new(),
        logged_lens: [0; 3],
        capture: Capture::default(),
        held: Vec::new(),
    };
    conn.run().await
}

/// A TLS handshake within the listener's bounds (`handshakes`: those in
/// flight on it), counted by how it ended.
async fn handshake(
    shard: &ShardState,
    stream: &mut TcpStream,
    tls: &ListenerTls,
    handshakes: &Handshakes,
    buf: &mut Vec<u8>,
) -> Option<crate::tls::Session> {
    use crate::tls::Refused;
    let Some(_slot) = handshakes.slot(tls.max_handshakes) else {
        shard.handshake_ended(HandshakeOutcome::Refused);
        return None;
    };
    let limit = tls.handshake_timeout.0;
    let date = shard.date.get();
    let done = crate::tls::accept(stream, tls.server.clone(), buf, limit, &date).await;
    shard.handshake_ended(match done {
        Ok(_) => HandshakeOutcome::Ok,
        Err(Refused::Failed | Refused::Tls(_)) => HandshakeOutcome::Failed,
        Err(Refused::TimedOut) => HandshakeOutcome::Timeout,
        Err(Refused::PlainHttp) => HandshakeOutcome::PlainHttp,
    });
    done.ok()
}

/// Serves a quiet connection again once its wait has the first byte.
pub async fn resume(shard: &ShardState, idle: IdleConn) -> After {
    let (mut r, mut w) = idle.halves.into_parts();
    let Some(mut rbuf) = shard.slab.lease() else {
        refuse(shard, &mut w).await;
        return After::Closed;
    };
    if let Some(byte) = &idle.byte {
        match r.resume(byte[0]) {
            Ok(Some(b)) => rbuf.get_mut().push(b),
            Ok(None) => {}
            Err(_) => return After::Closed,
        }
    }
    let accepted = match idle.first {
        true => idle.until - shard.current().config.timeouts.client_header.0,
        false => Instant::now(),
    };
    let conn = Conn {
        shard,
        r,
        w,
        side: idle.side,
        rbuf,
        peer: idle.peer,
        fd: idle.fd,
        first: idle.first,
        accepted,
        byte: idle.byte,
        rec: Record::new(Instant::now()),
        logged: Vec::new(),
        logged_lens: [0; 3],
        capture: Capture::default(),
        held: Vec::new(),
    };
    conn.run().await
}

impl IdleConn {
    /// The wait for a quiet connection's next byte, holding no slab buffer,
    /// and the guard that counts it open on the shard's canceller; `None`
    /// when the connection closes instead: its limit has passed, or the
    /// shard is draining. It arms no timer of its own: the shard cancels
    /// the wait in the second the limit passes (see
    /// `ShardState::quiet_handle`). Not an `async fn`, nor is the task that
    /// awaits it (`shard::quiet_conn`): each layer would keep a copy of what
    /// it was given, and the task is what a quiet connection costs.
    pub fn wait<'i, 's>(
        &'i mut self,
        shard: &'s ShardState,
    ) -> Option<(impl Future<Output = ByteRead> + use<'i>, OpenWait<'s>)> {
        // Draining, only a connection yet to send its first request waits on.
        if (shard.draining() && !self.first) || Instant::now() >= self.until {
            return None;
        }
        let byte = self.byte.take()?;
        let (handle, open) = shard.quiet_handle(self.until);
        Some((self.halves.tcp().cancelable_read(byte, handle), open))
    }

    /// Takes the byte back from a finished wait, and says what it came to.
    pub fn woken(&mut self, (res, byte): ByteRead) -> Woken {
        self.byte = Some(byte);
        match res {
            Ok(1) => Woken::Request,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Woken::Cancelled,
            _ => Woken::Closed,
        }
    }
}

impl Conn<'_> {
    async fn run(mut self) -> After {
        loop {
            if self.rbuf.get().is_empty() {
                match self.wait_for_request().await {
                    Ok(()) => {}
                    Err(Waited::Demoted) => return After::Idle(self.into_idle()),
                    Err(Waited::Gone) => break,
                }
            }
            // The generation in force when the request came: a reload
            // while the connection waited applies to it.
            let snap = self.shard.current();
            self.rec = Record::new(Instant::now());
            // A request refused before its plan is logged too: with nothing
            // of the one before.
            self.capture.stop();
            self.logged_lens = [0; 3];
            let next = self.request(&snap).await;
            if self.rec.status != 0 || self.rec.bytes_in > 0 {
                snap.record(&self.rec);
                if let Some(log) = &self.shard.log {
                    self.log(log, &snap);
                }
            }
            match next {
                Next::KeepAlive if !self.shard.draining() => self.first = false,
                _ => break,
            }
        }
        let _ = monoio::time::timeout(Duration::from_secs(1), self.w.shutdown()).await;
        After::Closed
    }

    fn into_idle(mut self) -> IdleConn {
        let byte = self.byte.take().unwrap_or_else(|| Box::new([0]));
        let t = &self.shard.current().config.timeouts;
        let until = if self.first {
            self.accepted + t.client_header.0
        } else {
            Instant::now() + t.keepalive_idle.0
        };
        self.r.release();
        self.w.release();
        IdleConn {
            halves: IdleHalves::new(self.r, self.w),
            side: self.side,
            peer: self.peer,
            fd: self.fd,
            byte: Some(byte),
            until,
            first: self.first,
        }
    }

    async fn request(&mut self, snap: &Generation) -> Next {
        let t = &snap.config.timeouts;
        let Some(mut wbuf) = self.shard.slab.lease() else {
            return self.fail(snap, None, Reject::Unavailable, "", None).await;
        };
        // A new connection has client_header from accept for its whole first
        // head; later heads have it from their first byte.
        let head_from = if self.first {
            self.accepted
        } else {
            Instant::now()
        };
        let head_deadline = head_from + t.client_header.0;
        let limits = snap.head_limits();
        // Bytes already looked at for a line end: a head is parsed again only
        // when new bytes end a line or reach a limit, so a head sent a byte at
        // a time costs one parse per line, not one per byte.
        let mut scanned = 0;
        let mut plan = loop {
            let buf = self.rbuf.get();
            let worth_parsing = memchr::memchr(b'\n', &buf[scanned..]).is_some()
                || buf.len() >= limits.max_header_bytes
                || (buf.len() > limits.max_request_line && memchr::memchr(b'\n', buf).is_none());
            scanned = buf.len();
            if worth_parsing {
                match self.plan(snap, wbuf.get_mut()) {
                    Ok(Some(plan)) => break plan,
                    Ok(None) => {}
                    Err(reject) => return self.fail(snap, Some(&mut wbuf), reject, "", None).await,
                }
            }
            let limit = budget(t.client_header.0, Some(head_deadline));
            match read_more(&mut self.r, &mut self.rbuf, limit).await {
                Ok(_) => {}
                Err(Wait::TimedOut) => {
                    let reject = Reject::RequestTimeout;
                    return self.fail(snap, Some(&mut wbuf), reject, "", None).await;
                }
                Err(_) => return Next::Close,
            }
        };
        if let Step::Builtin { close } = plan.action {
            if !close {
                self.rbuf.get_mut().drain(..plan.head_len);
            }
            return self.answer(snap, &mut wbuf, close).await;
        }
        self.shard.requests.set(self.shard.requests.get() + 1);
        if let (Some(ticket), Some(route)) = (plan.ticket.take(), plan.route)
            && let Err(limited) = self.shard.limiter.settle(ticket, &snap.limits[route]).await
        {
            let reject = Reject::TooManyRequests(limited, snap.config.rate_limit.draft_headers);
            plan.action = Step::Reject { reject, allow: "" };
        }
        if self.shard.log.is_some() {
            self.keep_for_log(plan.head_len);
            if let Some(r) = plan.route.map(|i| &snap.config.routes[i])
                && r.access_log
                && (r.access_log_body > 0 || r.access_log_headers)
            {
                let head = &self.rbuf.get()[..plan.head_len];
                self.capture
                    .start(r.access_log_body, r.access_log_headers, head);
            }
            if let Some(id) = plan.tags.request_id() {
                self.log_request_id(id);
            }
        }
        self.rec.bytes_in = plan.head_len as u64;
        self.rec.route = plan.route;
        self.rec.method = plan.method;
        match plan.action {
            Step::Answer { close, status } => {
                self.rec.status = status;
                // A body we do not read would be taken for the next request.
                let close = close || !plan.keep_alive || plan.framing != Framing::None;
                if !close {
                    self.rbuf.get_mut().drain(..plan.head_len);
                }
                self.answer(snap, &mut wbuf, close).await
            }
            Step::Reject { reject, allow } => {
                // The request was read whole only if it has no body.
                let keep =
                    (plan.keep_alive && plan.framing == Framing::None).then_some(plan.head_len);
                self.fail(snap, Some(&mut wbuf), reject, allow, keep).await
            }
            Step::Proxy { upstream, endpoint } => {
                crate::proxy::exchange(self, snap, &plan, &mut wbuf, upstream, endpoint).await
            }
            // Answered above, before anything was counted.
            Step::Builtin { close } => {
                if !close {
                    self.rbuf.get_mut().drain(..plan.head_len);
                }
                self.answer(snap, &mut wbuf, close).await
            }
        }
    }

    /// Waits for the first bytes of a request into the read buffer. The
    /// shard's once-a-second demotion and a drain cancel the wait; the read
    /// then hands back its buffer, and any bytes that won the race.
    async fn wait_for_request(&mut self) -> Result<(), Waited> {
        // Draining, a connection waits for no further request; one accepted
        // as the drain began still has its first served.
        if self.shard.draining() && !self.first {
            return Err(Waited::Gone);
        }
        loop {
            let limit = {
                let t = &self.shard.current().config.timeouts;
                if self.first {
                    budget(t.client_header.0, Some(self.accepted + t.client_header.0))
                } else {
                    t.keepalive_idle.0
                }
            };
            let mut buf = self.rbuf.take();
            buf.clear();
            let cap = buf.capacity();
            let (handle, _open) = self.shard.waiting_handle();
            let read = self
                .r
                .cancelable_read(monoio::buf::IoBufMut::slice_mut(buf, 0..cap), handle);
            let Ok((res, slice)) = monoio::time::timeout(limit, read).await else {
                return Err(Waited::Gone);
            };
            self.rbuf.put(slice.into_inner());
            return match res {
                Ok(0) => Err(Waited::Gone),
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                    if !self.shard.draining() {
                        Err(Waited::Demoted)
                    } else if self.first {
                        // The drain cancelled every wait; a new connection
                        // still gets its first request served.
                        continue;
                    } else {
                        Err(Waited::Gone)
                    }
                }
                Err(_) => Err(Waited::Gone),
            };
        }
    }

    /// The header that carries a client certificate's subject upstream (if
    /// any listener passes one: dropped from every client), and the subject
    /// on a listener that passes it on.
    fn client_cert<'a>(&'a self, header: Option<&'a str>) -> Option<(&'a str, Option<&'a str>)> {
        let passes = self
            .side
            .tls
            .as_ref()
            .is_some_and(|t| t.client_subject_header.is_some());
        Some((header?, self.r.client_subject().filter(|_| passes)))
    }

    /// Parses the head in the read buffer and decides what to do with it.
    /// Responses decided here are written into `out`; a proxied request's
    /// rewritten head is too. `Ok(None)`: the head is not complete yet.
    fn plan<'s>(
        &self,
        snap: &'s Generation,
        out: &mut Vec<u8>,
    ) -> Result<Option<Plan<'s>>, Reject> {
        let cfg = &snap.config;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let headers = &mut headers[..cfg.limits.max_headers];
        let req = match parse_request(self.rbuf.get(), headers, snap.head_limits()) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(None),
            Err(HeadError::Malformed(why)) => return Err(Reject::BadRequest(why)),
            Err(HeadError::UriTooLong) => return Err(Reject::UriTooLong),
            Err(HeadError::HeadersTooLarge) => return Err(Reject::HeadersTooLarge),
        };
        // Invalid chunk framing that came with the head is refused before
        // anything goes upstream.
        if req.framing == Framing::Chunked {
            let after_head = &self.rbuf.get()[req.head_len..];
            if let Err(e) = BodyReader::new(Framing::Chunked).advance(after_head, |_| {}) {
                return Err(Reject::BadRequest(e.0));
            }
        }
        let mut host_buf = [0u8; 256];
        let host = route_host(req.host, &mut host_buf);
        let mut plan = Plan {
            head_len: req.head_len,
            framing: req.framing,
            keep_alive: req.keep_alive(),
            minor_version: req.minor_version,
            head_method: req.method == "HEAD",
            idempotent: req.is_idempotent(),
            upgrade: req.upgrade,
            max_body: cfg.limits.max_body_bytes.0,
            deadline: None,
            action: Step::Answer {
                close: false,
                status: 0,
            },
            route: None,
            method: metrics::method_index(req.method),
            ticket: None,
            policy: None,
            tags: Tags::new(self.peer),
        };
        out.clear();
        if let Some(which) = snap.builtin.find(req.method, req.path) {
            let now = Instant::now();
            let ready = snap.pools.iter().all(|p| p.ready(now));
            if let Some(d) = snap.builtin.answer(which, ready) {
                let close = !plan.keep_alive || plan.framing != Framing::None;
                let date = self.shard.date.get();
                d.start(out, &date, connection_line(close, plan.minor_version));
                d.finish(out, plan.head_method);
                plan.action = Step::Builtin { close };
                return Ok(Some(plan));
            }
        }
        // Domain fronting: a Host other than the names the certificate
        // chosen by the connection's SNI stands for.
        if self.side.strict_sni
            && let (Some(tls), Some(cert)) = (&self.side.tls, self.r.tls_cert())
            && !tls.certs.covers(cert, host)
        {
            let reject = Reject::Misdirected;
            plan.action = Step::Reject { reject, allow: "" };
            return Ok(Some(plan));
        }
        let (route_idx, route) = match snap.routes.find(host, req.path, req.method) {
            Match::Route(i) => {
                plan.route = Some(i);
                (i, &cfg.routes[i])
            }
            Match::NotFound => {
                let reject = Reject::NotFound;
                plan.action = Step::Reject { reject, allow: "" };
                return Ok(Some(plan));
            }
            Match::MethodNotAllowed(allow) => {
                let reject = Reject::MethodNotAllowed;
                plan.action = Step::Reject { reject, allow };
                return Ok(Some(plan));
            }
        };
        let policy = &snap.limits[route_idx];
        if !policy.is_empty() {
            match self.rate_check(snap, policy, &req) {
                Ok(()) => {}
                Err(Verdict::Limited(limited)) => {
                    let reject = Reject::TooManyRequests(limited, cfg.rate_limit.draft_headers);
                    plan.action = Step::Reject { reject, allow: "" };
                    return Ok(Some(plan));
                }
                // Planned on as if it passed; `request` waits for the verdict.
                Err(Verdict::Wait(ticket)) => plan.ticket = Some(ticket),
            }
        }
        if let Some(max) = route.max_body_bytes {
            plan.max_body = max;
        }
        if let (Framing::Length(n), max) = (plan.framing, plan.max_body)
            && max > 0
            && n > max
        {
            let reject = Reject::PayloadTooLarge;
            plan.action = Step::Reject { reject, allow: "" };
            return Ok(Some(plan));
        }
        let policy = &route.policy;
        policy.tag(req.headers, &mut plan.tags);
        // Answered here whatever the route does: a preflight never goes upstream.
        let close = !plan.keep_alive || plan.framing != Framing::None;
        let connection = connection_line(close, plan.minor_version);
        if policy.is_preflight(req.method, req.headers) {
            policy.write_preflight(out, &plan.tags, &self.shard.date.get(), connection);
            plan.action = Step::Answer { close, status: 204 };
            return Ok(Some(plan));
        }
        match route.action {
            Action::Respond(ref resp) => {
                if let Some(d) = &snap.direct[route_idx] {
                    d.start(out, &self.shard.date.get(), connection);
                    policy.answer_lines(out, &plan.tags);
                    d.finish(out, plan.head_method);
                }
                plan.action = Step::Answer {
                    close,
                    status: resp.status,
                };
                Ok(Some(plan))
            }
            Action::Redirect(ref redirect) => {
                let vars = Vars {
                    client_ip: self.peer,
                    request_id: plan.tags.request_id().unwrap_or_default(),
                    host: req.host,
                    path: req.path,
                    query: req.target.find('?').map_or("", |i| &req.target[i..]),
                };
                let date = self.shard.date.get();
                redirect.write(out, &vars, policy, &plan.tags, &date, connection);
                plan.action = Step::Answer {
                    close,
                    status: redirect.status,
                };
                Ok(Some(plan))
            }
            Action::Proxy(upstream) => {
                let pool = &snap.pools[upstream];
                let hashed = pool.hash_header().and_then(|name| {
                    let h = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name));
                    h.map(|h| h.value)
                });
                let key = PickKey {
                    client: self.peer,
                    header: hashed,
                };
                let Some(endpoint) = pool.pick(&key) else {
                    let reject = Reject::NoEndpoint;
                    plan.action = Step::Reject { reject, allow: "" };
                    return Ok(Some(plan));
                };
                let mut fallback = [0u8; 64];
                let fallback_host = addr_text(pool.addr(endpoint), &mut fallback);
                let (lead, target) = policy.rewrite(req.target).unwrap_or_else(|| {
                    strip(req.target, route.strip_prefix.then_some(&*route.prefix))
                });
                let fwd = Forward {
                    client_ip: self.peer,
                    target_lead: lead,
                    target,
                    set_host: route.set_host.as_deref(),
                    fallback_host,
                    underscores: route.underscores_in_headers,
                    https: self.side.tls.is_some(),
                    client_cert: self.client_cert(cfg.subject_header.as_deref()),
                };
                request_fields(out, &req, &fwd, policy.request_drops());
                if !policy.is_empty() {
                    let vars = Vars {
                        client_ip: self.peer,
                        request_id: plan.tags.request_id().unwrap_or_default(),
                        host: req.host,
                        path: req.path,
                        query: "",
                    };
                    policy.request_lines(out, &plan.tags, &vars);
                }
                out.extend_from_slice(b"\r\n");
                plan.policy = policy.touches_response().then_some(policy);
                let total = route.timeout.unwrap_or(cfg.timeouts.request_total.0);
                plan.deadline = (!total.is_zero()).then(|| Instant::now() + total);
                plan.action = Step::Proxy { upstream, endpoint };
                Ok(Some(plan))
            }
        }
    }

    /// Whether the request passes its route's rate limits. The client is
    /// the peer, or with a trusted peer the address `X-Forwarded-For` names,
    /// or a header's value (`rate_limit.key`).
    fn rate_check(&self, snap: &Snapshot, policy: &Policy, req: &Request) -> Result<(), Verdict> {
        let rl = &snap.config.rate_limit;
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        // The last X-Forwarded-For line: a trusted proxy appends its own,
        // and the lines before it are the client's to write.
        let last_forwarded = || {
            req.headers
                .iter()
                .rev()
                .find(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                .map(|h| h.value)
        };
        let forwarded = (!rl.trusted_proxies.is_empty()
            && rl.trusted_proxies.iter().any(|c| c.contains(self.peer)))
        .then(last_forwarded)
        .flatten()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| forwarded_client(v, &rl.trusted_proxies));
        let ip = forwarded.unwrap_or(self.peer);
        let mut buf = [0u8; 16];
        let (key, spread) = match &rl.key {
            LimitKey::Header(name) if let Some(v) = header(name) => (v, Spread::Owned),
            _ if forwarded.is_some() => (ip_key(ip, &mut buf), Spread::Owned),
            _ if self.shard.steered => (ip_key(ip, &mut buf), Spread::Pinned),
            _ => (ip_key(ip, &mut buf), Spread::Even),
        };
        self.shard
            .limiter
            .check(policy, key, spread, ratelimit::nanos(self.rec.started))
    }

    /// Copies what the access log needs from the head before it goes.
    fn keep_for_log(&mut self, head_len: usize) {
        let head = &self.rbuf.get()[..head_len];
        let mut lines = head.split(|&b| b == b'\n');
        let first = lines.next().unwrap_or_default();
        let mut words = first.split(|&b| b == b' ');
        let method = words.next().unwrap_or_default();
        let target = words.next().unwrap_or_default();
        let id = lines
            .filter_map(|l| {
                let (name, value) = l.split_at(l.iter().position(|&b| b == b':')?);
                name.eq_ignore_ascii_case(b"x-request-id")
                    .then(|| value[1..].trim_ascii())
            })
            .next()
            .unwrap_or_default();
        let id = &id[..id.len().min(MAX_REQUEST_ID)];
        self.logged.clear();
        for part in [method, target, id] {
            self.logged.extend_from_slice(part);
        }
        self.logged_lens = [method.len(), target.len(), id.len()];
    }

    /// Logs `id` as the request's ID: the one its route gave it (generated,
    /// or the client's when trusted), not what the client sent.
    fn log_request_id(&mut self, id: &[u8]) {
        let [m, t, _] = self.logged_lens;
        self.logged.truncate(m + t);
        self.logged.extend_from_slice(id);
        self.logged_lens[2] = id.len();
    }

    /// Writes the request that just ended to the access log, if its route
    /// logs (and its sample takes this one).
    fn log(&mut self, log: &ShardLog, snap: &Generation) {
        let route = self.rec.route.map(|i| &snap.config.routes[i]);
        if route.is_some_and(|r| !r.access_log) {
            return;
        }
        let metrics = &snap.route_metrics[self.rec.route.unwrap_or(snap.route_metrics.len() - 1)];
        if !metrics.sampled(route.map_or(1.0, |r| r.access_log_sample)) {
            return;
        }
        let [m, t, i] = self.logged_lens;
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        log.log(&Entry {
            unix_ms,
            request_id: (i > 0).then(|| &self.logged[m + t..m + t + i]),
            client: self.peer,
            method: &self.logged[..m],
            path: &self.logged[m..m + t],
            route: route.map(|r| r.name.as_str()),
            upstream: self.rec.upstream_addr,
            status: self.rec.status,
            bytes_in: self.rec.bytes_in,
            bytes_out: self.rec.bytes_out,
            total_us: self.rec.started.elapsed().as_micros() as u64,
            upstream_us: self.rec.upstream_us,
            retries: self.rec.retries,
            captured: self.capture.on.then(|| self.capture.render(&snap.redactor)),
        });
    }

    /// Writes the response in `wbuf`; closes (after letting the client read it) if asked.
    pub async fn answer(&mut self, snap: &Snapshot, wbuf: &mut Lease, close: bool) -> Next {
        let limit = snap.config.timeouts.client_send.0;
        self.rec.bytes_out += wbuf.get().len() as u64;
        if write_buf(&mut self.w, wbuf, limit).await.is_err() {
            return Next::Close;
        }
        if close {
            self.linger().await;
            return Next::Close;
        }
        Next::KeepAlive
    }

    /// Answers with an error. `keep`: where the request ends in the read
    /// buffer when the connection may carry another one; `None` closes it.
    /// `wbuf`: the request's write buffer, if it got one.
    pub async fn fail(
        &mut self,
        snap: &Snapshot,
        wbuf: Option<&mut Lease>,
        reject: Reject,
        allow: &str,
        keep: Option<usize>,
    ) -> Next {
        let keep = keep.filter(|_| !reject.closes());
        let close = keep.is_none();
        let limit = snap.config.timeouts.client_send.0;
        self.rec.status = reject.status();
        match send_error(self.shard, &mut self.w, wbuf, reject, allow, close, limit).await {
            Ok(len) => self.rec.bytes_out += len as u64,
            Err(_) => return Next::Close,
        }
        match keep {
            Some(end) => {
                self.rbuf.get_mut().drain(..end);
                Next::KeepAlive
            }
            None => {
                self.linger().await;
                Next::Close
            }
        }
    }

    /// Closes our side, then reads and drops what the client still sends for
    /// a moment, so that closing with unread bytes does not reset the
    /// connection before the client has read our response.
    pub async fn linger(&mut self) {
        let _ = monoio::time::timeout(Duration::from_secs(1), self.w.shutdown()).await;
        let until = Instant::now() + Duration::from_secs(2);
        for _ in 0..64 {
            self.rbuf.get_mut().clear();
            let limit = budget(Duration::from_secs(2), Some(until));
            if read_more(&mut self.r, &mut self.rbuf, limit).await.is_err() {
                break;
            }
        }
    }
}

/// The longest X-Request-Id the access log keeps.
const MAX_REQUEST_ID: usize = 128;

/// Why a wait for the next request ended without one.
enum Waited {
    /// The connection is quiet: it gives its buffer back.
    Demoted,
    /// Closed, failed, timed out, or the shard is draining.
    Gone,
}

/// Writes an error response: every response ringway makes itself because
/// something failed goes out through here. From `buf` when the request has
/// one, else from the shard's reserve of small reply buffers, so it never
/// allocates; with no buffer to be had at all, nothing is sent.
pub async fn send_error<W: AsyncWriteRent>(
    shard: &ShardState,
    w: &mut W,
    buf: Option<&mut Lease>,
    reject: Reject,
    allow: &str,
    close: bool,
    limit: Duration,
) -> Result<usize, Wait> {
    let mut reserve;
    let buf = match buf {
        Some(buf) => buf,
        None => {
            reserve = shard.replies.lease().ok_or(Wait::Failed)?;
            &mut reserve
        }
    };
    let out = buf.get_mut();
    out.clear();
    reject.write(out, close, allow, &shard.date.get());
    let len = out.len();
    write_buf(w, buf, limit).await.map(|()| len)
}

/// Answers 503 to a connection the shard has no capacity for (no slab
/// buffer, or over `max_connections`); the caller then closes it.
pub async fn refuse<W: AsyncWriteRent>(shard: &ShardState, w: &mut W) {
    let limit = Duration::from_secs(1);
    let _ = send_error(shard, w, None, Reject::Unavailable, "", true, limit).await;
}

/// The host to route on: without its port, lower-cased into `buf` (the
/// parser refuses hosts longer than it).
fn route_host<'a>(host: &str, buf: &'a mut [u8; 256]) -> &'a str {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if name.len() > buf.len() {
        return "";
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).unwrap_or("")
}

/// The target with the route's prefix taken off; `("/", rest)` when what is
/// left does not start with a slash ("/api?q" less "/api" is "/?q").
fn strip<'a>(target: &'a str, prefix: Option<&str>) -> (&'static str, &'a str) {
    let Some(prefix) = prefix.map(|p| p.trim_end_matches('/')) else {
        // "?q" is what the parser leaves of "http://h?q".
        return (if target.starts_with('?') { "/" } else { "" }, target);
    };
    match target.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => ("", rest),
        Some(rest) => ("/", rest),
        None => ("", target),
    }
}

fn addr_text(addr: SocketAddr, buf: &mut [u8; 64]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{addr}");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_for_routing() {
        let mut b = [0u8; 256];
        assert_eq!(route_host("Example.COM:8080", &mut b), "example.com");
        assert_eq!(route_host("[::1]:80", &mut b), "[::1]");
        assert_eq!(route_host("h", &mut b), "h");
    }

    #[test]
    fn strip_prefix() {
        assert_eq!(strip("/api/x?q", Some("/api")), ("", "/x?q"));
        assert_eq!(strip("/api?q", Some("/api/")), ("/", "?q"));
        assert_eq!(strip("/api", Some("/api")), ("/", ""));
        assert_eq!(strip("/x", Some("/")), ("", "/x"));
        assert_eq!(strip("/x", None), ("", "/x"));
        assert_eq!(strip("?q", None), ("/", "?q"));
        assert_eq!(strip("?q", Some("/")), ("/", "?q"));
    }
}
