//! TLS records after the handshake, as a peer would send them: any run of
//! records of any type and content (alerts, post-handshake messages split
//! anyhow, application data), sealed with the peer's keys, one byte of the
//! stream flipped or not, opened whole or record by record. Never panics;
//! both ways give the same plaintext, or both fail; what the session has
//! to say back seals.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway::tls::fuzzing;

/// The record at the front of `buf`, if whole.
fn record(buf: &[u8]) -> Option<usize> {
    let len = 5 + usize::from(u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]));
    (buf.len() >= len).then_some(len)
}

fuzz_target!(|data: &[u8]| {
    // The first byte: TLS 1.3 or 1.2, AES-GCM or ChaCha20, a flip or not;
    // the second, where the flip goes.
    let [flags, at, rest @ ..] = data else {
        return;
    };
    let (tls13, chacha, flip) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let (mut whole, mut peer) = fuzzing::pair(tls13, chacha);
    let (mut pieces, _) = fuzzing::pair(tls13, chacha);
    // The rest: records as [type, length, content...].
    let mut wire = Vec::new();
    let mut rest = rest;
    while let [typ, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        // Content types as TLS has them, 20 to 24, mostly.
        fuzzing::seal(&mut peer, 20 + typ % 5, &tail[..n], &mut wire);
        rest = &tail[n..];
    }
    if flip && !wire.is_empty() {
        let i = usize::from(*at) * 7 % wire.len();
        wire[i] ^= 1 << (at % 8);
    }

    let mut buf = wire.clone();
    let opened = fuzzing::open(&mut whole, &mut buf);
    let once = opened.as_ref().ok().map(|&(plain, taken)| {
        assert!(plain <= taken && taken <= buf.len());
        buf[..plain].to_vec()
    });

    let mut by_record = Some(Vec::new());
    let mut off = 0;
    while off < wire.len() {
        // A record cut short goes in too: a length over the limit fails
        // before the rest comes.
        let len = record(&wire[off..]).unwrap_or(wire.len() - off);
        let mut one = wire[off..off + len].to_vec();
        match fuzzing::open(&mut pieces, &mut one) {
            Ok((plain, taken)) => {
                assert!(plain <= taken && taken <= len);
                if let Some(got) = by_record.as_mut() {
                    got.extend_from_slice(&one[..plain]);
                }
            }
            Err(_) => {
                by_record = None;
                break;
            }
        }
        off += len;
    }
    if let (Some(a), Some(b)) = (&once, &by_record) {
        assert_eq!(a, b, "whole and record by record differ");
    }
    assert_eq!(
        once.is_some(),
        by_record.is_some(),
        "one way failed and the other did not"
    );
    let _ = fuzzing::flush(&mut whole);
    let _ = fuzzing::flush(&mut pieces);
});
