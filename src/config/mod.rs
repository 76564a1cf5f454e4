//! Configuration, in two steps: the TOML file is deserialised into
//! `FileConfig` (unknown keys rejected, durations and sizes parsed), then
//! validated into `Config`, whose values are known to be consistent.
//! `Snapshot::compile` turns a `Config` into what the shards read.
//!
//! Every error names the file, the line and the key, and says what to do.
#![forbid(unsafe_code)]

mod files;
mod metrics;
mod rate_limit;
mod route;
mod server;
mod tls;
mod units;
mod upstream;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::policy::FileRequestId;

pub use files::FileDigests;
pub use metrics::Metrics;
pub use rate_limit::{LimitKey, Rate, RateLimit};
pub use route::{
    Action, MAX_ATTEMPTS, MAX_CAPTURE, MAX_RETRY_BUFFER, Respond, Retry, RetryOn, Route, RouteLimit,
};
pub use server::{
    Endpoints, Limits, Listener, MAX_BUFFERS, MAX_HEADERS_CAP, Server, Steer, Timeouts,
};
pub use tls::{ListenerTls, UpstreamTls};
pub use units::{Cidr, Dur, Size, parse_duration, parse_size};
pub use upstream::{
    Balance, Endpoint, HealthCheck, MAX_IDLE_PER_ENDPOINT, MAX_WEIGHT, Outlier, RetryBudget,
    Upstream,
};

use files::FileReader;
use metrics::{FileAccessLog, FileMetrics};
use rate_limit::FileRateLimit;
use route::FileRoute;
use server::FileListener;
use upstream::FileUpstream;

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
    /// The other files it names (certificates, keys, CA files) as this
    /// load read them, for `server.watch_config`.
    pub files: FileDigests,
    /// The header a listener passes a client certificate's subject in:
    /// every client's own lines of it are dropped, on every listener.
    pub subject_header: Option<String>,
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

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(path, &Config::read(path)?)
    }

    /// The config file's text.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse_reading(path, text).0
    }

    /// `parse`, and the other files the load read (certificates, keys, CA
    /// files) with a digest of each, up to the one that failed if it
    /// failed: what `server.watch_config` watches besides the config.
    pub fn parse_reading(path: &Path, text: &str) -> (Result<Config, ConfigError>, FileDigests) {
        let syntax = |e: toml::de::Error| syntax_error(path, text, &e);
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => return (Err(syntax(e)), FileDigests::default()),
        };
        let keys = KeyLines::read(text, doc.get_ref());
        let file = match FileConfig::deserialize(toml::de::Deserializer::from(doc)) {
            Ok(file) => file,
            Err(e) => return (Err(syntax(e)), FileDigests::default()),
        };
        let reader = FileReader::default();
        let validator = ConfigValidator {
            path,
            keys,
            files: &reader,
        };
        let config = validator.validate(file);
        let files = reader.into_digests();
        let config = config.map(|mut c| {
            c.text = text.to_string();
            c.files = files.clone();
            c
        });
        (config, files)
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

/// Turns a `FileConfig` into a `Config`, or into the first error, placed on
/// the line of the key that is wrong.
struct ConfigValidator<'a> {
    path: &'a Path,
    keys: KeyLines,
    /// Every other file is read through it.
    files: &'a FileReader,
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

    /// A warning placed as an error is: "file:line: `key`: reason".
    fn warning(&self, key: &str, reason: impl fmt::Display) -> String {
        format!(
            "{}:{}: `{}`: {reason}",
            self.path.display(),
            self.keys.line(key),
            display_key(key)
        )
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
        let subject_header = listeners
            .iter()
            .find_map(|l| l.tls.as_ref()?.client_subject_header.clone());
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
            files: FileDigests::default(),
            subject_header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    pub(super) const BASE: &str = "[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n";

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = format!("{BASE}\n[server]\nworkers = 1\nwrokers = 2\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:7: `wrokers`:"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
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
