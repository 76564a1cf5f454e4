//! The control side: compiles the config, binds every shard's listening
//! sockets, starts the shard threads and stops them. `Server` is used by
//! the binary (with signals) and by tests (in-process). The binary also
//! raises the open-file limit here before it starts the shards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::shard::{self, Mailbox, ShardSpec, ToShard};
use crate::snapshot::Snapshot;

pub struct Server {
    shards: Vec<(JoinHandle<()>, Arc<Mailbox>)>,
    addrs: Vec<(String, SocketAddr)>,
    snapshot: Arc<Snapshot>,
}

impl Server {
    /// Binds every listener once per shard and starts the shards. A bind
    /// to port 0 picks a port for the first shard; the others share it.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        let workers = config.workers();
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

        let mut per_shard: Vec<Vec<std::net::TcpListener>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for l in &cfg.listeners {
            let mut addr = l.bind;
            for sockets in per_shard.iter_mut() {
                let sock = bind(addr)
                    .with_context(|| format!("listener '{}': cannot bind {addr}", l.name))?;
                addr = sock.local_addr()?;
                sockets.push(sock);
            }
            log::info!("listener '{}' on http://{addr} ({workers} shards)", l.name);
            addrs.push((l.name.clone(), addr));
        }

        let mut shards = Vec::with_capacity(workers);
        for (id, listeners) in per_shard.into_iter().enumerate() {
            let mailbox = Mailbox::new();
            let spec = ShardSpec {
                id,
                core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
                snapshot: snapshot.clone(),
                listeners,
                mailbox: mailbox.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("ringway-shard-{id}"))
                .spawn(move || {
                    if let Err(e) = shard::run(spec) {
                        log::error!("shard {id} stopped: {e}");
                    }
                })?;
            shards.push((handle, mailbox));
        }
        Ok(Server {
            shards,
            addrs,
            snapshot,
        })
    }

    /// The address of each listener, by name, as bound (port 0 resolved).
    pub fn addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Stops accepting, lets in-flight requests finish within the drain
    /// timeout, and joins every shard.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let limit = self.snapshot.config.server.drain_timeout.0;
        for (_, mailbox) in &self.shards {
            if mailbox.send(ToShard::Drain(limit)).is_err() {
                log::warn!("a shard's mailbox is full; it will stop with its thread");
            }
        }
        for (handle, _) in self.shards.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
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
