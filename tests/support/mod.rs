//! Test support: a scriptable origin server and a raw HTTP/1.1 client, both
//! on real loopback sockets with read timeouts (no test can hang), and the
//! proxy started in-process from a config text.
#![allow(dead_code)]
// The test origin is plain blocking threads, not a shard: the shard bans do
// not apply. Its sleeps play a slow upstream; they never stand in for
// synchronisation.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ringway::{Config, Server};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A request as the origin received it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The raw head, request line to the empty line.
    pub head: String,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The body as it came on the wire (chunk framing included), up to 1 MiB.
    pub raw_body: Vec<u8>,
    /// Payload length, framing excluded.
    pub body_len: u64,
    /// Sum of the payload bytes, to check big bodies without keeping them.
    pub body_sum: u64,
    /// Index of the request on its connection, from 0.
    pub nth_on_conn: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// What the origin does with a request.
pub enum Reply {
    /// Write these bytes; keep the connection.
    Raw(Vec<u8>),
    /// Write these bytes, then close.
    RawClose(Vec<u8>),
    /// Write after a delay.
    Delay(Duration, Vec<u8>),
    /// Close without answering.
    Close,
    /// Say nothing for this long, then close.
    Hang(Duration),
    /// `101 Switching Protocols`, then echo every byte back until EOF.
    Upgrade,
    /// 200 with a body of `n` bytes, written in 64 KiB pieces of `big_piece()`.
    Big(u64),
}

pub fn ok(body: &str) -> Reply {
    Reply::Raw(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: yes\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Origin {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (seen, connections, stop) = (seen.clone(), connections.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (seen, handler) = (seen.clone(), handler.clone());
                    thread::spawn(move || origin_conn(stream, &seen, &*handler));
                }
            });
        }
        Origin {
            addr,
            seen,
            connections,
            stop,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn origin_conn(mut s: TcpStream, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = Vec::new();
    let mut nth = 0;
    loop {
        let Some(req) = read_request(&mut s, &mut buf, nth) else {
            return;
        };
        nth += 1;
        let reply = handler(&req);
        seen.lock().unwrap().push(req);
        let written = match reply {
            Reply::Raw(b) => s.write_all(&b),
            Reply::RawClose(b) => {
                let _ = s.write_all(&b);
                return;
            }
            Reply::Delay(d, b) => {
                thread::sleep(d);
                s.write_all(&b)
            }
            Reply::Close => return,
            Reply::Hang(d) => {
                thread::sleep(d);
                return;
            }
            Reply::Upgrade => {
                let _ = s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                let mut b = [0u8; 4096];
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&b[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            Reply::Big(n) => write_big(&mut s, n),
        };
        if written.is_err() {
            return;
        }
    }
}

fn write_big(s: &mut TcpStream, n: u64) -> std::io::Result<()> {
    write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
    let piece = big_piece();
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(piece.len() as u64) as usize;
        s.write_all(&piece[..len])?;
        sent += len as u64;
    }
    Ok(())
}

/// The 64 KiB pattern big bodies repeat.
pub fn big_piece() -> Vec<u8> {
    (0..64 << 10).map(|i: u32| (i % 251) as u8).collect()
}

/// Reads one request (head and body, Content-Length or chunked).
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, nth: usize) -> Option<Seen> {
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, buf) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();
    buf.drain(..head_len);
    let mut seen = Seen {
        head,
        method,
        target,
        headers,
        nth_on_conn: nth,
        ..Seen::default()
    };
    let get = |n: &str| {
        seen.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if let Some(cl) = get("content-length") {
        let mut left: u64 = cl.parse().ok()?;
        while left > 0 {
            if buf.is_empty() && !fill(s, buf) {
                return None;
            }
            let n = (buf.len() as u64).min(left) as usize;
            seen.take_payload(&buf[..n], true);
            buf.drain(..n);
            left -= n as u64;
        }
    } else if get("transfer-encoding").is_some() {
        // chunked: sizes, data, trailers, all kept in raw_body
        loop {
            let line = read_line(s, buf)?;
            seen.keep_raw(&line);
            let size_text = String::from_utf8_lossy(&line);
            let size =
                u64::from_str_radix(size_text.trim_end().split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                loop {
                    let t = read_line(s, buf)?;
                    seen.keep_raw(&t);
                    if t == b"\r\n" {
                        break;
                    }
                }
                break;
            }
            let mut left = size + 2;
            while left > 0 {
                if buf.is_empty() && !fill(s, buf) {
                    return None;
                }
                let n = (buf.len() as u64).min(left) as usize;
                let data_n = n.min(left.saturating_sub(2) as usize);
                seen.take_payload(&buf[..data_n], false);
                seen.keep_raw(&buf[..n]);
                buf.drain(..n);
                left -= n as u64;
            }
        }
    }
    Some(seen)
}

impl Seen {
    fn take_payload(&mut self, b: &[u8], raw: bool) {
        self.body_len += b.len() as u64;
        self.body_sum = b
            .iter()
            .fold(self.body_sum, |a, &x| a.wrapping_add(u64::from(x)));
        if raw {
            self.keep_raw(b);
        }
    }
    fn keep_raw(&mut self, b: &[u8]) {
        if self.raw_body.len() < (1 << 20) {
            self.raw_body.extend_from_slice(b);
        }
    }
}

fn read_line(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            return Some(buf.drain(..i + 2).collect());
        }
        if !fill(s, buf) {
            return None;
        }
    }
}

fn fill(s: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut b = [0u8; 64 << 10];
    loop {
        return match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&b[..n]);
                true
            }
        };
    }
}

/// Reads from `s` until a whole head is in; returns everything read.
pub fn read_head(s: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    while find(&buf, b"\r\n\r\n").is_none() {
        assert!(fill(s, &mut buf), "closed before a whole head arrived");
    }
    buf
}

/// The value of the Prometheus sample `series` (its name and labels
/// exactly as written) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    /// Payload, chunk framing removed.
    pub body: Vec<u8>,
    /// The body as on the wire.
    pub raw_body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// A client connection that reads responses one by one, over plain TCP
/// or anything else that reads and writes (a TLS stream).
pub struct Client<S = TcpStream> {
    pub s: S,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Client { s, buf: Vec::new() }
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.s.shutdown(Shutdown::Write);
    }
}

impl Client<Conn> {
    pub fn shutdown_write(&mut self) {
        self.s.shutdown_write();
    }
}

impl<S: Read + Write> Client<S> {
    pub fn over(s: S) -> Client<S> {
        Client { s, buf: Vec::new() }
    }

    /// True if the proxy closed the connection (EOF, close_notify, or
    /// reset) with nothing more to read. A read that times out is no close.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    pub fn send(&mut self, raw: &[u8]) -> &mut Client<S> {
        self.s.write_all(raw).unwrap();
        self.s.flush().unwrap();
        self
    }

    /// Reads one response; `head_request` says it answers a HEAD.
    pub fn read(&mut self, head_request: bool) -> Option<Response> {
        let head_len = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut self.s, &mut self.buf) {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_len]).to_string();
        self.buf.drain(..head_len);
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect();
        let mut resp = Response {
            status,
            head,
            headers,
            body: Vec::new(),
            raw_body: Vec::new(),
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Some(resp);
        }
        if let Some(cl) = resp.header("content-length") {
            let n: usize = cl.parse().ok()?;
            while self.buf.len() < n {
                if !fill(&mut self.s, &mut self.buf) {
                    return None;
                }
            }
            resp.body = self.buf.drain(..n).collect();
            resp.raw_body = resp.body.clone();
        } else if resp.header("transfer-encoding").is_some() {
            loop {
                let line = read_line(&mut self.s, &mut self.buf)?;
                resp.raw_body.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line).to_string();
                let size =
                    usize::from_str_radix(text.trim_end().split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    loop {
                        let t = read_line(&mut self.s, &mut self.buf)?;
                        resp.raw_body.extend_from_slice(&t);
                        if t == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                while self.buf.len() < size + 2 {
                    if !fill(&mut self.s, &mut self.buf) {
                        return None;
                    }
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                resp.raw_body.extend(self.buf.drain(..size + 2));
            }
        } else {
            // until close
            while fill(&mut self.s, &mut self.buf) {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }
}

/// One request on a new connection.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    Client::connect(addr)
        .send(raw.as_bytes())
        .read(raw.starts_with("HEAD "))
        .expect("a response")
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
}

/// Starts the proxy in-process on 127.0.0.1:0 with `body` added to a
/// minimal config (one shard, unless the body sets [server]).
pub fn proxy(body: &str) -> Server {
    start_proxy("", body)
}

/// `listener`: more keys for the one listener.
fn start_proxy(listener: &str, body: &str) -> Server {
    let text = format!("[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n{listener}\n{body}");
    let text = if body.contains("[server]") {
        text
    } else {
        format!("[server]\nworkers = 1\npin_cores = false\n{text}")
    };
    let config = Config::parse(Path::new("test.toml"), &text).expect("valid test config");
    Server::start(config).expect("proxy starts")
}

/// A config body with one upstream "o" at `origin` and one route "/" to it.
pub fn proxy_to(origin: SocketAddr, extra: &str) -> Server {
    proxy(&to_origin(origin, extra))
}

fn to_origin(origin: SocketAddr, extra: &str) -> String {
    format!(
        "{extra}\n[[upstream]]\nname = \"o\"\nendpoints = [\"{origin}\"]\n\n[[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n"
    )
}

/// How a client reaches the proxy's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain => "plain",
            Transport::Tls => "tls",
        })
    }
}

/// A client's stream to the proxy: plain TCP, or TLS over it.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tls::Tls>),
}

impl Conn {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    /// Ends the client's sending side and says so: a FIN, after a
    /// close_notify on TLS.
    pub fn shutdown_write(&mut self) {
        if let Conn::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush();
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }

    /// Leaves as a client that is done does: on TLS a close_notify, then
    /// both directions of the socket shut.
    pub fn close(&mut self) {
        self.shutdown_write();
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }
}

/// The proxy in-process, its listener plain or TLS, and how to reach it.
pub struct Proxy {
    pub server: Server,
    pub transport: Transport,
    /// On TLS, the listener's certificate (its files live as long as it).
    cert: Option<tls::ListenerCert>,
}

/// `proxy(body)`, its listener speaking `transport`.
pub fn proxy_with(transport: Transport, body: &str) -> Proxy {
    let cert = (transport == Transport::Tls).then(tls::ListenerCert::new);
    let listener = cert.as_ref().map(|c| c.table()).unwrap_or_default();
    Proxy {
        server: start_proxy(&listener, body),
        transport,
        cert,
    }
}

/// `proxy_to(origin, extra)`, its listener speaking `transport`.
pub fn proxy_to_with(transport: Transport, origin: SocketAddr, extra: &str) -> Proxy {
    proxy_with(transport, &to_origin(origin, extra))
}

impl Proxy {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Speaks the proxy's transport over `tcp`, connected to it: on TLS,
    /// after a handshake.
    pub fn over(&self, tcp: TcpStream) -> Conn {
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match &self.cert {
            None => Conn::Plain(tcp),
            Some(cert) => Conn::Tls(Box::new(cert.handshake(tcp))),
        }
    }

    /// A new connection, its handshake done on TLS.
    pub fn connect(&self) -> Client<Conn> {
        Client::over(self.over(TcpStream::connect(self.addr()).unwrap()))
    }

    /// One request on a new connection.
    pub fn request(&self, raw: &str) -> Response {
        self.connect()
            .send(raw.as_bytes())
            .read(raw.starts_with("HEAD "))
            .unwrap_or_else(|| panic!("[{}] no response to {raw:?}", self.transport))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
    }
}

// ---- the real binary ----

pub const BIN: &str = env!("CARGO_BIN_EXE_ringway");

pub fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringway-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the binary and waits for its listener line; returns the address.
pub fn start(config: &std::path::Path) -> (Child, SocketAddr) {
    let (child, addr, _) = start_with(config, &[]);
    (child, addr)
}

/// Starts the binary with extra environment; also returns its log lines as they come.
pub fn start_with(
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    spawn(proxy_command(config).envs(env.iter().copied()))
}

pub fn proxy_command(config: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    cmd
}

/// Spawns the proxy and waits for its listener line.
pub fn spawn(cmd: &mut Command) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let at = line.split(" on http://").nth(1);
            if let Some(rest) = at.or_else(|| line.split(" on https://").nth(1)) {
                let addr = rest.split(' ').next().unwrap().to_string();
                let _ = tx.send(addr);
            }
            let _ = log_tx.send(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the proxy logs its listener");
    (child, addr.parse().unwrap(), log_rx)
}

/// The proxy's process, killed if a test fails before it stops it.
pub struct Running(pub Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(config: &std::path::Path) -> (Running, SocketAddr) {
    let (child, addr) = start(config);
    (Running(Some(child)), addr)
}
