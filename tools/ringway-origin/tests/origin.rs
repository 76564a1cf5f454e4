//! The built origin over loopback: every knob, and keep-alive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Origin(Child, String);

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> Origin {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringway-origin"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    Origin(child, addr)
}

/// Sends `req` and reads until the response is complete (by its own framing, simply).
fn exchange(s: &mut TcpStream, req: &str, body_end: &[u8]) -> String {
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 65536];
    while !got.ends_with(body_end) {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn sizes_status_chunked_echo_delay_on_one_connection() {
    let o = start(&["--size", "5"]);
    let mut s = TcpStream::connect(&o.1).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    let r = exchange(&mut s, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"abcde");
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde"),
        "{r}"
    );

    let r = exchange(
        &mut s,
        "GET /?size=40&status=503 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"abcd",
    );
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(
        r.ends_with("\r\n\r\nabcdefghijklmnopqrstuvwxyz0123456789abcd"),
        "{r}"
    );

    let r = exchange(
        &mut s,
        "GET /?size=40&chunked=1 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"0\r\n\r\n",
    );
    assert!(r.contains("Transfer-Encoding: chunked\r\n\r\n28\r\nabcdefghijklmnopqrstuvwxyz0123456789abcd\r\n0\r\n\r\n"), "{r}");

    let r = exchange(
        &mut s,
        "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhey\r\n0\r\n\r\n",
        b"hey",
    );
    assert!(r.contains("Content-Length: 3\r\n\r\nhey"), "{r}");

    let started = Instant::now();
    exchange(
        &mut s,
        "GET /?delay=200 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"abcde",
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    let r = exchange(
        &mut s,
        "GET /?size=3000000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"",
    );
    let _ = r;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
}

#[test]
fn large_body_is_exact() {
    let o = start(&[]);
    let mut s = TcpStream::connect(&o.1).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /?size=3000000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &all[head_end..];
    assert_eq!(body.len(), 3_000_000);
    let pattern = b"abcdefghijklmnopqrstuvwxyz0123456789";
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern[(i % (1 << 20)) % 36])
    );
}
