//! Datapath cost in ns/packet, as ratios to a trivial XDP_PASS program measured in the same process.
//!
//! `cargo run --release -p netguard-tests --bin netguard-bench [-- --repeat N --rounds N --new-flows N]`
//!
//! Method (why each figure is honest):
//! - Steady-state cases (baseline, established flow, blocklist drop, pass with 1M entries) use
//!   BPF_PROG_TEST_RUN with a large `repeat`; the kernel returns the average per run. Several rounds,
//!   median reported.
//! - A "new flow" cannot be measured with `repeat`: the same frame is new only on its first run. So
//!   every new-flow figure runs N distinct frames once each (`repeat = 1`) and reports the median of
//!   the kernel's per-run times. A single run carries fixed timer overhead and a cache cooled by the
//!   syscall around it, so the trivial program and an established flow are measured the SAME way on
//!   the same frames, and new-flow ratios are against that repeat=1 baseline, never the hot loop's.
//! - New flows emit ring-buffer events; the daemon would drain them, so the bench drains between
//!   batches (outside the timed region). The per-CPU event budget still applies, so the report says
//!   how many events were sent, skipped over budget, or lost to a full ring buffer.

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use netguard_common::{Counter, Counters};
use netguard_tests::frames::{FrameSpec, L4};
use netguard_tests::prefixes::{
    HOSTS, PrefixIndex, first_uncovered, inside_but_not_host, million_v4,
};
use netguard_user::datapath::{Datapath, DatapathConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const SENSOR: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
const GOAL_PASS: f64 = 2.5;
const GOAL_DROP: f64 = 2.0;
const XDP_FILTER_REF: f64 = 4.5;

struct Args {
    repeat: u32,
    rounds: usize,
    new_flows: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        repeat: 1_000_000,
        rounds: 5,
        new_flows: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--repeat" => a.repeat = val()?.parse()?,
            "--rounds" => a.rounds = val()?.parse()?,
            "--new-flows" => a.new_flows = val()?.parse()?,
            "-h" | "--help" => {
                println!("netguard-bench [--repeat N] [--rounds N] [--new-flows N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn udp_from(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    FrameSpec::v4(src, SENSOR, L4::Udp { sport, dport: 53 })
        .payload(&[0; 18])
        .build()
        .bytes
}

fn tcp_ack_from(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    FrameSpec::v4(
        src,
        SENSOR,
        L4::Tcp {
            sport,
            dport: 443,
            flags: 0x10,
        },
    )
    .payload(&[0; 6])
    .build()
    .bytes
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Median over rounds of the kernel's per-run average, checking the verdict every round.
fn hot(rounds: usize, want: u32, mut f: impl FnMut() -> Result<(u32, Duration)>) -> Result<f64> {
    let mut v = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (action, d) = f()?;
        if action != want {
            bail!("verdict {action}, expected {want}");
        }
        v.push(ns(d));
    }
    Ok(median(v))
}

/// N distinct source address/port pairs: every frame is a flow the table has never seen. Sources the
/// blocklist covers are skipped, so every frame takes the new-flow PASS path.
fn distinct_frames(n: usize, salt: u8, blocked: Option<&PrefixIndex>) -> Vec<Vec<u8>> {
    (0..)
        .map(|i: usize| {
            (
                Ipv4Addr::new(10, 100 + salt, (i >> 16) as u8, (i >> 8) as u8),
                i,
            )
        })
        .filter(|(src, _)| blocked.is_none_or(|b| b.longest_match(*src).is_none()))
        .map(|(src, i)| udp_from(src, 1024 + (i & 0xff) as u16))
        .take(n)
        .collect()
}

/// Result of a repeat=1 sweep: medians of the baseline, netguard on the new frames, and netguard on
/// one established frame, all timed the same way.
struct Sweep {
    baseline: f64,
    new_flow: f64,
    established: f64,
}

fn sweep(dp: &mut Datapath, frames: &[Vec<u8>], established: &[u8]) -> Result<Sweep> {
    let (mut b, mut n, mut e) = (Vec::new(), Vec::new(), Vec::new());
    for (i, f) in frames.iter().enumerate() {
        // Interleaved, so all three see the same machine conditions.
        b.push(ns(dp.baseline_test_run_repeat(f, 1)?.1));
        let (action, d) = dp.test_run_repeat(f, 1)?;
        if action != XDP_PASS {
            bail!("new flow frame {i} got verdict {action}");
        }
        n.push(ns(d));
        e.push(ns(dp.test_run_repeat(established, 1)?.1));
        if i % 1024 == 1023 {
            dp.drain_events(usize::MAX)?; // what the daemon's reader does, outside the timed region
        }
    }
    dp.drain_events(usize::MAX)?;
    Ok(Sweep {
        baseline: median(b),
        new_flow: median(n),
        established: median(e),
    })
}

fn event_report(label: &str, before: &Counters, after: &Counters) {
    let d = |c| after.get(c) - before.get(c);
    println!(
        "  during {label}: events sent {}, over budget {}, ring buffer full {}; flows created {}, \
         flow inserts failed {}",
        d(Counter::EventsSent),
        d(Counter::EventsOverBudget),
        d(Counter::RingbufReserveFailed),
        d(Counter::FlowsCreated),
        d(Counter::FlowInsertFailed)
    );
    if d(Counter::RingbufReserveFailed) > 0 {
        println!("  NOTE: the ring buffer filled; those runs measured the reserve-failed path");
    }
}

fn row(label: &str, v: f64, base: f64, goal: Option<f64>) {
    let ratio = v / base;
    let verdict = match goal {
        Some(g) if ratio <= g => format!("goal <= {g}x: met"),
        Some(g) => format!("goal <= {g}x: MISSED"),
        None => String::new(),
    };
    println!("{label:<52} {v:>8.1} ns {ratio:>7.2}x  {verdict}");
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("netguard-bench loads BPF programs: run it as root (cargo xtask bench does)");
    }
    let (rep, rounds) = (args.repeat, args.rounds);
    // Production map sizes (1M-entry blocklist and flow table): the bench measures what ships.
    let cfg = DatapathConfig::default();
    let mut dp = Datapath::load(&cfg).context("loading the datapath")?;

    println!("NetGuard datapath benchmark: BPF_PROG_TEST_RUN, one process, default map sizes");
    println!(
        "steady-state cases: repeat {rep} x {rounds} rounds, median of the per-run averages\n"
    );

    let est = tcp_ack_from(Ipv4Addr::new(10, 213, 1, 2), 40000);
    let base = hot(rounds, XDP_PASS, || {
        Ok(dp.baseline_test_run_repeat(&est, rep)?)
    })?;
    dp.test_run(&est)?; // the flow now exists: every timed run below takes the "known flow" path
    dp.drain_events(usize::MAX)?;
    let c0 = dp.counters()?;
    let pass_empty = hot(rounds, XDP_PASS, || Ok(dp.test_run_repeat(&est, rep)?))?;

    println!("{:<52} {:>11} {:>8}", "case", "ns/packet", "ratio");
    row("trivial XDP_PASS (baseline)", base, base, None);
    row(
        "established IPv4 TCP flow, pass (empty lists)",
        pass_empty,
        base,
        Some(GOAL_PASS),
    );

    // Blocklist at full size.
    let nets = million_v4();
    let t = Instant::now();
    let n = dp.block_insert_many(&nets)?;
    let fill = t.elapsed();
    // Two drop cases: a source that is itself a /32 entry, and one that only a /16 covers (the
    // longest-prefix path through the trie), since an implementation may treat them differently.
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("the million set is IPv4"),
    };
    let host_frame = tcp_ack_from(v4(nets[HOSTS / 2].addr()), 40000);
    let drop_host = hot(rounds, XDP_DROP, || {
        Ok(dp.test_run_repeat(&host_frame, rep)?)
    })?;
    let in_16 = v4(inside_but_not_host(&nets, nets[nets.len() - 1]));
    let prefix_frame = tcp_ack_from(in_16, 40000);
    let drop_prefix = hot(rounds, XDP_DROP, || {
        Ok(dp.test_run_repeat(&prefix_frame, rep)?)
    })?;
    // Two passing sources: one whose /16 shares no prefix with the list (the kernel skips the prefix
    // trie thanks to its /16 bitmap), and one in a /16 that some /24 or /16 overlaps (it pays the
    // trie walk). With this list about 15% of all /16s are in the second group.
    let quiet = quiet_slash16_source(&nets);
    let quiet_frame = tcp_ack_from(quiet, 40002);
    dp.test_run(&quiet_frame)?;
    let pass_quiet = hot(rounds, XDP_PASS, || {
        Ok(dp.test_run_repeat(&quiet_frame, rep)?)
    })?;
    let free = first_uncovered(&nets, Ipv4Addr::new(10, 213, 1, 2));
    let pass_frame = tcp_ack_from(free, 40001);
    dp.test_run(&pass_frame)?;
    dp.drain_events(usize::MAX)?;
    let pass_1m = hot(rounds, XDP_PASS, || {
        Ok(dp.test_run_repeat(&pass_frame, rep)?)
    })?;
    row(
        "blocklisted /32 source dropped (1M entries)",
        drop_host,
        base,
        Some(GOAL_DROP),
    );
    row(
        "source inside a blocklisted /16 dropped (1M entries)",
        drop_prefix,
        base,
        Some(GOAL_DROP),
    );
    row(
        "established flow passed, /16 without prefixes (1M)",
        pass_quiet,
        base,
        Some(GOAL_PASS),
    );
    row(
        "established flow passed, /16 shares a prefix (1M)",
        pass_1m,
        base,
        Some(GOAL_PASS),
    );
    event_report("steady-state cases", &c0, &dp.counters()?);

    // New flows, repeat=1 method, against the baseline timed the same way.
    println!(
        "\nnew flows: {} distinct frames, each run once (repeat=1); medians of kernel per-run times",
        args.new_flows
    );
    let index = PrefixIndex::new(&nets);
    let c1 = dp.counters()?;
    let s = sweep(
        &mut dp,
        &distinct_frames(args.new_flows, 0, Some(&index)),
        &pass_frame,
    )?;
    row(
        "trivial XDP_PASS, repeat=1 (baseline for this part)",
        s.baseline,
        s.baseline,
        None,
    );
    row(
        "established flow, repeat=1 (method overhead check)",
        s.established,
        s.baseline,
        None,
    );
    row(
        "new flow, 1M-entry LRU not full, default budget",
        s.new_flow,
        s.baseline,
        Some(GOAL_PASS),
    );
    event_report("new flows", &c1, &dp.counters()?);

    // Worst case for new flows: a full LRU (every insert evicts) and every event sent, with the same
    // million-entry blocklist so that only the flow table and the budget differ from the row above.
    let worst_cfg = DatapathConfig {
        flows_max: 4096,
        event_budget_per_ms: u32::MAX / 2,
        ..DatapathConfig::default()
    };
    let mut worst = Datapath::load(&worst_cfg).context("loading the evicting datapath")?;
    worst.block_insert_many(&nets)?;
    let warm = distinct_frames(4096, 1, Some(&index));
    for f in &warm {
        worst.test_run(f)?; // fill the LRU so the sweep below evicts on every insert
    }
    worst.drain_events(usize::MAX)?;
    let w0 = worst.counters()?;
    let est2 = &warm[warm.len() - 1];
    let s2 = sweep(
        &mut worst,
        &distinct_frames(args.new_flows, 2, Some(&index)),
        est2,
    )?;
    row(
        "new flow, full 4096-entry LRU (evicts), no event cap",
        s2.new_flow,
        s2.baseline,
        Some(GOAL_PASS),
    );
    event_report("evicting new flows", &w0, &worst.counters()?);

    println!(
        "\nblocklist fill: {n} entries in {fill:.2?} ({:.0}/s)",
        n as f64 / fill.as_secs_f64()
    );
    println!("goals: pass <= {GOAL_PASS}x, drop <= {GOAL_DROP}x the trivial program;");
    println!("reference: xdp-filter costs about {XDP_FILTER_REF}x the trivial program.");
    Ok(())
}

/// An address whose /16 overlaps no prefix shorter than /32 in `nets`, searched from 10.214.0.1.
fn quiet_slash16_source(nets: &[IpNet]) -> Ipv4Addr {
    let mut busy = vec![false; 1 << 16];
    for n in nets {
        if let IpNet::V4(n) = n
            && n.prefix_len() < 32
        {
            let first = (u32::from(n.network()) >> 16) as usize;
            let span = 1usize << (16 - n.prefix_len().min(16));
            busy[first..first + span].iter_mut().for_each(|b| *b = true);
        }
    }
    let start = (10usize << 8) | 214;
    let bucket = (start..start + (1 << 16))
        .map(|b| b & 0xffff)
        .find(|b| !busy[*b])
        .expect("some /16 has no prefix");
    Ipv4Addr::from(((bucket as u32) << 16) | 1)
}
