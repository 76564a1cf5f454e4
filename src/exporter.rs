//! The Prometheus endpoint: `[metrics] listen` is a plain HTTP/1.1
//! listener of its own, served off the shards. A scrape asks the control
//! thread, which sums the shards' reports (see `metrics`). The shards'
//! public listeners never serve it: an edge proxy's counters and route
//! names are for the operator, not for every client on the internet.
//!
//! One thread accepts; each scrape is served on a thread of its own, at
//! most `MAX_SCRAPERS` at a time, with 5 s to send its head and take the
//! reply; the connection closes after one response.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control::{Command, ControlHandle};

const MAX_SCRAPERS: usize = 8;
const CLIENT_IO: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8 * 1024;

pub struct Exporter {
    addr: SocketAddr,
    closing: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Exporter {
    /// Binds `addr` now (a failure stops the start); serves once `control` runs.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
        TcpListener::bind(addr).with_context(|| format!("metrics.listen: cannot bind {addr}"))
    }

    pub fn serve(
        listener: TcpListener,
        path: String,
        control: ControlHandle,
    ) -> std::io::Result<Exporter> {
        let addr = listener.local_addr()?;
        log::info!("metrics on http://{addr}{path}");
        let closing = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let flag = closing.clone();
        let path = Arc::new(path);
        let thread = std::thread::Builder::new()
            .name("ringway-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if busy.fetch_add(1, Ordering::AcqRel) >= MAX_SCRAPERS {
                        busy.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                    let (control, busy, path) = (control.clone(), busy.clone(), path.clone());
                    let spawned = std::thread::Builder::new()
                        .name("ringway-scrape".into())
                        .spawn(move || {
                            scrape(stream, &path, &control);
                            busy.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        log::warn!("metrics: cannot start a thread for a scrape");
                    }
                }
            })?;
        Ok(Exporter {
            addr,
            closing,
            thread,
        })
    }

    pub fn close(self) {
        self.closing.store(true, Ordering::Release);
        // Wakes the blocked accept, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        let _ = self.thread.join();
    }
}

fn scrape(mut stream: TcpStream, path: &str, control: &ControlHandle) {
    let _ = stream.set_write_timeout(Some(CLIENT_IO));
    let reply = match read_head(&stream) {
        Ok(head) => answer(&head, path, control),
        Err(status) => response(status, "text/plain", b"bad request\n", false),
    };
    let _ = stream.write_all(&reply);
}

/// The head of one request, within `CLIENT_IO` in all; `Err(status)` otherwise.
fn read_head(mut stream: &TcpStream) -> Result<Vec<u8>, u16> {
    let deadline = Instant::now() + CLIENT_IO;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(408);
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => return Err(400),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(408),
        }
        if head.len() > MAX_HEAD {
            return Err(431);
        }
    }
    Ok(head)
}

fn answer(head: &[u8], path: &str, control: &ControlHandle) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let target_path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if target_path != path.as_bytes() {
        return response(404, "text/plain", b"not found\n", method == b"HEAD");
    }
    if method != b"GET" && method != b"HEAD" {
        return response(405, "text/plain", b"GET or HEAD\n", false);
    }
    match control.ask(Command::Metrics, Duration::from_secs(10)) {
        Ok(reply) => {
            let text = reply["text"].as_str().unwrap_or_default();
            response(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text.as_bytes(),
                method == b"HEAD",
            )
        }
        Err(e) => response(503, "text/plain", format!("{e}\n").as_bytes(), false),
    }
}

fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = crate::http1::encode::reason(status);
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}
