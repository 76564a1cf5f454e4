//! TLS on client and upstream connections: the handshake, then the two
//! halves a connection reads and writes through, each speaking plaintext
//! over the ciphertext of one TCP socket.
//!
//! The handshake is rustls's unbuffered connection (`session::Handshake`):
//! rustls keeps no buffer of ciphertext, in or out, and is handed records
//! and hands records back. Once it is done, rustls hands over the traffic
//! keys and ringway seals and opens the records itself (`record`), in the
//! buffers the halves read into and write from; rustls keeps only what a
//! key update or an upstream's ticket needs (`session::Session`). Both
//! halves share the session (`Rc<RefCell<_>>`: one shard, and no borrow is
//! held across an await).
//!
//! Lifecycle: `accept` or `connect` runs the handshake in a buffer it is
//! lent (the connection's slab lease on a listener); `split` makes the
//! halves. The read half (`read`) opens records in the caller's buffer
//! and keeps a record cut by a read until the rest comes; the write half
//! (`write`) seals into a buffer of its own, given back while the
//! connection is quiet. What the read half produces for the peer (an
//! alert, the answer to a KeyUpdate) waits in the session until the write
//! half's next write, flush or shutdown: the halves write to the socket
//! separately.

mod read;
mod record;
mod session;
#[cfg(test)]
mod tests;
mod write;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

use read::Stash;
pub use read::TlsRead;
pub use session::Session;
use session::{Handshake, MAX_RECORD, Need};
pub use write::TlsWrite;

/// The most a handshake reads before it is done (a client's or server's
/// certificate chain, split over records).
const MAX_HANDSHAKE_READ: usize = (64 << 10) + MAX_RECORD;

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
const PLAIN_HTTP: &[u8] = b"Content-Type: application/json\r\n\
Content-Length: 67\r\nConnection: close\r\n\r\n\
{\"error\":\"plain HTTP request was sent to HTTPS port\",\"status\":400}\n";

/// Runs the server side of a handshake on `stream` within `limit`, with
/// `buf` (a slab buffer, left empty) for what the client sends; `date`
/// dates the 400 that plain HTTP gets.
pub async fn accept(
    stream: &mut TcpStream,
    config: Arc<rustls::ServerConfig>,
    buf: &mut Vec<u8>,
    limit: Duration,
    date: &[u8],
) -> Result<Session, Refused> {
    let handshake = Handshake::server(config).map_err(Refused::Tls)?;
    run(stream, handshake, buf, limit, Some(date)).await
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
    let handshake = Handshake::client(config, name).map_err(Refused::Tls)?;
    // What an upstream sends in a handshake: its certificates, a few KiB.
    let mut buf = Vec::with_capacity(16 << 10);
    run(stream, handshake, &mut buf, limit, None).await
}

/// Sends and receives handshake messages until the handshake is done,
/// and makes the session. `listening` (with the `Date` to give): the peer
/// speaks first, and plain HTTP from it gets a 400. `buf` is left empty,
/// with the capacity it came with.
async fn run(
    stream: &mut TcpStream,
    mut handshake: Handshake,
    buf: &mut Vec<u8>,
    limit: Duration,
    listening: Option<&[u8]>,
) -> Result<Session, Refused> {
    buf.clear();
    let lent = buf.capacity();
    let mut cert = 0;
    let mut out = Vec::new();
    let done = monoio::time::timeout(limit, async {
        let mut first = listening.is_some();
        if listening.is_some() {
            let _ = crate::certs::take_chosen();
        }
        loop {
            let step = handshake.step(buf, &mut out);
            if listening.is_some()
                && let Some(chosen) = crate::certs::take_chosen()
            {
                cert = chosen;
            }
            if !out.is_empty() {
                let (res, back) = stream.write_all(std::mem::take(&mut out)).await;
                out = back;
                out.clear();
                if res.is_err() {
                    return Err(Refused::Failed);
                }
            }
            match step.map_err(Refused::Tls)? {
                Need::Done => return Ok(()),
                Need::Read => {}
            }
            let len = buf.len();
            if len == buf.capacity() {
                if len >= MAX_HANDSHAKE_READ {
                    return Err(Refused::Failed);
                }
                buf.reserve(len.max(4 << 10));
            }
            let cap = buf.capacity();
            let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..cap)).await;
            *buf = slice.into_inner();
            match res {
                Ok(0) | Err(_) => return Err(Refused::Failed),
                Ok(_) => {}
            }
            // A TLS record starts with its type, 22 for a handshake; an HTTP
            // request with a method's first letter.
            if first && buf[0] != 22 {
                if buf[0].is_ascii_uppercase() {
                    let date = listening.unwrap_or_default();
                    out.clear();
                    out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nDate: ");
                    out.extend_from_slice(date);
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(PLAIN_HTTP);
                    let _ = stream.write_all(std::mem::take(&mut out)).await;
                    return Err(Refused::PlainHttp);
                }
                return Err(Refused::Failed);
            }
            first = false;
        }
    })
    .await;
    let done = done.unwrap_or(Err(Refused::TimedOut));
    let session = done.and_then(|()| {
        // The rest of the last read (the client's first request, sent
        // with its Finished) is the read half's to start with.
        let mut early = Vec::new();
        let mut session = handshake.finish(cert, &mut early).map_err(Refused::Tls)?;
        session.early = Stash::after_handshake(early, buf);
        Ok(session)
    });
    buf.clear();
    if buf.capacity() != lent {
        // A handshake that outgrew the slab buffer it was lent gives back
        // one of the size lent, for the slab to take back.
        *buf = Vec::with_capacity(lent);
    }
    session
}

/// What the fuzz targets drive: the record layer after the handshake.
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::record::{Keys, Version};
    use super::session::Seal;
    pub use super::session::Session;
    use rustls::ConnectionTrafficSecrets;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn keys(version: Version, chacha: bool) -> Keys {
        let (key, iv) = (AeadKey::from([7; 32]), Iv::new([9; 12]));
        let secrets = match chacha {
            false => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            true => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        };
        Keys::new(version, (0, secrets)).expect("fixed keys")
    }

    /// A session, and a peer whose records it opens.
    pub fn pair(tls13: bool, chacha: bool) -> (Session, Session) {
        let v = if tls13 {
            Version::Tls13
        } else {
            Version::Tls12
        };
        let ours = Session::with_keys(v, keys(v, chacha), keys(v, chacha));
        let peer = Session::with_keys(v, keys(v, chacha), keys(v, chacha));
        (ours, peer)
    }

    /// Seals a record of `typ` holding `plain` (at most 16 KiB) after the
    /// end of `out`.
    pub fn seal(peer: &mut Session, typ: u8, plain: &[u8], out: &mut Vec<u8>) {
        let mut filled = out.len();
        peer.seal_record(typ, plain, out, &mut filled)
            .expect("a record of at most 16 KiB");
        out.truncate(filled);
    }

    /// `Session::open`: plaintext to the front of `buf`; (its length,
    /// ciphertext taken).
    pub fn open(s: &mut Session, buf: &mut [u8]) -> std::io::Result<(usize, usize)> {
        s.open(buf)
    }

    /// What the session has to send: an alert, a KeyUpdate.
    pub fn flush(s: &mut Session) -> std::io::Result<usize> {
        let mut out = Vec::new();
        s.seal(Seal::Nothing, &mut out).map(|(_, filled)| filled)
    }
}

/// Splits a connection whose handshake is done into its two halves.
pub fn split(stream: TcpStream, mut session: Session) -> (TlsRead, TlsWrite) {
    use monoio::io::Splitable;
    let (r, w) = stream.into_split();
    let subject = session.subject.take();
    let stash = std::mem::take(&mut session.early);
    let session = Rc::new(RefCell::new(session));
    (
        TlsRead {
            tcp: r,
            session: session.clone(),
            subject,
            stash,
        },
        TlsWrite {
            tcp: w,
            session,
            out: Vec::new(),
        },
    )
}
