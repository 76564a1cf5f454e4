//! A connection upgraded by a 101 (WebSocket and the like): bytes copied
//! both ways until either side closes or fails, or neither moves a byte
//! for the idle limit.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::io::{read_more, write_range};
use crate::slab::Lease;

/// No wait in a tunnel has its own limit: one idle timer covers both ways.
const FAR: Duration = Duration::from_secs(24 * 3600);

/// One side: its read and write halves, its buffer and where the bytes
/// read before the switch start in it.
pub type Side<'a, R, W> = (&'a mut R, &'a mut W, &'a mut Lease, usize);

/// Copies bytes both ways until either side closes or fails, or neither
/// moves a byte for `idle`. Each side's buffer holds bytes read before the
/// switch, from the given offset. The one idle timer ends both directions
/// together, so no read is ever dropped while the tunnel goes on, and no
/// byte that arrived is lost to a cancelled read.
pub async fn tunnel<CR, CW, UR, UW>(
    client: Side<'_, CR, CW>,
    upstream: Side<'_, UR, UW>,
    idle: Duration,
) where
    CR: monoio::io::AsyncReadRent,
    CW: monoio::io::AsyncWriteRent,
    UR: monoio::io::AsyncReadRent,
    UW: monoio::io::AsyncWriteRent,
{
    let last = Cell::new(Instant::now());
    let (cr, cw, cbuf, cstart) = client;
    let (ur, uw, ubuf, ustart) = upstream;
    let mut up = pin!(copy(cr, uw, cbuf, cstart, &last));
    let mut down = pin!(copy(ur, cw, ubuf, ustart, &last));
    let mut timer = pin!(monoio::time::sleep(idle));
    poll_fn(|cx| {
        if up.as_mut().poll(cx).is_ready() || down.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        while timer.as_mut().poll(cx).is_ready() {
            let quiet = last.get().elapsed();
            if quiet >= idle {
                return Poll::Ready(());
            }
            timer.set(monoio::time::sleep(idle - quiet));
        }
        Poll::Pending
    })
    .await;
}

async fn copy<R, W>(r: &mut R, w: &mut W, buf: &mut Lease, start: usize, last: &Cell<Instant>)
where
    R: monoio::io::AsyncReadRent,
    W: monoio::io::AsyncWriteRent,
{
    let len = buf.get().len();
    if write_range(w, buf, start..len, FAR).await.is_err() {
        return;
    }
    loop {
        buf.get_mut().clear();
        if read_more(r, buf, FAR).await.is_err() {
            return;
        }
        last.set(Instant::now());
        let len = buf.get().len();
        if write_range(w, buf, 0..len, FAR).await.is_err() {
            return;
        }
        last.set(Instant::now());
    }
}
