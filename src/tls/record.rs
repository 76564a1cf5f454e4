//! TLS records after the handshake, sealed and opened in place with the
//! traffic keys rustls hands over (RFC 8446 §5.2 for TLS 1.3, RFC 5288
//! and RFC 7905 for TLS 1.2's AES-GCM and ChaCha20-Poly1305).
//!
//! A record is a 5-byte header, then the protected payload: for TLS 1.3
//! the plaintext, its real content type and the tag (the header says
//! "application data" whatever it carries); for TLS 1.2 with AES-GCM an
//! 8-byte explicit nonce, the plaintext and the tag; with ChaCha20 the
//! plaintext and the tag. The nonce is the key's IV with the record's
//! sequence number XORed into its last 8 bytes, except TLS 1.2 AES-GCM's
//! on the way in, whose last 8 bytes the record carries.

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce};
use aws_lc_rs::aead::{Algorithm, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// A record's header.
pub const HEADER: usize = 5;

/// The most plaintext one record carries (RFC 8446 §5.1).
pub const MAX_PLAIN: usize = 16 << 10;

/// The longest protected payload a record may have (RFC 8446 §5.2).
pub const MAX_PAYLOAD: usize = MAX_PLAIN + 256;

/// The authentication tag of every suite ringway offers.
const TAG: usize = 16;

/// TLS 1.2 AES-GCM's explicit nonce.
const EXPLICIT: usize = 8;

/// Content types.
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// The legacy version every record's header carries.
const VERSION: [u8; 2] = [3, 3];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Version {
    Tls12,
    Tls13,
}

/// Why a record was refused, as the alert that says so (RFC 8446 §6.2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refusal {
    /// The tag did not verify: tampered with, or the wrong keys.
    BadRecordMac = 20,
    /// Longer than a record may be.
    RecordOverflow = 22,
    /// Not the message or record expected here.
    UnexpectedMessage = 10,
    /// A message that does not parse.
    DecodeError = 50,
    /// The keys ran out of sequence numbers (2^64 records).
    InternalError = 80,
    /// The peer sent a fatal alert: nothing is said back.
    PeerAlert = 0,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::BadRecordMac => "a TLS record did not decrypt",
            Refusal::RecordOverflow => "a TLS record longer than allowed",
            Refusal::UnexpectedMessage => "an unexpected TLS message",
            Refusal::DecodeError => "a malformed TLS message",
            Refusal::InternalError => "TLS sequence numbers used up",
            Refusal::PeerAlert => "the TLS peer sent a fatal alert",
        })
    }
}

/// The keys of one direction, and the sequence number of its next record.
pub struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.2 AES-GCM: each record carries the last 8 bytes of its nonce.
    explicit: bool,
}

impl Keys {
    /// The keys rustls extracted, or derived at a key update, for `version`.
    pub fn new(version: Version, (seq, secrets): (u64, ConnectionTrafficSecrets)) -> Option<Keys> {
        let (algorithm, key, iv, gcm): (&'static Algorithm, _, _, bool) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&CHACHA20_POLY1305, key, iv, false)
            }
            _ => return None,
        };
        Some(Keys {
            key: LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).ok()?),
            iv: iv.as_ref().try_into().ok()?,
            seq,
            explicit: gcm && version == Version::Tls12,
        })
    }

    /// Records sealed or opened with these keys so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Where a record's plaintext starts.
    pub fn prefix(&self) -> usize {
        HEADER + if self.explicit { EXPLICIT } else { 0 }
    }

    /// A record's length around `len` bytes of plaintext.
    pub fn sealed_len(&self, version: Version, len: usize) -> usize {
        self.prefix() + len + TAG + usize::from(version == Version::Tls13)
    }

    /// The nonce of the next record, and its sequence number, which is
    /// used up.
    fn next(&mut self) -> Result<([u8; 12], u64), Refusal> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(Refusal::InternalError)?;
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        Ok((nonce, seq))
    }

    /// Seals a record of type `typ` whose `len` bytes of plaintext are in
    /// place at `rec[self.prefix()..]`; `rec` is at least
    /// `sealed_len(version, len)` long. Returns the record's length.
    pub fn seal(
        &mut self,
        version: Version,
        typ: u8,
        rec: &mut [u8],
        len: usize,
    ) -> Result<usize, Refusal> {
        let total = self.sealed_len(version, len);
        let payload = total - HEADER;
        let (nonce, seq) = self.next()?;
        let at = self.prefix();
        let end = match version {
            Version::Tls13 => {
                rec[at + len] = typ;
                at + len + 1
            }
            Version::Tls12 => at + len,
        };
        let outer = if version == Version::Tls13 {
            APPLICATION_DATA
        } else {
            typ
        };
        rec[0] = outer;
        rec[1..3].copy_from_slice(&VERSION);
        rec[3..5].copy_from_slice(&(payload as u16).to_be_bytes());
        if self.explicit {
            rec[HEADER..at].copy_from_slice(&nonce[4..]);
        }
        let header: [u8; HEADER] = rec[..HEADER].try_into().unwrap_or_default();
        let tag = match version {
            Version::Tls13 => self.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut rec[at..end],
            ),
            Version::Tls12 => self.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(tls12_aad(seq, typ, len)),
                &mut rec[at..end],
            ),
        }
        .map_err(|_| Refusal::InternalError)?;
        rec[end..end + TAG].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Opens the whole record `rec` (header included) in place. Returns
    /// its content type and where its plaintext lies in `rec`.
    pub fn open(
        &mut self,
        version: Version,
        rec: &mut [u8],
    ) -> Result<(u8, std::ops::Range<usize>), Refusal> {
        let header: [u8; HEADER] = rec
            .get(..HEADER)
            .and_then(|h| h.try_into().ok())
            .ok_or(Refusal::DecodeError)?;
        let outer = header[0];
        if version == Version::Tls13 && outer != APPLICATION_DATA {
            // After the handshake every TLS 1.3 record is protected, and
            // says "application data" outside.
            return Err(Refusal::UnexpectedMessage);
        }
        let payload = &mut rec[HEADER..];
        if payload.len() > MAX_PAYLOAD {
            return Err(Refusal::RecordOverflow);
        }
        let at = self.prefix() - HEADER;
        if payload.len() < at + TAG {
            return Err(Refusal::BadRecordMac);
        }
        let (mut nonce, seq) = self.next()?;
        if self.explicit {
            nonce[4..].copy_from_slice(&payload[..EXPLICIT]);
        }
        let opened = match version {
            Version::Tls13 => self.key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                payload,
            ),
            Version::Tls12 => {
                let len = payload.len() - at - TAG;
                self.key.open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(tls12_aad(seq, outer, len)),
                    &mut payload[at..],
                )
            }
        }
        .map_err(|_| Refusal::BadRecordMac)?;
        let mut len = opened.len();
        let typ = match version {
            Version::Tls12 => outer,
            Version::Tls13 => {
                // The content type is the last byte that is not padding.
                let padded = &opened[..len];
                len = padded
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or(Refusal::UnexpectedMessage)?;
                padded[len]
            }
        };
        if len > MAX_PLAIN {
            return Err(Refusal::RecordOverflow);
        }
        let start = HEADER + at;
        Ok((typ, start..start + len))
    }
}

/// TLS 1.2's additional data: sequence number, type, version, length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&VERSION);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// The length of the record at the front of `buf`, if its header is there.
pub fn record_len(buf: &[u8]) -> Option<usize> {
    let h = buf.get(..HEADER)?;
    Some(HEADER + usize::from(u16::from_be_bytes([h[3], h[4]])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn pair(version: Version, suite: u8) -> (Keys, Keys) {
        let make = || {
            let key = AeadKey::from([7u8; 32]);
            let iv = Iv::new([9u8; 12]);
            let secrets = match suite {
                0 => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
                _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
            };
            Keys::new(version, (5, secrets)).unwrap()
        };
        (make(), make())
    }

    #[test]
    fn records_round_trip_and_refuse_tampering() {
        for version in [Version::Tls12, Version::Tls13] {
            for suite in [0, 1] {
                let (mut tx, mut rx) = pair(version, suite);
                for len in [0, 1, 100, MAX_PLAIN] {
                    let mut rec = vec![0; tx.sealed_len(version, len)];
                    let at = tx.prefix();
                    for (i, b) in rec[at..at + len].iter_mut().enumerate() {
                        *b = i as u8;
                    }
                    let n = tx.seal(version, APPLICATION_DATA, &mut rec, len).unwrap();
                    assert_eq!(n, rec.len());
                    assert_eq!(record_len(&rec), Some(n));
                    let mut copy = rec.clone();
                    let (typ, range) = rx.open(version, &mut rec).unwrap();
                    assert_eq!((typ, range.len()), (APPLICATION_DATA, len));
                    assert!(rec[range].iter().enumerate().all(|(i, &b)| b == i as u8));
                    // The same record again is out of sequence.
                    assert_eq!(rx.open(version, &mut copy), Err(Refusal::BadRecordMac));
                    rx.seq -= 1;
                    let last = copy.len() - 1;
                    copy[last] ^= 1;
                    assert_eq!(rx.open(version, &mut copy), Err(Refusal::BadRecordMac));
                    rx.seq -= 1;
                    tx.seq = rx.seq;
                }
            }
        }
    }

    #[test]
    fn tls13_hides_the_type_and_refuses_plain_records() {
        let (mut tx, mut rx) = pair(Version::Tls13, 0);
        let mut rec = vec![0; tx.sealed_len(Version::Tls13, 2)];
        rec[HEADER..HEADER + 2].copy_from_slice(&[1, 0]);
        tx.seal(Version::Tls13, ALERT, &mut rec, 2).unwrap();
        assert_eq!(rec[0], APPLICATION_DATA);
        let (typ, range) = rx.open(Version::Tls13, &mut rec).unwrap();
        assert_eq!((typ, &rec[range]), (ALERT, &[1u8, 0][..]));
        let mut plain = [HANDSHAKE, 3, 3, 0, 20];
        assert_eq!(
            rx.open(Version::Tls13, &mut plain),
            Err(Refusal::UnexpectedMessage)
        );
        let mut long = vec![APPLICATION_DATA, 3, 3, 0x44, 0x01];
        long.resize(HEADER + MAX_PAYLOAD + 1, 0);
        assert_eq!(
            rx.open(Version::Tls13, &mut long),
            Err(Refusal::RecordOverflow)
        );
    }
}
