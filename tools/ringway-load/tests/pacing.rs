//! Timing of the open loop, end to end: in a test binary of its own so that
//! no other test of this package runs beside it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{field, field_in, origin, summary};

/// The pacer adds no lateness of its own: at 1,000 req/s on one connection
/// the open loop measures what the closed loop does, and each request goes
/// out within 20 µs of its time.
///
/// "What the closed loop does" needs one correction on a VM: a request that
/// follows a millisecond of quiet costs the origin and the kernel tens of
/// µs more than one sent back to back (caches gone cold, a halted vCPU
/// woken), whatever client sends it. A plain blocking client, paced by
/// sleeping and then spinning to each due time, measures that cost beside
/// every try, and the bound is the 50 µs plus it.
#[test]
fn open_loop_at_1000_per_second_measures_what_closed_loop_does() {
    // Timing on a shared 2-core CI machine: the origin and the load
    // generator run pinned to one core (threads and children inherit this
    // thread's affinity), so that neither waits on the other core waking
    // from idle, in open loop as in closed; and a comparison that other work
    // spoiled is made again, up to 3 times, keeping the best. The lag's
    // bound is for an idle core, so it is held only when the scheduler
    // never took the CPU from the load thread.
    if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.last().copied()) {
        core_affinity::set_for_current(core);
    }
    let addr = origin();
    let url = format!("http://{addr}/");
    let base = ["-c", "1", "-t", "1", "-d", "2s", "-w", "200ms"];
    let mut tries = Vec::new();
    for _ in 0..3 {
        let closed = summary(&[&[url.as_str()][..], &base].concat(), "closed");
        let open = summary(
            &[&[url.as_str()][..], &base, &["-R", "1000"]].concat(),
            "open",
        );
        let quiet_cost = plain_p50(addr, Some(Duration::from_millis(1))) - plain_p50(addr, None);
        assert!(closed.contains("\"schedule_lag_us\":null"), "{closed}");
        let closed_p50 = field_in(&closed, "latency_ms", "p50") * 1000.0;
        let open_p50 = field_in(&open, "latency_ms", "p50") * 1000.0;
        let lag_p99 = field_in(&open, "schedule_lag_us", "p99");
        let preempted = field(&open, "preempted");
        assert!(field(&open, "requests") >= 1990.0, "{open}");
        tries.push((closed_p50, open_p50, quiet_cost, lag_p99, preempted));
        eprintln!("try: {:?}", tries.last());
        if (open_p50 - closed_p50).abs() <= 50.0 + quiet_cost.max(0.0)
            && (lag_p99 < 20.0 || preempted > 0.0)
        {
            return;
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    panic!(
        "(closed p50 µs, open p50 µs, cost of 1 ms quiet to a plain client µs, schedule lag p99 µs, load thread preempted) of each try: {tries:?}; load average {load}"
    );
}

/// The p50 in µs of 1,000 requests from a blocking client on one
/// connection: back to back, or one each `period`, measured from its due
/// time (the thread sleeps to 200 µs before it, then spins).
// A plain test thread, not a shard: its sleep blocks nothing else.
#[allow(clippy::disallowed_methods)]
fn plain_p50(addr: SocketAddr, period: Option<Duration>) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    let mut took = Vec::with_capacity(1000);
    let start = Instant::now();
    for k in 0..1100u32 {
        let due = match period {
            Some(p) => {
                let due = start + p * k;
                if let Some(left) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(left.saturating_sub(Duration::from_micros(200)));
                }
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                due
            }
            None => Instant::now(),
        };
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut got = 0;
        while !buf[..got].ends_with(b"ok") {
            let n = s.read(&mut buf[got..]).unwrap();
            assert!(n > 0, "origin closed");
            got += n;
        }
        // The first 100 warm up, as the load generator's -w does.
        if k >= 100 {
            took.push(due.elapsed().as_secs_f64() * 1e6);
        }
    }
    took.sort_by(f64::total_cmp);
    took[took.len() / 2]
}
