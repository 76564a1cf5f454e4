//! What the proxy refuses, and how it fails: smuggling attempts, limits,
//! timeouts on both sides, a dead or slow upstream, routing.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::*;

fn json_error(resp: &Response, status: u16) {
    assert_eq!(resp.status, status, "{}", resp.head);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let body = resp.text();
    assert!(body.starts_with("{\"error\":\""), "{body}");
    assert!(body.ends_with(&format!(",\"status\":{status}}}")), "{body}");
}

#[test]
fn smuggling_attempts_get_400_close_and_never_reach_the_upstream() {
    let origin = Origin::start(|_| ok("should not happen"));
    let proxy = proxy_to(origin.addr, "");
    let cases: &[&str] = &[
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4, 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: four\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n  b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n X-Leading-Space: a\r\n\r\n",
        "GET / HTTP/1.1\nHost: h\n\n",
        "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\x1bb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nBad Name: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nBad\x01Name: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n: no name\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET nopath HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /caf\u{e9} HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    ];
    for (i, raw) in cases.iter().enumerate() {
        let mut c = Client::connect(proxy.addr());
        c.send(raw.as_bytes());
        let resp = c
            .read(false)
            .unwrap_or_else(|| panic!("case {i}: no response to {raw:?}"));
        assert_eq!(resp.status, 400, "case {i}: {raw:?}\n{}", resp.head);
        json_error(&resp, 400);
        assert_eq!(resp.header("connection"), Some("close"), "case {i}");
        assert!(c.is_closed(), "case {i}: connection closed after 400");
    }
    assert_eq!(origin.connections(), 0, "nothing reached the upstream");
}

#[test]
fn invalid_chunk_arriving_later_never_completes_a_request_upstream() {
    let origin = Origin::start(|_| ok("should not happen"));
    let proxy = proxy_to(origin.addr, "");
    let mut c = Client::connect(proxy.addr());
    c.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    // Wait until the head and first chunk are upstream, then send garbage.
    while origin.connections() == 0 {
        std::thread::yield_now();
    }
    c.send(b"zz\r\n0\r\n\r\n");
    json_error(&c.read(false).unwrap(), 400);
    assert!(c.is_closed());
    assert!(
        origin.seen().is_empty(),
        "the origin saw no complete request"
    );
}

#[test]
fn size_limits() {
    let origin = Origin::start(|_| ok("fine"));
    let proxy = proxy_to(
        origin.addr,
        "[limits]\nmax_request_line = \"1KiB\"\nmax_header_bytes = \"4KiB\"\nmax_headers = 20\nmax_body_bytes = \"1KiB\"\n",
    );
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(1100));
    json_error(&request(proxy.addr(), &long_target), 414);

    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    json_error(&request(proxy.addr(), &big_header), 431);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..25 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    json_error(&request(proxy.addr(), &many), 431);

    let body = "x".repeat(2000);
    let too_big = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n{body}");
    json_error(&request(proxy.addr(), &too_big), 413);

    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n"
    );
    json_error(&request(proxy.addr(), &chunked), 413);

    let fine = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n".to_string()
        + &"y".repeat(1000);
    assert_eq!(request(proxy.addr(), &fine).status, 200);
    assert_eq!(
        origin.seen().len(),
        1,
        "only the request within limits completed upstream"
    );
}

#[test]
fn per_route_body_limit_overrides_global() {
    let origin = Origin::start(|_| ok("fine"));
    let proxy = proxy(&format!(
        "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"small\"\nprefix = \"/small\"\nupstream = \"o\"\nmax_body_bytes = 10\n\
         [[route]]\nname = \"rest\"\nprefix = \"/\"\nupstream = \"o\"\n",
        origin.addr
    ));
    let req = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n{}",
            "z".repeat(20)
        )
    };
    json_error(&request(proxy.addr(), &req("/small")), 413);
    assert_eq!(request(proxy.addr(), &req("/big")).status, 200);
}

#[test]
fn slow_client_head_gets_408_and_close() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy_to(origin.addr, "[timeouts]\nclient_header = \"300ms\"\n");
    let mut c = Client::connect(proxy.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n"); // never finished
    let started = Instant::now();
    let resp = c.read(false).expect("a 408");
    json_error(&resp, 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(c.is_closed());
}

#[test]
fn slow_client_body_gets_408() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy_to(origin.addr, "[timeouts]\nclient_body_idle = \"300ms\"\n");
    let mut c = Client::connect(proxy.addr());
    c.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc");
    json_error(&c.read(false).expect("a 408"), 408);
    assert!(c.is_closed());
}

#[test]
fn idle_keep_alive_connection_is_closed_quietly() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy_to(origin.addr, "[timeouts]\nkeepalive_idle = \"200ms\"\n");
    let mut c = Client::connect(proxy.addr());
    assert_eq!(
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .read(false)
            .unwrap()
            .status,
        200
    );
    let mut b = [0u8; 64];
    let n = c.s.read(&mut b).unwrap();
    assert_eq!(n, 0, "closed with no response bytes");
}

#[test]
fn upstream_down_is_502() {
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = proxy_to(addr, "");
    let mut c = Client::connect(proxy.addr());
    json_error(
        &c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .read(false)
            .unwrap(),
        502,
    );
    // A 502 does not end the client's connection.
    json_error(
        &c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .read(false)
            .unwrap(),
        502,
    );
}

#[test]
fn upstream_connect_timeout_is_502() {
    // A listener that never accepts, with its backlog filled: further SYNs go unanswered.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let _ = s.connect_timeout(&addr.into(), Duration::from_millis(100));
        fillers.push(s);
    }
    let proxy = proxy_to(addr, "[timeouts]\nupstream_connect = \"300ms\"\n");
    let started = Instant::now();
    json_error(&get(proxy.addr(), "/"), 502);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn slow_upstream_head_is_504() {
    let origin = Origin::start(|_| Reply::Hang(Duration::from_secs(3)));
    let proxy = proxy_to(
        origin.addr,
        "[timeouts]\nupstream_response_header = \"300ms\"\n",
    );
    let started = Instant::now();
    json_error(&get(proxy.addr(), "/"), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn slow_upstream_head_after_body_is_504() {
    let origin = Origin::start(|_| Reply::Hang(Duration::from_secs(3)));
    let proxy = proxy_to(
        origin.addr,
        "[timeouts]\nupstream_response_header = \"300ms\"\n",
    );
    let resp = request(
        proxy.addr(),
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    );
    json_error(&resp, 504);
}

#[test]
fn total_request_timeout_is_504() {
    let origin = Origin::start(|_| {
        Reply::Delay(
            Duration::from_secs(2),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )
    });
    let proxy = proxy_to(origin.addr, "[timeouts]\nrequest_total = \"300ms\"\n");
    let started = Instant::now();
    json_error(&get(proxy.addr(), "/"), 504);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn upstream_dying_mid_response_closes_the_client() {
    let origin = Origin::start(|_| {
        Reply::RawClose(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a part".to_vec())
    });
    let proxy = proxy_to(origin.addr, "");
    let mut c = Client::connect(proxy.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    let started = Instant::now();
    assert!(
        c.read(false).is_none(),
        "the truncated response is not completed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed, not left hanging"
    );
}

#[test]
fn malformed_upstream_response_is_502() {
    let origin = Origin::start(|_| Reply::Raw(b"NOT HTTP AT ALL\r\n\r\n".to_vec()));
    let proxy = proxy_to(origin.addr, "");
    json_error(&get(proxy.addr(), "/"), 502);
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        )
    });
    let proxy = proxy_to(origin.addr, "");
    json_error(&get(proxy.addr(), "/"), 502);
}

#[test]
fn upstream_pool_limit_queues_then_503() {
    let origin = Origin::start(|_| {
        Reply::Delay(
            Duration::from_millis(700),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )
    });
    let proxy = proxy(&format!(
        "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\nmax_per_endpoint = 1\nmax_idle_per_endpoint = 1\nqueue_timeout = \"200ms\"\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        origin.addr
    ));
    let mut first = Client::connect(proxy.addr());
    first.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n");
    // Wait until the origin holds the only connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.connections() == 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    json_error(&get(proxy.addr(), "/2"), 503);
    assert_eq!(first.read(false).unwrap().status, 200);
}

#[test]
fn routing_precedence_boundary_and_405() {
    let origin = Origin::start(|s| ok(&format!("origin {}", s.target)));
    let proxy = proxy(&format!(
        "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"api\"\nprefix = \"/api\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"o\"\n\
         [[route]]\nname = \"v2\"\nprefix = \"/api/v2\"\nrespond = {{ status = 200, body = \"v2\" }}\n\
         [[route]]\nname = \"host\"\nhost = \"*.example.com\"\nprefix = \"/\"\nrespond = {{ status = 200, body = \"wild\" }}\n",
        origin.addr
    ));
    let a = proxy.addr();
    assert_eq!(get(a, "/api").text(), "origin /api");
    assert_eq!(get(a, "/api/").text(), "origin /api/");
    assert_eq!(get(a, "/api/x").text(), "origin /api/x");
    assert_eq!(get(a, "/api?q=1").text(), "origin /api?q=1");
    assert_eq!(get(a, "/api/v2/users").text(), "v2", "longest prefix wins");
    json_error(&get(a, "/apix"), 404);
    json_error(&get(a, "/"), 404);
    let resp = request(a, "DELETE /api/x HTTP/1.1\r\nHost: h\r\n\r\n");
    json_error(&resp, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD, POST"));
    assert_eq!(
        request(a, "GET / HTTP/1.1\r\nHost: A.Example.COM:8080\r\n\r\n").text(),
        "wild"
    );
    let resp = request(a, "HEAD /api/v2 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(
        (resp.status, resp.header("content-length")),
        (200, Some("2"))
    );
}

#[test]
fn exhausted_buffer_slab_answers_503() {
    // 16 KiB of 4 KiB buffers: each kept-alive connection holds one.
    let proxy = proxy(
        "[limits]\nbuffer_size = \"4KiB\"\nmax_header_bytes = \"2KiB\"\nmax_request_line = \"1KiB\"\n\
         max_buffer_bytes = \"16KiB\"\n\
         [[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = { status = 200, body = \"hi\" }\n",
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(proxy.addr());
        let resp = c
            .send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .read(false)
            .unwrap();
        assert_eq!(resp.status, 200);
        held.push(c);
    }
    // A fourth connection gets the last buffer to read into, none to answer with.
    json_error(&get(proxy.addr(), "/"), 503);
    // A fourth idle connection takes the last buffer; the next is refused
    // before it is read (it is accepted, and served, after the fourth).
    held.push(Client::connect(proxy.addr()));
    json_error(&get(proxy.addr(), "/"), 503);
    drop(held);
    // Buffers come back to the slab when connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(proxy.addr(), "/").status != 200 {
        assert!(
            Instant::now() < deadline,
            "buffers never returned to the slab"
        );
        std::thread::yield_now();
    }
}

#[test]
fn connection_limit_answers_503() {
    let proxy = proxy(
        "[server]\nworkers = 1\npin_cores = false\nmax_connections = 1\n\
         [[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = { status = 200, body = \"hi\" }\n",
    );
    let mut held = Client::connect(proxy.addr());
    assert_eq!(
        held.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .read(false)
            .unwrap()
            .status,
        200
    );
    json_error(&get(proxy.addr(), "/"), 503);
    drop(held);
}

#[test]
fn garbage_never_panics_the_proxy() {
    let proxy = proxy(
        "[[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = { status = 200, body = \"alive\" }\n",
    );
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..200 {
        let mut c = Client::connect(proxy.addr());
        let mut junk = Vec::new();
        for _ in 0..(seed % 300) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(if seed.is_multiple_of(3) {
                b"\r\n: /HTTP1.GET"[(seed % 14) as usize]
            } else {
                seed as u8
            });
        }
        let _ = c.s.write_all(&junk);
        c.shutdown_write();
        let mut sink = Vec::new();
        let _ = c.s.read_to_end(&mut sink);
    }
    assert_eq!(get(proxy.addr(), "/").text(), "alive");
}

/// Sends `raw` in `piece`-byte writes (each its own segment, Nagle off).
fn send_in_pieces(c: &mut Client, raw: &[u8], piece: usize) {
    c.s.set_nodelay(true).unwrap();
    for p in raw.chunks(piece) {
        if c.s.write_all(p).is_err() {
            return; // the proxy may answer and close before the end
        }
    }
}

#[test]
fn heads_arriving_in_pieces_are_parsed_and_limited() {
    let origin = Origin::start(|s| ok(&s.target));
    let proxy = proxy_to(
        origin.addr,
        "[limits]\nmax_request_line = \"1KiB\"\nmax_header_bytes = \"4KiB\"\n",
    );
    let mut head = String::from("GET /pieces?x=1 HTTP/1.1\r\nHost: h\r\n");
    for i in 0..30 {
        head.push_str(&format!("X-Pad-{i}: {}\r\n", "v".repeat(60)));
    }
    head.push_str("\r\n");
    for piece in [1, 3, 7, 64] {
        let mut c = Client::connect(proxy.addr());
        send_in_pieces(&mut c, head.as_bytes(), piece);
        assert_eq!(
            c.read(false).unwrap().text(),
            "/pieces?x=1",
            "pieces of {piece}"
        );
    }

    let mut c = Client::connect(proxy.addr());
    let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(1500));
    send_in_pieces(&mut c, long_line.as_bytes(), 50);
    json_error(&c.read(false).unwrap(), 414);

    let mut c = Client::connect(proxy.addr());
    let endless = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}", "b".repeat(5000));
    send_in_pieces(&mut c, endless.as_bytes(), 100);
    json_error(&c.read(false).unwrap(), 431);
}
