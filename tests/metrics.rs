//! Metrics and histograms through the real binary: a known mix of requests,
//! then `/metrics` scraped over HTTP and `ringway ctl histograms` read back.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn socket(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringway-{}-{name}.sock", std::process::id()))
}

fn ctl(name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(socket(name))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// GET `path` on the metrics listener: (status line, body).
fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: m\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Runs `n` requests, each on its own connection.
fn send(addr: SocketAddr, n: usize, raw: &str, status: u16) {
    for _ in 0..n {
        assert_eq!(request(addr, raw).status, status, "{raw}");
    }
}

#[test]
fn a_known_mix_shows_in_metrics_and_histograms_exactly() {
    let name = "metrics";
    let hlog_dir = std::env::temp_dir().join(format!("ringway-hlog-{}", std::process::id()));
    let origin = Origin::start(|_| {
        Reply::Raw(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let text = format!(
        "[server]\nworkers = 2\npin_cores = false\nadmin_socket = \"{}\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\npath = \"/m\"\nhistogram_dir = \"{}\"\nhistogram_interval = \"1s\"\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\n\
         [[route]]\nname = \"a\"\nprefix = \"/a\"\nmethods = [\"GET\"]\nrespond = {{ status = 200, body = \"a\" }}\n\n\
         [[route]]\nname = \"p\"\nprefix = \"/p\"\nupstream = \"o\"\n",
        socket(name).display(),
        hlog_dir.display(),
        origin.addr
    );
    let path = write_config("metrics.toml", &text);
    let (child, addr, log) = start_with(&path, &[]);
    let mut child = Running(Some(child));
    let metrics: SocketAddr = loop {
        let line = log
            .recv_timeout(Duration::from_secs(10))
            .expect("the proxy logs its metrics address");
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            break rest.trim_end_matches("/m").parse().unwrap();
        }
    };

    send(addr, 10, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n", 200);
    send(addr, 2, "DELETE /a HTTP/1.1\r\nHost: t\r\n\r\n", 405);
    send(addr, 3, "GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n", 404);
    let post = "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
    let mut c = Client::connect(addr);
    for _ in 0..5 {
        assert_eq!(c.send(post.as_bytes()).read(false).unwrap().status, 201);
    }

    let (status, body) = scrape(metrics, "/m");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let count = |labels: &str| sample(&body, &format!("ringway_requests_total{{{labels}}}"));
    assert_eq!(
        count(r#"route="a",method="GET",status="2xx""#),
        Some(10.0),
        "{body}"
    );
    assert_eq!(
        count(r#"route="(none)",method="DELETE",status="4xx""#),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        count(r#"route="(none)",method="GET",status="4xx""#),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        count(r#"route="p",method="POST",status="2xx""#),
        Some(5.0),
        "{body}"
    );
    // Nothing else was counted.
    let total: f64 = body
        .lines()
        .filter(|l| l.starts_with("ringway_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 20.0, "{body}");
    let up = |m: &str| {
        sample(
            &body,
            &format!("ringway_upstream_{m}_total{{upstream=\"o\"}}"),
        )
    };
    assert_eq!(
        up("connects").unwrap() + up("reuses").unwrap(),
        5.0,
        "{body}"
    );
    assert_eq!(
        up("connects"),
        Some(1.0),
        "one keep-alive client, one upstream connection"
    );
    assert_eq!(
        sample(&body, r#"ringway_request_bytes_total{route="p"}"#)
            .map(|b| b >= 5.0 * (post.len() as f64 - 5.0) + 25.0),
        Some(true),
        "{body}"
    );
    assert_eq!(
        sample(&body, "ringway_connections_accepted_total"),
        Some(16.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            r#"ringway_request_duration_seconds_count{route="p"}"#
        ),
        Some(5.0),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));
    assert_eq!(scrape(metrics, "/other").0, "HTTP/1.1 404 Not Found");

    // The histogram dump: `.hgrm` text with the count of the route's requests.
    let (ok, hgrm) = ctl(name, &["histograms", "--route", "p"]);
    assert!(ok, "{hgrm}");
    let summary = hgrm.lines().find(|l| l.starts_with("#[Max")).expect(&hgrm);
    assert!(
        summary.ends_with("Total count    =            5]"),
        "{summary}"
    );
    let rows: Vec<Vec<f64>> = hgrm
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Percentile"))
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect();
    assert!(
        rows.iter()
            .all(|r| r.len() == 4 || (r.len() == 3 && r[1] == 1.0)),
        "{hgrm}"
    );
    assert_eq!(rows.last().unwrap()[2], 5.0, "{hgrm}");

    for metric in ["upstream", "proxy"] {
        let (ok, json) = ctl(
            name,
            &[
                "--json",
                "histograms",
                "--upstream",
                "o",
                "--metric",
                metric,
                "--format",
                "json",
            ],
        );
        assert!(ok, "{json}");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["result"]["count"], 5, "{json}");
    }
    let (ok, log_text) = ctl(name, &["histograms", "--format", "log"]);
    assert!(ok && log_text.contains("HISTF"), "{log_text}");
    let (ok, _) = ctl(name, &["histograms", "--route", "a", "--reset"]);
    assert!(ok);
    let (_, json) = ctl(
        name,
        &["--json", "histograms", "--route", "a", "--format", "json"],
    );
    assert!(
        json.contains("\"count\":0"),
        "reset empties the histograms: {json}"
    );
    let (ok, err) = ctl(name, &["histograms", "--route", "nope"]);
    assert!(!ok && err.contains("no route named \"nope\""), "{err}");

    // The interval logs: a line tagged with the route, within a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logged = std::fs::read_dir(&hlog_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .any(|t| {
                t.contains("#[StartTime") && t.lines().any(|l| l.starts_with("Tag=route:p:total,"))
            });
        if logged {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no interval log in {}",
            hlog_dir.display()
        );
        std::thread::yield_now();
    }

    let (ok, _) = ctl(name, &["stop"]);
    assert!(ok);
    assert!(child.0.take().unwrap().wait().unwrap().success());
}

/// Waits until the file at `path` has `n` lines (the shards hand lines to
/// the writer once a second), at most 10 s.
fn lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<&str> = text.lines().collect();
        if got.len() >= n {
            assert_eq!(got.len(), n, "{text}");
            return got
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} has {} lines, not {n}: {text}",
            path.display(),
            got.len()
        );
        std::thread::yield_now();
    }
}

#[test]
fn access_log_lines_are_json_per_route_and_sample_and_reopen_follows_a_rename() {
    let name = "access";
    let origin = Origin::start(|_| ok("proxied"));
    let dir = std::env::temp_dir().join(format!("ringway-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let text = format!(
        "[server]\nworkers = 2\npin_cores = false\nadmin_socket = \"{}\"\n\n\
         [access_log]\npath = \"{}\"\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\n\
         [[route]]\nname = \"a\"\nprefix = \"/a\"\nrespond = {{ status = 200, body = \"a\" }}\n\n\
         [[route]]\nname = \"quiet\"\nprefix = \"/quiet\"\naccess_log = false\nrespond = {{ status = 200, body = \"q\" }}\n\n\
         [[route]]\nname = \"half\"\nprefix = \"/half\"\naccess_log_sample = 0.5\nrespond = {{ status = 200, body = \"h\" }}\n\n\
         [[route]]\nname = \"p\"\nprefix = \"/p\"\nupstream = \"o\"\n",
        socket(name).display(),
        log.display(),
        origin.addr
    );
    let path = write_config("access.toml", &text);
    let (child, addr) = run(&path);

    let r = request(
        addr,
        "GET /a?x=%221%22 HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    send(addr, 3, "GET /quiet HTTP/1.1\r\nHost: t\r\n\r\n", 200);
    // One connection, so one shard and its one sampler: 5 of 10 exactly.
    let mut c = Client::connect(addr);
    for _ in 0..10 {
        let r = c.send(b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n").read(false);
        assert_eq!(r.unwrap().status, 200);
    }
    send(
        addr,
        1,
        "POST /p/x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody",
        200,
    );
    send(addr, 1, "GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n", 404);

    let all = lines(&log, 8);
    let a = all.iter().find(|l| l["route"] == "a").unwrap();
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/a?x=%221%22", "the target as received: {a}");
    assert_eq!(a["request_id"], "abc-123");
    assert_eq!(a["client"], "127.0.0.1");
    assert_eq!(a["status"], 200);
    assert!(a["time"].as_str().unwrap().ends_with('Z'));
    assert!(a["total_us"].as_u64().unwrap() > 0);
    assert_eq!(a["upstream"], Value::Null);
    assert!(
        all.iter().all(|l| l["route"] != "quiet"),
        "access_log = false"
    );
    let half = all.iter().filter(|l| l["route"] == "half").count();
    assert_eq!(half, 5, "a sample of 0.5");
    let p = all.iter().find(|l| l["route"] == "p").unwrap();
    assert_eq!(p["upstream"], origin.addr.to_string());
    assert_eq!(p["method"], "POST");
    assert!(p["bytes_in"].as_u64().unwrap() > 4, "{p}");
    assert!(p["upstream_us"].as_u64().is_some(), "{p}");
    let none = all.iter().find(|l| l["status"] == 404).unwrap();
    assert_eq!(none["route"], Value::Null);

    // logrotate: move the file, then SIGUSR1; new lines go to a new file.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = child.0.as_ref().unwrap().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-USR1", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The reopen is asked of the control thread; ctl's reply follows it.
    let (ok, out) = ctl(name, &["reopen-logs"]);
    assert!(ok, "{out}");
    send(addr, 1, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n", 200);
    assert_eq!(lines(&log, 1)[0]["route"], "a");
    assert_eq!(lines(&rotated, 8).len(), 8);

    let (ok, _) = ctl(name, &["stop"]);
    assert!(ok);
    let mut child = child;
    assert!(child.0.take().unwrap().wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn captured_bodies_and_headers_are_redacted_in_the_access_log() {
    let origin = Origin::start(|_| {
        let body = r#"{"ok":true,"session":{"token":"t0ken"},"items":[{"secret":1},{"secret":2}]}"#;
        Reply::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let dir = std::env::temp_dir().join(format!("ringway-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let text = format!(
        "[server]\nworkers = 1\npin_cores = false\n\n\
         [access_log]\npath = \"{}\"\nredact = [\"SSN\"]\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\n\
         [[route]]\nname = \"cap\"\nprefix = \"/cap\"\nupstream = \"o\"\n\
         access_log_body = 200\naccess_log_headers = true\n\n\
         [[route]]\nname = \"short\"\nprefix = \"/short\"\nupstream = \"o\"\naccess_log_body = 12\n\n\
         [[route]]\nname = \"plain\"\nprefix = \"/plain\"\nupstream = \"o\"\n",
        log.display(),
        origin.addr
    );
    let path = write_config("capture.toml", &text);
    let (_child, addr) = run(&path);

    // A chunked JSON body in two chunks: the log keeps the payload only.
    let part1 = r#"{"user":"ann","password":"hunter2","#;
    let part2 = r#""profile":{"Password":"x","ssn":"123"},"tags":["a"]}"#;
    let raw = format!(
        "POST /cap HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Authorization: Bearer sekrit\r\nX-Note: kept\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{part1}\r\n{:x}\r\n{part2}\r\n0\r\n\r\n",
        part1.len(),
        part2.len()
    );
    assert_eq!(request(addr, &raw).status, 200);
    send(
        addr,
        1,
        "POST /cap HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\n\r\n\x01\x02\x03\x04",
        200,
    );
    send(
        addr,
        1,
        "POST /short HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\nabcdefghijklmnopqrst",
        200,
    );
    send(addr, 1, "GET /plain HTTP/1.1\r\nHost: t\r\n\r\n", 200);
    // A request refused before it is planned, after a captured one on the
    // same connection: its line carries nothing of the one before.
    let mut c = Client::connect(addr);
    let r = c
        .send(b"POST /short HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc")
        .read(false);
    assert_eq!(r.unwrap().status, 200);
    let r = c
        .send(b"GET /short HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
        .read(false);
    assert_eq!(r.unwrap().status, 400);

    let all = lines(&log, 6);
    let refused = all.iter().find(|l| l["status"] == 400).unwrap();
    assert!(refused.get("request_body").is_none(), "{refused}");
    let json = all
        .iter()
        .find(|l| l["route"] == "cap" && l["request_body"].is_string())
        .unwrap();
    let headers = &json["request_headers"];
    assert_eq!(headers["Authorization"], "[REDACTED]", "{json}");
    assert_eq!(headers["X-Note"], "kept");
    assert_eq!(headers["Content-Type"], "application/json");
    let body: Value = serde_json::from_str(json["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"user": "ann", "password": "[REDACTED]",
            "profile": {"Password": "[REDACTED]", "ssn": "[REDACTED]"}, "tags": ["a"]}),
        "nested, any case, configured names; the rest untouched"
    );
    let reply: Value = serde_json::from_str(json["response_body"].as_str().unwrap()).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"ok": true, "session": {"token": "[REDACTED]"},
            "items": [{"secret": "[REDACTED]"}, {"secret": "[REDACTED]"}]}),
        "repeated fields each redacted"
    );

    let binary = all
        .iter()
        .find(|l| l["route"] == "cap" && !l["request_body"].is_string())
        .unwrap();
    assert_eq!(binary["request_body"], Value::Null, "not text: {binary}");
    assert!(binary["response_body"].is_string());

    let short = all
        .iter()
        .find(|l| l["route"] == "short" && l["request_body"] != "abc")
        .unwrap();
    assert_eq!(short["request_body"], "abcdefghijkl", "cut at the limit");
    assert!(short.get("request_headers").is_none());
    assert_eq!(short["response_body"].as_str().unwrap().len(), 12);

    let plain = all.iter().find(|l| l["route"] == "plain").unwrap();
    assert!(
        plain.get("request_body").is_none(),
        "no capture asked: {plain}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
