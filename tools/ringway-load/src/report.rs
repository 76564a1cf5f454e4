//! The summary: printed, as JSON, and the interval log.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2Serializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use ringway::hgrm::percentile_ms;

use crate::Args;
use crate::worker::ThreadResult;

const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
    ("max", 100.0),
];

/// `secs`: how long was measured (less than asked if interrupted).
pub fn print(args: &Args, threads: usize, secs: f64, r: &ThreadResult) {
    let c = &r.counts;
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate} req/s (latency from intended send time)"),
        None => "closed loop".into(),
    };
    println!(
        "ringway-load {} for {secs:.2}s (+{:?} warm-up), {} connections on {threads} threads, {mode}",
        args.url, args.warmup, args.connections
    );
    println!(
        "  requests {:>12}   {:>12.1} req/s",
        c.completed(),
        c.completed() as f64 / secs
    );
    let lat: Vec<String> = PERCENTILES
        .iter()
        .map(|(name, p)| format!("{name} {:.3}ms", percentile_ms(&r.hist, *p)))
        .collect();
    println!("  latency  {}", lat.join("  "));
    println!(
        "  errors   connect {}, read/write {}, timeout {}, bad response {}; status 4xx {}, 5xx {}",
        c.connect, c.io, c.timeout, c.protocol, c.status_4xx, c.status_5xx
    );
    if let Some(rate) = args.rate {
        let achieved = c.completed() as f64 / secs;
        if achieved < rate * 0.95 {
            println!(
                "  warning: achieved {achieved:.0} req/s of the {rate} asked for: the target is saturated"
            );
        }
    }
}

pub fn json(args: &Args, threads: usize, secs: f64, r: &ThreadResult) -> String {
    let c = &r.counts;
    let lat: Vec<String> = PERCENTILES
        .iter()
        .map(|(name, p)| {
            format!(
                "\"{}\":{:.3}",
                name.replace('.', "_"),
                percentile_ms(&r.hist, *p)
            )
        })
        .collect();
    format!(
        "{{\"url\":\"{}\",\"connections\":{},\"threads\":{threads},\"duration_s\":{secs:.3},\"rate\":{},\
\"requests\":{},\"rps\":{:.1},\"latency_ms\":{{{},\"mean\":{:.3}}},\
\"errors\":{{\"connect\":{},\"io\":{},\"timeout\":{},\"protocol\":{},\"status_4xx\":{},\"status_5xx\":{}}}}}\n",
        args.url.replace('"', ""),
        args.connections,
        args.rate.map_or("null".to_string(), |r| r.to_string()),
        c.completed(),
        c.completed() as f64 / secs,
        lat.join(","),
        r.hist.mean() / 1000.0,
        c.connect,
        c.io,
        c.timeout,
        c.protocol,
        c.status_4xx,
        c.status_5xx
    )
}

pub fn write_log(path: &Path, seconds: &[Histogram<u64>], warmup: Duration) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut serializer = V2Serializer::new();
    let start = SystemTime::now() - Duration::from_secs(seconds.len() as u64);
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("ringway-load latency log, values in microseconds")
        .add_comment(&format!("measuring began after a {warmup:?} warm-up"))
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut file, &mut serializer)?;
    for (i, h) in seconds.iter().enumerate() {
        log.write_histogram(
            h,
            Duration::from_secs(i as u64),
            Duration::from_secs(1),
            None,
        )
        .map_err(|e| anyhow::anyhow!("writing the interval log: {e:?}"))?;
    }
    Ok(())
}
