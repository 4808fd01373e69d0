//! A real sshd for auth-log tests: it runs inside the lab's sensor namespace only, on its own port,
//! with its own host key and config in a temporary directory, and writes its log with `-E` to a file
//! there. A throw-away login with a known password can be created for it. Everything is undone on
//! drop, also while unwinding from a failed assertion.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{NetnsPair, SENSOR_V4, SENSOR_V6};

pub const SSHD: &str = "/usr/sbin/sshd";
/// Not 22: the lab sshd is deliberately unlike the host's own.
pub const PORT: u16 = 2022;
/// Written into the account's comment, so a leftover of a killed run is recognised as ours.
const USER_MARKER: &str = "NetGuard auth-log test user";

/// A local account with a random password; deleted on drop.
pub struct TestUser {
    pub name: String,
    pub password: String,
}

impl TestUser {
    /// `name` must be unique per test (tests run in parallel).
    pub fn create(name: &str) -> TestUser {
        let entry = Command::new("getent")
            .args(["passwd", name])
            .output()
            .unwrap();
        if entry.status.success() {
            let entry = String::from_utf8_lossy(&entry.stdout);
            assert!(
                entry.contains(USER_MARKER),
                "a user `{name}` exists that the tests did not create; not touching it"
            );
        } else {
            let out = Command::new("useradd")
                .args(["--system", "--no-create-home", "--home-dir", "/"])
                // nologin: a guessed password gets "Accepted", and then nothing.
                .args([
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    USER_MARKER,
                    name,
                ])
                .output()
                .expect("run useradd");
            assert!(out.status.success(), "useradd {name}: {out:?}");
        }
        let user = TestUser {
            name: name.to_owned(),
            password: random_hex(9),
        };
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        let line = format!("{}:{}\n", user.name, user.password);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "chpasswd {name}");
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // The password sits in a temp file: the account must not outlive the test.
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sshd in the sensor namespace; stopped, with every process it forked, on drop.
pub struct LabSshd {
    child: Child,
    ns: String,
    pub dir: tempfile::TempDir,
    /// The `-E` log file.
    pub log: PathBuf,
}

impl LabSshd {
    /// Starts sshd (password logins for `allow_user` only, `max_auth_tries` per connection) and
    /// waits until it listens. `log` is where `-E` writes; it need not exist.
    pub fn start(lab: &NetnsPair, allow_user: &str, max_auth_tries: u32, log: &Path) -> LabSshd {
        // sshd's privilege-separation directory; Debian's systemd unit would create it.
        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = d.join("host_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {out:?}");
        // UsePAM no: passwords are checked against shadow with no PAM stack of the host involved.
        let config = format!(
            "Port {PORT}\nListenAddress {SENSOR_V4}\nListenAddress {SENSOR_V6}\n\
             HostKey {key}\nPidFile {pid}\nAllowUsers {allow_user}\nPermitRootLogin no\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPubkeyAuthentication no\n\
             UsePAM no\nLogLevel VERBOSE\nMaxAuthTries {max_auth_tries}\nMaxStartups 50:30:100\n\
             LoginGraceTime 15\nPrintMotd no\n",
            key = key.display(),
            pid = d.join("sshd.pid").display(),
        );
        let conf = d.join("sshd_config");
        fs::write(&conf, config).unwrap();
        // -D: our child, so drop can stop it. `ip netns exec` execs sshd in place.
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.sensor, SSHD, "-D", "-f"])
            .arg(&conf)
            .arg("-E")
            .arg(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        let sshd = LabSshd {
            child,
            ns: lab.sensor.clone(),
            dir,
            log: log.to_path_buf(),
        };
        let ready = format!("Server listening on {SENSOR_V4} port {PORT}.");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(log).is_ok_and(|s| s.contains(&ready)) {
            assert!(
                Instant::now() < deadline,
                "sshd did not start; log: {:?}",
                fs::read_to_string(log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }
}

impl Drop for LabSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The listener's per-connection children outlive it while their client is connected. All
        // processes in the sensor namespace are ours (sshd and what it forked): stop them by pid.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a pid listed as living in our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// Runs an attack tool inside `ns` with a hard wall-clock limit, in `cwd` (hydra writes a restore
/// file into its working directory).
pub fn attack(ns: &str, cwd: &Path, limit: Duration, args: &[&str]) -> Output {
    let secs = limit.as_secs().max(1).to_string();
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "-k", "2", &secs])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} in {ns}: {e}"))
}

/// What hydra and medusa print when they cannot reach the lab sshd at all (it was slow to accept
/// on a loaded machine, or dropped a connection at MaxStartups): the tool's own trouble, not
/// NetGuard's, so [`attack_retrying`] runs it again.
const CONNECT_FAILURES: [&str; 7] = [
    "could not connect",
    "can not connect",
    "connection refused",
    "connection reset",
    "socket error",
    "connection errors",
    "failed establishing",
];

fn could_not_connect(out: &Output) -> bool {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_lowercase();
    CONNECT_FAILURES.iter().any(|m| text.contains(m))
}

/// [`attack`], run again (3 runs at most, 1 s apart) when it failed because the tool could not
/// connect to the lab server. The runs' output is returned together, so a caller that looks for a
/// result (a found password) sees it whichever run found it. A tool that fails for any other
/// reason is not retried.
pub fn attack_retrying(ns: &str, cwd: &Path, limit: Duration, args: &[&str]) -> Output {
    let mut out = attack(ns, cwd, limit, args);
    for _ in 1..3 {
        if out.status.success() || !could_not_connect(&out) {
            break;
        }
        eprintln!(
            "{} could not connect to the lab server; running it again",
            args[0]
        );
        std::thread::sleep(Duration::from_secs(1));
        let again = attack(ns, cwd, limit, args);
        out.stdout.extend(again.stdout);
        out.stderr.extend(again.stderr);
        out.status = again.status;
    }
    out
}

/// The target as hydra wants it: `ssh://10.213.1.1:2022` or `ssh://[fd00:213:1::1]:2022`.
pub fn hydra_target(v6: bool) -> String {
    if v6 {
        format!("ssh://[{SENSOR_V6}]:{PORT}")
    } else {
        format!("ssh://{SENSOR_V4}:{PORT}")
    }
}

/// Writes one word per line and returns the file's path.
pub fn word_file(dir: &Path, name: &str, words: &[String]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, words.join("\n") + "\n").unwrap();
    path
}

/// hydra (`-t 1 -w 2`, one user, a word list) against the lab sshd from the attacker namespace, in the
/// background, bounded by `timeout`; stopped on drop. `-w 2`: after sshd's MaxAuthTries disconnect,
/// hydra otherwise waits its default 32 s before it reconnects.
pub struct Hydra {
    child: Child,
    /// hydra's output, to tell a failure to connect from any other end.
    out: PathBuf,
    /// How to start it again: (namespace, cwd, argv).
    again: (String, PathBuf, Vec<String>),
    restarts: u32,
}

impl Hydra {
    pub fn start(
        ns: &str,
        cwd: &Path,
        words: &str,
        user: &str,
        v6: bool,
    ) -> std::io::Result<Hydra> {
        let target = hydra_target(v6);
        let argv = [
            "hydra", "-l", user, "-P", words, "-t", "1", "-w", "2", "-I", &target,
        ]
        .map(String::from)
        .to_vec();
        let out = cwd.join("hydra.out");
        let child = Self::spawn(ns, cwd, &argv, &out)?;
        Ok(Hydra {
            child,
            out,
            again: (ns.to_owned(), cwd.to_owned(), argv),
            restarts: 0,
        })
    }

    fn spawn(ns: &str, cwd: &Path, argv: &[String], out: &Path) -> std::io::Result<Child> {
        let log = fs::File::create(out)?;
        Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "-k", "2", "40"])
            .args(argv)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
    }

    /// Starts hydra again (twice at most) when it has exited because it could not connect to the
    /// lab server: call it while waiting for what hydra should cause. True when it restarted.
    pub fn restart_if_it_could_not_connect(&mut self) -> bool {
        let Ok(Some(status)) = self.child.try_wait() else {
            return false;
        };
        let out = Output {
            status,
            stdout: fs::read(&self.out).unwrap_or_default(),
            stderr: Vec::new(),
        };
        if status.success() || self.restarts >= 2 || !could_not_connect(&out) {
            return false;
        }
        let (ns, cwd, argv) = &self.again;
        eprintln!("hydra could not connect to the lab server; starting it again");
        std::thread::sleep(Duration::from_secs(1));
        match Self::spawn(ns, cwd, argv, &self.out) {
            Ok(child) => {
                self.child = child;
                self.restarts += 1;
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Hydra {
    fn drop(&mut self) {
        // `ip netns exec` execs `timeout` in place: SIGTERM to it is passed on to hydra.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
