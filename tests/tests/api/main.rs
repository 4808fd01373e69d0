//! The REST API over real HTTP against a real stack: a loaded XDP datapath, the embedded store and
//! Control. What the API says is checked in the kernel with BPF_PROG_TEST_RUN: after a POST the
//! source's frames are dropped, after a DELETE they pass.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use netguard_common::tcp_flags as tf;
use netguard_store::{Alert, ListKind};
use netguard_tests::{
    api_stack::{ADMIN, AGENT, OPERATOR, Stack, StackOptions, VIEWER, http},
    fixtures::{SEN, SEN6, XDP_DROP, XDP_PASS, tcp},
    frames::FrameSpec,
    netns::{NetnsPair, SENSOR_IF, require_root},
};
use netguard_user::{control::ControlConfig, datapath::AttachMode};

mod access;
mod cli;
mod lists;
mod views;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn frame_from(src: IpAddr) -> Vec<u8> {
    let l4 = tcp(40000, 443, tf::SYN as u8);
    match src {
        IpAddr::V4(a) => FrameSpec::v4(a, SEN, l4).build().bytes,
        IpAddr::V6(a) => FrameSpec::v6(a, SEN6, l4).build().bytes,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// One request as the operator; returns status and JSON body (Null when the body is not JSON).
async fn call(
    stack: &Stack,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http(token).request(method, stack.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn op(stack: &Stack, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    call(stack, Some(OPERATOR), method, path, body).await
}

/// Asserts a 4xx JSON error naming `field`.
fn assert_refused(res: &(StatusCode, Value), status: u16, field: &str) {
    let (s, b) = res;
    assert_eq!(s.as_u16(), status, "{b}");
    assert!(
        b["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error text: {b}"
    );
    assert_eq!(b["field"], field, "{b}");
}

async fn start(dir: &std::path::Path) -> Stack {
    Stack::start(dir, StackOptions::default()).await
}
