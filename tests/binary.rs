//! The real binary, end to end: `check`, config errors and warnings, a 1 GiB
//! body each way in bounded memory, a graceful SIGTERM, and running out of
//! file descriptors.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn runs_on_epoll_when_asked() {
    let origin = Origin::start(|s| ok(&format!("{} bytes", s.body_len)));
    let (mut child, addr, log) = start_with(
        &write_config("epoll.toml", &config_for(origin.addr)),
        &[("RINGWAY_DRIVER", "epoll")],
    );
    let mut drivers = Vec::new();
    while drivers.len() < 2 {
        let line = log
            .recv_timeout(Duration::from_secs(10))
            .expect("each shard logs its driver");
        if line.contains(" driver") {
            drivers.push(line);
        }
    }
    assert!(
        drivers.iter().all(|l| l.contains("epoll driver")),
        "{drivers:?}"
    );
    let mut c = Client::connect(addr);
    for _ in 0..3 {
        let resp = c
            .send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .read(false)
            .unwrap();
        assert_eq!(resp.text(), "5 bytes");
    }
    assert_eq!(get(addr, "/x").status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

fn config_for(origin: SocketAddr) -> String {
    format!(
        "[server]\nworkers = 2\n[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\
         [limits]\nmax_body_bytes = 0\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{origin}\"]\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n"
    )
}

/// `ringway check --config PATH`.
fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// An example config as `ringway check` should find it once its reader has
/// made its certificates (they are git-ignored): with no TLS listener the
/// file itself, else a copy beside self-signed certificates at the paths its
/// `tls` tables name.
fn with_certificates(path: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(path).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let pairs: Vec<&toml::Value> = table
        .get("listener")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("tls")?.get("certificates")?.as_array())
        .flatten()
        .collect();
    if pairs.is_empty() {
        return path.to_path_buf();
    }
    let name = path.file_name().unwrap().to_string_lossy();
    let copy = write_config(&format!("example-{name}"), &text);
    let dir = copy.parent().unwrap();
    for pair in pairs {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        for (file, pem) in [("cert", cert.pem()), ("key", key.serialize_pem())] {
            let at = dir.join(pair[file].as_str().unwrap());
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(at, pem).unwrap();
        }
    }
    copy
}

#[test]
fn check_prints_routes_and_accepts_the_example_configs() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check(&with_certificates(&path));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("route "), "{stdout}");
            assert!(!stdout.contains("warning"), "{stdout}");
            assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");
        }
    }
}

#[test]
fn config_errors_name_file_line_and_key() {
    let cases = [
        (
            "[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\n[server]\nworkerz = 2\n",
            ":6: `workerz`:",
            "unknown field",
        ),
        (
            "[[listener]]\nname = \"m\"\nbind = \"nowhere\"\n",
            ":3: `listener.bind`:",
            "not an address",
        ),
        (
            "[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n[timeouts]\nkeepalive_idle = \"forever\"\n",
            ":5: `keepalive_idle`:",
            "not a duration",
        ),
        (
            "[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\n[[route]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"ghost\"\n",
            ":8: `route.upstream`:",
            "no [[upstream]] named 'ghost'",
        ),
        (
            "[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n[limits]\nmax_headers = 10\nbuffer_size = \"4KiB\"\n",
            ":6: `limits.buffer_size`:",
            "limits.max_header_bytes (16384) must not exceed limits.buffer_size (4096)",
        ),
        (
            "[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n[limits]\nmax_body_bytes = \"10M\"\n",
            ":5: `max_body_bytes`:",
            "write 10MiB (powers of 1024) or 10MB (powers of 1000)",
        ),
    ];
    for (text, place, reason) in cases {
        let path = write_config("bad.toml", text);
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("{}{place}", path.display())),
            "{stderr}"
        );
        assert!(stderr.contains(reason), "{stderr}");
        // Running refuses the same file.
        let run = Command::new(BIN)
            .args(["--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1));
    }
}

#[test]
fn contradicting_limits_are_warnings_with_their_line() {
    let path = write_config(
        "contradict.toml",
        "[server]\nworkers = 1\nmax_connections = 20000\n\
         [[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"a\"\nprefix = \"/\"\nrespond = { status = 200 }\nset_host = \"x\"\n",
    );
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    let file = path.display();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings[0].starts_with(&format!("warning: {file}:3: `server.max_connections`: ")),
        "{stdout}"
    );
    assert!(
        warnings[1].starts_with(&format!("warning: {file}:11: `route.set_host`: ")),
        "{stdout}"
    );
}

#[test]
fn shadowed_route_is_a_warning() {
    let path = write_config(
        "shadow.toml",
        "[[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"a\"\nprefix = \"/x\"\nrespond = { status = 200 }\n\
         [[route]]\nname = \"b\"\nprefix = \"/x/\"\nrespond = { status = 201 }\n",
    );
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("warning: route 'b' (line 8) is shadowed by route 'a' (line 4)"),
        "{stdout}"
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn one_gib_each_way_in_bounded_memory() {
    const N: u64 = 1 << 30;
    let origin = Origin::start(|s| {
        if s.method == "GET" {
            Reply::Big(N)
        } else {
            ok("stored")
        }
    });
    let (mut child, addr) = start(&write_config("big.toml", &config_for(origin.addr)));

    let mut c = Client::connect(addr);
    c.send(format!("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {N}\r\n\r\n").as_bytes());
    let piece = big_piece();
    for _ in 0..N / piece.len() as u64 {
        c.s.write_all(&piece).unwrap();
    }
    assert_eq!(c.read(false).unwrap().text(), "stored");
    assert_eq!(origin.seen()[0].body_len, N);

    c.send(b"GET /down HTTP/1.1\r\nHost: h\r\n\r\n");
    // Read the head, then count the body without keeping it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains(&format!("Content-Length: {N}")));
    let mut left = N;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = c.s.read(&mut buf[..(left.min(1 << 20)) as usize]).unwrap();
        assert!(n > 0, "body cut short with {left} bytes left");
        left -= n as u64;
    }

    let peak = peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB: the body was not streamed in bounded memory"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let origin = Origin::start(|_| {
        Reply::Delay(
            Duration::from_millis(500),
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec(),
        )
    });
    let (mut child, addr) = start(&write_config("drain.toml", &config_for(origin.addr)));
    let mut idle = Client::connect(addr);
    assert_eq!(
        idle.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .read(false)
            .unwrap()
            .status,
        200
    );
    let mut busy = Client::connect(addr);
    busy.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n");
    // Wait until the origin has the request, then signal.
    while origin.seen().len() < 2 {
        std::thread::yield_now();
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let resp = busy.read(false).expect("the in-flight request completes");
    assert_eq!(resp.text(), "slow");
    assert!(idle.is_closed(), "idle keep-alive connections are closed");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

// ---- out of file descriptors ----

/// The open-file limit the proxy is started with: soft below hard, so the
/// start-up raise shows, and hard low enough to run out of.
const FD_SOFT: u64 = 32;
const FD_HARD: u64 = 64;

/// What the log said while the proxy ran out of descriptors.
struct Exhaustion {
    /// "accept failed" lines, from the first one to the proxy's exit.
    failures_logged: usize,
    /// How long that was.
    over: Duration,
}

/// Starts the proxy with RLIMIT_NOFILE at FD_SOFT/FD_HARD, opens twice
/// FD_HARD client connections and holds them while accepting fails, closes
/// them, then has every later client served, one after another and some at
/// once; the proxy must stay up without spinning and exit 0 on SIGTERM.
/// `name` names its config file: tests run at once, each with its origin.
fn run_out_of_descriptors(name: &str) -> Exhaustion {
    let origin = Origin::start(|_| ok("from origin"));
    let config = write_config(
        &format!("{name}.toml"),
        &format!(
            "[server]\nworkers = 1\npin_cores = false\n\
             [[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\nmax_per_endpoint = 4\n\
             [[route]]\nname = \"o\"\nprefix = \"/o\"\nupstream = \"o\"\n\
             [[route]]\nname = \"direct\"\nprefix = \"/\"\nrespond = {{ status = 200, body = \"direct\" }}\n",
            origin.addr
        ),
    );
    let lower_fd_limit = || {
        let limit = libc::rlimit {
            rlim_cur: FD_SOFT,
            rlim_max: FD_HARD,
        };
        // SAFETY: setrlimit reads `limit`, which outlives the call.
        match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    let mut cmd = proxy_command(&config);
    // SAFETY: between fork and exec the closure calls only setrlimit, which
    // is async-signal-safe, on a value it owns; it allocates nothing.
    unsafe { cmd.pre_exec(lower_fd_limit) };
    let (child, addr, log) = spawn(&mut cmd);
    let mut child = KillOnDrop(child);
    let pid = child.0.id();

    // Start-up raised the soft limit to the hard one, and said so.
    let startup: Vec<String> = log.try_iter().collect();
    assert!(
        startup.iter().any(|l| l.contains(&format!(
            "open-file limit: soft {FD_HARD} (raised from {FD_SOFT}), hard {FD_HARD}"
        ))),
        "{startup:#?}"
    );
    assert_eq!(open_file_limit(pid), (FD_HARD, FD_HARD));

    // More clients than descriptors: the kernel completes every handshake,
    // the proxy accepts until it has none left.
    let flood: Vec<TcpStream> = (0..2 * FD_HARD)
        .map(|_| TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap())
        .collect();
    let first_failure = wait_for_line(&log, "accept failed");
    let mut failures_logged = 1;

    // Out of descriptors for a while: alive, and not spinning on accept.
    let window = Duration::from_millis(1500);
    let cpu_before = cpu_time(pid);
    let watched = Instant::now();
    while let Some(left) = (watched + window).checked_duration_since(Instant::now()) {
        match log.recv_timeout(left) {
            Ok(line) => failures_logged += usize::from(line.contains("accept failed")),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the proxy exited"),
        }
    }
    let (cpu, watched) = (cpu_time(pid) - cpu_before, watched.elapsed());
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the proxy died out of descriptors"
    );
    assert!(
        cpu < watched / 4,
        "{cpu:?} of CPU in {watched:?} out of descriptors: the accept loop spins"
    );

    // The descriptors come back: every later client is served.
    drop(flood);
    for i in 0..3 * FD_HARD {
        let (path, body) = if i % 2 == 0 {
            ("/", "direct")
        } else {
            ("/o/x", "from origin")
        };
        let resp = get(addr, path);
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (200, body),
            "client {i}"
        );
    }
    let mut at_once: Vec<Client> = (0..FD_HARD / 4).map(|_| Client::connect(addr)).collect();
    for round in 0..2 {
        for (i, c) in at_once.iter_mut().enumerate() {
            let path = if i % 2 == 0 { "/" } else { "/o/y" };
            c.send(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        }
        for (i, c) in at_once.iter_mut().enumerate() {
            let resp = c.read(false).expect("a response");
            assert_eq!(resp.status, 200, "client {i} at once, round {round}");
        }
    }
    drop(at_once);
    assert!(child.0.try_wait().unwrap().is_none(), "the proxy died");

    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The log ends with the process: count every failure it reported.
    failures_logged += log.iter().filter(|l| l.contains("accept failed")).count();
    Exhaustion {
        failures_logged,
        over: first_failure.elapsed(),
    }
}

#[test]
fn out_of_descriptors_the_proxy_waits_and_then_serves_everyone() {
    let e = run_out_of_descriptors("fds-serve");
    assert!(e.failures_logged >= 1);
}

/// Fails on a shard that logs every failed accept (one per 50 ms back-off);
/// passes once the accept loop logs at most once a second.
#[test]
fn out_of_descriptors_is_logged_at_most_once_a_second() {
    let e = run_out_of_descriptors("fds-log");
    let bound = e.over.as_secs() as usize + 2;
    assert!(
        e.failures_logged <= bound,
        "{} \"accept failed\" lines in {:?}: more than one a second",
        e.failures_logged,
        e.over
    );
}

/// A proxy process that a failing test does not leave running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most 10 s) for a log line holding `text`; returns when it came.
fn wait_for_line(log: &mpsc::Receiver<String>, text: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(text) => return Instant::now(),
            Ok(_) => {}
            Err(e) => panic!("no log line with {text:?}: {e}"),
        }
    }
}

/// The soft and hard RLIMIT_NOFILE of a process.
fn open_file_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// User plus system CPU time a process has used, all its threads together.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses: utime is the
    // 14th field of the line, stime the 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Keep-alive connections that went quiet after a request give their
/// buffers back: the proxy's memory grows by a little per connection, not
/// by a 32 KiB buffer (about 38 KB each before), and what a burst used goes
/// back once the connections close.
#[test]
fn quiet_connections_cost_little_memory() {
    const CONNS: usize = 3000;
    // The test's own end of every connection is a descriptor too.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write `limit`, which outlives both calls.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    assert!(
        limit.rlim_cur as usize > CONNS + 100,
        "{:?}",
        limit.rlim_cur
    );
    let config = write_config(
        "quiet.toml",
        "[server]\nworkers = 1\npin_cores = false\n\
         [[listener]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n\
         [limits]\nmax_buffer_bytes = \"1GiB\"\n\
         [[route]]\nname = \"hi\"\nprefix = \"/\"\nrespond = { status = 200, body = \"hi\" }\n",
    );
    let (child, addr) = start(&config);
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let base = rss_kib(pid);
    let mut conns = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut c = Client::connect(addr);
        let resp = c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").read(false);
        assert_eq!(resp.map(|r| r.status), Some(200));
        conns.push(c);
    }
    // Served, not yet quiet: most still hold a read buffer.
    let busy = rss_kib(pid);
    // Quiet connections are demoted within two seconds and the slab's
    // spare buffers go back by halves each second: wait for the bound, up
    // to a deadline.
    const BOUND: u64 = 5 << 10;
    let per_conn = || (rss_kib(pid).saturating_sub(base) << 10) / CONNS as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while per_conn() > BOUND && Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(100));
    }
    let quiet = per_conn();
    assert!(quiet <= BOUND, "{quiet} bytes per quiet connection");
    // All still served after their quiet spell.
    for c in conns.iter_mut().step_by(100) {
        let resp = c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").read(false);
        assert_eq!(resp.map(|r| r.status), Some(200));
    }
    drop(conns);
    let back = base + (busy - base) / 4;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rss_kib(pid) > back && Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(100));
    }
    let after = rss_kib(pid);
    assert!(
        after <= back,
        "RSS {base} KiB at start, {busy} KiB with {CONNS} busy connections, {after} KiB after they closed"
    );
    eprintln!(
        "{quiet} bytes per quiet connection; RSS {base} KiB at start, {busy} KiB busy, {after} KiB after"
    );
}
