//! The session: rustls's unbuffered connection, either side, and the
//! records that go through it. Everything here is synchronous: the halves
//! (`read`, `write`) do the I/O and call in between awaits.
//!
//! rustls is handed ciphertext and gives back states, each to be dealt
//! with before the next call (`open`, `seal`, `step`). A call must be handed
//! the records rustls still refers to: the `discard` it reports says how
//! much of the front it is done with, and all it has not discarded is
//! handed to it again, in place. That is nothing once a call has taken
//! every whole record, but for a handshake message split over records,
//! whose first parts wait in `held` until the rest comes.

use std::io;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};

use super::read::Stash;

/// The longest TLS record: a 5-byte header and at most 2^14 + 256 bytes
/// of protected payload (RFC 8446 §5.2; RFC 5246 §6.2.3 allows 2^14 + 2048,
/// which rustls refuses).
pub const MAX_RECORD: usize = 5 + (16 << 10) + 256;

/// Plaintext sealed per socket write: two full records.
const SEAL_CHUNK: usize = 32 << 10;

/// One TLS session, shared by the halves of its connection: a client's
/// with ringway as the server, or an upstream's with ringway the client.
pub struct Session {
    conn: Side,
    /// On a listener: its certificate chosen by the client's SNI.
    pub cert: usize,
    /// Records for the peer that the read half produced (an alert, the
    /// answer to a KeyUpdate): the write half sends them first.
    pending: Vec<u8>,
    /// Records rustls has processed but still refers to (a handshake
    /// message split over records, not yet whole), then what follows them.
    /// Empty but in that rare case.
    pub(super) held: Vec<u8>,
    /// The peer said close_notify: reads end once its plaintext is read.
    pub(super) closed: bool,
    /// A record was refused: the session writes nothing more but the alert.
    failed: bool,
    /// What the handshake's last read brought after the handshake.
    pub(super) early: Stash,
}

enum Side {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// Runs `$body` with `$c` the connection of either side.
macro_rules! with_conn {
    ($side:expr, $c:ident => $body:expr) => {
        match $side {
            Side::Server($c) => $body,
            Side::Client($c) => $body,
        }
    };
}

/// rustls's `process_tls_records`, which each side has on its own type.
trait Records {
    type Data;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn handshaking(&self) -> bool;
}

impl Records for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
}

impl Records for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
}

/// What a handshake waits for.
pub enum Need {
    /// The peer's next flight.
    Read,
    /// Nothing: the handshake is done; `plaintext`: rustls decrypted a
    /// record of application data that came with the last flight.
    Done { plaintext: bool },
}

/// What a write seals.
#[derive(Clone, Copy)]
pub enum Seal<'a> {
    Data(&'a [u8]),
    CloseNotify,
    /// Only what waits in `pending`.
    Nothing,
}

impl Session {
    pub(super) fn server(
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> Result<Session, rustls::Error> {
        UnbufferedServerConnection::new(config).map(|c| Session::new(Side::Server(c)))
    }

    pub(super) fn client(
        config: std::sync::Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Session, rustls::Error> {
        UnbufferedClientConnection::new(config, name).map(|c| Session::new(Side::Client(c)))
    }

    fn new(conn: Side) -> Session {
        Session {
            conn,
            cert: 0,
            pending: Vec::new(),
            held: Vec::new(),
            closed: false,
            failed: false,
            early: Stash::default(),
        }
    }

    /// The leaf of the certificate chain the peer sent, verified.
    pub(super) fn peer_leaf(&self) -> Option<&[u8]> {
        with_conn!(&self.conn, c => c.peer_certificates())
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.as_ref())
    }

    /// Processes what the peer sent in `buf` (whole records taken off its
    /// front) and puts what rustls answers in `out`, until the handshake
    /// waits for the peer or is done. On an error `out` holds the alert.
    pub(super) fn step(
        &mut self,
        buf: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Need, rustls::Error> {
        with_conn!(&mut self.conn, c => step(c, buf, out))
    }

    /// Appends the plaintext rustls decrypted, and holds, to `to`: what came
    /// with the handshake's last flight.
    pub(super) fn take_early_plaintext(&mut self, to: &mut Vec<u8>) {
        with_conn!(&mut self.conn, c => {
            // Asked with no input, rustls answers with what it holds first.
            if let Ok(ConnectionState::ReadTraffic(mut r)) = c.records(&mut []).state {
                while let Some(Ok(record)) = r.next_record() {
                    to.extend_from_slice(record.payload);
                }
            }
        });
    }

    /// Decrypts the whole records in `buf`, in place: their plaintext ends
    /// up at its front. Returns the plaintext's length and where the
    /// ciphertext rustls has not discarded begins: a record cut short, or
    /// records it still refers to (`holds_record`).
    pub(super) fn open(&mut self, buf: &mut [u8]) -> Result<(usize, usize), rustls::Error> {
        let Session {
            conn,
            pending,
            closed,
            failed,
            ..
        } = self;
        let opened = with_conn!(conn, c => open(c, pending, closed, buf));
        *failed |= opened.is_err();
        opened
    }

    /// Decrypts what `held` now holds, in place, as `open` does; returns
    /// it taken out of the session.
    pub(super) fn open_held(&mut self) -> Result<(Vec<u8>, usize, usize), rustls::Error> {
        let mut held = std::mem::take(&mut self.held);
        let (plain, taken) = self.open(&mut held)?;
        Ok((held, plain, taken))
    }

    /// Puts what the read half left for the peer, then `what` sealed, at
    /// the front of `out` (all of which is initialised, so rustls can seal
    /// into it). Returns how much of the data it took and how much of
    /// `out` is filled.
    pub(super) fn seal(&mut self, what: Seal<'_>, out: &mut Vec<u8>) -> io::Result<(usize, usize)> {
        if self.failed && matches!(what, Seal::Data(_)) {
            // The alert in `pending` waits for the shutdown.
            return Err(invalid("the TLS session failed"));
        }
        let mut filled = 0;
        if !self.pending.is_empty() {
            filled = self.pending.len();
            if out.len() < filled {
                out.resize(filled, 0);
            }
            out[..filled].copy_from_slice(&self.pending);
            self.pending = Vec::new();
        }
        if self.failed || matches!(what, Seal::Nothing) {
            return Ok((0, filled));
        }
        let Session {
            conn, held, closed, ..
        } = self;
        let took = with_conn!(conn, c => seal(c, held, closed, what, out, &mut filled))?;
        Ok((took, filled))
    }
}

pub(super) fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Whether ciphertext left after `open` starts with a whole record: one
/// rustls has processed and still needs.
pub(super) fn holds_record(rest: &[u8]) -> bool {
    rest.len() >= 5 && rest.len() >= 5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]))
}

/// What to do after a state of the connection.
enum Then {
    /// Take the plaintext rustls decrypted.
    Read,
    Again,
    Stop,
}

fn open<C: Records>(
    c: &mut C,
    pending: &mut Vec<u8>,
    closed: &mut bool,
    buf: &mut [u8],
) -> Result<(usize, usize), rustls::Error> {
    // Plaintext is written at `plain`, behind the ciphertext at `taken`:
    // a record's plaintext is shorter than the record, so it never
    // reaches ciphertext not yet decrypted.
    let (mut plain, mut taken) = (0, 0);
    loop {
        let status = c.records(&mut buf[taken..]);
        let discard = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(e) => {
                take_alerts(c, pending, &mut buf[taken..]);
                return Err(e);
            }
        };
        let then = match state {
            ConnectionState::ReadTraffic(_) => Then::Read,
            ConnectionState::EncodeTlsData(mut e) => {
                encode(&mut e, pending)?;
                Then::Again
            }
            ConnectionState::TransmitTlsData(t) => {
                // The write half sends `pending` before anything else.
                t.done();
                Then::Again
            }
            ConnectionState::PeerClosed => {
                *closed = true;
                Then::Again
            }
            ConnectionState::Closed => {
                *closed = true;
                Then::Stop
            }
            // No whole record left.
            ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake => Then::Stop,
            _ => return Err(rustls::Error::General("unexpected early data".into())),
        };
        taken += discard;
        match then {
            Then::Read => plain = take_plaintext(c, buf, plain, taken)?,
            Then::Again => {}
            Then::Stop => break,
        }
    }
    if *closed {
        // What follows a close_notify is not read (RFC 8446 §6.1).
        taken = buf.len();
    }
    Ok((plain, taken))
}

/// Moves the plaintext rustls holds to `buf[plain..]`, short of `end`.
fn take_plaintext<C: Records>(
    c: &mut C,
    buf: &mut [u8],
    mut plain: usize,
    end: usize,
) -> Result<usize, rustls::Error> {
    // Asked again with no input, rustls answers with the records it has
    // decrypted before it looks at any input, and `buf` is free to write
    // to meanwhile.
    let status = c.records(&mut []);
    if let Ok(ConnectionState::ReadTraffic(mut r)) = status.state {
        while let Some(record) = r.next_record() {
            let payload = record?.payload;
            let dst = buf
                .get_mut(plain..end)
                .and_then(|free| free.get_mut(..payload.len()))
                .ok_or_else(|| rustls::Error::General("plaintext longer than its record".into()))?;
            dst.copy_from_slice(payload);
            plain += payload.len();
        }
    }
    Ok(plain)
}

/// Keeps the alert rustls has for the peer once it refused something,
/// handed `buf` as it was when it did (rustls may still refer to it).
/// Asked once only: rustls answers with what it has to send before it
/// looks at its input, which, looked at again, it would refuse again.
fn take_alerts<C: Records>(c: &mut C, pending: &mut Vec<u8>, buf: &mut [u8]) {
    if let Ok(ConnectionState::EncodeTlsData(mut e)) = c.records(buf).state {
        let _ = encode(&mut e, pending);
    }
}

/// Appends a record rustls has for the peer to `out`.
fn encode<D>(e: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> Result<(), rustls::Error> {
    let len = out.len();
    out.resize(len + 256, 0);
    loop {
        match e.encode(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(len + required_size, 0);
            }
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(len);
                return Ok(());
            }
        }
    }
}

/// Processes what the peer sent in `buf` (whole records taken off its
/// front) and puts what rustls answers in `out`, until the handshake waits
/// for the peer or is done. On an error `out` holds rustls's alert.
fn step<C: Records>(
    c: &mut C,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<Need, rustls::Error> {
    loop {
        let status = c.records(&mut buf[..]);
        let discard = status.discard;
        let mut need = match status.state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                encode(&mut e, out)?;
                None
            }
            // Sent as one flight once rustls needs the peer's answer.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                None
            }
            Ok(ConnectionState::BlockedHandshake) => Some(Need::Read),
            Ok(ConnectionState::WriteTraffic(_)) => Some(Need::Done { plaintext: false }),
            Ok(ConnectionState::ReadTraffic(_)) => Some(Need::Done { plaintext: true }),
            Ok(_) => Some(Need::Read),
            Err(e) => {
                take_alerts(c, out, buf);
                return Err(e);
            }
        };
        // A TLS 1.3 server may send before the client's Finished; it is not
        // done until then.
        if matches!(need, Some(Need::Done { .. })) && c.handshaking() {
            need = Some(Need::Read);
        }
        buf.drain(..discard);
        if let Some(need) = need {
            return Ok(need);
        }
    }
}

fn seal<C: Records>(
    c: &mut C,
    held: &mut [u8],
    closed: &mut bool,
    what: Seal<'_>,
    out: &mut Vec<u8>,
    filled: &mut usize,
) -> io::Result<usize> {
    loop {
        let status = c.records(held);
        let mut w = match status.state.map_err(invalid)? {
            ConnectionState::WriteTraffic(w) => w,
            ConnectionState::EncodeTlsData(mut e) => {
                encode_at(&mut e, out, filled).map_err(invalid)?;
                continue;
            }
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                continue;
            }
            ConnectionState::PeerClosed => {
                *closed = true;
                continue;
            }
            ConnectionState::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
            other => {
                return Err(invalid(format!(
                    "TLS session not ready to write: {other:?}"
                )));
            }
        };
        let data = match what {
            Seal::Data(data) => &data[..data.len().min(SEAL_CHUNK)],
            _ => &[][..],
        };
        // A close_notify fits in 64 bytes; rustls queues it before it knows
        // whether `out` has room.
        if out.len() < *filled + 64 {
            out.resize(*filled + 64, 0);
        }
        loop {
            let sealed = match what {
                Seal::CloseNotify => w.queue_close_notify(&mut out[*filled..]),
                _ => w.encrypt(data, &mut out[*filled..]),
            };
            match sealed {
                Ok(n) => {
                    *filled += n;
                    return Ok(data.len());
                }
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    out.resize(*filled + required_size, 0);
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

/// Puts a record rustls has for the peer after the `filled` bytes of `out`.
fn encode_at<D>(
    e: &mut EncodeTlsData<'_, D>,
    out: &mut Vec<u8>,
    filled: &mut usize,
) -> Result<(), EncodeError> {
    loop {
        match e.encode(&mut out[*filled..]) {
            Ok(n) => {
                *filled += n;
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(*filled + required_size, 0);
            }
            Err(EncodeError::AlreadyEncoded) => return Ok(()),
        }
    }
}
