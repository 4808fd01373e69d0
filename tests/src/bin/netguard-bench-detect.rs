//! Detection benchmark (`cargo xtask bench`, third part):
//! 1. inference cost of the shipped model per feature vector, over the shipped lab data set;
//! 2. time from attack start to the alert and to the block on the WebSocket, per class: the real
//!    daemon with the shipped model on a test veth, a WebSocket client connected before the tool
//!    starts, and the real tool (hping3, nmap) bounded in packets and time. Each run gets fresh
//!    namespaces and a fresh daemon, so no block or cooldown from an earlier run changes the next.
//!    `NETGUARD_BIN=path/to/netguard` measures another build (e.g. the previous release) the same way.
//!
//! SSH brute force is measured from the sshd log by netguard-bench-authlog (failures until the
//! block, and log line to kernel drop).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use netguard_tests::daemon::Daemon;
use netguard_tests::netns::{self, ATTACKER_IF, ATTACKER_V4, NetnsPair, SENSOR_V4, require_root};
use netguard_user::detect::{Model, bench_predict, read_dataset};
use netguard_user::sensor::DEFAULT_MODEL;
use serde_json::Value;

const TOKEN: &str = "bench-detect-admin-token-0123456789";
const API: &str = "127.0.0.1:9771";
const RUNS: usize = 5;
const GIVE_UP: Duration = Duration::from_secs(12);

fn main() {
    let model = Model::load(DEFAULT_MODEL).unwrap_or_else(|e| {
        eprintln!(
            "cannot load the shipped model {DEFAULT_MODEL}: {e} (make it with `cargo xtask train`)"
        );
        std::process::exit(1);
    });
    inference(&model);
    if !require_root() {
        eprintln!("time-to-alert needs root (network namespaces, XDP): skipped");
        return;
    }
    time_to_alert();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "median M ms (goal ...×), worst W ms; runs in order: ..." for one class and one measure.
fn summary(times: &[Duration]) -> String {
    let order: Vec<String> = times.iter().map(|t| format!("{:.0}", ms(*t))).collect();
    let mut sorted = times.to_vec();
    sorted.sort();
    match sorted.get(sorted.len() / 2) {
        Some(m) => format!(
            "median {:>5.0} ms ({:.2}× the 1 s goal), worst {:.0} ms; runs in order: {} ms",
            ms(*m),
            ms(*m) / 1000.0,
            ms(*sorted.last().unwrap()),
            order.join(", ")
        ),
        None => "none in any run".into(),
    }
}

/// ns per `predict` over every row of the shipped data set, repeated to at least 2M predictions.
fn inference(model: &Model) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../netguard-user/models/lab-data");
    let data = read_dataset(&dir, &mut |_| {}).unwrap_or_else(|e| {
        eprintln!("cannot read the shipped data set {}: {e}", dir.display());
        std::process::exit(1);
    });
    let rows: Vec<Vec<f32>> = data.x.rows().into_iter().map(|r| r.to_vec()).collect();
    let reps = (2_000_000 / rows.len().max(1)).max(1);
    bench_predict(model, &rows, 1); // warm-up
    let ns = bench_predict(model, &rows, reps);
    let n = reps * rows.len();
    println!(
        "== inference: shipped model ({} rows × {reps} passes = {n} predictions)",
        rows.len()
    );
    println!(
        "   {ns:.1} ns per feature vector (goal <= 1000 ns: {:.4}× the budget)",
        ns / 1000.0
    );
}

struct Attack {
    class: &'static str,
    /// The tool's argv; "{src}" and "{dst}" are filled in.
    argv: &'static [&'static str],
}

const ATTACKS: [Attack; 4] = [
    Attack {
        class: "syn_flood",
        argv: &[
            "hping3",
            "-q",
            "-I",
            ATTACKER_IF,
            "-S",
            "-p",
            "80",
            "-i",
            "u500",
            "-c",
            "10000",
            "-a",
            "{src}",
            "{dst}",
        ],
    },
    Attack {
        class: "udp_flood",
        argv: &[
            "hping3",
            "-q",
            "-I",
            ATTACKER_IF,
            "--udp",
            "-p",
            "53",
            "-d",
            "64",
            "-i",
            "u500",
            "-c",
            "10000",
            "-a",
            "{src}",
            "{dst}",
        ],
    },
    Attack {
        class: "icmp_flood",
        argv: &[
            "hping3",
            "-q",
            "-I",
            ATTACKER_IF,
            "--icmp",
            "-d",
            "56",
            "-i",
            "u500",
            "-c",
            "10000",
            "-a",
            "{src}",
            "{dst}",
        ],
    },
    Attack {
        class: "port_scan",
        argv: &[
            "nmap",
            "-n",
            "-Pn",
            "-sS",
            "-T4",
            "-p",
            "1-5000",
            "--max-rate",
            "800",
            "--max-retries",
            "1",
            "--host-timeout",
            "15s",
            "-e",
            ATTACKER_IF,
            "-S",
            "{src}",
            "{dst}",
        ],
    },
];

fn time_to_alert() {
    let bin = netguard_tests::daemon::netguard_bin();
    println!(
        "== time from attack start to the alert and to the block on the WebSocket ({RUNS} runs per class, fresh daemon each, start phases spread over the 1 s tick; daemon {})",
        bin.display()
    );
    for (ci, a) in ATTACKS.iter().enumerate() {
        let (mut alert, mut block) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            match one_run(a, ci * RUNS + run) {
                Ok((t_alert, t_block)) => {
                    alert.push(t_alert);
                    match t_block {
                        Some(t) => block.push(t),
                        None => println!(
                            "   {}: run {}: alerted, but no block within {GIVE_UP:?}",
                            a.class,
                            run + 1
                        ),
                    }
                }
                Err(e) => println!("   {}: run {}: {e}", a.class, run + 1),
            }
        }
        println!("   {:<11} alert: {}", a.class, summary(&alert));
        println!("   {:<11} block: {}", "", summary(&block));
    }
}

/// One attack against a fresh daemon: the time from spawning the tool to the first alert of the
/// attack's class about the attacker's address, and to the push of the block of that address.
fn one_run(a: &Attack, n: usize) -> Result<(Duration, Option<Duration>), String> {
    let lab = NetnsPair::new(&format!("bd{n}"));
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let daemon = Daemon::start(&lab, state.path(), API, TOKEN, &[]);
    let pushes = ws_pushes(&lab.sensor);
    let src = ATTACKER_V4[n % 2].to_string();
    let dst = SENSOR_V4.to_string();
    let cidr = format!("{src}/32");
    let argv: Vec<String> = a
        .argv
        .iter()
        .map(|s| s.replace("{src}", &src).replace("{dst}", &dst))
        .collect();
    // Attacks do not start in step with the daemon's one-second detection tick: start this one at a
    // pseudo-random phase of it, spread evenly over the runs.
    thread::sleep(Duration::from_millis((n as u64 * 618) % 1000));
    let t0 = Instant::now();
    let mut tool = spawn_in(&lab.attacker, &argv);
    let (mut alert, mut block) = (None, None);
    while alert.is_none() || block.is_none() {
        let left = GIVE_UP.saturating_sub(t0.elapsed());
        match pushes.recv_timeout(left) {
            Ok((at, v))
                if v["type"] == "alert" && v["class"] == a.class && v["src_ip"] == src.as_str() =>
            {
                alert.get_or_insert(at - t0);
            }
            Ok((at, v))
                if v["type"] == "block"
                    && v["entries"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| e["cidr"] == cidr.as_str())) =>
            {
                block.get_or_insert(at - t0);
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let _ = tool.kill();
    let _ = tool.wait();
    drop(daemon);
    match alert {
        Some(t) => Ok((t, block)),
        None => Err(format!("no {} alert within {GIVE_UP:?}", a.class)),
    }
}

fn spawn_in(ns: &str, argv: &[String]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "-k", "2", "20"])
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tool starts")
}

/// A WebSocket client in the sensor namespace; every alert and block it receives goes to the channel
/// with its arrival time. Returns once connected.
fn ws_pushes(ns: &str) -> mpsc::Receiver<(Instant, Value)> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    thread::spawn(move || {
        let _inside = netns::enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let url = format!("ws://{API}/api/v1/ws?token={TOKEN}");
            let (mut ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while let Some(Ok(msg)) = ws.next().await {
                if let Ok(text) = msg.into_text()
                    && let Ok(v) = serde_json::from_str::<Value>(&text)
                    && (v["type"] == "alert" || v["type"] == "block")
                    && tx.send((Instant::now(), v)).is_err()
                {
                    return;
                }
            }
        });
    });
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => rx,
        Ok(Err(e)) => panic!("WebSocket connect failed: {e}"),
        Err(_) => panic!("WebSocket connect timed out"),
    }
}
