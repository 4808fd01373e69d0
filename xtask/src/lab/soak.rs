//! `cargo xtask lab --soak 10m`: the benign families, interleaved, against ONE daemon that is not in
//! dry-run and runs the shipped model, as a user would leave it: every alert and every block it makes
//! during the soak is a false positive. The benchmark's goal is 0 and 0.
//!
//! The order is a seeded shuffle of the plan's benign scenarios, repeated until the time is up, so
//! families follow each other from the same hosts (a bulk transfer, then page loads, then voice...) and
//! each source's windows see them in sequence. Every tool is the lab's own bounded step.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::addrs::SENSOR;
use super::procs::{self, Proc};
use super::record::Label;
use super::runner::{self, Ctx};
use super::scenarios::Scenario;
use super::sensor::{DaemonFlags, LISTEN, Sensor};
use super::topology;
use crate::util;

/// What a soak saw: the families it ran and what the daemon did about them.
pub struct SoakReport {
    pub took: Duration,
    /// (scenario, seconds it ran), in order.
    pub runs: Vec<(String, f64)>,
    pub alerts: Vec<Value>,
    pub blocks: Vec<Value>,
}

/// A small seeded shuffle (xorshift), so a soak's order is reproducible from its seed.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        idx.swap(i, (x % (i as u64 + 1)) as usize);
    }
    idx
}

fn api_get(token: &str, path: &str) -> Result<Value> {
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("http://{LISTEN}{path}");
    let body = procs::output(
        SENSOR.ns,
        &["curl", "-sf", "--max-time", "5", "-H", &auth, &url],
        Duration::from_secs(8),
    )?;
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
}

/// Runs one benign scenario's own steps, with its background alongside, until the steps end (each is
/// bounded) and its hold has passed.
fn run_one(ctx: &Ctx, sc: &Scenario, logs: &Path) -> Result<()> {
    std::fs::create_dir_all(logs)?;
    let spawn = |tag: &str, i: usize, step: &super::scenarios::Step| -> Result<Proc> {
        topology::set_source(step.host.ns, step.src)?;
        Proc::spawn(
            step.host.ns,
            &step.argv,
            step.limit,
            &logs.join(format!("{tag}{i}.log")),
        )
    };
    let mut background = Vec::new();
    for (i, step) in sc.background.steps(ctx.files).iter().enumerate() {
        background.push(spawn("mix", i, step)?);
    }
    let mut own = Vec::new();
    for (i, step) in sc.steps.iter().enumerate() {
        own.push(spawn("step", i, step)?);
    }
    let start = Instant::now();
    // A finished step is polled no more (its status was reaped).
    let mut done = vec![false; own.len()];
    loop {
        for (p, d) in own.iter_mut().zip(done.iter_mut()) {
            if !*d && p.poll()?.is_some() {
                *d = true;
            }
        }
        if done.iter().all(|d| *d) && start.elapsed() >= sc.hold {
            break;
        }
        procs::sleep(Duration::from_millis(200))?;
    }
    for p in &mut background {
        p.stop(Duration::from_secs(2));
    }
    Ok(())
}

/// Runs the benign scenarios of `plan`, shuffled by `seed`, for at least `length` (or until `rounds`
/// rounds are done), against one daemon with blocking on; returns what it alerted and blocked.
pub fn run(
    ctx: &Ctx,
    plan: &[Scenario],
    length: Duration,
    seed: u64,
    rounds: Option<u64>,
) -> Result<SoakReport> {
    let benign: Vec<&Scenario> = plan.iter().filter(|s| s.class == Label::Benign).collect();
    anyhow::ensure!(
        !benign.is_empty(),
        "the plan has no benign scenario to soak"
    );
    let state = ctx.work.join("state").join("soak");
    let _ = std::fs::remove_dir_all(&state);
    let logs = ctx.work.join("logs").join("soak");
    std::fs::create_dir_all(&logs)?;
    let flags = DaemonFlags {
        record_features: false,
        dry_run: false,
        ..ctx.flags
    };
    let sensor = Sensor::start(
        ctx.bin,
        flags,
        &state,
        &logs.join("unused.csv"),
        &ctx.files.sshd_log,
        &logs.join("netguard.log"),
    )?;
    let begin = Instant::now();
    let mut runs = Vec::new();
    let mut round = 0u64;
    'soak: loop {
        for i in shuffled(benign.len(), seed.wrapping_add(round)) {
            if begin.elapsed() >= length {
                break 'soak;
            }
            let sc = benign[i];
            let t0 = Instant::now();
            util::say(
                "soak",
                format!(
                    "{} (round {}, {} of {} min)",
                    sc.name,
                    round + 1,
                    begin.elapsed().as_secs() / 60,
                    length.as_secs() / 60
                ),
            );
            run_one(ctx, sc, &logs.join(format!("{}-{round}", sc.name)))?;
            runs.push((sc.name.clone(), t0.elapsed().as_secs_f64()));
        }
        round += 1;
        if rounds.is_some_and(|r| round >= r) {
            break;
        }
    }
    // The last windows close within a tick or two.
    procs::sleep(Duration::from_secs(3))?;
    let token = std::fs::read_to_string(state.join("admin.token"))
        .context("the soak daemon's admin token")?;
    let alerts = api_get(token.trim(), "/api/v1/alerts?limit=1000")?
        .as_array()
        .cloned()
        .unwrap_or_default();
    let blocks = api_get(token.trim(), "/api/v1/blocklist?limit=1000")?
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = sensor.stop();
    Ok(SoakReport {
        took: begin.elapsed(),
        runs,
        alerts,
        blocks,
    })
}

/// The report as the bench prints it.
pub fn print(r: &SoakReport) {
    let mut by_family: std::collections::BTreeMap<&str, (u32, f64)> = Default::default();
    for (name, secs) in &r.runs {
        let e = by_family.entry(name).or_default();
        e.0 += 1;
        e.1 += secs;
    }
    println!(
        "== benign soak: {} of everyday families interleaved, one daemon, blocking on, shipped model",
        runner::clock(r.took)
    );
    for (name, (n, secs)) in &by_family {
        println!("   {name:<32} {n:>2} run(s), {secs:>5.0} s");
    }
    println!(
        "   alerts: {} (goal 0), blocks: {} (goal 0)",
        r.alerts.len(),
        r.blocks.len()
    );
    for a in &r.alerts {
        println!(
            "   alert: {} from {} ({}, risk {}, {})",
            a["class"].as_str().unwrap_or("?"),
            a["src_ip"].as_str().unwrap_or("?"),
            a["evidence"]["rule"].as_str().unwrap_or("?"),
            a["risk"],
            a["action"].as_str().unwrap_or("?")
        );
    }
    for b in &r.blocks {
        println!(
            "   block: {} ({})",
            b["cidr"].as_str().unwrap_or("?"),
            b["reason"].as_str().unwrap_or("")
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shuffle_is_a_reproducible_permutation() {
        let a = super::shuffled(12, 7);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>());
        assert_eq!(a, super::shuffled(12, 7));
        assert_ne!(a, super::shuffled(12, 8));
    }
}
