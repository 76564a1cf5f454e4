//! The route matcher, compiled once per config.
//!
//! A request is matched by host (exact, then `*.suffix` wildcards from the
//! most specific, then routes without a host), then by the longest prefix on
//! a path-segment boundary, then by method. Prefixes sit in a hash map per
//! host, and a lookup walks the path's own segment boundaries from the
//! longest down, so a match costs one hash probe per path segment however
//! many routes there are.
#![forbid(unsafe_code)]

use ahash::AHashMap;

use crate::config::Route;

/// What a request matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'a> {
    /// Index into the config's routes.
    Route(usize),
    /// The path matched but the method did not; the value is the `Allow` header.
    MethodNotAllowed(&'a str),
    NotFound,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    exact: AHashMap<Box<str>, PathTable>,
    /// Keyed by the suffix with its dot: `*.example.com` is stored as `.example.com`.
    wildcard: AHashMap<Box<str>, PathTable>,
    any_host: PathTable,
}

#[derive(Debug, Default)]
struct PathTable {
    prefixes: AHashMap<Box<str>, Group>,
}

/// All routes on one host and prefix, in config order.
#[derive(Debug)]
struct Group {
    entries: Vec<(Methods, usize)>,
    allow: Box<str>,
}

/// A method set: a bit per common method, plus any others by name.
#[derive(Debug, Clone, Default)]
struct Methods {
    all: bool,
    bits: u16,
    other: Vec<Box<str>>,
}

const KNOWN: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

fn bit(m: &str) -> Option<u16> {
    KNOWN.iter().position(|k| *k == m).map(|i| 1 << i)
}

impl Methods {
    fn from_names(names: &[String]) -> Methods {
        let mut m = Methods {
            all: names.is_empty(),
            ..Methods::default()
        };
        for n in names {
            match bit(n) {
                Some(b) => m.bits |= b,
                None => m.other.push(n.as_str().into()),
            }
        }
        // As in nginx and the RFC: a resource that answers GET answers HEAD.
        if m.bits & 1 != 0 {
            m.bits |= 2;
        }
        m
    }

    fn contains(&self, method: &str) -> bool {
        self.all
            || match bit(method) {
                Some(b) => self.bits & b != 0,
                None => self.other.iter().any(|o| &**o == method),
            }
    }

    /// True if every method of `other` is also in `self`.
    fn covers(&self, other: &Methods) -> bool {
        self.all
            || (!other.all
                && other.bits & !self.bits == 0
                && other.other.iter().all(|o| self.other.contains(o)))
    }

    fn overlaps(&self, other: &Methods) -> bool {
        self.all
            || other.all
            || self.bits & other.bits != 0
            || other.other.iter().any(|o| self.other.contains(o))
    }
}

/// Drops a trailing slash, so `/api/` and `/api` are one prefix.
fn normalize(prefix: &str) -> &str {
    match prefix.trim_end_matches('/') {
        "" => "/",
        p => p,
    }
}

impl RouteTable {
    /// Compiles the routes; the warnings say which routes can never match.
    pub fn compile(routes: &[Route]) -> (RouteTable, Vec<String>) {
        let mut table = RouteTable::default();
        let mut warnings = Vec::new();
        for (idx, r) in routes.iter().enumerate() {
            let paths = match r.host.as_deref() {
                None => &mut table.any_host,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => table.wildcard.entry(suffix.into()).or_default(),
                    None => table.exact.entry(h.into()).or_default(),
                },
            };
            let methods = Methods::from_names(&r.methods);
            let group = paths
                .prefixes
                .entry(normalize(&r.prefix).into())
                .or_insert_with(|| Group {
                    entries: Vec::new(),
                    allow: "".into(),
                });
            for (earlier, eidx) in &group.entries {
                let e = &routes[*eidx];
                if earlier.covers(&methods) {
                    warnings.push(format!(
                        "route '{}' (line {}) is shadowed by route '{}' (line {}): same host and prefix, and its methods are all taken",
                        r.name, r.line, e.name, e.line
                    ));
                } else if earlier.overlaps(&methods) {
                    warnings.push(format!(
                        "route '{}' (line {}) is partly shadowed by route '{}' (line {}): the methods they share go to '{}'",
                        r.name, r.line, e.name, e.line, e.name
                    ));
                }
            }
            group.entries.push((methods, idx));
        }
        for paths in table
            .exact
            .values_mut()
            .chain(table.wildcard.values_mut())
            .chain(std::iter::once(&mut table.any_host))
        {
            for group in paths.prefixes.values_mut() {
                group.allow = allow_header(&group.entries);
            }
        }
        (table, warnings)
    }

    /// `host` is lower-case without a port; `path` is without the query.
    pub fn find<'a>(&'a self, host: &str, path: &str, method: &str) -> Match<'a> {
        if let Some(t) = self.exact.get(host) {
            match t.find(path, method) {
                Match::NotFound => {}
                m => return m,
            }
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(t) = self.wildcard.get(suffix) {
                    match t.find(path, method) {
                        Match::NotFound => {}
                        m => return m,
                    }
                }
                rest = &rest[dot + 1..];
            }
        }
        self.any_host.find(path, method)
    }
}

impl PathTable {
    fn find<'a>(&'a self, path: &str, method: &str) -> Match<'a> {
        if self.prefixes.is_empty() {
            return Match::NotFound;
        }
        let mut candidate = path;
        loop {
            if let Some(g) = self.prefixes.get(candidate) {
                return match g.entries.iter().find(|(m, _)| m.contains(method)) {
                    Some((_, idx)) => Match::Route(*idx),
                    None => Match::MethodNotAllowed(&g.allow),
                };
            }
            if candidate.len() <= 1 {
                return Match::NotFound;
            }
            // Next shorter prefix on a segment boundary; "/a" falls back to "/".
            candidate = match candidate.rfind('/') {
                Some(0) | None => "/",
                Some(i) => &candidate[..i],
            };
        }
    }
}

fn allow_header(entries: &[(Methods, usize)]) -> Box<str> {
    let mut names: Vec<&str> = Vec::new();
    for (m, _) in entries {
        if m.all {
            return KNOWN.join(", ").into();
        }
        for (i, k) in KNOWN.iter().enumerate() {
            if m.bits & (1 << i) != 0 && !names.contains(k) {
                names.push(k);
            }
        }
        for o in &m.other {
            if !names.contains(&&**o) {
                names.push(o);
            }
        }
    }
    names.join(", ").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, Respond};

    fn route(name: &str, host: Option<&str>, prefix: &str, methods: &[&str]) -> Route {
        Route {
            name: name.into(),
            host: host.map(Into::into),
            prefix: prefix.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            action: Action::Respond(Respond {
                status: 200,
                body: String::new(),
                content_type: String::new(),
            }),
            strip_prefix: false,
            set_host: None,
            timeout: None,
            max_body_bytes: None,
            underscores_in_headers: false,
            access_log: true,
            access_log_sample: 1.0,
            access_log_body: 0,
            access_log_headers: false,
            retry: None,
            retry_non_idempotent: false,
            rate_limit: crate::config::RouteLimit::Inherit,
            policy: Default::default(),
            line: 1,
        }
    }

    #[test]
    fn segment_boundary() {
        let (t, w) = RouteTable::compile(&[route("api", None, "/api", &[])]);
        assert!(w.is_empty());
        for p in ["/api", "/api/", "/api/x", "/api/x/y"] {
            assert_eq!(t.find("h", p, "GET"), Match::Route(0), "{p}");
        }
        for p in ["/apix", "/", "/ap", "/x/api"] {
            assert_eq!(t.find("h", p, "GET"), Match::NotFound, "{p}");
        }
    }

    #[test]
    fn longest_prefix_wins_and_root_catches_all() {
        let routes = [
            route("root", None, "/", &[]),
            route("api", None, "/api/", &[]),
            route("v1", None, "/api/v1", &[]),
        ];
        let (t, _) = RouteTable::compile(&routes);
        assert_eq!(t.find("h", "/api/v1/users", "GET"), Match::Route(2));
        assert_eq!(t.find("h", "/api/v2", "GET"), Match::Route(1));
        assert_eq!(t.find("h", "/api/v1x", "GET"), Match::Route(1));
        assert_eq!(t.find("h", "/other", "GET"), Match::Route(0));
        assert_eq!(t.find("h", "/", "GET"), Match::Route(0));
    }

    #[test]
    fn host_exact_then_wildcard_then_any() {
        let routes = [
            route("any", None, "/", &[]),
            route("wild", Some("*.example.com"), "/", &[]),
            route("exact", Some("api.example.com"), "/v1", &[]),
        ];
        let (t, _) = RouteTable::compile(&routes);
        assert_eq!(t.find("api.example.com", "/v1/x", "GET"), Match::Route(2));
        // Exact host has no match for /v2: falls back to the wildcard.
        assert_eq!(t.find("api.example.com", "/v2", "GET"), Match::Route(1));
        assert_eq!(t.find("a.b.example.com", "/", "GET"), Match::Route(1));
        assert_eq!(t.find("example.com", "/", "GET"), Match::Route(0));
        assert_eq!(t.find("other.org", "/v1", "GET"), Match::Route(0));
    }

    #[test]
    fn methods_and_allow() {
        let routes = [
            route("read", None, "/items", &["GET"]),
            route("write", None, "/items", &["POST", "PURGE"]),
        ];
        let (t, w) = RouteTable::compile(&routes);
        assert!(w.is_empty());
        assert_eq!(t.find("h", "/items", "HEAD"), Match::Route(0));
        assert_eq!(t.find("h", "/items/1", "POST"), Match::Route(1));
        assert_eq!(t.find("h", "/items/1", "PURGE"), Match::Route(1));
        assert_eq!(
            t.find("h", "/items", "DELETE"),
            Match::MethodNotAllowed("GET, HEAD, POST, PURGE")
        );
    }

    #[test]
    fn shadowed_routes_warn() {
        let routes = [
            route("a", None, "/x", &[]),
            route("b", None, "/x/", &["GET"]),
            route("c", Some("h"), "/", &["GET", "POST"]),
            route("d", Some("h"), "/", &["POST", "PUT"]),
        ];
        let (_, w) = RouteTable::compile(&routes);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("route 'b'") && w[0].contains("shadowed by route 'a'"));
        assert!(w[1].contains("partly shadowed"));
    }

    #[test]
    fn many_routes() {
        let routes: Vec<_> = (0..1000)
            .map(|i| route(&format!("r{i}"), None, &format!("/svc{i}/api"), &[]))
            .collect();
        let (t, _) = RouteTable::compile(&routes);
        assert_eq!(t.find("h", "/svc777/api/x", "GET"), Match::Route(777));
        assert_eq!(t.find("h", "/svc777", "GET"), Match::NotFound);
    }
}
