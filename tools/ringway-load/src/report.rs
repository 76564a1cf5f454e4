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
    if args.rate.is_some() {
        let lag: Vec<String> = LAG_PERCENTILES
            .iter()
            .map(|(name, p)| format!("{name} {:.1}µs", lag_us(&r.lag, *p)))
            .collect();
        println!(
            "  schedule lag  {}  (request sent minus intended send time; load threads preempted {} times)",
            lag.join("  "),
            c.preempted
        );
    }
    println!(
        "  errors   connect {}, read/write {}, timeout {}, bad response {}; status 4xx {}, 5xx {}",
        c.connect, c.io, c.timeout, c.protocol, c.status_4xx, c.status_5xx
    );
    if let Some(warning) = lag_warning(args, r) {
        println!("  warning: {warning}");
    }
    if let Some(rate) = args.rate {
        let achieved = c.completed() as f64 / secs;
        if achieved < rate * 0.95 {
            println!(
                "  warning: achieved {achieved:.0} req/s of the {rate} asked for: the target is saturated"
            );
        }
    }
}

/// Schedule lag percentiles printed with every open-loop run.
const LAG_PERCENTILES: [(&str, f64); 4] = [
    ("p50", 50.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("max", 100.0),
];

/// The schedule lag at percentile `p` (100 is the maximum) in µs; 0 if empty.
/// The lag histogram counts ns, so the latency scaling (µs to ms) gives µs.
fn lag_us(h: &Histogram<u64>, p: f64) -> f64 {
    ringway::hgrm::percentile_ms(h, p)
}

/// Said when the generator's own lateness is a visible part of the latency:
/// a schedule lag p99 over 10% of the latency p50.
fn lag_warning(args: &Args, r: &ThreadResult) -> Option<String> {
    args.rate?;
    let (lag, p50) = (lag_us(&r.lag, 99.0), percentile_ms(&r.hist, 50.0) * 1000.0);
    (lag > p50 * 0.1).then(|| {
        format!(
            "schedule lag p99 {lag:.1}µs is over 10% of the latency p50 {p50:.0}µs: \
the generator's lateness is in these figures (its CPU is busy, or every connection was: add -c)"
        )
    })
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
    let lag = if args.rate.is_some() {
        let ps: Vec<String> = LAG_PERCENTILES
            .iter()
            .map(|(name, p)| format!("\"{}\":{:.3}", name.replace('.', "_"), lag_us(&r.lag, *p)))
            .collect();
        let mean = if r.lag.is_empty() {
            0.0
        } else {
            r.lag.mean() / 1000.0
        };
        format!("{{{},\"mean\":{mean:.3}}}", ps.join(","))
    } else {
        "null".to_string()
    };
    format!(
        "{{\"url\":\"{}\",\"connections\":{},\"threads\":{threads},\"duration_s\":{secs:.3},\"rate\":{},\
\"requests\":{},\"rps\":{:.1},\"latency_ms\":{{{},\"mean\":{:.3}}},\"schedule_lag_us\":{lag},\"preempted\":{},\
\"errors\":{{\"connect\":{},\"io\":{},\"timeout\":{},\"protocol\":{},\"status_4xx\":{},\"status_5xx\":{}}}}}\n",
        args.url.replace('"', ""),
        args.connections,
        args.rate.map_or("null".to_string(), |r| r.to_string()),
        c.completed(),
        c.completed() as f64 / secs,
        lat.join(","),
        r.hist.mean() / 1000.0,
        c.preempted,
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
