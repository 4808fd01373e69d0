//! `POST /api/v1/events` and `/api/v1/thresholds` over real HTTP against a real stack (a loaded XDP
//! datapath, Control, and the embedded store or a real redis-server), with every block checked in
//! the kernel by BPF_PROG_TEST_RUN:
//! - single and array posts, per-item rejection that keeps the good items, a retried batch
//!   acknowledged as duplicates and stored once (checked in the store's event history);
//! - agent tokens: may post, get 403 on the blocklist and thresholds, tag `source_vm_id` with their
//!   VM, and a request with an event for another VM is refused whole (403); a config with an agent
//!   token that names no VM stops the real `netguard run` before it attaches, naming the token;
//! - the per-token rate limit: 429 with `Retry-After` and the error shape, one token's budget not
//!   touching another's;
//! - thresholds GET/PUT round trip and field-named validation;
//! - on two sensors sharing a Redis: a per-VM threshold blocks the source on that VM only, a global
//!   threshold everywhere, each on exactly the N-th failure; ten failures from one VM's agent block
//!   on that VM only, and one more from a second VM blocks everywhere; the alert is pushed on the
//!   WebSocket channel with class and MITRE id; an allowlisted source is alerted, not blocked.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netguard_common::tcp_flags as tf;
use netguard_store::{EventQuery, ListKind, StoreOptions};
use netguard_tests::{
    api_stack::{ADMIN, AGENT, AGENT_VM, OPERATOR, Stack, StackOptions, VIEWER, http},
    fixtures::{SEN, XDP_DROP, XDP_PASS, load_small, tcp},
    frames::FrameSpec,
    netns::require_root,
    redis_server::RedisServer,
};
use netguard_user::{
    api::{Role, TokenConfig},
    control::{Control, ControlConfig, PushEvent},
    datapath::Datapath,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BOUND_AGENT: &str = "bound-agent-token-for-tests-0123";
/// VMs that have an agent token of their own in [`stack`] (see [`agent_of`]).
const AGENT_VMS: [&str; 4] = ["win-1", "win-2", "win-3", "sensor-b"];

/// The token of the agent on `vm` (one of [`AGENT_VMS`]).
fn agent_of(vm: &str) -> String {
    format!("agent-token-of-{vm}-0123456789")
}

fn frame_from(src: Ipv4Addr) -> Vec<u8> {
    FrameSpec::v4(src, SEN, tcp(40000, 22, tf::SYN as u8))
        .build()
        .bytes
}

fn verdict(dp: &Arc<Mutex<Datapath>>, src: Ipv4Addr) -> u32 {
    dp.lock()
        .unwrap()
        .test_run(&frame_from(src))
        .expect("test run")
}

async fn call(
    stack: &Stack,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http(Some(token)).request(method, stack.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

async fn post_events(stack: &Stack, token: &str, body: Value) -> (StatusCode, Value) {
    call(stack, token, Method::POST, "/api/v1/events", Some(body)).await
}

/// A stack for sensor `id` whose tokens include an agent bound to VM `win-7`, and one for each of
/// [`AGENT_VMS`].
async fn stack(dir: &std::path::Path, id: &str, redis: Option<&RedisServer>) -> Stack {
    stack_with(dir, id, redis, StackOptions::default()).await
}

async fn stack_with(
    dir: &std::path::Path,
    id: &str,
    redis: Option<&RedisServer>,
    opts: StackOptions,
) -> Stack {
    let mut opts = StackOptions {
        redis_url: redis.map(RedisServer::url),
        ..opts
    };
    for vm in AGENT_VMS {
        opts.api.tokens.push(TokenConfig {
            name: format!("{vm}-agent"),
            role: Role::Agent,
            token: agent_of(vm),
            vm_id: Some(vm.into()),
        });
    }
    opts.control.sensor_id = id.into();
    opts.api.tokens.push(TokenConfig {
        name: "win-7-agent".into(),
        role: Role::Agent,
        token: BOUND_AGENT.into(),
        vm_id: Some("win-7".into()),
    });
    Stack::start(dir, opts).await
}

fn event(n: u32, vm: &str, src: &str, ty: &str) -> Value {
    json!({"source_vm_id": vm, "ts": 1_714_560_000_000u64 + u64::from(n) * 1000, "src_ip": src,
           "username": format!("user{n}"), "src_port": 40_000 + n, "event_type": ty})
}

/// Events posted "now" (the tracker ignores failures older than the find time).
fn now_event(n: u32, vm: &str, src: &str, ty: &str) -> Value {
    let ts = chrono::Utc::now().timestamp_millis() as u64 - 10_000 + u64::from(n);
    json!({"source_vm_id": vm, "ts": ts, "src_ip": src, "username": "root", "src_port": 40_000 + n,
           "event_type": ty})
}

mod access;
mod blocking;
mod contract;
mod fleet;
