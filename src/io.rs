//! The few I/O moves the proxy makes, each bounded by a timeout: read more
//! into a leased buffer, write a range of one. io_uring takes buffers by
//! value; these put them back into the lease. When a timeout fires, the
//! operation is dropped, monoio cancels it in the kernel, and the buffer is
//! given up with it (the lease then frees its place in the slab).

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use crate::slab::Lease;

/// How a bounded wait ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The peer closed its side (a read of 0 bytes).
    Closed,
    Failed,
    TimedOut,
}

/// The time left for one wait: its own limit, cut by the request's deadline.
pub fn budget(limit: Duration, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => limit.min(d.saturating_duration_since(Instant::now())),
        None => limit,
    }
}

/// Appends what the peer sends next to the buffer; `Closed` at end of stream.
pub async fn read_more<R: AsyncReadRent>(
    r: &mut R,
    lease: &mut Lease,
    limit: Duration,
) -> Result<usize, Wait> {
    let buf = lease.take();
    let (len, cap) = (buf.len(), buf.capacity());
    if len == cap {
        lease.put(buf);
        return Err(Wait::Failed);
    }
    match monoio::time::timeout(limit, r.read(buf.slice_mut(len..cap))).await {
        Ok((res, slice)) => {
            lease.put(slice.into_inner());
            match res {
                Ok(0) => Err(Wait::Closed),
                Ok(n) => Ok(n),
                Err(e) => Err(io_wait(&e)),
            }
        }
        Err(_) => Err(Wait::TimedOut),
    }
}

/// Writes `range` of the buffer, all of it.
pub async fn write_range<W: AsyncWriteRent>(
    w: &mut W,
    lease: &mut Lease,
    range: Range<usize>,
    limit: Duration,
) -> Result<(), Wait> {
    if range.is_empty() {
        return Ok(());
    }
    let buf = lease.take();
    match monoio::time::timeout(limit, w.write_all(buf.slice(range))).await {
        Ok((res, slice)) => {
            lease.put(slice.into_inner());
            res.map(drop).map_err(|e| io_wait(&e))
        }
        Err(_) => Err(Wait::TimedOut),
    }
}

/// Writes the whole buffer.
pub async fn write_buf<W: AsyncWriteRent>(
    w: &mut W,
    lease: &mut Lease,
    limit: Duration,
) -> Result<(), Wait> {
    let len = lease.get().len();
    write_range(w, lease, 0..len, limit).await
}

fn io_wait(e: &io::Error) -> Wait {
    match e.kind() {
        io::ErrorKind::TimedOut => Wait::TimedOut,
        _ => Wait::Failed,
    }
}

/// What a non-blocking one-byte `recv(MSG_PEEK)` finds on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    /// The peer closed its side.
    Closed,
    /// Bytes are waiting.
    Data,
    /// Nothing yet: reading would block.
    Empty,
    Failed,
}

/// Looks at a socket without taking anything from it or waiting: a system
/// call, for the paths that are not per request.
pub fn peek(fd: RawFd) -> Peeked {
    let mut byte = 0u8;
    // SAFETY: `fd` is a socket its caller keeps open for the call; recv
    // writes at most one byte into `byte`, which outlives it.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peeked::Closed,
        n if n > 0 => Peeked::Data,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peeked::Empty,
            _ => Peeked::Failed,
        },
    }
}
