//! Restart benchmark: 20 restarts of the real daemon (alternating SIGTERM and SIGKILL) while a blocked
//! source floods the sensor with ICMP echo requests (hping3, 5000/s, bounded), in a project-made
//! namespace pair.
//!
//! Reports the packets of the blocked source that got through (replies; goal 0), whether the
//! blocklist hit counter accounts for every packet sent, and the time from exec of the new daemon to
//! the pinned link running its new program (the swap), as median and worst.

use std::{
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{HashMap, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use netguard_common::BlockValue;
use netguard_tests::{
    daemon::{Daemon, Launch},
    netns::{
        ATTACKER_V4, NetnsPair, SENSOR_IF, SENSOR_V4, bpffs_for, parse_ping, require_root,
        require_tool,
    },
};

const TOKEN: &str = "bench-restart-admin-token-0123456789";
const API: &str = "127.0.0.1:9781";
const RESTARTS: usize = 20;

fn link_prog(dir: &std::path::Path) -> Option<u32> {
    let link = PinnedLink::from_pin(dir.join("link")).ok()?;
    FdLink::from(link).info().ok().map(|i| i.program_id())
}

fn hits(dir: &std::path::Path, ip: Ipv4Addr) -> Result<u64> {
    let data = MapData::from_pin(dir.join("BLOCK_HOST_V4")).context("pinned host table")?;
    let map: HashMap<MapData, [u8; 4], BlockValue> = HashMap::try_from(Map::HashMap(data))?;
    Ok(map.get(&ip.octets(), 0)?.hits)
}

fn main() -> Result<()> {
    if !require_root() || !require_tool("hping3") {
        return Ok(());
    }
    let lab = NetnsPair::new("bench-restart");
    let state = tempfile::tempdir()?;
    let dir = bpffs_for(&lab.sensor).join("netguard").join(SENSOR_IF);
    let blocked = ATTACKER_V4[1];
    let mut d = Daemon::start(&lab, state.path(), API, TOKEN, &[]);
    let (code, body) = d.post(
        "/api/v1/blocklist",
        &format!(r#"{{"cidr":"{blocked}/32"}}"#),
    );
    if code != 200 && code != 201 {
        bail!("block: {code} {body}");
    }
    let hits_before = hits(&dir, blocked)?;

    // The flood: hping3 ICMP echo requests from the blocked address, one per 200 µs, bounded in
    // count (at most 60 s of it); stopped with SIGINT (hping3 then prints its statistics) once the
    // restarts are done. `ip netns exec` execs hping3, so the child is hping3 itself.
    let count = 300_000u32;
    let flood: Child = Command::new("ip")
        .args(["netns", "exec", &lab.attacker])
        .args(["hping3", "-1", "-i", "u200", "-c"])
        .arg(count.to_string())
        .args(["-a", &blocked.to_string(), &SENSOR_V4.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("hping3 starts")?;
    std::thread::sleep(Duration::from_millis(300));

    let mut swaps = Vec::with_capacity(RESTARTS);
    for i in 0..RESTARTS {
        let before = link_prog(&dir).context("no pinned link")?;
        if i % 2 == 0 {
            let (st, log) = d.stop();
            if !st.success() {
                bail!("daemon exit {st}: {log}");
            }
        } else {
            d.kill();
        }
        // The swap instant is found by polling the pinned link from a thread, so the daemon's
        // health wait (launch returns once /health answers) does not count.
        let exec = Instant::now();
        let (next, swapped) = std::thread::scope(|s| {
            let poll = s.spawn(|| {
                while exec.elapsed() < Duration::from_secs(30) {
                    if link_prog(&dir).is_some_and(|p| p != before) {
                        return Some(exec.elapsed());
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                None
            });
            let next = Daemon::launch(
                &lab.sensor,
                SENSOR_IF,
                state.path(),
                API,
                TOKEN,
                &[],
                Launch::default(),
            );
            (next, poll.join().expect("poller"))
        });
        d = next;
        swaps.push(swapped.with_context(|| format!("restart {i}: the program was not swapped"))?);
    }
    swaps.sort();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid, not yet waited for.
    unsafe { libc::kill(flood.id() as i32, libc::SIGINT) };
    let out = flood.wait_with_output()?;
    // hping3 spells it "packets tramitted"; its statistics go to stderr.
    let text = String::from_utf8_lossy(&out.stderr).replace("tramitted", "transmitted")
        + &String::from_utf8_lossy(&out.stdout);
    let stats = parse_ping(&text).with_context(|| format!("no hping3 statistics in: {text}"))?;
    let hits_after = hits(&dir, blocked)?;
    let (st, log) = d.stop();
    if !st.success() {
        bail!("daemon exit {st}: {log}");
    }
    netguard_tests::daemon::detach(&lab.sensor, SENSOR_IF);
    println!(
        "restart bench: {RESTARTS} restarts (SIGTERM/SIGKILL alternating) under a blocked ICMP flood (hping3, 5000/s)"
    );
    println!(
        "  blocked packets sent {}, got through (replies) {} (goal 0), blocklist hits {} ({})",
        stats.transmitted,
        stats.received,
        hits_after - hits_before,
        if hits_after - hits_before == u64::from(stats.transmitted) {
            "every packet accounted for"
        } else {
            "MISMATCH"
        }
    );
    println!(
        "  exec to enforcing with the new program (link swap): median {:.0} ms, worst {:.0} ms",
        swaps[swaps.len() / 2].as_secs_f64() * 1e3,
        swaps[swaps.len() - 1].as_secs_f64() * 1e3
    );
    if stats.received > 0 {
        bail!("{} blocked packets got through", stats.received);
    }
    Ok(())
}
