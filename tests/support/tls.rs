//! TLS for tests: a test CA and the leaves it signs (rcgen), written to a
//! directory of their own, and a rustls client over a std TcpStream.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::IO_TIMEOUT;

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A test CA in a directory of its own, and the leaves it signs there.
pub struct Pki {
    dir: PathBuf,
    pub ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ringway-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ringway test CA {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// Writes `file`.pem (leaf, then the CA) and `file`.key for `names`;
    /// returns the leaf's DER.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Vec<u8> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        self.sign(file, params)
    }

    pub fn sign(&self, file: &str, params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let chain = format!("{}{}", cert.pem(), self.ca.pem());
        std::fs::write(self.path(&format!("{file}.pem")), chain).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A client config that trusts this CA, offers http/1.1, and sends SNI.
    pub fn client(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }

    /// A listener `tls` table with the given pairs (file stems).
    pub fn table(&self, pairs: &[&str], extra: &str) -> String {
        let pairs: Vec<String> = pairs
            .iter()
            .map(|p| {
                format!(
                    "{{ cert = \"{}\", key = \"{}\" }}",
                    self.path(&format!("{p}.pem")).display(),
                    self.path(&format!("{p}.key")).display()
                )
            })
            .collect();
        format!("tls = {{ certificates = [{}]{extra} }}", pairs.join(", "))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The provider ringway uses (the tests are built with ring too, for
/// benches/tls.rs, so rustls has no default of its own).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Connects and finishes the handshake with `sni` as the server name.
pub fn connect(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    handshake(tcp, sni, config)
}

/// Finishes a handshake over `tcp`, already connected.
pub fn handshake(tcp: TcpStream, sni: &str, config: Arc<ClientConfig>) -> std::io::Result<Tls> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// A TLS listener's certificate, from a CA of its own, and a client that
/// trusts it: what `proxy_with(Transport::Tls, ..)` serves and connects with.
pub struct ListenerCert {
    pki: Pki,
    client: Arc<ClientConfig>,
}

impl ListenerCert {
    /// The name the certificate covers, and the SNI the client sends.
    pub const NAME: &str = "proxy.test";

    pub fn new() -> ListenerCert {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pki = Pki::new(&format!("listener-{n}"));
        pki.leaf("proxy", &[Self::NAME]);
        let client = Arc::new(pki.client());
        ListenerCert { pki, client }
    }

    /// The listener's `tls` table.
    pub fn table(&self) -> String {
        self.pki.table(&["proxy"], "")
    }

    /// Finishes a handshake over `tcp`, connected to the listener.
    pub fn handshake(&self, tcp: TcpStream) -> Tls {
        handshake(tcp, Self::NAME, self.client.clone()).expect("the TLS handshake completes")
    }
}
