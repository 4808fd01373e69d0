//! Bounded processes inside the lab's namespaces.
//!
//! Every tool runs as `ip netns exec NS timeout -k 2 SECS TOOL ...` in a process group of its own: the
//! `timeout` bound holds even if xtask itself is SIGKILLed, the group lets us stop a tool together with
//! whatever it forked (hydra's workers, sshd's sessions), and the terminal's Ctrl-C reaches only xtask,
//! which then stops everything in order. Dropping a [`Proc`] kills its group and reaps it.

use std::fs::File;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{netns, util};

/// Set by the Ctrl-C/SIGTERM handler; every wait in the lab polls it so that a stop request is
/// honoured within about 100 ms.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleeps, but returns an error as soon as the user asks to stop, so that the guards unwind at once.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            bail!("interrupted (Ctrl-C or SIGTERM); cleaning up");
        }
        thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

/// Exit status of `timeout` when it had to stop the command (124) or SIGKILL it after `-k` (137).
pub const TIMED_OUT: [i32; 2] = [124, 137];

/// A running, time-bounded command in a namespace; its output goes to a log file.
pub struct Proc {
    child: Option<Child>,
    pub what: String,
}

impl Proc {
    /// Starts `argv` in namespace `ns` under `timeout LIMIT`, stdout and stderr appended to `log`.
    pub fn spawn(ns: &str, argv: &[String], limit: Duration, log: &Path) -> Result<Proc> {
        let secs = limit.as_secs().max(1).to_string();
        let mut args: Vec<&str> = vec!["timeout", "-k", "2", &secs];
        args.extend(argv.iter().map(String::as_str));
        Self::spawn_raw(ns, &args, log)
    }

    /// Starts a long-running service (sshd, http server) with no time bound of its own: it is stopped
    /// by its guard, and in the last resort by the removal of its namespace.
    pub fn service(ns: &str, argv: &[String], log: &Path) -> Result<Proc> {
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        Self::spawn_raw(ns, &args, log)
    }

    fn spawn_raw(ns: &str, args: &[&str], log: &Path) -> Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("could not open log {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = netns::command(ns, args);
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        // Tools drop files in their working directory (hydra.restore): keep them with the logs, out
        // of the source tree.
        if let Some(dir) = log.parent() {
            cmd.current_dir(dir);
        }
        let what = format!("[{ns}] {}", args.join(" "));
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {what}"))?;
        Ok(Proc {
            child: Some(child),
            what,
        })
    }

    /// Non-blocking: the exit status once the process has ended.
    pub fn poll(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already reaped", self.what);
        };
        let st = child.try_wait().context("could not poll a lab process")?;
        if st.is_some() {
            self.child = None;
        }
        Ok(st)
    }

    /// Sends `sig` to the whole process group (the tool and anything it forked).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the group our own unreaped child leads; its pid stays reserved until
            // we wait() for it, so the group id cannot have been reused.
            unsafe { libc::kill(-(c.id() as i32), sig) };
        }
    }

    /// SIGTERM to the group, `grace` to exit, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) {
        self.stop_with(libc::SIGTERM, grace);
    }

    /// Like `stop`, with the first signal chosen (the daemon detaches cleanly on SIGINT).
    pub fn stop_with(&mut self, sig: i32, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            // The leader is gone but helpers it forked may live on in its group.
            // SAFETY: as in `signal`; at worst ESRCH.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            return;
        }
        // SAFETY: as in `signal`.
        unsafe { libc::kill(-(child.id() as i32), sig) };
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                // SAFETY: as above; sweeps up forked helpers that ignored the signal.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if !grace.is_zero() {
            eprintln!(
                "warning: {} did not stop {} after signal {sig}; killing it",
                self.what,
                util::secs(grace)
            );
        }
        // SAFETY: as in `signal`.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Runs a short command in a namespace to completion (bounded by `limit`) and returns its stdout, or an
/// error with its output. Used for setup steps and readiness probes.
pub fn output(ns: &str, argv: &[&str], limit: Duration) -> Result<String> {
    let secs = limit.as_secs().max(1).to_string();
    let mut args: Vec<&str> = vec!["timeout", "-k", "2", &secs];
    args.extend_from_slice(argv);
    let out = netns::command(ns, &args)
        .output()
        .with_context(|| format!("could not run [{ns}] {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "[{ns}] `{}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
