//! Upstream failures through the real binary, with real origins that die:
//! each origin is a ringway of its own answering from a `respond` route,
//! killed with SIGKILL and started again on the same port.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;

/// An origin on `port` (0: any) whose every answer is `body`.
fn origin(name: &str, port: u16, body: &str) -> (Running, SocketAddr) {
    let path = write_config(
        &format!("{name}.toml"),
        &format!(
            "[server]\nworkers = 1\npin_cores = false\n\n\
             [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:{port}\"\n\n\
             [[route]]\nname = \"all\"\nprefix = \"/\"\nrespond = {{ status = 200, body = \"{body}\" }}\n"
        ),
    );
    run(&path)
}

fn kill(origin: &mut Running) {
    let mut child = origin.0.take().unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    child.wait().unwrap();
}

#[test]
fn a_dead_endpoint_fails_no_get_with_the_default_config() {
    let (mut a, a_addr) = origin("origin-a", 0, "A");
    let (_b, b_addr) = origin("origin-b", 0, "B");
    let path = write_config(
        "failover.toml",
        &format!(
            "[server]\nworkers = 2\npin_cores = false\n\n\
             [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
             [[upstream]]\nname = \"o\"\nendpoints = [\"{a_addr}\", \"{b_addr}\"]\n\n\
             [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n"
        ),
    );
    let (_proxy, addr) = run(&path);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                    match c.read(false) {
                        Some(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("failed: {:?}", other.map(|r| r.head));
                            c = Client::connect(addr);
                        }
                    }
                }
            })
        })
        .collect();
    let wait_for = |n: u64| {
        let until = ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + IO_TIMEOUT;
        while ok.load(Ordering::Relaxed) < until {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::yield_now();
        }
    };
    wait_for(2000);
    kill(&mut a);
    wait_for(3000);
    let (_a, _) = origin("origin-a2", a_addr.port(), "A");
    wait_for(2000);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} GET requests failed", ok + failed);

    // The endpoint is back in the rotation once its ejection (10 s by
    // default) is over.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        if get(addr, "/").text() == "A" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted origin is never asked again"
        );
        std::thread::yield_now();
    }
}

#[test]
fn every_endpoint_down_is_a_502_at_once() {
    // Two ports nothing listens on: each connect is refused at once.
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let path = write_config(
        "alldown.toml",
        &format!(
            "[server]\nworkers = 1\npin_cores = false\n\n\
             [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
             [[upstream]]\nname = \"o\"\nendpoints = [\"{}\", \"{}\"]\n\n\
             [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
            dead[0], dead[1]
        ),
    );
    let (_proxy, addr) = run(&path);
    for _ in 0..3 {
        let began = Instant::now();
        let r = get(addr, "/");
        assert_eq!(r.status, 502, "{}", r.head);
        assert!(
            began.elapsed() < Duration::from_millis(500),
            "{:?}",
            began.elapsed()
        );
    }
}
