//! The API's limits against the real `netguard run` (issue 10, item 7): an oversized
//! `POST /api/v1/events` is refused (413) without the daemon's memory growing with it; a client that
//! never finishes its headers is disconnected; connections and WebSocket clients over their caps
//! are answered 503 with the JSON error shape.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use netguard_tests::daemon::Daemon;
use netguard_tests::netns::{NetnsPair, require_root};

const TOKEN: &str = "bounded-test-admin-token-0123456789";
const API: &str = "127.0.0.1:9751";
const MAX_CONNECTIONS: usize = 8;
const WS_MAX: usize = 2;

/// A kernel figure from /proc/PID/status, in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn connect() -> TcpStream {
    let s = TcpStream::connect(API).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes or 10 s pass; the text read.
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code and body of a raw HTTP/1.1 answer.
fn status_and_body(answer: &str) -> (u16, &str) {
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer.split_once("\r\n\r\n").map_or("", |(_, b)| b))
}

fn ws_upgrade() -> TcpStream {
    let mut s = connect();
    write!(
        s,
        "GET /api/v1/ws HTTP/1.1\r\nHost: {API}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    s
}

/// The first line of the answer (without waiting for the connection to end).
fn head_line(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_api_refuses_what_would_exhaust_it() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("bounded");
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("netguard.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nmax_connections = {MAX_CONNECTIONS}\nws_max_clients = {WS_MAX}\nheader_read_timeout = \"2s\"\n"
        ),
    )
    .unwrap();
    let d = Daemon::start(
        &lab,
        state.path(),
        API,
        TOKEN,
        &["--config", config.to_str().unwrap()],
    );
    let _in_ns = lab.enter_sensor();

    // 1. A 15 MiB array of zeros (7.8 million items, under the 16 MiB body limit): 413 at item
    //    10,001, and the daemon's peak memory grows by the buffered body, not by 0.5 GB of values.
    let pid = d.pid();
    let (rss0, hwm0) = (status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM"));
    let n = (15 << 20) / 2;
    let mut body = Vec::with_capacity(2 * n + 2);
    body.push(b'[');
    for i in 0..n {
        body.extend_from_slice(if i + 1 == n { b"0" } else { b"0," });
    }
    body.push(b']');
    let mut s = connect();
    write!(
        s,
        "POST /api/v1/events HTTP/1.1\r\nHost: {API}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let answer = read_all(&mut s);
    let (code, text) = status_and_body(&answer);
    assert_eq!(code, 413, "{answer}");
    let err: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(err["field"], "items", "{err}");
    let (rss1, hwm1) = (status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM"));
    eprintln!("oversized /events: VmRSS {rss0} -> {rss1} kB, VmHWM {hwm0} -> {hwm1} kB");
    assert!(
        rss1.saturating_sub(rss0) < 50 << 10,
        "VmRSS grew {rss0} -> {rss1} kB"
    );
    assert!(
        hwm1.saturating_sub(hwm0) < 50 << 10,
        "peak VmHWM grew {hwm0} -> {hwm1} kB"
    );

    // 2. Headers that never end: the connection is closed after the header-read timeout (2 s).
    let mut slow = connect();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .unwrap();
    let t = Instant::now();
    let _ = read_all(&mut slow);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "a client that never finished its headers was closed after {took:?}, not about 2 s"
    );

    // 3. WebSocket clients over `ws_max_clients`: 503 with the JSON shape, before any upgrade.
    let mut clients: Vec<TcpStream> = (0..WS_MAX).map(|_| ws_upgrade()).collect();
    for c in &mut clients {
        let head = head_line(c);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
    let mut extra = ws_upgrade();
    let answer = head_line(&mut extra);
    let (code, text) = status_and_body(&answer);
    assert_eq!(code, 503, "{answer}");
    assert!(text.contains("ws_max_clients"), "{answer}");
    // A place frees when a client leaves.
    drop(clients.pop());
    let t = Instant::now();
    loop {
        let mut again = ws_upgrade();
        let head = head_line(&mut again);
        if head.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no place freed: {head}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 4. Connections over `max_connections`: the extra one is answered 503 at once and closed.
    //    Start from no open connection: the kept-alive 503 above would hold a place.
    drop((extra, clients));
    std::thread::sleep(Duration::from_millis(500));
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = connect();
    let _ = over.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = read_all(&mut over);
    let (code, text) = status_and_body(&answer);
    assert_eq!(code, 503, "{answer}");
    let err: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(
        err["error"].as_str().unwrap().contains("max_connections"),
        "{err}"
    );
    // Once they go, the API answers again.
    drop(held);
    let t = Instant::now();
    loop {
        let mut s = connect();
        let _ = s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = read_all(&mut s);
        if status_and_body(&answer).0 == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(_in_ns);
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}
