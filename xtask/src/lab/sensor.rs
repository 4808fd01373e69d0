//! The NetGuard daemon on the sensor's lab interface, one fresh instance per scenario (own state dir,
//! own record file), so that each scenario's record holds only that scenario's traffic.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::addrs::SENSOR;
use super::procs::{self, Proc};
use super::topology::HOST_IF;

/// The API listens on the sensor namespace's own loopback, which nothing outside that namespace sees.
pub const LISTEN: &str = "127.0.0.1:9740";
/// Time the daemon gets to detach and flush its record after SIGINT before it is killed.
const GRACE: Duration = Duration::from_secs(15);
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Which optional `netguard run` flags this build has; the lab adapts instead of failing on an
/// older binary (the recorder and the auth-log tailer are being added in parallel).
#[derive(Clone, Copy, Debug, Default)]
pub struct DaemonFlags {
    pub record_features: bool,
    pub auth_log: bool,
    /// `--auth-log-format`: the lab's sshd writes with `-E`, so the lab says so.
    pub auth_log_format: bool,
    pub dry_run: bool,
}

impl DaemonFlags {
    pub fn probe(bin: &Path) -> Result<DaemonFlags> {
        let out = Command::new(bin)
            .args(["run", "--help"])
            .output()
            .with_context(|| format!("could not run {} run --help", bin.display()))?;
        let help = String::from_utf8_lossy(&out.stdout);
        Ok(Self::parse(&help))
    }

    fn parse(help: &str) -> DaemonFlags {
        let has = |flag: &str| {
            help.split_whitespace()
                .any(|w| w == flag || w.starts_with(&format!("{flag}=")))
        };
        DaemonFlags {
            record_features: has("--record-features"),
            auth_log: has("--auth-log"),
            auth_log_format: has("--auth-log-format"),
            dry_run: has("--dry-run"),
        }
    }
}

/// The lab daemon's bpffs.
const LAB_BPFFS: &str = "/run/netguard/lab-bpffs";

pub struct Sensor {
    proc: Proc,
    pub log: PathBuf,
}

impl Sensor {
    /// Starts the daemon and waits until /health says the program is attached.
    pub fn start(
        bin: &Path,
        flags: DaemonFlags,
        state_dir: &Path,
        record: &Path,
        auth_log: &Path,
        log: &Path,
    ) -> Result<Sensor> {
        std::fs::create_dir_all(state_dir)?;
        let mut argv: Vec<String> = vec![
            bin.to_string_lossy().into_owned(),
            "run".into(),
            "--iface".into(),
            HOST_IF.into(),
            "--state-dir".into(),
            state_dir.to_string_lossy().into_owned(),
            "--sensor-id".into(),
            "lab".into(),
            "--listen".into(),
            LISTEN.into(),
            // A bpffs in the host's mount namespace (not /sys/fs/bpf, which `ip netns exec`
            // replaces); the lab's sensor leaves nothing pinned when it stops.
            "--bpffs".into(),
            crate::netns::bpffs(LAB_BPFFS)?,
            "--detach-on-exit".into(),
        ];
        if flags.record_features {
            argv.extend([
                "--record-features".into(),
                record.to_string_lossy().into_owned(),
            ]);
        }
        // Alert, never block: a block would XDP-drop the attack mid-scenario, and the record would show
        // the sensor's response instead of the attack.
        if flags.dry_run {
            argv.push("--dry-run".into());
        }
        // sshd's failed and accepted logins are host events the features may use (ssh brute force).
        if flags.auth_log {
            argv.extend(["--auth-log".into(), auth_log.to_string_lossy().into_owned()]);
            if flags.auth_log_format {
                argv.extend(["--auth-log-format".into(), "sshd-e".into()]);
            }
        }
        let mut sensor = Sensor {
            proc: Proc::service(SENSOR.ns, &argv, log)?,
            log: log.to_path_buf(),
        };
        sensor.wait_ready()?;
        Ok(sensor)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let url = format!("http://{LISTEN}/api/v1/health");
        let start = Instant::now();
        loop {
            if let Some(st) = self.proc.poll()? {
                bail!(
                    "netguard exited at start ({st}); see {}",
                    self.log.display()
                );
            }
            let probe = [
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                url.as_str(),
            ];
            if procs::output(SENSOR.ns, &probe, Duration::from_secs(3)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > READY_WITHIN {
                bail!(
                    "netguard not healthy {} s after start; see {}",
                    READY_WITHIN.as_secs(),
                    self.log.display()
                );
            }
            procs::sleep(Duration::from_millis(200))?;
        }
    }

    /// SIGINT (the daemon's clean detach, which also flushes the record), then waits.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.proc.signal(libc::SIGINT);
        let start = Instant::now();
        while start.elapsed() < GRACE {
            if let Some(st) = self.proc.poll()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc.stop(Duration::ZERO);
        bail!(
            "netguard did not exit {} s after SIGINT and was killed; its record may be cut short",
            GRACE.as_secs()
        )
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        // On errors and interrupts: the same clean detach first, a kill only if it hangs.
        self.proc.stop_with(libc::SIGINT, GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_optional_flags_in_help() {
        let old = "      --state-dir <STATE_DIR>  Directory\n      --sensor-id <SENSOR_ID>  id\n";
        let f = DaemonFlags::parse(old);
        assert!(!f.record_features && !f.auth_log && !f.dry_run);
        let new = "      --record-features <FILE>  Append feature vectors\n      --auth-log <PATH>  tail\n      \
                   --dry-run  Alert only\n";
        let f = DaemonFlags::parse(new);
        assert!(f.record_features && f.auth_log && f.dry_run);
    }
}
