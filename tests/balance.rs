//! Load balancing, health checks and `max_concurrent`, with the proxy in
//! process and real origins on loopback.

// The origins are plain threads, not shards: a Mutex is theirs to use.
#![allow(clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringway::control::Command;
use ringway::{Config, Server};
use support::*;

/// A config of `workers` shards, one upstream "o" of `endpoints` (TOML
/// array items) with `extra` keys, and a route "/" to it.
fn config(workers: usize, endpoints: &[String], extra: &str) -> String {
    format!(
        "[server]\nworkers = {workers}\npin_cores = false\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [{}]\n{extra}\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        endpoints.join(", ")
    )
}

fn start(text: &str) -> Server {
    let config = Config::parse(Path::new("test.toml"), text).expect("valid test config");
    Server::start(config).expect("proxy starts")
}

fn quoted(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

/// 200 with `body`, after `delay`.
fn slow_ok(delay: Duration, body: &str) -> Reply {
    let raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Reply::Delay(delay, raw.into_bytes())
}

/// Requests that reached an origin, health checks left out.
fn served(o: &Origin) -> usize {
    o.seen().iter().filter(|s| s.target != "/healthz").count()
}

/// `clients` threads, each sending `each` GETs on its keep-alive connection.
fn load(addr: SocketAddr, clients: usize, each: usize) {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..each {
                    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                    assert_eq!(c.read(false).expect("a response").status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn least_conn_and_p2c_send_little_to_a_slow_endpoint() {
    for (balance, most) in [("least-conn", 15), ("p2c", 15), ("round-robin", 100)] {
        let slow = Origin::start(|_| slow_ok(Duration::from_millis(200), "slow"));
        let fast = Origin::start(|_| ok("fast"));
        let eps = [quoted(slow.addr), quoted(fast.addr)];
        let proxy = start(&config(1, &eps, &format!("balance = \"{balance}\"")));
        load(proxy.addr(), 8, 20);
        let share = served(&slow) * 100 / 160;
        eprintln!("{balance}: the slow endpoint got {share}% of 160 requests");
        if balance == "round-robin" {
            // The contrast: turn by turn, half go to the slow one.
            assert!(share >= 45, "{balance}: {share}%");
        } else {
            assert!(share <= most, "{balance}: {share}% to the slow endpoint");
        }
    }
}

#[test]
fn weights_split_traffic_by_weight() {
    for balance in ["round-robin", "least-conn", "p2c"] {
        let a = Origin::start(|_| ok("a"));
        let b = Origin::start(|_| ok("b"));
        let eps = [
            quoted(a.addr),
            format!("{{ addr = \"{}\", weight = 3 }}", b.addr),
        ];
        let proxy = start(&config(1, &eps, &format!("balance = \"{balance}\"")));
        load(proxy.addr(), 1, 400);
        let (na, nb) = (served(&a), served(&b));
        eprintln!("{balance}: weight 1 got {na}, weight 3 got {nb}");
        // 100 and 300 by the rotation; p2c draws at random.
        assert!((70..=130).contains(&na), "{balance}: {na} / {nb}");
        assert_eq!(na + nb, 400);
    }
}

/// The origin that answered, by its body.
fn who(addr: SocketAddr, user: &str) -> String {
    request(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: t\r\nX-User: {user}\r\n\r\n"),
    )
    .text()
}

#[test]
fn a_hashed_key_stays_on_its_origin_and_a_removal_moves_only_its_keys() {
    let origins: Vec<Origin> = (0..4)
        .map(|i| Origin::start(move |_| ok(&format!("o{i}"))))
        .collect();
    let eps: Vec<String> = origins.iter().map(|o| quoted(o.addr)).collect();
    let path = write_config(
        "hash.toml",
        &config(2, &eps, "balance = \"hash-header:X-User\""),
    );
    let proxy = Server::start(Config::load(&path).unwrap()).unwrap();
    let addr = proxy.addr();
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let before: Vec<String> = users.iter().map(|u| who(addr, u)).collect();
    // The same user, the same origin, on every connection and both shards.
    for (u, first) in users.iter().zip(&before).take(10) {
        for _ in 0..5 {
            assert_eq!(&who(addr, u), first, "{u}");
        }
    }
    let used: std::collections::HashSet<_> = before.iter().collect();
    assert!(used.len() >= 3, "40 users on {used:?}");

    // Without o3, only o3's users move.
    std::fs::write(
        &path,
        config(2, &eps[..3], "balance = \"hash-header:X-User\""),
    )
    .unwrap();
    proxy.ask(Command::Reload).expect("reload");
    for (u, first) in users.iter().zip(&before) {
        let now = who(addr, u);
        if first == "o3" {
            assert_ne!(now, "o3", "{u}");
        } else {
            assert_eq!(&now, first, "{u} moved though its origin stayed");
        }
    }

    // hash-client-ip: every request of 127.0.0.1 to one origin.
    let text = config(2, &eps, "balance = \"hash-client-ip\"");
    let proxy = start(&text);
    let first = get(proxy.addr(), "/").text();
    for _ in 0..20 {
        assert_eq!(get(proxy.addr(), "/").text(), first);
    }
}

/// An origin answering "a" or "b" whose `/healthz` says 503 while `down`.
fn flaky(name: &'static str, down: Arc<AtomicBool>, last: Arc<Mutex<Option<Instant>>>) -> Origin {
    Origin::start(move |s| {
        if s.target == "/healthz" {
            return match down.load(Ordering::SeqCst) {
                true => Reply::Raw(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
                ),
                false => ok("ok"),
            };
        }
        *last.lock().unwrap() = Some(Instant::now());
        ok(name)
    })
}

#[test]
fn a_health_check_takes_an_endpoint_out_and_back() {
    let interval = Duration::from_millis(200);
    let (down, last_b) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(None)));
    let a = flaky(
        "a",
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(None)),
    );
    let b = flaky("b", down.clone(), last_b.clone());
    let proxy = start(&config(
        2,
        &[quoted(a.addr), quoted(b.addr)],
        // Passive ejection off: only the health check takes b out.
        "outlier_detection = false\n\
         health_check = { path = \"/healthz\", interval = \"200ms\", timeout = \"100ms\", \
         unhealthy_after = 2, healthy_after = 2 }",
    ));
    let addr = proxy.addr();
    // Requests on new connections, over both shards, for `span`.
    let send_for = |span: Duration| {
        let until = Instant::now() + span;
        let mut bodies = Vec::new();
        while Instant::now() < until {
            let r = get(addr, "/");
            assert_eq!(r.status, 200);
            bodies.push(r.text());
        }
        bodies
    };
    assert!(send_for(Duration::from_millis(300)).contains(&"b".to_string()));

    let went_down = Instant::now();
    down.store(true, Ordering::SeqCst);
    send_for(Duration::from_millis(1500));
    let last = last_b.lock().unwrap().unwrap();
    let detected = last.saturating_duration_since(went_down);
    eprintln!("the last request to b came {detected:?} after its health check failed");
    // Two failed probes, an interval apart; and a probe's own time.
    assert!(
        detected < interval * 2 + Duration::from_millis(500),
        "{detected:?}"
    );
    let bodies = send_for(Duration::from_millis(500));
    assert!(bodies.iter().all(|b| b == "a"), "a request went to b");
    assert_eq!(*last_b.lock().unwrap(), Some(last));
    let status = proxy.ask(Command::Status).unwrap();
    assert_eq!(
        status["unhealthy_endpoints"],
        serde_json::json!([{ "upstream": "o", "addr": b.addr.to_string() }])
    );
    let metrics = proxy.ask(Command::Metrics).unwrap();
    let text = metrics["text"].as_str().unwrap();
    for (who, up) in [(a.addr, 1), (b.addr, 0)] {
        let series =
            format!("ringway_upstream_endpoint_healthy{{upstream=\"o\",endpoint=\"{who}\"}} {up}");
        assert!(text.contains(&series), "{series}\n{text}");
    }

    let came_up = Instant::now();
    down.store(false, Ordering::SeqCst);
    let deadline = came_up + Duration::from_secs(5);
    loop {
        if get(addr, "/").text() == "b" {
            break;
        }
        assert!(Instant::now() < deadline, "b never came back");
    }
    let back = came_up.elapsed();
    eprintln!("b got requests again {back:?} after its health check passed");
    assert!(back < interval * 2 + Duration::from_millis(500), "{back:?}");
    let status = proxy.ask(Command::Status).unwrap();
    assert_eq!(status["unhealthy_endpoints"], serde_json::json!([]));
}

#[test]
fn health_survives_a_reload_and_goes_with_the_health_check() {
    let (down, last_b) = (Arc::new(AtomicBool::new(true)), Arc::new(Mutex::new(None)));
    let a = flaky(
        "a",
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(None)),
    );
    let b = flaky("b", down.clone(), last_b.clone());
    let c = Origin::start(|_| ok("c"));
    let check = "outlier_detection = false\n\
         health_check = { path = \"/healthz\", interval = \"200ms\", timeout = \"100ms\", \
         unhealthy_after = 2, healthy_after = 2 }";
    let path = write_config(
        "health-reload.toml",
        &config(2, &[quoted(a.addr), quoted(b.addr)], check),
    );
    let proxy = Server::start(Config::load(&path).unwrap()).unwrap();
    let addr = proxy.addr();
    // b is down from the start: out after two probes.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut in_a_row = 0;
    while in_a_row < 20 {
        in_a_row = if get(addr, "/").text() == "a" {
            in_a_row + 1
        } else {
            0
        };
        assert!(Instant::now() < deadline, "b is never taken out");
    }
    let last = *last_b.lock().unwrap();

    // A reload that adds c keeps b down in the new pools at once.
    let eps = [quoted(a.addr), quoted(b.addr), quoted(c.addr)];
    std::fs::write(&path, config(2, &eps, check)).unwrap();
    proxy.ask(Command::Reload).expect("reload");
    let bodies: Vec<String> = (0..60).map(|_| get(addr, "/").text()).collect();
    assert!(bodies.contains(&"c".to_string()), "{bodies:?}");
    assert!(
        !bodies.contains(&"b".to_string()),
        "b was asked after the reload"
    );
    assert_eq!(*last_b.lock().unwrap(), last);

    // Without the health check, nothing keeps b out.
    std::fs::write(&path, config(2, &eps, "outlier_detection = false")).unwrap();
    proxy.ask(Command::Reload).expect("reload");
    let deadline = Instant::now() + IO_TIMEOUT;
    while get(addr, "/").text() != "b" {
        assert!(
            Instant::now() < deadline,
            "b stays out without a health check"
        );
    }
}

#[test]
fn every_endpoint_down_is_a_503_well_before_the_timeouts() {
    // Origins that take the connection and never answer: without health
    // checks each request would wait out the 5 s response timeout.
    let silent: Vec<Origin> = (0..2)
        .map(|_| Origin::start(|_| Reply::Hang(Duration::from_secs(8))))
        .collect();
    let proxy = start(&format!(
        "[timeouts]\nupstream_connect = \"5s\"\nupstream_response_header = \"5s\"\n\n{}",
        config(
            2,
            &[quoted(silent[0].addr), quoted(silent[1].addr)],
            "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", unhealthy_after = 2 }",
        )
    ));
    // Both are marked down after two probes each. Until then a request
    // waits for its response; one sent before the second probe may be
    // stuck for the whole 5 s, so it is one at a time with a short read.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut c = Client::connect(proxy.addr());
        c.s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        if c.read(false).is_some_and(|r| r.status == 503) {
            break;
        }
        assert!(Instant::now() < deadline, "never marked down");
    }
    for _ in 0..4 {
        let began = Instant::now();
        let r = get(proxy.addr(), "/");
        let took = began.elapsed();
        assert_eq!(r.status, 503, "{}", r.head);
        assert!(
            r.text().contains("every upstream endpoint is down"),
            "{}",
            r.text()
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}

#[test]
fn every_endpoint_ejected_is_a_503_at_once() {
    let dead: Vec<String> = (0..2)
        .map(|_| {
            quoted(
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap(),
            )
        })
        .collect();
    let proxy = start(&config(
        1,
        &dead,
        "outlier_detection = { consecutive_failures = 1, max_ejected_percent = 100 }",
    ));
    // The first tries both endpoints, and both connects are refused.
    assert_eq!(get(proxy.addr(), "/").status, 502);
    let r = get(proxy.addr(), "/");
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.text().contains("every upstream endpoint is down"));
    let metrics = proxy.ask(Command::Metrics).unwrap();
    let text = metrics["text"].as_str().unwrap();
    assert!(
        text.contains("ringway_upstream_no_endpoint_total{upstream=\"o\"} 1\n"),
        "{text}"
    );
}

#[test]
fn max_concurrent_is_a_503_with_retry_after() {
    let origin = Origin::start(|_| slow_ok(Duration::from_millis(1000), "slow"));
    let proxy = start(&config(1, &[quoted(origin.addr)], "max_concurrent = 2"));
    let addr = proxy.addr();
    let busy: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get(addr, "/").status))
        .collect();
    let deadline = Instant::now() + IO_TIMEOUT;
    while origin.seen().len() < 2 {
        assert!(Instant::now() < deadline, "the first two never arrived");
        std::thread::yield_now();
    }
    let began = Instant::now();
    let r = get(addr, "/");
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("concurrent"), "{}", r.text());
    assert!(began.elapsed() < Duration::from_millis(500));
    for b in busy {
        assert_eq!(b.join().unwrap(), 200);
    }
    // Their places are free again.
    assert_eq!(get(addr, "/").status, 200);
    let metrics = proxy.ask(Command::Metrics).unwrap();
    let text = metrics["text"].as_str().unwrap();
    assert!(
        text.contains("ringway_upstream_overloaded_total{upstream=\"o\"} 1\n"),
        "{text}"
    );
}
