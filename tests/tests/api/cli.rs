//! The command-line client: the library (`netguard_user::client`) and the `netguard` binary.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_client_adds_lists_and_removes() {
    use netguard_user::{client::Client, control::EntryRequest};
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let c = Client::new(&s.base, Some(OPERATOR.into()));
    let req = EntryRequest {
        cidr: "198.51.100.99".into(),
        ttl: Some("4h".into()),
        reason: Some("cli".into()),
        ..EntryRequest::default()
    };
    let out = c.block_add(&req).await.expect("block add");
    assert_eq!(out.entries[0].cidr.to_string(), "198.51.100.99/32");
    assert_eq!(s.verdict(&frame_from(ip("198.51.100.99"))), XDP_DROP);
    let list = c.block_list().await.expect("block list");
    assert_eq!(list.len(), 1);
    let table = netguard_user::client::entries_table(&list, chrono::Utc::now());
    assert!(
        table.contains("198.51.100.99/32") && table.contains("in 3h 59m") && table.contains("cli"),
        "{table}"
    );
    // The server's error and field reach the user.
    let bad = EntryRequest {
        cidr: "198.51.100.1/24".into(),
        ..EntryRequest::default()
    };
    let e = c.block_add(&bad).await.unwrap_err().to_string();
    assert!(
        e.starts_with("400: ") && e.contains("host bits") && e.contains("field `cidr`"),
        "{e}"
    );
    assert_eq!(
        c.block_del("198.51.100.99", None)
            .await
            .expect("del")
            .removed,
        1
    );
    assert_eq!(s.verdict(&frame_from(ip("198.51.100.99"))), XDP_PASS);
    let h = c.health().await.expect("health answers even when degraded");
    assert_eq!(h.status, "degraded");
    assert!(netguard_user::client::health_text(&h).contains("NOT attached"));
    let e = Client::new(&s.base, Some(VIEWER.into()))
        .block_del("10.0.0.0/8", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("403: "), "{e}");
    let base = s.base.clone();
    s.stop().await;
    let e = Client::new(&base, None)
        .health()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is `netguard run` running? (--api URL)"), "{e}");
}

/// target/<profile>/netguard, next to this test's deps/ directory (`cargo xtask test` builds it).
fn netguard_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("netguard");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p netguard-user --bin netguard`",
        bin.display()
    );
    bin
}

/// Runs `netguard args...` off the async workers (the server runs on them); (exit code, stdout, stderr).
async fn netguard(args: Vec<String>, token: Option<&str>) -> (i32, String, String) {
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(netguard_bin());
        cmd.args(&args)
            .env_remove("NETGUARD_TOKEN")
            .env_remove("NETGUARD_API");
        if let Some(t) = token {
            cmd.env("NETGUARD_TOKEN", t);
        }
        let out = cmd.output().expect("run netguard");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_netguard_command_line_talks_to_the_api() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let args = |a: &[&str]| {
        a.iter()
            .map(|s| s.to_string())
            .chain(["--api".into(), s.base.clone()])
            .collect::<Vec<_>>()
    };
    let (code, out, err) = netguard(
        args(&[
            "block",
            "add",
            "198.51.100.5",
            "--ttl",
            "1h",
            "--reason",
            "cli test",
        ]),
        Some(OPERATOR),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("blocked 198.51.100.5/32 (scope global) until"),
        "{out}"
    );
    assert_eq!(s.verdict(&frame_from(ip("198.51.100.5"))), XDP_DROP);
    let (code, out, _) = netguard(args(&["block", "list"]), Some(VIEWER)).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("198.51.100.5/32") && out.contains("cli test") && out.ends_with("1 entry\n"),
        "{out}"
    );
    // A reason with terminal escapes (retitle, clear screen, a fake row) is shown, not obeyed.
    let hostile = "x\u{1b}]0;owned\u{7}\u{1b}[2J\nfake 10.0.0.0/8 row\u{202e}";
    let (st, b) = op(
        &s,
        Method::POST,
        "/api/v1/blocklist",
        Some(json!({"cidr": "198.51.100.6", "reason": hostile})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (code, out, _) = netguard(args(&["block", "list"]), Some(VIEWER)).await;
    assert_eq!(code, 0);
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    assert!(out.contains("x\\u{1b}]0;owned\\u{7}"), "{out}");
    assert_eq!(
        out.lines().count(),
        4,
        "one header, two rows, one count: {out}"
    );
    let (st, _) = op(
        &s,
        Method::DELETE,
        "/api/v1/blocklist?cidr=198.51.100.6",
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (code, out, _) = netguard(args(&["block", "list", "--json"]), Some(VIEWER)).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("JSON list");
    assert_eq!(v[0]["cidr"], "198.51.100.5/32");
    // Errors: the server's message and field, exit 1.
    let (code, _, err) = netguard(args(&["block", "add", "10.0.0.1/8"]), Some(OPERATOR)).await;
    assert_eq!(code, 1);
    assert!(err.contains("400") && err.contains("field `cidr`"), "{err}");
    let (code, _, err) = netguard(args(&["block", "del", "198.51.100.5"]), Some(VIEWER)).await;
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
    // No token: none in the env, none in the (empty) state dir; then the state dir's admin.token.
    let empty = tempfile::tempdir().unwrap();
    let state_dir = empty.path().to_str().unwrap();
    let (code, _, err) = netguard(
        args(&["block", "del", "198.51.100.5", "--state-dir", state_dir]),
        None,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    std::fs::write(empty.path().join("admin.token"), format!("{VIEWER}\n")).unwrap();
    let (code, out, err) = netguard(args(&["block", "list", "--state-dir", state_dir]), None).await;
    assert_eq!(
        code, 0,
        "the token file is read when NETGUARD_TOKEN is unset: {err}"
    );
    assert!(out.contains("198.51.100.5/32"), "{out}");
    let (code, out, _) = netguard(args(&["block", "del", "198.51.100.5"]), Some(OPERATOR)).await;
    assert_eq!((code, out.trim()), (0, "unblocked 198.51.100.5 (1 entry)"));
    assert_eq!(s.verdict(&frame_from(ip("198.51.100.5"))), XDP_PASS);
    // Status: readable without a token; degraded (not attached) is exit 1.
    let (code, out, _) = netguard(args(&["status"]), None).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("degraded")
            && out.contains("NOT attached")
            && out.contains("embedded (reachable)"),
        "{out}"
    );
    s.stop().await;
    let (code, _, err) = netguard(
        vec!["status".into(), "--api".into(), "http://127.0.0.1:9".into()],
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("is `netguard run` running? (--api URL)"),
        "{err}"
    );
}
