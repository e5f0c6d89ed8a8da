//! The dashboard's time series: the last hour of every app's traffic and
//! of the gateway's own CPU and memory, for the charts.
//!
//! One sampler task for the whole gateway ([`Timeline::run`], spawned once
//! by the admin listener) wakes every [`STEP`] — one timer, however many
//! apps — reads the counters the metrics read too (connections, bytes,
//! HTTP requests, traps, limit hits: nothing on the connection path
//! changes) and appends one point per app to a ring of [`POINTS`]. A point
//! is [`APP_SERIES`]`.len()` `f32`s (counts are exact up to 2^24 per step,
//! then within 1e-7: enough for a chart), so an app's ring is
//! `720 × 7 × 4` = 20,160 bytes, allocated when the app is first sampled
//! and freed when it is removed; a thousand apps cost about 20 MB, less
//! than one instance's memory each.
//!
//! Deltas are taken between samples of the same running version; a new
//! version (its counters start at zero) starts from zero, not from the
//! old version's totals.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::apps::app::App;
use crate::base::locks::lock;
use crate::gateway::Gateway;

/// Time between two samples.
pub(crate) const STEP: Duration = Duration::from_secs(5);
/// Points kept per series: one hour at [`STEP`].
pub(crate) const POINTS: usize = 720;

/// What an app's point holds, in order: connections open at the sample,
/// then per step: connections accepted, bytes in, bytes out, HTTP
/// requests, traps, limit hits (refusals by a limit and closes by a time
/// limit).
pub(crate) const APP_SERIES: [&str; 7] = [
    "connections",
    "accepted",
    "bytes_in",
    "bytes_out",
    "requests",
    "traps",
    "limit_hits",
];
/// What the gateway's point holds: CPU used during the step (percent of
/// one core) and resident memory (MiB).
pub(crate) const GATEWAY_SERIES: [&str; 2] = ["cpu_percent", "rss_mib"];

/// The last [`POINTS`] points; the oldest is overwritten.
struct Ring<T> {
    points: Vec<T>,
    /// Where the next point goes once the ring is full.
    next: usize,
}

impl<T: Copy> Ring<T> {
    fn new() -> Self {
        Self {
            points: Vec::with_capacity(POINTS),
            next: 0,
        }
    }

    fn push(&mut self, point: T) {
        if self.points.len() < POINTS {
            self.points.push(point);
        } else {
            self.points[self.next] = point;
            self.next = (self.next + 1) % POINTS;
        }
    }

    /// The points, oldest first.
    fn ordered(&self) -> impl Iterator<Item = &T> {
        let (newer, older) = self.points.split_at(self.next);
        older.iter().chain(newer)
    }

    fn last(&self) -> Option<&T> {
        if self.points.len() < POINTS || self.next == 0 {
            self.points.last()
        } else {
            self.points.get(self.next - 1)
        }
    }
}

/// One app's series and what the next delta is taken from.
struct AppSeries {
    ring: Ring<[f32; 7]>,
    /// The running version sampled last (its address: a new version is a
    /// new `App`).
    version: usize,
    /// Its cumulative counters at the last sample (accepted, bytes in,
    /// bytes out, requests, traps, limit hits).
    totals: [u64; 6],
}

/// The gateway's CPU clock and wall clock at the last sample.
struct CpuSample {
    cpu: Duration,
    at: Instant,
}

#[derive(Default)]
struct Series {
    /// The sample's Unix time (seconds), one per step for the last hour;
    /// an app's points are the newest of these (every app present at a
    /// sample gets a point at it).
    times: Option<Ring<f64>>,
    gateway: Option<Ring<[f32; 2]>>,
    apps: HashMap<String, AppSeries>,
    cpu: Option<CpuSample>,
}

/// Series for the charts, as JSON: `times` (Unix seconds) and one array
/// per series name, all of the same length.
pub(crate) type Chart = serde_json::Map<String, serde_json::Value>;

/// The time series of the gateway and its apps.
pub(crate) struct Timeline {
    series: Mutex<Series>,
    /// Counts samples; the dashboard's live streams wait on it.
    ticks: tokio::sync::watch::Sender<u64>,
}

impl Timeline {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            series: Mutex::new(Series::default()),
            ticks: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Samples every [`STEP`], forever (the gateway's one sampler).
    pub(crate) async fn run(self: Arc<Self>, gateway: Gateway) {
        let mut interval = tokio::time::interval(STEP);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.sample(&gateway);
            self.ticks.send_modify(|tick| *tick += 1);
        }
    }

    /// A receiver that sees each new sample.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ticks.subscribe()
    }

    /// Takes one sample of the gateway and every running app.
    pub(crate) fn sample(&self, gateway: &Gateway) {
        let router = gateway.router();
        let names = router.names();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let cpu = process_cpu();
        let rss = resident_bytes().unwrap_or(0) as f32 / (1024.0 * 1024.0);
        let mut series = lock(&self.series);
        let at = Instant::now();
        let cpu_percent = match (&series.cpu, cpu) {
            (Some(last), Some(cpu)) => {
                let wall = at.duration_since(last.at).as_secs_f32().max(1e-3);
                cpu.saturating_sub(last.cpu).as_secs_f32() / wall * 100.0
            }
            _ => 0.0,
        };
        series.cpu = cpu.map(|cpu| CpuSample { cpu, at });
        series.times.get_or_insert_with(Ring::new).push(now);
        series
            .gateway
            .get_or_insert_with(Ring::new)
            .push([cpu_percent, rss]);
        series
            .apps
            .retain(|name, _| names.binary_search(name).is_ok());
        for name in names {
            let Some(app) = router.get(&name) else {
                continue;
            };
            let (version, totals) = totals_of(&app);
            let entry = series.apps.entry(name).or_insert_with(|| AppSeries {
                ring: Ring::new(),
                version,
                totals: [0; 6],
            });
            if entry.version != version {
                entry.version = version;
                entry.totals = [0; 6];
            }
            let mut point = [0f32; 7];
            point[0] = app.account().active() as f32;
            for (i, (total, before)) in totals.iter().zip(entry.totals).enumerate() {
                point[i + 1] = total.saturating_sub(before) as f32;
            }
            entry.totals = totals;
            entry.ring.push(point);
        }
    }

    /// The gateway's series (`cpu_percent`, `rss_mib`).
    pub(crate) fn gateway_chart(&self) -> Chart {
        let series = lock(&self.series);
        let points: Vec<[f32; 2]> = series
            .gateway
            .as_ref()
            .map(|ring| ring.ordered().copied().collect())
            .unwrap_or_default();
        chart(&series, &GATEWAY_SERIES, &points)
    }

    /// App `name`'s series ([`APP_SERIES`]; empty before its first
    /// sample).
    pub(crate) fn app_chart(&self, name: &str) -> Chart {
        let series = lock(&self.series);
        let points: Vec<[f32; 7]> = series
            .apps
            .get(name)
            .map(|app| app.ring.ordered().copied().collect())
            .unwrap_or_default();
        chart(&series, &APP_SERIES, &points)
    }

    /// The newest point of the gateway (`None` before the first sample),
    /// as a one-point chart.
    pub(crate) fn gateway_latest(&self) -> Option<Chart> {
        let series = lock(&self.series);
        let point = *series.gateway.as_ref()?.last()?;
        Some(chart(&series, &GATEWAY_SERIES, &[point]))
    }

    /// The newest point of app `name`, as a one-point chart.
    pub(crate) fn app_latest(&self, name: &str) -> Option<Chart> {
        let series = lock(&self.series);
        let point = *series.apps.get(name)?.ring.last()?;
        Some(chart(&series, &APP_SERIES, &[point]))
    }
}

/// `points` (the newest of the timeline) as JSON columns, with their times.
fn chart<const N: usize>(series: &Series, names: &[&str; N], points: &[[f32; N]]) -> Chart {
    let times: Vec<f64> = series
        .times
        .as_ref()
        .map(|ring| ring.ordered().copied().collect())
        .unwrap_or_default();
    let times = &times[times.len().saturating_sub(points.len())..];
    let mut out = Chart::new();
    out.insert("times".into(), serde_json::json!(times));
    for (i, name) in names.iter().enumerate() {
        let column: Vec<f32> = points.iter().map(|p| p[i]).collect();
        out.insert((*name).into(), serde_json::json!(column));
    }
    out
}

/// The running version of `app` (its address) and its cumulative
/// counters, in the order of [`APP_SERIES`] after `connections`.
fn totals_of(app: &Arc<App>) -> (usize, [u64; 6]) {
    let c = &app.account().counters;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let requests = app.http().map_or(0, |http| http.stats().total());
    let traps = c.traps.iter().map(load).sum();
    let limit_hits = c.refused() + load(&c.closed_idle) + load(&c.closed_lifetime);
    (
        Arc::as_ptr(app) as usize,
        [
            load(&c.accepted),
            load(&c.bytes_in),
            load(&c.bytes_out),
            requests,
            traps,
            limit_hits,
        ],
    )
}

/// CPU time the gateway used so far (user and system, every thread).
fn process_cpu() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: it returned 0, so it wrote the whole struct.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

/// The gateway's resident memory (`VmRSS` of `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_last_points_in_order() {
        let mut ring = Ring::<f32>::new();
        assert!(ring.last().is_none());
        for i in 0..POINTS + 3 {
            ring.push(i as f32);
        }
        let points: Vec<f32> = ring.ordered().copied().collect();
        assert_eq!(points.len(), POINTS);
        assert_eq!(points[0], 3.0);
        assert_eq!(points[POINTS - 1], (POINTS + 2) as f32);
        assert_eq!(ring.last(), Some(&((POINTS + 2) as f32)));
        assert!(ring.points.capacity() == POINTS, "the ring grew");
    }

    #[test]
    fn the_process_reports_cpu_and_memory() {
        assert!(resident_bytes().unwrap() > 1024 * 1024);
        assert!(process_cpu().is_some());
    }
}
