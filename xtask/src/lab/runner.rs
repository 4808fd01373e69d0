//! Runs one scenario: a fresh daemon, the benign background, a warm-up, the scenario's tools (all
//! bounded), a cool-down, the daemon's clean stop, then the record's conversion to a labelled file.
//!
//! Timeline (wall clock, which is what the record's ts_ms uses):
//!   daemon healthy -> mix starts -> WARMUP -> window opens, tools start -> all tools ended (and `hold`
//!   passed) -> window closes, mix stops -> COOLDOWN -> SIGINT to the daemon.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::manifest::Outcome;
use super::procs::{self, Proc};
use super::record::{self, LabelRule, Schema, Window};
use super::scenarios::{Scenario, Step};
use super::sensor::{DaemonFlags, Sensor};
use super::services::Files;
use super::{addrs, topology};
use crate::util;

pub struct Ctx<'a> {
    pub bin: &'a Path,
    pub flags: DaemonFlags,
    pub work: &'a Path,
    pub out: &'a Path,
    pub files: &'a Files,
    pub warmup: Duration,
    pub cooldown: Duration,
    /// Most rows of spoofed sources kept per scenario (0: all); see `record::spoof_keep`.
    pub spoof_cap: u64,
    pub started: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A step started in its namespace, after pointing the namespace's route at the step's source.
fn start(step: &Step, log: &Path) -> Result<Proc> {
    topology::set_source(step.host.ns, step.src)?;
    Proc::spawn(step.host.ns, &step.argv, step.limit, log)
}

/// Runs the scenario and returns its outcome; `schema` is the first scenario's record schema, which
/// every later one must match. Errors only for interrupts and lab breakage, not for a failing tool.
pub fn run(ctx: &Ctx, sc: &Scenario, schema: &mut Option<Schema>) -> Result<Outcome> {
    let begin = Instant::now();
    let logs = ctx.work.join("logs").join(&sc.name);
    std::fs::create_dir_all(&logs)?;
    let record_path = ctx.work.join("records").join(format!("{}.csv", sc.name));
    let mut outcome = Outcome {
        name: sc.name.clone(),
        class: sc.class,
        params: sc.params.clone(),
        took: Duration::ZERO,
        window: Duration::ZERO,
        counts: None,
        notes: Vec::new(),
        failed: false,
    };

    let sensor = Sensor::start(
        ctx.bin,
        ctx.flags,
        &ctx.work.join("state").join(&sc.name),
        &record_path,
        &ctx.files.sshd_log,
        &logs.join("netguard.log"),
    )?;
    let mut mixes = Vec::new();
    for (i, step) in sc.background.steps(ctx.files).iter().enumerate() {
        mixes.push(start(
            step,
            &logs.join(format!("mix{}-{}.log", i + 1, step.host.ns)),
        )?);
    }
    procs::sleep(ctx.warmup)?;

    let from_ms = now_ms();
    let window_start = Instant::now();
    let mut running: Vec<(usize, Proc)> = Vec::new();
    for (i, step) in sc.steps.iter().enumerate() {
        let log = logs.join(format!("step{}-{}.log", i + 1, step.argv[0]));
        running.push((i, start(step, &log)?));
    }
    let mut last_tick = Instant::now();
    while !running.is_empty() || window_start.elapsed() < sc.hold {
        let mut still = Vec::new();
        for (i, mut p) in running {
            match p.poll()? {
                Some(st) => judge(&sc.steps[i], i, st, &logs, &mut outcome),
                None => still.push((i, p)),
            }
        }
        running = still;
        if last_tick.elapsed() >= Duration::from_secs(10) {
            last_tick = Instant::now();
            println!(
                "    ... {:.0} s into the window, {} tool(s) still running",
                window_start.elapsed().as_secs_f64(),
                running.len()
            );
        }
        procs::sleep(Duration::from_millis(100))?;
    }
    let to_ms = now_ms();
    outcome.window = window_start.elapsed();
    for mut m in mixes {
        m.stop(Duration::from_secs(2));
    }

    procs::sleep(ctx.cooldown)?;
    match sensor.stop() {
        Ok(st) if st.success() => {}
        Ok(st) => outcome.notes.push(format!("netguard exited {st}")),
        Err(e) => outcome.notes.push(format!("{e}")),
    }
    outcome.took = begin.elapsed();

    if !ctx.flags.record_features {
        outcome
            .notes
            .push("not recorded: this netguard has no --record-features".into());
    } else if outcome.failed {
        outcome
            .notes
            .push("no data file written (a tool failed)".into());
    } else {
        let window = Window { from_ms, to_ms };
        match convert(ctx, sc, &record_path, window, schema) {
            Ok(c) => outcome.counts = Some(c),
            Err(e) => {
                outcome.failed = true;
                outcome.notes.push(format!("conversion failed: {e:#}"));
            }
        }
    }
    Ok(outcome)
}

/// Records a step's exit in the outcome: reaching the time bound is normal for some tools and only
/// noted; any other unexpected status fails the scenario, since its data would not show the attack.
fn judge(step: &Step, i: usize, st: std::process::ExitStatus, logs: &Path, o: &mut Outcome) {
    let code = st.code().unwrap_or(-1);
    let tool = &step.argv[0];
    if procs::TIMED_OUT.contains(&code) {
        o.notes.push(format!(
            "step {} ({tool}) stopped at its {} s bound",
            i + 1,
            step.limit.as_secs()
        ));
    } else if let Some(ok) = step.ok
        && !ok.contains(&code)
    {
        o.failed = true;
        o.notes.push(format!(
            "step {} ({tool}) exited {code}; see {}",
            i + 1,
            logs.join(format!("step{}-{tool}.log", i + 1)).display()
        ));
    }
}

fn convert(
    ctx: &Ctx,
    sc: &Scenario,
    record_path: &Path,
    window: Window,
    schema: &mut Option<Schema>,
) -> Result<record::Counts> {
    let rule = LabelRule {
        class: sc.class,
        benign: addrs::of_role(addrs::Role::Benign).into_iter().collect(),
        attackers: sc.attackers(),
        known: addrs::all().into_iter().collect(),
        spoofed: sc.spoofed,
    };
    let open = || {
        File::open(record_path)
            .map(BufReader::new)
            .with_context(|| format!("no record at {}", record_path.display()))
    };
    let keep = record::spoof_keep(open()?, &rule, window, ctx.spoof_cap)?;
    let input = open()?;
    let out_path: PathBuf = ctx.out.join(format!("{}.csv", sc.name));
    let out = File::create(&out_path)
        .with_context(|| format!("could not create {}", out_path.display()))?;
    let result = record::convert(input, BufWriter::new(out), &rule, window, keep);
    let (got, counts) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&out_path);
            return Err(e.context(format!("record {}", record_path.display())));
        }
    };
    match schema {
        Some(first) if *first != got => {
            let _ = std::fs::remove_file(&out_path);
            anyhow::bail!(
                "its header differs from the first scenario's (`{}` vs `{}`)",
                got.header,
                first.header
            );
        }
        Some(_) => {}
        None => *schema = Some(got),
    }
    Ok(counts)
}

/// The progress line's summary of an outcome.
pub fn summary(o: &Outcome) -> String {
    let mut s = format!(
        "took {} (window {})",
        util::secs(o.took),
        util::secs(o.window)
    );
    if let Some(c) = &o.counts {
        let per: Vec<String> = c
            .per_label
            .iter()
            .map(|(l, n)| format!("{} {n}", l.as_str()))
            .collect();
        s.push_str(&format!(
            "; rows: {} (dropped: warm-up {}, cool-down {}, infra {}, unexpected {}, spoofed over the cap {})",
            if per.is_empty() {
                "none".to_string()
            } else {
                per.join(", ")
            },
            c.warmup,
            c.cooldown,
            c.infrastructure,
            c.unexpected,
            c.sampled_out
        ));
        if !c.unexpected_examples.is_empty() {
            s.push_str(&format!(" e.g. {}", c.unexpected_examples.join(" ")));
        }
    }
    if o.failed {
        s.push_str("; FAILED");
    }
    for n in &o.notes {
        s.push_str(&format!("\n      note: {n}"));
    }
    s
}

/// "12m03s" style, for elapsed-time progress.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

pub fn elapsed(ctx: &Ctx) -> String {
    clock(ctx.started.elapsed())
}
