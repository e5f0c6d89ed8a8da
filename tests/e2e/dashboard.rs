//! The live dashboard in Debian's headless Chromium: an operator logs in,
//! opens an app's page, traffic arrives, and the charts move without a
//! reload; the page shows the app's versions, events with their times and
//! the tail of its log; the overview charts the gateway's CPU and memory.
//! Screenshots are kept in `target/test-artefacts/`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::browser::{Browser, LOAD_TIMEOUT};
use crate::deploy::{app_addr, deploy, start_admin};
use crate::support::{ScratchDir, guest, root};

/// How long a chart may take to show what happened: a sample is taken
/// every 5 s; the margin is for a loaded machine.
const MOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The value of attribute `data-NAME` of series `series`'s cell, as a
/// JavaScript number expression.
fn stat(series: &str, name: &str) -> String {
    format!("Number(document.querySelector('[data-stat={series}]').dataset.{name})")
}

/// Sends `line` on `conn` and reads the echoed line.
fn ask(conn: &mut TcpStream, line: &str) -> String {
    conn.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply).unwrap();
    reply.trim_end().to_owned()
}

/// Writes `png` as artefact `name` and checks that it is a real PNG (the
/// cluster's dashboard test keeps its screenshots the same way).
pub(crate) fn keep_screenshot(png: &[u8], name: &str) -> PathBuf {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{name}: not a real screenshot ({} bytes)",
        png.len()
    );
    let dir = root().join("target/test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    path
}

#[test]
fn the_live_dashboard_charts_traffic_in_chromium() {
    let dir = ScratchDir::new("dashboard-live");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    // `hostile` echoes each line, and logs the lines that start with `log`.
    deploy(
        admin,
        &state,
        "talker",
        &guest("hostile"),
        &["--listen", "127.0.0.1:0"],
    );
    let app = app_addr(admin, &state, "talker");
    let mut browser = Browser::start(
        &dir.0.join("profile"),
        &dir.0.join("chromium.log"),
        1280,
        2200,
    );

    browser.log_in(admin, &state);

    // The app's page, live: its first snapshot drawn.
    browser.goto(&format!("http://{admin}/apps/talker"));
    browser.wait_for(
        "the charts' first snapshot",
        "document.querySelector('section[data-live]').dataset.points !== undefined \
         && document.querySelectorAll('.uplot canvas').length >= 5",
        LOAD_TIMEOUT,
    );
    let before: Vec<f64> = ["accepted", "bytes_in", "bytes_out"]
        .iter()
        .map(|series| {
            browser
                .eval(&stat(series, "total"))
                .unwrap()
                .as_f64()
                .unwrap()
        })
        .collect();

    // Traffic: three connections, each a few lines; the last stays open.
    let mut sent = 0;
    let mut conns = Vec::new();
    for c in 0..3 {
        let mut conn = TcpStream::connect(app).unwrap();
        conn.set_read_timeout(Some(MOVE_TIMEOUT)).unwrap();
        for i in 0..4 {
            let line = format!("log dashboard line {c}.{i}");
            assert_eq!(ask(&mut conn, &line), line);
            sent += line.len() + 1;
        }
        conns.push(conn);
    }
    drop(conns.drain(..2));

    // The charts move without a reload: the live stream brings the samples.
    let moved = format!(
        "{accepted} >= {a} && {bytes_in} >= {i} && {bytes_out} >= {o} && {open} >= 1 \
         && [{accepted}, {bytes_in}, {bytes_out}]",
        accepted = stat("accepted", "total"),
        bytes_in = stat("bytes_in", "total"),
        bytes_out = stat("bytes_out", "total"),
        open = stat("connections", "last"),
        a = before[0] + 3.0,
        i = before[1] + sent as f64,
        o = before[2] + sent as f64,
    );
    let after = browser.wait_for("the charts to move with the traffic", &moved, MOVE_TIMEOUT);
    eprintln!("before {before:?}, after {after}: {sent} bytes sent");
    let points = browser
        .eval(&stat("bytes_in", "points"))
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(points >= 1.0, "no point drawn");

    // A fresh load shows what happened: events with their times, the log.
    browser.goto(&format!("http://{admin}/apps/talker"));
    let text = browser
        .wait_for(
            "the app page with its log",
            "document.querySelector('section[data-live]').dataset.points > 0 \
             && document.body.innerText.includes('dashboard line 2.3') \
             && document.body.innerText",
            MOVE_TIMEOUT,
        )
        .as_str()
        .unwrap()
        .to_owned();
    for expected in [
        "Versions",
        "1 (serving)",
        "deployed version 1",
        "instance started",
        "TLS is not configured",
        "stdout: dashboard line 0.0",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("20") && l.contains("T") && l.contains("instance started")),
        "events have no timestamps:\n{text}"
    );
    let shot = keep_screenshot(&browser.screenshot(), "dashboard-app.png");
    eprintln!("screenshot: {}", shot.display());

    // The overview charts the gateway itself.
    browser.goto(&format!("http://{admin}/"));
    browser.wait_for(
        "the gateway's memory chart",
        &format!("{} > 1", stat("rss_mib", "last")),
        MOVE_TIMEOUT,
    );
    let shot = keep_screenshot(&browser.screenshot(), "dashboard.png");
    eprintln!("screenshot: {}", shot.display());
    drop(conns);
}
