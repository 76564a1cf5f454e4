//! `[metrics] histogram_dir`: every `histogram_interval` the control thread
//! appends each route's and upstream's latency of the interval just ended
//! to an HdrHistogram interval log (V2, compressed), the format
//! HdrHistogram's tools and `ringway-histo` read. Each line is tagged
//! `route:NAME:METRIC` or `upstream:NAME:METRIC`. A file is closed once it
//! passes `histogram_file_bytes`; only the newest `histogram_keep` files
//! are kept.
//!
//! The shards' histograms count from the start (or the last `ctl
//! histograms --reset`); an interval is the difference between two reads,
//! so the periodic logs do not disturb `ctl histograms`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

use crate::metrics::{Latency, Metric, Report};

pub struct HistogramLogs {
    dir: PathBuf,
    interval: Duration,
    keep: usize,
    max_bytes: u64,
    /// The file being written and its size.
    file: Option<(File, u64)>,
    /// The totals at the last read, to take the interval's share from.
    last: Option<Report>,
    last_at: Instant,
    last_time: SystemTime,
    /// Files opened so far, to tell apart two opened in one millisecond.
    opened: u64,
}

impl HistogramLogs {
    pub fn new(
        dir: &Path,
        interval: Duration,
        keep: usize,
        max_bytes: u64,
    ) -> io::Result<HistogramLogs> {
        std::fs::create_dir_all(dir)?;
        Ok(HistogramLogs {
            dir: dir.to_path_buf(),
            interval,
            keep: keep.max(1),
            max_bytes,
            file: None,
            last: None,
            last_at: Instant::now(),
            last_time: SystemTime::now(),
            opened: 0,
        })
    }

    pub fn due(&self) -> bool {
        self.last_at.elapsed() >= self.interval
    }

    /// Appends the interval since the last call, taken from `totals` (every
    /// shard's histograms summed).
    pub fn write(&mut self, totals: Report) -> io::Result<()> {
        let now = SystemTime::now();
        let start = self.last_time;
        let length = now.duration_since(start).unwrap_or_default();
        let mut lines = Vec::new();
        let last = self.last.as_ref();
        let kinds = totals
            .routes
            .iter()
            .map(|r| {
                (
                    "route",
                    &r.name,
                    &r.latency,
                    last.and_then(|l| l.routes.iter().find(|x| x.name == r.name))
                        .and_then(|x| x.latency.as_ref()),
                )
            })
            .chain(totals.upstreams.iter().map(|u| {
                (
                    "upstream",
                    &u.name,
                    &u.latency,
                    last.and_then(|l| l.upstreams.iter().find(|x| x.name == u.name))
                        .and_then(|x| x.latency.as_ref()),
                )
            }));
        for (kind, name, latency, before) in kinds {
            let Some(latency) = latency else { continue };
            for (metric, label) in [
                (Metric::Total, "total"),
                (Metric::Upstream, "upstream"),
                (Metric::Proxy, "proxy"),
            ] {
                let h = interval(latency, before, metric);
                if h.is_empty() {
                    continue;
                }
                let tag: String = format!("{kind}:{name}:{label}")
                    .chars()
                    .map(|c| {
                        if matches!(c, ',' | ' ' | '\r' | '\n') {
                            '_'
                        } else {
                            c
                        }
                    })
                    .collect();
                lines.extend(interval_lines(&h, start, length, &tag)?);
            }
        }
        self.last = Some(totals);
        self.last_at = Instant::now();
        self.last_time = now;
        if lines.is_empty() {
            return Ok(());
        }
        let (file, written) = match &mut self.file {
            Some(f) if f.1 < self.max_bytes => f,
            _ => {
                let f = self.open(start)?;
                self.file.insert(f)
            }
        };
        file.write_all(&lines)?;
        *written += lines.len() as u64;
        Ok(())
    }

    /// A new file, with the log's header; the oldest beyond `keep` go.
    fn open(&mut self, start: SystemTime) -> io::Result<(File, u64)> {
        let secs = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.opened += 1;
        let name = format!(
            "ringway-{}.{:03}-{:06}.hlog",
            secs.as_secs(),
            secs.subsec_millis(),
            self.opened
        );
        let path = self.dir.join(name);
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut header = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment("ringway latency, values in microseconds; tags route:NAME:METRIC, upstream:NAME:METRIC")
            .with_start_time(start)
            .with_base_time(SystemTime::UNIX_EPOCH)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut header, &mut serializer)?;
        file.write_all(&header)?;
        self.prune()?;
        Ok((file, header.len() as u64))
    }

    fn prune(&self) -> io::Result<()> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ringway-") && n.ends_with(".hlog"))
            })
            .collect();
        // The names sort by time.
        logs.sort();
        let excess = logs.len().saturating_sub(self.keep);
        // One that cannot go is said and left: the new file is written anyway.
        for old in &logs[..excess] {
            if let Err(e) = std::fs::remove_file(old) {
                log::warn!(
                    "metrics.histogram_dir: cannot remove {}: {e}",
                    old.display()
                );
            }
        }
        Ok(())
    }
}

/// `now` less `before` (the same histogram read earlier). After a reset,
/// `now` alone is the interval.
fn interval(now: &Latency, before: Option<&Latency>, metric: Metric) -> Histogram<u64> {
    let mut h = now.get(metric).clone();
    if let Some(b) = before {
        let b = b.get(metric);
        if b.len() <= h.len() && h.subtract(b).is_err() {
            h = now.get(metric).clone();
        }
    }
    h
}

/// One log line (the header and legend the writer adds are dropped).
fn interval_lines(
    h: &Histogram<u64>,
    start: SystemTime,
    length: Duration,
    tag: &str,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .with_base_time(SystemTime::UNIX_EPOCH)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut out, &mut serializer)?;
    let since_epoch = start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    log.write_histogram(h, since_epoch, length, Tag::new(tag))
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    Ok(out
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"Tag="))
        .flatten()
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RouteReport;

    fn totals(values: &[u64]) -> Report {
        let mut latency = Latency::new();
        for &v in values {
            latency.total.record(v).unwrap();
        }
        Report {
            routes: vec![RouteReport {
                name: "api v1".into(),
                requests: Default::default(),
                bytes_in: 0,
                bytes_out: 0,
                latency: Some(latency),
            }],
            ..Report::default()
        }
    }

    #[test]
    fn intervals_are_differences_and_files_rotate() {
        let dir = std::env::temp_dir().join(format!("ringway-histlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Tiny files: every interval starts a new one; two are kept.
        let mut logs = HistogramLogs::new(&dir, Duration::ZERO, 2, 1).unwrap();
        logs.write(totals(&[100, 200])).unwrap();
        logs.write(totals(&[100, 200, 300, 400, 500])).unwrap();
        logs.write(totals(&[100, 200, 300, 400, 500])).unwrap(); // nothing new: no line
        logs.write(totals(&[100, 200, 300, 400, 500, 600])).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 2, "{files:?}");
        let mut counts = Vec::new();
        for f in &files {
            let text = std::fs::read(f).unwrap();
            for item in hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&text) {
                if let Ok(hdrhistogram::serialization::interval_log::LogEntry::Interval(i)) = item {
                    assert_eq!(i.tag().map(|t| t.as_str()), Some("route:api_v1:total"));
                    let mut d = hdrhistogram::serialization::Deserializer::new();
                    let h: Histogram<u64> = d
                        .deserialize(&mut base64_decode(i.encoded_histogram()).as_slice())
                        .unwrap();
                    counts.push(h.len());
                }
            }
        }
        // The last two intervals: 3 new values, then 1.
        assert_eq!(counts, vec![3, 1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }
}
