//! The console in a real browser: Debian's chromium, driven by playwright-core
//! (tests/console/driver.mjs), against the real daemon in the lab, attacked by hping3.
//!
//! - Login sets the session cookie (HttpOnly, SameSite=Strict, with an expiry); the token is in
//!   neither the URL nor localStorage/sessionStorage, nor the daemon's log.
//! - A SYN flood's alert appears on the Live view within 1 s of its creation (the alert's `ts`).
//! - After a reload, the rows shown are exactly the API's `GET /api/v1/alerts?limit=100`.
//! - A block made in the page drops the address's pings in the kernel; unblocking restores them.
//! - An agent event whose username is an HTML/JS canary renders literally and runs nothing.
//! - No console errors, no CSP violations, no request to another origin, and axe-core finds no
//!   serious or critical violation on any view.
//! - After a daemon restart the page reconnects by itself, with no duplicate rows.
//!
//! Roles, CSRF, Origin and TLS are in console_access.rs. Screenshots of every view go to
//! target/console-screenshots/.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netguard_tests::{
    browser::{self, Browser},
    console_lab::{ADMIN, AGENT, OPERATOR, VIEWER, axe_serious, config, curl, shot, wait_until},
    daemon::Daemon,
    mmdb::{self, Writer},
    netns::{ATTACKER_IF, ATTACKER_V4, NetnsPair, SENSOR_V4, ping, require_root, require_tool},
};
use serde_json::{Value, json};

const CANARY: &str = r#"<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>"#;

fn geo_db(path: &Path) {
    let mut w = Writer::new("GeoLite2-Country", 6).build_epoch(1_714_521_600);
    w.insert(
        "81.2.0.0/16".parse().unwrap(),
        mmdb::country_record("GB", "United Kingdom"),
    );
    w.write(path).unwrap();
}

fn flood(lab: &NetnsPair, src: &str) -> Child {
    let sensor = SENSOR_V4.to_string();
    Command::new("ip")
        .args(["netns", "exec", &lab.attacker, "timeout", "-k", "2", "8"])
        .args([
            "hping3",
            "-q",
            "-I",
            ATTACKER_IF,
            "-S",
            "-p",
            "80",
            "-i",
            "u500",
            "-c",
            "8000",
            "-a",
            src,
            &sensor,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("hping3 starts")
}

fn ids(rows: &Value) -> Vec<String> {
    rows["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn console_end_to_end_in_chromium() {
    if !require_root() || !require_tool("hping3") || !browser::available() {
        return;
    }
    let lab = NetnsPair::new("console");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let cfg = config(dir.path());
    let api = "127.0.0.1:9771";
    let base = format!("http://{api}");
    let mut daemon = Some(Daemon::start(&lab, &state, api, ADMIN, &["--config", &cfg]));
    let mut b = Browser::start(&lab.sensor, &base);
    let mut axe = Vec::new();

    // Login.
    b.call(json!({"cmd": "open"}));
    shot(&mut b, "login");
    axe.extend(axe_serious(&mut b, "login"));
    let login = b.call(json!({"cmd": "login", "token": OPERATOR}));
    assert_eq!(login["loggedIn"], true, "{login}");
    let cookies = login["cookies"].as_array().unwrap();
    let c = cookies
        .iter()
        .find(|c| c["name"] == "netguard_session")
        .unwrap_or_else(|| panic!("no session cookie: {login}"));
    assert_eq!(c["httpOnly"], true, "{c}");
    assert_eq!(c["sameSite"], "Strict", "{c}");
    assert_eq!(c["secure"], false, "plain HTTP: {c}");
    let now = chrono::Utc::now().timestamp() as f64;
    let expires = c["expires"].as_f64().unwrap();
    assert!(
        expires > now + 3600.0 && expires < now + 13.0 * 3600.0,
        "{c}"
    );
    assert_ne!(c["value"], OPERATOR);
    for what in ["url", "localStorage", "sessionStorage", "tokenInput"] {
        assert!(
            !login[what].as_str().unwrap().contains(OPERATOR),
            "token in {what}: {login}"
        );
    }
    assert_eq!(login["localStorage"], "{}");
    assert!(
        login["who"].as_str().unwrap().contains("ops (operator"),
        "{login}"
    );

    // Live alert: hping3's SYN flood, from alert creation (its ts) to a painted row.
    let attacker = ATTACKER_V4[0].to_string();
    let mut tool = flood(&lab, &attacker);
    let t0 = Instant::now();
    let row = wait_until(
        &mut b,
        &format!(
            "[...document.querySelectorAll('#live-rows tr.alert')].find(r => r.textContent.includes('{attacker}') && r.textContent.includes('syn_flood'))?.dataset.id"
        ),
        15_000,
    );
    let id = row.as_str().unwrap().to_owned();
    eprintln!("first syn_flood row after {:?} of flooding", t0.elapsed());
    let rows = b.call(json!({"cmd": "rows"}));
    let alerts = daemon
        .as_ref()
        .unwrap()
        .get_json("/api/v1/alerts?limit=1000");
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap_or_else(|| panic!("row {id} is not in the API's alerts"));
    let ts = chrono::DateTime::parse_from_rfc3339(alert["ts"].as_str().unwrap()).unwrap();
    let seen = rows["seen"][&id].as_f64().expect("paint time recorded");
    let latency = seen - ts.timestamp_millis() as f64;
    eprintln!("alert {id}: created -> row visible in {latency:.0} ms");
    assert!(
        (-5.0..1000.0).contains(&latency),
        "row visible {latency} ms after the alert's creation"
    );
    assert_eq!(alert["class"], "syn_flood");
    let _ = tool.wait();
    shot(&mut b, "live");
    axe.extend(axe_serious(&mut b, "live"));

    // Evidence on click; click-to-filter puts the filter in the URL.
    b.call(json!({"cmd": "evaluate", "expr": format!("document.querySelector('#live-rows tr[data-id=\"{id}\"]').click()")}));
    wait_until(
        &mut b,
        "!!document.querySelector('#live-rows tr.evidence pre')",
        2000,
    );
    let ev = b.call(json!({"cmd": "evaluate", "expr": "document.querySelector('#live-rows tr.evidence pre').textContent"}));
    assert!(ev.as_str().unwrap().contains("\"evidence\""), "{ev}");
    b.call(json!({"cmd": "evaluate", "expr": format!("document.querySelector('#live-rows tr[data-id=\"{id}\"] td:nth-child(3) button').click()")}));
    let url = wait_until(
        &mut b,
        "location.hash.includes('src=') && location.hash",
        2000,
    );
    assert!(
        url.as_str().unwrap().contains(&format!("src={attacker}")),
        "{url}"
    );
    let shown = b.call(json!({"cmd": "evaluate", "expr": "[...document.querySelectorAll('#live-rows tr.alert td:nth-child(3)')].map(t => t.textContent)"}));
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == attacker.as_str()),
        "{shown}"
    );
    b.call(json!({"cmd": "go", "hash": "#live"}));

    // Reload: once the alerts have settled, the rows equal the API's last 100.
    std::thread::sleep(Duration::from_secs(3));
    let reloaded = b.call(json!({"cmd": "reload"}));
    let api_ids: Vec<String> = daemon
        .as_ref()
        .unwrap()
        .get_json("/api/v1/alerts?limit=100")
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!api_ids.is_empty());
    assert_eq!(
        ids(&reloaded),
        api_ids,
        "history after reload differs from the API's"
    );

    // Block from the page: the kernel drops the address's pings; unblocking lets them through.
    let victim = ATTACKER_V4[1].to_string();
    let sensor = SENSOR_V4.to_string();
    assert!(
        ping(&lab.attacker, &victim, &sensor, 3).received > 0,
        "lab ping fails before any block"
    );
    let r = b.call(json!({"cmd": "block", "cidr": format!("{victim}/32"), "ttl": "10m", "reason": "console test"}));
    assert_eq!(r["error"], "", "{r}");
    assert!(
        r["row"].as_str().unwrap_or("").contains("console test"),
        "{r}"
    );
    assert_eq!(
        ping(&lab.attacker, &victim, &sensor, 3).received,
        0,
        "blocked address still answered"
    );
    let entry = daemon.as_ref().unwrap().get_json("/api/v1/blocklist");
    assert!(
        entry.to_string().contains(&format!("{victim}/32")),
        "{entry}"
    );
    wait_until(
        &mut b,
        "/\\d+m \\d+s/.test(document.querySelector('#list-rows td.expiry').textContent)",
        3000,
    );
    shot(&mut b, "blocklist");
    axe.extend(axe_serious(&mut b, "blocklist"));
    let r = b.call(json!({"cmd": "unblock", "cidr": format!("{victim}/32")}));
    assert_eq!(r["error"], "", "{r}");
    assert!(r["row"].is_null(), "{r}");
    assert!(
        ping(&lab.attacker, &victim, &sensor, 3).received > 0,
        "unblocked address still dropped"
    );
    // Bulk paste: every line lands in the daemon; search narrows the table.
    b.call(json!({"cmd": "evaluate", "expr": "(() => { document.getElementById('bulk').value = '192.0.2.10 1h first\\n192.0.2.11/32 - second one\\n'; [...document.querySelectorAll('#view details button')].find(x => x.textContent === 'Add all').click(); })()"}));
    wait_until(
        &mut b,
        "document.getElementById('list-ok').textContent === 'Saved 2 entries.'",
        5000,
    );
    let list = daemon.as_ref().unwrap().get("/api/v1/blocklist");
    assert!(
        list.contains("192.0.2.10/32")
            && list.contains("192.0.2.11/32")
            && list.contains("second one"),
        "{list}"
    );
    let shown = b.call(json!({"cmd": "evaluate", "expr": "(() => { const s = document.getElementById('list-search'); s.value = 'second'; s.dispatchEvent(new Event('input')); return [...document.querySelectorAll('#list-rows tr')].map(r => r.dataset.cidr); })()"}));
    assert_eq!(shown, json!(["192.0.2.11/32"]));

    // Hostile strings: an agent's username is an HTML/JS canary.
    let event = json!([{"source_vm_id": "win-1", "ts": chrono::Utc::now().to_rfc3339(), "src_ip": "81.2.69.10",
        "username": CANARY, "src_port": 50001, "event_type": "windows_4625"}]);
    let auth = format!("Authorization: Bearer {AGENT}");
    let (code, body) = curl(
        &lab.sensor,
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &event.to_string(),
            &format!("{base}/api/v1/events"),
        ],
    );
    assert!(code == 200 || code == 202, "{code} {body}");
    b.call(json!({"cmd": "go", "hash": "#vms"}));
    let cell = wait_until(
        &mut b,
        "[...document.querySelectorAll('#suspicious-rows td.usernames')].map(t => t.textContent).find(t => t.includes('onerror'))",
        10_000,
    );
    assert!(cell.as_str().unwrap().contains(CANARY), "{cell}");
    let pwned = b.call(json!({"cmd": "evaluate", "expr": "[window.__pwned === undefined, document.querySelectorAll('#view img, #view script').length]"}));
    assert_eq!(pwned, json!([true, 0]), "the canary ran or became markup");
    shot(&mut b, "vms");
    // VM registration and removal from the page.
    b.call(json!({"cmd": "evaluate", "expr": "(() => { const f = document.getElementById('vm-form'); f.elements.id.value = 'lab-vm-2'; f.elements.name.value = 'second VM'; f.requestSubmit(); })()"}));
    wait_until(
        &mut b,
        "[...document.querySelectorAll('#vm-rows tr')].some(r => r.textContent.includes('lab-vm-2') && r.textContent.includes('second VM'))",
        5000,
    );
    assert!(
        daemon
            .as_ref()
            .unwrap()
            .get("/api/v1/vms")
            .contains("lab-vm-2")
    );
    b.call(json!({"cmd": "evaluate", "expr": "document.querySelector('#vm-rows button[aria-label=\"Remove VM lab-vm-2\"]').click()"}));
    wait_until(
        &mut b,
        "![...document.querySelectorAll('#vm-rows tr')].some(r => r.textContent.includes('lab-vm-2'))",
        5000,
    );
    assert!(
        !daemon
            .as_ref()
            .unwrap()
            .get("/api/v1/vms")
            .contains("lab-vm-2")
    );
    axe.extend(axe_serious(&mut b, "vms"));

    b.call(json!({"cmd": "go", "hash": "#overview"}));
    wait_until(
        &mut b,
        "document.querySelectorAll('#view .legend li').length > 0 && document.getElementById('blocklist-size')",
        10_000,
    );
    shot(&mut b, "overview");
    axe.extend(axe_serious(&mut b, "overview"));

    b.call(json!({"cmd": "go", "hash": "#map"}));
    let msg = wait_until(
        &mut b,
        "document.getElementById('map-unavailable')?.textContent",
        5000,
    );
    assert!(msg.as_str().unwrap().contains("--geoip-db"), "{msg}");
    shot(&mut b, "map-without-geoip");
    axe.extend(axe_serious(&mut b, "map"));

    // A clean page so far.
    let rep = b.call(json!({"cmd": "report"}));
    assert_eq!(
        rep,
        json!({"errors": [], "foreign": [], "csp": []}),
        "console errors, other origins or CSP violations"
    );
    assert!(axe.is_empty(), "axe-core: {axe:#?}");

    // A refusal shows (after the clean-page check: the browser logs the 400 as a failed load) the server's message and field.
    let r = b.call(json!({"cmd": "block", "cidr": "300.1.2.3/32"}));
    assert!(r["error"].as_str().unwrap().contains("field: cidr"), "{r}");

    b.call(json!({"cmd": "report", "clear": true}));

    // Restart (now with a GeoIP database): the page reconnects by itself, with no duplicate rows.
    b.call(json!({"cmd": "go", "hash": "#live"}));
    let before = ids(&b.call(json!({"cmd": "rows"})));
    let (_, log) = daemon.take().unwrap().stop();
    for secret in [ADMIN, OPERATOR, VIEWER, AGENT] {
        assert!(!log.contains(secret), "a token is in the daemon's log");
    }
    wait_until(
        &mut b,
        "document.getElementById('conn').dataset.state === 'reconnecting'",
        5000,
    );
    let geo = dir.path().join("geo.mmdb");
    geo_db(&geo);
    let geo_arg = geo.display().to_string();
    daemon = Some(Daemon::start(
        &lab,
        &state,
        api,
        ADMIN,
        &["--config", &cfg, "--geoip-db", &geo_arg],
    ));
    wait_until(
        &mut b,
        "document.getElementById('conn').dataset.state === 'live' && window.__live.stats.connects >= 2 && window.__live.stats.refills >= 2",
        15_000,
    );
    // The stream resumed: a new attacker's flood is pushed to the reconnected page.
    let second = ATTACKER_V4[2].to_string();
    let mut tool = flood(&lab, &second);
    wait_until(
        &mut b,
        &format!(
            "[...document.querySelectorAll('#live-rows tr.alert')].some(r => r.textContent.includes('{second}') && r.textContent.includes('syn_flood'))"
        ),
        15_000,
    );
    let _ = tool.wait();
    let after = ids(&b.call(json!({"cmd": "rows"})));
    let mut unique = after.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        after.len(),
        "duplicate rows after the restart: {after:?}"
    );
    assert!(
        before.iter().all(|i| after.contains(i)),
        "rows lost in the restart"
    );
    let rep = b.call(json!({"cmd": "report"}));
    for e in rep["errors"].as_array().unwrap() {
        let e = e.as_str().unwrap();
        assert!(
            e.contains("ERR_CONNECTION_REFUSED") || e.contains("WebSocket connection to"),
            "console error after the restart: {e}"
        );
    }
    assert_eq!(rep["csp"], json!([]));
    assert_eq!(rep["foreign"], json!([]));

    // The map, now with data: the canary's address is in GB. The session survived the restart.
    b.call(json!({"cmd": "reload"}));
    b.call(json!({"cmd": "go", "hash": "#map"}));
    let gb = wait_until(
        &mut b,
        "[...document.querySelectorAll('#geo-table tbody tr')].map(r => r.textContent).find(t => t.includes('GB'))",
        10_000,
    );
    assert!(gb.as_str().unwrap().contains("GB"), "{gb}");
    shot(&mut b, "map");
    let more = axe_serious(&mut b, "map (GeoIP)");
    assert!(more.is_empty(), "axe-core: {more:#?}");
    drop(b);
    drop(daemon);
}
