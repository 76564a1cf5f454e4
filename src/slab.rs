//! The shard's buffer slab: fixed-size `Vec<u8>` buffers, reused through a
//! free list, with a bound on how many exist at once. A buffer is leased;
//! the lease gives it back on drop. Buffers move into io_uring operations
//! by value, so a lease can be empty for the duration of one.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

pub struct Slab {
    free: RefCell<Vec<Vec<u8>>>,
    size: usize,
    /// Buffers leased out now, including ones lost with a cancelled operation.
    leased: Cell<usize>,
    max: usize,
}

impl Slab {
    pub fn new(size: usize, max_bytes: usize) -> Rc<Slab> {
        let max = (max_bytes / size).max(1);
        Rc::new(Slab {
            free: RefCell::new(Vec::with_capacity(max)),
            size,
            leased: Cell::new(0),
            max,
        })
    }

    /// A cleared buffer of `size` capacity, or `None` when the bound is reached.
    pub fn lease(self: &Rc<Self>) -> Option<Lease> {
        if self.leased.get() >= self.max {
            return None;
        }
        self.leased.set(self.leased.get() + 1);
        let buf = self
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size));
        Some(Lease {
            slab: self.clone(),
            buf: Some(buf),
        })
    }

    pub fn leased(&self) -> usize {
        self.leased.get()
    }

    /// How many buffers may be leased at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Frees half the spare buffers beyond a few: called once a second, so
    /// the memory of a burst goes back to the allocator (and the system)
    /// within seconds while a steady load keeps what it uses.
    pub fn trim(&self) {
        const KEEP: usize = 16;
        let mut free = self.free.borrow_mut();
        let spare = free.len().saturating_sub(KEEP);
        let keep = free.len() - spare.div_ceil(2);
        free.truncate(keep);
    }
}

pub struct Lease {
    slab: Rc<Slab>,
    buf: Option<Vec<u8>>,
}

impl Lease {
    /// Takes the buffer out for an I/O operation; give it back with `put`.
    /// If a cancelled operation kept it, a new one of the slab's size.
    pub fn take(&mut self) -> Vec<u8> {
        let size = self.slab.size;
        self.buf.take().unwrap_or_else(|| Vec::with_capacity(size))
    }

    pub fn put(&mut self, buf: Vec<u8>) {
        self.buf = Some(buf);
    }

    pub fn get(&self) -> &Vec<u8> {
        static EMPTY: Vec<u8> = Vec::new();
        self.buf.as_ref().unwrap_or(&EMPTY)
    }

    /// The buffer; an empty one if an operation took it and never gave it back.
    pub fn get_mut(&mut self) -> &mut Vec<u8> {
        let size = self.slab.size;
        self.buf.get_or_insert_with(|| Vec::with_capacity(size))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slab.leased.set(self.slab.leased.get() - 1);
        if let Some(mut buf) = self.buf.take() {
            // A buffer that grew is not returned: the slab's bound is in its size.
            if buf.capacity() == self.slab.size {
                buf.clear();
                self.slab.free.borrow_mut().push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_reused() {
        let slab = Slab::new(1024, 2048);
        let mut a = slab.lease().unwrap();
        let b = slab.lease().unwrap();
        assert!(slab.lease().is_none(), "bound of 2 buffers");
        a.get_mut().extend_from_slice(b"hello");
        let ptr = a.get().as_ptr();
        drop(a);
        let c = slab.lease().unwrap();
        assert_eq!(c.get().as_ptr(), ptr, "the freed buffer is reused");
        assert!(c.get().is_empty(), "and cleared");
        drop((b, c));
        assert_eq!(slab.leased(), 0);
    }

    #[test]
    fn trim_gives_spare_buffers_back_by_halves() {
        let slab = Slab::new(1024, 1024 * 100);
        let leases: Vec<_> = (0..100).map(|_| slab.lease().unwrap()).collect();
        drop(leases);
        let mut left = vec![];
        for _ in 0..8 {
            slab.trim();
            left.push(slab.free.borrow().len());
        }
        assert_eq!(left, [58, 37, 26, 21, 18, 17, 16, 16]);
    }

    #[test]
    fn lost_buffer_still_frees_its_place() {
        let slab = Slab::new(1024, 1024);
        let mut a = slab.lease().unwrap();
        drop(a.take()); // as if a cancelled operation kept it
        assert_eq!(
            a.take().capacity(),
            1024,
            "a lost buffer is replaced, full size"
        );
        drop(a);
        assert!(slab.lease().is_some());
    }
}
