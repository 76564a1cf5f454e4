//! The session: rustls's unbuffered connection through the handshake
//! (`Handshake`), then ringway's own record layer (`Session`) with the
//! traffic keys rustls hands over and rustls's kernel connection for what
//! comes after the handshake (key updates, the tickets an upstream sends).
//! Everything here is synchronous: the halves (`read`, `write`) do the
//! I/O and call in between awaits.
//!
//! Why not rustls's own records after the handshake: rustls 0.23 moves
//! every record's plaintext through a `Vec` of its own, each way, and a
//! connection keeps about 4 KB of rustls's state. With the keys alone a
//! record is opened where it was read and sealed where it is written, and
//! a quiet connection keeps its keys and a little of rustls's key schedule.

use std::io;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};

use super::read::Stash;
use super::record::{
    ALERT, APPLICATION_DATA, HANDSHAKE, HEADER, Keys, MAX_PAYLOAD, MAX_PLAIN, Refusal, Version,
    record_len,
};

/// The longest TLS record: a 5-byte header and at most 2^14 + 256 bytes
/// of protected payload (RFC 8446 §5.2; RFC 5246 §6.2.3 allows 2^14 + 2048,
/// which rustls refuses).
pub const MAX_RECORD: usize = HEADER + MAX_PAYLOAD;

/// Plaintext sealed per socket write: two full records.
const SEAL_CHUNK: usize = 2 * MAX_PLAIN;

/// The longest post-handshake message ringway takes (a ticket, in
/// practice a few hundred bytes).
const MAX_MESSAGE: usize = 64 << 10;

/// Records sent with one key before TLS 1.3 moves to the next: AES-GCM
/// is good for 2^24.5 records of full size (RFC 8446 §5.5).
#[cfg(not(test))]
const KEY_UPDATE_AFTER: u64 = 1 << 24;
#[cfg(test)]
const KEY_UPDATE_AFTER: u64 = 40;

/// TLS 1.2 has no key update: its sessions end after as many records as
/// AES-GCM is good for.
const TLS12_RECORDS: u64 = 1 << 24;

/// Handshake message types after the handshake.
const HELLO_REQUEST: u8 = 0;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

#[cfg(test)]
thread_local! {
    /// Post-handshake messages that came split over records, for the tests
    /// to see the rare path taken.
    pub(super) static SPLIT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A handshake in progress: rustls's unbuffered connection, either side.
pub struct Handshake {
    conn: Side,
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
    /// Nothing: the handshake is done.
    Done,
}

impl Handshake {
    pub(super) fn server(
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> Result<Handshake, rustls::Error> {
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(Handshake {
            conn: Side::Server(conn),
        })
    }

    pub(super) fn client(
        config: std::sync::Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Handshake, rustls::Error> {
        let conn = UnbufferedClientConnection::new(config, name)?;
        Ok(Handshake {
            conn: Side::Client(conn),
        })
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

    /// The session the handshake made, rustls's state handed over to it;
    /// `early` gets the plaintext rustls decrypted from what came with
    /// the handshake's last flight (a client's first request).
    pub(super) fn finish(self, cert: usize, early: &mut Vec<u8>) -> Result<Session, rustls::Error> {
        let (secrets, kernel, subject) = match self.conn {
            Side::Server(mut c) => {
                take_plaintext(&mut c, early);
                let subject = c
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| crate::certs::subject(leaf.as_ref()));
                let (secrets, k) = c.dangerous_into_kernel_connection()?;
                (secrets, Kernel::Server(k), subject)
            }
            Side::Client(mut c) => {
                take_plaintext(&mut c, early);
                let (secrets, k) = c.dangerous_into_kernel_connection()?;
                (secrets, Kernel::Client(k), None)
            }
        };
        let version = match kernel.version() {
            rustls::ProtocolVersion::TLSv1_3 => Version::Tls13,
            _ => Version::Tls12,
        };
        let keys = |s| {
            Keys::new(version, s)
                .ok_or_else(|| rustls::Error::General("a cipher suite ringway cannot seal".into()))
        };
        Ok(Session {
            rx: keys(secrets.rx)?,
            tx: keys(secrets.tx)?,
            kernel,
            version,
            cert,
            subject,
            partial: Vec::new(),
            update_tx: false,
            alert: None,
            closed: false,
            failed: false,
            said_close: false,
            early: Stash::default(),
        })
    }
}

/// Moves the plaintext rustls decrypted and holds to `to`.
fn take_plaintext<C: Records>(c: &mut C, to: &mut Vec<u8>) {
    // Asked with no input, rustls answers with what it holds first.
    if let Ok(ConnectionState::ReadTraffic(mut r)) = c.records(&mut []).state {
        while let Some(Ok(record)) = r.next_record() {
            to.extend_from_slice(record.payload);
        }
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
            Ok(ConnectionState::WriteTraffic(_) | ConnectionState::ReadTraffic(_)) => {
                Some(Need::Done)
            }
            Ok(_) => Some(Need::Read),
            Err(e) => {
                // The alert rustls has for the peer, asked once: looked at
                // again, its input would be refused again.
                if let Ok(ConnectionState::EncodeTlsData(mut e)) = c.records(buf).state {
                    let _ = encode(&mut e, out);
                }
                return Err(e);
            }
        };
        // A TLS 1.3 server may send before the client's Finished; it is not
        // done until then.
        if matches!(need, Some(Need::Done)) && c.handshaking() {
            need = Some(Need::Read);
        }
        buf.drain(..discard);
        if let Some(need) = need {
            return Ok(need);
        }
    }
}

/// rustls's part of a session after the handshake: it derives the next
/// keys at a key update, and keeps the tickets an upstream sends.
enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
    /// A session made by the fuzz targets, with fixed keys: no key update.
    #[cfg(fuzzing)]
    None,
}

impl Kernel {
    fn version(&self) -> rustls::ProtocolVersion {
        match self {
            Kernel::Server(k) => k.protocol_version(),
            Kernel::Client(k) => k.protocol_version(),
            #[cfg(fuzzing)]
            Kernel::None => rustls::ProtocolVersion::TLSv1_3,
        }
    }

    /// The next keys of one direction, at a key update.
    fn update(
        &mut self,
        tx: bool,
    ) -> Result<(u64, rustls::ConnectionTrafficSecrets), rustls::Error> {
        match (self, tx) {
            (Kernel::Server(k), true) => k.update_tx_secret(),
            (Kernel::Server(k), false) => k.update_rx_secret(),
            (Kernel::Client(k), true) => k.update_tx_secret(),
            (Kernel::Client(k), false) => k.update_rx_secret(),
            #[cfg(fuzzing)]
            (Kernel::None, _) => Err(rustls::Error::HandshakeNotComplete),
        }
    }
}

/// One TLS session after its handshake, shared by the halves of its
/// connection: a client's with ringway as the server, or an upstream's
/// with ringway the client.
pub struct Session {
    kernel: Kernel,
    version: Version,
    rx: Keys,
    tx: Keys,
    /// On a listener: its certificate chosen by the client's SNI.
    pub cert: usize,
    /// The subject of the client's verified certificate, if it sent one.
    pub(super) subject: Option<Box<str>>,
    /// A post-handshake message split over records, until it is whole.
    /// Empty, and unallocated, but then.
    partial: Vec<u8>,
    /// The peer asked for a key update, or the keys have sealed enough:
    /// the write half sends a KeyUpdate before its next record.
    update_tx: bool,
    /// Why the read half refused a record: the write half says so to the
    /// peer on its next flush or shutdown.
    alert: Option<Refusal>,
    /// The peer said close_notify: reads end once its plaintext is read.
    pub(super) closed: bool,
    /// A record was refused: the session writes nothing more but the alert.
    failed: bool,
    /// ringway said close_notify: it writes nothing more.
    said_close: bool,
    /// What the handshake's last read brought after the handshake.
    pub(super) early: Stash,
}

/// What a write seals.
#[derive(Clone, Copy)]
pub enum Seal<'a> {
    Data(&'a [u8]),
    CloseNotify,
    /// Only what the read half left for the peer.
    Nothing,
}

pub(super) fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Session {
    /// Opens the whole records at the front of `buf`, in place: their
    /// plaintext ends up at its front. Returns the plaintext's length and
    /// where the ciphertext not yet opened begins: a record cut short.
    pub(super) fn open(&mut self, buf: &mut [u8]) -> io::Result<(usize, usize)> {
        let opened = self.open_records(buf);
        if let Err(refusal) = opened {
            self.failed = true;
            if refusal != Refusal::PeerAlert {
                self.alert = Some(refusal);
            }
        }
        opened.map_err(|r| invalid(r.to_string()))
    }

    fn open_records(&mut self, buf: &mut [u8]) -> Result<(usize, usize), Refusal> {
        if self.failed {
            return Err(Refusal::PeerAlert);
        }
        // Plaintext is gathered at `plain`, behind the records opened: a
        // record's plaintext is shorter than the record, so it never
        // reaches one not yet opened.
        let (mut plain, mut taken) = (0, 0);
        while !self.closed {
            let Some(len) = record_len(&buf[taken..]) else {
                break;
            };
            if len > MAX_RECORD {
                return Err(Refusal::RecordOverflow);
            }
            let Some(rec) = buf.get_mut(taken..taken + len) else {
                break;
            };
            let (typ, range) = self.rx.open(self.version, rec)?;
            let range = taken + range.start..taken + range.end;
            taken += len;
            match typ {
                APPLICATION_DATA => {
                    let n = range.len();
                    buf.copy_within(range, plain);
                    plain += n;
                }
                ALERT => self.alert_from_peer(&buf[range])?,
                HANDSHAKE => self.messages(&buf[range])?,
                _ => return Err(Refusal::UnexpectedMessage),
            }
        }
        if self.closed {
            // What follows a close_notify is not read (RFC 8446 §6.1).
            taken = buf.len();
        }
        Ok((plain, taken))
    }

    /// An alert from the peer: close_notify ends the stream; a warning on
    /// TLS 1.2, or user_canceled, is let pass; anything else ends the
    /// session.
    fn alert_from_peer(&mut self, alert: &[u8]) -> Result<(), Refusal> {
        match *alert {
            [_, 0] => {
                self.closed = true;
                Ok(())
            }
            [_, 90] => Ok(()),
            [1, _] if self.version == Version::Tls12 => Ok(()),
            [_, _] => Err(Refusal::PeerAlert),
            _ => Err(Refusal::DecodeError),
        }
    }

    /// Handshake messages after the handshake, `part` the next piece of
    /// them: each is dealt with once it is whole.
    fn messages(&mut self, part: &[u8]) -> Result<(), Refusal> {
        if self.partial.len() + part.len() > MAX_MESSAGE + 4 {
            return Err(Refusal::UnexpectedMessage);
        }
        let mut pending = std::mem::take(&mut self.partial);
        #[cfg(test)]
        if !pending.is_empty() {
            SPLIT.set(SPLIT.get() + 1);
        }
        pending.extend_from_slice(part);
        let mut at = 0;
        while let Some(head) = pending.get(at..at + 4) {
            let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
            if len > MAX_MESSAGE {
                return Err(Refusal::UnexpectedMessage);
            }
            let Some(body) = pending.get(at + 4..at + 4 + len) else {
                break;
            };
            at += 4 + len;
            if head[0] == KEY_UPDATE && at < pending.len() {
                // A key change ends its record (RFC 8446 §5.1).
                return Err(Refusal::UnexpectedMessage);
            }
            self.message(head[0], body)?;
        }
        pending.drain(..at);
        if !pending.is_empty() {
            self.partial = pending;
        }
        Ok(())
    }

    /// One whole post-handshake message.
    fn message(&mut self, typ: u8, body: &[u8]) -> Result<(), Refusal> {
        match (self.version, typ, &self.kernel) {
            (Version::Tls13, KEY_UPDATE, _) => {
                let requested = match body {
                    [0] => false,
                    [1] => true,
                    _ => return Err(Refusal::DecodeError),
                };
                self.rx = self
                    .kernel
                    .update(false)
                    .ok()
                    .and_then(|s| Keys::new(self.version, s))
                    .ok_or(Refusal::InternalError)?;
                self.update_tx |= requested;
                Ok(())
            }
            (Version::Tls13, NEW_SESSION_TICKET, Kernel::Client(_)) => {
                if let Kernel::Client(k) = &mut self.kernel {
                    k.handle_new_session_ticket(body)
                        .map_err(|_| Refusal::DecodeError)?;
                }
                Ok(())
            }
            // A server's invitation to renegotiate, which ringway declines
            // by not answering (RFC 5246 §7.4.1.1).
            (Version::Tls12, HELLO_REQUEST, Kernel::Client(_)) if body.is_empty() => Ok(()),
            _ => Err(Refusal::UnexpectedMessage),
        }
    }

    /// Seals into `out` what the read half left for the peer (an alert,
    /// a KeyUpdate), then `what`, at most `SEAL_CHUNK` of data. Returns
    /// how much of the data it took and how much of `out` is filled.
    pub(super) fn seal(&mut self, what: Seal<'_>, out: &mut Vec<u8>) -> io::Result<(usize, usize)> {
        let mut filled = 0;
        if self.failed {
            if let Seal::Data(_) = what {
                // The alert waits for the flush or shutdown.
                return Err(invalid("the TLS session failed"));
            }
            if let Some(refusal) = self.alert.take() {
                self.seal_record(ALERT, &[2, refusal as u8], out, &mut filled)?;
            }
            return Ok((0, filled));
        }
        if self.said_close {
            return match what {
                Seal::Data(_) => Err(io::ErrorKind::BrokenPipe.into()),
                _ => Ok((0, 0)),
            };
        }
        let data = match what {
            Seal::Data(data) => &data[..data.len().min(SEAL_CHUNK)],
            Seal::CloseNotify => {
                self.key_update(out, &mut filled)?;
                self.seal_record(ALERT, &[1, 0], out, &mut filled)?;
                self.said_close = true;
                return Ok((0, filled));
            }
            Seal::Nothing => &[][..],
        };
        self.key_update(out, &mut filled)?;
        for chunk in data.chunks(MAX_PLAIN) {
            self.seal_record(APPLICATION_DATA, chunk, out, &mut filled)?;
            match self.version {
                Version::Tls13 if self.tx.seq() >= KEY_UPDATE_AFTER => {
                    self.update_tx = true;
                    self.key_update(out, &mut filled)?;
                }
                Version::Tls12 if self.tx.seq() >= TLS12_RECORDS => {
                    return Err(invalid("the TLS 1.2 session sealed all its keys may"));
                }
                _ => {}
            }
        }
        Ok((data.len(), filled))
    }

    /// A session with `keys` both ways and no rustls behind it (no key
    /// update), for the fuzz targets.
    #[cfg(fuzzing)]
    pub(super) fn with_keys(version: Version, rx: Keys, tx: Keys) -> Session {
        Session {
            kernel: Kernel::None,
            version,
            rx,
            tx,
            cert: 0,
            subject: None,
            partial: Vec::new(),
            update_tx: false,
            alert: None,
            closed: false,
            failed: false,
            said_close: false,
            early: Stash::default(),
        }
    }

    /// Records sealed with the keys in use.
    #[cfg(test)]
    pub(super) fn sealed_with_these_keys(&self) -> u64 {
        self.tx.seq()
    }

    /// Sends a KeyUpdate and moves to the next keys, if one is due.
    fn key_update(&mut self, out: &mut Vec<u8>, filled: &mut usize) -> io::Result<()> {
        if !self.update_tx {
            return Ok(());
        }
        // "update_not_requested": a KeyUpdate is never answered with one
        // asking again (RFC 8446 §4.6.3).
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out, filled)?;
        self.tx = self
            .kernel
            .update(true)
            .ok()
            .and_then(|s| Keys::new(self.version, s))
            .ok_or_else(|| invalid("TLS key update"))?;
        self.update_tx = false;
        Ok(())
    }

    /// Seals one record of `typ` holding `plain` after the `filled` bytes
    /// of `out`.
    pub(super) fn seal_record(
        &mut self,
        typ: u8,
        plain: &[u8],
        out: &mut Vec<u8>,
        filled: &mut usize,
    ) -> io::Result<()> {
        let len = self.tx.sealed_len(self.version, plain.len());
        if out.len() < *filled + len {
            out.resize(*filled + len, 0);
        }
        let rec = &mut out[*filled..*filled + len];
        let at = self.tx.prefix();
        rec[at..at + plain.len()].copy_from_slice(plain);
        let n = self
            .tx
            .seal(self.version, typ, rec, plain.len())
            .map_err(|r| invalid(r.to_string()))?;
        *filled += n;
        Ok(())
    }
}
