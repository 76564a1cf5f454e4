//! A connection's two halves, plain TCP or TLS: what `Conn` reads requests
//! from and writes responses to, whichever the listener speaks, and what
//! `proxy` talks to an upstream through, whichever the upstream speaks.

use std::io;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf,
};
use monoio::net::TcpStream;

use crate::tls::{TlsRead, TlsWrite};

/// The reading half.
pub enum Reader {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(TlsRead),
}

/// The writing half.
pub enum Writer {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(TlsWrite),
}

impl Reader {
    /// The TCP half under either: a quiet connection waits on it for its
    /// next byte, raw (ciphertext on TLS), holding no buffer.
    pub fn tcp(&mut self) -> &mut OwnedReadHalf<TcpStream> {
        match self {
            Reader::Plain(r) => r,
            Reader::Tls(t) => t.tcp(),
        }
    }

    /// Takes back the byte `wait_byte` read: the request's first byte on
    /// plain TCP (returned, for the read buffer), ciphertext on TLS (handed
    /// to the session; `None`).
    pub fn resume(&mut self, byte: u8) -> io::Result<Option<u8>> {
        match self {
            Reader::Plain(_) => Ok(Some(byte)),
            Reader::Tls(t) => t.push(&[byte]).map(|()| None),
        }
    }

    /// The subject of the client's verified certificate, if it sent one.
    pub fn client_subject(&self) -> Option<&str> {
        match self {
            Reader::Plain(_) => None,
            Reader::Tls(t) => t.client_subject(),
        }
    }

    /// Lets go of what a quiet connection need not hold.
    pub fn release(&mut self) {
        if let Reader::Tls(t) = self {
            t.release();
        }
    }

    /// The listener's certificate chosen for a TLS connection's SNI.
    pub fn tls_cert(&self) -> Option<usize> {
        match self {
            Reader::Plain(_) => None,
            Reader::Tls(t) => Some(t.cert()),
        }
    }
}

impl Writer {
    /// Lets go of what a quiet connection need not hold.
    pub fn release(&mut self) {
        if let Writer::Tls(t) = self {
            t.release();
        }
    }
}

impl AsyncReadRent for Reader {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Reader::Plain(r) => r.read(buf).await,
            Reader::Tls(t) => t.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Reader::Plain(r) => r.readv(buf).await,
            Reader::Tls(t) => t.readv(buf).await,
        }
    }
}

impl CancelableAsyncReadRent for Reader {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Reader::Plain(r) => r.cancelable_read(buf, c).await,
            Reader::Tls(t) => t.cancelable_read(buf, c).await,
        }
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Reader::Plain(r) => r.cancelable_readv(buf, c).await,
            Reader::Tls(t) => t.cancelable_readv(buf, c).await,
        }
    }
}

impl AsyncWriteRent for Writer {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Writer::Plain(w) => w.write(buf).await,
            Writer::Tls(t) => t.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Writer::Plain(w) => w.writev(buf).await,
            Writer::Tls(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Writer::Plain(w) => w.flush().await,
            Writer::Tls(t) => t.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Writer::Plain(w) => w.shutdown().await,
            Writer::Tls(t) => t.shutdown().await,
        }
    }
}
