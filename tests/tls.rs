//! TLS on the listener, over real sockets: certificates generated here (a
//! test CA and leaves signed by it), a rustls client, the proxy in-process
//! or as the built binary.

// A Mutex for what the test origins saw; no shard runs here.
#![allow(clippy::disallowed_types)]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, date_time_ymd};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use support::tls::{Pki, Tls, connect, provider};
use support::*;

fn tls_client(addr: SocketAddr, sni: &str, config: &Arc<ClientConfig>) -> Client<Tls> {
    Client::over(connect(addr, sni, config.clone()).expect("the handshake completes"))
}

fn leaf_of(s: &Tls) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

/// A proxy with one TLS listener (`tls` its table, `listener` more keys)
/// in front of `origin` at "/".
fn tls_proxy(origin: SocketAddr, tls: &str, listener: &str) -> ringway::Server {
    let text = format!(
        "[server]\nworkers = 1\npin_cores = false\n\n\
         [[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n{tls}\n{listener}\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{origin}\"]\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n"
    );
    let config = ringway::Config::parse(Path::new("tls.toml"), &text).expect("valid config");
    ringway::Server::start(config).expect("proxy starts")
}

/// Takes any certificate (the proxy's own `insecure_skip_verify` config):
/// to see which one the server chose for a name it has none for.
fn any_cert() -> Arc<ClientConfig> {
    ringway::certs::client_config(RootCertStore::empty(), true).unwrap()
}

fn get_over<S: Read + Write>(c: &mut Client<S>, host: &str, path: &str) -> Response {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .read(false)
        .expect("a response")
}

#[test]
fn https_request_with_sni_choosing_the_certificate_and_1000_on_one_connection() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["*.b.test"]);
    let origin = Origin::start(|s| ok(s.header("x-forwarded-proto").unwrap_or("none")));
    let proxy = tls_proxy(origin.addr, &pki.table(&["a", "b"], ""), "");
    let client = Arc::new(pki.client());

    let mut c = tls_client(proxy.addr(), "a.test", &client);
    assert_eq!(leaf_of(&c.s), a);
    assert_eq!(c.s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = get_over(&mut c, "a.test", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "https"));
    // Keep-alive: 1,000 requests on the one connection.
    for i in 0..1000 {
        let r = get_over(&mut c, "a.test", &format!("/{i}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(origin.seen().len(), 1001);

    let mut c = tls_client(proxy.addr(), "x.b.test", &client);
    assert_eq!(leaf_of(&c.s), b);
    assert_eq!(get_over(&mut c, "x.b.test", "/").status, 200);

    // No SNI, or a name no certificate has: the first answers.
    let mut no_sni = pki.client();
    no_sni.enable_sni = false;
    let c = tls_client(proxy.addr(), "a.test", &Arc::new(no_sni));
    assert_eq!(leaf_of(&c.s), a);
    let c = tls_client(proxy.addr(), "unknown.test", &any_cert());
    assert_eq!(leaf_of(&c.s), a);
    // One label only under a wildcard.
    let c = tls_client(proxy.addr(), "x.y.b.test", &any_cert());
    assert_eq!(leaf_of(&c.s), a);
    assert!(connect(proxy.addr(), "x.y.b.test", client.clone()).is_err());
}

#[test]
fn strict_sni_answers_421_to_a_host_the_certificate_does_not_cover() {
    let pki = Pki::new("strict");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let origin = Origin::start(|_| ok("in"));
    let proxy = tls_proxy(
        origin.addr,
        &pki.table(&["a", "b"], ""),
        "strict_sni = true",
    );
    let client = Arc::new(pki.client());

    let mut c = tls_client(proxy.addr(), "a.test", &client);
    assert_eq!(get_over(&mut c, "A.test:443", "/").status, 200);
    // Domain fronting: SNI a.test, Host b.test.
    let r = get_over(&mut c, "b.test", "/");
    assert_eq!(r.status, 421);
    assert!(r.text().contains("\"status\":421"), "{}", r.text());
    assert_eq!(get_over(&mut c, "a.test", "/").status, 200);
    assert_eq!(origin.seen().len(), 2);
}

#[test]
fn plain_http_garbage_and_a_truncated_client_hello_never_reach_the_upstream() {
    let pki = Pki::new("bad");
    pki.leaf("a", &["a.test"]);
    let origin = Origin::start(|_| ok("in"));
    let tls = pki.table(&["a"], ", handshake_timeout = \"300ms\"");
    let proxy = tls_proxy(origin.addr, &tls, "");

    // Plain HTTP: one 400 naming the mistake, then the close.
    let mut c = Client::connect(proxy.addr());
    let r = c
        .send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .read(false)
        .expect("a 400");
    assert_eq!(r.status, 400);
    assert!(
        r.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{}",
        r.head
    );
    assert!(
        r.text()
            .contains("plain HTTP request was sent to HTTPS port")
    );
    assert!(c.is_closed());

    // Garbage: closed with nothing said.
    let mut c = Client::connect(proxy.addr());
    c.send(b"\x00\x01\x02\x03 not tls at all\r\n\r\n");
    assert!(c.is_closed());

    // The first 40 bytes of a real ClientHello, then silence: closed at
    // the handshake timeout.
    let mut hello = Vec::new();
    let mut conn =
        ClientConnection::new(Arc::new(pki.client()), "a.test".try_into().unwrap()).unwrap();
    conn.write_tls(&mut hello).unwrap();
    let mut c = Client::connect(proxy.addr());
    let t0 = Instant::now();
    c.send(&hello[..40]);
    assert!(c.is_closed());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // A whole ClientHello, then the connection cut: nothing either.
    let mut c = Client::connect(proxy.addr());
    c.send(&hello);
    drop(c);

    assert_eq!(origin.connections(), 0);
    let reply = proxy.ask(ringway::control::Command::Metrics).unwrap();
    let metrics = reply["text"].as_str().unwrap().to_string();
    for (result, n) in [("plain_http", 1), ("timeout", 1)] {
        let line = format!("ringway_tls_handshakes_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

/// A handshake begun and left waiting for the client's Finished: the proxy
/// has read the ClientHello and answered, so the handshake is in flight
/// there until the stream is dropped (or `handshake_timeout`).
fn stalled_handshake(addr: SocketAddr, pki: &Pki) -> std::net::TcpStream {
    let mut conn =
        ClientConnection::new(Arc::new(pki.client()), "a.test".try_into().unwrap()).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    conn.write_tls(&mut tcp).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        tcp.read(&mut b).unwrap(),
        1,
        "the proxy answers the ClientHello"
    );
    tcp
}

#[test]
fn max_handshakes_counts_each_listener_apart() {
    let pki = Pki::new("handshakes");
    pki.leaf("a", &["a.test"]);
    let origin = Origin::start(|_| ok("in"));
    // A long handshake_timeout on both: a stalled handshake stays in
    // flight for the whole test.
    let text = format!(
        "[server]\nworkers = 1\npin_cores = false\n\n\
         [[listener]]\nname = \"limited\"\nbind = \"127.0.0.1:0\"\n{}\n\n\
         [[listener]]\nname = \"open\"\nbind = \"127.0.0.1:0\"\n{}\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        pki.table(&["a"], ", max_handshakes = 1, handshake_timeout = \"60s\""),
        pki.table(&["a"], ", handshake_timeout = \"60s\""),
        origin.addr
    );
    let config = ringway::Config::parse(Path::new("tls.toml"), &text).unwrap();
    let proxy = ringway::Server::start(config).unwrap();
    let addr = |name: &str| proxy.addrs().iter().find(|(n, _)| n == name).unwrap().1;
    let (limited, open) = (addr("limited"), addr("open"));
    let client = Arc::new(pki.client());

    // A handshake in flight on the other listener takes no place of this one's.
    let _open_busy = stalled_handshake(open, &pki);
    let mut c = tls_client(limited, "a.test", &client);
    assert_eq!(get_over(&mut c, "a.test", "/").status, 200);

    // This one's one place taken: the next is closed unanswered, and the
    // other listener still completes handshakes.
    let _limited_busy = stalled_handshake(limited, &pki);
    let mut hello = Vec::new();
    let mut conn = ClientConnection::new(client.clone(), "a.test".try_into().unwrap()).unwrap();
    conn.write_tls(&mut hello).unwrap();
    let mut refused = Client::connect(limited);
    refused.send(&hello);
    assert!(refused.is_closed(), "over max_handshakes: closed");
    let mut c = tls_client(open, "a.test", &client);
    assert_eq!(get_over(&mut c, "a.test", "/").status, 200);

    let reply = proxy.ask(ringway::control::Command::Metrics).unwrap();
    let metrics = reply["text"].as_str().unwrap().to_string();
    for (result, n) in [("ok", 2), ("refused", 1)] {
        let line = format!("ringway_tls_handshakes_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[test]
fn sessions_resume_by_ticket_across_shards() {
    let pki = Pki::new("resume");
    pki.leaf("a", &["a.test"]);
    let origin = Origin::start(|_| ok("in"));
    let text = format!(
        "[server]\nworkers = 2\npin_cores = false\n\n\
         [[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n{}\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        pki.table(&["a"], ""),
        origin.addr
    );
    let config = ringway::Config::parse(Path::new("tls.toml"), &text).unwrap();
    let proxy = ringway::Server::start(config).unwrap();
    // One client config keeps the tickets it is given.
    let client = Arc::new(pki.client());
    let mut c = tls_client(proxy.addr(), "a.test", &client);
    assert_eq!(get_over(&mut c, "a.test", "/").status, 200);
    assert_eq!(c.s.conn.handshake_kind(), Some(rustls::HandshakeKind::Full));
    // New connections land on either shard; each resumes.
    for _ in 0..8 {
        let mut c = tls_client(proxy.addr(), "a.test", &client);
        assert_eq!(get_over(&mut c, "a.test", "/").status, 200);
        assert_eq!(
            c.s.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
    }
}

#[test]
fn client_certificates_verified_and_their_subject_passed_upstream() {
    let pki = Pki::new("mtls");
    pki.leaf("a", &["a.test"]);
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "alice");
    pki.sign("alice", params);
    let origin = Origin::start(|s| ok(s.header("x-client-subject").unwrap_or("none")));
    let ca = pki.path("ca.pem");
    let tls = pki.table(
        &["a"],
        &format!(
            ", client_ca = \"{}\", client_auth = \"optional\", client_subject_header = \"X-Client-Subject\"",
            ca.display()
        ),
    );
    let proxy = tls_proxy(origin.addr, &tls, "");

    // No certificate (optional): served, and a forged subject is dropped.
    let mut c = tls_client(proxy.addr(), "a.test", &Arc::new(pki.client()));
    let r = c
        .send(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Client-Subject: CN=mallory\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!(r.text(), "none");

    // With one: its subject goes upstream.
    let chain = rustls::pki_types::pem::PemObject::pem_file_iter(pki.path("alice.pem"))
        .unwrap()
        .collect::<Result<Vec<CertificateDer>, _>>()
        .unwrap();
    let key: PrivateKeyDer =
        rustls::pki_types::pem::PemObject::from_pem_file(pki.path("alice.key")).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let with_cert = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let with_cert = Arc::new(with_cert);
    let mut c = tls_client(proxy.addr(), "a.test", &with_cert);
    let r = c
        .send(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Client-Subject: CN=mallory\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!(r.text(), "CN=alice");
    // No resumption where certificates are verified: a resumed session
    // would skip the verifier.
    let c = tls_client(proxy.addr(), "a.test", &with_cert);
    assert_eq!(c.s.conn.handshake_kind(), Some(rustls::HandshakeKind::Full));

    // A plain listener beside the one that passes subjects: a client's
    // forged subject is dropped there too (routes are every listener's).
    let text = format!(
        "[server]\nworkers = 1\npin_cores = false\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"mtls\"\nbind = \"127.0.0.1:0\"\n{tls}\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        origin.addr
    );
    let config = ringway::Config::parse(Path::new("tls.toml"), &text).unwrap();
    let both = ringway::Server::start(config).unwrap();
    let plain = both.addrs().iter().find(|(n, _)| n == "plain").unwrap().1;
    let r = Client::connect(plain)
        .send(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Client-Subject: CN=admin\r\n\r\n")
        .read(false)
        .unwrap();
    assert_eq!(r.text(), "none");

    // Required: a client without one does not get through.
    let tls = pki.table(&["a"], &format!(", client_ca = \"{}\"", ca.display()));
    let strict = tls_proxy(origin.addr, &tls, "");
    let refused = connect(strict.addr(), "a.test", Arc::new(pki.client())).and_then(|mut s| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")?;
        let mut b = [0u8; 64];
        s.read(&mut b)
    });
    assert!(refused.is_err() || refused.unwrap() == 0);
}

#[test]
fn check_names_a_bad_pair_and_warns_of_a_near_expiry() {
    let pki = Pki::new("check");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let write = |name: &str, tls: &str| {
        write_config(
            name,
            &format!("[[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n{tls}\n"),
        )
    };
    // a's certificate with b's key.
    std::fs::copy(pki.path("b.key"), pki.path("mixed.key")).unwrap();
    std::fs::copy(pki.path("a.pem"), pki.path("mixed.pem")).unwrap();
    let bad = write("tls-bad.toml", &pki.table(&["a", "mixed"], ""));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("tls-bad.toml:4") && err.contains("mixed.key"),
        "{err}"
    );

    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(5);
    let mut params = CertificateParams::new(vec!["soon.test".to_string()]).unwrap();
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = soon;
    pki.sign("soon", params);
    let near = write("tls-near.toml", &pki.table(&["soon"], ""));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&near)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("warning:") && said.contains("soon.pem: expires in"),
        "{said}"
    );
}

/// A certificate swapped on disk and reloaded while clients open new TLS
/// connections without pause: not one request fails, and the new
/// certificate answers every handshake after the reload.
#[test]
fn certificates_reload_under_load_without_a_failed_request() {
    let pki = Pki::new("reload");
    let old = pki.leaf("a", &["a.test"]);
    let origin = Origin::start(|_| ok("in"));
    let socket = std::env::temp_dir().join(format!("ringway-tls-{}.sock", std::process::id()));
    let config = |tls: &str| {
        format!(
            "[server]\nworkers = 2\npin_cores = false\nadmin_socket = \"{}\"\n\n\
             [[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n{tls}\n\n\
             [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\n\
             [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
            socket.display(),
            origin.addr
        )
    };
    let path = write_config("tls-reload.toml", &config(&pki.table(&["a"], "")));
    let (child, addr) = run(&path);
    // No resumption, so that every connection has a full handshake (a
    // resumed one keeps its session's certificate).
    let mut fresh = pki.client();
    fresh.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(fresh);

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, client) = (stop.clone(), served.clone(), client.clone());
            std::thread::spawn(move || {
                let mut leaves = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut c = tls_client(addr, "a.test", &client);
                    // A kept connection goes on after the reload too.
                    for _ in 0..3 {
                        assert_eq!(get_over(&mut c, "a.test", "/").status, 200);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    leaves.push(leaf_of(&c.s));
                }
                leaves
            })
        })
        .collect();

    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while served.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "load stalled at {n}");
            std::thread::park_timeout(Duration::from_millis(10));
        }
    };
    wait_for(200);
    // A bad certificate file is refused and the old one stays.
    std::fs::write(pki.path("broken.pem"), "not a certificate").unwrap();
    std::fs::copy(pki.path("a.key"), pki.path("broken.key")).unwrap();
    std::fs::write(&path, config(&pki.table(&["broken"], ""))).unwrap();
    let out = Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("reload")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let at = served.load(Ordering::Relaxed);
    wait_for(at + 100);
    // A new certificate, reloaded.
    let new = pki.leaf("a2", &["a.test"]);
    std::fs::write(&path, config(&pki.table(&["a2"], ""))).unwrap();
    let out = Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("reload")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = tls_client(addr, "a.test", &client);
    assert_eq!(leaf_of(&c.s), new);
    let at = served.load(Ordering::Relaxed);
    wait_for(at + 200);
    stop.store(true, Ordering::Relaxed);
    let mut leaves = Vec::new();
    for t in load {
        leaves.extend(t.join().expect("no request failed"));
    }
    assert!(leaves.contains(&old) && leaves.contains(&new));
    drop(child);
}

/// With `watch_config`, a certificate and key renewed in place, the
/// config file untouched, are reloaded: a new handshake soon gets the new
/// certificate. (A tick between the two writes finds a key that does not
/// match, rejects that reload and keeps the old pair; the key's own change
/// then reloads again.)
#[test]
fn watch_config_reloads_a_certificate_renewed_in_place() {
    let pki = Pki::new("renew");
    let old = pki.leaf("a", &["a.test"]);
    let origin = Origin::start(|_| ok("in"));
    let text = format!(
        "[server]\nworkers = 1\npin_cores = false\nwatch_config = true\n\n\
         [[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n{}\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"o\"\n",
        pki.table(&["a"], ""),
        origin.addr
    );
    let path = write_config("tls-renew.toml", &text);
    let (child, addr, logs) = start_with(&path, &[]);
    let _running = Running(Some(child));
    // Full handshakes only: a resumed one keeps its session's certificate.
    let mut fresh = pki.client();
    fresh.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(fresh);
    let leaf = || {
        let mut c = tls_client(addr, "a.test", &client);
        assert_eq!(get_over(&mut c, "a.test", "/").status, 200);
        leaf_of(&c.s)
    };
    assert_eq!(leaf(), old);

    let new = pki.leaf("a", &["a.test"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = leaf();
        if now == new {
            break;
        }
        assert_eq!(now, old, "neither certificate");
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never loaded"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    let said: Vec<String> = logs.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.contains("a.pem changed: reloading")
                || l.contains("a.key changed: reloading")),
        "{said:#?}"
    );
}

/// An HTTPS origin: a TLS server with the `file` certificate of `pki`
/// answering every request with `body`, keep-alive, and `/health` with
/// the status the test sets (200 until then).
struct TlsOrigin {
    addr: SocketAddr,
    seen: Arc<Observed>,
}

/// What a `TlsOrigin`'s connections tell the test.
#[derive(Default)]
struct Observed {
    connections: AtomicU64,
    /// Connections that carried a request other than to `/health`.
    serving: AtomicU64,
    /// The Host of each request to `/health`.
    health_hosts: Mutex<Vec<String>>,
    /// The status `/health` answers; 0 is 200.
    health: AtomicU16,
}

impl TlsOrigin {
    fn start(pki: &Pki, file: &str, body: &'static str) -> TlsOrigin {
        TlsOrigin::start_on("127.0.0.1:0".parse().unwrap(), pki, file, body)
    }

    fn start_on(bind: SocketAddr, pki: &Pki, file: &str, body: &'static str) -> TlsOrigin {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(pki.path(&format!("{file}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{file}.key"))).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Observed::default());
        let shared = seen.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let (config, seen) = (config.clone(), shared.clone());
                std::thread::spawn(move || {
                    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    TlsOrigin::serve(StreamOwned::new(conn, tcp), body, &seen);
                });
            }
        });
        TlsOrigin { addr, seen }
    }

    fn serve(
        mut s: StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
        body: &str,
        seen: &Observed,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut serving = false;
        loop {
            while find(&buf, b"\r\n\r\n").is_none() {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let end = find(&buf, b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end);
            let reply = if head.starts_with("GET /health ") {
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Host: "))
                    .unwrap_or("(none)");
                seen.health_hosts.lock().unwrap().push(host.to_string());
                let status = seen.health.load(Ordering::Relaxed).max(200);
                format!("HTTP/1.1 {status} Health\r\nContent-Length: 0\r\n\r\n")
            } else {
                if !serving {
                    serving = true;
                    seen.serving.fetch_add(1, Ordering::Relaxed);
                }
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            };
            if s.write_all(reply.as_bytes())
                .and_then(|()| s.flush())
                .is_err()
            {
                return;
            }
        }
    }
}

/// A plain listener in front of an upstream spoken to over TLS, `tls` its
/// upstream setting.
fn to_tls_upstream(origin: impl std::fmt::Display, tls: &str, more: &str) -> String {
    format!(
        "[server]\nworkers = 1\npin_cores = false\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"secure\"\nendpoints = [\"{origin}\"]\ntls = {tls}\n{more}\n\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"secure\"\n"
    )
}

#[test]
fn an_upstream_over_tls_is_verified_pooled_and_health_checked() {
    let pki = Pki::new("up");
    pki.leaf("origin", &["origin.test"]);
    let origin = TlsOrigin::start(&pki, "origin", "secret");
    origin.seen.health.store(503, Ordering::Relaxed);
    let ca = pki.path("ca.pem");
    let text = to_tls_upstream(
        origin.addr,
        &format!("{{ sni = \"origin.test\", ca = \"{}\" }}", ca.display()),
        "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"1s\", \
         unhealthy_after = 2, healthy_after = 2 }",
    );
    let config = ringway::Config::parse(Path::new("up.toml"), &text).unwrap();
    let proxy = ringway::Server::start(config).unwrap();
    let series = format!(
        "ringway_upstream_endpoint_healthy{{upstream=\"secure\",endpoint=\"{}\"}}",
        origin.addr
    );
    let healthy_is = |value: f64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = proxy.ask(ringway::control::Command::Metrics).unwrap();
            let text = reply["text"].as_str().unwrap().to_string();
            if sample(&text, &series) == Some(value) {
                return;
            }
            assert!(Instant::now() < deadline, "{series} never {value}:\n{text}");
            std::thread::park_timeout(Duration::from_millis(10));
        }
    };
    // Probed over TLS: marked down while /health says 503 (requests are
    // then answered 503 at once), up again once it says 200.
    healthy_is(0.0);
    let r = get_over(&mut Client::connect(proxy.addr()), "t", "/");
    assert_eq!(r.status, 503, "{}", r.text());
    origin.seen.health.store(200, Ordering::Relaxed);
    healthy_is(1.0);
    let mut c = Client::connect(proxy.addr());
    for _ in 0..20 {
        let r = get_over(&mut c, "t", "/");
        assert_eq!((r.status, r.text().as_str()), (200, "secret"));
    }
    // Pooled: one connection carried the requests.
    assert_eq!(origin.seen.serving.load(Ordering::Relaxed), 1);
    // Probes ask for the name they verify, as a client of it would.
    let hosts = origin.seen.health_hosts.lock().unwrap().clone();
    let port = origin.addr.port();
    assert!(!hosts.is_empty());
    assert!(
        hosts.iter().all(|h| *h == format!("origin.test:{port}")),
        "{hosts:?}"
    );
}

/// A reload keeps an upstream's pooled TLS connections only while it
/// would connect alike: the CA file rewritten in place, or an endpoint
/// written with another name for the same address, starts the endpoint
/// afresh, and its next request is verified again.
#[test]
fn a_reload_that_changes_the_ca_file_or_an_endpoints_name_drops_pooled_tls_connections() {
    use ringway::control::Command;
    use std::net::ToSocketAddrs;
    let pki = Pki::new("up-reload");
    pki.leaf("origin", &["localhost"]);
    let other = Pki::new("up-reload-other");
    // Where the proxy resolves "localhost" to, so that the endpoint can be
    // written both ways.
    #[allow(clippy::disallowed_methods)]
    let local = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap();
    let origin = TlsOrigin::start_on(local, &pki, "origin", "secret");
    let ca = pki.path("upstream-ca.pem");
    std::fs::copy(pki.path("ca.pem"), &ca).unwrap();
    let config =
        |endpoint: &str| to_tls_upstream(endpoint, &format!("{{ ca = \"{}\" }}", ca.display()), "");
    let by_name = format!("localhost:{}", origin.addr.port());
    let path = write_config("tls-upstream-reload.toml", &config(&by_name));
    let proxy = ringway::Server::start(ringway::Config::load(&path).unwrap()).unwrap();
    let get = || get_over(&mut Client::connect(proxy.addr()), "t", "/").status;
    let reload = || proxy.ask(Command::Reload).expect("reload");
    let connections = || origin.seen.connections.load(Ordering::Relaxed);

    assert_eq!((get(), get(), connections()), (200, 200, 1));
    // Nothing changed: the pooled connection goes on.
    reload();
    assert_eq!((get(), connections()), (200, 1));
    // Another CA written over the same file: the origin no longer verifies,
    // and the connection verified before is not used.
    std::fs::copy(other.path("ca.pem"), &ca).unwrap();
    reload();
    assert_eq!(get(), 502);
    // The right CA again: a new connection, verified.
    std::fs::copy(pki.path("ca.pem"), &ca).unwrap();
    reload();
    let before = connections();
    assert_eq!((get(), get(), connections()), (200, 200, before + 1));
    // The same address written as an IP address: verified for that, which
    // the certificate does not cover.
    std::fs::write(&path, config(&origin.addr.to_string())).unwrap();
    reload();
    assert_eq!(get(), 502);
}

/// `timeouts.upstream_connect` bounds the TCP connect and the TLS
/// handshake together. The origin's accept queue is full when the proxy
/// connects, so the proxy's SYN is dropped and sent again a second later
/// (the kernel's first retransmission); the origin then takes the
/// connection and never answers the ClientHello.
#[test]
fn upstream_connect_bounds_the_connect_and_the_tls_handshake_together() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    // A queue of two (the kernel takes one more than the backlog), filled.
    listener.listen(1).unwrap();
    listener.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let origin = listener.local_addr().unwrap().as_socket().unwrap();
    let fillers = [(); 2].map(|()| std::net::TcpStream::connect(origin).unwrap());
    let text = to_tls_upstream(origin, "{ insecure_skip_verify = true }", "")
        + "\n[timeouts]\nupstream_connect = \"1500ms\"\n";
    let config = ringway::Config::parse(Path::new("connect.toml"), &text).unwrap();
    let proxy = ringway::Server::start(config).unwrap();
    let mut c = Client::connect(proxy.addr());
    let began = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    // The proxy's SYN went unanswered: its socket waits in SYN-SENT.
    let deadline = began + Duration::from_secs(5);
    while !syn_sent_to(origin) {
        assert!(Instant::now() < deadline, "the proxy never connected");
        std::thread::park_timeout(Duration::from_millis(5));
    }
    for _ in &fillers {
        listener.accept().unwrap();
    }
    let (_held, _) = listener.accept().expect("the SYN sent again is taken");
    let connected = began.elapsed();
    let r = c.read(false).expect("a response");
    let took = began.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        connected >= Duration::from_millis(800),
        "connected after {connected:?}: the SYN was not dropped"
    );
    assert!(
        took < Duration::from_millis(1500 + 400),
        "502 after {took:?}, the TCP connect done after {connected:?}"
    );
}

/// Whether a socket of this host is in SYN-SENT towards `to` (IPv4).
fn syn_sent_to(to: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = to else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(2) == Some(&want.as_str()) && f.get(3) == Some(&"02")
    })
}

#[test]
fn an_upstream_certificate_that_does_not_verify_is_a_502_logged_once() {
    let pki = Pki::new("wrongca");
    pki.leaf("origin", &["origin.test"]);
    let origin = TlsOrigin::start(&pki, "origin", "secret");
    let other = Pki::new("otherca");
    let text = to_tls_upstream(
        origin.addr,
        &format!(
            "{{ sni = \"origin.test\", ca = \"{}\" }}",
            other.path("ca.pem").display()
        ),
        "",
    );
    let path = write_config("tls-wrong-ca.toml", &text);
    let (child, addr, logs) = start_with(&path, &[]);
    let _running = Running(Some(child));
    let mut c = Client::connect(addr);
    for _ in 0..10 {
        let r = get_over(&mut c, "t", "/");
        assert_eq!(r.status, 502, "{}", r.text());
    }
    // The same name with the wrong CA, and insecure_skip_verify: served,
    // and `check` warns.
    let text = to_tls_upstream(
        origin.addr,
        &format!(
            "{{ sni = \"origin.test\", ca = \"{}\", insecure_skip_verify = true }}",
            other.path("ca.pem").display()
        ),
        "",
    );
    let insecure = write_config("tls-insecure.toml", &text);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&insecure)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("insecure_skip_verify") && said.contains("not verified"),
        "{said}"
    );
    let config = ringway::Config::parse(&insecure, &text).unwrap();
    let proxy = ringway::Server::start(config).unwrap();
    assert_eq!(
        get_over(&mut Client::connect(proxy.addr()), "t", "/").status,
        200
    );

    // Every line the proxy wrote: the reader ends with its stderr.
    drop(_running);
    let lines: Vec<String> = logs.iter().collect();
    let said: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("upstream 'secure'"))
        .collect();
    assert_eq!(said.len(), 1, "{lines:#?}");
    assert!(said[0].contains("certificate"), "{}", said[0]);
}

#[test]
fn big_bodies_both_ways_and_a_quiet_connection_over_tls() {
    let pki = Pki::new("big");
    pki.leaf("a", &["a.test"]);
    let origin = Origin::start(|s| match s.target.as_str() {
        "/down" => Reply::Big(3 << 20),
        _ => ok(&format!("{} {}", s.body_len, s.body_sum)),
    });
    let proxy = tls_proxy(origin.addr, &pki.table(&["a"], ""), "");
    let client = Arc::new(pki.client());
    let mut c = tls_client(proxy.addr(), "a.test", &client);

    // 3 MiB down: more than rustls takes in at once (16 KiB of plaintext).
    let r = get_over(&mut c, "a.test", "/down");
    assert_eq!(r.status, 200);
    let piece = big_piece();
    assert_eq!(r.body.len(), 3 << 20);
    assert!(
        r.body
            .chunks(piece.len())
            .all(|chunk| chunk == &piece[..chunk.len()])
    );

    // 2 MiB up, then a request right behind it in the same writes.
    let body: Vec<u8> = (0..2u32 << 20).map(|i| (i % 253) as u8).collect();
    let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
    let mut raw = format!(
        "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    raw.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n");
    c.send(&raw);
    assert_eq!(
        c.read(false).unwrap().text(),
        format!("{} {sum}", body.len())
    );
    assert_eq!(c.read(false).unwrap().text(), "0 0");

    // Quiet: the shard demotes the connection (no buffer leased), and it
    // is served again from its next byte.
    let leased = |proxy: &ringway::Server| {
        let reply = proxy.ask(ringway::control::Command::Metrics).unwrap();
        let text = reply["text"].as_str().unwrap().to_string();
        text.lines()
            .find(|l| l.starts_with("ringway_buffers_leased "))
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while leased(&proxy) != "0" {
        assert!(
            Instant::now() < deadline,
            "the quiet connection kept its buffer"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert_eq!(get_over(&mut c, "a.test", "/again").text(), "0 0");
    // Pipelined after the quiet spell: two in one write.
    c.send(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(c.read(false).unwrap().status, 200);
    assert_eq!(c.read(false).unwrap().status, 200);
}
