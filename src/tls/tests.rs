//! The halves against rustls's buffered connection over real sockets, with
//! the hard cases forced: records of 64 bytes (handshake messages and
//! tickets split over records), a peer that sends a few bytes at a time,
//! caller buffers of one byte and more, a KeyUpdate, close_notify, and the
//! byte a quiet connection waits for; TLS 1.3 and 1.2.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::*;

/// Requests and responses, in bytes, one pair a round on one connection.
const ROUNDS: [(usize, usize); 5] = [
    (100, 100),
    (20_000, 50_000),
    (1, 70_000),
    (5_000, 5),
    (40_000, 40_000),
];

/// Caller buffers the ringway side reads into, in turn.
const ROOMS: [usize; 5] = [1, 7, 333, 32 << 10, 5];

fn pattern(len: usize, round: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + round * 13) as u8).collect()
}

/// A server and a client config that trusts it, for `test.local`, sending
/// records of at most `fragment` bytes.
fn configs(
    version: &'static SupportedProtocolVersion,
    fragment: Option<usize>,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["test.local".to_string()]).unwrap();
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.max_fragment_size = fragment;
    server.send_tls13_tickets = 4;
    server.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.max_fragment_size = fragment;
    client.enable_secret_extraction = true;
    (Arc::new(server), Arc::new(client))
}

/// A socket that sends its first `slow` bytes a few at a time, apart.
struct Dribble {
    tcp: std::net::TcpStream,
    slow: usize,
}

impl Read for Dribble {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Dribble {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.slow == 0 {
            return self.tcp.write(buf);
        }
        let n = buf.len().min(7).min(self.slow);
        self.slow -= n;
        #[allow(clippy::disallowed_methods)] // a slow peer, on a thread of its own
        std::thread::sleep(Duration::from_micros(300));
        self.tcp.write(&buf[..n])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

fn dribble(tcp: std::net::TcpStream) -> Dribble {
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Dribble {
        tcp,
        slow: 12 << 10,
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}

/// Reads `n` bytes of plaintext with reads of at most `room` bytes, each
/// behind bytes the buffer already holds, as `io::read_more` reads.
async fn read_plain(r: &mut TlsRead, n: usize, room: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let before = b"kept";
    while got.len() < n {
        let mut buf = Vec::with_capacity(before.len() + room);
        buf.extend_from_slice(before);
        let (res, slice) = r
            .read(buf.slice_mut(before.len()..before.len() + room))
            .await;
        let buf = slice.into_inner();
        let k = res.unwrap();
        assert!(k > 0, "the stream ended after {} of {n} bytes", got.len());
        assert_eq!(&buf[..before.len()], before, "what the buffer held is kept");
        assert_eq!(
            buf.len(),
            before.len() + k,
            "the plaintext read is initialised"
        );
        got.extend_from_slice(&buf[before.len()..]);
    }
    got
}

fn split_seen() -> u32 {
    session::SPLIT.get()
}

/// ringway as the client of an upstream that splits every message over
/// records of 64 bytes, its tickets too, and dribbles its first bytes.
fn as_client(version: &'static SupportedProtocolVersion) {
    let (server, client) = configs(version, Some(64));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(server).unwrap();
        let mut s = rustls::StreamOwned::new(conn, dribble(tcp));
        for (round, &(req, resp)) in ROUNDS.iter().enumerate() {
            let mut got = vec![0; req];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, pattern(req, round), "request {round}");
            s.write_all(&pattern(resp, round)).unwrap();
            s.flush().unwrap();
        }
        // ringway's close_notify, then the end.
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    });
    let split_before = split_seen();
    block_on(async move {
        let mut tcp = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let name = ServerName::try_from("test.local").unwrap();
        let session = connect(&mut tcp, client, name, Duration::from_secs(10))
            .await
            .unwrap();
        let (mut r, mut w) = split(tcp, session);
        for (round, &(req, resp)) in ROUNDS.iter().enumerate() {
            let (res, _) = w.write_all(pattern(req, round)).await;
            res.unwrap();
            let got = read_plain(&mut r, resp, ROOMS[round]).await;
            assert_eq!(got, pattern(resp, round), "response {round}");
        }
        w.shutdown().await.unwrap();
    });
    origin.join().unwrap();
    if version == &rustls::version::TLS13 {
        assert!(
            split_seen() > split_before,
            "a ticket split over records was put together"
        );
    }
}

#[test]
fn as_client_of_an_upstream_splitting_records_tls13() {
    as_client(&rustls::version::TLS13);
}

#[test]
fn as_client_of_an_upstream_splitting_records_tls12() {
    as_client(&rustls::version::TLS12);
}

/// ringway as the server of a client that splits every message over
/// records of 64 bytes and dribbles its first bytes; a quiet wait for one
/// byte; a KeyUpdate on TLS 1.3; the client's close_notify.
fn as_server(version: &'static SupportedProtocolVersion, fragment: Option<usize>) {
    let (server, client) = configs(version, fragment);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    let tls13 = version == &rustls::version::TLS13;
    let ringway = std::thread::spawn(move || {
        block_on(async move {
            let listener = monoio::net::TcpListener::bind(addr).unwrap();
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = Vec::with_capacity(32 << 10);
            let date = b"Mon, 23 Nov 2026 00:00:00 GMT";
            let session = accept(&mut tcp, server, &mut buf, Duration::from_secs(10), date)
                .await
                .unwrap();
            assert!(buf.is_empty(), "the handshake leaves its buffer empty");
            let (mut r, mut w) = split(tcp, session);
            for (round, &(req, resp)) in ROUNDS.iter().enumerate() {
                if round == 3 {
                    // A quiet connection's wait: one byte of ciphertext.
                    let (res, byte) = r.tcp().read(Box::new([0u8; 1])).await;
                    assert_eq!(res.unwrap(), 1);
                    r.push(&byte[..]).unwrap();
                    w.release();
                }
                let got = read_plain(&mut r, req, ROOMS[round]).await;
                assert_eq!(got, pattern(req, round), "request {round}");
                let (res, _) = w.write_all(pattern(resp, round)).await;
                res.unwrap();
            }
            // The client's close_notify ends the stream.
            let (res, _) = r.read(Vec::with_capacity(100)).await;
            assert_eq!(res.unwrap(), 0);
            w.shutdown().await.unwrap();
        })
    });
    let tcp = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(tcp) => break tcp,
            #[allow(clippy::disallowed_methods)] // the test thread, not a shard
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let name = ServerName::try_from("test.local").unwrap();
    let conn = rustls::ClientConnection::new(client, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, dribble(tcp));
    for (round, &(req, resp)) in ROUNDS.iter().enumerate() {
        if tls13 && round == 2 {
            // ringway answers with its own KeyUpdate before the response.
            s.conn.refresh_traffic_keys().unwrap();
        }
        s.write_all(&pattern(req, round)).unwrap();
        s.flush().unwrap();
        let mut got = vec![0; resp];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, pattern(resp, round), "response {round}");
    }
    s.conn.send_close_notify();
    s.flush().unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "ringway's close_notify"
    );
    ringway.join().unwrap();
}

#[test]
fn as_server_of_a_client_splitting_records_tls13() {
    as_server(&rustls::version::TLS13, Some(64));
}

#[test]
fn as_server_of_a_client_splitting_records_tls12() {
    as_server(&rustls::version::TLS12, Some(64));
}

#[test]
fn as_server_with_full_records() {
    as_server(&rustls::version::TLS13, None);
    as_server(&rustls::version::TLS12, None);
}

/// A record that does not decrypt: the read fails, and the shutdown that
/// follows sends the alert rustls has for the peer.
#[test]
fn a_tampered_record_is_invalid_data() {
    let (server, client) = configs(&rustls::version::TLS13, None);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(server).unwrap();
        conn.complete_io(&mut tcp).unwrap();
        conn.writer().write_all(b"hello").unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        let last = out.len() - 1;
        out[last] ^= 1;
        tcp.write_all(&out).unwrap();
        // The alert, then the end.
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
        rest
    });
    block_on(async move {
        let mut tcp = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let name = ServerName::try_from("test.local").unwrap();
        let session = connect(&mut tcp, client, name, Duration::from_secs(10))
            .await
            .unwrap();
        let (mut r, mut w) = split(tcp, session);
        let (res, _) = r.read(Vec::with_capacity(1024)).await;
        assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        let (res, _) = w.write(b"more".to_vec()).await;
        assert!(res.is_err(), "a failed session writes nothing more");
        w.shutdown().await.unwrap();
    });
    let rest = peer.join().unwrap();
    // An encrypted alert: a record of type 23 (TLS 1.3 hides the type).
    assert!(rest.first() == Some(&23), "{rest:?}");
}

/// After `KEY_UPDATE_AFTER` records (40 under test) a TLS 1.3 session
/// sends a KeyUpdate and seals with the next keys; the peer reads on.
#[test]
fn keys_are_updated_after_their_share_of_records() {
    let (server, client) = configs(&rustls::version::TLS13, None);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    const WRITES: usize = 100;
    let peer = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(server).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut got = vec![0; WRITES * 10];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, pattern(WRITES * 10, 1));
        s.write_all(b"ok").unwrap();
        s.flush().unwrap();
    });
    block_on(async move {
        let mut tcp = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let name = ServerName::try_from("test.local").unwrap();
        let session = connect(&mut tcp, client, name, Duration::from_secs(10))
            .await
            .unwrap();
        let (mut r, mut w) = split(tcp, session);
        for chunk in pattern(WRITES * 10, 1).chunks(10) {
            let (res, _) = w.write_all(chunk.to_vec()).await;
            res.unwrap();
        }
        let sealed = w.session.borrow().sealed_with_these_keys();
        assert!(sealed < 40, "{sealed} records sealed with one key");
        assert_eq!(read_plain(&mut r, 2, 100).await, b"ok");
    });
    peer.join().unwrap();
}
