//! The control thread through the real binary: reloads under load (from
//! `ringway ctl`, SIGHUP and the file watch), listeners added and removed,
//! drain and stop, and the admin socket's protocol.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// One test of this file at a time: each runs a debug proxy under load of
/// its own (32 keep-alive clients, a stream of new connections). Two side
/// by side took 142 and 297 s in two `.ci/run`s on a busy 2-core machine,
/// where all six one at a time take seconds.
// A test's lock, not a shard's.
#[allow(clippy::disallowed_types)]
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A config with an admin socket, two shards, upstream "o" at `origin`
/// behind `/keep`, and `extra` at the end (more routes, listeners).
fn config(name: &str, origin: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nworkers = 2\npin_cores = false\ndrain_timeout = \"2s\"\nadmin_socket = \"{}\"\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{origin}\"]\n\n\
         [[route]]\nname = \"keep\"\nprefix = \"/keep\"\nupstream = \"o\"\n\n{extra}",
        socket_path(name).display()
    )
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ringway-{}-{name}.sock", std::process::id()))
}

fn route(name: &str, prefix: &str, body: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nrespond = {{ status = 200, body = \"{body}\" }}\n\n"
    )
}

/// `ringway ctl` with the socket of config `name`: (exit ok, the JSON reply).
fn ctl(name: &str, command: &str) -> (bool, Value) {
    let out = Command::new(BIN)
        .args(["ctl", "--json", "--socket"])
        .arg(socket_path(name))
        .arg(command)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reply = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "ctl {command}: {e}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), reply)
}

/// One JSON line over the admin socket, as any client might send it.
fn admin_raw(name: &str, request: &[u8]) -> Value {
    let mut s = UnixStream::connect(socket_path(name)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// A command over the admin socket, as `ctl --json` sends it, without
/// starting a process (the tests that loop use this; the ctl test runs the
/// binary).
fn admin(name: &str, command: &str) -> (bool, Value) {
    let reply = admin_raw(name, format!("{{\"command\":\"{command}\"}}\n").as_bytes());
    (reply["ok"] == true, reply)
}

fn get_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = get(addr, path);
    (r.status, r.text())
}

/// Keep-alive clients that send GET /keep in a loop until stopped, and
/// count what came back.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    while !stop.load(Ordering::Relaxed) {
                        c.send(b"GET /keep HTTP/1.1\r\nHost: t\r\n\r\n");
                        match c.read(false) {
                            Some(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                c = Client::connect(addr);
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Waits until the clients have had `n` more answers.
    fn wait_for(&self, n: u64) {
        let until = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.ok.load(Ordering::Relaxed) < until {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::yield_now();
        }
    }

    /// Stops the clients: (answered, failed).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn stop(mut running: Running, name: &str) {
    let (ok, _) = ctl(name, "stop");
    assert!(ok);
    let status = running.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !socket_path(name).exists(),
        "the admin socket is removed at exit"
    );
}

#[test]
fn fifty_reloads_half_invalid_under_load_fail_no_request() {
    let _turn = one_at_a_time();
    let name = "reloads";
    let origin = Origin::start(|_| ok("kept"));
    let path = write_config(&format!("{name}.toml"), &config(name, origin.addr, ""));
    let (child, addr) = run(&path);
    let load = Load::start(addr, 32);
    load.wait_for(2000);
    let connects = origin.connections.load(Ordering::SeqCst);

    for k in 1..=50 {
        let good = k % 2 == 0;
        let text = if good {
            config(
                name,
                origin.addr,
                &route(&format!("r{k}"), &format!("/new{k}"), &format!("v{k}")),
            )
        } else {
            config(
                name,
                origin.addr,
                "[[route]]\nname = \"bad\"\nprefix = \"/bad\"\nupstream = \"nowhere\"\n",
            )
        };
        std::fs::write(&path, text).unwrap();
        let (ok, reply) = admin(name, "reload");
        if good {
            assert!(ok, "reload {k}: {reply}");
            assert_eq!(reply["result"]["generation"], k / 2, "{reply}");
            // The new route answers at once, the one it replaced is gone.
            assert_eq!(get_body(addr, &format!("/new{k}")), (200, format!("v{k}")));
            assert_eq!(get(addr, &format!("/new{}", k - 2)).status, 404);
        } else {
            assert!(!ok, "reload {k} of an invalid file: {reply}");
            let error = reply["error"].as_str().unwrap();
            assert!(
                error.contains(&format!("{}:", path.display())) && error.contains("route.upstream"),
                "the error names file, line and key: {error}"
            );
            // The running config stays.
            if k > 1 {
                assert_eq!(
                    get_body(addr, &format!("/new{}", k - 1)),
                    (200, format!("v{}", k - 1))
                );
            }
        }
        load.wait_for(100);
    }
    let (answered, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across reloads",
        answered + failed
    );
    let new_connects = origin.connections.load(Ordering::SeqCst) - connects;
    assert!(
        new_connects <= 8,
        "the unchanged upstream kept its pooled connections: {new_connects} new connections over 50 reloads"
    );
    let (_, status) = admin(name, "status");
    assert_eq!(status["result"]["generation"], 25);
    assert_eq!(status["result"]["last_reload"]["ok"], true);
    stop(child, name);
}

#[test]
fn listeners_come_and_go_with_reloads_and_the_others_never_refuse() {
    let _turn = one_at_a_time();
    let name = "listeners";
    let origin = Origin::start(|_| ok("kept"));
    let extra = "[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\n\n";
    let path = write_config(&format!("{name}.toml"), &config(name, origin.addr, ""));
    let (child, addr) = run(&path);

    // New connections to the unchanged listener all through the reloads.
    let stop_flag = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop_flag = stop_flag.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop_flag.load(Ordering::Relaxed) {
                let s =
                    TcpStream::connect(addr).expect("the unchanged listener refused a connection");
                drop(s);
                assert_eq!(get(addr, "/keep").status, 200);
                n += 1;
            }
            n
        })
    };

    for round in 0..5 {
        std::fs::write(&path, config(name, origin.addr, extra)).unwrap();
        let (ok, reply) = admin(name, "reload");
        assert!(ok, "{reply}");
        let listeners = reply["result"]["listeners"].as_array().unwrap();
        let added: SocketAddr = listeners
            .iter()
            .find(|l| l["name"] == "extra")
            .expect("the added listener is reported")["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            get_body(added, "/keep"),
            (200, "kept".into()),
            "round {round}"
        );

        std::fs::write(&path, config(name, origin.addr, "")).unwrap();
        let (ok, reply) = admin(name, "reload");
        assert!(ok, "{reply}");
        let refused = TcpStream::connect(added);
        assert!(
            refused.is_err(),
            "round {round}: the removed listener still accepts"
        );
    }
    stop_flag.store(true, Ordering::Relaxed);
    let probes = prober.join().unwrap();
    assert!(probes > 0);
    stop(child, name);
}

#[test]
fn drain_finishes_in_flight_requests_then_stop_exits_within_the_drain_timeout() {
    let _turn = one_at_a_time();
    let name = "drain";
    let origin = Origin::start(|_| {
        Reply::Delay(
            Duration::from_millis(300),
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec(),
        )
    });
    let path = write_config(&format!("{name}.toml"), &config(name, origin.addr, ""));
    let (child, addr) = run(&path);
    let mut idle = Client::connect(addr);
    assert_eq!(
        idle.send(b"GET /keep HTTP/1.1\r\nHost: t\r\n\r\n")
            .read(false)
            .unwrap()
            .status,
        200
    );

    let mut busy: Vec<Client> = (0..16).map(|_| Client::connect(addr)).collect();
    for c in &mut busy {
        c.send(b"GET /keep HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    while origin.seen().len() < 17 {
        std::thread::yield_now();
    }
    let (ok, reply) = ctl(name, "drain");
    assert!(ok, "{reply}");
    for c in &mut busy {
        let r = c.read(false).expect("an in-flight request completes");
        assert_eq!((r.status, r.text().as_str()), (200, "slow"));
        assert!(
            c.is_closed(),
            "after a drain a connection closes after its request"
        );
    }
    assert!(idle.is_closed(), "idle keep-alive connections are closed");
    assert!(
        TcpStream::connect(addr).is_err(),
        "a drained proxy accepts nothing"
    );
    let (_, status) = ctl(name, "status");
    assert_eq!(status["result"]["draining"], true, "{status}");

    stop(child, name);
}

#[test]
fn a_request_that_never_ends_holds_stop_for_the_drain_timeout_and_no_longer() {
    let _turn = one_at_a_time();
    let name = "hang";
    let origin = Origin::start(|_| Reply::Hang(Duration::from_secs(30)));
    let path = write_config(&format!("{name}.toml"), &config(name, origin.addr, ""));
    let (child, addr) = run(&path);
    let mut c = Client::connect(addr);
    c.send(b"GET /keep HTTP/1.1\r\nHost: t\r\n\r\n");
    while origin.seen().is_empty() {
        std::thread::yield_now();
    }
    let began = Instant::now();
    stop(child, name);
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "stop took {took:?}: drain_timeout is 2s"
    );
    assert!(
        c.read(false).is_none(),
        "the unfinished request's connection is closed"
    );
}

#[test]
fn every_ctl_command_round_trips_and_bad_admin_input_gets_an_error_line() {
    let _turn = one_at_a_time();
    let name = "ctl";
    let origin = Origin::start(|_| ok("kept"));
    let text = config(name, origin.addr, &route("home", "/", "home"));
    let path = write_config(&format!("{name}.toml"), &text);
    // A socket file left by a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(socket_path(name)).unwrap());
    assert!(socket_path(name).exists());
    let (child, addr) = run(&path);
    let mode = std::fs::metadata(socket_path(name))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(get(addr, "/keep").status, 200);

    let (ok, status) = ctl(name, "status");
    assert!(ok, "{status}");
    let r = &status["result"];
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["generation"], 0);
    assert_eq!(r["config"], path.display().to_string());
    assert_eq!(r["shards"].as_array().unwrap().len(), 2);
    assert_eq!(r["listeners"][0]["addr"], addr.to_string());
    let requests: u64 = r["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert!(requests >= 1, "{status}");

    let (ok, config_reply) = ctl(name, "config");
    assert!(ok);
    assert_eq!(config_reply["result"]["toml"], text);

    // A setting only a restart changes is named, and keeps its running value.
    std::fs::write(&path, text.replace("workers = 2", "workers = 3")).unwrap();
    let (ok, reload) = ctl(name, "reload");
    assert!(ok, "{reload}");
    assert_eq!(reload["result"]["generation"], 1);
    let restart = reload["result"]["restart_needed"].to_string();
    assert!(restart.contains("server.workers: 2 -> 3"), "{reload}");
    std::fs::write(&path, &text).unwrap();

    // The human form of status is a table with a row per shard.
    let out = Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(socket_path(name))
        .arg("status")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("generation 1") && table.lines().count() >= 4,
        "{table}"
    );

    // ctl finds the socket from the config, even while the file is broken.
    std::fs::write(&path, format!("{text}\n[[route]]\nname = 3\n")).unwrap();
    let out = Command::new(BIN)
        .args(["ctl", "--config"])
        .arg(&path)
        .arg("reload")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("`name`: invalid type"),
        "{err}"
    );
    std::fs::write(&path, &text).unwrap();

    // Bad input: an error line each, and the proxy stays up.
    let silent = UnixStream::connect(socket_path(name)).unwrap();
    for (request, says) in [
        (&b"not json\n"[..], "not JSON"),
        (b"{\"cmd\":\"status\"}\n", "no \"command\""),
        (b"{\"command\":\"explode\"}\n", "unknown command"),
        (b"\n", "not JSON"),
    ] {
        let reply = admin_raw(name, request);
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(reply["error"].as_str().unwrap().contains(says), "{reply}");
    }
    let reply = admin_raw(name, &vec![b'x'; 70 * 1024]);
    assert!(
        reply["error"].as_str().unwrap().contains("longer than"),
        "{reply}"
    );
    // A client that says nothing holds only its own thread.
    let (ok, _) = ctl(name, "status");
    assert!(ok, "a silent admin client stalled the others");
    drop(silent);
    let mut closed = UnixStream::connect(socket_path(name)).unwrap();
    closed.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    closed.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("empty request"), "{reply}");

    // A second ringway on the same socket is refused; the first goes on.
    let out = Command::new(BIN)
        .args(["--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(addr, "/").status, 200);

    let (ok, drain) = ctl(name, "drain");
    assert!(ok && drain["result"]["draining"] == true, "{drain}");
    stop(child, name);
}

#[test]
fn sighup_and_the_file_watch_reload() {
    let _turn = one_at_a_time();
    let name = "watch";
    let origin = Origin::start(|_| ok("kept"));
    let watch = "watch_config = true\n";
    let with_watch = |extra: &str| {
        config(name, origin.addr, extra).replacen("[server]\n", &format!("[server]\n{watch}"), 1)
    };
    let path = write_config(&format!("{name}.toml"), &with_watch(""));
    let (child, addr) = run(&path);
    assert_eq!(get(addr, "/w").status, 404);

    std::fs::write(&path, with_watch(&route("w", "/w", "watched"))).unwrap();
    wait_until(
        || get(addr, "/w").status == 200,
        "the watched file's change applies",
    );

    std::fs::write(&path, with_watch(&route("h", "/h", "hup"))).unwrap();
    let kill = Command::new("kill")
        .args(["-HUP", &child.0.as_ref().unwrap().id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_until(|| get(addr, "/h").status == 200, "SIGHUP reloads");
    assert_eq!(get(addr, "/w").status, 404);
    let (_, status) = ctl(name, "status");
    assert!(
        status["result"]["generation"].as_u64().unwrap() >= 2,
        "{status}"
    );
    stop(child, name);
}

/// Polls `cond` until it holds, for at most 10 s (a reload by signal or
/// watch has no reply to wait for; the file watch looks once a second).
fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::yield_now();
    }
}
