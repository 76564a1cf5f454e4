//! TLS on client connections: the handshake, then the two halves a `Conn`
//! reads and writes through, each speaking plaintext over the ciphertext
//! of one TCP socket.
//!
//! rustls's buffered `ServerConnection` holds the session; both halves
//! share it (`Rc<RefCell<_>>`: one shard, and no borrow is held across an
//! await). Reads put ciphertext into the caller's own buffer (a slab lease),
//! hand it to rustls, and copy the plaintext back into the same buffer, so
//! a connection keeps no ciphertext buffer of its own. Writes encrypt into
//! a buffer of the write half, which a quiet connection gives back.
//!
//! What rustls records in its own buffers costs one allocation per record
//! each way (its plaintext queue and its outgoing queue); rustls's
//! unbuffered API, which works in the caller's buffers, would take them
//! away.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    OwnedReadHalf, OwnedWriteHalf,
};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

/// One TLS session, shared by the halves of its connection: a client's
/// with ringway as the server, or an upstream's with ringway the client.
pub struct Session {
    conn: rustls::Connection,
    /// On a listener: its certificate chosen by the client's SNI.
    pub cert: usize,
    /// Ciphertext rustls could not take yet (its plaintext queue was full);
    /// empty, and unallocated, but after a burst of more than 16 KiB.
    carry: Vec<u8>,
}

impl Session {
    fn new(conn: rustls::Connection) -> Session {
        Session {
            conn,
            cert: 0,
            carry: Vec::new(),
        }
    }

    /// Hands ciphertext to rustls and decrypts it; what rustls cannot take
    /// yet goes to `carry`, to be fed once the plaintext is read.
    fn feed(&mut self, mut input: &[u8]) -> Result<(), rustls::Error> {
        // Never an empty slice: rustls takes a read of 0 bytes for the end.
        while !input.is_empty() {
            if self.conn.read_tls(&mut input).is_err() {
                self.carry.extend_from_slice(input);
                return Ok(());
            }
            self.conn.process_new_packets()?;
        }
        Ok(())
    }
}

/// How a handshake ended short of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Not done within the time it had.
    TimedOut,
    /// The client sent an HTTP request instead of a ClientHello; it got a 400.
    PlainHttp,
    /// Not TLS, or the peer went away.
    Failed,
    /// What rustls refused: a certificate that did not verify, no protocol
    /// or cipher in common, a malformed message.
    Tls(rustls::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TimedOut => f.write_str("the TLS handshake timed out"),
            Refused::PlainHttp => f.write_str("plain HTTP on a TLS port"),
            Refused::Failed => f.write_str("the peer closed or failed during the TLS handshake"),
            Refused::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// The answer to plain HTTP on a TLS port, as nginx gives it.
const PLAIN_HTTP: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
Content-Length: 67\r\nConnection: close\r\n\r\n\
{\"error\":\"plain HTTP request was sent to HTTPS port\",\"status\":400}\n";

/// Runs the server side of a handshake on `stream` within `limit`, with
/// `buf` (a slab buffer, left empty) for what the client sends.
pub async fn accept(
    stream: &mut TcpStream,
    config: Arc<rustls::ServerConfig>,
    certs: &crate::certs::Certificates,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<Session, Refused> {
    let conn = rustls::ServerConnection::new(config).map_err(Refused::Tls)?;
    let mut session = Session::new(conn.into());
    run(stream, &mut session, buf, limit, true).await?;
    if let rustls::Connection::Server(c) = &session.conn {
        session.cert = certs.index_for(c.server_name());
    }
    Ok(session)
}

/// Runs the client side of a handshake with an upstream on `stream`,
/// within `limit`, offering `name` as SNI and verifying the upstream's
/// certificate for it.
pub async fn connect(
    stream: &mut TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    limit: Duration,
) -> Result<Session, Refused> {
    let conn = rustls::ClientConnection::new(config, name).map_err(Refused::Tls)?;
    let mut session = Session::new(conn.into());
    // What an upstream sends in a handshake: its certificates, a few KiB.
    let mut buf = Vec::with_capacity(16 << 10);
    run(stream, &mut session, &mut buf, limit, false).await?;
    Ok(session)
}

/// Sends and receives handshake messages until the handshake is done.
/// `listening`: the peer speaks first, and plain HTTP from it gets a 400.
async fn run(
    stream: &mut TcpStream,
    session: &mut Session,
    buf: &mut Vec<u8>,
    limit: Duration,
    listening: bool,
) -> Result<(), Refused> {
    let mut out = Vec::new();
    let done = monoio::time::timeout(limit, async {
        let mut first = listening;
        loop {
            flush(&mut session.conn, stream, &mut out).await?;
            if !session.conn.is_handshaking() {
                return Ok(());
            }
            let owned = std::mem::take(buf);
            let cap = owned.capacity();
            let (res, slice) = stream.read(owned.slice_mut(0..cap)).await;
            *buf = slice.into_inner();
            let n = match res {
                Ok(0) | Err(_) => return Err(Refused::Failed),
                Ok(n) => n,
            };
            // A TLS record starts with its type, 22 for a handshake; an HTTP
            // request with a method's first letter.
            if first && buf[0] != 22 {
                if buf[0].is_ascii_uppercase() {
                    let _ = stream.write_all(PLAIN_HTTP).await;
                    return Err(Refused::PlainHttp);
                }
                return Err(Refused::Failed);
            }
            first = false;
            let fed = session.feed(&buf[..n]);
            buf.clear();
            if let Err(e) = fed {
                // rustls has an alert for the peer.
                let _ = flush(&mut session.conn, stream, &mut out).await;
                return Err(Refused::Tls(e));
            }
        }
    })
    .await;
    done.unwrap_or(Err(Refused::TimedOut))
}

/// Writes what rustls has for the peer.
async fn flush<W: AsyncWriteRent>(
    conn: &mut rustls::Connection,
    w: &mut W,
    out: &mut Vec<u8>,
) -> Result<(), Refused> {
    while conn.wants_write() {
        out.clear();
        while conn.wants_write() {
            conn.write_tls(out).map_err(|_| Refused::Failed)?;
        }
        let (res, back) = w.write_all(std::mem::take(out)).await;
        *out = back;
        res.map_err(|_| Refused::Failed)?;
    }
    Ok(())
}

/// Splits a connection whose handshake is done into its two halves.
pub fn split(stream: TcpStream, session: Session) -> (TlsRead, TlsWrite) {
    use monoio::io::Splitable;
    let (r, w) = stream.into_split();
    // Verified by rustls in the handshake; read once, for every request.
    let subject = session
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| crate::certs::subject(leaf));
    let session = Rc::new(RefCell::new(session));
    (
        TlsRead {
            tcp: r,
            session: session.clone(),
            subject,
        },
        TlsWrite {
            tcp: w,
            session,
            out: Vec::new(),
        },
    )
}

pub struct TlsRead {
    tcp: OwnedReadHalf<TcpStream>,
    session: Rc<RefCell<Session>>,
    /// The subject of the client's verified certificate, if it sent one.
    subject: Option<Box<str>>,
}

pub struct TlsWrite {
    tcp: OwnedWriteHalf<TcpStream>,
    session: Rc<RefCell<Session>>,
    /// Ciphertext on its way out; given back while the connection is quiet.
    out: Vec<u8>,
}

impl TlsRead {
    pub fn client_subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The listener's certificate chosen for this connection.
    pub fn cert(&self) -> usize {
        self.session.borrow().cert
    }

    /// Gives rustls ciphertext read outside the session (the byte a quiet
    /// connection waited for).
    pub fn push(&mut self, ciphertext: &[u8]) -> io::Result<()> {
        self.session
            .borrow_mut()
            .feed(ciphertext)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The TCP half, to wait on without the session.
    pub fn tcp(&mut self) -> &mut OwnedReadHalf<TcpStream> {
        &mut self.tcp
    }

    /// Moves decrypted plaintext into `buf`: `Some(0)` at the client's
    /// close_notify, `None` when there is none yet.
    fn plaintext<T: IoBufMut>(&mut self, buf: &mut T) -> Option<io::Result<usize>> {
        let mut s = self.session.borrow_mut();
        if !s.carry.is_empty() {
            let carry = std::mem::take(&mut s.carry);
            if let Err(e) = s.feed(&carry) {
                return Some(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
        let mut reader = s.conn.reader();
        let n = match reader.fill_buf() {
            Ok(plain) => {
                let n = plain.len().min(buf.bytes_total());
                // SAFETY: `buf` has room for `bytes_total` bytes from
                // `write_ptr`, and `plain` is not inside it.
                unsafe { std::ptr::copy_nonoverlapping(plain.as_ptr(), buf.write_ptr(), n) };
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => return Some(Err(e)),
        };
        reader.consume(n);
        // SAFETY: the first `n` bytes were just written.
        unsafe { buf.set_init(n) };
        Some(Ok(n))
    }

    /// Feeds ciphertext a read left in `buf` to rustls, then forgets it.
    fn absorb<T: IoBufMut>(&mut self, buf: &mut T, n: usize) -> io::Result<()> {
        // SAFETY: the read just put `n` bytes at `write_ptr`.
        let ciphertext = unsafe { std::slice::from_raw_parts(buf.write_ptr(), n) };
        let fed = self.push(ciphertext);
        // SAFETY: 0 bytes are always initialised.
        unsafe { buf.set_init(0) };
        fed
    }

    async fn read_with<T: IoBufMut>(
        &mut self,
        mut buf: T,
        cancel: Option<CancelHandle>,
    ) -> BufResult<usize, T> {
        loop {
            if let Some(res) = self.plaintext(&mut buf) {
                return (res, buf);
            }
            let (res, back) = match &cancel {
                Some(c) => self.tcp.cancelable_read(buf, c.clone()).await,
                None => self.tcp.read(buf).await,
            };
            buf = back;
            match res {
                Ok(0) => return (Ok(0), buf),
                Ok(n) => {
                    if let Err(e) = self.absorb(&mut buf, n) {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }
}

impl AsyncReadRent for TlsRead {
    fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.read_with(buf, None)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }
}

impl CancelableAsyncReadRent for TlsRead {
    fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>> {
        self.read_with(buf, Some(c))
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        _: CancelHandle,
    ) -> BufResult<usize, T> {
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }
}

impl TlsWrite {
    /// Lets go of the outgoing buffer while the connection is quiet.
    pub fn release(&mut self) {
        self.out = Vec::new();
    }

    /// Encrypts nothing new: writes what rustls has for the client.
    async fn send(&mut self) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        {
            let mut s = self.session.borrow_mut();
            while s.conn.wants_write() {
                if let Err(e) = s.conn.write_tls(&mut out) {
                    self.out = out;
                    return Err(e);
                }
            }
        }
        if out.is_empty() {
            self.out = out;
            return Ok(());
        }
        let (res, back) = self.tcp.write_all(out).await;
        self.out = back;
        res.map(drop)
    }
}

impl AsyncWriteRent for TlsWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `buf` holds `bytes_init` bytes from `read_ptr`, and is
        // not touched until it is handed back.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let mut done = 0;
        while done < data.len() {
            let wrote = self.session.borrow_mut().conn.writer().write(&data[done..]);
            match wrote {
                Ok(n) => done += n,
                Err(e) => return (Err(e), buf),
            }
            if let Err(e) = self.send().await {
                return (Err(e), buf);
            }
        }
        (Ok(data.len()), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send().await
    }

    /// Says close_notify, then shuts the socket's sending side.
    async fn shutdown(&mut self) -> io::Result<()> {
        self.session.borrow_mut().conn.send_close_notify();
        self.send().await?;
        self.tcp.shutdown().await
    }
}
