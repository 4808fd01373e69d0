//! The console's access rules, against the real daemon: a viewer's block is refused in the browser
//! and the refusal shown; cookie writes need the console's `Origin` and the CSRF header; the
//! WebSocket refuses another origin; logout and unknown cookies; the security headers; the first
//! load's budget; under TLS the cookie is `Secure`. Also: the bundled map is what its generator makes.

use std::process::Command;

use netguard_tests::{
    browser::{self, Browser},
    console_lab::{ADMIN, OPERATOR, VIEWER, config, curl, shot, wait_until},
    daemon::{Daemon, Launch},
    netns::{NetnsPair, SENSOR_IF, require_root},
    pki::Pki,
};
use serde_json::json;

#[test]
fn viewer_is_refused_and_writes_need_origin_and_header() {
    if !require_root() || !browser::available() {
        return;
    }
    let lab = NetnsPair::new("consolev");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let api = "127.0.0.1:9772";
    let base = format!("http://{api}");
    let daemon = Daemon::start(&lab, dir.path(), api, ADMIN, &["--config", &cfg]);
    let ns = &lab.sensor;

    // Headers on the page and the API.
    for path in ["/", "/api/v1/health", "/console/app.js"] {
        let (code, text) = curl(ns, &[&format!("{base}{path}")]);
        assert_eq!(code, 200, "{path}: {text}");
        let lower = text.to_lowercase();
        for h in [
            "content-security-policy: default-src 'none'; script-src 'self'",
            "frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
        ] {
            assert!(lower.contains(h), "{path} lacks {h}: {text}");
        }
    }
    let (_, page) = curl(ns, &[&format!("{base}/")]);
    assert!(
        !page.contains("<script>") && !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    let (code, t) = curl(
        ns,
        &[
            &format!("{base}/api/threats"),
            "-H",
            &format!("Authorization: Bearer {VIEWER}"),
        ],
    );
    assert_eq!(code, 200, "{t}");

    // Login over curl, then the CSRF checks on a cookie write.
    let origin = format!("Origin: {base}");
    let login = json!({"token": OPERATOR}).to_string();
    let (code, text) = curl(
        ns,
        &[
            &format!("{base}/api/v1/session"),
            "-H",
            &origin,
            "-H",
            "X-NetGuard-CSRF: 1",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &login,
        ],
    );
    assert_eq!(code, 200, "{text}");
    let cookie = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .expect("Set-Cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let ck = format!("Cookie: {cookie}");
    let entry = json!({"cidr": "192.0.2.7/32"}).to_string();
    let block = |extra: &[&str]| {
        let url = format!("{base}/api/v1/blocklist");
        let mut a = vec![
            url.as_str(),
            "-H",
            &ck,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &entry,
        ];
        a.extend(extra);
        curl(ns, &a)
    };
    let (code, t) = block(&["-H", "X-NetGuard-CSRF: 1"]);
    assert_eq!(code, 403, "no Origin: {t}");
    let (code, t) = block(&[
        "-H",
        "Origin: http://evil.example",
        "-H",
        "X-NetGuard-CSRF: 1",
    ]);
    assert_eq!(code, 403, "foreign Origin: {t}");
    let (code, t) = block(&["-H", &origin]);
    assert_eq!(code, 403, "no custom header: {t}");
    let (code, t) = block(&["-H", &origin, "-H", "X-NetGuard-CSRF: 1"]);
    assert!(
        code == 200 || code == 201,
        "a proper cookie write: {code} {t}"
    );
    // The WebSocket refuses another origin, even with a valid cookie.
    let ws = |o: &str| {
        curl(
            ns,
            &[
                &format!("{base}/api/v1/ws"),
                "-H",
                &ck,
                "-H",
                o,
                "-H",
                "Connection: Upgrade",
                "-H",
                "Upgrade: websocket",
                "-H",
                "Sec-WebSocket-Version: 13",
                "-H",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "--max-time",
                "2",
            ],
        )
    };
    assert_eq!(ws("Origin: http://evil.example").0, 403);
    assert_eq!(ws(&origin).0, 101);

    // The viewer in the browser: reads work, the block is refused and the refusal is shown.
    let mut b = Browser::start(ns, &base);
    b.call(json!({"cmd": "open"}));
    // The first load's budget: under 300 KB (sent uncompressed, so compressed is less still).
    let r = b.call(json!({"cmd": "resources"}));
    let bytes = r["nav"]["transfer"].as_u64().unwrap()
        + r["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["transfer"].as_u64().unwrap())
            .sum::<u64>();
    assert!(
        bytes > 5_000 && bytes < 300 * 1024,
        "first load {bytes} bytes: {r}"
    );
    let login = b.call(json!({"cmd": "login", "token": VIEWER}));
    assert!(
        login["who"].as_str().unwrap().contains("read-only"),
        "{login}"
    );
    let r = b.call(json!({"cmd": "block", "cidr": "198.51.100.9/32", "ttl": "1h"}));
    let err = r["error"].as_str().unwrap();
    assert!(
        err.contains("Refused (403)") && err.contains("viewer role"),
        "{r}"
    );
    assert!(
        !daemon.get("/api/v1/blocklist").contains("198.51.100.9"),
        "the viewer's block took effect"
    );
    shot(&mut b, "blocklist-viewer-refused");
    // Logout ends the session for good: the old cookie no longer reads.
    let old = b.call(json!({"cmd": "evaluate", "expr": "1"}));
    assert_eq!(old, 1);
    b.call(json!({"cmd": "evaluate", "expr": "document.getElementById('logout').click()"}));
    wait_until(&mut b, "!document.getElementById('login').hidden", 5000);
    let (code, _) = curl(ns, &[&format!("{base}/api/v1/alerts"), "-H", &ck]);
    assert_eq!(code, 200, "the operator's curl session is separate");
    // An unknown cookie is a 401 that says to log in again.
    let (code, t) = curl(
        ns,
        &[
            &format!("{base}/api/v1/alerts"),
            "-H",
            "Cookie: netguard_session=0000",
        ],
    );
    assert_eq!(code, 401, "{t}");
    assert!(t.contains("log in again"), "{t}");
    drop(b);
}

/// The map's geometry (netguard-user/console/vendor/world-110m.json) is what tests/console/gen-map.mjs
/// makes from the pinned world-atlas: regenerate it after changing either.
#[test]
fn bundled_map_matches_its_generator() {
    if !browser::available() {
        return;
    }
    let out = Command::new("node")
        .arg(browser::console_dir().join("gen-map.mjs"))
        .arg("--check")
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Under TLS the console is served over HTTPS only and its session cookie is `Secure`.
#[test]
fn https_session_cookie_is_secure() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("consoletls");
    let pki = Pki::new(&["IP:127.0.0.1"]);
    let state = tempfile::tempdir().unwrap();
    let cfg = pki.api_config();
    let api = "127.0.0.1:9773";
    let how = Launch {
        cacert: Some(pki.ca.clone()),
        ..Launch::default()
    };
    let d = Daemon::launch(
        &lab.sensor,
        SENSOR_IF,
        state.path(),
        api,
        ADMIN,
        &["--config", cfg.to_str().unwrap()],
        how,
    );
    let base = d.base_url();
    assert!(base.starts_with("https://"), "{base}");
    let ca = pki.ca.display().to_string();
    let (code, page) = curl(&lab.sensor, &["--cacert", &ca, &format!("{base}/")]);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.to_lowercase().contains("content-security-policy:"),
        "{page}"
    );
    let body = json!({"token": ADMIN}).to_string();
    let (code, text) = curl(
        &lab.sensor,
        &[
            "--cacert",
            &ca,
            &format!("{base}/api/v1/session"),
            "-H",
            &format!("Origin: {base}"),
            "-H",
            "X-NetGuard-CSRF: 1",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(code, 200, "{text}");
    let cookie = text
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie: {text}"));
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", "Secure"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    // The http:// origin of the same address is not this server's origin.
    let (code, _) = curl(
        &lab.sensor,
        &[
            "--cacert",
            &ca,
            &format!("{base}/api/v1/session"),
            "-H",
            &format!("Origin: http://{api}"),
            "-H",
            "X-NetGuard-CSRF: 1",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(code, 403);
}
