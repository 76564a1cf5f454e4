//! Binary upgrade through the real binary: a second ringway takes over the
//! listening sockets of the first (`--upgrade`) while clients keep sending.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;
use support::*;

fn socket(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringway-{}-{name}.sock", std::process::id()))
}

/// A config with an admin socket and a metrics listener on a fixed port
/// (which the new process can bind only once the old one let it go).
fn config(name: &str, workers: usize, metrics: SocketAddr) -> std::path::PathBuf {
    write_config(
        &format!("{name}-{workers}.toml"),
        &format!(
            "[server]\nworkers = {workers}\npin_cores = false\ndrain_timeout = \"3s\"\nadmin_socket = \"{}\"\n\n\
             [metrics]\nlisten = \"{metrics}\"\n\n\
             [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"all\"\nprefix = \"/\"\nrespond = {{ status = 200, body = \"ok\" }}\n",
            socket(name).display()
        ),
    )
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn pid_serving(name: &str) -> u64 {
    let out = Command::new(BIN)
        .args(["ctl", "--json", "--socket"])
        .arg(socket(name))
        .arg("status")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["result"]["pid"].as_u64().unwrap()
}

/// One GET on a new connection: true if it was answered 200.
fn fresh_get(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    if s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    s.read_to_string(&mut text).is_ok() && text.starts_with("HTTP/1.1 200")
}

#[test]
fn an_upgrade_under_load_fails_no_request_and_resets_no_connection() {
    let name = "upgrade";
    let metrics = free_port();
    let path = config(name, 2, metrics);
    let (old, addr) = run(&path);
    let old_pid = old.0.as_ref().unwrap().id();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..16 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut answered_here = 0;
            while !stop.load(Ordering::Relaxed) {
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                match c.read(false) {
                    Some(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        answered_here += 1;
                    }
                    // A keep-alive connection the old process closed as it
                    // drained, before this request reached it: an HTTP
                    // client opens another and sends it again.
                    None if answered_here > 0 => {
                        c = Client::connect(addr);
                        answered_here = 0;
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {:?}", other.map(|r| r.head));
                        c = Client::connect(addr);
                    }
                }
            }
        }));
    }
    // A stream of new connections, one request each.
    {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fresh_get(addr) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("a new connection failed");
                }
            }
        }));
    }
    let wait_for = |n: u64| {
        let until = ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + IO_TIMEOUT;
        while ok.load(Ordering::Relaxed) < until {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::yield_now();
        }
    };
    wait_for(3000);

    // The new process: started, it takes over and retires the old one.
    let (new, _, _log) = spawn(proxy_command(&path).arg("--upgrade"));
    let new = Running(Some(new));
    let mut old = old;
    let status = old.0.take().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "the old process exits 0 after its drain: {status:?}"
    );
    wait_for(3000);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let pid = pid_serving(name);
    assert_ne!(pid, u64::from(old_pid));
    assert_eq!(pid, u64::from(new.0.as_ref().unwrap().id()));
    // The new process took over the metrics listener too.
    let mut s = TcpStream::connect(metrics).expect("the metrics listener is open");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let name = "failed-upgrade";
    let metrics = free_port();
    let (old, addr) = run(&config(name, 2, metrics));
    // A new process that cannot take over: another shard count.
    let out = Command::new(BIN)
        .args(["--upgrade", "--config"])
        .arg(config(name, 1, metrics))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.workers needs a restart"), "{err}");
    assert!(fresh_get(addr));
    assert_eq!(pid_serving(name), u64::from(old.0.as_ref().unwrap().id()));
}
