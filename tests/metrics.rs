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

/// The value of the sample `series` (name and labels as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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
