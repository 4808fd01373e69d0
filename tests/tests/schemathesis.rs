//! Property-based testing of the whole REST API against its own OpenAPI document with Schemathesis:
//! generated requests (valid and invalid) against a real stack, with every check on: no 5xx, every
//! status, content type, header and body as documented, invalid input rejected, auth enforced.
//!
//! Schemathesis lives in a venv under the target dir. `cargo xtask setup` creates it; this test creates
//! it too when it is missing:
//!     python3 -m venv target/schemathesis-venv
//!     target/schemathesis-venv/bin/pip install schemathesis==4.32.5
//! `NETGUARD_SCHEMATHESIS=/path/to/schemathesis` uses another installation.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netguard_tests::{
    api_stack::{OPERATOR, Stack, StackOptions},
    netns::{NetnsPair, SENSOR_IF, require_root, require_tool},
};
use netguard_user::datapath::AttachMode;

pub const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Test cases per operation; enough to hit every parameter's edge cases, bounded in time.
const MAX_EXAMPLES: &str = "50";
/// Hard bound on the whole run.
const RUN_LIMIT: Duration = Duration::from_secs(170);

/// `<target dir>/schemathesis-venv`: CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("schemathesis-venv")
}

fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The schemathesis executable, installing the pinned version into the venv when needed.
fn schemathesis() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NETGUARD_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let venv = venv_dir();
    let bin = venv.join("bin").join("schemathesis");
    let pinned = || {
        Command::new(venv.join("bin").join("python"))
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('schemathesis'))",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == SCHEMATHESIS_VERSION)
    };
    if bin.is_file() && pinned() {
        return Some(bin);
    }
    if !require_tool("python3") {
        return None;
    }
    eprintln!(
        "installing schemathesis {SCHEMATHESIS_VERSION} into {} (once)",
        venv.display()
    );
    must(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    must(
        Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
        ]),
        "pip install schemathesis",
    );
    Some(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_violation() {
    if !require_root() {
        return;
    }
    let Some(st) = tokio::task::spawn_blocking(schemathesis).await.unwrap() else {
        return;
    };
    // Attached in a lab namespace, so that /health is healthy (200) as on a real sensor, and whatever
    // the fuzzer blocks only ever drops traffic inside that namespace.
    let lab = NetnsPair::new("schemathesis");
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StackOptions::default();
    opts.datapath.blocklist_v4_max = 1 << 16;
    opts.datapath.blocklist_v6_max = 1 << 16;
    // A GeoIP database (written by netguard_tests::mmdb), so that /geo-attacks is fuzzed past its
    // documented 503 "geoip_unavailable", like a sensor started with --geoip-db.
    let geo = dir.path().join("GeoLite2-City.mmdb");
    let mut w = netguard_tests::mmdb::Writer::new("GeoLite2-City", 6);
    w.insert(
        "203.0.113.0/24".parse().unwrap(),
        netguard_tests::mmdb::city_record("GB", "United Kingdom", "London"),
    );
    w.write(&geo).expect("write the test GeoIP database");
    opts.api.geoip_db = Some(geo);
    let mut dp = netguard_tests::fixtures::load(&opts.datapath);
    {
        let _in_ns = lab.enter_sensor();
        dp.attach(SENSOR_IF, AttachMode::Skb)
            .expect("attach in the lab namespace");
    }
    let s = Stack::start_with(dp, dir.path(), opts).await;
    let report = dir.path().join("report");
    let mut cmd = Command::new(&st);
    cmd.arg("run")
        .arg(s.url("/openapi.json"))
        // Every check but positive_data_acceptance: a schema-valid string is not necessarily a valid
        // CIDR, duration or sensor id (host bits, allowlist overlap, "4x"), and JSON Schema cannot say
        // so; those refusals are 400s with the field named, which every other check still verifies.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--header", &format!("Authorization: Bearer {OPERATOR}")])
        .args([
            "--seed",
            &std::env::var("NETGUARD_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20240501".into()),
        ])
        // One worker: Python 3.11's `ast` is not thread-safe (CPython gh-106905), and Hypothesis
        // parses lambdas in every worker thread, which fails at random with "AST constructor
        // recursion depth mismatch".
        .args(["--request-timeout", "30", "--workers", "1", "--no-color"])
        .arg("--report-dir")
        .arg(&report)
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("out.txt")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("err.txt")).unwrap(),
        ));
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("run schemathesis");
        // The run is bounded: past the limit the child is killed and the test fails.
        loop {
            if let Some(status) = child.try_wait().expect("wait for schemathesis") {
                return Some(status);
            }
            if started.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    let text = format!("{}{}", read("out.txt"), read("err.txt"));
    eprintln!("schemathesis took {:?}:\n{text}", started.elapsed());
    let status =
        status.unwrap_or_else(|| panic!("schemathesis ran past {RUN_LIMIT:?} and was killed"));
    assert!(
        status.success(),
        "schemathesis found contract violations (exit {:?}); see the output above",
        status.code()
    );
    s.stop().await;
    drop(lab);
}
