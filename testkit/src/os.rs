//! What a process costs, read from Linux's /proc (CPU time, resident
//! memory, the wasm memories' share of it), and the process settings the
//! benchmarks need (CPU pinning, the open-file limit).

use std::process::{Command, Stdio};
use std::time::Duration;

/// User plus system CPU time of process `pid` so far (zero once it is gone).
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces).
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    Duration::from_millis((field(11) + field(12)) * 10)
}

/// CPU time the hypervisor took from this machine's virtual CPUs so far
/// (`steal` of `/proc/stat`, all CPUs), or `None` where it is not known.
/// On a VM a stall of the whole machine looks like a slow server; a
/// benchmark records this beside its worst cases to tell the two apart.
pub fn host_steal() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(steal * 10))
}

/// CPU time the threads of process `pid` whose name is not `except` have
/// run so far (the first field of each `/proc/<pid>/task/<tid>/schedstat`,
/// the scheduler's own count in nanoseconds, which
/// `CLOCK_THREAD_CPUTIME_ID` also reads); far finer than
/// `/proc/<pid>/stat`'s 10 ms ticks.
pub fn threads_cpu(pid: u32, except: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() != except)
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Resident memory of process `pid` in KiB (zero once it is gone).
pub fn process_rss_kib(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of process `pid`'s wasm linear memories, in KiB.
/// wasmtime reserves GiBs of address space per memory, inaccessible but
/// for the part in use: a memory is the run of accessible mappings (its
/// initial image may be mapped from the compiled file) directly below an
/// inaccessible reservation of at least 1 GiB. RSS minus this is the
/// host's own memory.
pub fn guest_memory_rss_kib(pid: u32) -> u64 {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    // (start, end, accessible, rss KiB) of every mapping, in address order.
    let mut maps: Vec<(u64, u64, bool, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let accessible = !words.next().unwrap_or_default().starts_with("---");
            maps.push((start, end, accessible, 0));
        } else if first == "Rss:"
            && let (Some(kib), Some(last)) = (words.next(), maps.last_mut())
        {
            last.3 = kib.parse().unwrap_or(0);
        }
    }
    let mut total = 0;
    for (i, reserved) in maps.iter().enumerate() {
        if reserved.2 || reserved.1 - reserved.0 < 1 << 30 {
            continue;
        }
        let mut start = reserved.0;
        for used in maps[..i].iter().rev() {
            if !used.2 || used.1 != start {
                break;
            }
            total += used.3;
            start = used.0;
        }
    }
    total
}

/// Whether the command `name` can be run (`name arg` starts; its exit
/// status is not looked at): a benchmark skips the rows of a missing
/// baseline or load generator.
pub fn has_command(name: &str, arg: &str) -> bool {
    Command::new(name)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether servers and load generators can be pinned to separate CPUs.
pub fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Pins the process `command` starts, and every thread it will start, to
/// CPU `cpu` from its first instruction: a runtime that sizes its thread
/// pool by the CPUs it may use (tokio's, Go's) sees one, as it would on a
/// one-CPU machine. Pinned after the start instead ([`pin`]), such a
/// server keeps a worker per CPU of the machine, all fighting over one
/// CPU, each hand-off between them a context switch — and whether it
/// does depends on how far it got before the pinning.
pub fn pin_at_exec(command: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and makes
    // one system call (sched_setaffinity, async-signal-safe) on a set
    // built on its own stack.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Pins every thread of process `pid` to `cpus` (a taskset CPU list).
pub fn pin(pid: u32, cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status();
}

/// Raises this process's open-file limit to at least `wanted` (up to the
/// hard limit, raising that too when running as root); children inherit
/// it. Returns the soft limit now in force.
pub fn raise_nofile(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= wanted {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return wanted;
        }
        let capped = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &capped) == 0 {
            return limit.rlim_max;
        }
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_resident_memory() {
        let pid = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(process_cpu(pid) > Duration::ZERO);
        assert!(threads_cpu(pid, "") > Duration::ZERO);
        assert!(process_rss_kib(pid) > 0);
        assert_eq!(process_rss_kib(u32::MAX), 0, "no such process");
    }

    #[test]
    fn the_hosts_steal_time_is_read() {
        assert!(host_steal().is_some(), "no steal field in /proc/stat");
    }
}
