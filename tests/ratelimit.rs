//! Rate limits through the real binary, measured: clients with their own
//! loopback source addresses send at about five times their limit, and the
//! requests admitted are counted against `rate × time + burst`.
// The load threads pace their requests with sleeps; nothing waits on them
// for synchronisation.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Socket, Type};
use support::*;

const SECONDS: u64 = 3;

fn config(name: &str, steer: &str, rate_limit: &str) -> std::path::PathBuf {
    let socket = std::env::temp_dir().join(format!("ringway-{}-{name}.sock", std::process::id()));
    write_config(
        &format!("{name}.toml"),
        &format!(
            "[server]\nworkers = 2\npin_cores = false\nsteer = \"{steer}\"\nadmin_socket = \"{}\"\n\n\
             [rate_limit]\n{rate_limit}\n\n\
             [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"all\"\nprefix = \"/\"\nrespond = {{ status = 200, body = \"ok\" }}\n",
            socket.display()
        ),
    )
}

fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads one response, returning its status.
fn status(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            while buf.len() < end + 4 + len {
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&b[..n]);
            }
            buf.drain(..end + 4 + len);
            return head[9..12].parse().unwrap();
        }
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "the proxy closed");
        buf.extend_from_slice(&b[..n]);
    }
}

/// Each client (a source address and a header line) opens `conns`
/// connections at once and sends `per_second` requests a second over them
/// for `SECONDS`; returns each client's (admitted, sent) counts.
fn load(
    addr: SocketAddr,
    clients: &[([u8; 4], String)],
    conns: usize,
    per_second: f64,
) -> Vec<(u64, u64)> {
    let start = Arc::new(Barrier::new(clients.len() * conns));
    let threads: Vec<_> = clients
        .iter()
        .flat_map(|(src, header)| {
            (0..conns).map(|_| {
                let (src, header, start) = (*src, header.clone(), start.clone());
                std::thread::spawn(move || {
                    let mut s = connect_from(src, addr);
                    let request = format!("GET / HTTP/1.1\r\nHost: t\r\n{header}\r\n");
                    let period = Duration::from_secs_f64(conns as f64 / per_second);
                    let mut buf = Vec::new();
                    let mut admitted = 0u64;
                    start.wait();
                    let t0 = Instant::now();
                    let mut k = 0u32;
                    while t0.elapsed() < Duration::from_secs(SECONDS) {
                        s.write_all(request.as_bytes()).unwrap();
                        match status(&mut s, &mut buf) {
                            200 => admitted += 1,
                            429 => {}
                            other => panic!("status {other}"),
                        }
                        k += 1;
                        let next = t0 + period * k;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    (admitted, u64::from(k))
                })
            })
        })
        .collect();
    let counts: Vec<(u64, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    counts
        .chunks(conns)
        .map(|c| c.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)))
        .collect()
}

fn within(got: u64, expected: f64, share: f64) -> bool {
    (got as f64 - expected).abs() <= expected * share
}

fn shard_requests(name: &str) -> Vec<u64> {
    let socket = std::env::temp_dir().join(format!("ringway-{}-{name}.sock", std::process::id()));
    let out = Command::new(BIN)
        .args(["ctl", "--json", "--socket"])
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["result"]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .collect()
}

#[test]
fn per_client_limits_are_exact_with_client_ip_steering() {
    let (rate, burst) = (50.0, 10.0);
    let path = config(
        "steered",
        "client-ip",
        &format!("per_client = {{ rate = {rate}, burst = {burst} }}"),
    );
    let (child, addr) = run(&path);
    let clients: Vec<([u8; 4], String)> =
        (2..=5).map(|i| ([127, 0, 0, i], String::new())).collect();
    let counts = load(addr, &clients, 8, rate * 5.0);
    let expected = rate * SECONDS as f64 + burst;
    for (i, &(n, _)) in counts.iter().enumerate() {
        assert!(
            within(n, expected, 0.05),
            "client 127.0.0.{}: {n} admitted, {expected} expected: {counts:?}",
            i + 2
        );
    }
    // Every connection of an address went to one shard: its address modulo
    // 2 (127.0.0.2 and .4 to shard 0, .3 and .5 to shard 1).
    let per_shard = shard_requests("steered");
    let sent = |i: usize| counts[i].1;
    assert_eq!(
        per_shard,
        vec![sent(0) + sent(2), sent(1) + sent(3)],
        "{counts:?}"
    );
    drop(child);
}

#[test]
fn a_global_limit_holds_over_all_clients_and_shards() {
    let (rate, burst) = (100.0, 20.0);
    let path = config(
        "global",
        "kernel",
        &format!("global = {{ rate = {rate}, burst = {burst} }}"),
    );
    let (child, addr) = run(&path);
    let clients: Vec<([u8; 4], String)> =
        (2..=5).map(|i| ([127, 0, 0, i], String::new())).collect();
    let admitted = load(addr, &clients, 8, rate * 5.0 / 4.0);
    let total: u64 = admitted.iter().map(|c| c.0).sum();
    let expected = rate * SECONDS as f64 + burst;
    assert!(
        within(total, expected, 0.05),
        "{total} admitted, {expected} expected: {admitted:?}"
    );
    let per_shard = shard_requests("global");
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards served: {per_shard:?}"
    );
    drop(child);
}

#[test]
fn header_keyed_limits_are_exact_through_owner_leases() {
    // Four keys, each from 8 connections spread by the kernel's hash over
    // both shards: each key's bucket is on one shard, the other leases.
    let (rate, burst) = (50.0, 10.0);
    let path = config(
        "header",
        "kernel",
        &format!("key = \"header:X-Api-Key\"\nper_client = {{ rate = {rate}, burst = {burst} }}"),
    );
    let (child, addr) = run(&path);
    let clients: Vec<([u8; 4], String)> = ["alpha", "beta", "gamma", "delta"]
        .iter()
        .zip(2..)
        .map(|(k, i)| ([127, 0, 0, i], format!("X-Api-Key: {k}\r\n")))
        .collect();
    let admitted = load(addr, &clients, 8, rate * 5.0);
    let expected = rate * SECONDS as f64 + burst;
    eprintln!("header keys: (admitted, sent) {admitted:?}, {expected} expected each");
    for (i, &(n, _)) in admitted.iter().enumerate() {
        assert!(
            within(n, expected, 0.05),
            "key {i}: {n} admitted, {expected} expected: {admitted:?}"
        );
    }
    let per_shard = shard_requests("header");
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards served: {per_shard:?}"
    );
    drop(child);
}

#[test]
fn a_key_split_unevenly_over_the_shards_still_gets_its_whole_limit() {
    // Steered by address, one key comes 94% through shard 0 (127.0.0.2)
    // and 6% through shard 1 (127.0.0.3), at 5x its limit in all. Halving
    // the limit per shard would admit rate/2 on shard 0 and the little
    // shard 1 sees: 80% of the limit. Leases from the owner admit it whole.
    let (rate, burst) = (50.0, 10.0);
    let path = config(
        "uneven",
        "client-ip",
        &format!("key = \"header:X-Api-Key\"\nper_client = {{ rate = {rate}, burst = {burst} }}"),
    );
    let (child, addr) = run(&path);
    let header = "X-Api-Key: one\r\n".to_string();
    let (heavy, light) = (
        vec![([127, 0, 0, 2], header.clone())],
        vec![([127, 0, 0, 3], header)],
    );
    let light = std::thread::spawn(move || load(addr, &light, 2, rate * 0.3));
    let heavy = load(addr, &heavy, 8, rate * 4.7);
    let light = light.join().unwrap();
    let total = heavy[0].0 + light[0].0;
    let expected = rate * SECONDS as f64 + burst;
    eprintln!("one key, uneven: {total} admitted ({heavy:?} + {light:?}), {expected} expected");
    assert!(
        within(total, expected, 0.05),
        "{total} admitted ({heavy:?} + {light:?}), {expected} expected"
    );
    let per_shard = shard_requests("uneven");
    assert_eq!(per_shard, vec![heavy[0].1, light[0].1]);
    drop(child);
}
