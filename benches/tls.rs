//! The two crypto providers rustls can run on, side by side, for what a
//! TLS listener spends: a full handshake with an ECDSA P-256 certificate,
//! a resumed one (TLS 1.3 ticket), and a request and response each way on
//! an established session (a 100-byte request in, a 16 KiB response out).
//! Client and server run in memory in one thread, so each figure holds the
//! client's work too; the ratio between providers is the point.
//!
//!     cargo bench --bench tls

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use rcgen::{CertificateParams, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::ProducesTickets;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

struct Pair {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn configs(provider: CryptoProvider, ticketer: Arc<dyn ProducesTickets>) -> Pair {
    let provider = Arc::new(provider);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = CertificateParams::new(vec!["bench.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(key.serialize_der());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key.into())
        .unwrap();
    server.ticketer = ticketer;
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pair {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

fn handshake(pair: &Pair, client: Arc<ClientConfig>) -> (rustls::Connection, rustls::Connection) {
    let name = ServerName::try_from("bench.test").unwrap();
    let mut c: rustls::Connection = ClientConnection::new(client, name).unwrap().into();
    let mut s: rustls::Connection = ServerConnection::new(pair.server.clone()).unwrap().into();
    while c.is_handshaking() || s.is_handshaking() {
        pump(&mut c, &mut s);
        pump(&mut s, &mut c);
    }
    // The tickets the server sends after the handshake.
    pump(&mut s, &mut c);
    (c, s)
}

fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
}

fn providers(c: &mut Criterion) {
    let request = [b'x'; 100];
    let response = vec![b'y'; 16 << 10];
    let mut out = vec![0u8; 32 << 10];
    // Each with its own ticketer, so that resumption uses its crypto too.
    let aws: Arc<dyn ProducesTickets> = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    let ring: Arc<dyn ProducesTickets> = rustls::crypto::ring::Ticketer::new().unwrap();
    // aws-lc-rs prefers the post-quantum hybrid X25519MLKEM768, which ring
    // lacks: also without it, for like against like.
    let mut classic = rustls::crypto::aws_lc_rs::default_provider();
    classic
        .kx_groups
        .retain(|g| g.name() != rustls::NamedGroup::X25519MLKEM768);
    for (name, provider, ticketer) in [
        (
            "aws-lc-rs",
            rustls::crypto::aws_lc_rs::default_provider(),
            aws.clone(),
        ),
        ("aws-lc-rs without ML-KEM", classic, aws),
        ("ring", rustls::crypto::ring::default_provider(), ring),
    ] {
        let pair = configs(provider, ticketer);
        let mut g = c.benchmark_group(format!("tls/{name}"));
        g.bench_function("full handshake", |b| {
            b.iter(|| {
                // Nothing to resume.
                let mut fresh = (*pair.client).clone();
                fresh.resumption = rustls::client::Resumption::disabled();
                black_box(handshake(&pair, Arc::new(fresh)))
            })
        });
        // One client config keeps the tickets the server gives it.
        let resuming = pair.client.clone();
        handshake(&pair, resuming.clone());
        g.bench_function("resumed handshake", |b| {
            b.iter(|| black_box(handshake(&pair, resuming.clone())))
        });
        let (mut client, mut server) = handshake(&pair, pair.client.clone());
        g.bench_function("100 B in, 16 KiB out", |b| {
            b.iter(|| {
                use std::io::{Read, Write};
                client.writer().write_all(&request).unwrap();
                pump(&mut client, &mut server);
                let n = server.reader().read(&mut out).unwrap();
                server.writer().write_all(&response).unwrap();
                pump(&mut server, &mut client);
                let mut got = 0;
                while got < response.len() {
                    got += client.reader().read(&mut out).unwrap();
                }
                black_box((n, got))
            })
        });
        g.finish();
    }
}

criterion_group!(benches, providers);
criterion_main!(benches);
