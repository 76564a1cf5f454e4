//! What TLS costs the proxy in heap: allocations per warm keep-alive
//! request, and the heap an idle TLS connection keeps, counted by a global
//! allocator wrapped around the system one. The proxy runs in this
//! process; its clients and origins run in child processes (this binary
//! again, `--client`, `--idle` or `--origin`), so that their own
//! allocations, TLS and all, are not counted.
//!
//!     cargo bench --bench alloc_tls
//!
//! Under `cargo test` it runs briefly, and fails if a warm request
//! allocates on any of the paths (one allocation per request or more).
#![allow(clippy::disallowed_methods)] // a bench's threads, not a shard's

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod counting;
use counting::{ALLOCS, BYTES, LIVE};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

const SMALL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello, world\n";
/// The body of `/big` at an origin.
const BIG: usize = 3 << 20;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A CA and two leaves it signs, `proxy.test` and `origin.test`, in `dir`.
fn pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in ["proxy", "origin"] {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![format!("{name}.test")]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn client_config(dir: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Reads one request head from `s`, keeping what follows it in `buf`.
fn read_head<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(buf.drain(..end + 4).collect());
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answers every request head on `s`: SMALL, or BIG bytes for `/big`.
fn serve<S: Read + Write>(mut s: S) {
    let mut buf = Vec::new();
    let big = vec![b'x'; BIG];
    while let Some(head) = read_head(&mut s, &mut buf) {
        let ok = if head.windows(4).any(|w| w == b"/big") {
            let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
            s.write_all(h.as_bytes()).and_then(|()| s.write_all(&big))
        } else {
            s.write_all(SMALL)
        };
        if ok.and_then(|()| s.flush()).is_err() {
            return;
        }
    }
}

/// `--origin DIR`: a plain and a TLS origin; says their ports.
fn origin(dir: &Path) {
    let chain = CertificateDer::pem_file_iter(dir.join("origin.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("origin.key")).unwrap();
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").unwrap();
    println!(
        "{} {}",
        plain.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for tcp in plain.incoming().flatten() {
            let _ = tcp.set_nodelay(true);
            std::thread::spawn(move || serve(tcp));
        }
    });
    for tcp in tls.incoming().flatten() {
        let _ = tcp.set_nodelay(true);
        let config = config.clone();
        std::thread::spawn(move || {
            let conn = rustls::ServerConnection::new(config).unwrap();
            serve(StreamOwned::new(conn, tcp));
        });
    }
}

/// Sends `path` and reads the response whole; returns its body's length.
fn exchange<S: Read + Write>(s: &mut S, path: &str, buf: &mut Vec<u8>) -> usize {
    // In one write: a TLS client seals each write into a record of its own.
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench.test\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    s.flush().unwrap();
    let head = read_head(s, buf).expect("a response");
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let mut chunk = vec![0u8; 64 << 10];
    while buf.len() < len {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the response ended early");
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..len);
    len
}

fn open(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> Box<dyn ReadWrite> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = ServerName::try_from("proxy.test").unwrap();
            let conn = ClientConnection::new(config.clone(), name).unwrap();
            Box::new(StreamOwned::new(conn, tcp))
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn wait_for_go() {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
}

/// `--client DIR ADDR tls|plain PATH WARM N`: one connection; says `1`
/// after its first request and `2` after WARM more, waits to be told to
/// go on, then says `3` after N more.
fn client(dir: &Path, addr: SocketAddr, tls: bool, path: &str, warm: u64, n: u64) {
    let config = client_config(dir);
    let mut s = open(addr, tls.then_some(&config));
    let mut buf = Vec::new();
    let mut out = std::io::stdout();
    exchange(&mut s, path, &mut buf);
    writeln!(out, "1").unwrap();
    for _ in 0..warm {
        exchange(&mut s, path, &mut buf);
    }
    writeln!(out, "2").unwrap();
    out.flush().unwrap();
    wait_for_go();
    for _ in 0..n {
        exchange(&mut s, path, &mut buf);
    }
    writeln!(out, "3").unwrap();
    out.flush().unwrap();
}

/// `--idle DIR ADDR tls|plain N`: N connections, one request on each,
/// kept open; says `1`, then waits to be told to close them.
fn idle(dir: &Path, addr: SocketAddr, tls: bool, n: u64) {
    let config = client_config(dir);
    let mut conns = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..n {
        let mut s = open(addr, tls.then_some(&config));
        exchange(&mut s, "/direct", &mut buf);
        conns.push(s);
    }
    println!("1");
    std::io::stdout().flush().unwrap();
    wait_for_go();
}

/// A child process of this binary, talked to in lines through its pipes,
/// with fixed buffers: the parent allocates nothing to hear it.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Peer {
    fn spawn(args: &[String]) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    /// Waits for the line `want`.
    fn expect(&mut self, want: u8) {
        let mut byte = [0u8; 1];
        loop {
            self.stdout.read_exact(&mut byte).unwrap();
            if byte[0] == want {
                return;
            }
        }
    }

    fn go(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counts() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

/// Warm allocations per request of one client, as `alloc` counts them;
/// returns them.
fn measure(label: &str, args: [String; 4], warm: u64, n: u64) -> f64 {
    let mut a = vec!["--client".to_string()];
    a.extend(args);
    a.extend([warm.to_string(), n.to_string()]);
    let mut peer = Peer::spawn(&a);
    let before = counts();
    peer.expect(b'1');
    let first = counts();
    peer.expect(b'2');
    let warmed = counts();
    peer.go();
    peer.expect(b'3');
    let done = counts();
    let per_request = (done.0 - warmed.0) as f64 / n as f64;
    println!(
        "{label:<44} first request: {:>5} allocations; warm: {per_request:>7.3} allocations/request {:>9.1} bytes/request",
        first.0 - before.0,
        (done.1 - warmed.1) as f64 / n as f64,
    );
    per_request
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| PathBuf::from(&args[i]);
    match args.get(1).map(String::as_str) {
        Some("--origin") => return origin(&arg(2)),
        Some("--client") => {
            let addr = args[3].parse().unwrap();
            let (warm, n) = (args[6].parse().unwrap(), args[7].parse().unwrap());
            return client(&arg(2), addr, args[4] == "tls", &args[5], warm, n);
        }
        Some("--idle") => {
            let addr = args[3].parse().unwrap();
            return idle(&arg(2), addr, args[4] == "tls", args[5].parse().unwrap());
        }
        Some("--list") => return,
        _ => {}
    }
    let bench = args.iter().any(|a| a == "--bench");
    let (warm, n, conns, big) = if bench {
        (2_000, 20_000, 2_000, 10)
    } else {
        (20, 50, 20, 4)
    };
    let dir = std::env::temp_dir().join(format!("ringway-alloc-tls-{}", std::process::id()));
    pki(&dir);
    let d = dir.display().to_string();
    let mut origins = Peer::spawn(&["--origin".to_string(), d.clone()]);
    let mut ports = BufReader::new(&mut origins.stdout);
    let mut line = String::new();
    ports.read_line(&mut line).unwrap();
    let (plain, tls) = line.trim().split_once(' ').unwrap();
    let config = format!(
        "[server]\nworkers = 1\npin_cores = false\n\
         [[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n\
         tls = {{ certificates = [ {{ cert = \"{d}/proxy.pem\", key = \"{d}/proxy.key\" }} ] }}\n\
         [[listener]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"plain\"\nendpoints = [\"127.0.0.1:{plain}\"]\n\
         [[upstream]]\nname = \"tls\"\nendpoints = [\"127.0.0.1:{tls}\"]\n\
         tls = {{ sni = \"origin.test\", ca = \"{d}/ca.pem\" }}\n\
         [[route]]\nname = \"plain\"\nprefix = \"/plain\"\nupstream = \"plain\"\n\
         [[route]]\nname = \"tls\"\nprefix = \"/tls\"\nupstream = \"tls\"\n\
         [[route]]\nname = \"direct\"\nprefix = \"/direct\"\nrespond = {{ status = 200, body = \"hello, world\\n\" }}\n"
    );
    let config = ringway::Config::parse(Path::new("bench.toml"), &config).unwrap();
    let server = ringway::Server::start(config).unwrap();
    let https = server.addrs()[0].1.to_string();
    let http = server.addrs()[1].1.to_string();
    let c = |addr: &str, tls: &str, path: &str| {
        [
            d.clone(),
            addr.to_string(),
            tls.to_string(),
            path.to_string(),
        ]
    };
    let mut worst: f64 = 0.0;
    for (label, args) in [
        ("TLS client -> respond", c(&https, "tls", "/direct")),
        ("TLS client -> plain origin", c(&https, "tls", "/plain")),
        ("plain client -> TLS origin", c(&http, "plain", "/tls")),
        ("TLS client -> TLS origin", c(&https, "tls", "/tls")),
        (
            "plain client -> plain origin (baseline)",
            c(&http, "plain", "/plain"),
        ),
    ] {
        worst = worst.max(measure(label, args, warm, n));
    }
    for (label, args) in [
        (
            "TLS client -> plain origin, 3 MiB",
            c(&https, "tls", "/plain/big"),
        ),
        (
            "plain client -> TLS origin, 3 MiB",
            c(&http, "plain", "/tls/big"),
        ),
    ] {
        worst = worst.max(measure(label, args, 2, big));
    }
    // An allocation on some path of a request counts one per request or
    // more; the shard's and the control thread's housekeeping may make a
    // stray one in a run (of 4 requests under `cargo test`), which stays
    // below half.
    assert!(
        worst < 0.5,
        "a warm request over TLS allocates: {worst} per request"
    );

    // Idle: what the heap keeps per connection once they are quiet (the
    // shard demotes a connection within a second, and gives its spare
    // buffers back by halves each second).
    let settle = Duration::from_secs(if bench { 12 } else { 3 });
    for (label, addr, tls) in [
        ("idle TLS connections", &https, "tls"),
        ("idle plain connections", &http, "plain"),
    ] {
        std::thread::sleep(settle);
        let live = LIVE.load(Ordering::Relaxed);
        let args = [d.clone(), addr.clone(), tls.to_string(), conns.to_string()];
        let mut a = vec!["--idle".to_string()];
        a.extend(args);
        let mut idle = Peer::spawn(&a);
        idle.expect(b'1');
        std::thread::sleep(settle);
        let kept = LIVE.load(Ordering::Relaxed) - live;
        println!(
            "{label:<44} {:>7.0} bytes of heap each ({conns} connections)",
            kept as f64 / conns as f64
        );
        idle.go();
    }
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
