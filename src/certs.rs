//! The TLS listener's certificates: loading and checking each pair, choosing
//! one per ClientHello by SNI, and the rustls `ServerConfig` built on them;
//! and the `ClientConfig` ringway verifies a TLS upstream with.
//!
//! Everything here runs on the control thread at config load or reload (it
//! reads files); a shard only calls `covers` per request for strict SNI, and
//! rustls calls `resolve` per handshake. Neither allocates.
//!
//! Name matching follows RFC 6125 §6.4: DNS names compare ASCII
//! case-insensitively, a wildcard is honoured only as the whole leftmost
//! label and covers exactly one label, and an IP literal is covered only by
//! an iPAddress SAN equal to it.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert,
    ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use x509_parser::prelude::{ASN1Time, FromDer, GeneralName, X509Certificate};

/// A leaf that expires within this long gets a warning at load.
const EXPIRY_WARNING: i64 = 14 * 86_400;

/// One certificate pair as configured (paths already resolved).
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificates of one TLS listener, in configured order.
#[derive(Debug)]
pub struct Certificates {
    entries: Vec<Entry>,
}

/// One loaded pair.
#[derive(Debug)]
struct Entry {
    /// The leaf's DNS SANs, lowercase; a wildcard kept as "*.example.com".
    dns: Vec<String>,
    /// The leaf's iPAddress SANs.
    ips: Vec<IpAddr>,
    /// `dns` then `ips`, for logs.
    names: Vec<String>,
    key: Arc<CertifiedKey>,
    /// The leaf's notAfter, in seconds since the epoch.
    not_after: i64,
    cert: PathBuf,
}

impl Certificates {
    /// Reads and checks every pair: the chain (leaf first, each X.509), the
    /// key (PKCS#8, PKCS#1 or SEC1) and that it matches the leaf, and that
    /// the leaf is valid at `now`. Errors name the file. Also returns one
    /// warning per leaf that expires within 14 days.
    /// Files are read through `read` (`certs::read`, or a reader that
    /// keeps what a config load read).
    pub fn load(
        pairs: &[Pair],
        now: SystemTime,
        read: ReadFile,
    ) -> Result<(Certificates, Vec<String>), String> {
        if pairs.is_empty() {
            return Err("a TLS listener needs at least one certificate".to_string());
        }
        let now = unix_seconds(now);
        let mut entries = Vec::with_capacity(pairs.len());
        let mut warnings = Vec::new();
        for pair in pairs {
            let (entry, warning) = load_pair(pair, now, read)?;
            entries.push(entry);
            warnings.extend(warning);
        }
        Ok((Certificates { entries }, warnings))
    }

    /// Which certificate answers a ClientHello with this SNI: the first that
    /// covers it, else the first of all.
    pub fn index_for(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else { return 0 };
        self.entries
            .iter()
            .position(|entry| entry.covers(sni))
            .unwrap_or(0)
    }

    /// Whether certificate `index` covers `host`, a Host value without its
    /// port, in any case. An out-of-range `index` covers nothing.
    pub fn covers(&self, index: usize, host: &str) -> bool {
        self.entries
            .get(index)
            .is_some_and(|entry| entry.covers(host))
    }

    /// The names of certificate `index` (its DNS and IP SANs), for logs.
    pub fn names(&self, index: usize) -> &[String] {
        self.entries
            .get(index)
            .map_or(&[], |entry| entry.names.as_slice())
    }

    /// When the leaf of certificate `index` expires (its notAfter).
    pub fn not_after(&self, index: usize) -> Option<SystemTime> {
        let entry = self.entries.get(index)?;
        let secs = u64::try_from(entry.not_after).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }

    /// The certificate file of certificate `index`, for logs.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.entries.get(index).map(|entry| entry.cert.as_path())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true for a loaded set: `load` refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

thread_local! {
    /// The index `resolve` last chose on this thread.
    static CHOSEN: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Takes the index of the certificate `resolve` chose since the last call
/// on this thread. rustls calls `resolve` inside the call that processes a
/// ClientHello, and a shard runs one such call at a time, so the handshake
/// that made the call takes its own answer; its unbuffered connection has
/// no `server_name()` to ask afterwards.
pub fn take_chosen() -> Option<usize> {
    CHOSEN.take()
}

/// Answers each ClientHello with `index_for(sni)`'s certified key.
impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.index_for(client_hello.server_name());
        CHOSEN.set(Some(index));
        self.entries.get(index).map(|entry| entry.key.clone())
    }
}

impl Entry {
    fn covers(&self, host: &str) -> bool {
        // An absolute name ("example.com.") is the same name.
        let host = host.strip_suffix('.').unwrap_or(host);
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return self.ips.contains(&ip);
        }
        self.dns.iter().any(|pattern| dns_matches(pattern, host))
    }
}

/// Whether the DNS SAN `pattern` covers `host` (RFC 6125 §6.4.3): exact,
/// ASCII case-insensitive, or "*.example.com" for exactly one more label.
fn dns_matches(pattern: &str, host: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return pattern.eq_ignore_ascii_case(host);
    };
    match host.find('.') {
        Some(dot) if dot > 0 => host[dot + 1..].eq_ignore_ascii_case(suffix),
        _ => false,
    }
}

fn load_pair(pair: &Pair, now: i64, read: ReadFile) -> Result<(Entry, Option<String>), String> {
    let cert_path = pair.cert.display();
    let key_path = pair.key.display();

    let pem_bytes = read(&pair.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{cert_path}: not a PEM certificate chain: {}",
                pem_error(&e)
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_path}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks, leaf first)"
        ));
    }
    for (i, der) in chain.iter().enumerate().skip(1) {
        X509Certificate::from_der(der)
            .map_err(|e| format!("{cert_path}: certificate {} is not valid X.509: {e}", i + 1))?;
    }
    let (_, leaf) = X509Certificate::from_der(&chain[0])
        .map_err(|e| format!("{cert_path}: the first certificate is not valid X.509: {e}"))?;

    let validity = leaf.validity();
    if validity.not_after.timestamp() < now {
        return Err(format!(
            "{cert_path}: the certificate expired on {} (not after)",
            ymd(&validity.not_after)
        ));
    }
    if validity.not_before.timestamp() > now {
        return Err(format!(
            "{cert_path}: the certificate is not valid until {} (not before)",
            ymd(&validity.not_before)
        ));
    }
    let not_after = validity.not_after.timestamp();
    let left = not_after - now;
    let warning = (left < EXPIRY_WARNING).then(|| {
        let days = left / 86_400;
        let unit = if days == 1 { "day" } else { "days" };
        format!(
            "{cert_path}: expires in {days} {unit} ({})",
            ymd(&validity.not_after)
        )
    });

    let (dns, ips) = leaf_names(&leaf).map_err(|e| format!("{cert_path}: {e}"))?;
    let names = dns
        .iter()
        .cloned()
        .chain(ips.iter().map(IpAddr::to_string))
        .collect();

    let key_bytes = read(&pair.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{key_path}: no private key found (expected a PEM PKCS#8, PKCS#1 RSA or SEC1 EC key)"
        ),
        e => format!("{key_path}: not a PEM private key: {}", pem_error(&e)),
    })?;
    let key =
        CertifiedKey::from_der(chain, key, &aws_lc_rs::default_provider()).map_err(
            |e| match e {
                rustls::Error::InconsistentKeys(_) => {
                    format!("{key_path}: does not match the certificate in {cert_path}")
                }
                rustls::Error::General(e) => format!("{key_path}: unusable private key: {e}"),
                e => format!("{cert_path}: {e}"),
            },
        )?;

    let entry = Entry {
        dns,
        ips,
        names,
        key: Arc::new(key),
        not_after,
        cert: pair.cert.clone(),
    };
    Ok((entry, warning))
}

/// The leaf's DNS (lowercase) and IP SANs; with none, its subject CN as a
/// DNS name.
fn leaf_names(leaf: &X509Certificate<'_>) -> Result<(Vec<String>, Vec<IpAddr>), String> {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?;
    for name in san.iter().flat_map(|san| &san.value.general_names) {
        match name {
            GeneralName::DNSName(name) => dns.push(name.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                    ips.push(IpAddr::from(v4));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                    ips.push(IpAddr::from(v6));
                }
            }
            _ => {}
        }
    }
    if dns.is_empty() && ips.is_empty() {
        let cn = leaf.subject().iter_common_name().next();
        if let Some(cn) = cn.and_then(|cn| cn.as_str().ok()) {
            dns.push(cn.to_ascii_lowercase());
        }
    }
    Ok((dns, ips))
}

/// A PEM error in words; pki-types shows a missing END line as bytes.
fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a block has no \"-----END\" line".to_string(),
        e => e.to_string(),
    }
}

/// How the functions here read a file: its bytes, or an error that names it.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<Vec<u8>, String>;

/// Reads a file, the error naming it.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// A certificate date as YYYY-MM-DD (UTC).
fn ymd(time: &ASN1Time) -> String {
    let t = time.to_datetime();
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// Resumption state shared by every shard of the process: one rotating
/// session-ticket key set and one bounded session cache. Built once at start
/// and kept across reloads, so tickets issued before a reload still resume
/// after it.
#[derive(Debug, Clone)]
pub struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    /// Ticket keys rotate every 6 hours (rustls's `Ticketer`); the cache
    /// holds about `cache_entries` sessions, and 0 turns it off.
    pub fn new(cache_entries: usize) -> Result<Resumption, String> {
        let ticketer = aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("cannot make session-ticket keys: {e}"))?;
        let cache: Arc<dyn StoresServerSessions> = if cache_entries == 0 {
            Arc::new(NoServerSessionStorage {})
        } else {
            ServerSessionMemoryCache::new(cache_entries)
        };
        Ok(Resumption { ticketer, cache })
    }
}

/// A listener's rustls config: TLS 1.2 and 1.3, ALPN "http/1.1", the
/// certificate chosen by `certs`, resumption from `resumption`, and client
/// certificates checked by `client_auth` (None: not asked for).
pub fn server_config(
    certs: Arc<Certificates>,
    resumption: &Resumption,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?;
    let verifies = client_auth.is_some();
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The traffic keys go to ringway's own records after the handshake.
    config.enable_secret_extraction = true;
    if verifies {
        // A resumed session skips the verifier and brings back the client
        // certificate it was made with: one from another listener, a CA a
        // reload took away, a certificate expired since. No resumption
        // here (rustls's builder issues no tickets); every handshake is
        // verified.
        config.session_storage = Arc::new(NoServerSessionStorage {});
    } else {
        config.ticketer = resumption.ticketer.clone();
        config.session_storage = resumption.cache.clone();
    }
    Ok(Arc::new(config))
}

/// The subject of a verified client certificate as a header value: its
/// distinguished name in RFC 4514's string form (last RDN first, `,`
/// between them, `+` inside one, special characters escaped with `\`) and
/// every byte that is not printable ASCII written `\HH`, so no value can
/// end the header line or start another. `None` if it does not parse.
pub fn subject(leaf: &[u8]) -> Option<Box<str>> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in cert
        .subject()
        .iter_rdn()
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(name) => out.push_str(name),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_dn_value(&mut out, value.as_bytes()),
                // Not a string type: its DER bytes in hex, as RFC 4514 has it.
                Err(_) => {
                    out.push('#');
                    for b in attr.attr_value().data {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    Some(out.into_boxed_str())
}

/// Escapes one attribute value (RFC 4514 §2.4), and whatever is not
/// printable ASCII as `\HH`.
fn escape_dn_value(out: &mut String, value: &[u8]) {
    for (k, &b) in value.iter().enumerate() {
        let edge = (k == 0 && (b == b' ' || b == b'#')) || (k == value.len() - 1 && b == b' ');
        if edge || b",+\"\\<>;=".contains(&b) {
            out.push('\\');
            out.push(b as char);
        } else if (0x20..0x7f).contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:02X}"));
        }
    }
}

/// The CA certificates in the PEM file `path`, for verifying an upstream's
/// certificate, read through `read`. Errors name the file.
pub fn roots(path: &Path, read: ReadFile) -> Result<RootCertStore, String> {
    let shown = path.display();
    let bytes = read(path)?;
    let mut roots = RootCertStore::empty();
    for (i, der) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let der =
            der.map_err(|e| format!("{shown}: not a PEM certificate file: {}", pem_error(&e)))?;
        roots
            .add(der)
            .map_err(|e| format!("{shown}: CA certificate {} is unusable: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{shown}: no CA certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        ));
    }
    Ok(roots)
}

/// The system's trusted roots (as OpenSSL finds them: /etc/ssl/certs, or
/// SSL_CERT_FILE / SSL_CERT_DIR), read once per process.
pub fn system_roots() -> Result<RootCertStore, String> {
    static ROOTS: std::sync::OnceLock<Result<RootCertStore, String>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            match added {
                0 => Err(format!(
                    "tls = true verifies against the system's roots, and none were found ({:?}): give ca = \"ca.pem\"",
                    found.errors.first()
                )),
                _ => Ok(roots),
            }
        })
        .clone()
}

/// The rustls config ringway connects to an upstream with: TLS 1.2 and
/// 1.3, ALPN "http/1.1", the upstream's certificate verified against
/// `roots`, or not at all with `insecure`.
pub fn client_config(roots: RootCertStore, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?;
    let mut config = match insecure {
        false => builder.with_root_certificates(roots).with_no_client_auth(),
        true => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The traffic keys go to ringway's own records after the handshake.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// `insecure_skip_verify`: any certificate is taken, its signature on the
/// handshake still checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client-certificate verifier for mTLS that trusts the CA certificates in
/// the PEM file `ca`. Unless `required`, a client may send no certificate,
/// but one it sends must verify. Errors name the file.
pub fn client_verifier(
    ca: &Path,
    required: bool,
    read: ReadFile,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let path = ca.display();
    let roots = roots(ca, read)?;
    let builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(aws_lc_rs::default_provider()),
    );
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, date_time_ymd};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConnection};

    /// A temp directory removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("ringway-certs-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A generated self-signed leaf: its PEM, its key's PEM and its DER.
    struct Leaf {
        cert: String,
        key: String,
        der: Vec<u8>,
    }

    fn leaf(params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn named(names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        leaf(CertificateParams::new(names).unwrap())
    }

    fn dated(names: &[&str], not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        leaf(params)
    }

    fn pair(dir: &Dir, name: &str, leaf: &Leaf) -> Pair {
        Pair {
            cert: dir.write(&format!("{name}.pem"), &leaf.cert),
            key: dir.write(&format!("{name}.key"), &leaf.key),
        }
    }

    fn at(y: i32, m: u8, d: u8) -> SystemTime {
        let secs = date_time_ymd(y, m, d).unix_timestamp();
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    /// Two listeners' worth: "a" for a.example.com, "b" for *.other.test,
    /// other.test and 127.0.0.1 / ::1.
    fn two(dir: &Dir) -> (Certificates, Leaf, Leaf) {
        let a = named(&["a.example.com"]);
        let b = named(&["*.other.test", "Other.Test", "127.0.0.1", "::1"]);
        let pairs = [pair(dir, "a", &a), pair(dir, "b", &b)];
        let (certs, warnings) = Certificates::load(&pairs, SystemTime::now(), &read).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        (certs, a, b)
    }

    #[test]
    fn index_for_picks_by_sni() {
        let dir = Dir::new("index");
        let (certs, _, _) = two(&dir);
        assert_eq!(certs.len(), 2);
        assert_eq!(certs.index_for(Some("a.example.com")), 0);
        assert_eq!(certs.index_for(Some("A.Example.COM")), 0);
        assert_eq!(certs.index_for(Some("www.other.test")), 1);
        assert_eq!(certs.index_for(Some("WWW.OTHER.TEST")), 1);
        assert_eq!(certs.index_for(Some("other.test")), 1);
        assert_eq!(certs.index_for(Some("unknown.example")), 0);
        assert_eq!(certs.index_for(None), 0);
        assert_eq!(certs.names(0), ["a.example.com"]);
        assert_eq!(
            certs.names(1),
            ["*.other.test", "other.test", "127.0.0.1", "::1"]
        );
        assert!(certs.names(2).is_empty());
        assert_eq!(certs.path(1), Some(dir.0.join("b.pem").as_path()));
        assert_eq!(certs.not_after(0), Some(at(4096, 1, 1)));
    }

    #[test]
    fn wildcard_covers_one_leftmost_label() {
        // RFC 6125 §6.4.3.
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(dns_matches("*.example.com", "A.EXAMPLE.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", ".example.com"));
        assert!(!dns_matches("*.example.com", "aexample.com"));
        // Only a whole leftmost-label wildcard is honoured.
        assert!(!dns_matches("a*.example.com", "ab.example.com"));
        assert!(!dns_matches("a.*.example.com", "a.b.example.com"));
    }

    #[test]
    fn covers_host_any_case_wildcard_and_ip() {
        let dir = Dir::new("covers");
        let (certs, _, _) = two(&dir);
        assert!(certs.covers(0, "a.example.com"));
        assert!(certs.covers(0, "A.EXAMPLE.COM"));
        assert!(certs.covers(0, "a.example.com."));
        assert!(!certs.covers(0, "b.example.com"));
        assert!(!certs.covers(0, "127.0.0.1"));
        assert!(certs.covers(1, "Foo.Other.Test"));
        assert!(!certs.covers(1, "a.foo.other.test"));
        assert!(certs.covers(1, "127.0.0.1"));
        assert!(!certs.covers(1, "127.0.0.2"));
        assert!(certs.covers(1, "[::1]"));
        assert!(certs.covers(1, "::1"));
        assert!(!certs.covers(2, "a.example.com"));
    }

    #[test]
    fn subject_cn_is_the_name_without_sans() {
        let dir = Dir::new("cn");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Legacy.Example.com");
        let legacy = leaf(params);
        let (certs, _) =
            Certificates::load(&[pair(&dir, "legacy", &legacy)], SystemTime::now(), &read).unwrap();
        assert_eq!(certs.names(0), ["legacy.example.com"]);
        assert!(certs.covers(0, "LEGACY.example.com"));
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let dir = Dir::new("mismatch");
        let a = named(&["a.example.com"]);
        let b = named(&["b.example.com"]);
        let pairs = [Pair {
            cert: dir.write("a.pem", &a.cert),
            key: dir.write("b.key", &b.key),
        }];
        let err = Certificates::load(&pairs, SystemTime::now(), &read).unwrap_err();
        let key = dir.0.join("b.key");
        let cert = dir.0.join("a.pem");
        assert_eq!(
            err,
            format!(
                "{}: does not match the certificate in {}",
                key.display(),
                cert.display()
            )
        );
    }

    #[test]
    fn missing_files_are_named() {
        let dir = Dir::new("missing");
        let a = named(&["a.example.com"]);
        let cert = dir.0.join("nope.pem");
        let err = Certificates::load(
            &[Pair {
                cert: cert.clone(),
                key: dir.write("a.key", &a.key),
            }],
            SystemTime::now(),
            &read,
        )
        .unwrap_err();
        assert!(err.starts_with(&format!("{}: ", cert.display())), "{err}");

        let key = dir.0.join("nope.key");
        let err = Certificates::load(
            &[Pair {
                cert: dir.write("a.pem", &a.cert),
                key: key.clone(),
            }],
            SystemTime::now(),
            &read,
        )
        .unwrap_err();
        assert!(err.starts_with(&format!("{}: ", key.display())), "{err}");
    }

    #[test]
    fn files_without_certificate_or_key_are_refused() {
        let dir = Dir::new("empty");
        let a = named(&["a.example.com"]);
        // The key file given as the certificate: PEM, but no certificate in it.
        let err = Certificates::load(
            &[Pair {
                cert: dir.write("a.pem", &a.key),
                key: dir.write("a.key", &a.key),
            }],
            SystemTime::now(),
            &read,
        )
        .unwrap_err();
        assert!(err.contains("a.pem: no certificate found"), "{err}");

        let err = Certificates::load(
            &[Pair {
                cert: dir.write("a.pem", &a.cert),
                key: dir.write("a.key", &a.cert),
            }],
            SystemTime::now(),
            &read,
        )
        .unwrap_err();
        assert!(err.contains("a.key: no private key found"), "{err}");

        let err = Certificates::load(&[], SystemTime::now(), &read).unwrap_err();
        assert!(err.contains("at least one certificate"), "{err}");
    }

    #[test]
    fn garbage_pem_is_refused() {
        let dir = Dir::new("garbage");
        let a = named(&["a.example.com"]);
        let key = dir.write("a.key", &a.key);
        for garbage in [
            "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
        ] {
            let pairs = [Pair {
                cert: dir.write("a.pem", garbage),
                key: key.clone(),
            }];
            let err = Certificates::load(&pairs, SystemTime::now(), &read).unwrap_err();
            assert!(
                err.starts_with(&format!("{}: ", dir.0.join("a.pem").display())),
                "{err}"
            );
        }

        // A valid leaf followed by an intermediate that is not X.509.
        let chain = format!(
            "{}-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            a.cert
        );
        let pairs = [Pair {
            cert: dir.write("a.pem", &chain),
            key,
        }];
        let err = Certificates::load(&pairs, SystemTime::now(), &read).unwrap_err();
        assert!(err.contains("certificate 2 is not valid X.509"), "{err}");

        let pairs = [Pair {
            cert: dir.write("a.pem", &a.cert),
            key: dir.write(
                "a.key",
                "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n",
            ),
        }];
        let err = Certificates::load(&pairs, SystemTime::now(), &read).unwrap_err();
        assert!(err.contains("a.key: unusable private key"), "{err}");
    }

    #[test]
    fn expired_and_not_yet_valid_are_refused() {
        let dir = Dir::new("expired");
        let old = dated(&["a.example.com"], (2025, 1, 1), (2026, 1, 2));
        let pairs = [pair(&dir, "a", &old)];
        let err = Certificates::load(&pairs, at(2026, 3, 1), &read).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{}: the certificate expired on 2026-01-02 (not after)",
                pairs[0].cert.display()
            )
        );
        let err = Certificates::load(&pairs, at(2024, 6, 1), &read).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{}: the certificate is not valid until 2025-01-01 (not before)",
                pairs[0].cert.display()
            )
        );
    }

    #[test]
    fn expiring_soon_warns() {
        let dir = Dir::new("expiring");
        let soon = dated(&["a.example.com"], (2026, 1, 1), (2026, 11, 26));
        let later = dated(&["b.example.com"], (2026, 1, 1), (2027, 1, 1));
        let pairs = [pair(&dir, "a", &soon), pair(&dir, "b", &later)];
        let (_, warnings) = Certificates::load(&pairs, at(2026, 11, 21), &read).unwrap();
        assert_eq!(
            warnings,
            [format!(
                "{}: expires in 5 days (2026-11-26)",
                pairs[0].cert.display()
            )]
        );
        let (_, warnings) = Certificates::load(&pairs, at(2026, 10, 1), &read).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    /// Runs a TLS handshake in memory; returns the client's side.
    fn handshake(server: Arc<ServerConfig>, roots: &[&Leaf], sni: &str) -> ClientConnection {
        let mut store = RootCertStore::empty();
        for leaf in roots {
            store.add(CertificateDer::from(leaf.der.clone())).unwrap();
        }
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(store)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let mut client = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut server = ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
            if !client.is_handshaking() && !server.is_handshaking() {
                return client;
            }
        }
        panic!("the handshake did not finish");
    }

    /// Moves everything `from` has to send into `to`.
    fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut rest = wire.as_slice();
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    #[test]
    fn handshake_serves_the_certificate_for_the_sni() {
        let dir = Dir::new("handshake");
        let (certs, a, b) = two(&dir);
        let resumption = Resumption::new(64).unwrap();
        let config = server_config(Arc::new(certs), &resumption, None).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);

        for (sni, expected) in [("a.example.com", &a), ("www.other.test", &b)] {
            let client = handshake(config.clone(), &[&a, &b], sni);
            let chain = client.peer_certificates().unwrap();
            assert_eq!(chain[0].as_ref(), expected.der.as_slice(), "{sni}");
            assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
        }
    }

    #[test]
    fn client_verifier_reads_the_ca_file() {
        let dir = Dir::new("client-ca");
        let missing = dir.0.join("ca.pem");
        let err = client_verifier(&missing, true, &read).err().unwrap();
        assert!(
            err.starts_with(&format!("{}: ", missing.display())),
            "{err}"
        );

        let a = named(&["a.example.com"]);
        let err = client_verifier(&dir.write("key.pem", &a.key), true, &read)
            .err()
            .unwrap();
        assert!(err.contains("no CA certificate found"), "{err}");

        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = dir.write("ca.pem", &leaf(params).cert);
        for required in [true, false] {
            let verifier = client_verifier(&ca, required, &read).unwrap();
            assert_eq!(verifier.client_auth_mandatory(), required);
            let (certs, _) =
                Certificates::load(&[pair(&dir, "a", &a)], SystemTime::now(), &read).unwrap();
            let resumption = Resumption::new(0).unwrap();
            server_config(Arc::new(certs), &resumption, Some(verifier)).unwrap();
        }
    }

    #[test]
    fn a_subject_is_one_header_value_in_rfc_4514_form() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Smith, Jones");
        params
            .distinguished_name
            .push(DnType::CommonName, "alice\r\nX-Evil: 1 #é");
        let cert = leaf(params);
        // rcgen writes CN first; RFC 4514 says the last RDN first.
        assert_eq!(
            subject(&cert.der).as_deref(),
            Some("O=Smith\\, Jones,CN=alice\\0D\\0AX-Evil: 1 #\\C3\\A9")
        );
    }
}
