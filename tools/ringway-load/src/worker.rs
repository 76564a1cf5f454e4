//! One load thread: a monoio runtime running its share of the connections.
//! Each connection is a task that sends a request, reads the whole
//! response, records the latency in the thread's histograms and goes on:
//! at once in closed loop, when the thread's pacer hands it the next due
//! request in open loop.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use ringway::http1::body::{BodyReader, Framing};
use ringway::http1::parse::{EMPTY_HEADER, parse_response};

use crate::pacer::{Clock, Dispatch, Schedule};

/// What one thread is to do.
pub struct Plan {
    pub conns: usize,
    /// Index of this thread's first connection among all of them.
    pub conn_offset: usize,
    pub addr: SocketAddr,
    pub requests: Vec<Bytes>,
    pub head_method: bool,
    /// Results before this are warm-up and dropped.
    pub measure_from: Instant,
    pub end: Instant,
    /// Open loop: when this thread's requests are due.
    pub schedule: Option<Schedule>,
    pub max_requests: u64,
    pub timeout: Duration,
    pub keepalive: bool,
    pub stop: Arc<AtomicBool>,
    /// Completed requests, for the progress line.
    pub progress: Arc<AtomicU64>,
    /// (second since measuring began, that second's latencies).
    pub intervals: Sender<(usize, Histogram<u64>)>,
}

/// Outcomes by kind, counted while measuring.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub ok: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
    pub protocol: u64,
    /// Times the scheduler took the CPU from a load thread during the run.
    pub preempted: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.ok += o.ok;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.connect += o.connect;
        self.io += o.io;
        self.timeout += o.timeout;
        self.protocol += o.protocol;
        self.preempted += o.preempted;
    }

    /// Requests that got a whole response, whatever its status.
    pub fn completed(&self) -> u64 {
        self.ok + self.status_4xx + self.status_5xx
    }
}

pub struct ThreadResult {
    pub hist: Histogram<u64>,
    /// Open loop: request sent minus intended send time, in ns.
    pub lag: Histogram<u64>,
    pub counts: Counts,
}

/// Schedule lag in nanoseconds, 1 ns to 1 hour at 3 significant digits.
pub fn lag_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static bounds are valid")
}

struct State {
    hist: Histogram<u64>,
    second: Histogram<u64>,
    lag: Histogram<u64>,
    counts: Counts,
    started: u64,
}

/// A whole response, and when its request was sent.
struct Exchanged {
    status: u16,
    keep: bool,
    sent: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Fail {
    Io,
    Closed,
    Protocol,
}

pub fn request_bytes(
    method: &str,
    host: &str,
    path: &str,
    headers: &[String],
    body: usize,
    keepalive: bool,
) -> Bytes {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringway-load\r\n");
    for h in headers {
        r.push_str(h.trim());
        r.push_str("\r\n");
    }
    if body > 0 {
        r.push_str(&format!("Content-Length: {body}\r\n"));
    }
    if !keepalive {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.resize(bytes.len() + body, b'x');
    Bytes::from(bytes)
}

pub fn run(plan: Plan) -> anyhow::Result<ThreadResult> {
    if plan.schedule.is_some() {
        // Best effort: without it sends are later on a busy machine, as the lag shows.
        let _ = crate::sched::ask_for_short_slices();
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    let io_uring = matches!(rt, monoio::FusionRuntime::Uring(_));
    let preempted = crate::sched::preemptions();
    let plan = Rc::new(plan);
    let state = Rc::new(RefCell::new(State {
        hist: ringway::hgrm::latency_histogram(),
        second: ringway::hgrm::latency_histogram(),
        lag: lag_histogram(),
        counts: Counts::default(),
        started: 0,
    }));
    rt.block_on({
        let (plan, state) = (plan.clone(), state.clone());
        async move {
            let dispatch = plan
                .schedule
                .map(|schedule| Rc::new(Dispatch::new(schedule, plan.conns)));
            let tasks: Vec<_> = (0..plan.conns)
                .map(|i| {
                    monoio::spawn(connection(plan.clone(), state.clone(), dispatch.clone(), i))
                })
                .collect();
            let pacer = dispatch.map(|d| {
                let plan = plan.clone();
                monoio::spawn(async move {
                    crate::pacer::pace(d, Clock::new(io_uring), &plan.stop).await;
                })
            });
            let ticker = monoio::spawn(ticker(plan.clone(), state.clone()));
            for t in tasks {
                t.await;
            }
            if let Some(p) = pacer {
                p.await;
            }
            ticker.await;
        }
    });
    let state = Rc::try_unwrap(state).map_err(|_| anyhow::anyhow!("tasks outlived the run"))?;
    let mut state = state.into_inner();
    state.counts.preempted = crate::sched::preemptions().saturating_sub(preempted);
    Ok(ThreadResult {
        hist: state.hist,
        lag: state.lag,
        counts: state.counts,
    })
}

/// Sends each second's histogram to the main thread for the interval log.
async fn ticker(plan: Rc<Plan>, state: Rc<RefCell<State>>) {
    let mut k = 0usize;
    loop {
        let tick = plan.measure_from + Duration::from_secs(k as u64 + 1);
        let until = tick.min(plan.end);
        let now = Instant::now();
        if until > now {
            monoio::time::sleep(until - now).await;
        }
        let h = {
            let mut s = state.borrow_mut();
            let h = s.second.clone();
            s.second.reset();
            h
        };
        if Instant::now() > plan.measure_from {
            let _ = plan.intervals.send((k, h));
        }
        k += 1;
        if until >= plan.end || plan.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Connection `id` of this thread, until the run or its schedule is over.
async fn connection(
    plan: Rc<Plan>,
    state: Rc<RefCell<State>>,
    dispatch: Option<Rc<Dispatch>>,
    id: usize,
) {
    let mut stream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    // Connections start at different paths of the list.
    let mut k = plan.conn_offset + id;
    loop {
        if Instant::now() >= plan.end || plan.stop.load(Ordering::Relaxed) {
            if let Some(d) = &dispatch {
                d.finish();
            }
            return;
        }
        let intended = match &dispatch {
            Some(d) => match d.next_send(id).await {
                Some(due) => due,
                None => return,
            },
            None => {
                let mut s = state.borrow_mut();
                if s.started >= plan.max_requests {
                    return;
                }
                s.started += 1;
                Instant::now()
            }
        };
        let measuring = intended >= plan.measure_from;
        if stream.is_none() {
            match monoio::time::timeout(plan.timeout, TcpStream::connect_addr(plan.addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Ok(Err(_)) | Err(_) => {
                    if measuring {
                        state.borrow_mut().counts.connect += 1;
                    }
                    // Refused connections fail at once: do not spin on them.
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let req = plan.requests[k % plan.requests.len()].clone();
        k += 1;
        let result =
            monoio::time::timeout(plan.timeout, exchange(s, req, &mut buf, plan.head_method)).await;
        let latency = intended.elapsed();
        plan.progress.fetch_add(1, Ordering::Relaxed);
        let mut st = state.borrow_mut();
        let keep = match result {
            Ok(Ok(done)) => {
                if measuring {
                    let us = u64::try_from(latency.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let _ = st.hist.record(us);
                    let _ = st.second.record(us);
                    if dispatch.is_some() {
                        let lag = done.sent.saturating_duration_since(intended);
                        let ns = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
                        let _ = st.lag.record(ns.max(1));
                    }
                    match done.status {
                        400..=499 => st.counts.status_4xx += 1,
                        500.. => st.counts.status_5xx += 1,
                        _ => st.counts.ok += 1,
                    }
                }
                done.keep && plan.keepalive
            }
            Ok(Err(fail)) => {
                if measuring {
                    match fail {
                        Fail::Protocol => st.counts.protocol += 1,
                        Fail::Io | Fail::Closed => st.counts.io += 1,
                    }
                }
                false
            }
            Err(_) => {
                if measuring {
                    st.counts.timeout += 1;
                }
                false
            }
        };
        if !keep {
            stream = None;
        }
    }
}

/// One request and its whole response; the flag says the connection may be reused.
async fn exchange(
    s: &mut TcpStream,
    req: Bytes,
    buf: &mut Vec<u8>,
    head_method: bool,
) -> Result<Exchanged, Fail> {
    // Taken before the write: on a shared core the write can wake the
    // origin, which may run before the write returns.
    let sent = Instant::now();
    let (res, _) = s.write_all(req).await;
    res.map_err(|_| Fail::Io)?;
    buf.clear();
    let (status, keep, framing, head_len) = loop {
        let head = {
            let mut headers = [EMPTY_HEADER; 64];
            match parse_response(buf, &mut headers, head_method, buf.capacity()) {
                Ok(Some(r)) => Some((r.status, r.keep_alive, r.framing, r.head_len)),
                Ok(None) => None,
                Err(_) => return Err(Fail::Protocol),
            }
        };
        match head {
            // An interim response: the final one follows.
            Some((status, _, _, len)) if status < 200 => {
                buf.drain(..len);
                continue;
            }
            Some(head) => break head,
            None => read_more(s, buf).await?,
        }
    };
    let mut reader = BodyReader::new(framing);
    let mut pos = head_len;
    loop {
        let p = reader
            .advance(&buf[pos..], |_| {})
            .map_err(|_| Fail::Protocol)?;
        pos += p.consumed;
        if p.done {
            return if buf.len() > pos {
                Err(Fail::Protocol)
            } else {
                Ok(Exchanged { status, keep, sent })
            };
        }
        buf.clear();
        pos = 0;
        match read_more(s, buf).await {
            Ok(()) => {}
            Err(Fail::Closed) if framing == Framing::Close => {
                return Ok(Exchanged {
                    status,
                    keep: false,
                    sent,
                });
            }
            Err(e) => return Err(e),
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Fail> {
    let (len, cap) = (buf.len(), buf.capacity());
    if len == cap {
        return Err(Fail::Protocol);
    }
    let (res, slice) = s
        .read(monoio::buf::IoBufMut::slice_mut(
            std::mem::take(buf),
            len..cap,
        ))
        .await;
    *buf = slice.into_inner();
    match res {
        Ok(0) => Err(Fail::Closed),
        Ok(_) => Ok(()),
        Err(_) => Err(Fail::Io),
    }
}
