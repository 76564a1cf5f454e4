//! The admin socket: a Unix socket (mode 0600) that `ringway ctl` talks to.
//!
//! The protocol is one JSON request line, one JSON reply line, then the
//! server closes:
//!
//! ```text
//! → {"command":"status"}
//! ← {"ok":true,"result":{...}}
//! ← {"ok":false,"error":"unknown command \"x\"; commands: status, reload, config, drain, stop"}
//! ```
//!
//! Each client is served on a thread of its own, at most `MAX_CLIENTS` at a
//! time, with a deadline on every read and write: a slow or silent client
//! holds only its own thread, never the control thread.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::control::{Command, ControlHandle};

/// The longest request line taken.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Admin clients served at once; more are told so and closed.
const MAX_CLIENTS: usize = 16;
/// A client's time to send its request, and to take the reply.
const CLIENT_IO: Duration = Duration::from_secs(5);
/// How long a command may take (a reload waits for every shard).
const COMMAND: Duration = Duration::from_secs(30);

/// The socket, bound and not yet served.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// The socket while it is served.
pub struct AdminServer {
    path: PathBuf,
    closing: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    /// Clients being served.
    clients: Arc<AtomicUsize>,
    /// The listening socket, to shut down if its file has gone (a connect
    /// can then not wake the accept).
    socket: Option<std::os::fd::OwnedFd>,
}

impl AdminSocket {
    /// Binds `path`. A socket file left by a run that crashed is replaced;
    /// one that a running process answers on is not.
    pub fn open(path: &Path) -> anyhow::Result<AdminSocket> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "admin socket {}: another process is listening on it",
                    path.display()
                );
            }
            std::fs::remove_file(path).with_context(|| {
                format!(
                    "admin socket {}: cannot remove the stale file",
                    path.display()
                )
            })?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("admin socket {}: cannot bind", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("admin socket {}: cannot set mode 0600", path.display()))?;
        log::info!("admin socket on {}", path.display());
        Ok(AdminSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn serve(self, control: ControlHandle) -> std::io::Result<AdminServer> {
        let closing = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(AtomicUsize::new(0));
        let serving = clients.clone();
        let flag = closing.clone();
        let socket = self
            .listener
            .try_clone()
            .ok()
            .map(std::os::fd::OwnedFd::from);
        let thread = std::thread::Builder::new()
            .name("ringway-admin".into())
            .spawn(move || {
                for stream in self.listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let busy = clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS;
                    let (control, clients) = (control.clone(), clients.clone());
                    let spawned = std::thread::Builder::new()
                        .name("ringway-admin-client".into())
                        .spawn(move || {
                            client(stream, &control, busy);
                            clients.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        log::warn!("admin socket: cannot start a thread for a client");
                    }
                }
            })?;
        Ok(AdminServer {
            path: self.path,
            closing,
            thread,
            clients: serving,
            socket,
        })
    }
}

impl AdminServer {
    /// Stops serving and removes the socket file. Replies on their way
    /// (the one to `stop` among them) are given a second to go out.
    pub fn close(self) {
        self.closing.store(true, Ordering::Release);
        // Wakes the blocked accept, which then sees the flag; if the file
        // is gone, shutting the socket down does.
        if UnixStream::connect(&self.path).is_err()
            && let Some(socket) = &self.socket
        {
            use std::os::fd::AsRawFd;
            // SAFETY: shutdown on a socket this server owns, open for the call.
            unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.path);
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.clients.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
}

fn client(stream: UnixStream, control: &ControlHandle, busy: bool) {
    let _ = stream.set_write_timeout(Some(CLIENT_IO));
    let reply = if busy {
        error(format!(
            "busy: {MAX_CLIENTS} admin clients already connected"
        ))
    } else {
        match read_request(&stream) {
            Ok(line) if is_handover(&line) => {
                // The reply goes with the listening sockets attached.
                let (reply, fds) = match control.handover(COMMAND) {
                    Ok((result, fds)) => (json!({ "ok": true, "result": result }), fds),
                    Err(e) => (error(e), Vec::new()),
                };
                if let Err(e) = crate::handover::send(&stream, &reply, &fds) {
                    log::error!("handover: {e}");
                }
                return;
            }
            Ok(line) => answer(&line, control),
            Err(e) => error(e),
        }
    };
    let mut w = &stream;
    let _ = writeln!(w, "{reply}");
}

fn is_handover(line: &str) -> bool {
    serde_json::from_str::<Value>(line.trim())
        .ok()
        .and_then(|v| Command::from_request(&v).ok())
        == Some(Command::Handover)
}

/// The request line, read within `CLIENT_IO` in all: a client that sends a
/// byte at a time cannot hold its thread longer than one that sends nothing.
fn read_request(stream: &UnixStream) -> Result<String, String> {
    let deadline = Instant::now() + CLIENT_IO;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    let mut r = stream;
    let mut ended = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no whole request line within {CLIENT_IO:?}"));
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = match r.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("no whole request line within {CLIENT_IO:?}"));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        let got = &buf[..n];
        if let Some(end) = memchr::memchr(b'\n', got) {
            line.extend_from_slice(&got[..end]);
            ended = true;
            break;
        }
        line.extend_from_slice(got);
        if line.len() > MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
        if n == 0 {
            break;
        }
    }
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    if line.is_empty() && !ended {
        return Err("empty request: send one JSON line, {\"command\":\"status\"}".into());
    }
    String::from_utf8(line).map_err(|_| "request is not UTF-8".into())
}

/// The reply line to one request line.
pub fn answer(line: &str, control: &ControlHandle) -> Value {
    let request: Value = match serde_json::from_str(line.trim()) {
        Ok(v) => v,
        Err(e) => return error(format!("request is not JSON: {e}")),
    };
    let command = match Command::from_request(&request) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    match control.ask(command, COMMAND) {
        Ok(result) => json!({ "ok": true, "result": result }),
        Err(e) => error(e),
    }
}

fn error(message: String) -> Value {
    json!({ "ok": false, "error": message })
}
