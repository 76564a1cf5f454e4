//! Configuration, in two steps: the TOML file is deserialised into
//! `FileConfig` (unknown keys rejected, durations and sizes parsed), then
//! validated into `Config`, whose values are known to be consistent.
//! `Snapshot::compile` turns a `Config` into what the shards read.
//!
//! Every error names the file, the line and the key, and says what to do.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Shards to run; 0 means one per available core.
    pub workers: usize,
    /// Pin each shard to its own core.
    pub pin_cores: bool,
    /// Open client connections per shard; past it new connections are refused.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Dur,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            workers: 0,
            pin_cores: true,
            max_connections: 10_000,
            drain_timeout: Dur::secs(10),
        }
    }
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
    pub endpoints: Vec<SocketAddr>,
    pub max_idle_per_endpoint: usize,
    pub max_per_endpoint: usize,
    /// Longest wait for a free connection slot once `max_per_endpoint` are busy.
    pub queue_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// Requests per connection before it is retired; 0 means no limit.
    pub max_requests: u64,
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
    pub line: usize,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Index into `Config::upstreams`.
    Proxy(usize),
    Respond(Respond),
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
    listener: Vec<Spanned<FileListener>>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    upstream: Vec<Spanned<FileUpstream>>,
    #[serde(default)]
    route: Vec<Spanned<FileRoute>>,
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
    endpoints: Vec<String>,
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
        let at = Located { path, text };
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let line_text = text[offset..].lines().next().unwrap_or("");
            let before = &text[..offset];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let whole_line = text[line_start..].lines().next().unwrap_or(line_text);
            let key = whole_line
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            at.error(offset, &key, e.message().trim())
        })?;
        at.validate(file)
    }

    pub fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

struct Located<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Located<'_> {
    fn error(&self, offset: usize, key: &str, reason: impl fmt::Display) -> ConfigError {
        let offset = offset.min(self.text.len());
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line: self.text[..offset].matches('\n').count() + 1,
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    fn validate(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let limits = file.limits;
        let top = 0;
        if limits.buffer_size.0 < 4096 || limits.buffer_size.0 > (16 << 20) {
            return Err(self.error(top, "limits.buffer_size", "must be between 4KiB and 16MiB"));
        }
        if limits.max_header_bytes.0 > limits.buffer_size.0 || limits.max_header_bytes.0 < 256 {
            return Err(self.error(
                top,
                "limits.max_header_bytes",
                format!(
                    "must be between 256 and limits.buffer_size ({}): a request head is read into one buffer",
                    limits.buffer_size.0
                ),
            ));
        }
        if limits.max_request_line.0 > limits.max_header_bytes.0 {
            return Err(self.error(
                top,
                "limits.max_request_line",
                "must not exceed limits.max_header_bytes",
            ));
        }
        if limits.max_headers == 0 || limits.max_headers > MAX_HEADERS_CAP {
            return Err(self.error(
                top,
                "limits.max_headers",
                format!("must be between 1 and {MAX_HEADERS_CAP}"),
            ));
        }
        if limits.max_buffer_bytes.0 < 4 * limits.buffer_size.0 {
            return Err(self.error(
                top,
                "limits.max_buffer_bytes",
                "must hold at least 4 buffers (limits.buffer_size each)",
            ));
        }
        if file.server.max_connections == 0 {
            return Err(self.error(top, "server.max_connections", "must be at least 1"));
        }

        if file.listener.is_empty() {
            return Err(self.error(
                top,
                "listener",
                "no [[listener]]: add one, e.g. bind = \"127.0.0.1:8080\"",
            ));
        }
        let mut listeners = Vec::new();
        for l in &file.listener {
            let at = l.span().start;
            let l = l.get_ref();
            if listeners.iter().any(|x: &Listener| x.name == l.name) {
                return Err(self.error(
                    at,
                    "listener.name",
                    format!("duplicate listener name '{}'", l.name),
                ));
            }
            let bind = l.bind.parse::<SocketAddr>().map_err(|_| {
                self.error(
                    at,
                    "listener.bind",
                    format!("'{}' is not an address:port (IPv6 as [::1]:8080)", l.bind),
                )
            })?;
            listeners.push(Listener {
                name: l.name.clone(),
                bind,
            });
        }

        let mut upstreams: Vec<Upstream> = Vec::new();
        for u in &file.upstream {
            let at = u.span().start;
            let u = u.get_ref();
            if upstreams.iter().any(|x| x.name == u.name) {
                return Err(self.error(
                    at,
                    "upstream.name",
                    format!("duplicate upstream name '{}'", u.name),
                ));
            }
            if u.endpoints.is_empty() {
                return Err(self.error(at, "upstream.endpoints", "needs at least one host:port"));
            }
            let mut endpoints = Vec::new();
            for e in &u.endpoints {
                // Resolved once here, on the control thread: shards never do DNS.
                #[allow(clippy::disallowed_methods)]
                let addr = e
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        self.error(
                            at,
                            "upstream.endpoints",
                            format!("cannot resolve '{e}' as host:port"),
                        )
                    })?;
                endpoints.push(addr);
            }
            if u.max_per_endpoint == 0 {
                return Err(self.error(at, "upstream.max_per_endpoint", "must be at least 1"));
            }
            if u.max_idle_per_endpoint > u.max_per_endpoint {
                return Err(self.error(
                    at,
                    "upstream.max_idle_per_endpoint",
                    "must not exceed max_per_endpoint",
                ));
            }
            upstreams.push(Upstream {
                name: u.name.clone(),
                endpoints,
                max_idle_per_endpoint: u.max_idle_per_endpoint,
                max_per_endpoint: u.max_per_endpoint,
                queue_timeout: u.queue_timeout.0,
                idle_timeout: u.idle_timeout.0,
                max_lifetime: u.max_lifetime.0,
                max_requests: u.max_requests,
            });
        }

        let mut routes: Vec<Route> = Vec::new();
        for r in &file.route {
            let at = r.span().start;
            let r = r.get_ref();
            if routes.iter().any(|x| x.name == r.name) {
                return Err(self.error(
                    at,
                    "route.name",
                    format!("duplicate route name '{}'", r.name),
                ));
            }
            if !r.prefix.starts_with('/') || r.prefix.contains(['?', '#', ' ']) {
                return Err(self.error(
                    at,
                    "route.prefix",
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
                        at,
                        "route.host",
                        format!("'{h}' is not a host name (a wildcard is written *.example.com)"),
                    )
                })?),
            };
            let mut methods = Vec::new();
            for m in &r.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                    return Err(self.error(
                        at,
                        "route.methods",
                        format!("'{m}' is not a method: write it in capitals, e.g. \"GET\""),
                    ));
                }
                methods.push(m.clone());
            }
            let action = match (&r.upstream, &r.respond) {
                (Some(name), None) => {
                    let idx = upstreams
                        .iter()
                        .position(|u| &u.name == name)
                        .ok_or_else(|| {
                            let known: Vec<_> = upstreams.iter().map(|u| u.name.as_str()).collect();
                            self.error(
                                at,
                                "route.upstream",
                                format!(
                                    "no [[upstream]] named '{name}' (defined: {})",
                                    known.join(", ")
                                ),
                            )
                        })?;
                    Action::Proxy(idx)
                }
                (None, Some(resp)) => {
                    if !(200..=599).contains(&resp.status) {
                        return Err(self.error(at, "route.respond.status", "must be 200..=599"));
                    }
                    if resp.content_type.contains(['\r', '\n']) {
                        return Err(self.error(
                            at,
                            "route.respond.content_type",
                            "must be one line",
                        ));
                    }
                    Action::Respond(resp.clone())
                }
                _ => {
                    return Err(self.error(
                        at,
                        "route",
                        format!(
                            "route '{}' needs exactly one of `upstream` or `respond`",
                            r.name
                        ),
                    ));
                }
            };
            if let Some(h) = &r.set_host
                && h.bytes().any(|b| b.is_ascii_control() || b == b' ')
            {
                return Err(self.error(
                    at,
                    "route.set_host",
                    "must be a host[:port] without spaces",
                ));
            }
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
                line: self.text[..at.min(self.text.len())].matches('\n').count() + 1,
            });
        }

        Ok(Config {
            path: self.path.to_path_buf(),
            server: file.server,
            listeners,
            timeouts: file.timeouts,
            limits,
            upstreams,
            routes,
        })
    }
}

/// Lower-cases and checks a route host: a DNS name, optionally `*.` first.
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

/// A byte size written as "64KiB", "10MiB", "1GiB", "512" or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn get(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => parse_size(&s).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "'{s}' is not a size: write e.g. \"64KiB\", \"10MiB\", \"1GiB\" or a number of bytes"
                ))
            }),
        }
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
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1TiB"), None);
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
    fn unknown_upstream_names_route_line() {
        let text =
            format!("{BASE}\n[[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"nope\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:5: `route.upstream`:"), "{err}");
        assert!(err.contains("no [[upstream]] named 'nope'"), "{err}");
    }

    #[test]
    fn route_needs_one_action() {
        let text = format!("{BASE}[[route]]\nname = \"r\"\nprefix = \"/\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("exactly one of"), "{err}");
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
}
