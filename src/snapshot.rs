//! The immutable, compiled form of a `Config` that every shard reads:
//! route table, pre-serialised direct responses, limits. A snapshot is
//! never changed once built; a reload builds a new one and hands it over.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{Action, Config, RouteLimit};
use crate::http1::parse::HeadLimits;
use crate::ratelimit::{Policy, Shared, bucket_id};
use crate::redact::{DEFAULT_FIELDS, Redactor};
use crate::route::RouteTable;

pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    /// Per route: the full response of a `respond` route, head without its
    /// final CRLF (so `Connection: close` can be added) and body.
    pub direct: Vec<Option<Direct>>,
    /// Things that work but are likely mistakes: printed at start and by `check`.
    pub warnings: Vec<String>,
    /// Per route: the rate limits it is held to.
    pub limits: Vec<Policy>,
    /// What captured requests are cleared of: `DEFAULT_FIELDS` and
    /// `[access_log] redact`.
    pub redactor: Redactor,
    /// `[endpoints]`, answered before routing.
    pub builtin: Builtin,
}

pub struct Direct {
    pub head: Box<[u8]>,
    pub body: Box<[u8]>,
}

impl Direct {
    fn new(status: u16, content_type: &str, body: &str) -> Direct {
        let mut head = String::new();
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            status,
            crate::http1::encode::reason(status),
            content_type,
            body.len()
        );
        Direct {
            head: head.into_bytes().into(),
            body: body.as_bytes().into(),
        }
    }

    /// Writes the head up to its last field: the caller may add fields,
    /// then calls `finish`.
    pub fn start(&self, out: &mut Vec<u8>, date: &[u8], connection: &[u8]) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(connection);
    }

    /// Ends the head and adds the body (none for HEAD).
    pub fn finish(&self, out: &mut Vec<u8>, head_method: bool) {
        out.extend_from_slice(b"\r\n");
        if !head_method {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The built-in endpoints, their answers serialised at load: health
/// (liveness) and readiness. Not routes: no rate limit, no metrics, no
/// access log, so a load balancer's checks are not counted as traffic.
#[derive(Default)]
pub struct Builtin {
    health: Option<(Box<str>, Direct)>,
    ready: Option<(Box<str>, Direct, Direct)>,
}

/// What a GET or HEAD to a built-in path is answered.
pub enum BuiltinPath {
    Health,
    Ready,
}

impl Builtin {
    fn compile(config: &Config) -> Builtin {
        let json = "application/json";
        let e = &config.endpoints;
        Builtin {
            health: e.health.as_ref().map(|p| {
                (
                    p.as_str().into(),
                    Direct::new(200, json, r#"{"status":"ok"}"#),
                )
            }),
            ready: e.ready.as_ref().map(|p| {
                let ready = Direct::new(200, json, r#"{"status":"ready"}"#);
                let not = r#"{"error":"an upstream has no endpoint in rotation","status":503}"#;
                (p.as_str().into(), ready, Direct::new(503, json, not))
            }),
        }
    }

    /// Which built-in endpoint a request asks for, if any: GET or HEAD on
    /// its exact path, any host.
    pub fn find(&self, method: &str, path: &str) -> Option<BuiltinPath> {
        if self.health.is_none() && self.ready.is_none() {
            return None;
        }
        if method != "GET" && method != "HEAD" {
            return None;
        }
        if self.health.as_ref().is_some_and(|(p, _)| **p == *path) {
            return Some(BuiltinPath::Health);
        }
        if self.ready.as_ref().is_some_and(|(p, ..)| **p == *path) {
            return Some(BuiltinPath::Ready);
        }
        None
    }

    /// The answer to `which`; `ready` says whether every upstream has an
    /// endpoint in rotation.
    pub fn answer(&self, which: BuiltinPath, ready: bool) -> Option<&Direct> {
        match which {
            BuiltinPath::Health => self.health.as_ref().map(|(_, d)| d),
            BuiltinPath::Ready => self
                .ready
                .as_ref()
                .map(|(_, r, n)| if ready { r } else { n }),
        }
    }
}

impl Snapshot {
    pub fn compile(config: Config) -> Snapshot {
        let (routes, mut warnings) = RouteTable::compile(&config.routes);
        let direct = config
            .routes
            .iter()
            .map(|r| match &r.action {
                Action::Respond(resp) => {
                    Some(Direct::new(resp.status, &resp.content_type, &resp.body))
                }
                Action::Proxy(_) | Action::Redirect(_) => None,
            })
            .collect();
        for (i, u) in config.upstreams.iter().enumerate() {
            let used = config
                .routes
                .iter()
                .any(|r| matches!(r.action, Action::Proxy(x) if x == i));
            if !used {
                warnings.push(format!("upstream '{}' is used by no route", u.name));
            }
            if u.tls.as_ref().is_some_and(|t| t.insecure) {
                warnings.push(config.warning(
                    &format!("upstream.{i}.tls.insecure_skip_verify"),
                    "the upstream's certificates are not verified: anyone on the path can pose as it",
                ));
            }
        }
        warnings.extend(contradictions(&config));
        for tls in config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
            warnings.extend(tls.warnings.iter().cloned());
        }
        let limits = limits(&config);
        let names = DEFAULT_FIELDS
            .iter()
            .copied()
            .chain(config.redact.iter().map(|n| n.as_str()));
        // The config checked every name's length.
        let redactor = Redactor::new(names).unwrap_or_default();
        let builtin = Builtin::compile(&config);
        Snapshot {
            config,
            routes,
            direct,
            warnings,
            limits,
            redactor,
            builtin,
        }
    }

    /// Takes over the shared rate-limit buckets of `previous` that the new
    /// config keeps (same name, same rate): a reload does not refill them.
    pub fn carry_limits(&mut self, previous: &Snapshot) {
        let old: Vec<&Arc<Shared>> = previous
            .limits
            .iter()
            .flat_map(|p| [&p.route, &p.global])
            .flatten()
            .collect();
        for p in &mut self.limits {
            for slot in [&mut p.route, &mut p.global] {
                if let Some(s) = slot
                    && let Some(o) = old.iter().find(|o| o.name == s.name && o.rate == s.rate)
                {
                    *slot = Some(Arc::clone(o));
                }
            }
        }
    }

    pub fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_request_line: self.config.limits.max_request_line.get(),
            max_header_bytes: self.config.limits.max_header_bytes.get(),
        }
    }

    /// The compiled routes, one line each, for `ringway check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for l in &self.config.listeners {
            let Some(tls) = &l.tls else { continue };
            for i in 0..tls.certs.len() {
                let until = tls.certs.not_after(i).map_or(String::new(), |t| {
                    let left = t
                        .duration_since(std::time::SystemTime::now())
                        .map_or(0, |d| d.as_secs() / 86_400);
                    format!(", {left} days left")
                });
                let _ = writeln!(
                    out,
                    "listener {:<13} https certificate {} [{}]{until}",
                    l.name,
                    i + 1,
                    tls.certs.names(i).join(", ")
                );
            }
        }
        for r in &self.config.routes {
            let target = match &r.action {
                Action::Proxy(u) => {
                    let up = &self.config.upstreams[*u];
                    let eps: Vec<String> = up
                        .endpoints
                        .iter()
                        .map(|e| match e.weight {
                            1 => e.addr.to_string(),
                            w => format!("{} weight {w}", e.addr),
                        })
                        .collect();
                    format!("upstream {} {} [{}]", up.name, up.balance, eps.join(", "))
                }
                Action::Respond(resp) => format!("respond {}", resp.status),
                Action::Redirect(r) => format!("redirect {}", r.status),
            };
            let methods = if r.methods.is_empty() {
                "*".to_string()
            } else {
                r.methods.join(",")
            };
            let _ = writeln!(
                out,
                "route {:<16} host {:<20} prefix {:<20} methods {:<12} -> {}{}{}",
                r.name,
                r.host.as_deref().unwrap_or("*"),
                r.prefix,
                methods,
                target,
                if r.strip_prefix {
                    " (strip prefix)"
                } else {
                    ""
                },
                r.policy.describe()
            );
        }
        out
    }
}

/// Limits that are valid one by one but contradict each other: the config
/// works, just not as its author likely meant. Each warning is placed on the
/// line of a key involved, the first one the file writes.
fn contradictions(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (limits, t) = (&cfg.limits, &cfg.timeouts);

    let buffers = limits.max_buffer_bytes.0 / limits.buffer_size.0;
    let conns = cfg.server.max_connections as u64;
    if buffers < conns {
        let key = cfg.keys.first_written(&[
            "server.max_connections",
            "limits.max_buffer_bytes",
            "limits.buffer_size",
        ]);
        out.push(cfg.warning(
            key,
            format!(
                "server.max_connections allows {conns} connections per shard, but the slab holds \
                 {buffers} buffers (limits.max_buffer_bytes / limits.buffer_size): a connection \
                 being served holds one and a proxied request three (a quiet one holds none), so \
                 past {buffers} busy connections, or {} proxied requests, clients get 503; raise \
                 limits.max_buffer_bytes to {} or lower server.max_connections to {buffers}",
                buffers / 3,
                size_text(conns * limits.buffer_size.0),
            ),
        ));
    }

    let connect = t.upstream_connect.0;
    let total = t.request_total.0;
    if !total.is_zero() && total < connect {
        out.push(cfg.warning(
            "timeouts.request_total",
            format!(
                "{total:?} is shorter than timeouts.upstream_connect ({connect:?}): connecting \
                 alone may take longer than a whole request is allowed"
            ),
        ));
    }

    for (i, u) in cfg.upstreams.iter().enumerate() {
        if u.idle_timeout >= u.max_lifetime {
            let idle = format!("upstream.{i}.idle_timeout");
            let life = format!("upstream.{i}.max_lifetime");
            out.push(cfg.warning(
                cfg.keys.first_written(&[&idle, &life]),
                format!(
                    "upstream '{}': idle_timeout ({:?}) is not shorter than max_lifetime ({:?}): \
                     a pooled connection reaches its lifetime first, so idle_timeout never applies",
                    u.name, u.idle_timeout, u.max_lifetime
                ),
            ));
        }
    }

    for (i, r) in cfg.routes.iter().enumerate() {
        let key = |name: &str| format!("route.{i}.{name}");
        match r.action {
            Action::Proxy(_) => {
                if let Some(d) = r.timeout
                    && !d.is_zero()
                    && d < connect
                {
                    out.push(cfg.warning(
                        &key("timeout"),
                        format!(
                            "route '{}': timeout ({d:?}) is shorter than timeouts.upstream_connect \
                             ({connect:?}): connecting alone may take longer than the whole \
                             request is allowed",
                            r.name
                        ),
                    ));
                }
            }
            Action::Respond(_) | Action::Redirect(_) => {
                let written = |name: &str| cfg.keys.written(&key(name)).is_some();
                let proxy_only = [
                    ("timeout", r.timeout.is_some()),
                    ("strip_prefix", r.strip_prefix),
                    ("set_host", r.set_host.is_some()),
                    ("underscores_in_headers", r.underscores_in_headers),
                    ("rewrite_prefix", written("rewrite_prefix")),
                    ("request_headers", written("request_headers")),
                    ("response_headers", written("response_headers")),
                ];
                for (name, set) in proxy_only {
                    if set {
                        out.push(cfg.warning(
                            &key(name),
                            format!(
                                "route '{}' answers by itself (`respond` or `redirect`): `{name}` \
                                 applies only to proxied requests and has no effect here",
                                r.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// A byte count as a config would write it, rounded up to whole units.
fn size_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            return format!("\"{}{name}\"", bytes.div_ceil(unit));
        }
    }
    bytes.to_string()
}

/// Each route's rate limits: `[rate_limit]`'s, or its own, or none.
fn limits(config: &Config) -> Vec<Policy> {
    let rl = &config.rate_limit;
    let shards = config.workers();
    let global = rl
        .global
        .map(|r| Arc::new(Shared::new("global".into(), r, shards)));
    config
        .routes
        .iter()
        .map(|route| match &route.rate_limit {
            RouteLimit::Off => Policy::default(),
            RouteLimit::Inherit => Policy {
                per_client: rl.per_client.map(|r| (0, r)),
                route: None,
                global: global.clone(),
            },
            RouteLimit::Own {
                per_client,
                global: own,
            } => Policy {
                per_client: match per_client {
                    Some(r) => Some((bucket_id(&route.name), *r)),
                    None => rl.per_client.map(|r| (0, r)),
                },
                route: own
                    .map(|r| Arc::new(Shared::new(format!("route:{}", route.name), r, shards))),
                global: global.clone(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n";
    /// An upstream (lines 4 to 6) and a route to it (lines 7 to 10).
    const PROXIED: &str = "[[upstream]]\nname = \"u\"\nendpoints = [\"127.0.0.1:9\"]\n\
                           [[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";
    const ROUTE_TO_U: &str = "[[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";

    /// The warnings of `BASE` + `body`; the listener takes lines 1 to 3.
    fn warnings(body: &str) -> Vec<String> {
        let config = Config::parse(Path::new("w.toml"), &format!("{BASE}{body}"))
            .unwrap_or_else(|e| panic!("{e}"));
        Snapshot::compile(config).warnings
    }

    /// Asserts exactly one warning, at `place` ("w.toml:LINE: `KEY`:"), saying `reason`.
    fn warns_once(body: &str, place: &str, reason: &str) {
        let w = warnings(body);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].starts_with(place), "want {place}\ngot  {}", w[0]);
        assert!(w[0].contains(reason), "want {reason:?}\ngot  {}", w[0]);
    }

    #[test]
    fn defaults_and_the_example_limits_agree() {
        assert_eq!(warnings(PROXIED), Vec::<String>::new());
    }

    #[test]
    fn fewer_buffers_than_connections() {
        warns_once(
            &format!("[server]\nmax_connections = 10000\n{PROXIED}"),
            "w.toml:5: `server.max_connections`:",
            "allows 10000 connections per shard, but the slab holds 8192 buffers",
        );
        // Only the slab is written: the warning points there, and says what would do.
        warns_once(
            &format!("[limits]\nmax_buffer_bytes = \"64MiB\"\n{PROXIED}"),
            "w.toml:5: `limits.max_buffer_bytes`:",
            "past 2048 busy connections, or 682 proxied requests, clients get 503; raise \
             limits.max_buffer_bytes to \"256MiB\" or lower server.max_connections to 2048",
        );
    }

    #[test]
    fn request_total_shorter_than_connecting() {
        warns_once(
            &format!(
                "[timeouts]\nupstream_connect = \"2s\"\nrequest_total = \"1500ms\"\n{PROXIED}"
            ),
            "w.toml:6: `timeouts.request_total`:",
            "1.5s is shorter than timeouts.upstream_connect (2s)",
        );
        assert!(warnings(&format!("[timeouts]\nrequest_total = \"3s\"\n{PROXIED}")).is_empty());
    }

    #[test]
    fn idle_timeout_not_below_max_lifetime() {
        let upstream = "[[upstream]]\nname = \"u\"\nendpoints = [\"127.0.0.1:9\"]\n";
        warns_once(
            &format!("{upstream}idle_timeout = \"10m\"\n{ROUTE_TO_U}"),
            "w.toml:7: `upstream.idle_timeout`:",
            "upstream 'u': idle_timeout (600s) is not shorter than max_lifetime (600s)",
        );
        warns_once(
            &format!(
                "{PROXIED}\n[[upstream]]\nname = \"v\"\nendpoints = [\"127.0.0.1:9\"]\nmax_lifetime = \"30s\"\n\
                      [[route]]\nname = \"v\"\nprefix = \"/v\"\nupstream = \"v\"\n"
            ),
            "w.toml:15: `upstream.max_lifetime`:",
            "upstream 'v': idle_timeout (55s) is not shorter than max_lifetime (30s)",
        );
    }

    #[test]
    fn route_timeout_shorter_than_connecting() {
        warns_once(
            &format!("{PROXIED}timeout = \"1s\"\n"),
            "w.toml:11: `route.timeout`:",
            "route 'r': timeout (1s) is shorter than timeouts.upstream_connect (3s)",
        );
        // "0s" turns the limit off for the route.
        assert!(warnings(&format!("{PROXIED}timeout = \"0s\"\n")).is_empty());
        assert!(warnings(&format!("{PROXIED}timeout = \"3s\"\n")).is_empty());
    }

    #[test]
    fn proxy_keys_on_a_respond_route() {
        let w = warnings(
            "[[route]]\nname = \"home\"\nprefix = \"/\"\nrespond = { status = 200 }\n\
             set_host = \"h\"\nstrip_prefix = true\ntimeout = \"1s\"\nunderscores_in_headers = true\n",
        );
        let places: Vec<&str> = w
            .iter()
            .map(|w| w.split(" route 'home'").next().unwrap_or(""))
            .collect();
        assert_eq!(
            places,
            [
                "w.toml:10: `route.timeout`:",
                "w.toml:9: `route.strip_prefix`:",
                "w.toml:8: `route.set_host`:",
                "w.toml:11: `route.underscores_in_headers`:",
            ]
        );
        assert!(
            w.iter()
                .all(|w| w.contains("route 'home' answers by itself")),
            "{w:#?}"
        );
        // A redirect sends nothing upstream either.
        warns_once(
            "[[route]]\nname = \"old\"\nprefix = \"/\"\nredirect = { status = 301, location = \"/new\" }\n\
             request_headers = { remove = [\"Cookie\"] }\n",
            "w.toml:8: `route.request_headers`:",
            "route 'old' answers by itself (`respond` or `redirect`)",
        );
        // Their defaults say nothing.
        let quiet = "[[route]]\nname = \"home\"\nprefix = \"/\"\nrespond = { status = 200 }\n\
                     strip_prefix = false\nunderscores_in_headers = false\n";
        assert!(warnings(quiet).is_empty());
    }
}
