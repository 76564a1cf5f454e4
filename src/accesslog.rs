//! The access log: one JSON object per line, formatted on the shard into a
//! buffer of its own and written to the file by one writer thread, so no
//! shard ever waits on the disk.
//!
//! Each shard has a `Lane`: two bounded queues of buffers shared with the
//! writer, `full` (shard → writer) and `spare` (writer → shard), and a fixed
//! number of buffers that travel round them, made when the lane is. A shard
//! formats lines into the buffer it holds; when the next line might not fit,
//! or on `flush` (once a second), it takes a spare buffer, pushes the full
//! one and unparks the writer. The writer writes each buffer with one
//! `write` and hands it back as a spare. If no spare is in, the writer is
//! behind: the shard clears its buffer and counts the lines it held as
//! dropped. Steady state allocates nothing on either side.
//!
//! Strings are written as bytes, not text: `"`, `\`, control bytes, DEL and
//! every byte of 0x80 and above become `\u00XX`, so a string's code points
//! are its bytes. A request target is ASCII on the wire (RFC 3986), so this
//! changes nothing in a valid one, and a hostile one is shown exactly and
//! reversibly (`s.chars().map(|c| c as u8)` gives the bytes back), where
//! passing valid UTF-8 through and escaping the rest could not be told
//! apart from it. The route name, a `&str`, is written as text.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::capture::Captured;

/// One request as the access log records it. Absent values are `null`.
pub struct Entry<'a> {
    /// When the request ended, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub request_id: Option<&'a [u8]>,
    pub client: IpAddr,
    pub method: &'a [u8],
    /// The request target as received.
    pub path: &'a [u8],
    pub route: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total_us: u64,
    pub upstream_us: Option<u64>,
    pub retries: u32,
    /// What the route captures of the request and response, if it does.
    pub captured: Option<Captured<'a>>,
}

/// What a line takes besides its strings: keys, punctuation, the time, the
/// longest addresses and numbers (checked by a test).
const LINE_FIXED: usize = 512;

impl Entry<'_> {
    /// The most bytes `format_line` can write for this entry: each byte of
    /// a string may take six.
    pub fn max_len(&self) -> usize {
        let strings = self.request_id.map_or(0, <[u8]>::len)
            + self.method.len()
            + self.path.len()
            + self.route.map_or(0, str::len);
        // Its keys, and its parts as they are: already JSON.
        let captured = self.captured.as_ref().map_or(0, |c| {
            64 + c.headers.map_or(0, <[u8]>::len) + c.request_body.len() + c.response_body.len()
        });
        LINE_FIXED + 6 * strings + captured
    }
}

/// Appends `e` as one JSON object and a `\n`, its keys always all there
/// and in this order: `time` (RFC 3339, UTC, milliseconds), `request_id`,
/// `client`, `method`, `path`, `route`, `upstream` (`ip:port`), `status`,
/// `bytes_in`, `bytes_out`, `total_us`, `upstream_us`, `retries`.
/// Allocates nothing but the growth of `out`, none if it has
/// `e.max_len()` to spare.
pub fn format_line(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(&rfc3339_ms(e.unix_ms));
    out.extend_from_slice(b"\",\"request_id\":");
    match e.request_id {
        Some(id) => string(out, id, Escape::Bytes),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"client\":\"");
    // Display for addresses writes digits, hex, '.', ':', '[', ']' and '%':
    // nothing to escape. Writing to a Vec cannot fail.
    let _ = write!(out, "{}", e.client);
    out.extend_from_slice(b"\",\"method\":");
    string(out, e.method, Escape::Bytes);
    out.extend_from_slice(b",\"path\":");
    string(out, e.path, Escape::Bytes);
    out.extend_from_slice(b",\"route\":");
    match e.route {
        Some(r) => string(out, r.as_bytes(), Escape::Text),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream\":");
    match e.upstream {
        Some(a) => {
            out.push(b'"');
            let _ = write!(out, "{a}");
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"status\":");
    number(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes_in\":");
    number(out, e.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    number(out, e.bytes_out);
    out.extend_from_slice(b",\"total_us\":");
    number(out, e.total_us);
    out.extend_from_slice(b",\"upstream_us\":");
    match e.upstream_us {
        Some(us) => number(out, us),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"retries\":");
    number(out, u64::from(e.retries));
    if let Some(c) = &e.captured {
        if let Some(headers) = c.headers {
            out.extend_from_slice(b",\"request_headers\":");
            out.extend_from_slice(headers);
        }
        out.extend_from_slice(b",\"request_body\":");
        out.extend_from_slice(c.request_body);
        out.extend_from_slice(b",\"response_body\":");
        out.extend_from_slice(c.response_body);
    }
    out.extend_from_slice(b"}\n");
}

#[derive(Clone, Copy, PartialEq)]
enum Escape {
    /// Every byte of 0x80 and above escaped: the string's code points are its bytes.
    Bytes,
    /// UTF-8 passed through.
    Text,
}

fn string(out: &mut Vec<u8>, s: &[u8], how: Escape) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut plain = 0;
    for (i, &b) in s.iter().enumerate() {
        let safe = match b {
            b'"' | b'\\' | 0..0x20 | 0x7f => false,
            0x80.. => how == Escape::Text,
            _ => true,
        };
        if safe {
            continue;
        }
        out.extend_from_slice(&s[plain..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
        plain = i + 1;
    }
    out.extend_from_slice(&s[plain..]);
    out.push(b'"');
}

/// Appends `s` as a JSON string whose code points are its bytes (see the
/// module's comment).
pub fn json_string(out: &mut Vec<u8>, s: &[u8]) {
    string(out, s, Escape::Bytes);
}

fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// "2026-11-23T12:00:00.000Z": RFC 3339, UTC, always 24 bytes. A time past
/// the end of year 9999 is written as its last millisecond.
pub fn rfc3339_ms(unix_ms: u64) -> [u8; 24] {
    const LAST: u64 = 253_402_300_799_999;
    let ms = unix_ms.min(LAST);
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    // Days to a civil date: Howard Hinnant's `civil_from_days`, for days
    // on or after 1970-01-01 (so no negative eras).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);

    let mut t = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            t[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, ms_of_day / 3_600_000);
    put(14, 2, ms_of_day / 60_000 % 60);
    put(17, 2, ms_of_day / 1000 % 60);
    put(20, 3, ms_of_day % 1000);
    t
}

/// Buffer size and count per shard.
#[derive(Clone, Copy)]
struct Sizes {
    buffer: usize,
    buffers: usize,
}

/// 8 × 64 KiB per shard: at 25 MB/s of lines from one shard (100,000
/// requests a second) the writer may fall 20 ms behind before lines drop.
const SIZES: Sizes = Sizes {
    buffer: 64 * 1024,
    buffers: 8,
};

/// The queues between one shard and the writer.
struct Lane {
    full: ArrayQueue<Vec<u8>>,
    spare: ArrayQueue<Vec<u8>>,
}

/// What the writer thread and its owner share.
struct Shared {
    reopen: AtomicBool,
    stop: AtomicBool,
    /// Lines the writer failed to write.
    dropped: AtomicU64,
}

/// One shard's side of the access log. It lives on that shard: it may be
/// moved to the shard's thread (`Send`) but not shared (`!Sync`).
pub struct ShardLog {
    lane: Arc<Lane>,
    writer: Thread,
    buf: RefCell<Vec<u8>>,
    /// Lines in `buf`.
    lines: Cell<u64>,
    dropped: Cell<u64>,
}

impl ShardLog {
    /// Formats `e` into the buffer, handing the buffer over first if the
    /// line might not fit. A line longer than a whole buffer grows it (an
    /// allocation; the writer shrinks it back).
    pub fn log(&self, e: &Entry) {
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() && buf.len() + e.max_len() > buf.capacity() {
            self.ship(&mut buf);
        }
        format_line(&mut buf, e);
        self.lines.set(self.lines.get() + 1);
    }

    /// Hands over what the buffer holds; the shard calls it once a second.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            self.ship(&mut buf);
        }
    }

    /// Lines dropped on this shard because the writer was behind.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped.get()
    }

    fn ship(&self, buf: &mut Vec<u8>) {
        let Some(spare) = self.lane.spare.pop() else {
            return self.drop_lines(buf);
        };
        let full = std::mem::replace(buf, spare);
        match self.lane.full.push(full) {
            Ok(()) => {
                self.lines.set(0);
                self.writer.unpark();
            }
            // Not while every buffer is either in a queue, the writer's hand
            // or `buf`; were it to, the lines go and the spare goes back.
            Err(full) => {
                let _ = self.lane.spare.push(std::mem::replace(buf, full));
                self.drop_lines(buf);
            }
        }
    }

    fn drop_lines(&self, buf: &mut Vec<u8>) {
        self.dropped.set(self.dropped.get() + self.lines.get());
        self.lines.set(0);
        buf.clear();
    }
}

impl Drop for ShardLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The writer thread, `ringway-accesslog`, and the handle to it. Dropping
/// it stops it as `stop` does.
pub struct LogWriter {
    shared: Arc<Shared>,
    lanes: Option<mpsc::Sender<Arc<Lane>>>,
    thread: Option<JoinHandle<()>>,
    sizes: Sizes,
}

impl LogWriter {
    /// Opens `path` (append, created 0640) here, so a bad path fails now,
    /// and starts the writer thread.
    pub fn start(path: PathBuf) -> io::Result<LogWriter> {
        LogWriter::start_sized(path, SIZES)
    }

    fn start_sized(path: PathBuf, sizes: Sizes) -> io::Result<LogWriter> {
        let file = open(&path)?;
        let shared = Arc::new(Shared {
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let sink = Sink {
            path,
            file,
            torn: false,
            complained: None,
        };
        let thread = thread::Builder::new()
            .name("ringway-accesslog".into())
            .spawn({
                let shared = shared.clone();
                move || write_loop(&shared, rx, sink, sizes.buffer)
            })?;
        Ok(LogWriter {
            shared,
            lanes: Some(tx),
            thread: Some(thread),
            sizes,
        })
    }

    /// A new shard's log, with its buffers (allocated here, not on the
    /// shard). Call it before the shard starts and move the result there.
    pub fn shard(&self) -> ShardLog {
        let Sizes { buffer, buffers } = self.sizes;
        let lane = Arc::new(Lane {
            full: ArrayQueue::new(buffers - 1),
            spare: ArrayQueue::new(buffers - 1),
        });
        for _ in 1..buffers {
            let _ = lane.spare.push(Vec::with_capacity(buffer));
        }
        let writer = self.thread().clone();
        if let Some(tx) = &self.lanes {
            // The receiver lives as long as the thread, which outlives `self`.
            let _ = tx.send(lane.clone());
        }
        writer.unpark();
        ShardLog {
            lane,
            writer,
            buf: RefCell::new(Vec::with_capacity(buffer)),
            lines: Cell::new(0),
            dropped: Cell::new(0),
        }
    }

    /// Closes the file and opens `path` again before the next write: after
    /// logrotate has renamed it (SIGUSR1, `ringway ctl reopen-logs`). If the
    /// open fails the old file is kept, and the error logged.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.thread().unpark();
    }

    /// Lines the writer failed to write (each failure is logged, at most
    /// once a second).
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes what the shards have handed over and ends the thread. Lines
    /// still in a shard's own buffer are not written: drop or flush the
    /// `ShardLog`s first.
    pub fn stop(self) {
        drop(self);
    }

    fn thread(&self) -> &Thread {
        self.thread.as_ref().expect("set until drop").thread()
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.lanes = None;
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                log::error!("access log writer panicked");
            }
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// The writer thread's file.
struct Sink {
    path: PathBuf,
    file: File,
    /// The last write failed inside a line: start the next with a `\n`.
    torn: bool,
    complained: Option<Instant>,
}

impl Sink {
    fn reopen(&mut self) {
        match open(&self.path) {
            Ok(f) => {
                self.file = f;
                self.torn = false;
                log::info!("access log {} reopened", self.path.display());
            }
            Err(e) => self.complain(format_args!(
                "reopen failed; writing on to the old file: {e}"
            )),
        }
    }

    /// Writes `buf` whole, or counts in `dropped` the lines it could not.
    fn write(&mut self, buf: &[u8], dropped: &AtomicU64) {
        if self.torn && self.file.write_all(b"\n").is_ok() {
            self.torn = false;
        }
        let mut done = 0;
        while done < buf.len() {
            match self.file.write(&buf[done..]) {
                Ok(0) => return self.fail(buf, done, io::ErrorKind::WriteZero.into(), dropped),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(buf, done, e, dropped),
            }
        }
    }

    fn fail(&mut self, buf: &[u8], done: usize, e: io::Error, dropped: &AtomicU64) {
        let lost = buf[done..].iter().filter(|&&b| b == b'\n').count();
        dropped.fetch_add(lost as u64, Ordering::Relaxed);
        self.torn = done > 0 && buf[done - 1] != b'\n';
        self.complain(format_args!("write failed, {lost} lines dropped: {e}"));
    }

    fn complain(&mut self, what: std::fmt::Arguments) {
        let now = Instant::now();
        if self
            .complained
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.complained = Some(now);
            log::error!("access log {}: {what}", self.path.display());
        }
    }
}

fn write_loop(shared: &Shared, new_lanes: mpsc::Receiver<Arc<Lane>>, mut sink: Sink, size: usize) {
    let mut lanes: Vec<Arc<Lane>> = Vec::new();
    let reopen =
        || shared.reopen.load(Ordering::Acquire) && shared.reopen.swap(false, Ordering::AcqRel);
    loop {
        // Read before the pass: whatever was handed over before `stop` is
        // seen by the pass.
        let stopping = shared.stop.load(Ordering::Acquire);
        lanes.extend(new_lanes.try_iter());
        if reopen() {
            sink.reopen();
        }
        let mut wrote = false;
        for lane in &lanes {
            while let Some(mut buf) = lane.full.pop() {
                // Again per buffer: one pushed after a `reopen` goes to the
                // new file.
                if reopen() {
                    sink.reopen();
                }
                sink.write(&buf, &shared.dropped);
                buf.clear();
                buf.shrink_to(size);
                let _ = lane.spare.push(buf);
                wrote = true;
            }
        }
        if stopping {
            return;
        }
        if !wrote {
            thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
    use std::process::Command;

    use serde_json::Value;

    /// Small buffers, so a few hundred lines go round every one of them.
    const SMALL: Sizes = Sizes {
        buffer: 4096,
        buffers: 4,
    };

    fn entry<'a>(path: &'a [u8], request_id: Option<&'a [u8]>) -> Entry<'a> {
        Entry {
            unix_ms: 1_795_435_200_123,
            request_id,
            client: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            method: b"GET",
            path,
            route: Some("api"),
            upstream: Some("10.0.0.2:8080".parse().unwrap()),
            status: 200,
            bytes_in: 87,
            bytes_out: 1234,
            total_us: 1500,
            upstream_us: Some(1200),
            retries: 1,
            captured: None,
        }
    }

    fn line(e: &Entry) -> (Vec<u8>, Value) {
        let mut out = Vec::new();
        format_line(&mut out, e);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
        let v = serde_json::from_slice(&out).expect("a line is one JSON object");
        (out, v)
    }

    /// The bytes a `Escape::Bytes` string stands for.
    fn bytes_of(v: &Value) -> Vec<u8> {
        let s = v.as_str().expect("a string");
        s.chars()
            .map(|c| u8::try_from(u32::from(c)).expect("code points are bytes"))
            .collect()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringway-accesslog-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The request ids of the lines in `bytes`, each line checked as JSON.
    fn ids(bytes: &[u8]) -> Vec<String> {
        bytes
            .split_inclusive(|&b| b == b'\n')
            .map(|l| {
                let v: Value = serde_json::from_slice(l).expect("whole JSON lines");
                v["request_id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Waits (yielding, 5 s at most) until the writer has handed back every
    /// buffer of `log`'s lane, that is, written all it was given.
    fn settle(log: &ShardLog) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.lane.spare.len() < log.lane.spare.capacity() {
            assert!(Instant::now() < deadline, "the writer did not catch up");
            thread::yield_now();
        }
    }

    fn log_ids(log: &ShardLog, prefix: &str, seqs: std::ops::Range<u32>) {
        for seq in seqs {
            let id = format!("{prefix}{seq}");
            log.log(&entry(b"/api/items?id=7", Some(id.as_bytes())));
        }
    }

    #[test]
    fn time_is_rfc3339_utc_to_the_millisecond() {
        assert_eq!(&rfc3339_ms(0), b"1970-01-01T00:00:00.000Z");
        assert_eq!(&rfc3339_ms(951_782_400_000), b"2000-02-29T00:00:00.000Z");
        assert_eq!(&rfc3339_ms(1_795_435_200_123), b"2026-11-23T12:00:00.123Z");
        assert_eq!(&rfc3339_ms(4_107_542_399_999), b"2100-02-28T23:59:59.999Z");
        assert_eq!(
            &rfc3339_ms(253_402_300_799_999),
            b"9999-12-31T23:59:59.999Z"
        );
        assert_eq!(&rfc3339_ms(u64::MAX), b"9999-12-31T23:59:59.999Z");
        // Every day to 2200 against a calendar stepped a day at a time.
        let (mut y, mut m, mut d) = (1970, 1, 1);
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        for day in 0.. {
            if y == 2200 {
                break;
            }
            let t = rfc3339_ms(day * 86_400_000 + 45_296_789);
            assert_eq!(t, *format!("{y:04}-{m:02}-{d:02}T12:34:56.789Z").as_bytes());
            let days_in = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > days_in {
                (d, m) = (1, m + 1);
            }
            if m > 12 {
                (m, y) = (1, y + 1);
            }
        }
    }

    #[test]
    fn a_line_has_every_field() {
        let (_, v) = line(&entry(b"/api/items?id=7", Some(b"req-1")));
        let want = serde_json::json!({
            "time": "2026-11-23T12:00:00.123Z",
            "request_id": "req-1",
            "client": "203.0.113.7",
            "method": "GET",
            "path": "/api/items?id=7",
            "route": "api",
            "upstream": "10.0.0.2:8080",
            "status": 200,
            "bytes_in": 87,
            "bytes_out": 1234,
            "total_us": 1500,
            "upstream_us": 1200,
            "retries": 1,
        });
        assert_eq!(v, want);
    }

    #[test]
    fn absent_values_are_null() {
        let mut e = entry(b"/", None);
        (e.route, e.upstream, e.upstream_us) = (None, None, None);
        e.client = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let (_, v) = line(&e);
        for key in ["request_id", "route", "upstream", "upstream_us"] {
            assert!(v[key].is_null(), "{key}");
        }
        assert_eq!(v["client"], "::1");
    }

    #[test]
    fn hostile_bytes_make_valid_json_and_come_back_exactly() {
        let every: Vec<u8> = (0..=255).collect();
        let cases: [&[u8]; 6] = [
            b"/a\"b\\c\"",
            b"/x\r\n{\"status\":999}\n",
            b"/\xff\xfe\xc3(\xe2\x82",
            b"/caf\xc3\xa9",
            b"\\u0000\"",
            &every,
        ];
        for path in cases {
            let mut e = entry(path, Some(path));
            e.method = path;
            let (out, v) = line(&e);
            for key in ["path", "method", "request_id"] {
                assert_eq!(
                    bytes_of(&v[key]),
                    path,
                    "{key} of {}",
                    String::from_utf8_lossy(&out)
                );
            }
            assert_eq!(v["status"], 200, "a target cannot forge a field");
            assert!(
                out.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\n'),
                "plain ASCII"
            );
        }
    }

    #[test]
    fn the_route_is_text() {
        let mut e = entry(b"/", None);
        e.route = Some("bücher \"neu\"\t\\");
        let (_, v) = line(&e);
        assert_eq!(v["route"], "bücher \"neu\"\t\\");
    }

    #[test]
    fn max_len_bounds_the_longest_line() {
        let strings = [0u8; 100];
        let route = "\u{1}".repeat(100);
        let e = Entry {
            unix_ms: u64::MAX,
            request_id: Some(&strings),
            client: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .unwrap(),
            method: &strings,
            path: &strings,
            route: Some(&route),
            upstream: Some(SocketAddr::V6(SocketAddrV6::new(
                "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                    .parse()
                    .unwrap(),
                65535,
                0,
                u32::MAX,
            ))),
            status: u16::MAX,
            bytes_in: u64::MAX,
            bytes_out: u64::MAX,
            total_us: u64::MAX,
            upstream_us: Some(u64::MAX),
            retries: u32::MAX,
            captured: None,
        };
        let mut out = Vec::with_capacity(e.max_len());
        let at = out.as_ptr();
        format_line(&mut out, &e);
        let fixed = out.len() - 6 * 400;
        assert!(fixed <= LINE_FIXED, "{fixed}");
        assert_eq!(out.as_ptr(), at, "no reallocation within max_len");
        serde_json::from_slice::<Value>(&out).unwrap();
    }

    #[test]
    fn each_shards_lines_arrive_whole_and_in_order() {
        let dir = scratch("order");
        let path = dir.join("access.log");
        let writer = LogWriter::start_sized(path.clone(), SMALL).unwrap();
        let shards: Vec<_> = (0..2)
            .map(|n| {
                let log = writer.shard();
                thread::spawn(move || {
                    // A round ships at most 3 buffers (2 full, 1 flushed),
                    // as many as there are spares: nothing can drop.
                    for round in 0..25 {
                        log_ids(&log, &format!("{n}-"), round * 40..(round + 1) * 40);
                        log.flush();
                        settle(&log);
                    }
                    log.dropped_lines()
                })
            })
            .collect();
        for s in shards {
            assert_eq!(s.join().unwrap(), 0);
        }
        writer.stop();
        let ids = ids(&std::fs::read(&path).unwrap());
        assert_eq!(ids.len(), 2000);
        for n in 0..2 {
            let mine: Vec<_> = ids
                .iter()
                .filter(|id| id.starts_with(&format!("{n}-")))
                .collect();
            let want: Vec<_> = (0..1000).map(|s| format!("{n}-{s}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_stalled_writer_costs_lines_never_a_wait() {
        let dir = scratch("stall");
        let fifo = dir.join("fifo");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        // The reader opens the FIFO and then reads nothing until told: once
        // the pipe (64 KiB) and the lane's buffers are full, the writer is
        // stuck in `write`.
        let (go, wait) = mpsc::channel::<()>();
        let reader = thread::spawn({
            let fifo = fifo.clone();
            move || {
                let mut f = File::open(fifo).unwrap();
                let mut all = Vec::new();
                if wait.recv().is_ok() {
                    f.read_to_end(&mut all).unwrap();
                }
                all
            }
        });
        let writer = LogWriter::start_sized(fifo, SMALL).unwrap();
        let log = writer.shard();
        const N: u32 = 5000; // ~1.3 MB of lines
        let (done, finished) = mpsc::channel();
        let shard = thread::spawn(move || {
            log_ids(&log, "", 0..N);
            log.flush();
            done.send(log.dropped_lines()).unwrap();
            log
        });
        let dropped = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the shard waited for the writer");
        assert!(dropped > 0);
        go.send(()).unwrap();
        drop(shard.join().unwrap());
        writer.stop();
        let got = ids(&reader.join().unwrap());
        assert_eq!(
            got.len() as u64 + dropped,
            u64::from(N),
            "each line written or counted"
        );
        let seqs: Vec<u32> = got.iter().map(|id| id.parse().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reopen_after_a_rename_writes_a_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("reopen");
        let path = dir.join("access.log");
        let writer = LogWriter::start_sized(path.clone(), SMALL).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "0640 at most: {mode:o}");
        let log = writer.shard();
        log_ids(&log, "a", 0..3);
        log.flush();
        settle(&log);
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        log_ids(&log, "b", 0..3);
        log.flush();
        settle(&log);
        writer.reopen();
        log_ids(&log, "c", 0..3);
        drop(log);
        writer.stop();
        let old = ids(&std::fs::read(dir.join("access.log.1")).unwrap());
        assert_eq!(old, ["a0", "a1", "a2", "b0", "b1", "b2"]);
        assert_eq!(ids(&std::fs::read(&path).unwrap()), ["c0", "c1", "c2"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_line_longer_than_a_buffer_arrives_whole() {
        let dir = scratch("long");
        let path = dir.join("access.log");
        let writer = LogWriter::start_sized(path.clone(), SMALL).unwrap();
        let log = writer.shard();
        let long = vec![b'a'; 3 * SMALL.buffer];
        log_ids(&log, "x", 0..2);
        log.log(&entry(&long, Some(b"long")));
        log_ids(&log, "y", 0..2);
        log.flush();
        settle(&log);
        for _ in 0..log.lane.spare.len() {
            let buf = log.lane.spare.pop().unwrap();
            assert!(buf.capacity() < 2 * SMALL.buffer, "shrunk back");
            log.lane.spare.push(buf).unwrap();
        }
        drop(log);
        writer.stop();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(ids(&bytes), ["x0", "x1", "long", "y0", "y1"]);
        let third: Value =
            serde_json::from_slice(bytes.split(|&b| b == b'\n').nth(2).unwrap()).unwrap();
        assert_eq!(bytes_of(&third["path"]), long);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn write_errors_count_lines_and_do_not_stop_the_writer() {
        // Every write to /dev/full fails with ENOSPC.
        let writer = LogWriter::start_sized(PathBuf::from("/dev/full"), SMALL).unwrap();
        let log = writer.shard();
        for _ in 0..3 {
            log_ids(&log, "", 0..10);
            log.flush();
            settle(&log);
        }
        assert_eq!(writer.dropped_lines(), 30);
        assert_eq!(log.dropped_lines(), 0);
    }
}
