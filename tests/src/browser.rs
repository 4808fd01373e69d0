//! A real browser on the console: Debian's chromium driven by playwright-core through
//! tests/console/driver.mjs, run by node inside a lab namespace (where the daemon's API lives).
//! Commands go in as JSON lines and answers come back the same way; the node process (and with it
//! the browser) is ended when the [`Browser`] is dropped, even when a test fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

/// The system's chromium binary (the Debian wrapper script at /usr/bin/chromium execs it).
pub const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// tests/console/ in the source tree.
pub fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console")
}

/// Whether chromium and the node modules are installed; prints why not (then a test skips, as the
/// other tests do for missing tools) — `cargo xtask setup` installs both.
pub fn available() -> bool {
    let missing: Vec<String> = [
        (
            Path::new(CHROMIUM).is_file(),
            "chromium (apt-get install chromium)".to_owned(),
        ),
        (
            console_dir().join("node_modules/playwright-core").is_dir(),
            format!("{}/node_modules (npm ci)", console_dir().display()),
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "skipped: {} missing; run `cargo xtask setup`",
        missing.join(" and ")
    );
    false
}

/// Where screenshots go: target/console-screenshots/.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console-screenshots")
}

pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::Receiver<String>,
    next: u64,
}

impl Browser {
    /// Starts node and chromium in namespace `ns`, for the console at `base` (e.g. http://127.0.0.1:9740).
    pub fn start(ns: &str, base: &str) -> Browser {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "node"]);
        Self::spawn(cmd, base)
    }

    /// Starts node and chromium in the current namespace (a daemon on this host's loopback).
    pub fn start_here(base: &str) -> Browser {
        Self::spawn(Command::new("node"), base)
    }

    fn spawn(mut cmd: Command, base: &str) -> Browser {
        let mut child = cmd
            .arg(console_dir().join("driver.mjs"))
            .env("NG_URL", base)
            .env("NG_SHOTS", screenshot_dir())
            .env("CHROMIUM", CHROMIUM)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, so that drop ends chromium's processes with it.
            .process_group(0)
            .spawn()
            .expect("node starts (apt-get install nodejs)");
        let stdout: ChildStdout = child.stdout.take().expect("piped");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            stdin: child.stdin.take(),
            child,
            answers,
            next: 0,
        }
    }

    /// Runs one driver command (`{"cmd": ..., ...}`); its result, or the driver's error text.
    pub fn try_call(&mut self, mut cmd: Value) -> Result<Value, String> {
        self.next += 1;
        cmd["id"] = json!(self.next);
        let stdin = self.stdin.as_mut().expect("driver running");
        writeln!(stdin, "{cmd}").map_err(|e| format!("driver gone: {e}"))?;
        stdin.flush().map_err(|e| format!("driver gone: {e}"))?;
        loop {
            let line = self
                .answers
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("no answer from the browser driver to {cmd} within 60 s"))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                eprintln!("driver: {line}");
                continue;
            };
            if v["id"] != json!(self.next) {
                continue;
            }
            return if v["ok"] == json!(true) {
                Ok(v["result"].clone())
            } else {
                Err(v["error"].as_str().unwrap_or("?").to_owned())
            };
        }
    }

    /// [`Browser::try_call`], panicking on an error.
    pub fn call(&mut self, cmd: Value) -> Value {
        let what = cmd["cmd"].clone();
        self.try_call(cmd)
            .unwrap_or_else(|e| panic!("browser command {what}: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // EOF on stdin closes the browser; then the whole group is ended in case it hangs.
        drop(self.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) on the process group this struct created (pgid = the child's pid).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
