//! The immutable, compiled form of a `Config` that every shard reads:
//! route table, pre-serialised direct responses, limits. A snapshot is
//! never changed once built; a reload builds a new one and hands it over.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use crate::config::{Action, Config};
use crate::http1::parse::HeadLimits;
use crate::route::RouteTable;

pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    /// Per route: the full response of a `respond` route, head without its
    /// final CRLF (so `Connection: close` can be added) and body.
    pub direct: Vec<Option<Direct>>,
    /// Things that work but are likely mistakes: printed at start and by `check`.
    pub warnings: Vec<String>,
}

pub struct Direct {
    pub head: Box<[u8]>,
    pub body: Box<[u8]>,
}

impl Snapshot {
    pub fn compile(config: Config) -> Snapshot {
        let (routes, mut warnings) = RouteTable::compile(&config.routes);
        let direct = config
            .routes
            .iter()
            .map(|r| match &r.action {
                Action::Respond(resp) => {
                    let mut head = String::new();
                    let _ = write!(
                        head,
                        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
                        resp.status,
                        reason(resp.status),
                        resp.content_type,
                        resp.body.len()
                    );
                    Some(Direct {
                        head: head.into_bytes().into(),
                        body: resp.body.as_bytes().into(),
                    })
                }
                Action::Proxy(_) => None,
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
        }
        Snapshot {
            config,
            routes,
            direct,
            warnings,
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
        for r in &self.config.routes {
            let target = match &r.action {
                Action::Proxy(u) => {
                    let up = &self.config.upstreams[*u];
                    let eps: Vec<String> = up.endpoints.iter().map(|e| e.to_string()).collect();
                    format!("upstream {} [{}]", up.name, eps.join(", "))
                }
                Action::Respond(resp) => format!("respond {}", resp.status),
            };
            let methods = if r.methods.is_empty() {
                "*".to_string()
            } else {
                r.methods.join(",")
            };
            let _ = writeln!(
                out,
                "route {:<16} host {:<20} prefix {:<20} methods {:<12} -> {}{}",
                r.name,
                r.host.as_deref().unwrap_or("*"),
                r.prefix,
                methods,
                target,
                if r.strip_prefix {
                    " (strip prefix)"
                } else {
                    ""
                }
            );
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}
