//! Zero-downtime binary upgrade: the listening sockets move from the
//! running process to a new one, never re-bound, so no connection waiting
//! in an accept queue is reset.
//!
//! `ringway --upgrade` (the new process) asks the running one over its
//! admin socket: `{"command":"handover"}`. The reply line comes with every
//! listening socket attached (SCM_RIGHTS), listener by listener, one per
//! shard in shard order (the order of their reuseport group, which any
//! steering program relies on). The new process starts its shards on them,
//! then sends `stop`: the old one closes its admin socket, stops accepting
//! (the sockets stay open, held by the new process) and drains. Then the
//! new process opens its own admin socket and metrics listener.
//!
//! If the new process fails before it sends `stop`, the old one has lost
//! nothing: it goes on serving on the same sockets.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde_json::{Value, json};

/// The most descriptors one handover carries (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// The sockets taken over, by listener name, one per shard in shard order.
pub struct Inherited {
    pub workers: usize,
    /// The sockets carry the client-ip steering program.
    pub steered: bool,
    pub listeners: Vec<(String, Vec<TcpListener>)>,
}

impl Inherited {
    /// The sockets of listener `name`, if the old process had as many as
    /// `workers` bound where `bind` says (any port, for port 0).
    pub fn take(
        &mut self,
        name: &str,
        bind: SocketAddr,
        workers: usize,
    ) -> Option<Vec<TcpListener>> {
        let i = self.listeners.iter().position(|(n, s)| {
            let at = s.first().and_then(|s| s.local_addr().ok());
            n == name
                && s.len() == workers
                && at.is_some_and(|a| {
                    a.ip() == bind.ip() && (bind.port() == 0 || a.port() == bind.port())
                })
        })?;
        Some(self.listeners.remove(i).1)
    }
}

/// Old side: writes the reply line with the descriptors attached.
pub fn send(stream: &UnixStream, reply: &Value, fds: &[OwnedFd]) -> std::io::Result<()> {
    let line = format!("{reply}\n");
    let borrowed: Vec<BorrowedFd> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(std::io::Error::other(
            "too many listening sockets to hand over",
        ));
    }
    let sent = sendmsg(
        stream,
        &[IoSlice::new(line.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    // The descriptors went with the first byte; the rest is plain.
    (&*stream).write_all(&line.as_bytes()[sent..])
}

/// New side: asks the process on `admin` for its sockets.
pub fn receive(admin: &Path) -> anyhow::Result<Inherited> {
    let stream = UnixStream::connect(admin).with_context(|| {
        format!(
            "--upgrade: no running ringway answers on {}",
            admin.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&stream).write_all(b"{\"command\":\"handover\"}\n")?;
    let mut data = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    let mut line = data[..got.bytes].to_vec();
    while !line.ends_with(b"\n") {
        let mut more = [0u8; 4096];
        let n = (&stream).read(&mut more)?;
        if n == 0 {
            bail!("--upgrade: the running ringway closed before its whole reply");
        }
        line.extend_from_slice(&more[..n]);
    }
    let reply: Value = serde_json::from_slice(&line).context("--upgrade: a malformed reply")?;
    if reply["ok"] != true {
        bail!("--upgrade: the running ringway refused: {}", reply["error"]);
    }
    let r = &reply["result"];
    let workers = r["workers"].as_u64().unwrap_or(0) as usize;
    let steered = r["steered"] == true;
    let mut fds = fds.into_iter();
    let mut listeners = Vec::new();
    for l in r["listeners"].as_array().into_iter().flatten() {
        let name = l["name"].as_str().unwrap_or_default().to_string();
        let sockets: Vec<TcpListener> = fds.by_ref().take(workers).map(TcpListener::from).collect();
        if sockets.len() != workers {
            bail!("--upgrade: fewer sockets than listeners × shards came with the reply");
        }
        for s in &sockets {
            s.set_nonblocking(true)?;
        }
        listeners.push((name, sockets));
    }
    Ok(Inherited {
        workers,
        steered,
        listeners,
    })
}

/// New side, once its shards run: tells the old process to stop, and waits
/// (at most `wait`) until its admin socket is gone, so this one can open
/// it.
pub fn retire(admin: &Path, wait: Duration) -> anyhow::Result<()> {
    let mut stream = UnixStream::connect(admin)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"{\"command\":\"stop\"}\n")?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    // The old process removes its socket file as it stops; a file nobody
    // answers on after `wait` is stale, and opening ours replaces it.
    let deadline = Instant::now() + wait;
    while admin.exists() {
        if Instant::now() >= deadline {
            if UnixStream::connect(admin).is_err() {
                break;
            }
            bail!(
                "--upgrade: the old ringway still answers on {} after {wait:?}",
                admin.display()
            );
        }
        // Not a shard: a short sleep keeps this wait off the cores.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Old side: what the reply says about the sockets that come with it.
pub fn describe(workers: usize, steered: bool, listeners: &[(String, String)]) -> Value {
    json!({
        "workers": workers,
        "steered": steered,
        "listeners": listeners.iter().map(|(name, addr)| json!({ "name": name, "addr": addr })).collect::<Vec<_>>(),
    })
}
