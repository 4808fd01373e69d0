//! API benchmark (`cargo run --release -p netguard-tests --bin netguard-bench-api`, as root):
//! 1. one REST bulk POST of 100,000 CIDRs until all are enforced in the kernel and persisted in the
//!    embedded store, against a raw in-process BPF batch update of the same 100,000 CIDRs into a second
//!    datapath measured in the same run (goal: API >= 0.5x raw);
//! 2. single block POST -> enforced in the kernel: p50/p99 over 200 blocks (goal: p99 < 10 ms);
//! 3. WebSocket fan-out to 1,000 clients: delivery latency of a push (event `ts` -> receive), p50/p99;
//! 4. with 1,000,000 blocklist entries loaded: a single block POST -> enforced, and `GET /health`,
//!    p50/p99 without and then during a flood of block hits (`Control::on_block_hit` in a loop from
//!    100 blocked /32s, past their first alert, as the BLOCK_HIT consumer calls it), in the same run.
//!
//! Ratios and percentiles measured in one run, as house style asks; nothing here is asserted.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures_util::StreamExt as _;
use ipnet::{IpNet, Ipv4Net};
use netguard_store::{EntrySource, ListEntry, ListKind, Scope, StoreOptions};
use netguard_tests::{
    api_stack::{OPERATOR, Stack, StackOptions, VIEWER, http},
    fixtures::{SEN, XDP_DROP, tcp},
    frames::FrameSpec,
};
use netguard_user::control::{ControlConfig, EntryRequest};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

const BULK: usize = 100_000;
const BULK_PREFIXES: usize = 1_000;
const SINGLES: usize = 200;
const WS_CLIENTS: usize = 1_000;
const WS_PUSHES: usize = 30;

fn bulk_nets() -> Vec<IpNet> {
    let hosts = (0..BULK - BULK_PREFIXES).map(|i| {
        let i = i as u32;
        IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i + 1)), 32).expect("valid /32"))
    });
    let prefixes = (0..BULK_PREFIXES).map(|i| {
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(0xac10_0000 | ((i as u32) << 8)), 24).expect("valid /24"),
        )
    });
    hosts.chain(prefixes).collect()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// 1,000 clients plus their server sides need more than the usual 1,024 descriptors.
fn raise_fd_limit(want: u64) -> Result<()> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0,
            "getrlimit failed"
        );
        if rl.rlim_cur < want {
            rl.rlim_cur = want.min(rl.rlim_max.max(want));
            rl.rlim_max = rl.rlim_max.max(rl.rlim_cur);
            ensure!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0,
                "setrlimit(NOFILE, {want}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

async fn bulk_apply() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut opts = StackOptions::default();
    opts.datapath.blocklist_v4_max = 1 << 17;
    opts.control = ControlConfig {
        max_bulk: BULK,
        ..opts.control
    };
    let raw_config = opts.datapath.clone();
    let s = Stack::start(dir.path(), opts).await;
    let nets = bulk_nets();
    let body = serde_json::to_vec(
        &nets
            .iter()
            .map(|n| json!({"cidr": n.to_string()}))
            .collect::<Vec<_>>(),
    )?;
    let client = http(Some(OPERATOR));

    let t = Instant::now();
    let resp = client
        .post(s.url("/api/v1/blocklist"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await?;
    let status = resp.status();
    let answer: Value = resp.json().await?;
    let api = t.elapsed();
    ensure!(status == 200, "bulk POST answered {status}: {answer}");
    // Control answers after the kernel and the store have the entries; check both anyway.
    ensure!(
        s.dp.lock().expect("dp").blocklist.len() == BULK,
        "kernel holds {} entries",
        s.dp.lock().expect("dp").blocklist.len()
    );
    let stored = s.control.store().list_entries(ListKind::Block).await?.len();
    ensure!(stored == BULK, "store holds {stored} entries");
    let probe = FrameSpec::v4(Ipv4Addr::new(172, 16, 7, 9), SEN, tcp(1, 80, 2))
        .build()
        .bytes;
    ensure!(
        s.verdict(&probe) == XDP_DROP,
        "a /24 of the bulk is not enforced"
    );
    s.stop().await;

    // The same CIDRs through one BPF batch update into a fresh datapath of the same sizes.
    let mut raw_dp = netguard_tests::fixtures::load(&raw_config);
    let t = Instant::now();
    let n = raw_dp.block_insert_many(&nets)?;
    let raw = t.elapsed();
    ensure!(n == BULK, "raw insert applied {n}");

    // Where the API's time goes: the control plane alone (validation, kernel, store, mirror, push;
    // no HTTP or JSON), and the embedded store's write alone.
    let reqs: Vec<EntryRequest> = nets
        .iter()
        .map(|n| EntryRequest {
            cidr: n.to_string(),
            ..EntryRequest::default()
        })
        .collect();
    let dir2 = tempfile::tempdir()?;
    let mut opts = StackOptions {
        datapath: raw_config.clone(),
        ..StackOptions::default()
    };
    opts.control.max_bulk = BULK;
    let s2 = Stack::start(dir2.path(), opts).await;
    let t = Instant::now();
    s2.control
        .put(ListKind::Block, &reqs, EntrySource::Manual)
        .await?;
    let control = t.elapsed();
    s2.stop().await;
    let dir3 = tempfile::tempdir()?;
    let store = netguard_store::open(&StoreOptions::new(dir3.path(), "bench")).await?;
    let entries: Vec<ListEntry> = nets
        .iter()
        .map(|n| ListEntry::new(*n, Scope::Global))
        .collect();
    let t = Instant::now();
    store.put_entries(ListKind::Block, &entries).await?;
    let store_only = t.elapsed();

    let rate = |d: Duration| BULK as f64 / d.as_secs_f64();
    println!(
        "1. bulk apply of {BULK} CIDRs ({} /32 + {BULK_PREFIXES} /24, {:.1} MB JSON)",
        BULK - BULK_PREFIXES,
        body.len() as f64 / 1e6
    );
    println!(
        "   REST POST -> kernel + embedded store: {} = {:.0} entries/s",
        ms(api),
        rate(api)
    );
    println!(
        "   raw BPF batch update (in process):    {} = {:.0} entries/s",
        ms(raw),
        rate(raw)
    );
    println!(
        "   ratio API/raw: {:.2}x (goal >= 0.5x)",
        rate(api) / rate(raw)
    );
    println!(
        "   where it goes: Control::put in process (no HTTP/JSON) {}; embedded store put_entries alone {}",
        ms(control),
        ms(store_only)
    );
    Ok(())
}

async fn single_blocks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Stack::start(dir.path(), StackOptions::default()).await;
    let client = http(Some(OPERATOR));
    let mut lat = Vec::with_capacity(SINGLES);
    for i in 0..SINGLES {
        let addr = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8);
        let frame = FrameSpec::v4(addr, SEN, tcp(40000, 80, 2)).build().bytes;
        let t = Instant::now();
        let resp = client
            .post(s.url("/api/v1/blocklist"))
            .json(&json!({"cidr": addr.to_string()}))
            .send()
            .await?;
        ensure!(resp.status() == 200, "POST {addr}: {}", resp.status());
        while s.verdict(&frame) != XDP_DROP {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("{addr} not enforced after 5 s");
            }
            tokio::task::yield_now().await;
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("2. single block POST -> XDP_DROP in the kernel, {SINGLES} blocks");
    println!(
        "   p50 {}  p99 {}  max {} (goal p99 < 10 ms)",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().expect("samples"))
    );
    s.stop().await;
    Ok(())
}

async fn ws_fanout() -> Result<()> {
    raise_fd_limit(8192)?;
    let dir = tempfile::tempdir()?;
    let s = Stack::start(dir.path(), StackOptions::default()).await;
    let url = s.ws_url();
    let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        WS_CLIENTS * WS_PUSHES,
    )));
    let mut readers = Vec::with_capacity(WS_CLIENTS);
    let t = Instant::now();
    for _ in 0..WS_CLIENTS {
        let mut req = url.as_str().into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {VIEWER}").parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .context("WebSocket connect")?;
        let lat = lat.clone();
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < WS_PUSHES {
                let Some(Ok(msg)) = ws.next().await else {
                    break;
                };
                let Message::Text(text) = msg else { continue };
                let now = chrono::Utc::now();
                let ev: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                let Some(ts) = ev["ts"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                else {
                    continue;
                };
                let d = (now - ts.with_timezone(&chrono::Utc))
                    .to_std()
                    .unwrap_or_default();
                lat.lock().expect("lat").push(d);
                got += 1;
            }
            got
        }));
    }
    let connect = t.elapsed();
    ensure!(
        Stack::wait_until(Duration::from_secs(10), || s.state.ws_clients()
            == WS_CLIENTS)
        .await,
        "only {} clients connected",
        s.state.ws_clients()
    );
    let client = http(Some(OPERATOR));
    for i in 0..WS_PUSHES {
        let resp = client
            .post(s.url("/api/v1/blocklist"))
            .json(&json!({"cidr": format!("198.19.0.{}", i + 1)}))
            .send()
            .await?;
        ensure!(resp.status() == 200, "POST: {}", resp.status());
        // Let one fan-out finish before the next, so each sample is one push's delivery time.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut complete = 0;
    for r in readers {
        if tokio::time::timeout(Duration::from_secs(20), r)
            .await??
            .eq(&WS_PUSHES)
        {
            complete += 1;
        }
    }
    let mut lat = std::mem::take(&mut *lat.lock().expect("lat"));
    ensure!(!lat.is_empty(), "no push delivered");
    lat.sort();
    println!(
        "3. WebSocket fan-out: {WS_CLIENTS} clients (connected in {}), {WS_PUSHES} pushes",
        ms(connect)
    );
    println!(
        "   delivery (event ts -> client receive): p50 {}  p99 {}  max {}; {complete}/{WS_CLIENTS} clients got all {} samples",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().expect("samples")),
        lat.len()
    );
    s.stop().await;
    Ok(())
}

const MILLION: usize = 1_000_000;
const FLOOD_SOURCES: u32 = 100;

/// Block POST -> XDP_DROP and `GET /health`, `SINGLES` of each, from `first`: (block, health) latencies.
async fn block_and_health(s: &Stack, first: u32) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let client = http(Some(OPERATOR));
    let (mut block, mut health) = (Vec::with_capacity(SINGLES), Vec::with_capacity(SINGLES));
    for i in 0..SINGLES as u32 {
        let addr = Ipv4Addr::from(0xc612_0000 | (first + i));
        let frame = FrameSpec::v4(addr, SEN, tcp(40000, 80, 2)).build().bytes;
        let t = Instant::now();
        let resp = client
            .post(s.url("/api/v1/blocklist"))
            .json(&json!({"cidr": addr.to_string()}))
            .send()
            .await?;
        ensure!(resp.status() == 200, "POST {addr}: {}", resp.status());
        while s.verdict(&frame) != XDP_DROP {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("{addr} not enforced after 5 s");
            }
            tokio::task::yield_now().await;
        }
        block.push(t.elapsed());
        let t = Instant::now();
        let resp = client.get(s.url("/api/v1/health")).send().await?;
        // The bench's datapath is loaded, not attached: /health answers 503 "degraded", with the
        // same work done.
        ensure!(
            matches!(resp.status().as_u16(), 200 | 503),
            "health: {}",
            resp.status()
        );
        resp.bytes().await?;
        health.push(t.elapsed());
    }
    block.sort();
    health.sort();
    Ok((block, health))
}

async fn million_with_hit_flood() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut opts = StackOptions::default();
    opts.datapath.blocklist_v4_max = 1 << 21;
    opts.control.max_bulk = MILLION;
    let s = Stack::start(dir.path(), opts).await;
    // 999,000 /32s in 10.0.0.0/12 and 1,000 /24s in 172.16.0.0/14.
    let reqs: Vec<EntryRequest> = (0..MILLION as u32)
        .map(|i| {
            let cidr = if i < MILLION as u32 - 1_000 {
                format!("{}/32", Ipv4Addr::from(0x0a00_0000 | (i + 1)))
            } else {
                format!("{}/24", Ipv4Addr::from(0xac10_0000 | ((i % 1_000) << 8)))
            };
            EntryRequest {
                cidr,
                ..EntryRequest::default()
            }
        })
        .collect();
    let t = Instant::now();
    s.control
        .put(ListKind::Block, &reqs, EntrySource::Manual)
        .await?;
    let load = t.elapsed();
    drop(reqs);
    let (quiet_block, quiet_health) = block_and_health(&s, 0x100).await?;

    // The flood: as fast as one task can call it (the BLOCK_HIT consumer is one task), yielding
    // between calls so that it shares the two runtime workers with the API like the consumer does.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood = {
        let (control, stop, hits) = (s.control.clone(), stop.clone(), hits.clone());
        tokio::spawn(async move {
            let dst = std::net::IpAddr::V4(SEN);
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let src =
                    std::net::IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i % FLOOD_SOURCES + 1)));
                control.on_block_hit(src, dst, 22, 6).await;
                hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i = i.wrapping_add(7919);
                tokio::task::yield_now().await;
            }
        })
    };
    // Past each source's first hit alert (a store write), so that what is measured is the lookup
    // that every later hit costs.
    let warm = Instant::now();
    while hits.load(std::sync::atomic::Ordering::Relaxed) < 20 * u64::from(FLOOD_SOURCES)
        && warm.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    let h0 = hits.load(std::sync::atomic::Ordering::Relaxed);
    let (flood_block, flood_health) = block_and_health(&s, 0x1000).await?;
    let rate =
        (hits.load(std::sync::atomic::Ordering::Relaxed) - h0) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.await?;
    println!(
        "4. {MILLION} blocklist entries (loaded through Control::put in {}), {SINGLES} samples each",
        ms(load)
    );
    for (what, quiet, busy) in [
        ("block POST -> XDP_DROP", &quiet_block, &flood_block),
        ("GET /health", &quiet_health, &flood_health),
    ] {
        println!(
            "   {what}: quiet p50 {} p99 {}; during the hit flood p50 {} p99 {}",
            ms(pct(quiet, 0.5)),
            ms(pct(quiet, 0.99)),
            ms(pct(busy, 0.5)),
            ms(pct(busy, 0.99))
        );
    }
    println!(
        "   hit flood: {rate:.0} on_block_hit/s from {FLOOD_SOURCES} blocked /32s during the samples"
    );
    s.stop().await;
    Ok(())
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("netguard-bench-api loads XDP programs: run it as root (cargo xtask bench does)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    rt.block_on(async {
        bulk_apply().await?;
        single_blocks().await?;
        ws_fanout().await?;
        million_with_hit_flood().await
    })?;
    println!("(total {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
