//! The built load generator against a small origin on loopback.

mod common;

use std::net::TcpListener;

use common::{field, load, origin};

#[test]
fn closed_loop_writes_summary_hgrm_and_log() {
    let addr = origin();
    let dir = std::env::temp_dir().join(format!("ringway-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, hgrm, log) = (dir.join("s.json"), dir.join("l.hgrm"), dir.join("l.hlog"));
    let url = format!("http://{addr}/x");
    let (ok, stdout, stderr) = load(&[
        &url,
        "-c",
        "4",
        "-t",
        "2",
        "-d",
        "1s",
        "-w",
        "200ms",
        "--json",
        json.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("closed loop") && stdout.contains("p99"),
        "{stdout}"
    );
    let json = std::fs::read_to_string(json).unwrap();
    assert!(field(&json, "requests") > 100.0, "{json}");
    assert_eq!(field(&json, "io"), 0.0, "{json}");
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("#[Max"),
        "{hgrm}"
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("#[StartTime") && log.contains(",HIST"),
        "{log}"
    );
}

#[test]
fn open_loop_holds_the_rate() {
    let addr = origin();
    let dir = std::env::temp_dir().join(format!("ringway-load-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("s.json");
    let url = format!("http://{addr}/");
    let (ok, stdout, stderr) = load(&[
        &url,
        "-c",
        "4",
        "-d",
        "2s",
        "-w",
        "0s",
        "-R",
        "200",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("open loop at 200"), "{stdout}");
    let json = std::fs::read_to_string(json).unwrap();
    let requests = field(&json, "requests");
    assert!(
        (380.0..=420.0).contains(&requests),
        "2s at 200/s made {requests} requests"
    );
}

#[test]
fn refuses_remote_targets_and_unbounded_runs() {
    let (ok, _, stderr) = load(&["http://192.0.2.1/", "-d", "1s"]);
    assert!(!ok && stderr.contains("--allow-remote"), "{stderr}");
    let (ok, _, stderr) = load(&["http://127.0.0.1:9/", "-d", "2h"]);
    assert!(!ok && stderr.contains("--duration"), "{stderr}");
}

#[test]
fn connection_errors_are_counted_not_fatal_until_nothing_completes() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, stdout, stderr) = load(&[
        &format!("http://{dead}/"),
        "-c",
        "2",
        "-d",
        "300ms",
        "-w",
        "0s",
    ]);
    assert!(!ok, "no request completed is a failure");
    assert!(stdout.contains("errors   connect "), "{stdout}");
    assert!(!stdout.contains("connect 0,"), "{stdout}");
    assert!(stderr.contains("no request completed"), "{stderr}");
}
