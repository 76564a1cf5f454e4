//! Forwarding through the proxy to a real origin on loopback: bytes,
//! framing, keep-alive, pipelining, pooling, head rewriting, upgrades.

mod support;

use support::*;

#[test]
fn forwards_method_target_headers_and_body_byte_for_byte() {
    let origin = Origin::start(|_| ok("done"));
    let proxy = proxy_to(origin.addr, "");
    let body = "a=1&b=\u{e9}\r\n\0binary";
    let raw = format!(
        "PUT /some/path?q=1&r=%20x HTTP/1.1\r\nHost: example.test\r\nX-Custom: Value  with  spaces\r\n\
         Content-Type: text/odd\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = request(proxy.addr(), &raw);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "done");
    assert_eq!(resp.header("x-origin"), Some("yes"));
    assert_eq!(resp.header("via"), Some("1.1 ringway"));

    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        (s.method.as_str(), s.target.as_str()),
        ("PUT", "/some/path?q=1&r=%20x")
    );
    assert_eq!(s.header("host"), Some("example.test"));
    assert_eq!(s.header("x-custom"), Some("Value  with  spaces"));
    assert_eq!(s.header("content-type"), Some("text/odd"));
    assert_eq!(s.raw_body, body.as_bytes());
    assert!(
        s.head.starts_with("PUT /some/path?q=1&r=%20x HTTP/1.1\r\n"),
        "{}",
        s.head
    );
}

#[test]
fn hop_by_hop_headers_removed_and_forwarding_headers_added() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nConnection: X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\n\
              Content-Length: 2\r\n\r\nok"
                .to_vec(),
        )
    });
    let proxy = proxy_to(origin.addr, "");
    let resp = request(
        proxy.addr(),
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 300\r\n\
         TE: trailers\r\nTrailer: X-T\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
         X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nVia: 1.0 edge\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-drop-me"), None);
    assert_eq!(resp.header("keep-alive"), None);
    assert_eq!(resp.header("connection"), None);

    let s = &origin.seen()[0];
    for h in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(
            s.header(h),
            None,
            "{h} must not reach the origin:\n{}",
            s.head
        );
    }
    assert_eq!(s.header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header_count("x-forwarded-proto"), 1);
    assert_eq!(s.header("via"), Some("1.0 edge, 1.1 ringway"));
}

#[test]
fn chunked_request_and_response_pass_through() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec(),
        )
    });
    let proxy = proxy_to(origin.addr, "");
    let body = "3;name=v\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 19\r\n\r\n";
    let mut client = Client::connect(proxy.addr());
    client.send(
        format!("POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
            .as_bytes(),
    );
    let resp = client.read(false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello world");
    assert_eq!(
        resp.raw_body,
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    );
    let s = &origin.seen()[0];
    assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        s.raw_body,
        body.as_bytes(),
        "chunk extensions and trailers pass through"
    );
    assert_eq!(s.body_len, 19);

    // The connection is still in step: a second request works.
    let resp = client
        .send(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!(resp.status, 200);
}

#[test]
fn close_delimited_response_is_relayed_and_connection_closed() {
    let origin =
        Origin::start(|_| Reply::RawClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()));
    let proxy = proxy_to(origin.addr, "");
    let resp = get(proxy.addr(), "/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(resp.text(), "until the end");
}

#[test]
fn http10_client_gets_chunked_response_unchunked() {
    let origin = Origin::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec())
    });
    let proxy = proxy_to(origin.addr, "");
    let resp = request(proxy.addr(), "GET / HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.text(), "abcde");
    let s = &origin.seen()[0];
    assert_eq!(
        s.header("host"),
        Some(origin.addr.to_string().as_str()),
        "Host added for HTTP/1.0"
    );
}

#[test]
fn keep_alive_pipelining_and_upstream_reuse() {
    let origin = Origin::start(|s| ok(&format!("reply to {}", s.target)));
    let proxy = proxy_to(origin.addr, "");
    let mut client = Client::connect(proxy.addr());
    // Three pipelined requests in one write, one with a body.
    client.send(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    for i in 1..=3 {
        let resp = client.read(false).unwrap();
        assert_eq!(resp.text(), format!("reply to /{i}"), "in order");
    }
    for i in 4..=20 {
        let resp = client
            .send(format!("GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .read(false)
            .unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(origin.seen().len(), 20);
    assert_eq!(origin.seen()[1].raw_body, b"abc");
    assert_eq!(
        origin.connections(),
        1,
        "20 requests over one pooled upstream connection"
    );

    // A second client reuses the same pooled connection.
    let resp = get(proxy.addr(), "/other");
    assert_eq!(resp.status, 200);
    assert_eq!(origin.connections(), 1);
}

#[test]
fn connection_close_and_http10_semantics() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy_to(origin.addr, "");
    let mut c = Client::connect(proxy.addr());
    let resp = c
        .send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.is_closed());

    let mut c = Client::connect(proxy.addr());
    let resp = c.send(b"GET / HTTP/1.0\r\n\r\n").read(false).unwrap();
    assert_eq!(resp.status, 200);
    assert!(c.is_closed(), "HTTP/1.0 without keep-alive closes");

    let mut c = Client::connect(proxy.addr());
    let resp = c
        .send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    let resp = c
        .send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!(resp.status, 200);
}

#[test]
fn head_204_304_have_no_body() {
    let origin = Origin::start(|s| match s.target.as_str() {
        "/204" => Reply::Raw(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        "/304" => Reply::Raw(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec()),
        _ => Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec()),
    });
    let proxy = proxy_to(origin.addr, "");
    let mut c = Client::connect(proxy.addr());
    let resp = c
        .send(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
        .read(true)
        .unwrap();
    assert_eq!(resp.header("content-length"), Some("100"));
    let resp = c
        .send(b"GET /204 HTTP/1.1\r\nHost: h\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!(resp.status, 204);
    let resp = c
        .send(b"GET /304 HTTP/1.1\r\nHost: h\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!((resp.status, resp.header("etag")), (304, Some("\"x\"")));
    // Still in step after three bodiless responses.
    let resp = c
        .send(b"HEAD /y HTTP/1.1\r\nHost: h\r\n\r\n")
        .read(true)
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(origin.connections(), 1);
}

#[test]
fn expect_100_continue_is_relayed_before_the_body() {
    // This origin sends 100 Continue as soon as it sees the head.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = read_head(&mut s);
        assert!(
            String::from_utf8_lossy(&buf)
                .to_lowercase()
                .contains("expect: 100-continue")
        );
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        let head_end = find(&buf, b"\r\n\r\n").unwrap() + 4;
        let mut body = buf.split_off(head_end);
        while body.len() < 5 {
            let mut b = [0u8; 16];
            let n = s.read(&mut b).unwrap();
            body.extend_from_slice(&b[..n]);
        }
        assert_eq!(body, b"hello");
        s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    });
    let proxy = proxy_to(addr, "");
    let mut c = Client::connect(proxy.addr());
    c.send(b"POST /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    // The client sends nothing more until it sees 100 Continue.
    let interim = c.read(false).unwrap();
    assert_eq!(interim.status, 100);
    let resp = c.send(b"hello").read(false).unwrap();
    assert_eq!(resp.status, 201);
    t.join().unwrap();
}

#[test]
fn upgrade_splices_bytes_both_ways() {
    let origin = Origin::start(|_| Reply::Upgrade);
    let proxy = proxy_to(origin.addr, "");
    let mut c = Client::connect(proxy.addr());
    let resp = c
        .send(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n")
        .read(false);
    // 101 has no body: read() returns after the head.
    let resp = resp.unwrap();
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("upgrade"), Some("websocket"));
    let s = &origin.seen()[0];
    assert_eq!(s.header("upgrade"), Some("websocket"));
    assert_eq!(s.header("connection"), Some("upgrade"));

    use std::io::{Read, Write};
    for msg in [&b"ping"[..], b"\x81\x05hello", &[0u8; 10000][..]] {
        c.s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    c.shutdown_write();
    assert!(c.is_closed(), "tunnel ends when the client closes");
}

#[test]
fn strip_prefix_and_set_host() {
    let origin = Origin::start(|s| ok(&s.target));
    let proxy = proxy(&format!(
        "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"o\"\nstrip_prefix = true\nset_host = \"inner.local\"\n",
        origin.addr
    ));
    assert_eq!(get(proxy.addr(), "/api/users?id=1").text(), "/users?id=1");
    assert_eq!(get(proxy.addr(), "/api?x").text(), "/?x");
    assert_eq!(get(proxy.addr(), "/api").text(), "/");
    assert_eq!(get(proxy.addr(), "/apix").status, 404);
    assert!(
        origin
            .seen()
            .iter()
            .all(|s| s.header("host") == Some("inner.local"))
    );
}

#[test]
fn large_bodies_stream_both_ways() {
    // 64 MiB each way in-process; the 1 GiB run with a memory bound is in tests/binary.rs.
    const N: u64 = 64 << 20;
    let origin = Origin::start(|_| Reply::Big(N));
    let proxy = proxy_to(origin.addr, "[limits]\nmax_body_bytes = 0\n");
    let mut c = Client::connect(proxy.addr());
    c.send(format!("POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {N}\r\n\r\n").as_bytes());
    let piece: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut s = c.s.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            for _ in 0..N / (1 << 20) {
                s.write_all(&piece).unwrap();
            }
        })
    };
    let resp = c.read(false).unwrap();
    writer.join().unwrap();
    assert_eq!(resp.body.len() as u64, N);
    let piece = big_piece();
    assert!(
        resp.body.chunks(piece.len()).all(|c| c == piece),
        "every byte arrived intact"
    );
    let s = &origin.seen()[0];
    assert_eq!(s.body_len, N);
    let per_piece: u64 = (0..1u64 << 20).map(|i| i % 251).sum();
    assert_eq!(
        s.body_sum,
        per_piece * (N >> 20),
        "every byte arrived intact"
    );
}

#[test]
fn retries_idempotent_request_once_when_pooled_connection_was_closed() {
    // Every connection answers its first request and drops the second unanswered.
    let origin = Origin::start(|s| {
        if s.nth_on_conn == 0 {
            ok("fresh")
        } else {
            Reply::Close
        }
    });
    let proxy = proxy_to(origin.addr, "");
    for _ in 0..3 {
        let resp = get(proxy.addr(), "/");
        assert_eq!(resp.status, 200, "retried on a new connection");
    }
    // A POST is not retried: it may have had effects.
    let resp = request(
        proxy.addr(),
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(resp.status, 502);
}

#[test]
fn pooled_connection_the_upstream_closed_a_while_ago_is_not_reused() {
    // Each connection answers once, as if it would keep alive, then closes.
    let origin = Origin::start(|_| {
        Reply::RawClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let proxy = proxy_to(origin.addr, "");
    assert_eq!(get(proxy.addr(), "/").status, 200);
    // The age that makes the pool look before reuse (under 200 ms it trusts
    // a connection and relies on the retry), not synchronisation.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(std::time::Duration::from_millis(300));
    let resp = request(
        proxy.addr(),
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(
        resp.status, 200,
        "a POST, never retried, found a live connection"
    );
    assert_eq!(origin.connections(), 2);
}

#[test]
fn early_upstream_response_reaches_the_client_while_the_body_is_unsent() {
    // This origin reads only the head, refuses the body and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        read_head(&mut s);
        s.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
        )
        .unwrap();
    });
    let proxy = proxy_to(addr, "[limits]\nmax_body_bytes = 0\n");
    let mut c = Client::connect(proxy.addr());
    c.send(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\nfirst bytes");
    let resp = c.read(false).expect("the origin's early answer");
    assert_eq!((resp.status, resp.text().as_str()), (413, "nope"));
    assert!(c.is_closed(), "the unread body ends the connection");
    t.join().unwrap();
}

#[test]
fn pooled_connections_retire_after_max_requests() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy(&format!(
        "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\nmax_requests = 2\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        origin.addr
    ));
    let mut c = Client::connect(proxy.addr());
    for _ in 0..5 {
        let resp = c
            .send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .read(false)
            .unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(origin.connections(), 3, "2 + 2 + 1 requests");
}

#[test]
fn pooled_connections_idle_too_long_are_not_reused() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy(&format!(
        "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\nidle_timeout = \"100ms\"\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        origin.addr
    ));
    assert_eq!(get(proxy.addr(), "/").status, 200);
    assert_eq!(get(proxy.addr(), "/").status, 200);
    assert_eq!(origin.connections(), 1, "reused while fresh");
    // Time passing is what is under test here, not a stand-in for a signal.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(get(proxy.addr(), "/").status, 200);
    assert_eq!(
        origin.connections(),
        2,
        "idle past idle_timeout: a new connection"
    );
}

#[test]
fn ipv4_and_ipv6_listeners_side_by_side() {
    let config = "[server]\nworkers = 2\npin_cores = false\n\
        [[listener]]\nname = \"v4\"\nbind = \"127.0.0.1:0\"\n\
        [[listener]]\nname = \"v6\"\nbind = \"[::1]:0\"\n\
        [[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = { status = 200, body = \"both\" }\n";
    let config = ringway::Config::parse(std::path::Path::new("t.toml"), config).unwrap();
    let server = ringway::Server::start(config).unwrap();
    let addrs = server.addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[0].1.is_ipv4() && addrs[1].1.is_ipv6(), "{addrs:?}");
    for (_, addr) in addrs {
        // Several connections, so both shards' sockets are likely used.
        for _ in 0..4 {
            assert_eq!(get(addr, "/").text(), "both");
        }
    }
}

/// At a steady 256 requests in flight the pool keeps what that needs, so
/// after the first round the origin sees almost no new connections (with
/// a fixed cap of 64 idle ones, each round closed and reopened ~192).
#[test]
fn steady_concurrency_above_the_idle_cap_does_not_churn_connections() {
    const CLIENTS: usize = 256;
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy_to(origin.addr, "");
    let addr = proxy.addr();
    let round = |requests: usize| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    for _ in 0..requests {
                        // Each request starts together with the others: 256 in flight.
                        barrier.wait();
                        let resp = c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").read(false);
                        assert_eq!(resp.map(|r| r.status), Some(200));
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
    };
    // Warm up until the pool has seen the whole concurrency: how much of
    // it one round reaches depends on how threads are scheduled.
    round(6);
    let warm = origin.connections();
    round(10);
    let new = origin.connections() - warm;
    assert!(
        new <= CLIENTS / 8,
        "{new} new upstream connections after warm-up ({warm} then)"
    );
}
