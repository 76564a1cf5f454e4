//! Counters and latency histograms. Each shard keeps its own, in plain
//! `Cell`s and `RefCell`s that only it touches: recording a request is a few
//! increments and three histogram records, with no atomic and no
//! allocation. The control thread asks every shard for a `Report` (through
//! the mailbox), sums them by name, and renders them: the Prometheus text
//! (`render_prometheus`) or a histogram dump (`hgrm`).
//!
//! Latency, in microseconds from 1 µs to 60 s at 3 significant digits:
//! - `total`: from the request's first byte in the buffer to its response's
//!   last byte handed to the kernel;
//! - `upstream`: from asking the pool for a connection (connect included)
//!   to the response head read;
//! - `proxy`: ringway's own part on the way: from the request's first byte
//!   to asking the pool (reading the head, parsing, routing), plus from the
//!   response head read to it written to the client.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use hdrhistogram::Histogram;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Request methods counted apart; the rest are "other".
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "other",
];
/// Status classes; "none" is a request that got no response (the client
/// left, or the connection failed before one was sent).
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// The route name requests that matched no route are counted under.
pub const UNROUTED: &str = "(none)";

pub fn method_index(method: &str) -> u8 {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1) as u8
}

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => CLASSES.len() - 1,
    }
}

/// What one request did, filled in as it is served and recorded at its end.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub started: Instant,
    /// Index into the generation's routes; `None`: no route matched.
    pub route: Option<usize>,
    pub method: u8,
    /// 0: no response was sent.
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Index into the generation's upstreams, for a proxied request, and
    /// the endpoint it went to.
    pub upstream: Option<usize>,
    pub upstream_addr: Option<std::net::SocketAddr>,
    pub upstream_us: Option<u64>,
    pub proxy_us: Option<u64>,
    pub retries: u32,
}

impl Record {
    pub fn new(started: Instant) -> Record {
        Record {
            started,
            route: None,
            // Until the head is parsed, the method is not known.
            method: (METHODS.len() - 1) as u8,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream: None,
            upstream_addr: None,
            upstream_us: None,
            proxy_us: None,
            retries: 0,
        }
    }
}

/// The three latency histograms of a route or an upstream.
#[derive(Clone)]
pub struct Latency {
    pub total: Histogram<u64>,
    pub upstream: Histogram<u64>,
    pub proxy: Histogram<u64>,
}

/// 60 s is the highest value recorded apart; longer ones count as 60 s.
const HIGHEST_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("static bounds are valid")
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            total: histogram(),
            upstream: histogram(),
            proxy: histogram(),
        }
    }

    fn record(&mut self, r: &Record, total_us: u64) {
        // Within the histograms' bounds: no resize, no allocation.
        self.total.saturating_record(total_us.clamp(1, HIGHEST_US));
        if let Some(us) = r.upstream_us {
            self.upstream.saturating_record(us.clamp(1, HIGHEST_US));
        }
        if let Some(us) = r.proxy_us {
            self.proxy.saturating_record(us.clamp(1, HIGHEST_US));
        }
    }

    fn add(&mut self, other: &Latency) {
        // Same bounds on both sides: cannot fail.
        let _ = self.total.add(&other.total);
        let _ = self.upstream.add(&other.upstream);
        let _ = self.proxy.add(&other.proxy);
    }

    fn reset(&mut self) {
        self.total.reset();
        self.upstream.reset();
        self.proxy.reset();
    }

    pub fn get(&self, metric: Metric) -> &Histogram<u64> {
        match metric {
            Metric::Total => &self.total,
            Metric::Upstream => &self.upstream,
            Metric::Proxy => &self.proxy,
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

/// Which of the three latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Total,
    Upstream,
    Proxy,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "total" => Some(Metric::Total),
            "upstream" => Some(Metric::Upstream),
            "proxy" => Some(Metric::Proxy),
            _ => None,
        }
    }
}

/// One route's counters on one shard, kept across reloads by name.
pub struct RouteMetrics {
    pub name: String,
    /// By method, then status class.
    requests: [[Cell<u64>; CLASSES.len()]; METHODS.len()],
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    latency: RefCell<Latency>,
    /// The access log's sample: logged when this passes 1.
    sample: Cell<f64>,
}

impl RouteMetrics {
    /// Whether the access log takes this request, at `rate` (0 to 1): one
    /// in every 1/rate, evenly.
    pub fn sampled(&self, rate: f64) -> bool {
        if rate >= 1.0 {
            return true;
        }
        let s = self.sample.get() + rate;
        let take = s >= 1.0;
        self.sample.set(if take { s - 1.0 } else { s });
        take
    }

    pub fn new(name: &str) -> RouteMetrics {
        RouteMetrics {
            name: name.to_string(),
            requests: Default::default(),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            latency: RefCell::new(Latency::new()),
            sample: Cell::new(0.0),
        }
    }

    pub fn record(&self, r: &Record, total_us: u64) {
        let c = &self.requests[usize::from(r.method)][class_index(r.status)];
        c.set(c.get() + 1);
        self.bytes_in.set(self.bytes_in.get() + r.bytes_in);
        self.bytes_out.set(self.bytes_out.get() + r.bytes_out);
        self.latency.borrow_mut().record(r, total_us);
    }

    fn report(&self, latency: bool, reset: bool) -> RouteReport {
        let mut l = self.latency.borrow_mut();
        let report = RouteReport {
            name: self.name.clone(),
            requests: self
                .requests
                .each_ref()
                .map(|m| m.each_ref().map(Cell::get)),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            latency: latency.then(|| l.clone()),
        };
        if reset {
            l.reset();
        }
        report
    }
}

/// One upstream's counters on one shard, kept across reloads by name.
pub struct UpstreamMetrics {
    pub name: String,
    pub connects: Cell<u64>,
    pub reuses: Cell<u64>,
    pub failures: Cell<u64>,
    pub retries: Cell<u64>,
    /// Retries wanted that the retry budget did not allow.
    pub retries_refused: Cell<u64>,
    pub ejections: Cell<u64>,
    /// Requests answered 503 at once: every endpoint down, or past
    /// `max_concurrent`.
    pub no_endpoint: Cell<u64>,
    pub overloaded: Cell<u64>,
    latency: RefCell<Latency>,
}

impl UpstreamMetrics {
    pub fn new(name: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            name: name.to_string(),
            connects: Cell::new(0),
            reuses: Cell::new(0),
            failures: Cell::new(0),
            retries: Cell::new(0),
            retries_refused: Cell::new(0),
            ejections: Cell::new(0),
            no_endpoint: Cell::new(0),
            overloaded: Cell::new(0),
            latency: RefCell::new(Latency::new()),
        }
    }

    pub fn record(&self, r: &Record, total_us: u64) {
        self.retries.set(self.retries.get() + u64::from(r.retries));
        self.latency.borrow_mut().record(r, total_us);
    }

    fn report(&self, latency: bool, reset: bool) -> UpstreamReport {
        let mut l = self.latency.borrow_mut();
        let report = UpstreamReport {
            name: self.name.clone(),
            connects: self.connects.get(),
            reuses: self.reuses.get(),
            failures: self.failures.get(),
            retries: self.retries.get(),
            retries_refused: self.retries_refused.get(),
            ejections: self.ejections.get(),
            no_endpoint: self.no_endpoint.get(),
            overloaded: self.overloaded.get(),
            latency: latency.then(|| l.clone()),
        };
        if reset {
            l.reset();
        }
        report
    }
}

pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// A route's figures as a shard reports them to the control thread.
#[derive(Clone)]
pub struct RouteReport {
    pub name: String,
    pub requests: [[u64; CLASSES.len()]; METHODS.len()],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: Option<Latency>,
}

#[derive(Clone)]
pub struct UpstreamReport {
    pub name: String,
    pub connects: u64,
    pub reuses: u64,
    pub failures: u64,
    pub retries: u64,
    pub retries_refused: u64,
    pub ejections: u64,
    pub no_endpoint: u64,
    pub overloaded: u64,
    pub latency: Option<Latency>,
}

/// Everything one shard reports; `merge` sums shards.
#[derive(Clone, Default)]
pub struct Report {
    pub routes: Vec<RouteReport>,
    pub upstreams: Vec<UpstreamReport>,
    pub accepted: u64,
    pub connections: u64,
    pub client_aborts: u64,
    pub buffers_leased: u64,
    pub buffers_max: u64,
    pub log_dropped: u64,
    /// Requests turned away by a rate limit: client, route, global.
    pub rate_limited: [u64; 3],
    pub rate_limit_entries: u64,
    pub rate_limit_evicted: u64,
    /// Requests of a key another shard owns, decided without its lease.
    pub rate_limit_alone: u64,
    /// TLS handshakes by how they ended, indexed by `HandshakeOutcome`.
    pub tls_handshakes: [u64; HandshakeOutcome::COUNT],
}

/// How a TLS handshake on a client connection ended: the `result` label of
/// `ringway_tls_handshakes_total`, and the index of its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    Ok,
    /// Not TLS, the peer closed, or rustls refused it.
    Failed,
    /// Not done within `handshake_timeout`.
    Timeout,
    /// Plain HTTP on the TLS port (answered 400).
    PlainHttp,
    /// Over the listener's `max_handshakes` on the shard.
    Refused,
}

impl HandshakeOutcome {
    pub const COUNT: usize = 5;
    /// Every outcome, each at its own index.
    pub const ALL: [HandshakeOutcome; Self::COUNT] = [
        HandshakeOutcome::Ok,
        HandshakeOutcome::Failed,
        HandshakeOutcome::Timeout,
        HandshakeOutcome::PlainHttp,
        HandshakeOutcome::Refused,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Ok => "ok",
            HandshakeOutcome::Failed => "failed",
            HandshakeOutcome::Timeout => "timeout",
            HandshakeOutcome::PlainHttp => "plain_http",
            HandshakeOutcome::Refused => "refused",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Which latency histograms a report clears once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reset {
    Nothing,
    /// Every route's (not the upstreams').
    Routes,
    Route(String),
    Upstream(String),
}

impl Reset {
    fn route(&self, name: &str) -> bool {
        match self {
            Reset::Routes => true,
            Reset::Route(r) => r == name,
            _ => false,
        }
    }

    fn upstream(&self, name: &str) -> bool {
        matches!(self, Reset::Upstream(u) if u == name)
    }
}

/// Reports a shard's routes and upstreams; `latency` includes copies of the
/// histograms, and those `reset` names are cleared after.
pub fn report<'a>(
    routes: impl Iterator<Item = &'a RouteMetrics>,
    upstreams: impl Iterator<Item = &'a UpstreamMetrics>,
    latency: bool,
    reset: &Reset,
) -> Report {
    Report {
        routes: routes
            .map(|r| r.report(latency, reset.route(&r.name)))
            .collect(),
        upstreams: upstreams
            .map(|u| u.report(latency, reset.upstream(&u.name)))
            .collect(),
        ..Report::default()
    }
}

impl Report {
    /// Adds `other` in, route by route and upstream by upstream (by name).
    pub fn merge(&mut self, other: &Report) {
        for r in &other.routes {
            match self.routes.iter_mut().find(|m| m.name == r.name) {
                Some(m) => {
                    for (a, b) in m.requests.iter_mut().zip(&r.requests) {
                        for (x, y) in a.iter_mut().zip(b) {
                            *x += y;
                        }
                    }
                    m.bytes_in += r.bytes_in;
                    m.bytes_out += r.bytes_out;
                    merge_latency(&mut m.latency, &r.latency);
                }
                None => self.routes.push(r.clone()),
            }
        }
        for u in &other.upstreams {
            match self.upstreams.iter_mut().find(|m| m.name == u.name) {
                Some(m) => {
                    m.connects += u.connects;
                    m.reuses += u.reuses;
                    m.failures += u.failures;
                    m.retries += u.retries;
                    m.retries_refused += u.retries_refused;
                    m.ejections += u.ejections;
                    m.no_endpoint += u.no_endpoint;
                    m.overloaded += u.overloaded;
                    merge_latency(&mut m.latency, &u.latency);
                }
                None => self.upstreams.push(u.clone()),
            }
        }
        self.accepted += other.accepted;
        self.connections += other.connections;
        self.client_aborts += other.client_aborts;
        self.buffers_leased += other.buffers_leased;
        self.buffers_max += other.buffers_max;
        self.log_dropped += other.log_dropped;
        for (a, b) in self.rate_limited.iter_mut().zip(other.rate_limited) {
            *a += b;
        }
        for (a, b) in self.tls_handshakes.iter_mut().zip(other.tls_handshakes) {
            *a += b;
        }
        self.rate_limit_entries += other.rate_limit_entries;
        self.rate_limit_evicted += other.rate_limit_evicted;
        self.rate_limit_alone += other.rate_limit_alone;
    }
}

fn merge_latency(into: &mut Option<Latency>, from: &Option<Latency>) {
    match (into.as_mut(), from) {
        (Some(a), Some(b)) => a.add(b),
        (None, Some(b)) => *into = Some(b.clone()),
        _ => {}
    }
}

/// Bucket bounds of the latency histograms on `/metrics`, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// The merged report, and process-wide figures, in the Prometheus text
/// exposition format (OpenMetrics flavour, which Prometheus reads), by the
/// `prometheus-client` crate's encoder.
pub fn render_prometheus(
    report: &Report,
    generation: u64,
    reloads_failed: u64,
    checked: Vec<Checked>,
) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Collect {
        report: report.clone(),
        generation,
        reloads_failed,
        checked,
    }));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// An endpoint an active health check watches, and its last verdict.
#[derive(Debug, Clone)]
pub struct Checked {
    pub upstream: String,
    pub endpoint: String,
    pub healthy: bool,
}

#[derive(Clone)]
struct Collect {
    report: Report,
    generation: u64,
    reloads_failed: u64,
    checked: Vec<Checked>,
}

impl std::fmt::Debug for Collect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collect")
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        if labels.is_empty() {
            ConstCounter::new(*v).encode(m)?;
            return Ok(());
        }
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A gauge with a value per set of labels.
fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in values {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

impl prometheus_client::collector::Collector for Collect {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.report;
        let mut requests = Vec::new();
        for route in &r.routes {
            for (mi, by_class) in route.requests.iter().enumerate() {
                for (ci, &n) in by_class.iter().enumerate() {
                    if n > 0 {
                        let labels = vec![
                            ("route", route.name.as_str()),
                            ("method", METHODS[mi]),
                            ("status", CLASSES[ci]),
                        ];
                        requests.push((labels, n));
                    }
                }
            }
        }
        counter(
            &mut e,
            "ringway_requests",
            "Requests read whole, by route, method and status class.",
            &requests,
        )?;
        let per_route = |f: fn(&RouteReport) -> u64| -> Vec<(Labels, u64)> {
            r.routes
                .iter()
                .map(|x| (vec![("route", x.name.as_str())], f(x)))
                .collect()
        };
        counter(
            &mut e,
            "ringway_request_bytes",
            "Bytes received from clients: request heads and body payloads.",
            &per_route(|x| x.bytes_in),
        )?;
        counter(
            &mut e,
            "ringway_response_bytes",
            "Bytes written to clients: response heads and bodies.",
            &per_route(|x| x.bytes_out),
        )?;
        let per_upstream = |f: fn(&UpstreamReport) -> u64| -> Vec<(Labels, u64)> {
            r.upstreams
                .iter()
                .map(|x| (vec![("upstream", x.name.as_str())], f(x)))
                .collect()
        };
        counter(
            &mut e,
            "ringway_upstream_connects",
            "Upstream connections opened.",
            &per_upstream(|x| x.connects),
        )?;
        counter(
            &mut e,
            "ringway_upstream_reuses",
            "Requests sent on a pooled upstream connection.",
            &per_upstream(|x| x.reuses),
        )?;
        counter(
            &mut e,
            "ringway_upstream_connect_failures",
            "Upstream connects that failed or timed out.",
            &per_upstream(|x| x.failures),
        )?;
        counter(
            &mut e,
            "ringway_upstream_retries",
            "Requests sent again, to another endpoint or on a new connection.",
            &per_upstream(|x| x.retries),
        )?;
        counter(
            &mut e,
            "ringway_upstream_retries_refused",
            "Retries the upstream's retry budget did not allow.",
            &per_upstream(|x| x.retries_refused),
        )?;
        counter(
            &mut e,
            "ringway_upstream_ejections",
            "Endpoints left out of the rotation after failures in a row.",
            &per_upstream(|x| x.ejections),
        )?;
        counter(
            &mut e,
            "ringway_upstream_no_endpoint",
            "Requests answered 503 at once: every endpoint ejected or marked down.",
            &per_upstream(|x| x.no_endpoint),
        )?;
        counter(
            &mut e,
            "ringway_upstream_overloaded",
            "Requests answered 503 at once: the upstream at max_concurrent.",
            &per_upstream(|x| x.overloaded),
        )?;
        counter(
            &mut e,
            "ringway_connections_accepted",
            "Client connections accepted.",
            &[(vec![], r.accepted)],
        )?;
        counter(
            &mut e,
            "ringway_client_aborts",
            "Exchanges given up because the client closed before the response.",
            &[(vec![], r.client_aborts)],
        )?;
        counter(
            &mut e,
            "ringway_access_log_dropped_lines",
            "Access log lines dropped because the writer fell behind.",
            &[(vec![], r.log_dropped)],
        )?;
        counter(
            &mut e,
            "ringway_tls_handshakes",
            "TLS handshakes on client connections, by how they ended (refused: over the listener's max_handshakes).",
            &HandshakeOutcome::ALL
                .map(|o| (vec![("result", o.label())], r.tls_handshakes[o.index()])),
        )?;
        counter(
            &mut e,
            "ringway_rate_limited",
            "Requests answered 429, by the limit that turned them away.",
            &["client", "route", "global"]
                .iter()
                .zip(r.rate_limited)
                .map(|(scope, n)| (vec![("scope", *scope)], n))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut e,
            "ringway_rate_limit_evicted",
            "Per-client buckets dropped, idle or to keep the table within max_entries.",
            &[(vec![], r.rate_limit_evicted)],
        )?;
        counter(
            &mut e,
            "ringway_rate_limit_decided_alone",
            "Requests of a key another shard owns that their shard decided with its share of the limit: the owner did not answer in time.",
            &[(vec![], r.rate_limit_alone)],
        )?;
        gauge(
            &mut e,
            "ringway_rate_limit_entries",
            "Per-client buckets held, all shards.",
            r.rate_limit_entries as i64,
        )?;
        if !self.checked.is_empty() {
            let up: Vec<(Labels, i64)> = self
                .checked
                .iter()
                .map(|c| {
                    let labels = vec![
                        ("upstream", c.upstream.as_str()),
                        ("endpoint", c.endpoint.as_str()),
                    ];
                    (labels, i64::from(c.healthy))
                })
                .collect();
            gauges(
                &mut e,
                "ringway_upstream_endpoint_healthy",
                "1 while the upstream's active health check finds the endpoint healthy, else 0.",
                &up,
            )?;
        }
        counter(
            &mut e,
            "ringway_reloads_failed",
            "Reloads rejected (the running config stayed).",
            &[(vec![], self.reloads_failed)],
        )?;
        gauge(
            &mut e,
            "ringway_connections_open",
            "Client connections open.",
            r.connections as i64,
        )?;
        gauge(
            &mut e,
            "ringway_buffers_leased",
            "Slab buffers in use, all shards.",
            r.buffers_leased as i64,
        )?;
        gauge(
            &mut e,
            "ringway_buffers_max",
            "Slab buffers that may be in use at once, all shards.",
            r.buffers_max as i64,
        )?;
        gauge(
            &mut e,
            "ringway_config_generation",
            "Config generation in force (0 at start, +1 per successful reload).",
            self.generation as i64,
        )?;
        for (metric, name, help) in [
            (
                Metric::Total,
                "ringway_request_duration_seconds",
                "Whole request: first byte in to last byte out.",
            ),
            (
                Metric::Upstream,
                "ringway_upstream_duration_seconds",
                "Upstream: connection (connect included) to response head.",
            ),
            (
                Metric::Proxy,
                "ringway_proxy_duration_seconds",
                "ringway's own part: request head to upstream, response head to client.",
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for route in &r.routes {
                let Some(l) = &route.latency else { continue };
                let h = l.get(metric);
                if h.is_empty() {
                    continue;
                }
                let labels = vec![("route", route.name.as_str())];
                // Counts in each bucket alone: the encoder sums them up.
                let mut below = 0;
                let mut buckets: Vec<(f64, u64)> = BUCKETS
                    .iter()
                    .map(|&s| {
                        let upto = h.count_between(0, (s * 1e6) as u64);
                        let n = upto - below;
                        below = upto;
                        (s, n)
                    })
                    .collect();
                buckets.push((f64::MAX, h.len() - below));
                let sum = h.mean() * h.len() as f64 / 1e6;
                m.encode_family(&labels)?.encode_histogram::<Labels>(
                    sum,
                    h.len(),
                    &buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_classes() {
        assert_eq!(METHODS[usize::from(method_index("POST"))], "POST");
        assert_eq!(METHODS[usize::from(method_index("PROPFIND"))], "other");
        assert_eq!(CLASSES[class_index(204)], "2xx");
        assert_eq!(CLASSES[class_index(503)], "5xx");
        assert_eq!(CLASSES[class_index(0)], "none");
    }

    #[test]
    fn each_handshake_outcome_has_its_own_index_and_label() {
        for (i, o) in HandshakeOutcome::ALL.into_iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
        let labels = HandshakeOutcome::ALL.map(HandshakeOutcome::label);
        assert_eq!(labels, ["ok", "failed", "timeout", "plain_http", "refused"]);
    }

    #[test]
    fn shards_merge_by_name_and_render() {
        let a = RouteMetrics::new("api");
        let b = RouteMetrics::new("api");
        let mut r = Record::new(Instant::now());
        r.method = method_index("GET");
        r.status = 200;
        r.bytes_out = 10;
        a.record(&r, 150);
        b.record(&r, 2500);
        r.status = 502;
        b.record(&r, 900);
        let mut merged = report([&a].into_iter(), [].into_iter(), true, &Reset::Nothing);
        merged.merge(&report(
            [&b].into_iter(),
            [].into_iter(),
            true,
            &Reset::Nothing,
        ));
        assert_eq!(merged.routes.len(), 1);
        let m = &merged.routes[0];
        assert_eq!(m.requests[0][1], 2);
        assert_eq!(m.requests[0][4], 1);
        assert_eq!(m.bytes_out, 30);
        assert_eq!(m.latency.as_ref().unwrap().total.len(), 3);
        let checked = vec![
            Checked {
                upstream: "app".into(),
                endpoint: "10.0.0.1:80".into(),
                healthy: true,
            },
            Checked {
                upstream: "app".into(),
                endpoint: "10.0.0.2:80".into(),
                healthy: false,
            },
        ];
        let text = render_prometheus(&merged, 3, 0, checked);
        assert!(
            text.contains(
                r#"ringway_upstream_endpoint_healthy{upstream="app",endpoint="10.0.0.2:80"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ringway_upstream_endpoint_healthy{upstream="app",endpoint="10.0.0.1:80"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"ringway_requests_total{route="api",method="GET",status="2xx"} 2"#),
            "{text}"
        );
        assert!(text.contains("ringway_config_generation 3"), "{text}");
        // 150 µs and 900 µs are under 1 ms; 2.5 ms is not.
        assert!(
            text.contains(r#"ringway_request_duration_seconds_bucket{le="0.001",route="api"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ringway_request_duration_seconds_bucket{le="+Inf",route="api"} 3"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
