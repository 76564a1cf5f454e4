//! Configuration, in two steps: the TOML file is deserialised into
//! `FileConfig` (unknown keys rejected, durations and sizes parsed), then
//! validated into `Config`, whose values are known to be consistent.
//! `Snapshot::compile` turns a `Config` into what the shards read.
//!
//! Every error names the file, the line and the key, and says what to do.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::policy::{
    FileCors, FileHeaderRules, FilePolicy, FileRedirect, FileRequestId, FileRequestIdSwitch,
    FileRewrite, PolicyError, Redirect, RoutePolicy,
};

/// A config file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: `{key}`: {reason}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        reason: String,
    },
}

/// The most of a body `route.access_log_body` captures.
pub const MAX_CAPTURE: u64 = 64 * 1024;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: Server,
    pub listeners: Vec<Listener>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    pub metrics: Metrics,
    /// `[access_log] path`: the file; `None`: no access log.
    pub access_log: Option<PathBuf>,
    /// `[access_log] redact`: field and header names redacted in captured
    /// requests besides `redact::DEFAULT_FIELDS`.
    pub redact: Vec<String>,
    pub rate_limit: RateLimit,
    /// `[endpoints]`: the built-in health and readiness paths.
    pub endpoints: Endpoints,
    /// Where each key is written, to place warnings.
    pub keys: KeyLines,
    /// The file as it was read: what `ringway ctl config` shows.
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Shards to run; 0 means one per available core.
    pub workers: usize,
    /// Pin each shard to its own core.
    pub pin_cores: bool,
    /// Open client connections per shard; past it new connections are refused.
    /// The default is as many as the default slab has buffers.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Dur,
    /// The admin socket (a Unix socket, mode 0600) that `ringway ctl` talks to.
    pub admin_socket: Option<PathBuf>,
    /// Reload when the config file changes (checked once a second).
    pub watch_config: bool,
    /// How connections are spread over the shards: "kernel" (its hash of
    /// the 4-tuple) or "client-ip" (every connection of one client address
    /// to one shard, so a per-client limit is exact).
    pub steer: Steer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Steer {
    Kernel,
    ClientIp,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            workers: 0,
            pin_cores: true,
            max_connections: 8192,
            drain_timeout: Dur::secs(10),
            admin_socket: None,
            watch_config: false,
            steer: Steer::Kernel,
        }
    }
}

/// `[endpoints]`: paths the proxy answers itself, before routing, on
/// every host; each is off unless given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Endpoints {
    /// Liveness: 200 while the shard serves.
    pub health: Option<String>,
    /// Readiness: 200 when every upstream has an endpoint not ejected, else 503.
    pub ready: Option<String>,
}

/// `[metrics]`: where the Prometheus endpoint is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// A listener of its own, served by the control side; `None`: no endpoint.
    pub listen: Option<SocketAddr>,
    pub path: String,
    /// Where interval logs of the latency histograms go; `None`: nowhere.
    pub histogram_dir: Option<PathBuf>,
    pub histogram_interval: Duration,
    pub histogram_keep: usize,
    pub histogram_file_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
struct FileMetrics {
    listen: Option<String>,
    path: String,
    histogram_dir: Option<PathBuf>,
    histogram_interval: Dur,
    histogram_keep: usize,
    histogram_file_bytes: Size,
}

impl Default for FileMetrics {
    fn default() -> Self {
        FileMetrics {
            listen: None,
            path: default_metrics_path(),
            histogram_dir: None,
            histogram_interval: Dur::secs(10),
            histogram_keep: 24,
            histogram_file_bytes: Size(64 << 20),
        }
    }
}

fn default_metrics_path() -> String {
    "/metrics".into()
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From connection accept (or the end of the last response) to a whole request head.
    pub client_header: Dur,
    /// Longest silence while reading a request body.
    pub client_body_idle: Dur,
    /// Longest wait for the client to take response bytes.
    pub client_send: Dur,
    /// Longest idle time of a keep-alive client connection between requests.
    pub keepalive_idle: Dur,
    pub upstream_connect: Dur,
    /// From the end of the request to the whole response head.
    pub upstream_response_header: Dur,
    /// Longest silence while reading a response body or writing to the upstream.
    pub upstream_idle: Dur,
    /// Whole request, head to last response byte; 0 turns it off.
    pub request_total: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header: Dur::secs(10),
            client_body_idle: Dur::secs(30),
            client_send: Dur::secs(60),
            keepalive_idle: Dur::secs(60),
            upstream_connect: Dur::secs(3),
            upstream_response_header: Dur::secs(30),
            upstream_idle: Dur::secs(60),
            request_total: Dur::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_request_line: Size,
    pub max_header_bytes: Size,
    pub max_headers: usize,
    /// Largest request body; 0 means no limit.
    pub max_body_bytes: Size,
    /// Size of one slab buffer; a connection uses one, three while proxying.
    pub buffer_size: Size,
    /// Bound on all slab buffers of one shard.
    pub max_buffer_bytes: Size,
}

/// httparse wants a header array on the stack; this is its length.
pub const MAX_HEADERS_CAP: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: Size(8 << 10),
            max_header_bytes: Size(16 << 10),
            max_headers: 100,
            max_body_bytes: Size(64 << 20),
            buffer_size: Size(32 << 10),
            max_buffer_bytes: Size(256 << 20),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// How a request's endpoint is chosen (see `balance`).
    pub balance: Balance,
    /// Requests in flight to the upstream at once, all shards together;
    /// each shard takes `ceil(max / shards)`. `None`: no cap.
    pub max_concurrent: Option<u32>,
    /// Active health checks, probed off the shards (see `health`).
    pub health_check: Option<HealthCheck>,
    pub max_idle_per_endpoint: usize,
    pub max_per_endpoint: usize,
    /// Longest wait for a free connection slot once `max_per_endpoint` are busy.
    pub queue_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// Requests per connection before it is retired; 0 means no limit.
    pub max_requests: u64,
    /// A request that could not reach an endpoint goes to another: after a
    /// failed connect always (nothing was sent), after a reset or close
    /// before any response byte if it is idempotent and its body, if any,
    /// came whole with its head. A route's own `retry` replaces this.
    pub retry: bool,
    /// Passive ejection of failing endpoints; `None`: off.
    pub outlier: Option<Outlier>,
    /// How many retries the upstream takes; `None`: no bound.
    pub retry_budget: Option<RetryBudget>,
}

/// `retry_budget`: retries sent to an upstream are held, over the last
/// two seconds, to `percent` of its requests or `min_per_sec` a second,
/// whichever is more, so that retries cannot multiply the load of an
/// upstream that is failing.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_per_sec: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20.0,
            min_per_sec: 10,
        }
    }
}

/// `retry_budget = false`, or its settings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileBudget {
    On(bool),
    Settings(RetryBudget),
}

/// A route's `retry`: a request that failed in one of the `on` ways is
/// sent again, to another endpoint where there is one, up to `attempts`
/// in all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Attempts in all, the first included: 1 to `MAX_ATTEMPTS`.
    pub attempts: u32,
    pub on: RetryOn,
    /// Before the second attempt; doubled before each one after.
    pub backoff: Duration,
    /// A response is held up to this many bytes until it is whole, so that
    /// a failure part-way can still be retried; past it, it is streamed
    /// and no later attempt is made. 0: streamed at once.
    pub buffer_limit: usize,
}

/// The most attempts a route's `retry` may ask for.
pub const MAX_ATTEMPTS: u32 = 8;

/// What a request is retried on: a bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(pub u8);

impl RetryOn {
    /// No connection could be made (nothing was sent).
    pub const CONNECT: RetryOn = RetryOn(1);
    /// The connection closed or failed before the response was whole.
    pub const RESET: RetryOn = RetryOn(2);
    /// No response head within `upstream_response_header`, or a held
    /// response stalled past `upstream_idle`.
    pub const TIMEOUT: RetryOn = RetryOn(4);
    pub const S502: RetryOn = RetryOn(8);
    pub const S503: RetryOn = RetryOn(16);
    pub const S504: RetryOn = RetryOn(32);

    const NAMES: [(&'static str, RetryOn); 6] = [
        ("connect-failure", RetryOn::CONNECT),
        ("reset", RetryOn::RESET),
        ("timeout", RetryOn::TIMEOUT),
        ("502", RetryOn::S502),
        ("503", RetryOn::S503),
        ("504", RetryOn::S504),
    ];

    pub fn has(self, what: RetryOn) -> bool {
        self.0 & what.0 != 0
    }

    /// The bit of a status (none for one that cannot be retried on).
    pub fn of_status(status: u16) -> RetryOn {
        match status {
            502 => RetryOn::S502,
            503 => RetryOn::S503,
            504 => RetryOn::S504,
            _ => RetryOn::default(),
        }
    }

    /// Whether a response of this status is retried.
    pub fn status(self, status: u16) -> bool {
        match status {
            502 => self.has(RetryOn::S502),
            503 => self.has(RetryOn::S503),
            504 => self.has(RetryOn::S504),
            _ => false,
        }
    }
}

/// One endpoint of an upstream: `"host:port"`, or `{ addr, weight }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Its share of the traffic relative to the others, 1 to `MAX_WEIGHT`.
    pub weight: u32,
}

/// The heaviest weight an endpoint may have: a round-robin cycle is as long
/// as the weights add up to, and is built once per pool.
pub const MAX_WEIGHT: u32 = 100;

/// `balance`: how each shard chooses the endpoint of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Each endpoint in turn, `weight` times a cycle, interleaved.
    RoundRobin,
    /// The endpoint with the fewest requests in flight on this shard, per
    /// unit of weight.
    LeastConn,
    /// Two endpoints drawn at random (by weight); the one with fewer in flight.
    PowerOfTwo,
    /// Weighted rendezvous hashing of the client's address.
    HashClientIp,
    /// Weighted rendezvous hashing of this request header's value (a
    /// lower-case name); a request without it hashes its client address.
    HashHeader(String),
}

/// As the file writes it: `least-conn`, `hash-header:x-user`.
impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Balance::RoundRobin => f.write_str("round-robin"),
            Balance::LeastConn => f.write_str("least-conn"),
            Balance::PowerOfTwo => f.write_str("p2c"),
            Balance::HashClientIp => f.write_str("hash-client-ip"),
            Balance::HashHeader(name) => write!(f, "hash-header:{name}"),
        }
    }
}

/// `health_check`: each endpoint is asked `GET path` every `interval`;
/// `unhealthy_after` failures in a row (no answer within `timeout`, or a
/// status outside `expect_status`) take it out, `healthy_after` successes
/// in a row bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// The statuses that count as healthy, both ends included.
    pub expect_status: (u16, u16),
}

/// `outlier_detection`: an endpoint with `consecutive_failures` failures in
/// a row (connect errors, resets before a response, 5xx) is left out for
/// `eject_for`, twice as long each time it is ejected again, never more
/// than `max_ejected_percent` of the upstream's endpoints at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub eject_for: Dur,
    pub max_ejected_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            eject_for: Dur::secs(10),
            max_ejected_percent: 50,
        }
    }
}

/// `outlier_detection = false`, or its settings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileOutlier {
    On(bool),
    Settings(Outlier),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub host: Option<String>,
    pub prefix: String,
    /// Empty means every method.
    pub methods: Vec<String>,
    pub action: Action,
    pub strip_prefix: bool,
    pub set_host: Option<String>,
    pub timeout: Option<Duration>,
    pub max_body_bytes: Option<u64>,
    /// Forward request header fields whose names hold `_`; when false they
    /// are dropped, as nginx does: `X_User` and `X-User` look alike to many
    /// applications, so a client could pass one for the other.
    pub underscores_in_headers: bool,
    /// Write this route's requests to the access log, if there is one.
    pub access_log: bool,
    /// The share of them written, 0 to 1.
    pub access_log_sample: f64,
    /// Capture up to this many bytes of each text body, request and
    /// response, into the access log line, redacted; 0: none.
    pub access_log_body: usize,
    /// Capture the request's header fields into the line, redacted.
    pub access_log_headers: bool,
    /// `None`: the upstream's default (`Upstream::retry`).
    pub retry: Option<Retry>,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    pub retry_non_idempotent: bool,
    pub rate_limit: RouteLimit,
    /// Request ID, CORS, header rules, prefix rewrite; compiled.
    pub policy: RoutePolicy,
    /// The line of the route's `[[route]]` header.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Index into `Config::upstreams`.
    Proxy(usize),
    Respond(Respond),
    Redirect(Redirect),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_content_type() -> String {
    "text/plain; charset=utf-8".into()
}

// ---- the file as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: Server,
    #[serde(default)]
    listener: Vec<FileListener>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    upstream: Vec<FileUpstream>,
    #[serde(default)]
    route: Vec<FileRoute>,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    access_log: FileAccessLog,
    #[serde(default)]
    rate_limit: FileRateLimit,
    /// Every route's request ID, unless a route says otherwise.
    request_id: Option<FileRequestId>,
    #[serde(default)]
    endpoints: Endpoints,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccessLog {
    path: Option<PathBuf>,
    #[serde(default)]
    redact: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    name: String,
    bind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    name: String,
    endpoints: Vec<FileEndpoint>,
    balance: Option<String>,
    max_concurrent: Option<u32>,
    health_check: Option<FileHealthCheck>,
    #[serde(default = "default_max_idle")]
    max_idle_per_endpoint: usize,
    #[serde(default = "default_max_per_endpoint")]
    max_per_endpoint: usize,
    #[serde(default = "default_queue_timeout")]
    queue_timeout: Dur,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: Dur,
    #[serde(default = "default_max_lifetime")]
    max_lifetime: Dur,
    #[serde(default)]
    max_requests: u64,
    #[serde(default = "yes")]
    retry: bool,
    outlier_detection: Option<FileOutlier>,
    retry_budget: Option<FileBudget>,
}

/// `"host:port"` or `{ addr = "host:port", weight = 3 }`.
#[derive(Debug)]
enum FileEndpoint {
    Addr(String),
    Weighted(FileWeighted),
}

/// By hand rather than `untagged`, so that a misspelt key in the table is
/// named (`unknown field`) instead of "did not match any variant".
impl<'de> Deserialize<'de> for FileEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;
        impl<'de> serde::de::Visitor<'de> for EndpointVisitor {
            type Value = FileEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { addr = \"host:port\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FileEndpoint, E> {
                Ok(FileEndpoint::Addr(s.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileEndpoint, A::Error> {
                let d = serde::de::value::MapAccessDeserializer::new(map);
                FileWeighted::deserialize(d).map(FileEndpoint::Weighted)
            }
        }
        d.deserialize_any(EndpointVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWeighted {
    addr: String,
    #[serde(default = "one_u32")]
    weight: u32,
}

fn one_u32() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealthCheck {
    path: String,
    #[serde(default = "default_health_interval")]
    interval: Dur,
    #[serde(default = "default_health_timeout")]
    timeout: Dur,
    #[serde(default = "default_healthy_after")]
    healthy_after: u32,
    #[serde(default = "default_unhealthy_after")]
    unhealthy_after: u32,
    expect_status: Option<FileExpectStatus>,
}

/// `200`, or a class: `"2xx"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileExpectStatus {
    Exact(u16),
    Class(String),
}

fn default_health_interval() -> Dur {
    Dur::secs(5)
}
fn default_health_timeout() -> Dur {
    Dur::secs(2)
}
fn default_healthy_after() -> u32 {
    2
}
fn default_unhealthy_after() -> u32 {
    3
}

fn default_max_idle() -> usize {
    64
}
fn default_max_per_endpoint() -> usize {
    1024
}
fn default_queue_timeout() -> Dur {
    Dur::secs(1)
}
fn default_idle_timeout() -> Dur {
    Dur::secs(55)
}
fn default_max_lifetime() -> Dur {
    Dur::secs(600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: String,
    host: Option<String>,
    prefix: String,
    #[serde(default)]
    methods: Vec<String>,
    upstream: Option<String>,
    respond: Option<Respond>,
    #[serde(default)]
    strip_prefix: bool,
    set_host: Option<String>,
    timeout: Option<Dur>,
    max_body_bytes: Option<Size>,
    #[serde(default)]
    underscores_in_headers: bool,
    #[serde(default = "yes")]
    access_log: bool,
    #[serde(default = "one")]
    access_log_sample: f64,
    #[serde(default)]
    access_log_body: Size,
    #[serde(default)]
    access_log_headers: bool,
    retry: Option<FileRetry>,
    #[serde(default)]
    retry_non_idempotent: bool,
    rate_limit: Option<FileRouteLimit>,
    request_id: Option<FileRequestIdSwitch>,
    cors: Option<FileCors>,
    request_headers: Option<FileHeaderRules>,
    response_headers: Option<FileHeaderRules>,
    rewrite_prefix: Option<FileRewrite>,
    redirect: Option<FileRedirect>,
}

/// A route's `retry` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetry {
    #[serde(default = "default_attempts")]
    attempts: u32,
    #[serde(default = "default_retry_on")]
    on: Vec<String>,
    #[serde(default = "default_backoff")]
    backoff: Dur,
    #[serde(default = "default_buffer_limit")]
    buffer_limit: Size,
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<String> {
    ["connect-failure", "reset", "502", "503", "504"]
        .map(String::from)
        .to_vec()
}
fn default_backoff() -> Dur {
    Dur(Duration::from_millis(25))
}
fn default_buffer_limit() -> Size {
    Size(64 * 1024)
}

/// The largest `retry.buffer_limit`.
pub const MAX_RETRY_BUFFER: u64 = 16 << 20;

/// A route's `rate_limit`: `false` (none), or a table of its own limits.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileRouteLimit {
    On(bool),
    Own(FileOwnLimit),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOwnLimit {
    per_client: Option<Rate>,
    global: Option<Rate>,
}

/// `rate` tokens a second, fractions allowed, and `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub rate: f64,
    pub burst: u32,
}

/// `[rate_limit]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub key: LimitKey,
    pub per_client: Option<Rate>,
    pub global: Option<Rate>,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Keys each shard keeps at most.
    pub max_entries: usize,
    pub idle_eviction: Duration,
    /// Also send the IETF draft `RateLimit-Policy` and `RateLimit` headers.
    pub draft_headers: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    /// The value of this request header (lower-case name).
    Header(String),
}

/// An address block, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let a: std::net::IpAddr = s.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let (a, b, bits) = match (self.addr, ip) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
            }
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                (u128::from(a), u128::from(b), 128)
            }
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

/// What a route does about rate limits.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteLimit {
    /// The `[rate_limit]` limits.
    Inherit,
    Off,
    /// Its own per-client bucket and/or a limit on all its traffic.
    Own {
        per_client: Option<Rate>,
        global: Option<Rate>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
struct FileRateLimit {
    key: String,
    per_client: Option<Rate>,
    global: Option<Rate>,
    trusted_proxies: Vec<String>,
    max_entries: usize,
    idle_eviction: Dur,
    draft_headers: bool,
}

impl Default for FileRateLimit {
    fn default() -> Self {
        FileRateLimit {
            key: "client-ip".into(),
            per_client: None,
            global: None,
            trusted_proxies: Vec::new(),
            max_entries: 100_000,
            idle_eviction: Dur::secs(60),
            draft_headers: false,
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let syntax = |e: toml::de::Error| syntax_error(path, text, &e);
        let doc = DeTable::parse(text).map_err(syntax)?;
        let keys = KeyLines::read(text, doc.get_ref());
        let file = FileConfig::deserialize(toml::de::Deserializer::from(doc)).map_err(syntax)?;
        let mut config = ConfigValidator { path, keys }.validate(file)?;
        config.text = text.to_string();
        Ok(config)
    }

    pub fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// A warning about `key` (a path as in `KeyLines`), placed like an error:
    /// "file:line: `key`: reason".
    pub fn warning(&self, key: &str, reason: impl fmt::Display) -> String {
        format!(
            "{}:{}: `{}`: {reason}",
            self.path.display(),
            self.keys.line(key),
            display_key(key)
        )
    }
}

/// An error from the TOML parser or from deserialising `FileConfig`: the
/// key is read off the line the parser points at.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map_or(1, |s| LineIndex::new(text).line(s.start));
    let written = text.lines().nth(line - 1).unwrap_or("");
    let mut key = written.split('=').next().unwrap_or("").trim().to_string();
    // A missing key is reported on its table's header: name the table and the key.
    if let Some(missing) = e.message().strip_prefix("missing field `")
        && key.starts_with('[')
    {
        let table = key.trim_matches(['[', ']', ' ']);
        key = format!("{table}.{}", missing.trim_end_matches('`'));
    }
    ConfigError::Invalid {
        path: path.display().to_string(),
        line,
        key,
        reason: e.message().trim().to_string(),
    }
}

/// Byte offsets of a text's line ends, to turn an offset into a line number.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex(memchr::memchr_iter(b'\n', text.as_bytes()).collect())
    }

    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&end| end < offset) + 1
    }
}

/// The line each key of the file is written on, by dotted path with array
/// items numbered from 0: `limits.buffer_size`, `route.2.timeout`,
/// `upstream.0.endpoints.1`. A table or array item has its own path
/// (`limits`, `route.2`), on the line of its header.
#[derive(Debug, Clone, Default)]
pub struct KeyLines(HashMap<String, usize>);

impl KeyLines {
    fn read(text: &str, doc: &DeTable) -> KeyLines {
        let mut keys = KeyLines::default();
        keys.table(&LineIndex::new(text), "", doc);
        keys
    }

    fn table(&mut self, lines: &LineIndex, prefix: &str, table: &DeTable) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.0.insert(path.clone(), lines.line(key.span().start));
            self.value(lines, &path, value);
        }
    }

    fn value(&mut self, lines: &LineIndex, path: &str, value: &Spanned<DeValue>) {
        match value.get_ref() {
            DeValue::Table(t) => self.table(lines, path, t),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{path}.{i}");
                    self.0.insert(path.clone(), lines.line(item.span().start));
                    self.value(lines, &path, item);
                }
            }
            _ => {}
        }
    }

    /// The line of `key` if the file writes it (a default is not written).
    pub fn written(&self, key: &str) -> Option<usize> {
        self.0.get(key).copied()
    }

    /// The line of `key`; for a key left at its default, the line of the
    /// nearest table around it that is written; else line 1.
    pub fn line(&self, key: &str) -> usize {
        let mut key = key;
        loop {
            if let Some(line) = self.written(key) {
                return line;
            }
            match key.rsplit_once('.') {
                Some((outer, _)) => key = outer,
                None => return 1,
            }
        }
    }

    /// The first of `keys` the file writes, else the first: where an error
    /// about keys that contradict each other is best placed.
    pub fn first_written<'k>(&self, keys: &[&'k str]) -> &'k str {
        let written = keys.iter().find(|k| self.written(k).is_some());
        written.or(keys.first()).copied().unwrap_or("")
    }
}

/// A key path as the reader knows it: `route.2.timeout` is `route.timeout`.
fn display_key(key: &str) -> String {
    key.split('.')
        .filter(|seg| !seg.bytes().all(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(".")
}

/// Most idle connections one endpoint's pool may keep: the pool allocates
/// room for them up front, and one source address has no more ports than
/// this towards one endpoint anyway.
pub const MAX_IDLE_PER_ENDPOINT: usize = 65_535;

/// Most buffers one shard's slab may hold: the slab allocates its free list
/// up front (with 32KiB buffers this is 32GiB per shard).
pub const MAX_BUFFERS: u64 = 1 << 20;

/// Turns a `FileConfig` into a `Config`, or into the first error, placed on
/// the line of the key that is wrong.
struct ConfigValidator<'a> {
    path: &'a Path,
    keys: KeyLines,
}

impl ConfigValidator<'_> {
    fn error(&self, key: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line: self.keys.line(key),
            key: display_key(key),
            reason: reason.to_string(),
        }
    }

    fn validate(self, file: FileConfig) -> Result<Config, ConfigError> {
        self.check_limits(&file.limits)?;
        if file.server.max_connections == 0 {
            return Err(self.error("server.max_connections", "must be at least 1"));
        }
        if let Some(socket) = &file.server.admin_socket {
            // sun_path holds 108 bytes, the terminating NUL included.
            let len = socket.as_os_str().len();
            if len == 0 || len > 107 {
                return Err(self.error(
                    "server.admin_socket",
                    "must be a path of 1 to 107 bytes (the limit of a Unix socket address)",
                ));
            }
        }
        self.check_timeouts(&file.timeouts)?;
        let listeners = self.listeners(&file.listener)?;
        let upstreams = self.upstreams(&file.upstream)?;
        let routes = self.routes(&file.route, &upstreams, file.request_id.as_ref())?;
        let endpoints = self.endpoints(&file.endpoints)?;
        let metrics = self.metrics(&file.metrics)?;
        Ok(Config {
            path: self.path.to_path_buf(),
            server: file.server,
            listeners,
            timeouts: file.timeouts,
            limits: file.limits,
            upstreams,
            routes,
            metrics,
            access_log: file.access_log.path.clone(),
            redact: self.redact(&file.access_log.redact)?,
            rate_limit: self.rate_limit(&file.rate_limit)?,
            endpoints,
            keys: self.keys,
            text: String::new(),
        })
    }

    fn check_limits(&self, limits: &Limits) -> Result<(), ConfigError> {
        let (buffer, header, line) = (
            limits.buffer_size.0,
            limits.max_header_bytes.0,
            limits.max_request_line.0,
        );
        if !(4096..=(16 << 20)).contains(&buffer) {
            return Err(self.error("limits.buffer_size", "must be between 4KiB and 16MiB"));
        }
        if header < 256 {
            return Err(self.error("limits.max_header_bytes", "must be at least 256"));
        }
        if header > buffer {
            let key = self
                .keys
                .first_written(&["limits.max_header_bytes", "limits.buffer_size"]);
            return Err(self.error(
                key,
                format!(
                    "limits.max_header_bytes ({header}) must not exceed limits.buffer_size ({buffer}): a request head is read into one buffer"
                ),
            ));
        }
        if line > header {
            let key = self
                .keys
                .first_written(&["limits.max_request_line", "limits.max_header_bytes"]);
            return Err(self.error(
                key,
                format!(
                    "limits.max_request_line ({line}) must not exceed limits.max_header_bytes ({header})"
                ),
            ));
        }
        if limits.max_headers == 0 || limits.max_headers > MAX_HEADERS_CAP {
            return Err(self.error(
                "limits.max_headers",
                format!("must be between 1 and {MAX_HEADERS_CAP}"),
            ));
        }
        let buffers = limits.max_buffer_bytes.0 / buffer;
        if !(4..=MAX_BUFFERS).contains(&buffers) {
            let key = self
                .keys
                .first_written(&["limits.max_buffer_bytes", "limits.buffer_size"]);
            return Err(self.error(
                key,
                format!(
                    "limits.max_buffer_bytes ({}) holds {buffers} buffers of limits.buffer_size ({buffer}): it must hold between 4 and {MAX_BUFFERS}",
                    limits.max_buffer_bytes.0
                ),
            ));
        }
        Ok(())
    }

    /// Zero would fail every connection at once; only `request_total` (and a
    /// route's `timeout`) take 0 to mean off, and `keepalive_idle` 0 to mean
    /// no keep-alive.
    fn check_timeouts(&self, t: &Timeouts) -> Result<(), ConfigError> {
        let never_zero = [
            ("client_header", t.client_header),
            ("client_body_idle", t.client_body_idle),
            ("client_send", t.client_send),
            ("upstream_connect", t.upstream_connect),
            ("upstream_response_header", t.upstream_response_header),
            ("upstream_idle", t.upstream_idle),
        ];
        for (name, d) in never_zero {
            if d.0.is_zero() {
                return Err(self.error(
                    &format!("timeouts.{name}"),
                    "must be more than 0: a 0 timeout expires at once and fails every request",
                ));
            }
        }
        Ok(())
    }

    fn check_rate(&self, key: &str, r: &Rate) -> Result<(), ConfigError> {
        if !(r.rate > 0.0 && r.rate <= 1e9) {
            return Err(self.error(
                key,
                "rate must be above 0 (requests a second) and at most 1e9",
            ));
        }
        if r.burst == 0 {
            return Err(self.error(key, "burst must be at least 1"));
        }
        Ok(())
    }

    fn retry(&self, i: usize, f: &FileRetry) -> Result<Retry, ConfigError> {
        let key = |name: &str| format!("route.{i}.retry.{name}");
        if !(1..=MAX_ATTEMPTS).contains(&f.attempts) {
            return Err(self.error(
                &key("attempts"),
                format!("must be 1 to {MAX_ATTEMPTS} (attempts in all, the first included)"),
            ));
        }
        let mut on = RetryOn::default();
        for (j, name) in f.on.iter().enumerate() {
            let Some((_, bit)) = RetryOn::NAMES.iter().find(|(n, _)| n == name) else {
                let known: Vec<_> = RetryOn::NAMES.iter().map(|(n, _)| *n).collect();
                return Err(self.error(
                    &key(&format!("on.{j}")),
                    format!("'{name}' is none of {}", known.join(", ")),
                ));
            };
            on.0 |= bit.0;
        }
        if f.buffer_limit.0 > MAX_RETRY_BUFFER {
            return Err(self.error(&key("buffer_limit"), "must be at most 16MiB"));
        }
        Ok(Retry {
            attempts: f.attempts,
            on,
            backoff: f.backoff.0,
            buffer_limit: f.buffer_limit.get(),
        })
    }

    fn redact(&self, names: &[String]) -> Result<Vec<String>, ConfigError> {
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.len() > crate::redact::MAX_NAME {
                return Err(self.error(
                    &format!("access_log.redact.{i}"),
                    format!(
                        "'{name}': a field name is 1 to {} bytes",
                        crate::redact::MAX_NAME
                    ),
                ));
            }
        }
        Ok(names.to_vec())
    }

    fn rate_limit(&self, f: &FileRateLimit) -> Result<RateLimit, ConfigError> {
        let key = match f.key.as_str() {
            "client-ip" => LimitKey::ClientIp,
            k => match k.strip_prefix("header:") {
                Some(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    LimitKey::Header(name.to_ascii_lowercase())
                }
                _ => {
                    return Err(self.error(
                        "rate_limit.key",
                        format!("'{k}': use \"client-ip\" or \"header:NAME\""),
                    ));
                }
            },
        };
        for (which, rate) in [("per_client", &f.per_client), ("global", &f.global)] {
            if let Some(r) = rate {
                self.check_rate(&format!("rate_limit.{which}"), r)?;
            }
        }
        let mut trusted = Vec::new();
        for (i, c) in f.trusted_proxies.iter().enumerate() {
            trusted.push(Cidr::parse(c).ok_or_else(|| {
                self.error(
                    &format!("rate_limit.trusted_proxies.{i}"),
                    format!("'{c}' is not an address or CIDR block (10.0.0.0/8, fd00::/8)"),
                )
            })?);
        }
        if f.max_entries == 0 {
            return Err(self.error("rate_limit.max_entries", "must be at least 1"));
        }
        if f.idle_eviction.0 < Duration::from_secs(1) {
            return Err(self.error("rate_limit.idle_eviction", "must be at least 1s"));
        }
        Ok(RateLimit {
            key,
            per_client: f.per_client,
            global: f.global,
            trusted_proxies: trusted,
            max_entries: f.max_entries,
            idle_eviction: f.idle_eviction.0,
            draft_headers: f.draft_headers,
        })
    }

    fn metrics(&self, file: &FileMetrics) -> Result<Metrics, ConfigError> {
        let listen = match &file.listen {
            None => None,
            Some(l) => Some(l.parse::<SocketAddr>().map_err(|_| {
                self.error(
                    "metrics.listen",
                    format!("'{l}' is not an address:port (IPv6 as [::1]:9091)"),
                )
            })?),
        };
        if !file.path.starts_with('/') || file.path.contains(['?', '#', ' ']) {
            return Err(self.error(
                "metrics.path",
                "must be a path starting with '/', without '?', '#' or spaces",
            ));
        }
        if file.histogram_interval.0 < Duration::from_secs(1) {
            return Err(self.error("metrics.histogram_interval", "must be at least 1s"));
        }
        if file.histogram_keep == 0 {
            return Err(self.error("metrics.histogram_keep", "must be at least 1"));
        }
        Ok(Metrics {
            listen,
            path: file.path.clone(),
            histogram_dir: file.histogram_dir.clone(),
            histogram_interval: file.histogram_interval.0,
            histogram_keep: file.histogram_keep,
            histogram_file_bytes: file.histogram_file_bytes.0,
        })
    }

    fn listeners(&self, file: &[FileListener]) -> Result<Vec<Listener>, ConfigError> {
        if file.is_empty() {
            return Err(self.error(
                "listener",
                "no [[listener]]: add one, e.g. bind = \"127.0.0.1:8080\"",
            ));
        }
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, l) in file.iter().enumerate() {
            if listeners.iter().any(|x| x.name == l.name) {
                return Err(self.error(
                    &format!("listener.{i}.name"),
                    format!("duplicate listener name '{}'", l.name),
                ));
            }
            let bind = l.bind.parse::<SocketAddr>().map_err(|_| {
                self.error(
                    &format!("listener.{i}.bind"),
                    format!("'{}' is not an address:port (IPv6 as [::1]:8080)", l.bind),
                )
            })?;
            listeners.push(Listener {
                name: l.name.clone(),
                bind,
            });
        }
        Ok(listeners)
    }

    fn upstreams(&self, file: &[FileUpstream]) -> Result<Vec<Upstream>, ConfigError> {
        let mut upstreams: Vec<Upstream> = Vec::new();
        for (i, u) in file.iter().enumerate() {
            let key = |name: &str| format!("upstream.{i}.{name}");
            if upstreams.iter().any(|x| x.name == u.name) {
                return Err(self.error(
                    &key("name"),
                    format!("duplicate upstream name '{}'", u.name),
                ));
            }
            if u.endpoints.is_empty() {
                return Err(self.error(&key("endpoints"), "needs at least one host:port"));
            }
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for (j, e) in u.endpoints.iter().enumerate() {
                let (text, weight) = match e {
                    FileEndpoint::Addr(a) => (a, 1),
                    FileEndpoint::Weighted(w) => (&w.addr, w.weight),
                };
                let at = key(&format!("endpoints.{j}"));
                // Resolved once here, on the control thread: shards never do DNS.
                #[allow(clippy::disallowed_methods)]
                let addr = text
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        self.error(&at, format!("cannot resolve '{text}' as host:port"))
                    })?;
                if !(1..=MAX_WEIGHT).contains(&weight) {
                    return Err(self.error(
                        &format!("{at}.weight"),
                        format!("must be from 1 to {MAX_WEIGHT}"),
                    ));
                }
                if endpoints.iter().any(|x| x.addr == addr) {
                    return Err(self.error(
                        &at,
                        format!("{addr} is listed twice: give it a weight instead"),
                    ));
                }
                endpoints.push(Endpoint { addr, weight });
            }
            let balance = match u.balance.as_deref() {
                None | Some("round-robin") => Balance::RoundRobin,
                Some("least-conn") => Balance::LeastConn,
                Some("p2c") => Balance::PowerOfTwo,
                Some("hash-client-ip") => Balance::HashClientIp,
                Some(b) => match b.strip_prefix("hash-header:") {
                    Some(name) if valid_header_name(name) => {
                        Balance::HashHeader(name.to_ascii_lowercase())
                    }
                    _ => {
                        return Err(self.error(
                            &key("balance"),
                            format!(
                                "'{b}': use \"round-robin\", \"least-conn\", \"p2c\", \"hash-client-ip\" or \"hash-header:NAME\""
                            ),
                        ));
                    }
                },
            };
            if u.max_concurrent == Some(0) {
                return Err(self.error(
                    &key("max_concurrent"),
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
            let health_check = match &u.health_check {
                None => None,
                Some(h) => Some(self.health_check(&key("health_check"), h)?),
            };
            if u.max_per_endpoint == 0 {
                return Err(self.error(&key("max_per_endpoint"), "must be at least 1"));
            }
            // The default idle count follows a smaller max_per_endpoint; a
            // written one must fit in it.
            let mut max_idle = u.max_idle_per_endpoint;
            if self.keys.written(&key("max_idle_per_endpoint")).is_none() {
                max_idle = max_idle.min(u.max_per_endpoint);
            } else if max_idle > u.max_per_endpoint {
                return Err(self.error(
                    &key("max_idle_per_endpoint"),
                    format!(
                        "{max_idle} is more than max_per_endpoint ({}): idle connections are open connections too",
                        u.max_per_endpoint
                    ),
                ));
            } else if max_idle > MAX_IDLE_PER_ENDPOINT {
                return Err(self.error(
                    &key("max_idle_per_endpoint"),
                    format!("must be at most {MAX_IDLE_PER_ENDPOINT}"),
                ));
            }
            upstreams.push(Upstream {
                name: u.name.clone(),
                endpoints,
                balance,
                max_concurrent: u.max_concurrent,
                health_check,
                max_idle_per_endpoint: max_idle,
                max_per_endpoint: u.max_per_endpoint,
                queue_timeout: u.queue_timeout.0,
                idle_timeout: u.idle_timeout.0,
                max_lifetime: u.max_lifetime.0,
                max_requests: u.max_requests,
                retry: u.retry,
                outlier: match &u.outlier_detection {
                    None | Some(FileOutlier::On(true)) => Some(Outlier::default()),
                    Some(FileOutlier::On(false)) => None,
                    Some(FileOutlier::Settings(o)) => {
                        if o.consecutive_failures == 0 {
                            return Err(self.error(
                                &key("outlier_detection.consecutive_failures"),
                                "must be at least 1",
                            ));
                        }
                        if o.eject_for.0.is_zero() {
                            return Err(
                                self.error(&key("outlier_detection.eject_for"), "must be above 0")
                            );
                        }
                        if o.max_ejected_percent > 100 {
                            return Err(self.error(
                                &key("outlier_detection.max_ejected_percent"),
                                "must be at most 100",
                            ));
                        }
                        Some(*o)
                    }
                },
                retry_budget: match &u.retry_budget {
                    None | Some(FileBudget::On(true)) => Some(RetryBudget::default()),
                    Some(FileBudget::On(false)) => None,
                    Some(FileBudget::Settings(b)) => {
                        if !(0.0..=100.0).contains(&b.percent) {
                            return Err(self.error(
                                &key("retry_budget.percent"),
                                "must be between 0 and 100 (the share of requests that may be retries)",
                            ));
                        }
                        Some(*b)
                    }
                },
            });
        }
        Ok(upstreams)
    }

    fn health_check(&self, at: &str, h: &FileHealthCheck) -> Result<HealthCheck, ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        let path_ok = h.path.starts_with('/')
            && h.path.len() <= 1024
            && h.path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            return Err(self.error(
                &key("path"),
                "must start with / and hold no spaces or control bytes",
            ));
        }
        if h.interval.0 < MIN_HEALTH_INTERVAL {
            return Err(self.error(
                &key("interval"),
                format!("must be at least {MIN_HEALTH_INTERVAL:?}"),
            ));
        }
        if h.timeout.0.is_zero() {
            return Err(self.error(&key("timeout"), "must be above 0"));
        }
        for (name, n) in [
            ("healthy_after", h.healthy_after),
            ("unhealthy_after", h.unhealthy_after),
        ] {
            if n == 0 {
                return Err(self.error(&key(name), "must be at least 1"));
            }
        }
        let expect_status = match &h.expect_status {
            None => (200, 299),
            Some(FileExpectStatus::Exact(n)) if (100..=599).contains(n) => (*n, *n),
            Some(FileExpectStatus::Class(c))
                if c.len() == 3
                    && c.ends_with("xx")
                    && (b'1'..=b'5').contains(&c.as_bytes()[0]) =>
            {
                let hundreds = u16::from(c.as_bytes()[0] - b'0') * 100;
                (hundreds, hundreds + 99)
            }
            Some(_) => {
                return Err(self.error(
                    &key("expect_status"),
                    "write a status (200) or a class (\"2xx\")",
                ));
            }
        };
        Ok(HealthCheck {
            path: h.path.clone(),
            interval: h.interval.0,
            timeout: h.timeout.0,
            healthy_after: h.healthy_after,
            unhealthy_after: h.unhealthy_after,
            expect_status,
        })
    }

    fn routes(
        &self,
        file: &[FileRoute],
        upstreams: &[Upstream],
        request_id: Option<&FileRequestId>,
    ) -> Result<Vec<Route>, ConfigError> {
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in file.iter().enumerate() {
            let key = |name: &str| format!("route.{i}.{name}");
            if routes.iter().any(|x| x.name == r.name) {
                return Err(self.error(&key("name"), format!("duplicate route name '{}'", r.name)));
            }
            if !r.prefix.starts_with('/') || r.prefix.contains(['?', '#', ' ']) {
                return Err(self.error(
                    &key("prefix"),
                    format!(
                        "'{}' must start with '/' and hold no '?', '#' or space",
                        r.prefix
                    ),
                ));
            }
            let host = match &r.host {
                None => None,
                Some(h) => Some(valid_host(h).ok_or_else(|| {
                    self.error(
                        &key("host"),
                        format!("'{h}' is not a host name (a wildcard is written *.example.com)"),
                    )
                })?),
            };
            let mut methods = Vec::new();
            for (j, m) in r.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                    return Err(self.error(
                        &key(&format!("methods.{j}")),
                        format!("'{m}' is not a method: write it in capitals, e.g. \"GET\""),
                    ));
                }
                methods.push(m.clone());
            }
            let action = match (&r.upstream, &r.respond, &r.redirect) {
                (Some(name), None, None) => {
                    let idx = upstreams
                        .iter()
                        .position(|u| &u.name == name)
                        .ok_or_else(|| {
                            let known: Vec<_> = upstreams.iter().map(|u| u.name.as_str()).collect();
                            self.error(
                                &key("upstream"),
                                format!(
                                    "no [[upstream]] named '{name}' (defined: {})",
                                    known.join(", ")
                                ),
                            )
                        })?;
                    Action::Proxy(idx)
                }
                (None, Some(resp), None) => {
                    if !(200..=599).contains(&resp.status) {
                        return Err(self.error(&key("respond.status"), "must be 200..=599"));
                    }
                    if resp.content_type.contains(['\r', '\n']) {
                        return Err(self.error(&key("respond.content_type"), "must be one line"));
                    }
                    Action::Respond(resp.clone())
                }
                (None, None, Some(redirect)) => Action::Redirect(
                    Redirect::compile(redirect, &r.name).map_err(|e| self.policy_error(i, e))?,
                ),
                _ => {
                    return Err(self.error(
                        &format!("route.{i}"),
                        format!(
                            "route '{}' needs exactly one of `upstream`, `respond` or `redirect`",
                            r.name
                        ),
                    ));
                }
            };
            let policy = self.route_policy(i, r, request_id)?;
            if let Some(h) = &r.set_host
                && h.bytes().any(|b| b.is_ascii_control() || b == b' ')
            {
                return Err(self.error(&key("set_host"), "must be a host[:port] without spaces"));
            }
            if !(0.0..=1.0).contains(&r.access_log_sample) {
                return Err(self.error(
                    &format!("route.{i}.access_log_sample"),
                    "must be between 0 and 1 (the share of requests logged)",
                ));
            }
            if r.access_log_body.0 > MAX_CAPTURE {
                return Err(self.error(
                    &key("access_log_body"),
                    format!("must be at most {MAX_CAPTURE} bytes (64KiB)"),
                ));
            }
            let retry = match &r.retry {
                None => None,
                Some(f) => Some(self.retry(i, f)?),
            };
            routes.push(Route {
                name: r.name.clone(),
                host,
                prefix: r.prefix.clone(),
                methods,
                action,
                strip_prefix: r.strip_prefix,
                set_host: r.set_host.clone(),
                timeout: r.timeout.map(|d| d.0),
                max_body_bytes: r.max_body_bytes.map(|s| s.0),
                underscores_in_headers: r.underscores_in_headers,
                access_log: r.access_log,
                access_log_sample: r.access_log_sample,
                access_log_body: r.access_log_body.0 as usize,
                access_log_headers: r.access_log_headers,
                retry,
                retry_non_idempotent: r.retry_non_idempotent,
                rate_limit: match &r.rate_limit {
                    None | Some(FileRouteLimit::On(true)) => RouteLimit::Inherit,
                    Some(FileRouteLimit::On(false)) => RouteLimit::Off,
                    Some(FileRouteLimit::Own(FileOwnLimit { per_client, global })) => {
                        for (which, rate) in [("per_client", per_client), ("global", global)] {
                            if let Some(r) = rate {
                                self.check_rate(&format!("route.{i}.rate_limit.{which}"), r)?;
                            }
                        }
                        RouteLimit::Own {
                            per_client: *per_client,
                            global: *global,
                        }
                    }
                },
                policy,
                line: self.keys.line(&format!("route.{i}")),
            });
        }
        Ok(routes)
    }

    /// A route's policies: its own keys, and `[request_id]` unless it
    /// sets `request_id` itself.
    fn route_policy(
        &self,
        i: usize,
        r: &FileRoute,
        global_id: Option<&FileRequestId>,
    ) -> Result<RoutePolicy, ConfigError> {
        let default_id = FileRequestId::default();
        let request_id = match &r.request_id {
            None => global_id,
            Some(FileRequestIdSwitch::On(false)) => None,
            Some(FileRequestIdSwitch::On(true)) => Some(global_id.unwrap_or(&default_id)),
            Some(FileRequestIdSwitch::Settings(own)) => Some(own),
        };
        if r.strip_prefix && r.rewrite_prefix.is_some() {
            return Err(self.error(
                self.keys.first_written(&[
                    &format!("route.{i}.rewrite_prefix"),
                    &format!("route.{i}.strip_prefix"),
                ]),
                "use strip_prefix or rewrite_prefix, not both (rewrite_prefix = { from = PREFIX, to = \"/\" } strips)",
            ));
        }
        // A preflight is an OPTIONS request: a route that lists its methods
        // must let it in, or it is answered 405 before CORS sees it.
        if r.cors.is_some() && !r.methods.is_empty() && !r.methods.iter().any(|m| m == "OPTIONS") {
            return Err(self.error(
                &format!("route.{i}.methods"),
                format!(
                    "route '{}' has cors: add \"OPTIONS\" to its methods, so that preflight requests reach it",
                    r.name
                ),
            ));
        }
        let file = FilePolicy {
            request_id,
            cors: r.cors.as_ref(),
            request_headers: r.request_headers.as_ref(),
            response_headers: r.response_headers.as_ref(),
            rewrite_prefix: r.rewrite_prefix.as_ref(),
        };
        let inherited = !matches!(r.request_id, Some(FileRequestIdSwitch::Settings(_)));
        RoutePolicy::compile(&file, &r.name).map_err(|e| {
            // A `[request_id]` the route inherits is wrong where it is written.
            if inherited && e.key.starts_with("request_id.") {
                return self.error(&e.key, e.reason);
            }
            self.policy_error(i, e)
        })
    }

    fn policy_error(&self, route: usize, e: PolicyError) -> ConfigError {
        self.error(&format!("route.{route}.{}", e.key), e.reason)
    }

    fn endpoints(&self, e: &Endpoints) -> Result<Endpoints, ConfigError> {
        for (which, path) in [("health", &e.health), ("ready", &e.ready)] {
            if let Some(p) = path
                && (!p.starts_with('/') || p.contains(['?', '#', ' ']))
            {
                return Err(self.error(
                    &format!("endpoints.{which}"),
                    "must be a path starting with '/', without '?', '#' or spaces",
                ));
            }
        }
        if e.health.is_some() && e.health == e.ready {
            return Err(self.error("endpoints.ready", "must differ from endpoints.health"));
        }
        Ok(e.clone())
    }
}

/// Lower-cases and checks a route host: a DNS name, optionally `*.` first.
/// A header name as `hash-header:` and `header:` take it: letters, digits,
/// `-` and `_`.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The shortest `health_check.interval`: probes are threads of their own.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(50);

fn valid_host(h: &str) -> Option<String> {
    let h = h.to_ascii_lowercase();
    let name = h.strip_prefix("*.").unwrap_or(&h);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.ends_with('.');
    ok.then_some(h)
}

/// A duration written as "250ms", "10s", "5m", "1h" (or "0").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub const ZERO: Dur = Dur(Duration::ZERO);
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "" if n == 0 => Duration::ZERO,
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration: write e.g. \"250ms\", \"10s\", \"5m\", \"1h\""
            ))
        })
    }
}

/// A byte size written as "64KiB", "10MiB", "1GiB" (powers of 1024), "64KB",
/// "10MB", "1GB" (powers of 1000, as SI means them), "512B" or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size(pub u64);

impl Size {
    pub fn get(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// Parses a size; the error says how to write it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "K" | "k" | "M" | "G" => {
            return Err(format!(
                "'{s}': a bare '{unit}' is ambiguous: write {num}{}iB (powers of 1024) or {num}{}B (powers of 1000)",
                unit.to_ascii_uppercase(),
                unit.to_ascii_uppercase()
            ));
        }
        _ => {
            return Err(format!(
                "'{s}' is not a size: write e.g. \"64KiB\", \"10MiB\", \"1GiB\", \"64KB\" or a number of bytes"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: it needs a whole number first"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: \"64KiB\", \"10MiB\", \"64KB\" or a whole number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{n} is not a size: it must not be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    const BASE: &str = "[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n";

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1.5s"), None);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = format!("{BASE}\n[server]\nworkers = 1\nwrokers = 2\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:7: `wrokers`:"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_duration_names_line() {
        let text = format!("{BASE}[timeouts]\nclient_header = \"10 parsecs\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:5: `client_header`:"), "{err}");
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn unknown_upstream_names_its_line() {
        let text =
            format!("{BASE}\n[[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"nope\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:8: `route.upstream`:"), "{err}");
        assert!(err.contains("no [[upstream]] named 'nope'"), "{err}");
    }

    #[test]
    fn route_needs_one_action() {
        let text = format!("{BASE}[[route]]\nname = \"r\"\nprefix = \"/\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("exactly one of"), "{err}");
    }

    #[test]
    fn capture_limits_name_their_keys() {
        let route = "[[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = { status = 200 }\n";
        let text = format!("{BASE}{route}access_log_body = \"1MiB\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("test.toml:8: `route.access_log_body`:"),
            "{err}"
        );
        assert!(err.contains("at most 65536"), "{err}");
        let long = "x".repeat(65);
        let text = format!("{BASE}[access_log]\nredact = [\"ok\", \"{long}\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("test.toml:5: `access_log.redact`:"),
            "{err}"
        );
        assert!(err.contains("1 to 64 bytes"), "{err}");
    }

    #[test]
    fn no_listener_is_an_error() {
        assert!(parse("").unwrap_err().to_string().contains("[[listener]]"));
    }

    #[test]
    fn full_config_parses() {
        let text = format!(
            "{BASE}[[upstream]]\nname = \"b\"\nendpoints = [\"127.0.0.1:9\"]\n\
             [[route]]\nname = \"r\"\nhost = \"*.Example.com\"\nprefix = \"/api\"\nmethods = [\"GET\"]\n\
             upstream = \"b\"\nmax_body_bytes = \"1MiB\"\ntimeout = \"2s\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.routes[0].host.as_deref(), Some("*.example.com"));
        assert_eq!(c.routes[0].max_body_bytes, Some(1 << 20));
        assert_eq!(c.routes[0].line, 7);
    }

    #[test]
    fn sizes_in_kib_are_1024_and_in_kb_1000() {
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("12"), Ok(12));
        assert_eq!(parse_size(" 8 KiB "), Ok(8192));
    }

    #[test]
    fn bare_k_m_g_are_refused_as_ambiguous() {
        let err = parse_size("64K").unwrap_err();
        assert!(
            err.contains("ambiguous") && err.contains("write 64KiB (powers of 1024) or 64KB"),
            "{err}"
        );
        for s in ["64k", "10M", "1G"] {
            assert!(parse_size(s).unwrap_err().contains("ambiguous"), "{s}");
        }
    }

    #[test]
    fn malformed_sizes_are_refused() {
        for s in ["1TiB", "KiB", "1.5MiB", "-1", "64 kib", ""] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert!(
            parse_size("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn an_ambiguous_size_in_the_file_names_its_line() {
        let text = format!("{BASE}[limits]\nmax_headers = 50\nmax_body_bytes = \"10M\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:6: `max_body_bytes`:"), "{err}");
        assert!(err.contains("write 10MiB"), "{err}");
    }

    #[test]
    fn underscores_in_headers_is_off_unless_turned_on() {
        let route = |extra: &str| {
            format!(
                "{BASE}[[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = {{ status = 200 }}\n{extra}"
            )
        };
        assert!(!parse(&route("")).unwrap().routes[0].underscores_in_headers);
        let on = parse(&route("underscores_in_headers = true\n")).unwrap();
        assert!(on.routes[0].underscores_in_headers);
        let err = parse(&route("underscores_in_headers = \"yes\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:8: `underscores_in_headers`:"),
            "{err}"
        );
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn rate_limit_and_outlier_settings_are_checked() {
        let route = |extra: &str| {
            format!(
                "{BASE}[[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = {{ status = 200 }}\n{extra}"
            )
        };
        let own = parse(&route(
            "rate_limit = { per_client = { rate = 2.5, burst = 5 } }\n",
        ))
        .unwrap();
        assert!(matches!(
            own.routes[0].rate_limit,
            RouteLimit::Own {
                per_client: Some(Rate { burst: 5, .. }),
                global: None
            }
        ));
        let off = parse(&route("rate_limit = false\n")).unwrap();
        assert_eq!(off.routes[0].rate_limit, RouteLimit::Off);
        // A misspelt key is refused, never read as an empty override.
        assert!(
            parse(&route(
                "rate_limit = { per_clinet = { rate = 1.0, burst = 1 } }\n"
            ))
            .is_err()
        );
        let err = parse(&route(
            "rate_limit = { global = { rate = 0.0, burst = 1 } }\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("rate must be above 0"), "{err}");
        let err = parse(&format!("{BASE}[rate_limit]\nidle_eviction = \"0s\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`rate_limit.idle_eviction`"), "{err}");
        let err = parse(&format!("{BASE}[rate_limit]\nkey = \"cookie\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("header:NAME"), "{err}");
    }

    #[test]
    fn balance_weights_and_health_checks() {
        let up = |extra: &str| {
            format!(
                "{BASE}[[upstream]]\nname = \"u\"\nendpoints = [\"127.0.0.1:1\", {{ addr = \"127.0.0.1:2\", weight = 3 }}]\n{extra}"
            )
        };
        let c = parse(&up(
            "balance = \"hash-header:X-User\"\nmax_concurrent = 10\n\
             health_check = { path = \"/healthz\", interval = \"2s\", expect_status = \"3xx\" }\n",
        ))
        .unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.endpoints[0].weight, 1);
        assert_eq!(u.endpoints[1].weight, 3);
        assert_eq!(u.balance, Balance::HashHeader("x-user".into()));
        assert_eq!(u.max_concurrent, Some(10));
        let h = u.health_check.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.timeout, Duration::from_secs(2));
        assert_eq!((h.healthy_after, h.unhealthy_after), (2, 3));
        assert_eq!(h.expect_status, (300, 399));
        assert_eq!(
            parse(&up("")).unwrap().upstreams[0].balance,
            Balance::RoundRobin
        );

        let refused = |extra: &str, key: &str, why: &str| {
            let err = parse(&up(extra)).unwrap_err().to_string();
            assert!(err.starts_with("test.toml:"), "{err}");
            assert!(err.contains(&format!("`{key}`")), "{err}");
            assert!(err.contains(why), "{err}");
        };
        refused("balance = \"random\"\n", "upstream.balance", "least-conn");
        refused(
            "balance = \"hash-header:\"\n",
            "upstream.balance",
            "hash-header:NAME",
        );
        refused(
            "max_concurrent = 0\n",
            "upstream.max_concurrent",
            "at least 1",
        );
        refused(
            "health_check = { path = \"health\" }\n",
            "upstream.health_check.path",
            "start with /",
        );
        refused(
            "health_check = { path = \"/h\", interval = \"0s\" }\n",
            "upstream.health_check.interval",
            "at least",
        );
        refused(
            "health_check = { path = \"/h\", unhealthy_after = 0 }\n",
            "upstream.health_check.unhealthy_after",
            "at least 1",
        );
        refused(
            "health_check = { path = \"/h\", expect_status = \"2xy\" }\n",
            "upstream.health_check.expect_status",
            "class",
        );
        let weight = format!(
            "{BASE}[[upstream]]\nname = \"u\"\nendpoints = [\n  {{ addr = \"127.0.0.1:2\", weight = 0 }},\n]\n"
        );
        let err = parse(&weight).unwrap_err().to_string();
        assert!(
            err.starts_with("test.toml:7: `upstream.endpoints.weight`: must be from 1 to 100"),
            "{err}"
        );
        let twice = format!(
            "{BASE}[[upstream]]\nname = \"u\"\nendpoints = [\"127.0.0.1:2\", \"127.0.0.1:2\"]\n"
        );
        let err = parse(&twice).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }
}
