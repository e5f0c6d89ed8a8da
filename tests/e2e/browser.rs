//! Debian's headless Chromium driven over the DevTools protocol, for pages
//! that stay live. `--dump-dom` and `--screenshot` wait for the page to go
//! idle (virtual time), which a page with an open event stream never does;
//! here the page keeps running while the test reads its DOM again and
//! again, as a person watching it would.
//!
//! The protocol runs over a pipe (`--remote-debugging-pipe`: JSON
//! messages, each ended by a NUL byte, read from descriptor 3 and written
//! to descriptor 4), so no port and no WebSocket client are needed.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a page may take to load.
pub(crate) const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium binary (Debian's `chromium`).
pub(crate) fn chromium() -> &'static str {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Debian's chromium is needed for this test: apt-get install chromium")
}

/// A headless Chromium with one page, closed when dropped.
pub(crate) struct Browser {
    child: Child,
    to_browser: File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    /// The page's protocol session.
    session: String,
}

impl Browser {
    /// Starts Chromium with its profile in `profile` and a blank page of
    /// `width` × `height` CSS pixels; its messages go to `log`.
    pub(crate) fn start(profile: &Path, log: &Path, width: u32, height: u32) -> Browser {
        let (browser_reads, to_browser) = pipe();
        let (from_browser, browser_writes) = pipe();
        let (reads, writes) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap());
        // SAFETY: only fcntl and dup2 run between fork and exec, both
        // async-signal-safe. The pipe ends are first moved above 4 so that
        // neither dup2 overwrites the other's source.
        unsafe {
            command.pre_exec(move || {
                let reads = libc::fcntl(reads, libc::F_DUPFD_CLOEXEC, 10);
                let writes = libc::fcntl(writes, libc::F_DUPFD_CLOEXEC, 10);
                if reads < 0 || writes < 0 || libc::dup2(reads, 3) < 0 || libc::dup2(writes, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("cannot start chromium");
        // The browser's ends are its own now: closing ours lets a dead
        // browser be noticed as the end of the pipe.
        drop((browser_reads, browser_writes));
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(File::from(from_browser));
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
            }
        });
        let mut browser = Browser {
            child,
            to_browser: File::from(to_browser),
            from_browser: receiver,
            next_id: 0,
            session: String::new(),
        };
        let target = browser
            .send(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .expect("Target.createTarget");
        let attached = browser
            .send(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .expect("Target.attachToTarget");
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            )
            .expect("Emulation.setDeviceMetricsOverride");
        browser
    }

    /// Sends a protocol command (to the page's session, or to the browser)
    /// and waits for its answer; `Err` holds the protocol's error.
    fn send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("chromium closed its DevTools pipe");
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|err| panic!("no answer to {method} from chromium: {err}"));
            if answer["id"] != id {
                continue; // an event, or another session's message
            }
            return match answer.get("error") {
                Some(error) => Err(error.to_string()),
                None => Ok(answer["result"].clone()),
            };
        }
    }

    /// A command to the page.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    /// Opens `url` in the page.
    pub(crate) fn goto(&mut self, url: &str) {
        let navigated = self.call("Page.navigate", json!({ "url": url })).unwrap();
        assert!(
            navigated.get("errorText").is_none(),
            "cannot open {url}: {navigated}"
        );
    }

    /// Evaluates `expression` in the page; its value (JSON), or the
    /// exception's text.
    pub(crate) fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(exception.to_string());
        }
        Ok(result["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Waits until `expression` is truthy in the page (re-evaluated each
    /// time the page's DOM changes), for at most `timeout`; returns its
    /// value. `what` names the condition for the failure message.
    pub(crate) fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        // The page may be between two documents (a navigation, a
        // redirect): its context is then gone, and the wait starts again
        // in the next one.
        let mut last_error = String::new();
        while Instant::now() < deadline {
            let ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis();
            let watch = format!(
                "new Promise(resolve => {{\
                   const check = () => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }};\
                   const now = check();\
                   if (now) {{ resolve(now); return; }}\
                   const observer = new MutationObserver(() => {{\
                     const value = check();\
                     if (value) {{ observer.disconnect(); resolve(value); }}\
                   }});\
                   observer.observe(document, {{ subtree: true, childList: true, attributes: true, characterData: true }});\
                   setTimeout(() => {{ observer.disconnect(); resolve(check() || null); }}, {ms});\
                 }})"
            );
            match self.eval(&watch) {
                Ok(Value::Null) => break,
                Ok(value) => return value,
                Err(err) => last_error = err,
            }
            std::thread::yield_now();
        }
        let page = self
            .eval("document.documentElement ? document.documentElement.outerHTML : ''")
            .unwrap_or_default();
        panic!(
            "timed out waiting for {what} ({expression}); last error: {last_error}\npage: {page}"
        );
    }

    /// Logs into the dashboard at `admin` as an operator does: the token
    /// of state directory `state` typed into the login form.
    pub(crate) fn log_in(&mut self, admin: std::net::SocketAddr, state: &Path) {
        self.goto(&format!("http://{admin}/login"));
        self.wait_for(
            "the login form",
            "document.querySelector('input[name=token]')",
            LOAD_TIMEOUT,
        );
        let token = std::fs::read_to_string(state.join("admin-token")).unwrap();
        self.eval(&format!(
            "document.querySelector('input[name=token]').value = '{}'; \
             document.forms[0].submit(); true",
            token.trim()
        ))
        .unwrap();
        self.wait_for(
            "the overview, logged in",
            "document.querySelector('form[action=\"/logout\"]')",
            LOAD_TIMEOUT,
        );
    }

    /// A PNG of the page as it is displayed.
    pub(crate) fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .expect("Page.captureScreenshot");
        base64_decode(shot["data"].as_str().expect("no screenshot data"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.send(None, "Browser.close", json!({}));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pipe whose ends are closed on exec (the browser's are moved to 3 and
/// 4, which are not).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are open descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Decodes standard base64 (the protocol's binary data).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut bits = 0u32;
        for (i, digit) in chunk.iter().enumerate() {
            bits |= u32::from(*digit) << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8hIQ=="), b"hello!!");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
