//! Per-request gateway policies of a route: request IDs, CORS, header
//! rules, a prefix rewrite and redirects.
//!
//! Everything here is compiled at config load (`RoutePolicy::compile`,
//! `Redirect::compile`): templates are split into literal and variable
//! parts, header names lower-cased, the static CORS lines pre-serialised.
//! On the request path a policy only scans the head once for the fields it
//! needs (`RoutePolicy::tag`), keeps what the response still needs in a
//! small `Copy` value on the stack (`Tags`), and writes header lines into
//! the head buffer being built. No lock, no allocation, no shared state: a
//! request ID comes from a per-thread (so per-shard) generator.
//!
//! A route without policies has `RoutePolicy::default()`: every step is
//! one test of an empty field.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

use httparse::Header;
use serde::Deserialize;

use crate::http1::encode::HOP_BY_HOP;
pub use crate::requestid::MAX_REQUEST_ID;
use crate::requestid::{new_uuid, valid_request_id};
pub use crate::template::Vars;
use crate::template::{Template, Var};

/// The header a request ID goes in when the config names none.
pub const DEFAULT_REQUEST_ID_HEADER: &str = "X-Request-Id";

// ---- the file as written ----

/// `request_id`: `true`, `false`, or its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileRequestIdSwitch {
    On(bool),
    Settings(FileRequestId),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRequestId {
    pub header: String,
    pub trust_incoming: bool,
}

impl Default for FileRequestId {
    fn default() -> Self {
        FileRequestId {
            header: DEFAULT_REQUEST_ID_HEADER.into(),
            trust_incoming: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCors {
    pub origins: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub expose: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    /// Seconds, as `Access-Control-Max-Age` says it.
    pub max_age: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileHeaderRules {
    pub add: BTreeMap<String, String>,
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRewrite {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedirect {
    pub status: u16,
    pub location: String,
}

/// A route's policy keys as the file writes them.
#[derive(Debug, Clone, Default)]
pub struct FilePolicy<'a> {
    pub request_id: Option<&'a FileRequestId>,
    pub cors: Option<&'a FileCors>,
    pub request_headers: Option<&'a FileHeaderRules>,
    pub response_headers: Option<&'a FileHeaderRules>,
    pub rewrite_prefix: Option<&'a FileRewrite>,
}

/// A policy key that is wrong: `key` is relative to the route
/// (`cors.origins.1`), `reason` says what to write instead.
#[derive(Debug)]
pub struct PolicyError {
    pub key: String,
    pub reason: String,
}

fn error(key: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        key: key.into(),
        reason: reason.into(),
    }
}

// ---- compiled ----

/// A route's policies, compiled. `Default` is none at all.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    request_id: Option<RequestId>,
    cors: Option<Cors>,
    request_rules: HeaderRules,
    response_rules: HeaderRules,
    rewrite: Option<Rewrite>,
    /// Lower-case names of the request fields not forwarded: those the
    /// rules remove or set, and the request ID's (ours replaces it).
    request_drops: Box<[Box<str>]>,
    /// The same for the upstream's response: the rules', the request
    /// ID's, and the CORS fields the route answers itself.
    response_drops: Box<[Box<str>]>,
}

#[derive(Debug, Clone)]
struct RequestId {
    /// As written, for the lines we send.
    header: Box<str>,
    trust_incoming: bool,
}

#[derive(Debug, Clone)]
struct Cors {
    /// Empty with `any`.
    origins: Box<[Box<str>]>,
    any: bool,
    /// After `Access-Control-Allow-Origin` on a preflight answer: methods,
    /// headers, max age, credentials.
    preflight: Box<[u8]>,
    /// After it on any other response: credentials, exposed headers.
    actual: Box<[u8]>,
}

#[derive(Debug, Clone, Default)]
struct HeaderRules {
    set: Box<[(Box<str>, Template)]>,
    add: Box<[(Box<str>, Template)]>,
}

#[derive(Debug, Clone)]
struct Rewrite {
    from: Box<str>,
    to: Box<str>,
    /// `to` ending in `/`: what the path `/` becomes when `from` is `/`.
    to_dir: Box<str>,
}

/// `redirect = { status, location }`: the route's answer.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub status: u16,
    location: Template,
}

/// What a request's policies decided from its head, kept for its response
/// (the head itself may be gone by then): the request ID and which allowed
/// origin asked. Small and `Copy`, it lives in the request's plan.
#[derive(Debug, Clone, Copy)]
pub struct Tags {
    id: [u8; MAX_REQUEST_ID],
    id_len: u8,
    /// The index of the allowed origin the request came from; `ANY` for `*`.
    origin: Option<u16>,
    pub client: IpAddr,
}

const ANY: u16 = u16::MAX;

impl Tags {
    pub fn new(client: IpAddr) -> Tags {
        Tags {
            id: [0; MAX_REQUEST_ID],
            id_len: 0,
            origin: None,
            client,
        }
    }

    /// The request ID given to the request, if its route gives one.
    pub fn request_id(&self) -> Option<&[u8]> {
        (self.id_len > 0).then(|| &self.id[..usize::from(self.id_len)])
    }

    fn vars(&self) -> Vars<'_> {
        Vars {
            client_ip: self.client,
            request_id: self.request_id().unwrap_or_default(),
            host: "",
            path: "",
            query: "",
        }
    }
}

/// Fields only the proxy writes on a request, besides the hop-by-hop ones
/// (`encode::HOP_BY_HOP`): a rule may not touch them.
const REQUEST_OWNED: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "via",
];

/// The same for a response.
const RESPONSE_OWNED: [&str; 4] = ["content-length", "transfer-encoding", "date", "via"];

/// Whether the proxy writes `name` (lower-case) itself: a hop-by-hop field
/// or one of `owned`.
fn proxy_owns(owned: &[&str], name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || owned.contains(&name)
}

/// The CORS fields of a response, as a prefix (see `encode::response_fields`):
/// with `cors` on a route, the upstream's are dropped and ours sent.
const CORS_FIELDS: &str = "access-control-*";

impl RoutePolicy {
    /// Compiles a route's policies. `route` is its name, written into
    /// templates for `${route}`.
    pub fn compile(file: &FilePolicy<'_>, route: &str) -> Result<RoutePolicy, PolicyError> {
        let request_id = file.request_id.map(RequestId::compile).transpose()?;
        let id_name = request_id.as_ref().map(|r| r.header.to_ascii_lowercase());
        let cors = file.cors.map(Cors::compile).transpose()?;
        let vars = [Var::ClientIp, Var::RequestId, Var::Host];
        let env = RuleEnv {
            route,
            request_id: request_id.is_some(),
            id_name: id_name.as_deref(),
        };
        let request_rules = match file.request_headers {
            None => HeaderRules::default(),
            Some(f) => HeaderRules::compile(f, "request_headers", &REQUEST_OWNED, &vars, &env)?,
        };
        // A response is written once the request's head is gone: its host is
        // not kept for it.
        let vars = [Var::ClientIp, Var::RequestId];
        let response_rules = match file.response_headers {
            None => HeaderRules::default(),
            Some(f) => HeaderRules::compile(f, "response_headers", &RESPONSE_OWNED, &vars, &env)?,
        };
        let mut request_drops = dropped_names(file.request_headers);
        let mut response_drops = dropped_names(file.response_headers);
        if let Some(name) = &id_name {
            request_drops.push(name.as_str().into());
            response_drops.push(name.as_str().into());
        }
        if cors.is_some() {
            response_drops.push(CORS_FIELDS.into());
        }
        let rewrite = file.rewrite_prefix.map(Rewrite::compile).transpose()?;
        Ok(RoutePolicy {
            request_id,
            cors,
            request_rules,
            response_rules,
            rewrite,
            request_drops: request_drops.into(),
            response_drops: response_drops.into(),
        })
    }

    /// Whether the route has no policy at all.
    pub fn is_empty(&self) -> bool {
        self.request_id.is_none()
            && self.cors.is_none()
            && self.rewrite.is_none()
            && self.request_rules.is_empty()
            && self.response_rules.is_empty()
    }

    /// The policies a route has, for `ringway check`: "" or " [request_id, cors]".
    pub fn describe(&self) -> String {
        // The request ID's own name is among the drops.
        let own_drops = usize::from(self.request_id.is_some());
        let request_rules = !self.request_rules.is_empty() || self.request_drops.len() > own_drops;
        let names = [
            ("request_id", self.request_id.is_some()),
            ("cors", self.cors.is_some()),
            ("request_headers", request_rules),
            ("response_headers", !self.response_rules.is_empty()),
            ("rewrite_prefix", self.rewrite.is_some()),
        ];
        let on: Vec<&str> = names
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        match on.is_empty() {
            true => String::new(),
            false => format!(" [{}]", on.join(", ")),
        }
    }

    /// Whether anything is done to the upstream's response head.
    pub fn touches_response(&self) -> bool {
        self.request_id.is_some() || self.cors.is_some() || !self.response_rules.is_empty()
    }

    /// Reads what the policies need from the request head: its request ID
    /// (kept only from a trusted client, and only if it is short visible
    /// ASCII; else a new one) and the allowed origin it names.
    pub fn tag(&self, headers: &[Header<'_>], tags: &mut Tags) {
        if self.request_id.is_none() && self.cors.is_none() {
            return;
        }
        let mut incoming = None;
        for h in headers {
            if let Some(cors) = &self.cors
                && h.name.eq_ignore_ascii_case("origin")
            {
                tags.origin = cors.allows(h.value);
            }
            if let Some(rid) = &self.request_id
                && rid.trust_incoming
                && incoming.is_none()
                && h.name.eq_ignore_ascii_case(&rid.header)
                && valid_request_id(h.value)
            {
                incoming = Some(h.value);
            }
        }
        if self.request_id.is_some() {
            let len = match incoming {
                Some(v) => {
                    tags.id[..v.len()].copy_from_slice(v);
                    v.len()
                }
                None => {
                    let mut uuid = [0u8; 36];
                    new_uuid(&mut uuid);
                    tags.id[..36].copy_from_slice(&uuid);
                    36
                }
            };
            tags.id_len = len as u8;
        }
    }

    /// Whether this is a CORS preflight the route answers itself: OPTIONS
    /// with `Access-Control-Request-Method`.
    pub fn is_preflight(&self, method: &str, headers: &[Header<'_>]) -> bool {
        self.cors.is_some()
            && method == "OPTIONS"
            && headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("access-control-request-method"))
    }

    /// The target sent upstream, as `(lead, rest)`, when `rewrite_prefix`
    /// applies to it; `None` leaves it to `strip_prefix`.
    pub fn rewrite<'a>(&'a self, target: &'a str) -> Option<(&'a str, &'a str)> {
        self.rewrite.as_ref().map(|r| r.apply(target))
    }

    /// Request fields the upstream does not get (lower-case).
    pub fn request_drops(&self) -> &[Box<str>] {
        &self.request_drops
    }

    /// Response fields the client does not get (lower-case).
    pub fn response_drops(&self) -> &[Box<str>] {
        &self.response_drops
    }

    /// The lines added to the request sent upstream: its ID, then the
    /// rules' `set` and `add`.
    pub fn request_lines(&self, out: &mut Vec<u8>, tags: &Tags, vars: &Vars<'_>) {
        if let (Some(rid), Some(id)) = (&self.request_id, tags.request_id()) {
            line(out, &rid.header, id);
        }
        self.request_rules.write(out, vars);
    }

    /// The lines added to the upstream's final response: its request ID,
    /// CORS, then the rules' `set` and `add`.
    pub fn response_lines(&self, out: &mut Vec<u8>, tags: &Tags) {
        self.answer_lines(out, tags);
        self.response_rules.write(out, &tags.vars());
    }

    /// The lines of any answer on this route, the proxy's own included:
    /// the request ID and CORS.
    pub fn answer_lines(&self, out: &mut Vec<u8>, tags: &Tags) {
        if let (Some(rid), Some(id)) = (&self.request_id, tags.request_id()) {
            line(out, &rid.header, id);
        }
        if let Some(cors) = &self.cors {
            if let Some(i) = tags.origin {
                cors.allow_origin(out, i);
                out.extend_from_slice(&cors.actual);
            }
            out.extend_from_slice(b"Vary: Origin\r\n");
        }
    }

    /// The whole answer to a preflight, 204 and no body. An origin not
    /// allowed gets no CORS fields, which the browser takes as a refusal.
    pub fn write_preflight(&self, out: &mut Vec<u8>, tags: &Tags, date: &[u8], connection: &[u8]) {
        let Some(cors) = &self.cors else { return };
        out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n");
        line(out, "Date", date);
        if let Some(i) = tags.origin {
            cors.allow_origin(out, i);
            out.extend_from_slice(&cors.preflight);
        }
        out.extend_from_slice(
            b"Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n",
        );
        if let (Some(rid), Some(id)) = (&self.request_id, tags.request_id()) {
            line(out, &rid.header, id);
        }
        out.extend_from_slice(connection);
        out.extend_from_slice(b"\r\n");
    }
}

impl RequestId {
    fn compile(r: &FileRequestId) -> Result<RequestId, PolicyError> {
        if !is_token(&r.header) {
            return Err(error(
                "request_id.header",
                format!("'{}' is not a header name", r.header),
            ));
        }
        // The ID replaces the field both ways: never one that frames or
        // routes the message.
        let lower = r.header.to_ascii_lowercase();
        if proxy_owns(&REQUEST_OWNED, &lower) || proxy_owns(&RESPONSE_OWNED, &lower) {
            return Err(error(
                "request_id.header",
                format!(
                    "{} is written by the proxy itself: name another header",
                    r.header
                ),
            ));
        }
        Ok(RequestId {
            header: r.header.as_str().into(),
            trust_incoming: r.trust_incoming,
        })
    }
}

/// What a route's header rules may refer to, besides their own keys.
struct RuleEnv<'a> {
    route: &'a str,
    request_id: bool,
    /// The request ID's header, lower-case: the rules leave it alone.
    id_name: Option<&'a str>,
}

fn dropped_names(rules: Option<&FileHeaderRules>) -> Vec<Box<str>> {
    let Some(r) = rules else { return Vec::new() };
    let names = r.remove.iter().chain(r.set.keys());
    let mut out: Vec<Box<str>> = names.map(|n| n.to_ascii_lowercase().into()).collect();
    out.sort();
    out.dedup();
    out
}

impl HeaderRules {
    fn compile(
        f: &FileHeaderRules,
        table: &str,
        owned: &[&str],
        vars: &[Var],
        env: &RuleEnv<'_>,
    ) -> Result<HeaderRules, PolicyError> {
        let check_name = |key: String, name: &str| {
            let lower = name.to_ascii_lowercase();
            if !is_token(name) {
                return Err(error(key, format!("'{name}' is not a header name")));
            }
            if proxy_owns(owned, &lower) {
                return Err(error(
                    key,
                    format!("{name} is written by the proxy itself; a rule cannot change it"),
                ));
            }
            if env.id_name == Some(lower.as_str()) {
                return Err(error(
                    key,
                    format!("{name} carries the route's request_id; the rule would fight it"),
                ));
            }
            Ok(())
        };
        for (j, name) in f.remove.iter().enumerate() {
            // `X-Internal-*` removes every field whose name starts so.
            let key = format!("{table}.remove.{j}");
            let stem = name
                .strip_suffix('*')
                .filter(|s| !s.is_empty())
                .unwrap_or(name);
            if stem.contains('*') {
                return Err(error(key, format!("'{name}': '*' may only end a name")));
            }
            let lower = stem.to_ascii_lowercase();
            let covers = |n: &str| stem.len() < name.len() && n.starts_with(&lower);
            let written = HOP_BY_HOP.iter().chain(owned).copied();
            if let Some(n) = written.chain(env.id_name).find(|n| covers(n)) {
                return Err(error(
                    key,
                    format!("'{name}' would remove {n}, which the proxy writes itself"),
                ));
            }
            check_name(key, stem)?;
        }
        let compiled = |which: &str, map: &BTreeMap<String, String>| {
            let mut out = Vec::new();
            for (name, value) in map {
                let key = format!("{table}.{which}.{name}");
                if name.contains('*') {
                    return Err(error(key, format!("'{name}' is not a header name")));
                }
                check_name(key.clone(), name)?;
                let t = Template::compile(value, env.route, vars)
                    .map_err(|reason| error(key.clone(), reason))?;
                if t.uses(Var::RequestId) && !env.request_id {
                    return Err(error(
                        key,
                        "${request_id} needs request_id on this route (or a [request_id] table)",
                    ));
                }
                out.push((name.as_str().into(), t));
            }
            Ok::<_, PolicyError>(out.into_boxed_slice())
        };
        Ok(HeaderRules {
            set: compiled("set", &f.set)?,
            add: compiled("add", &f.add)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty()
    }

    fn write(&self, out: &mut Vec<u8>, vars: &Vars<'_>) {
        for (name, value) in self.set.iter().chain(self.add.iter()) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            value.render(out, vars);
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl Cors {
    fn compile(f: &FileCors) -> Result<Cors, PolicyError> {
        if f.origins.is_empty() {
            return Err(error(
                "cors.origins",
                "needs at least one origin (\"https://app.example.com\") or \"*\"",
            ));
        }
        let any = f.origins.iter().any(|o| o == "*");
        if any && f.origins.len() > 1 {
            return Err(error(
                "cors.origins",
                "\"*\" allows every origin: list it alone, or list origins without it",
            ));
        }
        if any && f.credentials {
            return Err(error(
                "cors.credentials",
                "cannot be true with origins = [\"*\"] (browsers refuse credentials with a \
                 wildcard origin): list the origins that may send credentials",
            ));
        }
        for (j, o) in f.origins.iter().enumerate() {
            if !any && !valid_origin(o) {
                return Err(error(
                    format!("cors.origins.{j}"),
                    format!("'{o}' is not an origin: write scheme://host[:port], no path"),
                ));
            }
        }
        for (which, list) in [
            ("methods", &f.methods),
            ("headers", &f.headers),
            ("expose", &f.expose),
        ] {
            for (j, v) in list.iter().enumerate() {
                if !(is_token(v) || v == "*") {
                    return Err(error(
                        format!("cors.{which}.{j}"),
                        format!("'{v}' is not a method or header name"),
                    ));
                }
            }
        }
        let mut preflight = Vec::new();
        let methods = match f.methods.is_empty() {
            true => "GET, HEAD, POST".to_string(),
            false => f.methods.join(", "),
        };
        line(
            &mut preflight,
            "Access-Control-Allow-Methods",
            methods.as_bytes(),
        );
        if !f.headers.is_empty() {
            line(
                &mut preflight,
                "Access-Control-Allow-Headers",
                f.headers.join(", ").as_bytes(),
            );
        }
        if let Some(age) = f.max_age {
            line(
                &mut preflight,
                "Access-Control-Max-Age",
                age.to_string().as_bytes(),
            );
        }
        let mut actual = Vec::new();
        if f.credentials {
            line(&mut preflight, "Access-Control-Allow-Credentials", b"true");
            line(&mut actual, "Access-Control-Allow-Credentials", b"true");
        }
        if !f.expose.is_empty() {
            line(
                &mut actual,
                "Access-Control-Expose-Headers",
                f.expose.join(", ").as_bytes(),
            );
        }
        let origins = match any {
            true => Box::default(),
            false => f.origins.iter().map(|o| o.as_str().into()).collect(),
        };
        Ok(Cors {
            origins,
            any,
            preflight: preflight.into(),
            actual: actual.into(),
        })
    }

    fn allows(&self, origin: &[u8]) -> Option<u16> {
        if self.any {
            return Some(ANY);
        }
        let i = self
            .origins
            .iter()
            .position(|o| o.as_bytes().eq_ignore_ascii_case(origin))?;
        u16::try_from(i).ok().filter(|&i| i != ANY)
    }

    fn allow_origin(&self, out: &mut Vec<u8>, i: u16) {
        let origin = match self.origins.get(usize::from(i)) {
            Some(o) if i != ANY => o.as_bytes(),
            _ => b"*",
        };
        line(out, "Access-Control-Allow-Origin", origin);
    }
}

impl Rewrite {
    fn compile(f: &FileRewrite) -> Result<Rewrite, PolicyError> {
        for (which, p) in [("from", &f.from), ("to", &f.to)] {
            if !p.starts_with('/') || !p.bytes().all(is_path_byte) {
                return Err(error(
                    format!("rewrite_prefix.{which}"),
                    format!("'{p}' must be a path starting with '/', without '?', '#' or spaces"),
                ));
            }
        }
        let from = f.from.trim_end_matches('/');
        let to_dir = match f.to.ends_with('/') {
            true => f.to.clone(),
            false => format!("{}/", f.to),
        };
        Ok(Rewrite {
            from: from.into(),
            to: f.to.as_str().into(),
            to_dir: to_dir.into(),
        })
    }

    /// `from` is matched on a segment boundary: `/api` rewrites `/api`,
    /// `/api/x` and `/api?q`, never `/apix`.
    fn apply<'a>(&'a self, target: &'a str) -> (&'a str, &'a str) {
        // "?q" is what the parser leaves of "http://h?q": the path is "/",
        // which only a rewrite from "/" matches.
        if target.starts_with('?') {
            let lead = if self.from.is_empty() {
                &*self.to_dir
            } else {
                "/"
            };
            return (lead, target);
        }
        let rest = match target.strip_prefix(&*self.from) {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
            _ => return ("", target),
        };
        let to = &*self.to;
        if rest.starts_with('/') {
            return (to.strip_suffix('/').unwrap_or(to), rest);
        }
        (to, rest)
    }
}

impl Redirect {
    pub fn compile(f: &FileRedirect, route: &str) -> Result<Redirect, PolicyError> {
        if ![301, 302, 303, 307, 308].contains(&f.status) {
            return Err(error(
                "redirect.status",
                format!(
                    "{} is not a redirect: use 301, 302, 303, 307 or 308",
                    f.status
                ),
            ));
        }
        let vars = [Var::Path, Var::Query, Var::Host];
        let location = Template::compile(&f.location, route, &vars)
            .map_err(|reason| error("redirect.location", reason))?;
        if f.location.is_empty() || !location.is_literal_without(b" ") {
            return Err(error(
                "redirect.location",
                "must be a URL or a path, without spaces",
            ));
        }
        Ok(Redirect {
            status: f.status,
            location,
        })
    }

    /// The whole answer, head only (`Content-Length: 0`), the route's
    /// request ID and CORS lines included.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        vars: &Vars<'_>,
        policy: &RoutePolicy,
        tags: &Tags,
        date: &[u8],
        connection: &[u8],
    ) {
        let reason = crate::http1::encode::reason(self.status);
        let _ = write!(out, "HTTP/1.1 {} {reason}\r\nLocation: ", self.status);
        self.location.render(out, vars);
        out.extend_from_slice(b"\r\nContent-Length: 0\r\n");
        line(out, "Date", date);
        policy.answer_lines(out, tags);
        out.extend_from_slice(connection);
        out.extend_from_slice(b"\r\n");
    }
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// RFC 9110 §5.6.2 `token`: what a field name is made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'?' | b'#')
}

/// `scheme://host[:port]`, as a browser sends it in `Origin`.
fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_on_segment_boundary() {
        let r = |from: &str, to: &str| {
            Rewrite::compile(&FileRewrite {
                from: from.into(),
                to: to.into(),
            })
            .unwrap()
        };
        let join = |(a, b): (&str, &str)| format!("{a}{b}");
        assert_eq!(join(r("/api", "/v2").apply("/api/x?q")), "/v2/x?q");
        assert_eq!(join(r("/api", "/v2/").apply("/api/x")), "/v2/x");
        assert_eq!(join(r("/api/", "/").apply("/api/x")), "/x");
        assert_eq!(join(r("/api", "/").apply("/api")), "/");
        assert_eq!(join(r("/api", "/v2").apply("/api?q")), "/v2?q");
        assert_eq!(join(r("/api", "/v2").apply("/apix")), "/apix");
        // Absolute form without a path ("http://h?q"): the path is "/".
        assert_eq!(join(r("/api", "/v2").apply("?q")), "/?q");
        assert_eq!(join(r("/", "/v2").apply("?q")), "/v2/?q");
        assert_eq!(join(r("/", "/v2").apply("/?q")), "/v2/?q");
        assert_eq!(join(r("/", "/").apply("?q")), "/?q");
    }

    #[test]
    fn cors_wildcard_with_credentials_is_refused() {
        let f = FileCors {
            origins: vec!["*".into()],
            methods: vec![],
            headers: vec![],
            expose: vec![],
            credentials: true,
            max_age: None,
        };
        assert_eq!(Cors::compile(&f).unwrap_err().key, "cors.credentials");
    }
}
