//! Headless Chromium for the tests of the pages stead serves, driven over the DevTools protocol
//! (JSON messages on a WebSocket, spoken with the tests' own `WsClient`).
//!
//! Chromium is a system package (Debian's `chromium`). Without it a browser test says so and
//! passes, so `cargo test` works on a machine without a browser; `.ci/run` installs Chromium and
//! sets `STEAD_REQUIRE_BROWSER=1`, under which a missing browser fails the test.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::ws::{Frame, WsClient};

/// How long Chromium may take to start and print its DevTools address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one DevTools command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Events kept for `wait_event`; older ones are dropped.
const EVENTS_KEPT_MAX: usize = 1024;
/// How long a page condition is awaited before the test fails.
pub const CONDITION_TIMEOUT_MS: u64 = 15_000;

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium process and its browser-level DevTools connection. Fields drop in
/// order: the connection, then the process, then its profile directory.
pub struct Browser {
    /// The DevTools WebSocket: commands out, their answers and events in.
    devtools: WsClient,
    /// The id of the next command, so an answer can be told from the others.
    next_id: u64,
    /// Events that arrived while a command was pending, oldest first, for `wait_event`; at
    /// most `EVENTS_KEPT_MAX`.
    events: std::collections::VecDeque<Value>,
    /// The Chromium process.
    _process: Process,
    /// Chromium's profile directory, fresh for this browser and removed with it.
    _profile: tempfile::TempDir,
}

/// One tab, attached with its own DevTools session.
pub struct Page {
    /// The tab, for closing it.
    target_id: String,
    /// The session that addresses commands to this tab.
    session_id: String,
}

/// Chromium's executable: `STEAD_CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STEAD_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
        .find(|candidate| candidate.is_file())
}

impl Browser {
    /// Starts headless Chromium; `None` (after saying so) when there is none and
    /// `STEAD_REQUIRE_BROWSER` is unset.
    pub fn launch_or_skip(test: &str) -> Option<Browser> {
        let Some(executable) = find_chromium() else {
            let required = std::env::var_os("STEAD_REQUIRE_BROWSER").is_some_and(|v| v != "0");
            assert!(
                !required,
                "{test}: STEAD_REQUIRE_BROWSER is set but no Chromium was found \
                 (apt-get install chromium, or set STEAD_CHROMIUM)"
            );
            eprintln!("{test}: SKIPPED, no Chromium found (apt-get install chromium)");
            return None;
        };
        Some(Browser::launch(executable))
    }

    fn launch(executable: PathBuf) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        // The network-related flags keep Chromium from calling out at start-up: this machine
        // refuses everything but loopback.
        let child = Command::new(&executable)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--window-size=900,700",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", executable.display()));
        let mut process = Process(child);
        let stderr = process.0.stderr.take().expect("stderr");
        let (sender, receiver) = std::sync::mpsc::channel();
        let last_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        // Chromium writes its DevTools address to stderr among its log lines; the rest is
        // drained so that the pipe never fills and blocks it, and the last few are kept to
        // explain a failed start.
        {
            let last_lines = last_lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = sender.send(url.trim().to_string());
                    }
                    if let Ok(mut last) = last_lines.lock() {
                        if last.len() == 20 {
                            last.remove(0);
                        }
                        last.push(line);
                    }
                }
            });
        }
        let url = receiver.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            let last = last_lines
                .lock()
                .map(|last| last.join("\n"))
                .unwrap_or_default();
            panic!("Chromium did not print its DevTools address; its last lines:\n{last}")
        });
        let rest = url.strip_prefix("ws://").expect("ws:// DevTools address");
        let (host, path) = rest.split_at(rest.find('/').expect("DevTools path"));
        let addr: SocketAddr = host.parse().expect("DevTools address");
        let (status, head, devtools) = WsClient::handshake(addr, path, host);
        assert_eq!(status, 101, "DevTools refused the WebSocket: {head}");
        devtools
            .stream
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .expect("timeout");
        Browser {
            devtools,
            next_id: 1,
            events: std::collections::VecDeque::new(),
            _process: process,
            _profile: profile,
        }
    }

    /// The next DevTools message (an answer or an event); `waiting_for` names it in a panic.
    fn next_message(&mut self, waiting_for: &str) -> Value {
        loop {
            match self.devtools.next_frame() {
                Some(Frame::Text(text)) => return serde_json::from_str(&text).expect("JSON"),
                Some(Frame::Ping(_)) | Some(Frame::Pong(_)) => continue,
                other => panic!("DevTools sent {other:?} while waiting for {waiting_for}"),
            }
        }
    }

    /// Sends one DevTools command (to a tab when `session` is given) and returns its result;
    /// events that arrive meanwhile are kept for `wait_event`. Panics on a protocol error.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.devtools.send_text(&command.to_string());
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while Instant::now() < deadline {
            let message = self.next_message(method);
            if message["id"] != json!(id) {
                if message.get("method").is_some() {
                    if self.events.len() == EVENTS_KEPT_MAX {
                        self.events.pop_front();
                    }
                    self.events.push_back(message);
                }
                continue;
            }
            if let Some(error) = message.get("error") {
                panic!("{method} failed: {error}");
            }
            return message["result"].clone();
        }
        panic!("{method} was not answered within {COMMAND_TIMEOUT:?}");
    }

    /// Waits for the event `method` of the tab with `session`.
    fn wait_event(&mut self, session: &str, method: &str) {
        let matches =
            |message: &Value| message["method"] == method && message["sessionId"] == session;
        if let Some(at) = self.events.iter().position(matches) {
            self.events.remove(at);
            return;
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while Instant::now() < deadline {
            if matches(&self.next_message(method)) {
                return;
            }
        }
        panic!("no {method} within {COMMAND_TIMEOUT:?}");
    }

    /// Opens `url` in a new tab and waits until it has loaded, so that what is evaluated
    /// next runs in the page and not in the blank document it replaces.
    pub fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let session_id = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        self.call(Some(&session_id), "Page.enable", json!({}));
        self.call(Some(&session_id), "Page.navigate", json!({"url": url}));
        self.wait_event(&session_id, "Page.loadEventFired");
        Page {
            target_id,
            session_id,
        }
    }

    /// Closes a tab, as a person closing it would: its page unloads and its sockets close.
    pub fn close(&mut self, page: Page) {
        self.call(
            None,
            "Target.closeTarget",
            json!({"targetId": page.target_id}),
        );
    }

    /// Evaluates `expression` in the page, awaiting it if it is a promise; its value as JSON.
    /// Panics if it throws or rejects.
    pub fn evaluate(&mut self, page: &Page, expression: &str) -> Value {
        let result = self.call(
            Some(&page.session_id),
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            let description = &exception["exception"]["description"];
            panic!(
                "the page threw: {}",
                description.as_str().unwrap_or("(no description)")
            );
        }
        result["result"]["value"].clone()
    }

    /// Waits, inside the page, until the JavaScript `condition` is truthy (it is re-checked
    /// on every change of the document, and errors count as false); its value. Panics with
    /// `what` after `CONDITION_TIMEOUT_MS`.
    pub fn wait_for(&mut self, page: &Page, condition: &str, what: &str) -> Value {
        let what = serde_json::to_string(what).expect("JSON string");
        let expression = format!(
            "new Promise((resolve, reject) => {{
               const check = () => {{ try {{ return ({condition}); }} catch {{ return false; }} }};
               const done = (value) => {{ observer.disconnect(); clearTimeout(timer); resolve(value); }};
               const observer = new MutationObserver(() => {{ const v = check(); if (v) done(v); }});
               const timer = setTimeout(() => {{ observer.disconnect();
                 reject(new Error('timed out waiting for ' + {what} + '; page text: ' +
                                  document.body.innerText)); }}, {CONDITION_TIMEOUT_MS});
               observer.observe(document, {{ subtree: true, childList: true, characterData: true,
                                             attributes: true }});
               const now = check(); if (now) done(now);
             }})"
        );
        self.evaluate(page, &expression)
    }

    /// Brings `page`'s tab to the front, as a person switching to it would: a background tab
    /// draws no frames.
    pub fn bring_to_front(&mut self, page: &Page) {
        self.call(Some(&page.session_id), "Page.bringToFront", json!({}));
    }

    /// Clicks the element `selector` with the mouse, at its centre.
    pub fn click(&mut self, page: &Page, selector: &str) {
        let selector_json = serde_json::to_string(selector).expect("JSON string");
        let centre = self.evaluate(
            page,
            &format!(
                "(() => {{ const r = document.querySelector({selector_json}).getBoundingClientRect();
                           return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ),
        );
        let (x, y) = (
            centre[0].as_f64().expect("x"),
            centre[1].as_f64().expect("y"),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                Some(&page.session_id),
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Types `text` into the focused element, as a keyboard would insert it.
    pub fn type_text(&mut self, page: &Page, text: &str) {
        self.call(
            Some(&page.session_id),
            "Input.insertText",
            json!({"text": text}),
        );
    }

    /// A PNG screenshot of the page, brought to the front first (a background tab draws no
    /// frames to capture).
    pub fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        use base64::Engine as _;
        self.bring_to_front(page);
        let shot = self.call(
            Some(&page.session_id),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot")
    }
}
