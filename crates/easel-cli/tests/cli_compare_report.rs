//! `report.html` in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs when missing) opens the report of an `easel compare` run from disk, driven over the
//! DevTools protocol on a pipe (`--remote-debugging-pipe`: commands on fd 3, replies on fd 4,
//! NUL-separated JSON). It checks that no network request is attempted, that every image
//! decodes, that the before/after slider moves by keyboard, and that the ratings download is
//! valid JSON; a screenshot is kept under the test target folder.
// This file pipes to Chromium (pipe(2), dup2 between fork and exec): each block has its SAFETY comment.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

mod common;

use common::{assert_success, easel_command, example, s};

/// The flags the report must work under: no GPU, no background traffic, a fresh profile.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--remote-debugging-pipe",
];

/// A pipe as (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    // SAFETY: pipe(2) succeeded, so both descriptors are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A DevTools session with one page.
struct Browser {
    child: Child,
    commands: std::fs::File,
    replies: Receiver<Value>,
    events: Vec<Value>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    fn launch(profile: &Path) -> Browser {
        use std::os::fd::AsRawFd;
        let (cmd_read, cmd_write) = pipe();
        let (reply_read, reply_write) = pipe();
        let (child_in, child_out) = (cmd_read.as_raw_fd(), reply_write.as_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe dup2 calls between fork and exec, on descriptors that
        // stay open in the parent until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(child_in, 3) < 0 || libc::dup2(child_out, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium starts");
        drop((cmd_read, reply_write));
        let (send, replies) = channel();
        let reader = std::fs::File::from(reply_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                    if send.send(value).is_err() {
                        break;
                    }
                }
                message.clear();
            }
        });
        Browser {
            child,
            commands: std::fs::File::from(cmd_write),
            replies,
            events: Vec::new(),
            next_id: 0,
            session: None,
        }
    }

    /// Sends `method` (to the page once attached) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let (Some(session), false) = (&self.session, method.starts_with("Browser.")) {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no reply to {method}"));
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
            self.events.push(reply);
        }
    }

    /// Waits for the event `method`.
    fn wait_for(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == method) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {method}"));
            let done = event["method"] == method;
            self.events.push(event);
            if done {
                return;
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    fn key(&mut self, key: &str, code: u32) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": key, "code": key,
                       "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}),
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_installed() -> bool {
    Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_report_works_offline_in_a_browser() {
    if !chromium_installed() {
        // CI installs it (.ci/run), so there the test always runs.
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing on CI"
        );
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let style = example("vangogh_starry_night.jpg");
    let run = easel_command(&[
        "compare",
        &example("chelsea_cat.png"),
        "--style",
        &style,
        "--use",
        "arbitrary",
        "--use",
        "preset:7",
        "--max-size",
        "128",
        "--device",
        "cpu",
        "-o",
        s(&out),
    ])
    .env("EASEL_HOME", tmp.path().join("home"))
    .output()
    .unwrap();
    assert_success(&run);
    let report = out.join("report.html").canonicalize().unwrap();
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();

    let mut browser = Browser::launch(&tmp.path().join("profile"));
    let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
    let attached = browser.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    browser.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    browser.call(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": s(&downloads)}),
    );
    browser.call("Network.enable", json!({}));
    browser.call("Page.enable", json!({}));
    browser.call(
        "Page.navigate",
        json!({"url": format!("file://{}", report.display())}),
    );
    browser.wait_for("Page.loadEventFired");

    // Every image decodes: photo, style, two cells, and the two sides of the pane.
    let images = browser.eval(
        "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('data:image/png'))",
    );
    assert_eq!(
        images,
        json!([true, true, true, true, true, true]),
        "{images}"
    );

    // The slider moves by keyboard, and side B's clip follows it.
    assert_eq!(
        browser.eval("const s = document.getElementById('slider'); s.focus(); document.activeElement.id + ' ' + s.value"),
        json!("slider 50")
    );
    browser.key("ArrowRight", 39);
    browser.key("ArrowRight", 39);
    assert_eq!(
        browser.eval("document.getElementById('slider').value"),
        json!("52")
    );
    assert_eq!(
        browser.eval("document.getElementById('side-b').style.clipPath"),
        json!("inset(0px 0px 0px 52%)")
    );
    // The B button of the preset cell puts it on side B.
    browser.eval("document.querySelectorAll('button[data-side=\"b\"]')[3].click()");
    assert_eq!(
        browser.eval("document.getElementById('label-b').textContent"),
        json!("preset 7 · chelsea_cat")
    );

    // Rate, pick the best, download: valid JSON with what was chosen.
    browser.eval(
        "const r = document.querySelector('select[data-method=\"0\"]'); r.value = '4'; \
         document.querySelector('input[name=\"best-0\"][value=\"1\"]').checked = true; \
         document.getElementById('download').click()",
    );
    let file = downloads.join("ratings.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ratings: Value = serde_json::from_slice(&std::fs::read(&file).unwrap())
        .expect("the ratings download is JSON");
    assert_eq!(ratings["format"], "easel-ratings");
    assert_eq!(ratings["methods"], json!(["arbitrary", "preset:7"]));
    assert_eq!(ratings["photos"][0]["photo"], "chelsea_cat");
    assert_eq!(ratings["photos"][0]["ratings"], json!({"arbitrary": 4}));
    assert_eq!(ratings["photos"][0]["best"], "preset:7");

    // A screenshot, kept as an artefact.
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let artefact = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compare_report.png");
    std::fs::write(&artefact, &png).unwrap();
    assert!(image::load_from_memory(&png).unwrap().width() > 0);
    eprintln!("screenshot: {}", artefact.display());

    // No request left the file: only the page itself (file:) and inline data.
    let requests: Vec<String> = browser
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .map(|e| {
            e["params"]["request"]["url"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(!requests.is_empty());
    for url in &requests {
        assert!(
            url.starts_with("file://") || url.starts_with("data:") || url.starts_with("blob:"),
            "network request attempted: {url}"
        );
    }
}
