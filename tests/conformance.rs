//! RFC 9110 / 9112 classes that outside suites check a proxy for: request
//! target and Host syntax, the absolute form, chunked framing grammar,
//! fields a backend could misread, h2c, Date; and what happens when a
//! response is already on its way, or the client leaves before it comes.
//!
//! Every case runs twice, the proxy's listener plain TCP then TLS: as
//! `<case>::plain` and `<case>::tls`, each its own test.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// For each case `f(Transport)`, a module `f` of two tests, `plain` and
/// `tls`.
macro_rules! over_plain_and_tls {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn plain() {
                super::$case(super::Transport::Plain)
            }
            #[test]
            fn tls() {
                super::$case(super::Transport::Tls)
            }
        }
    )*};
}

over_plain_and_tls!(
    malformed_hosts_targets_and_chunk_framing_get_400_and_never_reach_the_upstream,
    valid_chunk_extensions_trailers_and_leading_zeros_pass,
    absolute_form_authority_routes_and_replaces_host,
    underscored_fields_are_dropped_unless_the_route_passes_them,
    a_connection_option_naming_content_length_smuggles_nothing,
    h2c_upgrade_is_forwarded_as_plain_http11,
    every_response_carries_a_date,
    no_error_response_after_a_response_was_committed,
    client_close_while_the_upstream_is_slow_closes_the_upstream_at_once,
    client_close_notify_while_the_upstream_is_slow_closes_the_upstream_at_once,
    a_pipelined_request_while_the_upstream_is_slow_is_no_close,
    tunnel_loses_no_byte_while_the_other_side_keeps_it_alive,
);

fn json_400(c: &mut Client<Conn>, t: Transport, raw: &str) {
    let resp = c
        .read(false)
        .unwrap_or_else(|| panic!("[{t}] no response to {raw:?}"));
    assert_eq!(resp.status, 400, "[{t}] {raw:?}\n{}", resp.head);
    let text = resp.text();
    assert!(text.ends_with(",\"status\":400}"), "[{t}] {text}");
    assert_eq!(resp.header("connection"), Some("close"), "[{t}] {raw:?}");
    assert!(c.is_closed(), "[{t}] {raw:?}: closed after 400");
}

fn malformed_hosts_targets_and_chunk_framing_get_400_and_never_reach_the_upstream(t: Transport) {
    let origin = Origin::start(|_| ok("should not happen"));
    let proxy = proxy_to_with(t, origin.addr, "");
    let long_host = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "a".repeat(300));
    let chunked = |body: &str| {
        format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    };
    let mut cases: Vec<String> = [
        // Host: uri-host [ ":" port ]
        "GET / HTTP/1.1\r\nHost: h:8x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h:80:81\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h:99999\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\"x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
        // Request-target bytes.
        "GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a<b> HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a{b} HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a|b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a\\b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a^b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a%4 HTTP/1.1\r\nHost: h\r\n\r\n",
        // Absolute form.
        "GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://u:p@h/p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h:8x/p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h/p HTTP/1.1\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cases.push(long_host);
    for body in [
        "1;\r\nA\r\n0\r\n\r\n",
        "1 \r\nA\r\n0\r\n\r\n",
        "1;a=\r\nA\r\n0\r\n\r\n",
        "1;=v\r\nA\r\n0\r\n\r\n",
        "1;a b\r\nA\r\n0\r\n\r\n",
        "1;a=\"x\r\nA\r\n0\r\n\r\n",
        "0\r\nno-colon\r\n\r\n",
        "0\r\n: v\r\n\r\n",
        "0\r\nX: v\r\n folded\r\n\r\n",
    ] {
        cases.push(chunked(body));
    }
    for raw in &cases {
        let mut c = proxy.connect();
        c.send(raw.as_bytes());
        json_400(&mut c, t, raw);
    }
    assert_eq!(
        origin.connections(),
        0,
        "[{t}] nothing reached the upstream"
    );
}

fn valid_chunk_extensions_trailers_and_leading_zeros_pass(t: Transport) {
    let origin = Origin::start(|s| ok(&s.body_len.to_string()));
    let proxy = proxy_to_with(t, origin.addr, "");
    let body = "0000000000000000000003 ; a = b ;c=\"q \\\" ;\"\r\nabc\r\n\
                00\r\nX-Trailer: v\r\n\r\n";
    let resp = proxy.request(&format!(
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    ));
    assert_eq!((resp.status, resp.text().as_str()), (200, "3"), "[{t}]");
    assert_eq!(
        origin.seen()[0].raw_body,
        body.as_bytes(),
        "[{t}] passed through as sent"
    );
}

fn absolute_form_authority_routes_and_replaces_host(t: Transport) {
    let origin = Origin::start(|s| ok(&s.target));
    let proxy = proxy_with(
        t,
        &format!(
            "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"a\"\nhost = \"a.example\"\nprefix = \"/\"\nupstream = \"o\"\n\
         [[route]]\nname = \"other\"\nprefix = \"/\"\nrespond = {{ status = 200, body = \"fallback\" }}\n",
            origin.addr
        ),
    );
    for (host_line, target, sent) in [
        (
            "Host: other.example\r\n",
            "http://a.example/p?x=1",
            "/p?x=1",
        ),
        ("Host:\r\n", "http://A.Example:80/p", "/p"),
        ("Host: bad host\r\n", "http://a.example", "/"),
        ("Host: other.example\r\n", "http://a.example?q", "/?q"),
    ] {
        let resp = proxy.request(&format!("GET {target} HTTP/1.1\r\n{host_line}\r\n"));
        let got = (resp.status, resp.text());
        assert_eq!((got.0, got.1.as_str()), (200, sent), "[{t}] {target}");
        let seen = origin.seen().pop().unwrap();
        let authority = target.split('/').nth(2).unwrap().split('?').next().unwrap();
        assert_eq!(seen.header("host"), Some(authority), "[{t}] {target}");
        assert_eq!(seen.header_count("host"), 1, "[{t}] {target}");
    }
    // Origin form with the same Host header goes to the host-less route.
    let resp = proxy.request("GET /p HTTP/1.1\r\nHost: other.example\r\n\r\n");
    assert_eq!(resp.text(), "fallback", "[{t}]");
}

fn underscored_fields_are_dropped_unless_the_route_passes_them(t: Transport) {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy_with(
        t,
        &format!(
            "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"strict\"\nprefix = \"/\"\nupstream = \"o\"\n\
         [[route]]\nname = \"legacy\"\nprefix = \"/legacy\"\nupstream = \"o\"\nunderscores_in_headers = true\n",
            origin.addr
        ),
    );
    let head = |path: &str| {
        let resp = proxy.request(&format!(
            "GET {path} HTTP/1.1\r\nHost: h\r\nX_User: admin\r\nContent_Length: 5\r\n\
             Transfer_Encoding: chunked\r\nX-Fine: 1\r\n\r\n"
        ));
        assert_eq!(resp.status, 200, "[{t}] {path}");
        let seen = origin.seen().pop().unwrap();
        assert_eq!(seen.header("x-fine"), Some("1"), "[{t}] {path}");
        seen.head
    };
    let strict = head("/");
    assert!(!strict.contains('_'), "[{t}] {strict}");
    let legacy = head("/legacy");
    assert!(legacy.contains("X_User: admin\r\n"), "[{t}] {legacy}");
    assert!(
        !legacy.contains("Content_Length") && !legacy.contains("Transfer_Encoding"),
        "[{t}] never a name that folds to a framing header: {legacy}"
    );
}

fn a_connection_option_naming_content_length_smuggles_nothing(t: Transport) {
    let origin = Origin::start(|s| ok(&format!("{} {}", s.method, s.body_len)));
    let proxy = proxy_to_with(t, origin.addr, "");
    let body = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut c = proxy.connect();
    c.send(
        format!(
            "POST /a HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let resp = c.read(false).unwrap_or_else(|| panic!("[{t}] no response"));
    assert_eq!(resp.text(), format!("POST {}", body.len()), "[{t}]");
    assert!(
        origin.seen().iter().all(|s| s.target != "/smuggled"),
        "[{t}] {:?}",
        origin.seen()
    );
}

fn h2c_upgrade_is_forwarded_as_plain_http11(t: Transport) {
    let origin = Origin::start(|_| ok("plain"));
    let proxy = proxy_to_with(t, origin.addr, "");
    let resp = proxy.request(
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    let got = (resp.status, resp.text());
    assert_eq!((got.0, got.1.as_str()), (200, "plain"), "[{t}]");
    let head = origin.seen()[0].head.to_ascii_lowercase();
    assert!(
        !head.contains("upgrade") && !head.contains("http2-settings"),
        "[{t}] {head}"
    );
}

fn every_response_carries_a_date(t: Transport) {
    let origin = Origin::start(|s| {
        if s.target == "/dated" {
            Reply::Raw(
                b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            )
        } else {
            ok("x")
        }
    });
    let proxy = proxy_with(
        t,
        &format!(
            "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"o\"\nprefix = \"/\"\nupstream = \"o\"\n\
         [[route]]\nname = \"teapot\"\nprefix = \"/tea\"\nrespond = {{ status = 418, body = \"short and stout\" }}\n",
            origin.addr
        ),
    );
    let is_imf_fixdate =
        |d: &str| d.len() == 29 && d.ends_with(" GMT") && httpdate::parse_http_date(d).is_ok();
    for path in ["/", "/tea"] {
        let resp = proxy.get(path);
        let date = resp
            .header("date")
            .unwrap_or_else(|| panic!("[{t}] {path}: {}", resp.head));
        assert!(is_imf_fixdate(date), "[{t}] {path}: {date}");
    }
    let resp = proxy.get("/dated");
    let upstreams = Some("Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(resp.header("date"), upstreams, "[{t}]");
    assert_eq!(resp.head.matches("Date:").count(), 1, "[{t}] {}", resp.head);
    // ringway's own answers: an error, and a status it has a phrase for.
    let resp = proxy.request("GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n");
    let date = resp.header("date").unwrap_or_default();
    assert!(is_imf_fixdate(date), "[{t}] {}", resp.head);
    let resp = proxy.get("/tea");
    assert!(
        resp.head.starts_with("HTTP/1.1 418 I'm a teapot\r\n"),
        "[{t}] {}",
        resp.head
    );
}

/// An upstream that answers as soon as it has the request head, with a
/// head far bigger than the socket buffers, so the proxy's write of it to a
/// client that does not read stays in flight.
fn no_error_response_after_a_response_was_committed(t: Transport) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let big = "a".repeat(7 << 20);
    let upstream = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        read_head(&mut s);
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 0\r\n\r\n"
        );
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let proxy = proxy_to_with(t, addr, "[limits]\nbuffer_size = \"8MiB\"\n");

    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&proxy.addr().into()).unwrap();
    let mut s = proxy.over(sock.into());
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .unwrap();
    s.flush().unwrap();
    // Once the response has started to arrive, break the request body. Its
    // first byte is read, not peeked: on TLS the socket's first bytes after
    // the handshake may be the session's own (tickets), not the response.
    let mut got = vec![0u8; 1];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("[{t}] no response: {e}"));
    s.write_all(b"zz\r\n").unwrap();
    s.flush().unwrap();
    // Until the proxy closes (on TLS, a close without close_notify is an
    // error; what came before it is kept).
    let _ = s.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    let start: String = got.chars().take(40).collect();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "[{t}] {start}");
    assert_eq!(
        got.matches("HTTP/1.1 ").count(),
        1,
        "[{t}] a second head followed"
    );
    assert!(!got.contains("\"status\":400"), "[{t}]");
    drop(proxy);
    upstream.join().unwrap();
}

/// The upstream reads the request, then waits for its connection to close
/// (and says when), up to a bound.
fn silent_upstream() -> (
    std::net::SocketAddr,
    mpsc::Receiver<()>,
    mpsc::Receiver<Instant>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_request, request_rx) = mpsc::channel();
    let (closed, closed_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let head = read_head(&mut s);
            let mut b = [0u8; 4096];
            if find(&head, b"Content-Length: 5").is_some() {
                let body_read = head.len() - find(&head, b"\r\n\r\n").unwrap() - 4;
                let mut rest = vec![0u8; 5 - body_read];
                if s.read_exact(&mut rest).is_err() {
                    return;
                }
            }
            got_request.send(()).unwrap();
            let eof = matches!(s.read(&mut b), Ok(0));
            if eof {
                closed.send(Instant::now()).unwrap();
            }
        }
    });
    (addr, request_rx, closed_rx)
}

/// The client's TCP close, the same move on either transport: a client
/// that goes away (over TLS, one that says no close_notify first, as when
/// its process ends).
fn client_close_while_the_upstream_is_slow_closes_the_upstream_at_once(t: Transport) {
    client_leaves_while_the_upstream_is_slow(t, |c| {
        let _ = c.tcp().shutdown(std::net::Shutdown::Both);
    });
}

/// A client that closes as TLS would have it, a close_notify and then its
/// FIN (on plain TCP, the FIN alone). A peek finds bytes there, the
/// close_notify record, ciphertext it cannot tell from a pipelined
/// request: the proxy must see the FIN itself.
fn client_close_notify_while_the_upstream_is_slow_closes_the_upstream_at_once(t: Transport) {
    client_leaves_while_the_upstream_is_slow(t, Conn::close);
}

/// A request sent while the one before waits on a slow upstream: bytes the
/// watch on the client finds unread (over TLS, ciphertext as a close_notify
/// is), and no close. Both are answered, in order.
fn a_pipelined_request_while_the_upstream_is_slow_is_no_close(t: Transport) {
    let (slow_tx, slow_rx) = mpsc::channel();
    let origin = Origin::start(move |s| match s.target.as_str() {
        "/slow" => {
            slow_tx.send(()).unwrap();
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow";
            Reply::Delay(Duration::from_millis(300), answer.to_vec())
        }
        _ => ok("fast"),
    });
    let proxy = proxy_to_with(t, origin.addr, "");
    let mut c = proxy.connect();
    c.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n");
    slow_rx
        .recv_timeout(IO_TIMEOUT)
        .unwrap_or_else(|_| panic!("[{t}] the upstream got the first request"));
    c.send(b"GET /fast HTTP/1.1\r\nHost: h\r\n\r\n");
    for body in ["slow", "fast"] {
        let r = c
            .read(false)
            .unwrap_or_else(|| panic!("[{t}] no response for /{body}"));
        assert_eq!((r.status, r.text().as_str()), (200, body), "[{t}]");
    }
}

fn client_leaves_while_the_upstream_is_slow(t: Transport, leave: fn(&mut Conn)) {
    let (addr, request_rx, closed_rx) = silent_upstream();
    let proxy = proxy_to_with(t, addr, "");
    for raw in [
        "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let mut c = proxy.connect();
        c.send(raw.as_bytes());
        request_rx
            .recv_timeout(IO_TIMEOUT)
            .unwrap_or_else(|_| panic!("[{t}] {raw:?}: the upstream got the request"));
        let t0 = Instant::now();
        leave(&mut c.s);
        drop(c);
        let closed = closed_rx
            .recv_timeout(Duration::from_secs(6))
            .unwrap_or_else(|_| panic!("[{t}] {raw:?}: the upstream connection was closed"));
        let after = closed.saturating_duration_since(t0);
        assert!(
            after < Duration::from_millis(100),
            "[{t}] {raw:?}: upstream closed {after:?} after the client"
        );
    }
}

/// The client keeps a tunnel busy while the upstream speaks only after
/// pauses about as long as the idle limit, so the proxy's wait on the
/// upstream side outlasts the limit again and again: every byte must still
/// arrive, in order. (The loss this guards against is a race in a few
/// microseconds around each expiry; the test cannot force it every run.)
fn tunnel_loses_no_byte_while_the_other_side_keeps_it_alive(t: Transport) {
    const UP: usize = 500;
    const DOWN: usize = 10;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        read_head(&mut s);
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        let mut r = s.try_clone().unwrap();
        let reader = std::thread::spawn(move || read_n(&mut r, UP));
        for i in 0..DOWN {
            #[allow(clippy::disallowed_methods)] // a slow peer, not synchronisation
            std::thread::sleep(Duration::from_millis(240 + (i as u64 % 5) * 5));
            s.write_all(&[i as u8]).unwrap();
        }
        reader.join().unwrap()
    });
    let proxy = proxy_to_with(t, addr, "[timeouts]\nupstream_idle = \"250ms\"\n");
    let tcp = TcpStream::connect(proxy.addr()).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut c = proxy.over(tcp);
    c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
        .unwrap();
    c.flush().unwrap();
    let head = read_head(&mut c);
    assert!(head.starts_with(b"HTTP/1.1 101"), "[{t}]");
    let mut got = head[find(&head, b"\r\n\r\n").unwrap() + 4..].to_vec();
    // One thread writes and reads (a TLS session is not split between
    // threads): a byte up every 5 ms, as a busy client, and between two
    // whatever came down, read without waiting.
    for i in 0..UP {
        if c.write_all(&[(i % 251) as u8])
            .and_then(|()| c.flush())
            .is_err()
        {
            break;
        }
        #[allow(clippy::disallowed_methods)] // keeps the tunnel busy
        std::thread::sleep(Duration::from_millis(5));
        c.tcp().set_nonblocking(true).unwrap();
        let open = read_ready(&mut c, &mut got, t);
        c.tcp().set_nonblocking(false).unwrap();
        if !open {
            break;
        }
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    while got.len() < DOWN && Instant::now() < deadline && read_ready(&mut c, &mut got, t) {}
    assert_eq!(
        got,
        (0..DOWN).map(|i| i as u8).collect::<Vec<_>>(),
        "[{t}] upstream to client"
    );
    let expected: Vec<u8> = (0..UP).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        upstream.join().unwrap(),
        expected,
        "[{t}] client to upstream"
    );
}

/// Reads what `c` has until a read would block (or, blocking, times out);
/// false once it has ended.
fn read_ready(c: &mut Conn, got: &mut Vec<u8>, t: Transport) -> bool {
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) => return false,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return true;
            }
            Err(e) => panic!("[{t}] the tunnel failed: {e}"),
        }
    }
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while got.len() < n {
        match s.read(&mut b) {
            Ok(k) if k > 0 => got.extend_from_slice(&b[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    got
}
