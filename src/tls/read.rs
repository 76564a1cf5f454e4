//! The reading half of a TLS connection: ciphertext is read into the
//! caller's buffer and decrypted there, its plaintext gathered at the front.
//!
//! A read that ends inside a record leaves that record's beginning in the
//! half's `Stash`, to go in front of the next read: allocated from the
//! first record a read cuts until the connection goes quiet. A caller's buffer too small for what the stash holds
//! (the smallest is a few bytes left at the end of a read buffer) has the
//! read go into the stash instead, and plaintext it has no room for wait
//! there.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use monoio::BufResult;
use monoio::buf::{IoBufMut, IoVecBufMut};
use monoio::io::{AsyncReadRent, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf};
use monoio::net::TcpStream;

use super::session::{MAX_RECORD, Session, invalid};

/// The most ciphertext a read half keeps between reads: a record cut short.
const MAX_STASH: usize = MAX_RECORD;

/// What a read half keeps between reads: plaintext a caller's buffer had
/// no room for (`buf[..plain]`), then ciphertext of a record cut short.
/// Empty, and unallocated, but then.
#[derive(Default)]
pub(super) struct Stash {
    buf: Vec<u8>,
    plain: usize,
    /// Ciphertext not yet opened: it may hold whole records.
    fresh: bool,
    /// A read into `buf` was dropped before it finished, taking the
    /// ciphertext with it: the stream cannot be read further.
    lost: bool,
}

impl Stash {
    /// The read half's start: the plaintext rustls decrypted with the
    /// handshake's last flight, then what that flight brought after it.
    pub(super) fn after_handshake(mut buf: Vec<u8>, rest: &[u8]) -> Stash {
        let plain = buf.len();
        buf.extend_from_slice(rest);
        let mut stash = Stash {
            fresh: !rest.is_empty(),
            buf,
            plain,
            lost: false,
        };
        stash.settle();
        stash
    }

    /// Moves up to `room` bytes of plaintext to `dst`.
    fn give(&mut self, dst: *mut u8, room: usize) -> usize {
        let n = self.plain.min(room);
        // SAFETY: the caller has `room` writable bytes at `dst`, none of
        // them in `self.buf`.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.as_ptr(), dst, n) };
        self.buf.drain(..n);
        self.plain -= n;
        n
    }

    /// Lets go of the allocation if nothing is kept: a busy connection
    /// keeps it between reads, a quiet one does not.
    fn settle(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }
}

pub struct TlsRead {
    pub(super) tcp: OwnedReadHalf<TcpStream>,
    pub(super) session: Rc<RefCell<Session>>,
    /// The subject of the client's verified certificate, if it sent one.
    pub(super) subject: Option<Box<str>>,
    pub(super) stash: Stash,
}

impl TlsRead {
    pub fn client_subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The listener's certificate chosen for this connection.
    pub fn cert(&self) -> usize {
        self.session.borrow().cert
    }

    /// Takes ciphertext read outside the session (the byte a quiet
    /// connection waited for); the next read decrypts it.
    pub fn push(&mut self, ciphertext: &[u8]) -> io::Result<()> {
        if self.stash.buf.len() + ciphertext.len() > MAX_STASH {
            return Err(invalid("a TLS record longer than allowed"));
        }
        self.stash.buf.extend_from_slice(ciphertext);
        self.stash.fresh = true;
        Ok(())
    }

    /// Lets go of the stash while the connection is quiet, unless it
    /// holds something.
    pub fn release(&mut self) {
        self.stash.settle();
    }

    /// The TCP half, to wait on without the session.
    pub fn tcp(&mut self) -> &mut OwnedReadHalf<TcpStream> {
        &mut self.tcp
    }

    /// Decrypts the `filled` bytes of ciphertext at the front of `buf`,
    /// keeping a record cut short in the stash. Returns the plaintext now
    /// at the front of `buf`.
    fn open_in<T: IoBufMut>(&mut self, buf: &mut T, filled: usize) -> io::Result<usize> {
        // SAFETY: `buf` has `filled` initialised bytes at `write_ptr` (the
        // stash's, then a read's), and is ours until it is handed back.
        let region = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), filled) };
        let (plain, taken) = self.session.borrow_mut().open(region)?;
        self.stash.buf.extend_from_slice(&region[taken..]);
        Ok(plain)
    }

    /// Decrypts the stash where it is: its plaintext to its front.
    fn open_stash(&mut self) -> io::Result<()> {
        let len = self.stash.buf.len();
        let (plain, taken) = self.session.borrow_mut().open(&mut self.stash.buf)?;
        self.stash.buf.copy_within(taken..len, plain);
        self.stash.buf.truncate(plain + len - taken);
        self.stash.plain = plain;
        Ok(())
    }

    /// Puts plaintext at the front of `buf`, reading ciphertext into the
    /// rest of it, or into the stash when it is too small for what the
    /// stash holds. `Ok(0)` at the end of the stream.
    async fn read_with<T: IoBufMut>(
        &mut self,
        mut buf: T,
        cancel: Option<CancelHandle>,
    ) -> BufResult<usize, T> {
        let room = buf.bytes_total();
        let res = loop {
            if self.stash.lost {
                break Err(invalid("a TLS read was abandoned in a record"));
            }
            if room == 0 {
                break Ok(0);
            }
            if self.stash.plain > 0 {
                break Ok(self.stash.give(buf.write_ptr(), room));
            }
            if self.session.borrow().closed {
                break Ok(0);
            }
            let kept = self.stash.buf.len();
            if self.stash.fresh {
                self.stash.fresh = false;
                if room < kept {
                    match self.open_stash() {
                        Ok(()) => continue,
                        Err(e) => break Err(e),
                    }
                }
                self.unstash(&mut buf);
                match self.open_in(&mut buf, kept) {
                    Ok(0) => continue,
                    opened => break opened,
                }
            }
            if room <= kept {
                match self.read_stash(cancel.as_ref()).await {
                    Ok(true) => continue,
                    Ok(false) => break Ok(0),
                    Err(e) => break Err(e),
                }
            }
            // The stash goes in front of what the read brings; it is
            // emptied only once the read succeeded.
            // SAFETY: `room` bytes are writable at `write_ptr`.
            unsafe {
                std::ptr::copy_nonoverlapping(self.stash.buf.as_ptr(), buf.write_ptr(), kept)
            };
            let (res, back) = self.read_into(buf, kept, room, cancel.as_ref()).await;
            buf = back;
            match res {
                Ok(0) => break Ok(0),
                Ok(n) => {
                    self.stash.buf.clear();
                    match self.open_in(&mut buf, kept + n) {
                        Ok(0) => continue,
                        opened => break opened,
                    }
                }
                Err(e) => break Err(e),
            }
        };
        // SAFETY: what `res` counts is plaintext just written at the front.
        unsafe { buf.set_init(*res.as_ref().unwrap_or(&0)) };
        (res, buf)
    }

    /// Reads from the socket into `buf[from..to]`.
    async fn read_into<T: IoBufMut>(
        &mut self,
        buf: T,
        from: usize,
        to: usize,
        cancel: Option<&CancelHandle>,
    ) -> BufResult<usize, T> {
        // SAFETY: the caller passes a range within the buffer.
        let part = unsafe { buf.slice_mut_unchecked(from..to) };
        let (res, back) = match cancel {
            Some(c) => self.tcp.cancelable_read(part, c.clone()).await,
            None => self.tcp.read(part).await,
        };
        (res, back.into_inner())
    }

    /// Reads more ciphertext into the stash itself, for a caller's buffer
    /// too small to take what it holds. `false` at the end of the stream.
    async fn read_stash(&mut self, cancel: Option<&CancelHandle>) -> io::Result<bool> {
        let kept = self.stash.buf.len();
        if kept >= MAX_STASH {
            return Err(invalid("a TLS record longer than allowed"));
        }
        let mut stash = std::mem::take(&mut self.stash.buf);
        stash.reserve(MAX_RECORD.max(kept + 1) - kept);
        let cap = stash.capacity();
        // Until the read gives the stash back.
        self.stash.lost = true;
        let (res, back) = match cancel {
            Some(c) => {
                self.tcp
                    .cancelable_read(stash.slice_mut(kept..cap), c.clone())
                    .await
            }
            None => self.tcp.read(stash.slice_mut(kept..cap)).await,
        };
        self.stash.lost = false;
        self.stash.buf = back.into_inner();
        let more = res? > 0;
        self.stash.fresh = more;
        Ok(more)
    }

    /// Moves the stash's ciphertext to the front of `buf`.
    fn unstash<T: IoBufMut>(&mut self, buf: &mut T) {
        let kept = self.stash.buf.len();
        // SAFETY: the caller checked that `buf` has room for `kept` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.stash.buf.as_ptr(), buf.write_ptr(), kept) };
        self.stash.buf.clear();
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
