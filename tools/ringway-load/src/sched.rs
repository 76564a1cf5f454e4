//! A scheduler hint for the load threads: short time slices.
//!
//! Since Linux 6.12 a thread of the normal policy may ask for a shorter
//! time slice (`sched_runtime`, 0.1 to 100 ms), and one that did preempts a
//! thread running a longer slice when it wakes. A load thread sleeps until
//! its next request is due and must then run at once; on a machine it
//! shares with the proxy and the origin, the short slice is what keeps it on
//! time. Older kernels ignore the field. The policy and nice value stay as
//! they were.

use std::time::Duration;

/// The shortest slice Linux grants.
const SLICE: Duration = Duration::from_micros(100);

/// Asks for `SLICE` for the calling thread; an error leaves it as it was.
pub fn ask_for_short_slices() -> std::io::Result<()> {
    // For a thread, "process" here is the thread (Linux).
    let nice = rustix::process::getpriority_process(None)?;
    let attr = libc::sched_attr {
        size: size_of::<libc::sched_attr>() as u32,
        sched_policy: 0,
        sched_flags: libc::SCHED_FLAG_KEEP_POLICY as u64,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: SLICE.as_nanos() as u64,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: sched_setattr(2) on the calling thread (pid 0) reads `size`
    // bytes of `attr`, a live and initialised sched_attr of that size.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How often the scheduler has taken the CPU from the calling thread
/// (involuntary context switches); 0 where /proc does not say.
pub fn preemptions() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
