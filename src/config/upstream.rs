//! `[[upstream]]`: an upstream's endpoints and weights, how one is chosen
//! (`Balance`), its connection pools, health checks, outlier ejection and
//! retry budget.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use std::sync::Arc;

use serde::Deserialize;

use super::tls::{FileUpstreamTls, UpstreamTls};
use super::{ConfigError, ConfigValidator, Dur, yes};

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
    /// Spoken to over TLS.
    pub tls: Option<Arc<UpstreamTls>>,
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

/// Most idle connections one endpoint's pool may keep: the pool allocates
/// room for them up front, and one source address has no more ports than
/// this towards one endpoint anyway.
pub const MAX_IDLE_PER_ENDPOINT: usize = 65_535;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
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
    tls: Option<FileUpstreamTls>,
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

/// The shortest `health_check.interval`: probes are threads of their own.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(50);

/// A header name as `hash-header:` and `header:` take it: letters, digits,
/// `-` and `_`.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ConfigValidator<'_> {
    pub(super) fn upstreams(&self, file: &[FileUpstream]) -> Result<Vec<Upstream>, ConfigError> {
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
            let mut hosts: Vec<&str> = Vec::new();
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
                // The host as written, for TLS: "[::1]:443" → "::1".
                let host = text.rsplit_once(':').map_or(text.as_str(), |(h, _)| h);
                hosts.push(host.trim_start_matches('[').trim_end_matches(']'));
            }
            let tls = match &u.tls {
                Some(t) => self.upstream_tls(&key("tls"), t, &endpoints, &hosts)?,
                None => None,
            };
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
                tls,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{BASE, parse};

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
