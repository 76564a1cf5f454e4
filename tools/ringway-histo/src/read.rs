//! Reading latency dumps: `.hgrm` percentile text and HdrHistogram interval
//! logs. Histograms hold microseconds.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use crate::Unit;

pub fn load(path: &Path, log_unit: Unit) -> anyhow::Result<Histogram<u64>> {
    let bytes = std::fs::read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let is_log = text.lines().any(|l| {
        l.starts_with("#[StartTime") || l.starts_with("#[BaseTime") || l.contains(",HIST")
    });
    if is_log {
        read_log(&bytes, log_unit)
    } else {
        read_hgrm(&text)
    }
}

/// Rebuilds a histogram from percentile rows: each row's count since the
/// previous one is recorded at the row's value. As exact as the rows are.
pub fn read_hgrm(text: &str) -> anyhow::Result<Histogram<u64>> {
    let mut h = ringway::hgrm::latency_histogram();
    let mut previous = 0u64;
    let mut rows = 0;
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 3 || line.trim_start().starts_with('#') {
            continue;
        }
        let (Ok(value_ms), Ok(_), Ok(total)) = (
            cols[0].parse::<f64>(),
            cols[1].parse::<f64>(),
            cols[2].parse::<u64>(),
        ) else {
            continue;
        };
        rows += 1;
        let us = ((value_ms * 1000.0).round() as u64).max(1);
        if total > previous {
            h.record_n(us, total - previous)?;
            previous = total;
        }
    }
    if rows == 0 {
        bail!("no percentile rows (Value Percentile TotalCount ...) found");
    }
    Ok(h)
}

pub fn read_log(bytes: &[u8], unit: Unit) -> anyhow::Result<Histogram<u64>> {
    let mut total = ringway::hgrm::latency_histogram();
    let mut deserializer = Deserializer::new();
    let mut intervals = 0;
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|e| anyhow::anyhow!("malformed interval log: {e:?}"))?;
        if let LogEntry::Interval(interval) = entry {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(interval.encoded_histogram())
                .context("an interval's histogram is not base64")?;
            let h: Histogram<u64> = deserializer
                .deserialize(&mut Cursor::new(raw))
                .map_err(|e| anyhow::anyhow!("an interval's histogram does not decode: {e:?}"))?;
            for v in h.iter_recorded() {
                let value = match unit {
                    Unit::Ns => v.value_iterated_to() / 1000,
                    Unit::Us => v.value_iterated_to(),
                    Unit::Ms => v.value_iterated_to() * 1000,
                };
                total.record_n(value.max(1), v.count_at_value())?;
            }
            intervals += 1;
        }
    }
    if intervals == 0 {
        bail!("no interval histograms in the log");
    }
    Ok(total)
}
