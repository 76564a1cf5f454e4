//! The control thread: it owns the config, the listening sockets' set-up,
//! the admin socket and the shards' lifetimes. Everything that changes the
//! running proxy goes through it as a `Command`, from signals (the binary),
//! the admin socket (`ringway ctl`), the config file watch, or tests in the
//! same process (`Server`). It talks to the shards only through their
//! mailboxes (see `mailbox`).
//!
//! A reload: read, validate and compile the file here; bind the listeners
//! it adds; then one `Reload` message per shard, and wait for every shard to
//! say it has it, so that when `ctl reload` returns every new request uses
//! the new config. A file that fails leaves the running config as it was.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};

use crate::accesslog::LogWriter;
use crate::admin::{AdminServer, AdminSocket};
use crate::config::{Config, FileDigests, Steer};
use crate::exporter::Exporter;
use crate::handover::Inherited;
use crate::health::{EndpointHealth, HealthChecker};
use crate::histlog::HistogramLogs;
use crate::lease::Mesh;
use crate::mailbox::{FromShard, Mailbox, ShardStats, ToShard};
use crate::metrics::{Checked, Latency, Metric, Report, Reset, render_prometheus};
use crate::shard::{self, ShardSpec};
use crate::snapshot::Snapshot;

/// What the control thread can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Reload,
    Config,
    Drain,
    Stop,
    /// The metrics in the Prometheus text format.
    Metrics,
    /// Close and open the access log file again (after logrotate moved it).
    ReopenLogs,
    /// The per-client rate-limit keys with the most requests, at most this many.
    RateLimit(usize),
    /// Copies of the listening sockets, for `ringway --upgrade`.
    Handover,
    /// Opens the admin socket and the metrics listener, which a process
    /// started with `--upgrade` does once the old one is gone.
    OpenEndpoints,
    Histograms(HistogramQuery),
    /// Health checks' verdicts, from the checker thread (never from the
    /// admin socket): sent on to every shard.
    Health(Vec<EndpointHealth>),
}

/// Which latency histogram `ringway ctl histograms` asks for, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramQuery {
    /// One route's, or one upstream's; neither: every route's merged.
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub metric: Metric,
    pub format: HistogramFormat,
    /// Clear the histograms after reading them.
    pub reset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistogramFormat {
    /// HdrHistogram's percentile distribution text.
    Hgrm,
    /// An HdrHistogram interval log (V2, compressed) of one interval.
    Log,
    /// Count and percentiles in µs.
    Json,
}

impl Command {
    pub const NAMES: &[&str] = &[
        "status",
        "reload",
        "config",
        "drain",
        "stop",
        "metrics",
        "histograms",
        "reopen-logs",
        "ratelimit",
        "handover",
    ];

    /// The command of an admin request: `{"command":"status"}`, or for
    /// histograms also `route`, `upstream`, `metric`, `format`, `reset`.
    pub fn from_request(request: &Value) -> Result<Command, String> {
        let Some(name) = request.get("command").and_then(Value::as_str) else {
            return Err("request has no \"command\" string: send {\"command\":\"status\"}".into());
        };
        Ok(match name {
            "status" => Command::Status,
            "reload" => Command::Reload,
            "config" => Command::Config,
            "drain" => Command::Drain,
            "stop" => Command::Stop,
            "metrics" => Command::Metrics,
            "reopen-logs" => Command::ReopenLogs,
            "handover" => Command::Handover,
            "ratelimit" => {
                let top = match request.get("top") {
                    None | Some(Value::Null) => 100,
                    Some(v) => v
                        .as_u64()
                        .filter(|&n| (1..=10_000).contains(&n))
                        .ok_or("\"top\" must be a number from 1 to 10000")?
                        as usize,
                };
                Command::RateLimit(top)
            }
            "histograms" => {
                let text = |key: &str| -> Result<Option<String>, String> {
                    match request.get(key) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(_) => Err(format!("\"{key}\" must be a string")),
                    }
                };
                let metric = match text("metric")?.as_deref() {
                    None => Metric::Total,
                    Some(m) => Metric::parse(m).ok_or_else(|| {
                        format!("unknown metric {m:?}; metrics: total, upstream, proxy")
                    })?,
                };
                let format = match text("format")?.as_deref() {
                    None | Some("hgrm") => HistogramFormat::Hgrm,
                    Some("log") => HistogramFormat::Log,
                    Some("json") => HistogramFormat::Json,
                    Some(f) => {
                        return Err(format!("unknown format {f:?}; formats: hgrm, log, json"));
                    }
                };
                let query = HistogramQuery {
                    route: text("route")?,
                    upstream: text("upstream")?,
                    metric,
                    format,
                    reset: request
                        .get("reset")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                };
                if query.route.is_some() && query.upstream.is_some() {
                    return Err("ask for a route or an upstream, not both".into());
                }
                Command::Histograms(query)
            }
            _ => {
                return Err(format!(
                    "unknown command {name:?}; commands: {}",
                    Command::NAMES.join(", ")
                ));
            }
        })
    }
}

/// A command's answer: a JSON object, or what went wrong.
pub type Reply = Result<Value, String>;

/// A command and where its reply goes (nowhere for a signal).
pub struct Envelope {
    pub command: Command,
    pub reply: Option<SyncSender<Reply>>,
    /// For `Handover`: where the listening sockets go.
    pub fds: Option<SyncSender<Vec<OwnedFd>>>,
}

/// Sends commands to the control thread; cheap to clone.
#[derive(Clone)]
pub struct ControlHandle(Sender<Envelope>);

impl ControlHandle {
    /// Sends a command and waits for its reply, at most `wait`.
    pub fn ask(&self, command: Command, wait: Duration) -> Reply {
        let (tx, rx) = mpsc::sync_channel(1);
        self.0
            .send(Envelope {
                command,
                reply: Some(tx),
                fds: None,
            })
            .map_err(|_| "the control thread has stopped".to_string())?;
        rx.recv_timeout(wait)
            .map_err(|_| format!("no reply from the control thread within {wait:?}"))?
    }

    /// Asks for the listening sockets (a copy of each), for a new process
    /// taking over (see `handover`).
    pub fn handover(&self, wait: Duration) -> Result<(Value, Vec<OwnedFd>), String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (ftx, frx) = mpsc::sync_channel(1);
        self.0
            .send(Envelope {
                command: Command::Handover,
                reply: Some(tx),
                fds: Some(ftx),
            })
            .map_err(|_| "the control thread has stopped".to_string())?;
        let reply = rx
            .recv_timeout(wait)
            .map_err(|_| format!("no reply from the control thread within {wait:?}"))??;
        let fds = frx
            .recv_timeout(wait)
            .map_err(|_| "no sockets came".to_string())?;
        Ok((reply, fds))
    }

    /// Sends a command without waiting; the control thread logs the outcome.
    pub fn tell(&self, command: Command) {
        let _ = self.0.send(Envelope {
            command,
            reply: None,
            fds: None,
        });
    }
}

/// The running proxy, as its starter holds it.
pub struct Server {
    handle: ControlHandle,
    control: Option<JoinHandle<()>>,
    addrs: Vec<(String, SocketAddr)>,
}

impl Server {
    /// Binds every listener once per shard, starts the shards, opens the
    /// admin socket if one is configured, and starts the control thread. A
    /// bind to port 0 picks a port for the first shard; the others share it.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        Server::start_with(config, None)
    }

    /// As `start`, on the listening sockets of a running ringway where
    /// `inherited` has them (`ringway --upgrade`). Then the admin socket and
    /// the metrics listener wait for `open_endpoints`, as the old process
    /// holds them until it stops.
    pub fn start_with(config: Config, mut inherited: Option<Inherited>) -> anyhow::Result<Server> {
        let workers = config.workers();
        if let Some(i) = &inherited
            && i.workers != workers
        {
            anyhow::bail!(
                "--upgrade: the running ringway has {} shards, this config {workers}: \
                 a change of server.workers needs a restart",
                i.workers
            );
        }
        let upgrading = inherited.is_some();
        if shard::Driver::pick() == shard::Driver::Epoll
            && std::env::var_os("RINGWAY_DRIVER").is_none()
        {
            log::warn!(
                "io_uring is not available (old kernel, seccomp, or io_uring_disabled): shards run on epoll"
            );
        }
        let snapshot = Arc::new(Snapshot::compile(config));
        for w in &snapshot.warnings {
            log::warn!("config: {w}");
        }
        let cfg = &snapshot.config;
        let cores = if cfg.server.pin_cores {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };

        // First: a second ringway started by mistake stops here, before its
        // listeners (SO_REUSEPORT) could take a share of the connections.
        let admin = match &cfg.server.admin_socket {
            Some(path) if !upgrading => Some(AdminSocket::open(path)?),
            _ => None,
        };
        let histogram_logs = match &cfg.metrics.histogram_dir {
            Some(dir) => Some(
                HistogramLogs::new(
                    dir,
                    cfg.metrics.histogram_interval,
                    cfg.metrics.histogram_keep,
                    cfg.metrics.histogram_file_bytes,
                )
                .with_context(|| format!("metrics.histogram_dir {}", dir.display()))?,
            ),
            None => None,
        };
        let exporter = match cfg.metrics.listen {
            Some(addr) if !upgrading => Some(Exporter::bind(addr)?),
            _ => None,
        };
        let mut per_shard: Vec<Vec<(String, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut listeners = Vec::new();
        let mut steered = cfg.server.steer == Steer::ClientIp;
        // Taken-over sockets keep the steering they had: changing it needs a restart.
        if let Some(i) = &inherited
            && i.steered != steered
        {
            log::warn!(
                "--upgrade: server.steer differs from the running process's; its steering stays until a restart"
            );
            steered = i.steered;
        }
        for l in &cfg.listeners {
            let taken = inherited
                .as_mut()
                .and_then(|i| i.take(&l.name, l.bind, workers));
            let kept = taken.is_some();
            let (addr, sockets) = match taken {
                Some(sockets) => (sockets[0].local_addr()?, sockets),
                None => bind_all(&l.name, l.bind, workers)?,
            };
            let fds = sockets
                .iter()
                .map(|s| s.try_clone().map(OwnedFd::from))
                .collect::<std::io::Result<Vec<_>>>()?;
            // Taken-over sockets keep the group's steering program.
            if steered
                && !kept
                && let Err(e) = steer(&sockets)
            {
                log::warn!(
                    "server.steer = \"client-ip\": cannot attach the steering program to listener '{}' ({e}); \
                     the kernel's hash spreads connections, and per-address limits are shared out over the shards",
                    l.name
                );
                steered = false;
            }
            for (shard, sock) in per_shard.iter_mut().zip(sockets) {
                shard.push((l.name.clone(), sock));
            }
            let how = if kept { ", taken over" } else { "" };
            log::info!(
                "listener '{}' on {}://{addr} ({workers} shards{how})",
                l.name,
                scheme(l)
            );
            listeners.push(Bound {
                name: l.name.clone(),
                bind: l.bind,
                addr,
                fds,
            });
        }

        let access_log = match &cfg.access_log {
            Some(path) => Some(
                LogWriter::start(path.clone())
                    .with_context(|| format!("access_log.path {}", path.display()))?,
            ),
            None => None,
        };
        let mut shards = Vec::with_capacity(workers);
        let mesh = (workers > 1).then(|| Mesh::new(workers));
        for (id, listeners) in per_shard.into_iter().enumerate() {
            let mailbox = Mailbox::new();
            let spec = ShardSpec {
                id,
                core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
                snapshot: snapshot.clone(),
                listeners,
                mailbox: mailbox.clone(),
                log: access_log.as_ref().map(LogWriter::shard),
                steered,
                mesh: mesh.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("ringway-shard-{id}"))
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| shard::run(spec));
                    let why = match std::panic::catch_unwind(run) {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "it panicked".to_string(),
                    };
                    // Its listening sockets stay open on the control side
                    // (kept for reloads and handover), so the kernel would
                    // go on queueing connections for a shard that is gone:
                    // the process stops, for its supervisor to restart it.
                    log::error!(
                        "shard {id} failed ({why}); exiting: its connections would go unanswered"
                    );
                    std::process::exit(70);
                })?;
            shards.push(ShardLink {
                mailbox,
                thread: Some(thread),
            });
        }

        log::info!(
            "steering: {}",
            match (cfg.server.steer, steered) {
                (Steer::ClientIp, true) =>
                    "client-ip (each client address to one shard; per-client limits exact)",
                (Steer::ClientIp, false) => "kernel hash (client-ip steering failed; see above)",
                _ => "kernel hash (per-address limits shared out over the shards)",
            }
        );
        let metrics_path = cfg.metrics.path.clone();
        let (tx, rx) = mpsc::channel();
        let handle = ControlHandle(tx);
        let addrs = listeners.iter().map(|b| (b.name.clone(), b.addr)).collect();
        let verdicts = handle.clone();
        let health = HealthChecker::start(&snapshot.config.upstreams, move |v| {
            verdicts.tell(Command::Health(v));
        })?;
        let mut control = Control {
            health: Some(health),
            down: Vec::new(),
            seen: snapshot.config.text.clone(),
            seen_files: snapshot.config.files.clone(),
            snapshot,
            generation: 0,
            started: Instant::now(),
            shards,
            listeners,
            last_reload: None,
            draining: false,
            asked: 0,
            reloads_failed: 0,
            steered,
            histograms_since: SystemTime::now(),
            admin: admin.map(|a| a.serve(handle.clone())).transpose()?,
            exporter: exporter
                .map(|l| Exporter::serve(l, metrics_path, handle.clone()))
                .transpose()?,
            histogram_logs,
            access_log,
            watched: Instant::now(),
        };
        let run_handle = handle.clone();
        let thread = std::thread::Builder::new()
            .name("ringway-control".into())
            .spawn(move || {
                for s in &control.shards {
                    s.mailbox.attach_control(std::thread::current());
                }
                control.run(rx, run_handle);
            })?;
        Ok(Server {
            handle,
            control: Some(thread),
            addrs,
        })
    }

    /// The address of each listener at start, by name (port 0 resolved).
    pub fn addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    pub fn handle(&self) -> ControlHandle {
        self.handle.clone()
    }

    /// Opens the admin socket and the metrics listener (after `--upgrade`
    /// has retired the old process).
    pub fn open_endpoints(&self) -> Reply {
        self.ask(Command::OpenEndpoints)
    }

    /// Asks the control thread, as `ringway ctl` does.
    pub fn ask(&self, command: Command) -> Reply {
        self.handle.ask(command, Duration::from_secs(30))
    }

    /// Waits until the proxy has stopped (after a `Stop` from anywhere).
    pub fn wait(mut self) {
        if let Some(t) = self.control.take() {
            let _ = t.join();
        }
    }

    /// Stops accepting, lets in-flight requests finish within the drain
    /// timeout, and joins every shard and the control thread.
    pub fn shutdown(self) {
        self.handle.tell(Command::Stop);
        self.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.control.take() {
            self.handle.tell(Command::Stop);
            let _ = t.join();
        }
    }
}

/// A listener as bound: its name and configured address, and the address
/// it got (the port chosen, for port 0).
struct Bound {
    name: String,
    bind: SocketAddr,
    addr: SocketAddr,
    /// A copy of each shard's socket, in shard order, to hand over.
    fds: Vec<OwnedFd>,
}

struct ShardLink {
    mailbox: Arc<Mailbox>,
    thread: Option<JoinHandle<()>>,
}

struct Control {
    snapshot: Arc<Snapshot>,
    generation: u64,
    started: Instant,
    shards: Vec<ShardLink>,
    listeners: Vec<Bound>,
    /// When the last reload was tried and what came of it.
    last_reload: Option<(SystemTime, Result<u64, String>)>,
    draining: bool,
    /// Numbers the stats requests, so a late reply to an earlier one is
    /// told apart.
    asked: u64,
    reloads_failed: u64,
    /// Connections are steered by client address (`server.steer`).
    steered: bool,
    /// When the latency histograms were last reset (or the proxy started).
    histograms_since: SystemTime,
    /// The config file's text as last read (by a reload, or at start the
    /// text in force), for `server.watch_config`, and when it was last
    /// looked at. The text, not the modification time: two edits within
    /// one tick of the file system's clock differ only in it.
    seen: String,
    /// The certificates, keys and CA files that text names, as that load
    /// read them: a certificate renewed in place reloads too.
    seen_files: FileDigests,
    watched: Instant,
    admin: Option<AdminServer>,
    exporter: Option<Exporter>,
    histogram_logs: Option<HistogramLogs>,
    access_log: Option<LogWriter>,
    /// The active health checks' thread (`health`).
    health: Option<HealthChecker>,
    /// Endpoints the health checks have marked down, by upstream name, as
    /// the verdicts went by: for `status`.
    down: Vec<(String, SocketAddr)>,
}

/// How long the control thread waits for every shard to answer.
const SHARD_REPLY: Duration = Duration::from_secs(5);
/// How often `server.watch_config` looks at the file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

impl Control {
    fn run(&mut self, commands: Receiver<Envelope>, handle: ControlHandle) {
        // After a handover the next stop is the new process retiring this
        // one, not the service stopping: systemd must not hear STOPPING=1.
        let mut handed_over = false;
        loop {
            if self.watched.elapsed() >= WATCH_EVERY {
                self.watched = Instant::now();
                self.watch();
            }
            if self.histogram_logs.as_ref().is_some_and(HistogramLogs::due) {
                let totals = self.gather(true, Reset::Nothing);
                if let Some(logs) = &mut self.histogram_logs
                    && let Err(e) = logs.write(totals)
                {
                    log::error!("metrics.histogram_dir: {e}");
                }
            }
            let envelope = match commands.recv_timeout(WATCH_EVERY) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let command = envelope.command;
            if command == Command::Handover {
                let reply = match self.handover() {
                    Ok((v, fds)) => {
                        handed_over = true;
                        if let Some(to) = envelope.fds {
                            let _ = to.send(fds);
                        }
                        Ok(v)
                    }
                    Err(e) => Err(e),
                };
                if let Some(r) = envelope.reply {
                    let _ = r.send(reply);
                }
                continue;
            }
            if command == Command::OpenEndpoints {
                let reply = self.open_endpoints(&handle);
                if let Some(r) = envelope.reply {
                    let _ = r.send(reply);
                }
                continue;
            }
            if command == Command::Stop {
                if !handed_over {
                    crate::notify::notify("STOPPING=1");
                }
                log::info!("stopping: draining connections");
                if let Some(r) = envelope.reply {
                    let _ = r.send(Ok(json!({ "stopping": true })));
                }
                break;
            }
            let name = format!("{command:?}");
            let reply = self.handle(command);
            match (&reply, envelope.reply) {
                (_, Some(r)) => {
                    let _ = r.send(reply);
                }
                (Err(e), None) => log::error!("{name}: {e}"),
                (Ok(_), None) => {}
            }
        }
        // Nothing more is asked while the shards drain. The metrics
        // listener goes first: a process taking over (`--upgrade`) binds it
        // once the admin socket is gone.
        if let Some(exporter) = self.exporter.take() {
            exporter.close();
        }
        if let Some(admin) = self.admin.take() {
            admin.close();
        }
        self.stop();
        log::info!("stopped");
    }

    /// Each endpoint of an upstream with an active health check, and
    /// whether the checks last found it healthy (it starts so).
    fn checked(&self) -> Vec<Checked> {
        let upstreams = self.snapshot.config.upstreams.iter();
        upstreams
            .filter(|u| u.health_check.is_some())
            .flat_map(|u| {
                u.endpoints.iter().map(move |e| Checked {
                    upstream: u.name.clone(),
                    endpoint: e.addr.to_string(),
                    healthy: !self.down.iter().any(|(n, a)| *n == u.name && *a == e.addr),
                })
            })
            .collect()
    }

    fn handle(&mut self, command: Command) -> Reply {
        match command {
            Command::Status => Ok(self.status()),
            Command::Health(verdicts) => {
                for v in &verdicts {
                    self.down.retain(|(u, a)| *u != v.upstream || *a != v.addr);
                    if !v.healthy {
                        self.down.push((v.upstream.clone(), v.addr));
                    }
                }
                let verdicts: Arc<[EndpointHealth]> = verdicts.into();
                for (i, s) in self.shards.iter().enumerate() {
                    if let Err(e) = send(&s.mailbox, ToShard::Health(verdicts.clone())) {
                        log::error!("health checks: shard {i}: {e}");
                    }
                }
                Ok(json!({}))
            }
            Command::Reload => self.reload(),
            Command::Config => Ok(json!({
                "file": self.snapshot.config.path.display().to_string(),
                "generation": self.generation,
                "toml": self.snapshot.config.text,
            })),
            Command::Drain => {
                self.draining = true;
                self.close_listeners();
                for s in &self.shards {
                    send(&s.mailbox, ToShard::Drain)?;
                }
                log::info!("draining: not accepting; in-flight requests finish");
                Ok(json!({ "draining": true }))
            }
            Command::Metrics => {
                let mut report = self.gather(true, Reset::Nothing);
                report.log_dropped += self.access_log.as_ref().map_or(0, LogWriter::dropped_lines);
                let failed = self.reloads_failed;
                let text = render_prometheus(&report, self.generation, failed, self.checked());
                Ok(json!({ "text": text }))
            }
            Command::Histograms(q) => self.histograms(&q),
            Command::RateLimit(top) => Ok(self.rate_limit_top(top)),
            Command::ReopenLogs => match &self.access_log {
                Some(log) => {
                    log.reopen();
                    log::info!("access log: reopening the file");
                    Ok(json!({ "reopened": true }))
                }
                None => Err("no access log: set [access_log] path".into()),
            },
            Command::Stop | Command::Handover | Command::OpenEndpoints => {
                unreachable!("handled by run")
            }
        }
    }

    /// A copy of every listening socket, listener by listener in shard
    /// order, and what the reply says of them.
    fn handover(&self) -> Result<(Value, Vec<OwnedFd>), String> {
        if self.draining {
            return Err(
                "draining: its listening sockets are closed; start the new process without --upgrade"
                    .into(),
            );
        }
        let mut fds = Vec::new();
        for b in &self.listeners {
            for fd in &b.fds {
                fds.push(
                    fd.try_clone()
                        .map_err(|e| format!("cannot copy a socket: {e}"))?,
                );
            }
        }
        if fds.len() > crate::handover::MAX_FDS {
            return Err(format!(
                "{} listening sockets: more than one handover carries ({})",
                fds.len(),
                crate::handover::MAX_FDS
            ));
        }
        let listeners: Vec<(String, String)> = self
            .listeners
            .iter()
            .map(|b| (b.name.clone(), b.addr.to_string()))
            .collect();
        log::info!("handover: {} listening sockets to a new process", fds.len());
        Ok((
            crate::handover::describe(self.shards.len(), self.steered, &listeners),
            fds,
        ))
    }

    /// The admin socket and the metrics listener, if configured and not
    /// open yet.
    fn open_endpoints(&mut self, handle: &ControlHandle) -> Reply {
        let cfg = &self.snapshot.config;
        if self.admin.is_none()
            && let Some(path) = &cfg.server.admin_socket
        {
            let admin = AdminSocket::open(path).map_err(|e| format!("{e:#}"))?;
            self.admin = Some(admin.serve(handle.clone()).map_err(|e| e.to_string())?);
        }
        if self.exporter.is_none()
            && let Some(addr) = cfg.metrics.listen
        {
            let l = Exporter::bind(addr).map_err(|e| format!("{e:#}"))?;
            let exporter = Exporter::serve(l, cfg.metrics.path.clone(), handle.clone());
            self.exporter = Some(exporter.map_err(|e| e.to_string())?);
        }
        Ok(json!({ "open": true }))
    }

    /// Every shard's metrics, summed.
    fn gather(&mut self, latency: bool, reset: Reset) -> Report {
        self.asked += 1;
        let n = self.asked;
        for s in &self.shards {
            let reset = reset.clone();
            let _ = send(&s.mailbox, ToShard::Metrics { n, latency, reset });
        }
        let mut total = Report::default();
        let late = self.collect(|_, reply| match reply {
            FromShard::Metrics(m, report) if m == n => {
                total.merge(&report);
                true
            }
            _ => false,
        });
        if !late.is_empty() {
            log::warn!("metrics: shards {late:?} did not answer within {SHARD_REPLY:?}");
        }
        total
    }

    fn histograms(&mut self, q: &HistogramQuery) -> Reply {
        let reset = match (q.reset, &q.route, &q.upstream) {
            (false, _, _) => Reset::Nothing,
            (true, Some(r), _) => Reset::Route(r.clone()),
            (true, _, Some(u)) => Reset::Upstream(u.clone()),
            (true, None, None) => Reset::Routes,
        };
        let report = self.gather(true, reset);
        let since = self.histograms_since;
        if q.reset {
            self.histograms_since = SystemTime::now();
        }
        let mut merged = Latency::new();
        let mut found = false;
        let mut add = |l: &Option<Latency>| {
            found = true;
            if let Some(l) = l {
                let _ = merged.total.add(&l.total);
                let _ = merged.upstream.add(&l.upstream);
                let _ = merged.proxy.add(&l.proxy);
            }
        };
        match (&q.route, &q.upstream) {
            (Some(name), _) => report
                .routes
                .iter()
                .filter(|r| &r.name == name)
                .for_each(|r| add(&r.latency)),
            (_, Some(name)) => report
                .upstreams
                .iter()
                .filter(|u| &u.name == name)
                .for_each(|u| add(&u.latency)),
            (None, None) => report.routes.iter().for_each(|r| add(&r.latency)),
        }
        if !found {
            let (kind, name) = match (&q.route, &q.upstream) {
                (Some(r), _) => ("route", r),
                (_, Some(u)) => ("upstream", u),
                _ => ("route", &String::new()),
            };
            return Err(format!("no {kind} named {name:?} in the running config"));
        }
        let h = merged.get(q.metric);
        let text = match q.format {
            HistogramFormat::Hgrm => {
                let mut out = Vec::new();
                crate::hgrm::write_percentiles(h, &mut out).map_err(|e| e.to_string())?;
                String::from_utf8_lossy(&out).into_owned()
            }
            HistogramFormat::Log => {
                interval_log(h, since).map_err(|e| format!("interval log: {e}"))?
            }
            HistogramFormat::Json => {
                let p = |q: f64| {
                    if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(q)
                    }
                };
                return Ok(json!({
                    "count": h.len(),
                    "unit": "us",
                    "min": if h.is_empty() { 0 } else { h.min() },
                    "mean": h.mean(),
                    "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "p9999": p(0.9999),
                    "max": h.max(),
                }));
            }
        };
        Ok(json!({ "count": h.len(), "text": text }))
    }

    /// The hottest per-client keys over all shards: each shard sends its
    /// `top` (a heap, not its table), the sums are ranked here.
    fn rate_limit_top(&mut self, top: usize) -> Value {
        self.asked += 1;
        let n = self.asked;
        for s in &self.shards {
            let _ = send(&s.mailbox, ToShard::RateLimitTop { n, top });
        }
        let mut keys: Vec<(u64, Vec<u8>, u64)> = Vec::new();
        self.collect(|_, reply| match reply {
            FromShard::RateLimitTop(m, list) if m == n => {
                for (id, key, hits) in list {
                    match keys.iter_mut().find(|k| k.0 == id && k.1 == key) {
                        Some(k) => k.2 += hits,
                        None => keys.push((id, key, hits)),
                    }
                }
                true
            }
            _ => false,
        });
        keys.sort_by_key(|k| std::cmp::Reverse(k.2));
        keys.truncate(top);
        let routes = &self.snapshot.config.routes;
        let bucket = |id: u64| {
            routes
                .iter()
                .find(|r| crate::ratelimit::bucket_id(&r.name) == id)
                .map_or("[rate_limit]".to_string(), |r| format!("route {}", r.name))
        };
        let key_text = |key: &[u8]| match key.len() {
            4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(key).unwrap_or_default()).to_string(),
            16 => {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(key).unwrap_or_default()).to_string()
            }
            _ => String::from_utf8_lossy(key).into_owned(),
        };
        json!({
            "key": match &self.snapshot.config.rate_limit.key {
                crate::config::LimitKey::ClientIp => "client-ip".to_string(),
                crate::config::LimitKey::Header(h) => format!("header:{h}"),
            },
            "keys": keys.iter().map(|(id, key, hits)| json!({
                "bucket": bucket(*id), "key": key_text(key), "requests": hits,
            })).collect::<Vec<_>>(),
        })
    }

    fn status(&mut self) -> Value {
        self.asked += 1;
        let asked = self.asked;
        let mut stats: Vec<Option<ShardStats>> = vec![None; self.shards.len()];
        for s in &self.shards {
            let _ = send(&s.mailbox, ToShard::Stats(asked));
        }
        self.collect(|i, reply| match reply {
            FromShard::Stats(n, st) if n == asked => {
                stats[i] = Some(st);
                true
            }
            _ => false,
        });
        let last_reload = self.last_reload.as_ref().map(|(at, r)| {
            let at = httpdate::fmt_http_date(*at);
            match r {
                Ok(g) => json!({ "at": at, "ok": true, "generation": g }),
                Err(e) => json!({ "at": at, "ok": false, "error": e }),
            }
        });
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs(),
            "config": self.snapshot.config.path.display().to_string(),
            "generation": self.generation,
            "draining": self.draining,
            "last_reload": last_reload,
            "listeners": self.listeners.iter().map(|b| json!({
                "name": b.name, "addr": b.addr.to_string(),
            })).collect::<Vec<_>>(),
            "unhealthy_endpoints": self.down.iter().filter(|(u, a)| {
                self.snapshot.config.upstreams.iter().any(|up| {
                    up.name == *u && up.endpoints.iter().any(|e| e.addr == *a)
                })
            }).map(|(u, a)| json!({ "upstream": u, "addr": a.to_string() })).collect::<Vec<_>>(),
            "shards": stats.iter().enumerate().map(|(i, s)| match s {
                Some(s) => json!(s),
                None => json!({ "shard": i, "error": "no answer" }),
            }).collect::<Vec<_>>(),
        })
    }

    /// Waits until `take` has accepted a reply from every shard, or
    /// `SHARD_REPLY` has passed; says which shards did not answer.
    fn collect(&self, mut take: impl FnMut(usize, FromShard) -> bool) -> Vec<usize> {
        let deadline = Instant::now() + SHARD_REPLY;
        let mut done = vec![false; self.shards.len()];
        loop {
            for (i, s) in self.shards.iter().enumerate() {
                while !done[i]
                    && let Some(reply) = s.mailbox.reply()
                {
                    done[i] = take(i, reply);
                }
            }
            let now = Instant::now();
            if done.iter().all(|&d| d) || now >= deadline {
                break;
            }
            // A shard's reply unparks this thread.
            std::thread::park_timeout(deadline - now);
        }
        (0..done.len()).filter(|&i| !done[i]).collect()
    }

    fn reload(&mut self) -> Reply {
        crate::notify::reloading();
        let result = self.try_reload();
        crate::notify::notify("READY=1");
        match &result {
            Ok(_) => log::info!("reload: generation {} in force", self.generation),
            Err(e) => log::error!("reload rejected, the running config stays: {e}"),
        }
        let outcome = result
            .as_ref()
            .map(|_| self.generation)
            .map_err(Clone::clone);
        if outcome.is_err() {
            self.reloads_failed += 1;
        }
        self.last_reload = Some((SystemTime::now(), outcome));
        result
    }

    fn try_reload(&mut self) -> Reply {
        let path = self.snapshot.config.path.clone();
        let text = Config::read(&path).map_err(|e| e.to_string())?;
        self.seen.clone_from(&text);
        let (parsed, files) = Config::parse_reading(&path, &text);
        self.seen_files = files;
        let mut config = parsed.map_err(|e| e.to_string())?;
        let restart = self.keep_start_only(&mut config)?;

        // Listeners: the same name and address stay open as they are.
        let workers = self.shards.len();
        let removed: Vec<String> = self
            .listeners
            .iter()
            .filter(|b| {
                !config
                    .listeners
                    .iter()
                    .any(|l| l.name == b.name && l.bind == b.bind)
            })
            .map(|b| b.name.clone())
            .collect();
        let mut added = Vec::new();
        let mut listen: Vec<Vec<(String, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for l in &config.listeners {
            // A draining proxy accepts nothing: it binds nothing new.
            if self.draining
                || self
                    .listeners
                    .iter()
                    .any(|b| b.name == l.name && b.bind == l.bind)
            {
                continue;
            }
            let (addr, sockets) =
                bind_all(&l.name, l.bind, workers).map_err(|e| format!("{e:#}"))?;
            if self.steered {
                steer(&sockets).map_err(|e| {
                    format!(
                        "listener '{}': cannot attach the client-ip steering program: {e}",
                        l.name
                    )
                })?;
            }
            let fds = sockets
                .iter()
                .map(|s| s.try_clone().map(OwnedFd::from))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| format!("listener '{}': {e}", l.name))?;
            for (shard, sock) in listen.iter_mut().zip(sockets) {
                shard.push((l.name.clone(), sock));
            }
            added.push(Bound {
                name: l.name.clone(),
                bind: l.bind,
                addr,
                fds,
            });
        }

        let mut compiled = Snapshot::compile(config);
        compiled.carry_limits(&self.snapshot);
        let snapshot = Arc::new(compiled);
        for w in &snapshot.warnings {
            log::warn!("config: {w}");
        }
        let generation = self.generation + 1;
        let mut unsent = Vec::new();
        for (i, (s, listen)) in self.shards.iter().zip(listen).enumerate() {
            let msg = ToShard::Reload {
                snapshot: snapshot.clone(),
                generation,
                listen,
                unlisten: removed.clone(),
            };
            if let Err(e) = send(&s.mailbox, msg) {
                log::error!("reload: shard {i}: {e}");
                unsent.push(i);
            }
        }
        // The shards that have it run it: it is the generation in force.
        let mut late = self.collect(|i, reply| {
            unsent.contains(&i) || matches!(reply, FromShard::Reloaded(g) if g == generation)
        });
        late.extend(unsent);
        self.generation = generation;
        self.snapshot = snapshot.clone();
        // After the shards have the new pools: the checker sends every
        // endpoint's state, which lands behind the reload in each mailbox.
        if let Some(h) = &self.health {
            h.reconfigure(&snapshot.config.upstreams);
        }
        self.listeners.retain(|b| !removed.contains(&b.name));
        for b in &added {
            let l = snapshot.config.listeners.iter().find(|l| l.name == b.name);
            log::info!(
                "listener '{}' on {}://{} (added by reload)",
                b.name,
                l.map_or("http", scheme),
                b.addr
            );
        }
        for name in &removed {
            log::info!("listener '{name}' closed (removed by reload)");
        }
        self.listeners.extend(added);
        if !late.is_empty() {
            log::warn!(
                "reload: shards {late:?} had not taken generation {generation} within {SHARD_REPLY:?}"
            );
        }
        Ok(json!({
            "generation": generation,
            "warnings": snapshot.warnings,
            "restart_needed": restart,
            "listeners": self.listeners.iter().map(|b| json!({
                "name": b.name, "addr": b.addr.to_string(),
            })).collect::<Vec<_>>(),
            "late_shards": late,
        }))
    }

    /// Settings a running proxy cannot change keep their running values in
    /// `config`; each one that differs is named, for a restart to apply.
    fn keep_start_only(&self, config: &mut Config) -> Result<Vec<String>, String> {
        let running = &self.snapshot.config;
        let mut restart = Vec::new();
        let mut keep = |key: &str, new: String, old: String| {
            if new != old {
                restart.push(format!("{key}: {old} -> {new} (needs a restart)"));
            }
        };
        keep(
            "server.workers",
            config.server.workers.to_string(),
            running.server.workers.to_string(),
        );
        keep(
            "server.pin_cores",
            config.server.pin_cores.to_string(),
            running.server.pin_cores.to_string(),
        );
        keep(
            "server.admin_socket",
            format!("{:?}", config.server.admin_socket),
            format!("{:?}", running.server.admin_socket),
        );
        keep(
            "limits.buffer_size",
            config.limits.buffer_size.0.to_string(),
            running.limits.buffer_size.0.to_string(),
        );
        keep(
            "limits.max_buffer_bytes",
            config.limits.max_buffer_bytes.0.to_string(),
            running.limits.max_buffer_bytes.0.to_string(),
        );
        keep(
            "server.steer",
            format!("{:?}", config.server.steer),
            format!("{:?}", running.server.steer),
        );
        config.server.workers = running.server.workers;
        config.server.pin_cores = running.server.pin_cores;
        config.server.steer = running.server.steer;
        config.server.admin_socket = running.server.admin_socket.clone();
        config.limits.buffer_size = running.limits.buffer_size;
        config.limits.max_buffer_bytes = running.limits.max_buffer_bytes;
        keep_metrics(&mut restart, &mut config.metrics, &running.metrics);
        if config.access_log != running.access_log {
            restart.push(format!(
                "access_log.path: {:?} -> {:?} (needs a restart)",
                running.access_log, config.access_log
            ));
            config.access_log = running.access_log.clone();
        }
        let (header, buffer) = (
            config.limits.max_header_bytes.0,
            config.limits.buffer_size.0,
        );
        if header > buffer {
            return Err(config.warning(
                "limits.max_header_bytes",
                format!(
                    "{header} must not exceed the running limits.buffer_size ({buffer}), which only a restart changes"
                ),
            ));
        }
        for r in &restart {
            log::warn!("reload: {r}");
        }
        Ok(restart)
    }

    /// With `server.watch_config`: reloads when the file has changed, or a
    /// certificate, key or CA file it names.
    fn watch(&mut self) {
        if !self.snapshot.config.server.watch_config {
            return;
        }
        // Missing for a moment while an editor replaces it: looked at again
        // on the next tick.
        let Ok(text) = std::fs::read_to_string(&self.snapshot.config.path) else {
            return;
        };
        if text != self.seen {
            log::info!("config file changed: reloading");
            let _ = self.reload();
        } else if let Some(file) = self.seen_files.changed() {
            log::info!("{} changed: reloading", file.display());
            let _ = self.reload();
        }
    }

    /// Lets go of this thread's copies of the listening sockets: once the
    /// shards stop accepting, the sockets close (unless a process that took
    /// them over holds them), and new connections are refused rather than
    /// left in a queue nobody reads.
    fn close_listeners(&mut self) {
        for b in &mut self.listeners {
            b.fds.clear();
        }
    }

    /// Drains every shard within the drain timeout and joins them.
    fn stop(&mut self) {
        if let Some(h) = self.health.take() {
            h.stop();
        }
        self.close_listeners();
        let limit = self.snapshot.config.server.drain_timeout.0;
        for s in &self.shards {
            if let Err(e) = send(&s.mailbox, ToShard::Stop(limit)) {
                log::warn!("{e}; it stops with the process");
            }
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
        // The shards have handed over their last lines.
        if let Some(log) = self.access_log.take() {
            log.stop();
        }
    }
}

/// Sends to a shard, retrying with back-off for up to a second while its
/// queue is full (a shard handles its messages as they come: a full queue
/// means it is stuck or gone).
fn send(mailbox: &Mailbox, mut msg: ToShard) -> Result<(), String> {
    let mut wait = Duration::from_millis(1);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match mailbox.send(msg) {
            Ok(()) => return Ok(()),
            Err(back) if Instant::now() < deadline => {
                msg = back;
                // The control thread's own back-off; no shard waits on it.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(100));
            }
            Err(_) => return Err("a shard's queue stayed full for 1s".into()),
        }
    }
}

/// How a listener's address is written in the log.
fn scheme(l: &crate::config::Listener) -> &'static str {
    match l.tls {
        Some(_) => "https",
        None => "http",
    }
}

/// Binds `addr` once per shard (SO_REUSEPORT); a port 0 is chosen by the
/// first bind and shared by the rest.
fn bind_all(
    name: &str,
    mut addr: SocketAddr,
    workers: usize,
) -> anyhow::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let sock = bind(addr).with_context(|| format!("listener '{name}': cannot bind {addr}"))?;
        addr = sock.local_addr()?;
        sockets.push(sock);
    }
    Ok((addr, sockets))
}

/// Attaches to a listener's reuseport group (its sockets, one per shard,
/// bound in shard order) a classic BPF program that picks the socket from
/// the client's source address: IPv4's 32 bits, or IPv6's four words
/// xored, modulo the shard count. Every connection of one address then
/// reaches the same shard.
fn steer(sockets: &[std::net::TcpListener]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    let Some(first) = sockets.first() else {
        return Ok(());
    };
    let v6 = first.local_addr()?.is_ipv6();
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let net = libc::SKF_NET_OFF as u32;
    let load = |offset: u32| {
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            net.wrapping_add(offset),
        )
    };
    let mut prog = Vec::new();
    if v6 {
        // The source address is bytes 8..24 of the IPv6 header.
        prog.push(load(8));
        for offset in [12, 16, 20] {
            prog.push(op(libc::BPF_MISC | libc::BPF_TAX, 0));
            prog.push(load(offset));
            prog.push(op(libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X, 0));
        }
    } else {
        // Bytes 12..16 of the IPv4 header.
        prog.push(load(12));
    }
    prog.push(op(
        libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
        sockets.len() as u32,
    ));
    prog.push(op(libc::BPF_RET | libc::BPF_A, 0));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, both alive for the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::setsockopt(
            first.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// The process's open-file limit (RLIMIT_NOFILE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: u64,
    pub hard: u64,
}

impl FileLimit {
    pub fn get() -> std::io::Result<FileLimit> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` into `lim`, which outlives the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLimit {
            soft: lim.rlim_cur,
            hard: lim.rlim_max,
        })
    }

    /// Raises the soft limit to the hard one: every client and upstream
    /// connection is a descriptor, and the usual soft limit (1024) is far
    /// below what `server.max_connections` allows. Only the hard limit,
    /// set by whoever starts ringway (`ulimit -Hn`, systemd's
    /// `LimitNOFILE=`), bounds the proxy. Returns the limit as it now is.
    pub fn raise() -> std::io::Result<FileLimit> {
        let limit = FileLimit::get()?;
        if limit.soft >= limit.hard {
            return Ok(limit);
        }
        let raised = libc::rlimit {
            rlim_cur: limit.hard,
            rlim_max: limit.hard,
        };
        // SAFETY: setrlimit reads one `rlimit` from `raised`, which outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        FileLimit::get()
    }

    /// Client connections all shards together may hold: a descriptor each,
    /// and a second one while a request is proxied.
    pub fn client_connections(config: &Config) -> u64 {
        let conns = config
            .workers()
            .saturating_mul(config.server.max_connections);
        u64::try_from(conns).unwrap_or(u64::MAX)
    }
}

/// One histogram as an HdrHistogram interval log (V2, compressed, base64),
/// the interval running from `since` to now; values in µs, the log's
/// max-value column in ms.
fn interval_log(h: &hdrhistogram::Histogram<u64>, since: SystemTime) -> Result<String, String> {
    use hdrhistogram::serialization::V2DeflateSerializer;
    use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let length = SystemTime::now().duration_since(since).unwrap_or_default();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("ringway latency log, values in microseconds")
        .with_start_time(since)
        .with_base_time(since)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| e.to_string())?;
    log.write_histogram(h, Duration::ZERO, length, None)
        .map_err(|e| format!("{e:?}"))?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// The metrics endpoint is bound at start: a change waits for a restart.
fn keep_metrics(
    restart: &mut Vec<String>,
    new: &mut crate::config::Metrics,
    running: &crate::config::Metrics,
) {
    let changed = [
        (
            "listen",
            format!("{:?}", running.listen),
            format!("{:?}", new.listen),
        ),
        ("path", running.path.clone(), new.path.clone()),
        (
            "histogram_dir",
            format!("{:?}", running.histogram_dir),
            format!("{:?}", new.histogram_dir),
        ),
        (
            "histogram_interval",
            format!("{:?}", running.histogram_interval),
            format!("{:?}", new.histogram_interval),
        ),
        (
            "histogram_keep",
            running.histogram_keep.to_string(),
            new.histogram_keep.to_string(),
        ),
        (
            "histogram_file_bytes",
            running.histogram_file_bytes.to_string(),
            new.histogram_file_bytes.to_string(),
        ),
    ];
    for (key, old, now) in changed {
        if old != now {
            restart.push(format!("metrics.{key}: {old} -> {now} (needs a restart)"));
        }
    }
    *new = running.clone();
}
