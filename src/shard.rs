//! A shard: one thread, pinned to a core, running its own monoio runtime
//! (io_uring, or epoll where io_uring is missing). It owns its listening
//! sockets (SO_REUSEPORT), buffer slab, upstream pools and counters; the
//! request path touches nothing another thread can see.
//!
//! The control thread talks to a shard through its `Mailbox` (see
//! `mailbox`): an idle shard sleeps in the kernel until a message or a
//! connection arrives.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use monoio::io::{CancelHandle, Canceller};
use monoio::net::{TcpListener, TcpStream};

use crate::accesslog::ShardLog;
use crate::config::Config;
use crate::conn::{self, After, IdleConn, Side, Woken};
use crate::lease::{Mesh, Msg};
use crate::mailbox::{FromShard, Mailbox, ShardStats, ToShard};
use crate::metrics::{self, Report, Reset};
use crate::snapshot::Snapshot;
use crate::state::{Handshakes, ShardState};

pub struct ShardSpec {
    pub id: usize,
    pub core: Option<core_affinity::CoreId>,
    pub snapshot: Arc<Snapshot>,
    /// Each listener by name, bound for this shard.
    pub listeners: Vec<(String, std::net::TcpListener)>,
    pub log: Option<ShardLog>,
    pub mailbox: Arc<Mailbox>,
    /// Connections are steered to shards by client address.
    pub steered: bool,
    /// The queues between the shards, for rate-limit leases (none with one shard).
    pub mesh: Option<Arc<Mesh>>,
}

type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// The event loop a shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    /// io_uring where the kernel offers it, else epoll. `RINGWAY_DRIVER=epoll`
    /// forces epoll (to compare the two, or to rule io_uring out).
    pub fn pick() -> Driver {
        if std::env::var("RINGWAY_DRIVER").is_ok_and(|v| v == "epoll")
            || !monoio::utils::detect_uring()
        {
            Driver::Epoll
        } else {
            Driver::IoUring
        }
    }
}

/// How a shard's io_uring is set up. A shard owns its ring alone: every
/// submission and every wait is on its own thread, so the kernel need not
/// interrupt it to post completions (`COOP_TASKRUN`), and can even defer
/// that work until the shard next waits (`DEFER_TASKRUN`, which requires
/// `SINGLE_ISSUER`). `RINGWAY_URING=plain|coop|defer` picks one, to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingSetup {
    Plain,
    /// `COOP_TASKRUN` + `TASKRUN_FLAG` (Linux 5.19).
    Coop,
    /// `SINGLE_ISSUER` + `DEFER_TASKRUN` (Linux 6.1).
    Defer,
}

impl RingSetup {
    pub fn pick() -> RingSetup {
        match std::env::var("RINGWAY_URING").as_deref() {
            Ok("plain") => RingSetup::Plain,
            Ok("defer") => RingSetup::Defer,
            _ => RingSetup::Coop,
        }
    }

    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        match self {
            RingSetup::Plain => {}
            RingSetup::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            RingSetup::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
        }
        b
    }
}

/// Runs a shard until it is told to drain; called on the shard's own thread.
pub fn run(spec: ShardSpec) -> std::io::Result<()> {
    if let Some(core) = spec.core
        && !core_affinity::set_for_current(core)
    {
        log::warn!("shard {}: could not pin to core {}", spec.id, core.id);
    }
    let uring = |setup: RingSetup| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .uring_builder(setup.builder())
            .enable_timer()
            .build()
    };
    let (mut rt, driver) = match Driver::pick() {
        Driver::IoUring => {
            let setup = RingSetup::pick();
            let rt = match uring(setup) {
                Ok(rt) => rt,
                // An older kernel refuses flags it does not know.
                Err(e) if setup != RingSetup::Plain => {
                    log::warn!(
                        "shard {}: io_uring {setup:?} set-up refused ({e}); plain",
                        spec.id
                    );
                    uring(RingSetup::Plain)?
                }
                Err(e) => return Err(e),
            };
            log::info!("shard {}: io_uring driver ({setup:?})", spec.id);
            (Runtime::from(rt), format!("io_uring ({setup:?})"))
        }
        Driver::Epoll => {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()?;
            log::info!("shard {}: epoll driver", spec.id);
            (Runtime::from(rt), "epoll".to_string())
        }
    };
    rt.block_on(serve(spec, driver))
}

async fn serve(spec: ShardSpec, driver: String) -> std::io::Result<()> {
    let shard = Rc::new(ShardState::new(
        spec.id,
        driver,
        spec.snapshot,
        spec.log,
        spec.steered,
        spec.mesh.clone(),
    ));
    if let Some(mesh) = spec.mesh {
        monoio::spawn(leases(shard.clone(), mesh));
    }
    monoio::spawn(housekeeping(shard.clone()));
    let mut listeners = Listeners::default();
    for (name, l) in spec.listeners {
        listeners.start(&shard, name, l).await?;
    }
    let mailbox = spec.mailbox;
    loop {
        match mailbox.recv().await {
            ToShard::Reload {
                snapshot,
                generation,
                listen,
                unlisten,
            } => {
                shard.reload(snapshot, generation);
                listeners.refresh(&shard.current().config);
                for name in unlisten {
                    listeners.remove(&name).await;
                }
                // A drained shard accepts nothing, whatever the new config
                // adds: the sockets close here.
                for (name, l) in listen.into_iter().filter(|_| !shard.draining()) {
                    if let Err(e) = listeners.start(&shard, name.clone(), l).await {
                        log::error!("shard {}: listener '{name}': {e}", shard.id);
                    }
                }
                mailbox.answer(FromShard::Reloaded(generation));
            }
            ToShard::Stats(n) => mailbox.answer(FromShard::Stats(n, stats(&shard))),
            ToShard::RateLimitTop { n, top } => {
                mailbox.answer(FromShard::RateLimitTop(n, shard.limiter.top(top)));
            }
            ToShard::Metrics { n, latency, reset } => {
                let report = metrics_report(&shard, latency, &reset);
                mailbox.answer(FromShard::Metrics(n, Box::new(report)));
            }
            ToShard::Health(verdicts) => shard.current().set_health(&verdicts),
            ToShard::Drain => drain(&shard, &mut listeners).await,
            ToShard::Stop(limit) => {
                drain(&shard, &mut listeners).await;
                let all_closed = poll_fn(|cx| {
                    if shard.conns() == 0 {
                        Poll::Ready(())
                    } else {
                        shard.drained.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                });
                if monoio::time::timeout(limit, all_closed).await.is_err() {
                    log::warn!(
                        "shard {}: drain timeout, closing {} connections",
                        shard.id,
                        shard.conns()
                    );
                }
                if let Some(log) = &shard.log {
                    log.flush();
                }
                return Ok(());
            }
        }
    }
}

/// Answers other shards' asks for tokens of the keys this one owns, and
/// takes their answers to its own (see `lease`).
async fn leases(shard: Rc<ShardState>, mesh: Arc<Mesh>) {
    let mut next = 0;
    loop {
        let (from, msg) = mesh.recv(shard.id, &mut next).await;
        let now = crate::ratelimit::nanos(Instant::now());
        match msg {
            Msg::Ask { key, rate, want } => {
                let (tokens, wait) = shard.limiter.grant(key.get(), rate, want, now);
                // A full queue loses the tokens: the asker decides alone
                // once its wait is up.
                mesh.send(shard.id, from, Msg::Grant { key, tokens, wait });
            }
            Msg::Grant { key, tokens, wait } => {
                shard.limiter.granted(key.get(), tokens, wait, now);
            }
        }
    }
}

/// Stops accepting everywhere and closes connections waiting for a next
/// request; those in the middle of one close after it.
async fn drain(shard: &ShardState, listeners: &mut Listeners) {
    shard.draining.set(true);
    shard.cancel_waits();
    listeners.stop_all().await;
}

fn stats(shard: &ShardState) -> ShardStats {
    ShardStats {
        shard: shard.id,
        generation: shard.current().number,
        driver: shard.driver.clone(),
        connections: shard.conns(),
        requests: shard.requests.get(),
        client_aborts: shard.client_aborts.get(),
        buffers_leased: shard.slab.leased(),
        buffers_max: shard.slab.max(),
        draining: shard.draining(),
    }
}

fn metrics_report(shard: &ShardState, latency: bool, reset: &Reset) -> Report {
    let current = shard.current();
    let upstreams = current.pools.iter().map(|p| &*p.metrics);
    let routes = current.route_metrics.iter().map(|r| &**r);
    Report {
        accepted: shard.accepted.get(),
        connections: shard.conns() as u64,
        client_aborts: shard.client_aborts.get(),
        buffers_leased: shard.slab.leased() as u64,
        buffers_max: shard.slab.max() as u64,
        log_dropped: shard.log.as_ref().map_or(0, ShardLog::dropped_lines),
        rate_limited: shard.limiter.rejected.each_ref().map(Cell::get),
        rate_limit_entries: shard.limiter.entries() as u64,
        rate_limit_evicted: shard.limiter.evicted.get(),
        rate_limit_alone: shard.limiter.decided_alone.get(),
        tls_handshakes: shard.tls_handshakes.each_ref().map(Cell::get),
        ..metrics::report(routes, upstreams, latency, reset)
    }
}

/// One listener as this shard serves it, shared by its accept task and the
/// connections it accepted.
struct Listening {
    /// What its connections are served with (TLS or not, strict SNI): the
    /// config's in force when the listener started, then that of each
    /// reload that keeps it. Each accept takes it from here, so a
    /// connection accepted while a reload removes the listener is served as
    /// the listener was, never as plain HTTP on a TLS port.
    side: RefCell<Side>,
    /// Its TLS handshakes in flight here, bounded by its `max_handshakes`.
    handshakes: Handshakes,
}

impl Listening {
    /// Listener `name` as `config` has it; `None` if it has none so named.
    fn new(config: &Config, name: &str) -> Option<Listening> {
        let l = config.listeners.iter().find(|l| l.name == name)?;
        Some(Listening {
            side: RefCell::new(Side::of(l)),
            handshakes: Handshakes::default(),
        })
    }

    /// Takes a reloaded config's settings for listener `name`: the next
    /// handshake has its certificates. A listener the config no longer has
    /// keeps its own until its accept task stops.
    fn refresh(&self, config: &Config, name: &str) {
        if let Some(l) = config.listeners.iter().find(|l| l.name == name) {
            *self.side.borrow_mut() = Side::of(l);
        }
    }
}

/// The accept tasks of a shard, by listener name; each stops on its own.
#[derive(Default)]
struct Listeners(HashMap<String, Stop>);

/// Stops one accept task: the flag says the cancelled accept was meant.
struct Stop {
    listening: Rc<Listening>,
    canceller: Canceller,
    stopped: Rc<Cell<bool>>,
    /// The listening socket, open for as long as the task runs.
    fd: RawFd,
    /// The accept task: the socket is closed once it has ended.
    task: monoio::task::JoinHandle<()>,
}

impl Listeners {
    async fn start(
        &mut self,
        shard: &Rc<ShardState>,
        name: String,
        l: std::net::TcpListener,
    ) -> std::io::Result<()> {
        let Some(listening) = Listening::new(&shard.current().config, &name) else {
            return Err(std::io::Error::other(format!(
                "listener '{name}' is not in the config in force"
            )));
        };
        let listening = Rc::new(listening);
        let listener = TcpListener::from_std(l)?;
        let fd = listener.as_raw_fd();
        let canceller = Canceller::new();
        let stopped = Rc::new(Cell::new(false));
        let task = monoio::spawn(accept(
            shard.clone(),
            listening.clone(),
            listener,
            canceller.handle(),
            stopped.clone(),
        ));
        let stop = Stop {
            listening,
            canceller,
            stopped,
            fd,
            task,
        };
        if let Some(old) = self.0.insert(name, stop) {
            old.stop().await;
        }
        Ok(())
    }

    /// Each listener's settings as a reloaded `config` has them.
    fn refresh(&self, config: &Config) {
        for (name, s) in &self.0 {
            s.listening.refresh(config, name);
        }
    }

    /// Stops accepting on listener `name`, which a reload removed: on
    /// return the socket refuses connections (and those queued are reset).
    /// Closing it would not do: monoio queues the close on the ring, to run
    /// after the reply that says the listener is gone.
    async fn remove(&mut self, name: &str) {
        if let Some(s) = self.0.remove(name) {
            // SAFETY: the accept task owns the socket and has not ended.
            unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
            s.stop().await;
        }
    }

    /// Stops accepting on every listener. The sockets are only closed, not
    /// shut down: after `--upgrade` the new process shares them.
    async fn stop_all(&mut self) {
        for (_, s) in self.0.drain() {
            s.stop().await;
        }
    }
}

impl Stop {
    async fn stop(self) {
        self.stopped.set(true);
        self.canceller.cancel();
        self.task.await;
    }
}

/// Accepts until stopped; the listening socket closes when it returns.
async fn accept(
    shard: Rc<ShardState>,
    listening: Rc<Listening>,
    listener: TcpListener,
    cancel: CancelHandle,
    stopped: Rc<Cell<bool>>,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                backoff.reset();
                metrics::bump(&shard.accepted);
                let side = listening.side.borrow().clone();
                if stopped.get() {
                    // Accepted as the stop came: serve it, then stop.
                    shard.conn_opened();
                    monoio::spawn(serve_conn(
                        shard.clone(),
                        stream,
                        peer,
                        side,
                        listening.clone(),
                    ));
                    return;
                }
                if shard.conns() >= shard.current().config.server.max_connections {
                    // A TLS client could not read a plain 503.
                    if side.tls.is_none() {
                        monoio::spawn(refuse(shard.clone(), stream));
                    }
                    continue;
                }
                shard.conn_opened();
                monoio::spawn(serve_conn(
                    shard.clone(),
                    stream,
                    peer,
                    side,
                    listening.clone(),
                ));
            }
            Err(_) if stopped.get() => return,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or kernel memory: the
                // pending connection stays queued, so retrying at once would
                // spin. Wait, longer each time, until a descriptor frees up.
                let wait = backoff.failed(Instant::now(), |failures| {
                    log::warn!(
                        "shard {}: accept failed: {e} ({failures} times in the last second); backing off",
                        shard.id
                    );
                });
                monoio::time::sleep(wait).await;
            }
        }
    }
}

/// How long to wait after a failed accept, and when to say so: the wait
/// doubles from 5 ms to 500 ms, and the log speaks at most once a second.
#[derive(Default)]
struct AcceptBackoff {
    wait: Duration,
    failures: u64,
    logged: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(500);

    fn failed(&mut self, now: Instant, log: impl FnOnce(u64)) -> Duration {
        self.failures += 1;
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            log(self.failures);
            self.logged = Some(now);
            self.failures = 0;
        }
        self.wait = (self.wait * 2).clamp(Self::FIRST, Self::MAX);
        self.wait
    }

    fn reset(&mut self) {
        self.wait = Duration::ZERO;
    }
}

/// Once a second, at the turn of the second: the `Date` value, the
/// demotion of quiet connections, the slab's spare buffers trimmed, and
/// the upstream pools swept of idle connections they no longer need.
async fn housekeeping(shard: Rc<ShardState>) {
    for tick in 1.. {
        shard.date.next_second().await;
        shard.date.set(SystemTime::now());
        shard.demote_waiting();
        let now = Instant::now();
        shard.expire_quiet(now);
        shard.slab.trim();
        if let Some(log) = &shard.log {
            log.flush();
        }
        shard.limiter.sweep(crate::ratelimit::nanos(now));
        for pool in &shard.current().pools {
            pool.sweep(now, tick);
        }
    }
}

/// A connection's task while it is served. A connection that goes quiet
/// moves to a small task of its own (`quiet_conn`), so the memory of this
/// one, sized for a whole proxied exchange, is not kept while it waits.
async fn serve_conn(
    shard: Rc<ShardState>,
    stream: TcpStream,
    peer: SocketAddr,
    side: Side,
    listening: Rc<Listening>,
) {
    let after = conn::serve(&shard, stream, peer, side, &listening.handshakes).await;
    carry_on(shard, after);
}

/// A quiet connection's task: small, as it awaits nothing but the wait
/// (see `IdleConn::wait`).
#[allow(clippy::manual_async_fn)] // an `async fn` keeps a second copy of its arguments
fn quiet_conn(shard: Rc<ShardState>, mut idle: IdleConn) -> impl Future<Output = ()> {
    async move {
        loop {
            let woken = {
                let Some((wait, _open)) = idle.wait(&shard) else {
                    break;
                };
                let done = wait.await;
                idle.woken(done)
            };
            match woken {
                Woken::Request => {
                    monoio::spawn(resumed_conn(shard, idle));
                    return;
                }
                Woken::Cancelled => {}
                Woken::Closed => break,
            }
        }
        shard.conn_closed();
    }
}

async fn resumed_conn(shard: Rc<ShardState>, idle: IdleConn) {
    let after = conn::resume(&shard, idle).await;
    carry_on(shard, after);
}

fn carry_on(shard: Rc<ShardState>, after: After) {
    match after {
        After::Closed => shard.conn_closed(),
        After::Idle(idle) => {
            monoio::spawn(quiet_conn(shard, idle));
        }
    }
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(shard: Rc<ShardState>, mut stream: TcpStream) {
    conn::refuse(&shard, &mut stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Listener "http", plain, and, unless `https` is `None`, listener
    /// "https" over TLS with `strict_sni = https`.
    fn config(dir: &Path, https: Option<bool>) -> Config {
        let mut text = String::from(
            "[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n\n\
             [[upstream]]\nname = \"o\"\nendpoints = [\"127.0.0.1:9\"]\n\n\
             [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        );
        if let Some(strict) = https {
            let (cert, key) = (dir.join("a.pem"), dir.join("a.key"));
            text += &format!(
                "\n[[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n\
                 strict_sni = {strict}\n\
                 tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
                cert.display(),
                key.display()
            );
        }
        Config::parse(&dir.join("ringway.toml"), &text).unwrap()
    }

    /// The race this guards against (a connection accepted in the same turn
    /// of the loop as the reload that removes its listener) cannot be
    /// forced over sockets: what it rests on is checked here instead. The
    /// accept task takes its settings from its `Listening`, never from the
    /// config in force, so a config without the listener leaves them be.
    #[test]
    fn a_listener_keeps_its_settings_until_a_reload_that_keeps_it_changes_them() {
        let dir = std::env::temp_dir().join(format!("ringway-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        std::fs::write(dir.join("a.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("a.key"), made.signing_key.serialize_pem()).unwrap();
        let (loose, strict, without) = (
            config(&dir, Some(false)),
            config(&dir, Some(true)),
            config(&dir, None),
        );
        let _ = std::fs::remove_dir_all(&dir);

        let https = Listening::new(&loose, "https").expect("in the config");
        let side = https.side.borrow().clone();
        assert!(side.tls.is_some() && !side.strict_sni);
        assert!(Listening::new(&without, "https").is_none(), "not started");
        assert!(
            Listening::new(&loose, "http")
                .unwrap()
                .side
                .borrow()
                .tls
                .is_none()
        );

        // A reload that removes the listener: until its accept task stops,
        // what it accepts is still served over TLS.
        https.refresh(&without, "https");
        assert!(https.side.borrow().tls.is_some());
        // One that keeps it: the next connection has its new settings.
        https.refresh(&strict, "https");
        let side = https.side.borrow().clone();
        assert!(side.tls.is_some() && side.strict_sni);
    }

    /// What a quiet connection costs is mostly its task: monoio's read
    /// (192 bytes), the `IdleConn`, the shard. With monoio's header and
    /// trailer (40 bytes) and the stage's tag, it stays in mimalloc's
    /// 384-byte class (it was 696 bytes when `quiet_conn` was an `async fn`
    /// awaiting one, with a connection's TLS halves unboxed).
    #[test]
    fn a_quiet_connection_task_is_small() {
        fn future_size<A, B, F>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let task = future_size(quiet_conn) + 8 + 40;
        assert!(task <= 384, "a quiet connection's task takes {task} bytes");
    }

    #[test]
    fn accept_backoff_doubles_and_logs_once_a_second() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        let mut logs = Vec::new();
        let mut waits = Vec::new();
        for ms in 0..1500u64 {
            let now = t0 + Duration::from_millis(ms);
            waits.push(b.failed(now, |n| logs.push((ms, n))));
        }
        assert_eq!(logs, vec![(0, 1), (1000, 1000)]);
        assert_eq!(waits[0], Duration::from_millis(5));
        assert_eq!(waits[1], Duration::from_millis(10));
        assert_eq!(*waits.last().unwrap(), Duration::from_millis(500));
        b.reset();
        assert_eq!(b.failed(t0, |_| {}), Duration::from_millis(5));
    }
}
