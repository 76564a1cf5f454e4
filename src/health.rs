//! Active health checks (`upstream.health_check`), off the shards.
//!
//! One thread, `ringway-health`, owned by the control thread, keeps each
//! checked endpoint's state: healthy or not, and its successes or failures
//! in a row. Each probe runs on a short-lived thread of its own with plain
//! blocking sockets and a deadline (`timeout`), so every endpoint is probed
//! at once and a silent one delays no other; an endpoint has at most one
//! probe out at a time. A probe is `GET path HTTP/1.1` on a new connection,
//! and succeeds if a status line within `expect_status` comes back in time.
//!
//! When an endpoint's state flips, the verdict goes to the control thread
//! (`Command::Health`), which sends it to every shard's mailbox
//! (`ToShard::Health`); the shard marks the endpoint, and its pools skip it.
//! Nothing on the request path waits on this thread or takes a lock.
//!
//! Every 10 s (`REFRESH`) every checked endpoint's state is sent again, so
//! a shard that missed a verdict (its mailbox full for a second) is put
//! right.
//!
//! Endpoints start healthy: a proxy that starts, or an endpoint a reload
//! adds, takes traffic before the first probe has answered, and is taken out
//! after `unhealthy_after` failed probes. State is kept by upstream name and
//! endpoint address, so a reload that keeps both keeps it; after a reload
//! every endpoint's state goes to the shards again, for their new pools.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::config::{HealthCheck, Upstream};

/// A health check's verdict on one endpoint of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    pub upstream: String,
    pub addr: SocketAddr,
    pub healthy: bool,
}

/// The control thread's handle on the checker thread.
pub struct HealthChecker {
    tx: SyncSender<Event>,
    thread: Option<JoinHandle<()>>,
}

enum Event {
    /// The upstreams of a new config.
    Config(Vec<Upstream>),
    Probed {
        upstream: String,
        addr: SocketAddr,
        result: Result<(), String>,
    },
    Stop,
}

/// Events that may wait for the checker: at most one probe result per
/// endpoint is out at a time, so this is only reached with more endpoints
/// than this, and then a probe thread waits its turn to report.
const EVENTS: usize = 1024;

/// The longest the checker sleeps between looks at what is due.
const TICK: Duration = Duration::from_secs(1);

/// How often every checked endpoint's state is sent again: a verdict a
/// shard missed (its mailbox full for a second) is put right by then.
const REFRESH: Duration = Duration::from_secs(10);

impl HealthChecker {
    /// Starts the checker on `upstreams`; `report` gets each batch of
    /// verdicts, on the checker thread.
    pub fn start(
        upstreams: &[Upstream],
        report: impl Fn(Vec<EndpointHealth>) + Send + 'static,
    ) -> std::io::Result<HealthChecker> {
        let (tx, rx) = mpsc::sync_channel(EVENTS);
        let mut state = Checker {
            targets: Vec::new(),
            refreshed: Instant::now(),
            tx: tx.clone(),
        };
        state.configure(upstreams);
        let thread = std::thread::Builder::new()
            .name("ringway-health".into())
            .spawn(move || state.run(&rx, &report))?;
        Ok(HealthChecker {
            tx,
            thread: Some(thread),
        })
    }

    /// The upstreams after a reload: checks start, stop or change; the
    /// state of every endpoint is reported again.
    pub fn reconfigure(&self, upstreams: &[Upstream]) {
        if self.post(Event::Config(upstreams.to_vec())).is_err() {
            log::error!("health checks: the checker does not take the new config");
        }
    }

    /// Stops the checker; probes still out end by their own deadline. A
    /// checker that cannot be told (its queue full for a second) is left
    /// to end with the process rather than waited for.
    pub fn stop(mut self) {
        let told = self.post(Event::Stop).is_ok();
        if let Some(t) = self.thread.take().filter(|_| told) {
            let _ = t.join();
        }
    }

    /// Sends, retrying for up to a second while the queue is full.
    fn post(&self, mut event: Event) -> Result<(), ()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.tx.try_send(event) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    event = back;
                    // The control thread's own back-off; no shard waits on it.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return Err(()),
            }
        }
    }
}

/// One checked endpoint.
struct Target {
    upstream: String,
    addr: SocketAddr,
    check: HealthCheck,
    /// A TLS upstream is probed over TLS: its settings, and the name to
    /// verify for this endpoint.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    healthy: bool,
    /// Probes in a row that agreed with each other, against `healthy`.
    streak: u32,
    next: Instant,
    probing: bool,
}

struct Checker {
    targets: Vec<Target>,
    /// When every checked endpoint's state was last sent (`REFRESH`).
    refreshed: Instant,
    tx: SyncSender<Event>,
}

impl Checker {
    fn run(&mut self, rx: &Receiver<Event>, report: &dyn Fn(Vec<EndpointHealth>)) {
        loop {
            let now = Instant::now();
            for t in self
                .targets
                .iter_mut()
                .filter(|t| !t.probing && t.next <= now)
            {
                t.next = now + t.check.interval;
                t.probing = spawn_probe(t, self.tx.clone());
            }
            let wake = self
                .targets
                .iter()
                .filter(|t| !t.probing)
                .map(|t| t.next)
                .min()
                .map_or(TICK, |next| next.saturating_duration_since(now).min(TICK));
            if !self.targets.is_empty() && self.refreshed.elapsed() >= REFRESH {
                self.refreshed = Instant::now();
                let checked = self.targets.iter().map(|t| EndpointHealth {
                    upstream: t.upstream.clone(),
                    addr: t.addr,
                    healthy: t.healthy,
                });
                report(checked.collect());
            }
            let first = match rx.recv_timeout(wake) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // What has come in together is reported together: one message
            // per shard for many endpoints that fail at once.
            let mut verdicts = Vec::new();
            for event in std::iter::once(first).chain(rx.try_iter()) {
                match event {
                    Event::Stop => return,
                    Event::Config(upstreams) => {
                        self.configure(&upstreams);
                        verdicts = every_endpoint(&upstreams, &self.targets);
                    }
                    Event::Probed {
                        upstream,
                        addr,
                        result,
                    } => {
                        if let Some(v) = self.probed(&upstream, addr, result) {
                            verdicts.retain(|o: &EndpointHealth| {
                                o.upstream != v.upstream || o.addr != v.addr
                            });
                            verdicts.push(v);
                        }
                    }
                }
            }
            if !verdicts.is_empty() {
                report(verdicts);
            }
        }
    }

    /// The targets of `upstreams`; those of the same upstream name and
    /// address keep their state.
    fn configure(&mut self, upstreams: &[Upstream]) {
        let now = Instant::now();
        let mut old = std::mem::take(&mut self.targets);
        for u in upstreams {
            let Some(check) = &u.health_check else {
                continue;
            };
            for (i, e) in u.endpoints.iter().enumerate() {
                let tls = u
                    .tls
                    .as_ref()
                    .map(|t| (t.client.clone(), t.names[i].clone()));
                let kept = old
                    .iter()
                    .position(|t| t.upstream == u.name && t.addr == e.addr)
                    .map(|i| old.swap_remove(i));
                let target = match kept {
                    Some(mut t) => {
                        t.next = t.next.min(now + check.interval);
                        t.check = check.clone();
                        t.tls = tls;
                        t
                    }
                    None => Target {
                        upstream: u.name.clone(),
                        addr: e.addr,
                        check: check.clone(),
                        tls,
                        healthy: true,
                        streak: 0,
                        next: now,
                        probing: false,
                    },
                };
                self.targets.push(target);
            }
        }
    }

    /// Counts a probe's result; the verdict if the endpoint's state flips.
    fn probed(
        &mut self,
        upstream: &str,
        addr: SocketAddr,
        result: Result<(), String>,
    ) -> Option<EndpointHealth> {
        let t = self
            .targets
            .iter_mut()
            .find(|t| t.upstream == upstream && t.addr == addr)?;
        t.probing = false;
        let ok = result.is_ok();
        if ok == t.healthy {
            t.streak = 0;
            return None;
        }
        t.streak += 1;
        let needed = if ok {
            t.check.healthy_after
        } else {
            t.check.unhealthy_after
        };
        if t.streak < needed {
            return None;
        }
        t.healthy = ok;
        t.streak = 0;
        match result {
            Ok(()) => log::info!(
                "upstream '{upstream}': endpoint {addr} healthy after {needed} good health checks"
            ),
            Err(why) => log::warn!(
                "upstream '{upstream}': endpoint {addr} unhealthy after {needed} failed health checks (last: {why})"
            ),
        }
        Some(EndpointHealth {
            upstream: upstream.to_string(),
            addr,
            healthy: ok,
        })
    }
}

/// Every endpoint of `upstreams` with its state: checked ones as the
/// checker has them, the others healthy.
fn every_endpoint(upstreams: &[Upstream], targets: &[Target]) -> Vec<EndpointHealth> {
    let mut all = Vec::new();
    for u in upstreams {
        for e in &u.endpoints {
            let t = targets
                .iter()
                .find(|t| t.upstream == u.name && t.addr == e.addr);
            all.push(EndpointHealth {
                upstream: u.name.clone(),
                addr: e.addr,
                healthy: t.is_none_or(|t| t.healthy),
            });
        }
    }
    all
}

/// Starts a probe of `t` on a thread of its own; false if none could start
/// (it is tried again at the next interval).
fn spawn_probe(t: &Target, tx: SyncSender<Event>) -> bool {
    let (upstream, addr, check) = (t.upstream.clone(), t.addr, t.check.clone());
    let tls = t.tls.clone();
    let spawned = std::thread::Builder::new()
        .name("ringway-probe".into())
        .spawn(move || {
            let result = probe(addr, &check, tls);
            let _ = tx.send(Event::Probed {
                upstream,
                addr,
                result,
            });
        });
    if let Err(e) = &spawned {
        log::warn!("health check of {}: cannot start a probe: {e}", t.addr);
    }
    spawned.is_ok()
}

/// One probe: connect (and the TLS handshake with a TLS upstream), send
/// the request, read the status line, all within `check.timeout`.
fn probe(
    addr: SocketAddr,
    check: &HealthCheck,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
) -> Result<(), String> {
    let deadline = Instant::now() + check.timeout;
    let tcp = TcpStream::connect_timeout(&addr, check.timeout).map_err(|e| e.to_string())?;
    let tcp = Bounded { tcp, deadline };
    match tls {
        None => exchange(&addr.to_string(), check, tcp),
        Some((config, name)) => {
            let host = host_of(&name, addr.port());
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            exchange(&host, check, rustls::StreamOwned::new(conn, tcp))
        }
    }
}

/// The Host a TLS probe sends: the name it sends as SNI and verifies (an
/// upstream that serves several names answers for that one), with the
/// port unless it is https's own.
fn host_of(name: &ServerName<'_>, port: u16) -> String {
    let host = match name {
        ServerName::IpAddress(rustls::pki_types::IpAddr::V6(_)) => format!("[{}]", name.to_str()),
        _ => name.to_str().into_owned(),
    };
    match port {
        443 => host,
        port => format!("{host}:{port}"),
    }
}

/// A probe's socket, held to the probe's deadline: every read and write
/// gets the time left as its socket timeout, and none starts once it is
/// gone. Set once, a timeout bounds each system call, not the probe: the
/// TLS handshake reads many times inside rustls, and a peer that drips a
/// byte at a time answers each read in time.
struct Bounded {
    tcp: TcpStream,
    deadline: Instant,
}

impl Bounded {
    fn left(&self) -> std::io::Result<Duration> {
        let d = self.deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            return Err(timed_out());
        }
        Ok(d)
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")
}

/// A socket timeout shows as EAGAIN; the probe says what it was.
fn expired(e: std::io::Error) -> std::io::Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock => timed_out(),
        _ => e,
    }
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf).map_err(expired)
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf).map_err(expired)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Sends the request and reads the status line over `s` (TCP, or TLS over
/// it, where the handshake happens with the first write).
fn exchange(host: &str, check: &HealthCheck, mut s: impl Read + Write) -> Result<(), String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringway-health-check\r\nConnection: close\r\n\r\n",
        check.path
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    s.flush().map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while !head[..len].contains(&b'\n') && len < head.len() {
        match s.read(&mut head[len..]) {
            Ok(0) => return Err("closed before a status line".into()),
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let status = status_of(&head[..len]).ok_or("no HTTP status line")?;
    let (lo, hi) = check.expect_status;
    if (lo..=hi).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// The status of `HTTP/1.x NNN ...`.
fn status_of(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy_after: u32, unhealthy_after: u32) -> HealthCheck {
        HealthCheck {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after,
            unhealthy_after,
            expect_status: (200, 299),
        }
    }

    fn checker(hc: HealthCheck) -> (Checker, SocketAddr) {
        let (tx, _rx) = mpsc::sync_channel(1);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut c = Checker {
            targets: Vec::new(),
            refreshed: Instant::now(),
            tx,
        };
        let cfg = crate::Config::parse(
            std::path::Path::new("t.toml"),
            &format!("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nendpoints = [\"{addr}\"]\n"),
        )
        .unwrap();
        let mut up = cfg.upstreams[0].clone();
        up.health_check = Some(hc);
        c.configure(&[up]);
        (c, addr)
    }

    #[test]
    fn flips_after_enough_in_a_row() {
        let (mut c, addr) = checker(check(2, 3));
        let fail = || Err("refused".to_string());
        assert!(c.probed("u", addr, fail()).is_none());
        assert!(c.probed("u", addr, fail()).is_none());
        // A success in between starts the count again.
        assert!(c.probed("u", addr, Ok(())).is_none());
        assert!(c.probed("u", addr, fail()).is_none());
        assert!(c.probed("u", addr, fail()).is_none());
        let down = c.probed("u", addr, fail()).unwrap();
        assert!(!down.healthy);
        assert!(c.probed("u", addr, Ok(())).is_none());
        assert!(c.probed("u", addr, Ok(())).unwrap().healthy);
        // Another upstream's endpoint of the same address is not this one.
        assert!(c.probed("v", addr, fail()).is_none());
    }

    /// An upstream that accepts, then sends a byte every 200 ms: the start
    /// of a TLS record of 16 KiB, or of a status line, that never ends.
    /// Each read is answered in time; the probe still ends at its deadline.
    #[test]
    fn a_dripping_upstream_holds_a_probe_no_longer_than_its_timeout() {
        let insecure = crate::certs::client_config(rustls::RootCertStore::empty(), true).unwrap();
        let name = ServerName::try_from("origin.test").unwrap();
        for tls in [None, Some((insecure, name))] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let over_tls = tls.is_some();
            let drip = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                s.set_nodelay(true).unwrap();
                let start: &[u8] = match over_tls {
                    true => &[22, 3, 3, 0x40, 0],
                    false => b"HTTP/1.1 200",
                };
                // 5 s at most; it ends sooner when the probe hangs up.
                for b in start.iter().chain(std::iter::repeat(&b' ')).take(25) {
                    if s.write_all(std::slice::from_ref(b)).is_err() {
                        return;
                    }
                    std::thread::park_timeout(Duration::from_millis(200));
                }
            });
            let hc = check(1, 1);
            let began = Instant::now();
            let result = probe(addr, &hc, tls);
            let took = began.elapsed();
            assert_eq!(result, Err("timed out".to_string()), "tls: {over_tls}");
            assert!(
                took < hc.timeout + Duration::from_millis(500),
                "tls: {over_tls}: the probe took {took:?}"
            );
            drip.join().unwrap();
        }
    }

    #[test]
    fn a_tls_probe_sends_the_name_it_verifies_as_host() {
        let name = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        assert_eq!(host_of(&name("api.internal"), 443), "api.internal");
        assert_eq!(host_of(&name("api.internal"), 8443), "api.internal:8443");
        assert_eq!(host_of(&name("10.0.0.7"), 8443), "10.0.0.7:8443");
        assert_eq!(host_of(&name("::1"), 443), "[::1]");
        assert_eq!(host_of(&name("::1"), 8443), "[::1]:8443");
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(status_of(b"HTTP/2 200"), None);
        assert_eq!(status_of(b"HTTP/1.1 20"), None);
    }
}
