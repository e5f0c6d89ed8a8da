//! What a child process prints, line by line, with a way to wait for a
//! line; and the one way the kit starts a process and parses the addresses
//! `sockgate` prints.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The lines printed so far, and whether the stream has ended.
#[derive(Default)]
struct Printed {
    lines: Vec<String>,
    ended: bool,
}

/// Lines a child process printed, with a way to wait for one.
#[derive(Clone, Default)]
pub struct Output {
    inner: Arc<(Mutex<Printed>, Condvar)>,
}

impl Output {
    /// Collects the lines of `pipe` (a child's stdout or stderr) on a
    /// thread of its own, so the child never blocks on a full pipe.
    pub fn collect_from(&self, pipe: impl std::io::Read + Send + 'static) {
        let this = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*this.inner;
                lock.lock().unwrap().lines.push(line);
                cvar.notify_all();
            }
            let (lock, cvar) = &*this.inner;
            lock.lock().unwrap().ended = true;
            cvar.notify_all();
        });
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.inner.0.lock().unwrap().lines.join("\n")
    }

    /// Waits until `pred` holds for the text printed so far, or the stream
    /// ends, or `timeout` passes; returns whether it holds.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut state = lock.lock().unwrap();
        loop {
            if pred(&state.lines.join("\n")) {
                return true;
            }
            let now = Instant::now();
            if state.ended || now >= deadline {
                return false;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits until `needle` has been printed `count` times.
    pub fn wait_for_count(&self, timeout: Duration, needle: &str, count: usize) -> bool {
        self.wait_for(timeout, |text| text.matches(needle).count() >= count)
    }
}

/// A started child process, killed when dropped, with its output collected.
pub struct Running {
    /// The process.
    pub child: Child,
    /// What it printed on stdout.
    pub stdout: Output,
    /// What it printed on stderr, when that was piped (otherwise empty).
    pub stderr: Output,
    /// When it was started.
    pub started: Instant,
}

impl Running {
    /// Starts `command` with stdin closed, stdout collected, and stderr
    /// going to `stderr` (`None`: collected too).
    pub fn spawn(mut command: Command, stderr: Option<Stdio>) -> std::io::Result<Self> {
        let collect_stderr = stderr.is_none();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.unwrap_or_else(Stdio::piped));
        let started = Instant::now();
        let mut child = command.spawn()?;
        let (stdout, stderr) = (Output::default(), Output::default());
        stdout.collect_from(child.stdout.take().expect("stdout is piped"));
        if collect_stderr {
            stderr.collect_from(child.stderr.take().expect("stderr is piped"));
        }
        Ok(Self {
            child,
            stdout,
            stderr,
            started,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TCP address of every app in `text`, by name, from the lines
/// `app NAME listening on tcp ADDR ...` that `sockgate` prints.
pub fn app_addrs(text: &str) -> HashMap<String, SocketAddr> {
    let mut addrs = HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["app", name, "listening", "on", "tcp", addr, ..] = words[..]
            && let Ok(addr) = addr.parse()
        {
            addrs.insert(name.to_owned(), addr);
        }
    }
    addrs
}

/// The address printed right after `marker` on the first line of `text`
/// holding it (e.g. `tls listening on ` for the TLS listener), with that
/// line.
pub fn printed_addr<'t>(text: &'t str, marker: &str) -> Option<(SocketAddr, &'t str)> {
    text.lines().find_map(|line| {
        let (_, rest) = line.split_once(marker)?;
        Some((rest.split_whitespace().next()?.parse().ok()?, line))
    })
}

/// The admin API's address, from the line `sockgate serve` prints for it
/// (`admin API and dashboard on http://ADDR/ …`).
pub fn printed_admin(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("admin API and dashboard on http://")?;
        rest.split('/').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINTED: &str = "app echo listening on tcp 127.0.0.1:4000 (12 KiB, compiled in 3 ms)\n\
        app chat listening on tcp 127.0.0.1:4001\n\
        tls listening on 127.0.0.1:4443\n\
        quic listening on 127.0.0.1:4443 (udp)\n\
        sockgate ready";

    #[test]
    fn every_app_address_is_found_by_name() {
        let addrs = app_addrs(PRINTED);
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs["echo"], "127.0.0.1:4000".parse().unwrap());
        assert_eq!(addrs["chat"], "127.0.0.1:4001".parse().unwrap());
    }

    #[test]
    fn the_address_after_a_marker_is_found_with_its_line() {
        let (addr, line) = printed_addr(PRINTED, "quic listening on ").unwrap();
        assert_eq!(addr, "127.0.0.1:4443".parse().unwrap());
        assert!(line.ends_with("(udp)"));
        let (addr, _) = printed_addr(PRINTED, " listening on tcp ").unwrap();
        assert_eq!(addr, "127.0.0.1:4000".parse().unwrap());
        assert!(printed_addr(PRINTED, "http listening on ").is_none());
    }

    #[test]
    fn waiting_ends_when_the_stream_ends() {
        let output = Output::default();
        output.collect_from(&b"one\ntwo\n"[..]);
        assert!(output.wait_for(Duration::from_secs(10), |t| t.contains("two")));
        assert!(!output.wait_for(Duration::from_secs(10), |t| t.contains("three")));
        assert_eq!(output.text(), "one\ntwo");
    }
}
