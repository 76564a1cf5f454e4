//! `[[route]]`: what a route matches, what it does (`Action`), its
//! retries, rate limits and policies, and their validation.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, ConfigValidator, Dur, Rate, Size, Upstream, one, yes};
use crate::policy::{
    FileCors, FileHeaderRules, FilePolicy, FileRedirect, FileRequestId, FileRequestIdSwitch,
    FileRewrite, PolicyError, Redirect, RoutePolicy,
};

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

/// The most of a body `route.access_log_body` captures.
pub const MAX_CAPTURE: u64 = 64 * 1024;

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
pub(super) struct FileRoute {
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

impl ConfigValidator<'_> {
    pub(super) fn routes(
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
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{BASE, parse};

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
}
