//! The `Date` header value (RFC 9110 §6.6.1), formatted once a second per
//! shard (by `shard::housekeeping`) rather than once per response.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// "Sun, 06 Nov 1994 08:49:37 GMT": always 29 bytes.
pub const LEN: usize = 29;

pub struct HttpDate {
    value: Cell<[u8; LEN]>,
}

impl HttpDate {
    pub fn new(now: SystemTime) -> HttpDate {
        let date = HttpDate {
            value: Cell::new([b' '; LEN]),
        };
        date.set(now);
        date
    }

    pub fn get(&self) -> [u8; LEN] {
        self.value.get()
    }

    pub fn set(&self, now: SystemTime) {
        use std::io::Write;
        let mut value = [b' '; LEN];
        let _ = write!(&mut value[..], "{}", httpdate::HttpDate::from(now));
        self.value.set(value);
    }

    /// Sleeps until just past the turn of the next second.
    pub async fn next_second(&self) {
        let into_second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        // A millisecond past the turn: the timer's grain is one millisecond.
        let to_next = Duration::from_nanos(1_001_000_000 - u64::from(into_second));
        monoio::time::sleep(to_next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imf_fixdate() {
        let d = HttpDate::new(UNIX_EPOCH + Duration::from_secs(784_111_777));
        assert_eq!(&d.get(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        d.set(UNIX_EPOCH + Duration::from_secs(1_795_435_200));
        assert_eq!(&d.get(), b"Mon, 23 Nov 2026 12:00:00 GMT");
    }
}
