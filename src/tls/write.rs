//! The writing half of a TLS connection: plaintext sealed into records in
//! a buffer of its own, at most two full records at a time, written whole;
//! the buffer is given back while the connection is quiet.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoVecBuf};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, OwnedWriteHalf};
use monoio::net::TcpStream;

use super::session::{Seal, Session};

pub struct TlsWrite {
    pub(super) tcp: OwnedWriteHalf<TcpStream>,
    pub(super) session: Rc<RefCell<Session>>,
    /// Ciphertext on its way out, at its front; every byte of it
    /// initialised, so records are sealed in place there. Given back while
    /// the connection is quiet.
    pub(super) out: Vec<u8>,
}

impl TlsWrite {
    /// Lets go of the outgoing buffer while the connection is quiet.
    pub fn release(&mut self) {
        self.out = Vec::new();
    }

    /// Seals what the read half left for the peer, then `what`, into `out`:
    /// returns how much of the data it took and how much `out` holds.
    fn seal(&mut self, what: Seal<'_>) -> io::Result<(usize, usize)> {
        self.session.borrow_mut().seal(what, &mut self.out)
    }

    /// Writes the first `filled` bytes of `out`.
    async fn send(&mut self, filled: usize) -> io::Result<()> {
        if filled == 0 {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (res, back) = self.tcp.write_all(out.slice(0..filled)).await;
        self.out = back.into_inner();
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
            let (took, filled) = match self.seal(Seal::Data(&data[done..])) {
                Ok(sealed) => sealed,
                Err(e) => return (Err(e), buf),
            };
            done += took;
            if let Err(e) = self.send(filled).await {
                return (Err(e), buf);
            }
        }
        (Ok(data.len()), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }

    /// Writes what the read half left for the peer.
    async fn flush(&mut self) -> io::Result<()> {
        let (_, filled) = self.seal(Seal::Nothing)?;
        self.send(filled).await
    }

    /// Says close_notify, then shuts the socket's sending side.
    async fn shutdown(&mut self) -> io::Result<()> {
        // A session that failed or is closed both ways says nothing more.
        if let Ok((_, filled)) = self.seal(Seal::CloseNotify) {
            self.send(filled).await?;
        }
        self.tcp.shutdown().await
    }
}
