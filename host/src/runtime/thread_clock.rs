//! The clocks of the calling thread that the supervisor samples at epoch
//! ticks: its CPU time, and how long it has waited, runnable, for a core.
//!
//! The second one is what tells a guest that computes from one that only
//! holds its thread: a guest in the slow lane runs at a lower OS priority
//! ([`super::slow_lane::SLOW_LANE_NICE`]), so on a busy machine the kernel
//! keeps it waiting for a core most of the time. That wait is the
//! gateway's scheduling, like the wait for its next slice, and must not
//! spend its wall-clock budget: otherwise a spinning guest under load is
//! stopped by the wall clock (reported as `wall-clock`, and its app not
//! demoted, [`super::slow_lane::Demotion`]) long before it has used its
//! CPU budget.
//!
//! The wait is the kernel's run-queue delay (`/proc/thread-self/schedstat`,
//! second field), read through a file each thread opens once: one `pread`
//! per sample, well under a microsecond. Where it cannot be read (no
//! `/proc`), it reads 0, and the wall clock counts the wait as before.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::time::Instant;

use super::budget::ThreadSample;

/// The calling thread's clocks, now.
pub(crate) fn sample() -> ThreadSample {
    ThreadSample {
        cpu_ns: cpu_ns(),
        waiting_ns: waiting_ns(),
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), in
/// nanoseconds: a system call, so read only on epoch ticks and when a
/// yielded guest resumes. Falls back to the monotonic clock (counting
/// wall time, so budgets are met early rather than never) where the
/// thread clock is not available.
fn cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if read == 0 {
        let secs = u64::try_from(now.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
        return secs.saturating_mul(1_000_000_000).saturating_add(nanos);
    }
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

thread_local! {
    /// This thread's `schedstat`, opened at its first sample; `None` where
    /// it cannot be opened.
    static SCHEDSTAT: Option<File> = File::open("/proc/thread-self/schedstat").ok();
}

/// How long the calling thread has waited on the kernel's run queue
/// (runnable, not running) since it started, in nanoseconds; 0 where the
/// kernel does not say.
fn waiting_ns() -> u64 {
    SCHEDSTAT.with(|file| {
        let mut text = [0u8; 96];
        file.as_ref()
            .and_then(|file| file.read_at(&mut text, 0).ok())
            .and_then(|read| run_delay_ns(&text[..read]))
            .unwrap_or(0)
    })
}

/// The run-queue delay in a `schedstat` line: "<time on a cpu> <time
/// waiting on a run queue> <slices run>", in nanoseconds.
fn run_delay_ns(schedstat: &[u8]) -> Option<u64> {
    std::str::from_utf8(schedstat)
        .ok()?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_delay_is_the_second_field() {
        assert_eq!(run_delay_ns(b"4785033 55513 12\n"), Some(55513));
        assert_eq!(run_delay_ns(b"4785033\n"), None);
        assert_eq!(run_delay_ns(b""), None);
    }

    /// Three threads that compute on one core: each gets about a third of
    /// it, and waits for it the rest of the time. The sampled thread's
    /// CPU time and wait together make up the time that passed, and the
    /// wait is most of it (about twice its CPU time).
    #[test]
    fn a_thread_that_shares_its_core_waits_for_it() {
        let core = first_allowed_core();
        let spin = move |for_how_long: std::time::Duration| {
            pin_to(core);
            let started = Instant::now();
            let before = sample();
            while started.elapsed() < for_how_long {
                std::hint::spin_loop();
            }
            (sample(), before, started.elapsed())
        };
        let rivals: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || spin(std::time::Duration::from_millis(400))))
            .collect();
        let (after, before, elapsed) = spin(std::time::Duration::from_millis(300));
        for rival in rivals {
            rival.join().unwrap();
        }
        let cpu = after.cpu_ns - before.cpu_ns;
        let waiting = after.waiting_ns - before.waiting_ns;
        let elapsed = u64::try_from(elapsed.as_nanos()).unwrap();
        assert!(
            waiting > elapsed / 3 && waiting > cpu,
            "waited {waiting} ns of {elapsed} ns on a core shared three ways (cpu {cpu} ns)"
        );
        assert!(
            cpu + waiting <= elapsed + elapsed / 10,
            "cpu {cpu} ns and wait {waiting} ns exceed the {elapsed} ns that passed"
        );
    }

    fn first_allowed_core() -> usize {
        // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity
        // fills it for the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .find(|&cpu| libc::CPU_ISSET(cpu, &set))
                .expect("the thread may run on some core")
        }
    }

    fn pin_to(core: usize) {
        // SAFETY: as above; the set names one core the thread may use.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
        }
    }
}
