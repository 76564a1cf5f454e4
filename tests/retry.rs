//! Retries with response replay, over real loopback sockets: an origin
//! that fails the first time, the proxy in-process, a raw client. A
//! response is held until it is known good, so the client sees one
//! response whole, and the origin is asked exactly as often as needed.
// The origin's handlers count their calls with atomics; no test sleeps to
// wait for anything.
#![allow(clippy::disallowed_types)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;

fn status(code: u16, body: &str) -> Reply {
    Reply::Raw(
        format!(
            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A proxy with one upstream at `origin` and one route to it, with the
/// route's and the upstream's extra lines.
fn proxy_with(origin: std::net::SocketAddr, upstream: &str, route: &str) -> ringway::Server {
    proxy(&format!(
        "[timeouts]\nupstream_response_header = \"300ms\"\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{origin}\"]\n{upstream}\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n{route}\n"
    ))
}

/// An origin whose `n`th request (from 0) is answered by `answer(n)`.
fn origin(answer: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Origin {
    let calls = Arc::new(AtomicUsize::new(0));
    Origin::start(move |_| answer(calls.fetch_add(1, Ordering::SeqCst)))
}

#[test]
fn a_good_response_reaches_the_origin_once() {
    let o = origin(|_| status(200, "fine"));
    let p = proxy_with(o.addr, "", "retry = { attempts = 3 }");
    let r = get(p.addr(), "/x");
    assert_eq!((r.status, r.text().as_str()), (200, "fine"));
    assert_eq!(o.seen().len(), 1);
}

#[test]
fn a_503_is_retried_and_the_client_sees_only_the_200() {
    let o = origin(|n| match n {
        0 => status(503, "first: busy"),
        _ => status(200, "second: fine"),
    });
    let p = proxy_with(o.addr, "", "retry = { attempts = 3, backoff = \"1ms\" }");
    let mut c = Client::connect(p.addr());
    let r = c
        .send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "second: fine"));
    assert_eq!(o.seen().len(), 2);
    // Nothing of the 503 reached the client: the next response on the
    // connection is the next request's.
    let r = c
        .send(b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "second: fine"));
    assert_eq!(o.seen()[2].target, "/y");
}

#[test]
fn the_last_attempt_is_streamed_as_it_comes() {
    let o = origin(|_| status(503, "always busy"));
    let p = proxy_with(o.addr, "", "retry = { attempts = 3, backoff = \"1ms\" }");
    let r = get(p.addr(), "/x");
    assert_eq!((r.status, r.text().as_str()), (503, "always busy"));
    assert_eq!(o.seen().len(), 3);
}

#[test]
fn a_response_over_the_buffer_limit_streams_and_is_not_retried() {
    const SIZE: u64 = 2 << 20;
    let o = origin(|_| Reply::Big(SIZE));
    let p = proxy_with(
        o.addr,
        "",
        "retry = { attempts = 3, buffer_limit = \"1MiB\" }",
    );
    let r = get(p.addr(), "/big");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, SIZE);
    let piece = big_piece();
    assert!(
        r.body.chunks(piece.len()).all(|c| c == &piece[..c.len()]),
        "the body arrived intact, in order"
    );
    assert_eq!(o.seen().len(), 1);
}

#[test]
fn a_response_cut_while_held_is_retried_whole() {
    let o = origin(|n| match n {
        // Promises 100 bytes, sends 10, closes.
        0 => Reply::RawClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec()),
        _ => status(200, "whole"),
    });
    let p = proxy_with(o.addr, "", "retry = { attempts = 2 }");
    let r = get(p.addr(), "/x");
    assert_eq!((r.status, r.text().as_str()), (200, "whole"));
    assert_eq!(o.seen().len(), 2);
}

#[test]
fn a_post_is_not_retried_unless_the_route_says_so() {
    let o = origin(|n| match n {
        0 => status(503, "busy"),
        _ => status(200, "done"),
    });
    let post = "POST /orders HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
    let p = proxy_with(o.addr, "", "retry = { attempts = 3 }");
    let r = request(p.addr(), post);
    assert_eq!(r.status, 503);
    assert_eq!(o.seen().len(), 1);
    p.shutdown();

    let o = origin(|n| match n {
        0 => status(503, "busy"),
        _ => status(200, "done"),
    });
    let p = proxy_with(
        o.addr,
        "",
        "retry = { attempts = 3 }\nretry_non_idempotent = true",
    );
    let r = request(p.addr(), post);
    assert_eq!((r.status, r.text().as_str()), (200, "done"));
    let seen = o.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.raw_body == b"hello"),
        "the body both times"
    );
}

#[test]
fn a_timeout_is_retried_when_the_route_says_so() {
    let o = origin(|n| match n {
        0 => Reply::Hang(Duration::from_secs(3)),
        _ => status(200, "quick"),
    });
    let p = proxy_with(o.addr, "", "retry = { attempts = 2, on = [\"timeout\"] }");
    let started = Instant::now();
    let r = get(p.addr(), "/x");
    assert_eq!((r.status, r.text().as_str()), (200, "quick"));
    // The first attempt's 300 ms head timeout, then the second: well before
    // the hung origin would have closed.
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(o.seen().len(), 2);
}

#[test]
fn the_retry_budget_bounds_retries_in_an_outage() {
    let o = origin(|_| status(503, "down"));
    // No share of requests, and a floor of 1 a second: over the two
    // seconds counted, 2 retries at most; a third second may add 1.
    let p = proxy_with(
        o.addr,
        "retry_budget = { percent = 0, min_per_sec = 1 }",
        "retry = { attempts = 2, backoff = \"0ms\" }",
    );
    let mut c = Client::connect(p.addr());
    for _ in 0..30 {
        let r = c
            .send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            .read(false)
            .unwrap();
        assert_eq!(r.status, 503);
    }
    let asked = o.seen().len();
    assert!(
        (31..=33).contains(&asked),
        "30 requests and at most 3 retries reached the origin: {asked}"
    );
}

#[test]
fn without_retries_ejection_stops_the_failures_at_its_threshold() {
    let good = origin(|_| status(200, "up"));
    let dead = Origin::start(|_| Reply::Close);
    let p = proxy(&format!(
        "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\", \"{}\"]\nretry = false\n\
         outlier_detection = {{ consecutive_failures = 3, eject_for = \"60s\" }}\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        good.addr, dead.addr
    ));
    let mut failed = 0;
    for _ in 0..100 {
        match get(p.addr(), "/x").status {
            200 => {}
            502 => failed += 1,
            other => panic!("status {other}"),
        }
    }
    assert_eq!(failed, 3, "the threshold's failures, then none");
    assert_eq!(dead.seen().len(), 3, "nothing sent to it once ejected");
    assert_eq!(good.seen().len(), 97);
}
