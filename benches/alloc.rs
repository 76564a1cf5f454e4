//! Heap allocations per proxied request once warm, counted by a global
//! allocator wrapped around the system one. The origin and the client here
//! use fixed buffers and allocate nothing per request; the baseline run
//! (client straight to origin) shows that, so what the proxied run counts
//! is the proxy's.
//!
//!     cargo bench --bench alloc
//!
//! Under `cargo test` it runs briefly and fails if the warm path allocates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;

mod counting;
use counting::{ALLOCS, BYTES};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello, world\n";
const REQUEST: &[u8] = b"GET /api/items?id=7 HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: alloc-bench\r\nAccept: */*\r\n\r\n";
/// To the route that retries: its responses are held until whole.
const HELD_REQUEST: &[u8] =
    b"GET /held/items?id=7 HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: alloc-bench\r\nAccept: */*\r\n\r\n";
/// To the route with every policy on, from an allowed origin.
const POLICY_REQUEST: &[u8] =
    b"GET /gw/items?id=7 HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: alloc-bench\r\n\
Accept: */*\r\nOrigin: https://app.example.com\r\nCookie: s=1\r\n\r\n";

/// A keep-alive origin answering every request head with RESPONSE; no allocation per request.
fn origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 8192];
                let mut len = 0;
                loop {
                    match s.read(&mut buf[len..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                    while let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
                        if s.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..len, 0);
                        len -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `n` requests one after another on one connection.
fn drive(s: &mut TcpStream, request: &[u8], n: u64) {
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        s.write_all(request).unwrap();
        let mut got = 0;
        // Responses are small: read until the body's last byte arrives.
        while !buf[..got].ends_with(b"world\n") {
            let k = s.read(&mut buf[got..]).unwrap();
            assert!(k > 0, "connection closed");
            got += k;
        }
    }
}

/// Returns the warm allocations per request.
fn measure(label: &str, addr: SocketAddr, request: &[u8], warm_up: u64, n: u64) -> f64 {
    // A new connection and its first request: this is where allocation is
    // expected (a task, buffers warming up), and shows the counter counts.
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let mut s = TcpStream::connect(addr).unwrap();
    drive(&mut s, request, 1);
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    println!(
        "{label:<38} first request on a new connection: {} allocations, {} bytes",
        a1 - a0,
        b1 - b0
    );
    s.set_nodelay(true).unwrap();
    drive(&mut s, request, warm_up);
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    drive(&mut s, request, n);
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    println!(
        "{label:<38} warm: {:>6.4} allocations/request  {:>9.1} bytes/request  ({} requests, {} allocations)",
        (a1 - a0) as f64 / n as f64,
        (b1 - b0) as f64 / n as f64,
        n,
        a1 - a0
    );
    (a1 - a0) as f64 / n as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: there
    // this is a short run that fails if the warm request path allocates.
    let bench = std::env::args().any(|a| a == "--bench");
    let (warm_up, n) = if bench {
        (20_000, 200_000)
    } else {
        (2_000, 2_000)
    };
    let origin = origin();
    let baseline = measure("baseline (client -> origin)", origin, REQUEST, warm_up, n);
    let config = format!(
        "[server]\nworkers = 1\npin_cores = false\n[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{origin}\"]\n\
         [[route]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"o\"\n\
         [[route]]\nname = \"held\"\nprefix = \"/held\"\nupstream = \"o\"\nretry = {{ attempts = 3 }}\n\
         [[route]]\nname = \"gw\"\nprefix = \"/gw\"\nupstream = \"o\"\nrequest_id = true\n\
         cors = {{ origins = [\"https://app.example.com\"], credentials = true }}\n\
         request_headers = {{ set = {{ X-Client = \"${{client_ip}}\" }}, remove = [\"Cookie\"] }}\n\
         response_headers = {{ add = {{ X-Route = \"${{route}}\" }} }}\n\
         rewrite_prefix = {{ from = \"/gw\", to = \"/api\" }}\n\
         [[route]]\nname = \"direct\"\nprefix = \"/\"\nrespond = {{ status = 200, body = \"hello, world\\n\" }}\n"
    );
    let config = ringway::Config::parse(Path::new("bench.toml"), &config).unwrap();
    let server = ringway::Server::start(config).unwrap();
    let proxied = measure(
        "proxied (client -> ringway -> origin)",
        server.addr(),
        REQUEST,
        warm_up,
        n,
    );
    let policies = measure(
        "proxied, id + cors + rules + rewrite",
        server.addr(),
        POLICY_REQUEST,
        warm_up,
        n,
    );
    let held = measure(
        "proxied, retries on, response held",
        server.addr(),
        HELD_REQUEST,
        warm_up,
        n,
    );
    server.shutdown();
    // Every balance, over two endpoints and under a max_concurrent cap.
    // `origin` is the address from here on: the function is `self::origin`.
    let second = self::origin();
    let mut balanced = 0.0f64;
    for balance in ["round-robin", "least-conn", "p2c", "hash-header:User-Agent"] {
        let config = format!(
            "[server]\nworkers = 1\npin_cores = false\n[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"o\"\nendpoints = [\"{origin}\", {{ addr = \"{second}\", weight = 2 }}]\n\
             balance = \"{balance}\"\nmax_concurrent = 1000\n\
             [[route]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"o\"\n"
        );
        let config = ringway::Config::parse(Path::new("bench.toml"), &config).unwrap();
        let server = ringway::Server::start(config).unwrap();
        let label = format!("proxied, balance {balance}");
        balanced = balanced.max(measure(&label, server.addr(), REQUEST, warm_up, n));
        server.shutdown();
    }
    assert!(
        balanced < 0.01,
        "a balance allocates on the warm request path: {balanced} per request"
    );
    // Amortised growth of a table may show as a rare allocation; one per
    // hundred requests would be a per-request allocation on some path.
    assert!(
        baseline == 0.0 && proxied < 0.01 && policies < 0.01 && held < 0.01,
        "the warm request path allocates: {proxied} per request, {policies} with policies, \
         {held} with a held response (baseline {baseline})"
    );
}
