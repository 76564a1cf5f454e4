//! `[server]`, `[[listener]]`, `[timeouts]`, `[limits]` and `[endpoints]`:
//! how the proxy runs and listens, and the bounds on each connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::tls::{FileTls, ListenerTls};
use super::{ConfigError, ConfigValidator, Dur, Size};

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

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    /// With a `tls` table: HTTPS.
    pub tls: Option<Arc<ListenerTls>>,
    /// A request whose Host the certificate chosen by its connection's SNI
    /// does not cover gets 421 (domain fronting is refused).
    pub strict_sni: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileListener {
    name: String,
    bind: String,
    tls: Option<FileTls>,
    #[serde(default)]
    strict_sni: bool,
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

/// Most buffers one shard's slab may hold: the slab allocates its free list
/// up front (with 32KiB buffers this is 32GiB per shard).
pub const MAX_BUFFERS: u64 = 1 << 20;

impl ConfigValidator<'_> {
    pub(super) fn check_limits(&self, limits: &Limits) -> Result<(), ConfigError> {
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
    pub(super) fn check_timeouts(&self, t: &Timeouts) -> Result<(), ConfigError> {
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

    pub(super) fn listeners(&self, file: &[FileListener]) -> Result<Vec<Listener>, ConfigError> {
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
            if l.strict_sni && l.tls.is_none() {
                return Err(self.error(
                    &format!("listener.{i}.strict_sni"),
                    "needs a tls table: only a TLS connection has an SNI to hold the Host to",
                ));
            }
            let tls = match &l.tls {
                Some(t) => Some(Arc::new(self.listener_tls(i, t)?)),
                None => None,
            };
            listeners.push(Listener {
                name: l.name.clone(),
                bind,
                tls,
                strict_sni: l.strict_sni,
            });
        }
        // Routes are every listener's: the header a listener passes a
        // subject in is dropped from every client, on every listener, so
        // there is one.
        let mut named: Option<(&str, &str)> = None;
        for (i, l) in listeners.iter().enumerate() {
            let Some(h) = l
                .tls
                .as_ref()
                .and_then(|t| t.client_subject_header.as_deref())
            else {
                continue;
            };
            match named {
                Some((other, by)) if !other.eq_ignore_ascii_case(h) => {
                    return Err(self.error(
                        &format!("listener.{i}.tls.client_subject_header"),
                        format!(
                            "'{h}': listener '{by}' passes the subject in '{other}'; every listener must use one header"
                        ),
                    ));
                }
                _ => named = Some((h, &l.name)),
            }
        }
        Ok(listeners)
    }

    pub(super) fn endpoints(&self, e: &Endpoints) -> Result<Endpoints, ConfigError> {
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

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn no_listener_is_an_error() {
        assert!(parse("").unwrap_err().to_string().contains("[[listener]]"));
    }
}
