//! The real services on the sensor host: sshd (password and key logins for a lab-only user), HTTP
//! servers on the lab addresses (a plain one on 80, an HTTP/1.1 application server with uploads on
//! 8000), a UDP echo service and iperf3 servers. All of them listen only on the
//! sensor's lab addresses inside its namespace, and stop when their guard drops (or, at the latest,
//! when the namespace is removed).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::addrs::{SENSOR, SENSOR_V4, SENSOR_V6};
use super::clients;
use super::procs::{self, Proc};
use crate::util;

/// The login that sshd accepts; it exists only while a lab runs.
pub const LAB_USER: &str = "nglab";
/// Written into the account's comment field, so a leftover of a crashed run is recognised as ours.
const USER_MARKER: &str = "NetGuard lab user (cargo xtask lab)";
pub const HTTP_PORT: u16 = 80;
/// The application server (HTTP/1.1 with keep-alive, uploads by PUT/POST): everyday client traffic.
pub const APP_PORT: u16 = 8000;
pub const ECHO_PORT: u16 = 7;
/// iperf3 serves one test at a time, so each concurrent client gets a port: 5201/5202 for the benign
/// background of ben-a/ben-b, 5203/5204 for benign bulk scenarios.
pub const IPERF_PORTS: [u16; 4] = [5201, 5202, 5203, 5204];

/// Paths the scenarios use.
pub struct Files {
    pub python: String,
    pub client_key: PathBuf,
    pub udp_client: PathBuf,
    /// Everyday clients (`clients.rs`): paced UDP (voice, QUIC-like, DNS/NTP), keep-alive HTTP, probes.
    pub udp_send: PathBuf,
    pub http_client: PathBuf,
    pub probe: PathBuf,
    /// A 1 GiB sparse file on the app server: downloads, uploads and scp copies of it take no disk.
    pub big: PathBuf,
    /// Common passwords with the lab user's real one last: a brute force that gets through.
    pub words_hit: PathBuf,
    /// Common passwords only: every attempt fails.
    pub words_miss: PathBuf,
    /// The first third of `words_miss`, for the slower tools and paths (IPv6, fewer tasks).
    pub words_short: PathBuf,
    pub users: PathBuf,
    pub sshd_log: PathBuf,
}

/// A few dozen of the passwords every brute-force list starts with.
const COMMON: &[&str] = &[
    "123456",
    "password",
    "123456789",
    "12345678",
    "12345",
    "qwerty",
    "abc123",
    "football",
    "1234567",
    "monkey",
    "111111",
    "letmein",
    "1234",
    "1234567890",
    "dragon",
    "baseball",
    "sunshine",
    "iloveyou",
    "trustno1",
    "princess",
    "adobe123",
    "123123",
    "welcome",
    "login",
    "admin",
    "qwerty123",
    "solo",
    "1q2w3e4r",
    "master",
    "666666",
    "photoshop",
    "1qaz2wsx",
    "qwertyuiop",
    "ashley",
    "mustang",
    "121212",
    "starwars",
    "654321",
    "bailey",
    "access",
    "flower",
    "passw0rd",
    "shadow",
    "michael",
    "superman",
    "696969",
    "123qwe",
    "killer",
    "jordan",
    "jennifer",
    "zxcvbnm",
    "asdfgh",
    "hunter",
    "buster",
    "soccer",
    "harley",
    "batman",
    "andrew",
    "tigger",
    "charlie",
    "robert",
    "thomas",
    "hockey",
    "ranger",
    "daniel",
    "hannah",
    "maggie",
    "jessica",
    "pepper",
    "1111",
];
/// The usual mutations a brute-force list applies to each common word.
const SUFFIXES: &[&str] = &["", "1", "123", "!", "2024", "01"];

/// `n` passwords: the common ones first, then their mutations (at most COMMON x SUFFIXES).
fn wordlist(n: usize) -> Vec<String> {
    SUFFIXES
        .iter()
        .flat_map(|s| COMMON.iter().map(move |w| format!("{w}{s}")))
        .take(n)
        .collect()
}

const USERS: &[&str] = &[
    "root", "admin", "user", "test", "oracle", "ubuntu", "pi", LAB_USER,
];

/// Writes every file the services and scenarios need under `dir` (wiped first). `brute_words` bounds
/// the number of password attempts per run of a brute-force tool.
pub fn prepare(dir: &Path, brute_words: usize) -> Result<(Files, String)> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("could not clear {}", dir.display()))?;
    }
    for sub in ["ssh", "www", "logs", "records", "state"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let password = random_password()?;
    let ssh = dir.join("ssh");
    // A host key of the lab's own, so /etc/ssh stays untouched; and the client key for benign logins.
    for key in ["host_ed25519", "client_ed25519"] {
        util::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(ssh.join(key)),
        )?;
    }
    fs::copy(ssh.join("client_ed25519.pub"), ssh.join("authorized_keys"))?;
    fs::write(ssh.join("sshd_config"), sshd_config(&ssh))?;

    let www = dir.join("www");
    fs::write(
        www.join("index.html"),
        "<html><body>NetGuard lab</body></html>\n",
    )?;
    // A download of a few hundred KiB, so benign HTTP includes a bulk-ish transfer too.
    fs::write(www.join("blob.bin"), vec![0x5a_u8; 256 * 1024])?;

    // Everyday traffic: a large download, a health endpoint and a metrics page to scrape.
    let big = fs::File::create(www.join("big.bin"))?;
    big.set_len(1 << 30)?;
    // The lab user reads it too (scp downloads).
    fs::set_permissions(www.join("big.bin"), fs::Permissions::from_mode(0o644))?;
    fs::write(www.join("health"), "ok\n")?;
    let metrics: String = (0..400)
        .map(|i| format!("lab_metric_total{{series=\"{i}\"}} {}\n", i * 7))
        .collect();
    fs::write(www.join("metrics"), metrics)?;
    fs::write(
        www.join("api.json"),
        "{\"status\":\"ok\",\"items\":[1,2,3]}\n",
    )?;

    fs::write(dir.join("udp_echo.py"), UDP_ECHO)?;
    fs::write(dir.join("udp_client.py"), UDP_CLIENT)?;
    fs::write(dir.join("app_http.py"), APP_HTTP)?;
    fs::write(dir.join("udp_send.py"), clients::UDP_SEND)?;
    fs::write(dir.join("http_client.py"), clients::HTTP_CLIENT)?;
    fs::write(dir.join("probe.py"), clients::PROBE)?;

    let words = wordlist(brute_words);
    let miss = words.join("\n") + "\n";
    let hit = words[..words.len().saturating_sub(1)].join("\n") + "\n" + &password + "\n";
    fs::write(dir.join("words_hit.txt"), hit)?;
    fs::write(dir.join("words_miss.txt"), miss)?;
    let short = words[..words.len().div_ceil(3)].join("\n") + "\n";
    fs::write(dir.join("words_short.txt"), short)?;
    fs::write(dir.join("users.txt"), USERS.join("\n") + "\n")?;

    Ok((files(dir), password))
}

/// Where `prepare` puts everything under `dir`; also used to list the plan without preparing.
pub fn files(dir: &Path) -> Files {
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".to_string()
    } else {
        "python3".to_string()
    };
    Files {
        python,
        client_key: dir.join("ssh/client_ed25519"),
        udp_client: dir.join("udp_client.py"),
        udp_send: dir.join("udp_send.py"),
        http_client: dir.join("http_client.py"),
        probe: dir.join("probe.py"),
        big: dir.join("www/big.bin"),
        words_hit: dir.join("words_hit.txt"),
        words_miss: dir.join("words_miss.txt"),
        words_short: dir.join("words_short.txt"),
        users: dir.join("users.txt"),
        sshd_log: dir.join("ssh/sshd.log"),
    }
}

fn sshd_config(ssh: &Path) -> String {
    let d = ssh.display();
    // Lab-only: the lab user alone may log in, by key (benign sessions) or password (the brute force).
    // UsePAM no checks the password against shadow directly, with no PAM stack of the host involved;
    // StrictModes no because the key files sit in the build tree, owned by root.
    format!(
        "Port 22\nListenAddress {SENSOR_V4}\nListenAddress {SENSOR_V6}\nHostKey {d}/host_ed25519\n\
         PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nAllowUsers {LAB_USER}\n\
         PermitRootLogin no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPrintMotd no\nLogLevel VERBOSE\n\
         MaxStartups 10:30:100\nMaxAuthTries 6\n"
    )
}

fn random_password() -> Result<String> {
    let mut b = [0u8; 9];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// Echo server: every datagram goes back to its sender, on both lab addresses.
const UDP_ECHO: &str = r#"import select, socket, sys
socks = []
for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, int(sys.argv[3])))
    socks.append(s)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)
"#;

/// Client: N datagrams from SRC to DST:PORT, each waiting briefly for its echo.
const UDP_CLIENT: &str = r#"import socket, sys
src, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(0.5)
for i in range(n):
    s.sendto(b"netguard-lab %d" % i, (dst, port))
    try:
        s.recvfrom(65535)
    except socket.timeout:
        pass
"#;

/// The application server: HTTP/1.1 (keep-alive) GETs of the www files, and PUT/POST bodies read and
/// discarded, so that clients can upload. Threaded, so browser-like parallel fetches are served at once.
const APP_HTTP: &str = r#"import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

class H(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def sink(self):
        left = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                self.rfile.read(n + 2)
                if n == 0:
                    break
        while left > 0:
            got = self.rfile.read(min(left, 1 << 16))
            if not got:
                break
            left -= len(got)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    do_POST = sink
    do_PUT = sink

ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), partial(H, directory=sys.argv[3])).serve_forever()
"#;

/// The lab user account; removed on drop if this run created it (or found a crashed run's leftover).
pub struct LabUser;

impl LabUser {
    pub fn create(password: &str) -> Result<LabUser> {
        if let Some(entry) = util::probe("getent", &["passwd", LAB_USER]) {
            if !entry.contains(USER_MARKER) {
                bail!(
                    "a user `{LAB_USER}` exists that the lab did not create; the lab will not change its \
                     password. Remove or rename it, then rerun"
                );
            }
            util::say(
                "lab",
                format!("reusing the lab user {LAB_USER} left by an earlier run"),
            );
        } else {
            util::run(Command::new("useradd").args([
                "--system",
                "--no-create-home",
                // "/" so that sessions start without a "could not chdir" warning; the user can
                // write nothing there.
                "--home-dir",
                "/",
                "--shell",
                "/bin/sh",
                "--comment",
                USER_MARKER,
                LAB_USER,
            ]))?;
        }
        let user = LabUser;
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .context("could not run chpasswd")?;
        child
            .stdin
            .take()
            .context("chpasswd stdin")?
            .write_all(format!("{LAB_USER}:{password}\n").as_bytes())?;
        if !child.wait()?.success() {
            bail!("chpasswd failed for the lab user");
        }
        Ok(user)
    }
}

impl Drop for LabUser {
    fn drop(&mut self) {
        // The account has a password that sits in the build tree: it must not outlive the lab.
        if util::probe("userdel", &[LAB_USER]).is_none() {
            eprintln!("warning: could not remove the lab user; run `userdel {LAB_USER}`");
        }
    }
}

/// The running services; dropping stops them all.
pub struct Services {
    procs: Vec<Proc>,
}

impl Services {
    pub fn start(dir: &Path, files: &Files) -> Result<Services> {
        // sshd's privilege-separation directory; Debian's systemd unit would create it.
        fs::create_dir_all("/run/sshd")?;
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755))?;
        let ns = SENSOR.ns;
        let log = dir.join("logs/services.log");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let conf = dir.join("ssh/sshd_config");
        let mut services = Services { procs: Vec::new() };
        let v4 = SENSOR_V4.to_string();
        let v6 = SENSOR_V6.to_string();
        let py = files.python.as_str();
        let www = dir.join("www");
        let www = www.to_string_lossy();
        let echo = dir.join("udp_echo.py");
        let echo = echo.to_string_lossy();
        let port = HTTP_PORT.to_string();
        let echo_port = ECHO_PORT.to_string();
        let app = dir.join("app_http.py");
        let app = app.to_string_lossy();
        let app_port = APP_PORT.to_string();
        // -D keeps sshd in the foreground so it is our child; -E writes its log where the daemon's
        // auth-log tailer (when it has one) and we can read it.
        let mut list = vec![
            s(&[
                "/usr/sbin/sshd",
                "-D",
                "-f",
                &conf.to_string_lossy(),
                "-E",
                &files.sshd_log.to_string_lossy(),
            ]),
            s(&[
                py,
                "-m",
                "http.server",
                &port,
                "--bind",
                &v4,
                "--directory",
                &www,
            ]),
            s(&[
                py,
                "-m",
                "http.server",
                &port,
                "--bind",
                &v6,
                "--directory",
                &www,
            ]),
            s(&[py, &echo, &v4, &v6, &echo_port]),
            s(&[py, &app, &v4, &app_port, &www]),
        ];
        for p in IPERF_PORTS {
            list.push(s(&["iperf3", "-s", "-B", &v4, "-p", &p.to_string()]));
        }
        for argv in list {
            services.procs.push(Proc::service(ns, &argv, &log)?);
        }
        services.wait_listening(&log)?;
        Ok(services)
    }

    /// Waits until every service has its socket open, so the first scenario does not race them.
    fn wait_listening(&mut self, log: &Path) -> Result<()> {
        let v6 = format!("[{SENSOR_V6}]");
        let mut want: Vec<String> = vec![
            format!("{SENSOR_V4}:22"),
            format!("{v6}:22"),
            format!("{SENSOR_V4}:{HTTP_PORT}"),
            format!("{SENSOR_V4}:{APP_PORT}"),
            format!("{v6}:{HTTP_PORT}"),
            format!("{SENSOR_V4}:{ECHO_PORT}"),
            format!("{v6}:{ECHO_PORT}"),
        ];
        want.extend(IPERF_PORTS.iter().map(|p| format!("{SENSOR_V4}:{p}")));
        let start = Instant::now();
        loop {
            for p in &mut self.procs {
                if let Some(st) = p.poll()? {
                    bail!("{} exited at start ({st}); see {}", p.what, log.display());
                }
            }
            let ss = procs::output(SENSOR.ns, &["ss", "-Hlntu"], Duration::from_secs(5))?;
            let open: Vec<&str> = ss.split_whitespace().collect();
            let missing: Vec<&String> = want
                .iter()
                .filter(|w| !open.contains(&w.as_str()))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!(
                    "services not listening after 15 s: {missing:?}; see {}",
                    log.display()
                );
            }
            procs::sleep(Duration::from_millis(200))?;
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(3));
        }
    }
}
