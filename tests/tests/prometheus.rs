//! `/metrics` end to end through the real Prometheus: the kernel counts crafted frames, a tiny HTTP
//! server exposes `Metrics::render()` refreshed from `Datapath::counters()` on every scrape, and the
//! Debian `prometheus` binary scrapes it. The test asserts what a dashboard would see: the drop counter
//! has the kernel's value, and it moves by exactly the packets pushed afterwards. `promtool check
//! metrics` lints the same exposition.
//!
//! Needs root (BPF program load) and `prometheus`/`promtool` (`cargo xtask setup` installs them).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use netguard_tests::{
    fixtures::{XDP_DROP, XDP_PASS, load_small},
    frames::{FrameSpec, L4},
    netns::require_root,
};
use netguard_user::{
    datapath::Datapath,
    metrics::{BlocklistScope, CONTENT_TYPE, Metrics},
};

const SENSOR: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
const GOOD: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
const BLOCKED: Ipv4Addr = Ipv4Addr::new(10, 213, 66, 2);
const DROP_QUERY: &str = r#"netguard_packets_total{action="drop"}"#;

/// Finds `tool` on PATH. Missing tools fail the test (the xtask installs them) unless skipping is
/// explicitly allowed, in which case the skip is printed so it cannot pass unnoticed.
fn require_tools(tools: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("prometheus not found: run `cargo xtask setup` (missing: {missing:?})");
    if std::env::var("NETGUARD_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        // Straight to stderr: libtest captures eprintln! of passing tests, and a skip must be seen.
        let _ = writeln!(std::io::stderr(), "SKIP: {msg}");
        false
    } else {
        panic!("{msg}");
    }
}

fn tcp_frame(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    let l4 = L4::Tcp {
        sport,
        dport: 443,
        flags: 0x02,
    };
    FrameSpec::v4(src, SENSOR, l4).build().bytes
}

fn push(dp: &Mutex<Datapath>, frame: &[u8], n: u32, expect: u32) {
    let dp = dp.lock().unwrap();
    for _ in 0..n {
        assert_eq!(dp.test_run(frame).expect("BPF_PROG_TEST_RUN"), expect);
    }
}

/// The `/metrics` endpoint: std threads and hand-written HTTP/1.1, enough for Prometheus and promtool.
struct Exporter {
    port: u16,
    scrapes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    fn start(dp: Arc<Mutex<Datapath>>, metrics: Metrics) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the exporter");
        // Non-blocking accept lets Drop stop the thread without a wake-up connection.
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (scrapes, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, st) = (scrapes.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Err(e) = serve(conn, &dp, &metrics, &s) {
                            eprintln!("exporter: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("exporter accept: {e}"),
                }
            }
        });
        Exporter {
            port,
            scrapes,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request. `/metrics` does what the daemon's handler does: refresh from the datapath, render,
/// and record its own latency in the histogram.
fn serve(
    mut conn: TcpStream,
    dp: &Mutex<Datapath>,
    m: &Metrics,
    scrapes: &AtomicUsize,
) -> std::io::Result<()> {
    let start = Instant::now();
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or_default();
    let (status, body) = if target.split('?').next() == Some("/metrics") {
        {
            let dp = dp.lock().unwrap();
            m.refresh_from(&dp).expect("read kernel counters");
            m.set_flows_active(dp.flows().expect("read flows").len());
            m.set_blocklist_entries(BlocklistScope::Local, dp.blocklist.len());
        }
        scrapes.fetch_add(1, Ordering::Relaxed);
        (200, m.render())
    } else {
        (404, "not found\n".to_string())
    };
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes())?;
    m.observe_http_since(
        "GET",
        if status == 200 {
            "/metrics"
        } else {
            "unmatched"
        },
        status,
        start,
    );
    Ok(())
}

/// GET over HTTP/1.0, so the server closes the connection and never answers chunked; returns the body.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!("{path}: {head}\n{body}")));
    }
    Ok(body.to_string())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus scraping the exporter every second; killed (and its TSDB removed) on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        // Free port: bind to :0, read it, release it. Another process could grab it in between; the
        // startup wait below then times out with Prometheus's own log, which says so.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: netguard\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<endpoint>` parsed as JSON; `None` while Prometheus is not answering yet.
    fn api(&self, endpoint: &str) -> Option<serde_json::Value> {
        let body = http_get(self.port, &format!("/api/v1/{endpoint}")).ok()?;
        let v: serde_json::Value =
            serde_json::from_str(&body).expect("Prometheus API answers JSON");
        assert_eq!(v["status"], "success", "{endpoint}: {v}");
        Some(v)
    }

    /// The single value of an instant vector query, once the query has a result.
    fn value(&self, promql: &str) -> Option<f64> {
        let v = self.api(&format!("query?query={}", urlencode(promql)))?;
        let result = v["data"]["result"].as_array()?;
        assert!(
            result.len() <= 1,
            "{promql}: expected one series, got {result:?}"
        );
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls `f` until it returns `Some`, failing with Prometheus's log after `limit`.
    fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut(&Self) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; prometheus log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on an exposition: it must exit 0 and print nothing (no lint findings).
fn promtool_check(exposition: &str, dir: &Path) {
    let file: PathBuf = dir.join("exposition.txt");
    fs::write(&file, exposition).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(fs::File::open(&file).unwrap())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics ({}):\n{text}\nexposition:\n{exposition}",
        out.status
    );
}

#[test]
fn prometheus_scrapes_kernel_counters_and_sees_them_move() {
    if !require_root() || !require_tools(&["prometheus", "promtool"]) {
        return;
    }
    let test_start = Instant::now();
    let mut dp = load_small();
    dp.block_insert(IpNet::from(std::net::IpAddr::V4(BLOCKED)))
        .expect("block the source");
    let dp = Arc::new(Mutex::new(dp));
    let (pass_frame, drop_frame) = (tcp_frame(GOOD, 40000), tcp_frame(BLOCKED, 40001));
    push(&dp, &pass_frame, 50, XDP_PASS);
    push(&dp, &drop_frame, 20, XDP_DROP);

    let metrics = Metrics::new();
    let exporter = Exporter::start(dp.clone(), metrics.clone());

    // The exposition a scraper gets, linted by Prometheus's own tool.
    let exposition = http_get(exporter.port, "/metrics").expect("scrape the exporter");
    assert!(
        exposition.contains("\nnetguard_packets_total{action=\"drop\"} 20\n"),
        "{exposition}"
    );
    let scratch = tempfile::tempdir().unwrap();
    promtool_check(&exposition, scratch.path());

    let prom = Prometheus::start(exporter.port);
    let before = prom.wait("the first scrape", Duration::from_secs(25), |p| {
        p.value(DROP_QUERY)
    });
    assert_eq!(
        before, 20.0,
        "Prometheus's drop counter must equal the kernel's"
    );
    assert_eq!(
        prom.value(r#"netguard_packets_total{action="pass"}"#),
        Some(50.0)
    );
    assert_eq!(prom.value(r#"up{job="netguard"}"#), Some(1.0));

    // HELP and TYPE reach Prometheus too (Grafana's query editor shows them).
    let meta = prom
        .api("metadata?metric=netguard_packets_total")
        .expect("metadata API");
    let entry = &meta["data"]["netguard_packets_total"][0];
    assert_eq!(entry["type"], "counter", "{meta}");
    assert!(
        entry["help"].as_str().is_some_and(|h| !h.is_empty()),
        "{meta}"
    );

    push(&dp, &drop_frame, 30, XDP_DROP);
    let after = prom.wait("the drop counter to move", Duration::from_secs(15), |p| {
        p.value(DROP_QUERY).filter(|v| *v != before)
    });
    assert_eq!(
        after - before,
        30.0,
        "the counter moved by a different amount than packets pushed"
    );
    let bytes = prom
        .value(r#"netguard_bytes_total{action="drop"}"#)
        .unwrap();
    assert_eq!(bytes, 50.0 * drop_frame.len() as f64);
    eprintln!(
        "prometheus saw {DROP_QUERY} move {before} -> {after} (+{}), {} scrapes, {:?} in total",
        after - before,
        exporter.scrapes.load(Ordering::Relaxed),
        test_start.elapsed()
    );

    // The live exposition, now with a populated latency histogram, still lints clean.
    promtool_check(
        &http_get(exporter.port, "/metrics").unwrap(),
        scratch.path(),
    );
    // Prometheus first, so that its last scrape does not log a refused connection.
    drop(prom);
    drop(exporter);
}
