//! WebSocket push with a real client (tokio-tungstenite): list changes and alerts arrive as JSON, a
//! client that falls behind is closed with a reason while the others keep receiving everything.

use std::time::Duration;

use futures_util::StreamExt as _;
use netguard_store::Alert;
use netguard_tests::{
    api_stack::{AGENT, OPERATOR, Stack, StackOptions, VIEWER, http},
    netns::require_root,
};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, client_async, connect_async,
    tungstenite::{Error as WsError, Message, client::IntoClientRequest as _},
};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, bearer: &str) -> Ws {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    connect_async(req).await.expect("WebSocket connect").0
}

/// The next JSON text message (pings and pongs skipped), within `limit`.
async fn next_json<S>(ws: &mut WebSocketStream<S>, limit: Duration) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(limit, async {
        loop {
            match ws.next().await.expect("stream open").expect("frame") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON push"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    })
    .await
    .expect("a push message in time")
}

fn alert(id: &str) -> Alert {
    Alert {
        id: id.into(),
        ts: chrono::Utc::now(),
        sensor_id: "sensor-a".into(),
        class: "port_scan".into(),
        src_ip: "203.0.113.9".parse().unwrap(),
        dst_ip: None,
        dst_port: None,
        risk: 70,
        confidence: 0.8,
        mitre: "T1046".into(),
        action: "alerted".into(),
        evidence: serde_json::Map::new(),
        count: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_alerts_are_pushed_to_every_client() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Stack::start(dir.path(), StackOptions::default()).await;
    // One client authenticates with the header, the other (a browser) with ?token=.
    let mut a = connect(&s.ws_url(), VIEWER).await;
    let (mut b, _) = connect_async(format!("{}?token={VIEWER}", s.ws_url()))
        .await
        .expect("token in query");

    let resp = http(Some(OPERATOR))
        .post(s.url("/api/v1/blocklist"))
        .json(&json!({"cidr": "198.51.100.0/24", "reason": "ws test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for ws in [&mut a, &mut b] {
        let ev = next_json(ws, Duration::from_secs(5)).await;
        assert_eq!(ev["type"], "block", "{ev}");
        assert_eq!(
            (ev["count"].as_u64(), ev["entries"][0]["cidr"].as_str()),
            (Some(1), Some("198.51.100.0/24")),
            "{ev}"
        );
        assert_eq!(ev["entries"][0]["reason"], "ws test");
        assert!(ev["ts"].is_string());
    }
    s.control.raise_alert(alert("ws-alert-1")).await;
    for ws in [&mut a, &mut b] {
        let ev = next_json(ws, Duration::from_secs(5)).await;
        assert_eq!(
            (ev["type"].as_str(), ev["id"].as_str(), ev["mitre"].as_str()),
            (Some("alert"), Some("ws-alert-1"), Some("T1046")),
            "{ev}"
        );
    }
    let resp = http(Some(OPERATOR))
        .delete(s.url("/api/v1/blocklist?cidr=198.51.100.0/24"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ev = next_json(&mut a, Duration::from_secs(5)).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["cidr"].as_str(),
            ev["reason"].as_str()
        ),
        (Some("unblock"), Some("198.51.100.0/24"), Some("removed")),
        "{ev}"
    );

    // No token: 401 before any upgrade; an agent token: 403.
    match connect_async(s.ws_url()).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("connected without a token: {:?}", other.map(|_| ())),
    }
    match connect_async(format!("{}?token={AGENT}", s.ws_url())).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("an agent token may not watch: {:?}", other.map(|_| ())),
    }
    // A plain GET (no upgrade) is a JSON error, not a hang or plain text.
    let resp = http(Some(VIEWER))
        .get(s.url("/api/v1/ws"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());

    // Stopping the server says goodbye with 1001.
    s.stop().await;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match a.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("close frame on shutdown")
    .expect("close frame with a code");
    assert_eq!(u16::from(close.code), 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_while_others_get_everything() {
    if !require_root() {
        return;
    }
    const BULKS: usize = 16;
    const PER_BULK: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StackOptions::default();
    opts.datapath.blocklist_v4_max = 1 << 17;
    opts.api.ws_queue = 4;
    opts.api.ws_write_timeout = Duration::from_secs(60);
    let s = Stack::start(dir.path(), opts).await;

    // The slow client: a tiny receive buffer, and it reads nothing until the end.
    let addr = s.base.trim_start_matches("http://").parse().unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let mut req = s.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {VIEWER}").parse().unwrap());
    let (mut slow, _) = client_async(req, stream)
        .await
        .expect("slow client connects");

    // The reading client counts every block message.
    let mut fast = connect(&s.ws_url(), VIEWER).await;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < BULKS {
            let ev = next_json(&mut fast, Duration::from_secs(30)).await;
            assert_eq!(ev["type"], "block");
            seen.push(ev["entries"][0]["cidr"].as_str().unwrap().to_owned());
        }
        (seen, fast)
    });

    // 16 bulk imports of 5,000 hosts: each push message is ~0.7 MB, far more than the slow
    // client's socket buffers plus its 4-message queue.
    let client = http(Some(OPERATOR));
    let mut firsts = Vec::new();
    for b in 0..BULKS {
        let items: Vec<Value> = (0..PER_BULK)
            .map(|i| json!({"cidr": format!("10.{}.{}.{}", 100 + b, i / 250, i % 250 + 1)}))
            .collect();
        firsts.push(format!("10.{}.0.1/32", 100 + b));
        let t = std::time::Instant::now();
        let resp = client
            .post(s.url("/api/v1/blocklist"))
            .json(&items)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "bulk {b}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "bulk {b} took {:?}: the slow client held up the daemon",
            t.elapsed()
        );
    }
    let (seen, _fast) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("reader finishes")
        .expect("reader ok");
    assert_eq!(seen, firsts, "the reading client got every push, in order");

    // Now the slow client reads: a few old messages, then a close frame saying why.
    let (mut blocks, mut close) = (0, None);
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = slow.next().await {
            match msg {
                Ok(Message::Text(_)) => blocks += 1,
                Ok(Message::Close(f)) => {
                    close = f;
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("slow client: {e} before a close frame"),
            }
        }
    })
    .await
    .expect("the slow client is closed");
    let close = close.expect("a close frame with a code and reason");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(
        close.reason.as_str().starts_with("too slow: fell ")
            && close.reason.as_str().ends_with(" messages behind"),
        "{close:?}"
    );
    assert!(
        blocks < BULKS,
        "the slow client cannot have had everything ({blocks})"
    );
    assert!(
        Stack::wait_until(Duration::from_secs(5), || s.state.ws_clients() == 1).await,
        "the slow client is gone, the other stays"
    );
    s.stop().await;
}
