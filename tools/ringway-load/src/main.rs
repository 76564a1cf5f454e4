//! ringway-load: an HTTP/1.1 load generator, one monoio event loop per thread.
//!
//! Closed loop (the default): every connection sends its next request as
//! soon as the last response is in, like wrk. Open loop (`--rate`): requests
//! are scheduled at a constant rate and latency is measured from the time a
//! request was due, not when it was sent, so a stall is charged to every
//! request it delayed (coordinated-omission correction, like wrk2). Each
//! thread's pacer sends within microseconds of the due time; how late each
//! request went out (the schedule lag) is reported beside the latency.
//!
//! Always bounded: by `--duration` (at most an hour) and `--max-requests`.
//! Targets must be loopback or private addresses (test namespaces) unless
//! `--allow-remote` is given.

mod pacer;
mod report;
mod sched;
mod worker;

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

use crate::pacer::Schedule;
use crate::worker::{Counts, Plan, ThreadResult};

#[derive(Parser, Debug)]
#[command(
    name = "ringway-load",
    version,
    about = "HTTP/1.1 load generator: closed loop like wrk, open loop like wrk2"
)]
pub struct Args {
    /// Target, e.g. http://127.0.0.1:8080/path
    url: String,
    /// Open connections (spread over the threads).
    #[arg(short = 'c', long, default_value_t = 64)]
    connections: usize,
    /// Threads, each with its own event loop (default: one per core).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// How long to measure, after the warm-up: "10s", "500ms", "2m".
    #[arg(short = 'd', long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Load before measuring starts; its results are dropped.
    #[arg(short = 'w', long, default_value = "1s", value_parser = duration)]
    warmup: Duration,
    /// Requests per second over all connections: open loop, latency from the intended send time.
    #[arg(short = 'R', long)]
    rate: Option<f64>,
    #[arg(short = 'm', long, default_value = "GET")]
    method: String,
    /// Paths to request in turn (default: the URL's path). Repeatable.
    #[arg(short = 'p', long = "path")]
    paths: Vec<String>,
    /// Extra request header, "Name: value". Repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body of this many bytes (sent with Content-Length).
    #[arg(long, default_value_t = 0)]
    body_size: usize,
    /// A new connection for every request.
    #[arg(long)]
    no_keepalive: bool,
    /// Stop after this many requests (warm-up included).
    #[arg(long, default_value_t = 100_000_000)]
    max_requests: u64,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = duration)]
    timeout: Duration,
    /// Write the latency distribution as HdrHistogram percentile text (.hgrm, ms).
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write an HdrHistogram interval log, one histogram per second (values in µs).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Write the summary as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Allow a target outside loopback and private ranges.
    #[arg(long)]
    allow_remote: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    ringway::config::parse_duration(s)
        .ok_or_else(|| format!("'{s}' is not a duration: write e.g. 10s, 500ms, 2m"))
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn target(url: &str, allow_remote: bool) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("'{url}': only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    // Resolved once, before any load: not on an event loop.
    #[allow(clippy::disallowed_methods)]
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve '{authority}'"))?
        .next()
        .with_context(|| format!("'{authority}' has no address"))?;
    if !allow_remote && !is_test_address(addr.ip()) {
        bail!(
            "{} is not loopback or a private test address; pass --allow-remote to load it",
            addr.ip()
        );
    }
    Ok(Target {
        addr,
        host: authority.to_string(),
        path: path.to_string(),
    })
}

/// Loopback, or the private ranges test network namespaces use.
fn is_test_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.duration.is_zero() || args.duration > Duration::from_secs(3600) {
        bail!("--duration must be between 1ms and 1h");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of requests per second");
    }
    let target = target(&args.url, args.allow_remote)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, args.connections);
    let paths = if args.paths.is_empty() {
        vec![target.path.clone()]
    } else {
        args.paths.clone()
    };

    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    // Ctrl-C ends the run early; what was measured is still reported.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let progress: Vec<Arc<AtomicU64>> = (0..threads).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    // Connections and the request budget, spread over the threads.
    let share = |total: u64, id: usize| {
        total / threads as u64 + u64::from((id as u64) < total % threads as u64)
    };
    let mut conn_offset = 0;
    for (id, progress) in progress.iter().enumerate() {
        let conns = share(args.connections as u64, id) as usize;
        let max_requests = share(args.max_requests, id);
        // Each thread paces its connections' share of the rate; the threads'
        // schedules are staggered so that together they are evenly spaced.
        let schedule = args.rate.map(|rate| {
            Schedule::new(
                start + Duration::from_secs_f64(id as f64 / rate),
                rate * conns as f64 / args.connections as f64,
                end,
                max_requests,
            )
        });
        let plan = Plan {
            conns,
            conn_offset,
            addr: target.addr,
            requests: paths
                .iter()
                .map(|p| {
                    worker::request_bytes(
                        &args.method,
                        &target.host,
                        p,
                        &args.headers,
                        args.body_size,
                        !args.no_keepalive,
                    )
                })
                .collect(),
            head_method: args.method.eq_ignore_ascii_case("HEAD"),
            measure_from,
            end,
            schedule,
            max_requests,
            timeout: args.timeout,
            keepalive: !args.no_keepalive,
            stop: stop.clone(),
            progress: progress.clone(),
            intervals: tx.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{id}"))
                .spawn(move || worker::run(plan))?,
        );
        conn_offset += conns;
    }
    drop(tx);

    // Collect the per-second histograms; show progress on a terminal.
    let tty = std::io::stdout().is_terminal();
    let mut seconds: Vec<hdrhistogram::Histogram<u64>> = Vec::new();
    let mut last_done = 0u64;
    let mut last_print = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((second, h)) => {
                let second: usize = second;
                while seconds.len() <= second {
                    seconds.push(ringway::hgrm::latency_histogram());
                }
                let _ = seconds[second].add(&h);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if tty && last_print.elapsed() >= Duration::from_secs(1) {
            let done: u64 = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
            let phase = if Instant::now() < measure_from {
                "warm-up"
            } else {
                "measuring"
            };
            eprint!(
                "\r{phase:>9} {:>5.1}s  {:>10.0} req/s   ",
                start.elapsed().as_secs_f64().max(0.0),
                (done - last_done) as f64 / last_print.elapsed().as_secs_f64()
            );
            last_done = done;
            last_print = Instant::now();
        }
    }
    if tty {
        eprintln!();
    }
    let mut total = ThreadResult {
        hist: ringway::hgrm::latency_histogram(),
        lag: worker::lag_histogram(),
        counts: Counts::default(),
    };
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        total.hist.add(&r.hist)?;
        total.lag.add(&r.lag)?;
        total.counts.add(&r.counts);
    }
    let measured = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from);
    let secs = measured.as_secs_f64().max(1e-3);
    report::print(&args, threads, secs, &total);
    if let Some(path) = &args.hgrm {
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        ringway::hgrm::write_percentiles(&total.hist, &mut f)?;
    }
    if let Some(path) = &args.log {
        report::write_log(path, &seconds, args.warmup)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&args, threads, secs, &total))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if total.counts.completed() == 0 {
        bail!("no request completed");
    }
    Ok(())
}
