//! The per-token rate limit, and agent tokens that name no VM.

use super::*;

/// `[api.events_rate_limit]`: past its burst a token gets 429 with `Retry-After` and the API's error
/// shape, and nothing of the refused request is counted; another token's budget is its own, and the
/// bucket refills at the configured rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StackOptions::default();
    opts.api.events_rate_limit.per_second = 1.0;
    opts.api.events_rate_limit.burst = 3;
    let s = stack_with(dir.path(), "sensor-a", None, opts).await;
    let src = "198.51.100.80";
    for n in 0..3 {
        let (st, body) = post_events(&s, AGENT, now_event(n, AGENT_VM, src, "4625")).await;
        assert_eq!(
            st,
            StatusCode::OK,
            "request {} is within the burst: {body}",
            n + 1
        );
    }
    let resp = http(Some(AGENT))
        .post(s.url("/api/v1/events"))
        .json(&now_event(3, AGENT_VM, src, "4625"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1", "{:?}", resp.headers());
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("`agent`") && error.contains("retry after 1 s"),
        "{body}"
    );
    // Keyed by token, not by address: the same client with another token is not limited.
    let (st, body) = post_events(&s, ADMIN, now_event(4, AGENT_VM, src, "4625")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let stored = s
        .control
        .store()
        .events(&EventQuery {
            src_ip: Some(src.parse().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 4, "the refused post was not stored");
    // One request per second: after the wait the token may post again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, body) = post_events(&s, AGENT, now_event(5, AGENT_VM, src, "4625")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Authentication comes first: an unknown token is 401, not 429.
    let (st, _) = post_events(&s, "no-such-token-0123456789", json!([])).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// The real `netguard run` with a config whose agent token names no VM: it stops before attaching,
/// with a message that names the token and the field to add.
#[test]
fn an_agent_token_without_a_vm_stops_the_daemon_at_start() {
    if !require_root() {
        return;
    }
    let lab = netguard_tests::netns::NetnsPair::new("agentvm");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("netguard.toml");
    std::fs::write(
        &cfg,
        "[[api.tokens]]\nname = \"win-1\"\nrole = \"agent\"\ntoken = \"agent-token-of-win-1-0123456789\"\nvm_id = \"win-1\"\n\
         [[api.tokens]]\nname = \"win-agents\"\nrole = \"agent\"\ntoken = \"agent-token-of-many-0123456789\"\n",
    )
    .unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.sensor])
        .arg(netguard_tests::daemon::netguard_bin())
        .args(["run", "--iface", "lo", "--xdp-mode", "skb", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("netguard runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "api.tokens[1] (name \"win-agents\"): an agent token must name its VM: add vm_id = \"...\""
        ),
        "{text}"
    );
    assert!(text.contains("netguard.toml"), "the file is named: {text}");
    let link = std::process::Command::new("ip")
        .args(["-n", &lab.sensor, "link", "show", "lo"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "nothing was attached"
    );
    assert!(
        !dir.path().join("state").join("admin.token").exists(),
        "refused before anything was written"
    );
}
