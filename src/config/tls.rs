//! TLS settings. A listener's `tls` table: its certificates, loaded and
//! checked as the config is (so `ringway check` and a reload refuse a bad
//! one, naming the file), and the rustls config its handshakes use. An
//! upstream's `tls`: the name to verify, the roots to verify it against.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use rustls::pki_types::{ServerName, TrustAnchor};
use serde::Deserialize;

use super::{ConfigError, ConfigValidator, Dur, Endpoint};
use crate::certs::{self, Certificates, Pair, Resumption};

/// A TLS listener as configured and loaded.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub certs: Arc<Certificates>,
    pub server: Arc<rustls::ServerConfig>,
    /// A handshake not done within this is closed.
    pub handshake_timeout: Dur,
    /// Handshakes in flight per shard; a connection past it is closed at once.
    pub max_handshakes: usize,
    /// The request header that carries a verified client certificate's
    /// subject upstream (any such header from the client is removed).
    pub client_subject_header: Option<String>,
    /// Certificates that expire within 14 days.
    pub warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    certificates: Vec<FilePair>,
    handshake_timeout: Option<Dur>,
    max_handshakes: Option<usize>,
    client_ca: Option<PathBuf>,
    client_auth: Option<ClientAuth>,
    client_subject_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePair {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClientAuth {
    Required,
    Optional,
}

/// Session tickets and the session cache, one set for the whole process:
/// every shard resumes what any shard began, before and after a reload.
fn resumption() -> Result<&'static Resumption, String> {
    static ONCE: OnceLock<Resumption> = OnceLock::new();
    if let Some(r) = ONCE.get() {
        return Ok(r);
    }
    let r = Resumption::new(SESSION_CACHE)?;
    Ok(ONCE.get_or_init(|| r))
}

/// Sessions the cache keeps (for clients that resume by session ID rather
/// than by ticket); past it the oldest go.
const SESSION_CACHE: usize = 10_240;

impl ConfigValidator<'_> {
    pub(super) fn listener_tls(&self, i: usize, t: &FileTls) -> Result<ListenerTls, ConfigError> {
        let key = |k: &str| format!("listener.{i}.tls.{k}");
        if t.certificates.is_empty() {
            return Err(self.error(
                &key("certificates"),
                "needs at least one { cert, key } pair",
            ));
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let pairs: Vec<Pair> = t
            .certificates
            .iter()
            .map(|p| Pair {
                cert: base.join(&p.cert),
                key: base.join(&p.key),
            })
            .collect();
        let (certs, warnings) =
            Certificates::load(&pairs, SystemTime::now(), &|p| self.files.read(p))
                .map_err(|e| self.error(&key("certificates"), e))?;
        let warnings = warnings
            .iter()
            .map(|w| self.warning(&key("certificates"), w))
            .collect();
        let client_auth = match (&t.client_ca, t.client_auth) {
            (Some(ca), auth) => Some(
                certs::client_verifier(&base.join(ca), auth != Some(ClientAuth::Optional), &|p| {
                    self.files.read(p)
                })
                .map_err(|e| self.error(&key("client_ca"), e))?,
            ),
            (None, Some(_)) => {
                return Err(self.error(
                    &key("client_auth"),
                    "needs client_ca: the CA certificates client certificates are verified against",
                ));
            }
            (None, None) => None,
        };
        if t.client_subject_header.is_some() && t.client_ca.is_none() {
            return Err(self.error(
                &key("client_subject_header"),
                "needs client_ca: only a verified client certificate has a subject to pass on",
            ));
        }
        if let Some(h) = &t.client_subject_header
            && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(self.error(
                &key("client_subject_header"),
                format!("'{h}' is not a header name (letters, digits and '-')"),
            ));
        }
        if let Some(h) = &t.client_subject_header {
            let lower = h.to_ascii_lowercase();
            let framing = [
                "content-length",
                "transfer-encoding",
                "host",
                "via",
                "forwarded",
            ];
            if crate::http1::encode::HOP_BY_HOP.contains(&lower.as_str())
                || framing.contains(&lower.as_str())
                || lower.starts_with("x-forwarded-")
            {
                return Err(self.error(
                    &key("client_subject_header"),
                    format!(
                        "'{h}' frames, routes or traces the request: dropping the client's own lines of it would change what the upstream reads; use a header of its own, e.g. X-Client-Subject"
                    ),
                ));
            }
        }
        let handshake_timeout = t.handshake_timeout.unwrap_or(Dur::secs(10));
        if handshake_timeout.0.is_zero() {
            return Err(self.error(&key("handshake_timeout"), "must be more than 0"));
        }
        let max_handshakes = t.max_handshakes.unwrap_or(1024);
        if max_handshakes == 0 {
            return Err(self.error(&key("max_handshakes"), "must be at least 1"));
        }
        let certs = Arc::new(certs);
        let server = resumption()
            .and_then(|r| certs::server_config(certs.clone(), r, client_auth))
            .map_err(|e| self.error(&key("certificates"), e))?;
        Ok(ListenerTls {
            certs,
            server,
            handshake_timeout,
            max_handshakes,
            client_subject_header: t.client_subject_header.clone(),
            warnings,
        })
    }
}

/// An upstream spoken to over TLS.
#[derive(Debug)]
pub struct UpstreamTls {
    pub client: Arc<rustls::ClientConfig>,
    /// The name each endpoint is sent as SNI and verified for, in the order
    /// of the endpoints: `sni`, else the host the endpoint is written with.
    pub names: Vec<ServerName<'static>>,
    /// The CA certificates of `ca` as this load read them; `None`: the
    /// system's roots, read once per process.
    ca_roots: Option<Vec<TrustAnchor<'static>>>,
    /// Certificates are not verified (`insecure_skip_verify`).
    pub insecure: bool,
}

impl UpstreamTls {
    /// Whether a connection this made to its endpoint `i` is one `new`
    /// would make to its endpoint `j`: the same name sent and verified,
    /// against the same CA certificates (what the file holds, not its
    /// path), verified or not alike. A reload keeps an endpoint's pooled
    /// connections only then.
    pub fn connects_alike(&self, i: usize, new: &UpstreamTls, j: usize) -> bool {
        self.insecure == new.insecure
            && self.ca_roots == new.ca_roots
            && self.names[i] == new.names[j]
    }
}

/// `tls = true`, or its settings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FileUpstreamTls {
    On(bool),
    Settings(FileUpstreamTlsSettings),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstreamTlsSettings {
    sni: Option<String>,
    ca: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

impl ConfigValidator<'_> {
    /// An upstream's `tls`, for its endpoints written as `hosts` (the text
    /// before the port).
    pub(super) fn upstream_tls(
        &self,
        key: &str,
        tls: &FileUpstreamTls,
        endpoints: &[Endpoint],
        hosts: &[&str],
    ) -> Result<Option<Arc<UpstreamTls>>, ConfigError> {
        let default = FileUpstreamTlsSettings::default();
        let t = match tls {
            FileUpstreamTls::On(false) => return Ok(None),
            FileUpstreamTls::On(true) => &default,
            FileUpstreamTls::Settings(t) => t,
        };
        let (roots, ca_roots) = match &t.ca {
            Some(ca) => {
                let path = self.path.parent().unwrap_or(Path::new(".")).join(ca);
                let roots = certs::roots(&path, &|p| self.files.read(p))
                    .map_err(|e| self.error(&format!("{key}.ca"), e))?;
                let anchors = roots.roots.clone();
                (roots, Some(anchors))
            }
            None => (certs::system_roots().map_err(|e| self.error(key, e))?, None),
        };
        let client =
            certs::client_config(roots, t.insecure_skip_verify).map_err(|e| self.error(key, e))?;
        let mut names = Vec::with_capacity(endpoints.len());
        for (e, host) in endpoints.iter().zip(hosts) {
            let name = t.sni.as_deref().unwrap_or(host);
            let name = ServerName::try_from(name.to_string()).map_err(|_| {
                let at = if t.sni.is_some() { "sni" } else { "endpoints" };
                self.error(
                    &format!("{key}.{at}"),
                    format!(
                        "'{name}' ({}) is not a DNS name or an IP address to verify",
                        e.addr
                    ),
                )
            })?;
            names.push(name);
        }
        Ok(Some(Arc::new(UpstreamTls {
            client,
            names,
            ca_roots,
            insecure: t.insecure_skip_verify,
        })))
    }
}
