//! Detection benchmark (`cargo xtask bench`, third part):
//! 1. inference cost of the shipped model per feature vector, over the shipped lab data set;
//! 2. time from attack start to the alert on the WebSocket, per class: the real daemon with the
//!    shipped model on a test veth, a WebSocket client connected before the tool starts, and the
//!    real tool (hping3, nmap) bounded in packets and time. Each run gets fresh namespaces and a
//!    fresh daemon, so no block or cooldown from an earlier run changes the next.
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
        eprintln!("cannot load the shipped model {DEFAULT_MODEL}: {e} (make it with `cargo xtask train`)");
        std::process::exit(1);
    });
    inference(&model);
    if !require_root() {
        eprintln!("time-to-alert needs root (network namespaces, XDP): skipped");
        return;
    }
    time_to_alert();
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
    println!("== inference: shipped model ({} rows × {reps} passes = {n} predictions)", rows.len());
    println!("   {ns:.1} ns per feature vector (goal <= 1000 ns: {:.4}× the budget)", ns / 1000.0);
}

struct Attack {
    class: &'static str,
    /// The tool's argv; "{src}" and "{dst}" are filled in.
    argv: &'static [&'static str],
}

const ATTACKS: [Attack; 4] = [
    Attack {
        class: "syn_flood",
        argv: &["hping3", "-q", "-I", ATTACKER_IF, "-S", "-p", "80", "-i", "u500", "-c", "10000", "-a", "{src}", "{dst}"],
    },
    Attack {
        class: "udp_flood",
        argv: &["hping3", "-q", "-I", ATTACKER_IF, "--udp", "-p", "53", "-d", "64", "-i", "u500", "-c", "10000", "-a", "{src}", "{dst}"],
    },
    Attack {
        class: "icmp_flood",
        argv: &["hping3", "-q", "-I", ATTACKER_IF, "--icmp", "-d", "56", "-i", "u500", "-c", "10000", "-a", "{src}", "{dst}"],
    },
    Attack {
        class: "port_scan",
        argv: &[
            "nmap", "-n", "-Pn", "-sS", "-T4", "-p", "1-5000", "--max-rate", "800", "--max-retries", "1",
            "--host-timeout", "15s", "-e", ATTACKER_IF, "-S", "{src}", "{dst}",
        ],
    },
];

fn time_to_alert() {
    println!("== time from attack start to the alert on the WebSocket ({RUNS} runs per class, fresh daemon each, start phases spread over the 1 s tick)");
    let mut all_ok = true;
    for (ci, a) in ATTACKS.iter().enumerate() {
        let mut times = Vec::new();
        for run in 0..RUNS {
            match one_run(a, ci * RUNS + run) {
                Ok(t) => times.push(t),
                Err(e) => {
                    all_ok = false;
                    println!("   {}: run {}: {e}", a.class, run + 1);
                }
            }
        }
        let ms: Vec<String> = times.iter().map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0)).collect();
        times.sort();
        let median = times.get(times.len() / 2).map(|t| t.as_secs_f64() * 1000.0);
        let worst = times.last().map_or(0.0, |t| t.as_secs_f64() * 1000.0);
        match median {
            Some(m) => println!(
                "   {:<11} median {m:>5.0} ms (goal < 1000 ms: {:.2}×), worst {worst:.0} ms; runs in order: {} ms",
                a.class,
                m / 1000.0,
                ms.join(", ")
            ),
            None => println!("   {:<11} no alert in any run", a.class),
        }
    }
    if !all_ok {
        println!("   (some runs raised no alert within {GIVE_UP:?}; see above)");
    }
}

/// One attack against a fresh daemon: the time from spawning the tool to the first alert of the
/// attack's class about the attacker's address.
fn one_run(a: &Attack, n: usize) -> Result<Duration, String> {
    let lab = NetnsPair::new(&format!("bd{n}"));
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let daemon = Daemon::start(&lab, state.path(), API, TOKEN, &[]);
    let alerts = ws_alerts(&lab.sensor);
    let src = ATTACKER_V4[n % 2].to_string();
    let dst = SENSOR_V4.to_string();
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
    let result = loop {
        let left = GIVE_UP.saturating_sub(t0.elapsed());
        match alerts.recv_timeout(left) {
            Ok((at, v)) if v["class"] == a.class && v["src_ip"] == src.as_str() => break Ok(at - t0),
            Ok(_) => continue,
            Err(_) => break Err(format!("no {} alert within {GIVE_UP:?}", a.class)),
        }
    };
    let _ = tool.kill();
    let _ = tool.wait();
    drop(daemon);
    result
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

/// A WebSocket client in the sensor namespace; every alert it receives goes to the channel with its
/// arrival time. Returns once connected.
fn ws_alerts(ns: &str) -> mpsc::Receiver<(Instant, Value)> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    thread::spawn(move || {
        let _inside = netns::enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
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
                    && v["type"] == "alert"
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
