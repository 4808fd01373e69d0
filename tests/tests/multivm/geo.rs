//! `/geo-attacks` with a GeoLite2-City-like database, and `netguard run` with a bad or good `--geoip-db`.

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A GeoLite2-City-like database: GB (London inside), SE, DE (Berlin inside) over IPv4 and IPv6.
fn geo_db(path: &Path) {
    let mut w = Writer::new("GeoLite2-City", 6).build_epoch(1_714_521_600);
    w.insert(
        net("81.2.0.0/16"),
        mmdb::country_record("GB", "United Kingdom"),
    )
    .insert(
        net("81.2.69.0/24"),
        mmdb::city_record("GB", "United Kingdom", "London"),
    )
    .insert(net("89.160.20.0/24"), mmdb::country_record("SE", "Sweden"))
    .insert(net("2a02:d8c0::/29"), mmdb::country_record("DE", "Germany"))
    .insert(
        net("2a02:d8c0:1::/48"),
        mmdb::city_record("DE", "Germany", "Berlin"),
    );
    w.write(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_attacks_count_per_country_and_city() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("GeoLite2-City.mmdb");
    geo_db(&db);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let s = start(&state, None, Some(&db)).await;
    let now = Utc::now();
    let f = |ip: &str, vm: &str, t: i64| event(ip, vm, "root", ago(now, t), true, "ssh");
    seed_events(
        &s,
        vec![
            f("81.2.69.10", "vm-uk", 100),
            f("81.2.69.10", "vm-uk", 99),
            f("81.2.69.10", "vm-uk", 98),
            f("81.2.70.1", "vm-uk", 97),
            f("89.160.20.5", "vm-uk", 96),
            f("89.160.20.5", "vm-uk", 95),
            f("2a02:d8c0:1::7", "vm-de", 94),
            f("2a02:d8c0:1::7", "vm-de", 93),
            f("2a02:d8c0:9::1", "vm-de", 92),
            // Private, and public but not in the database: both "unknown".
            f("10.0.0.5", "vm-uk", 91),
            f("198.51.100.1", "vm-uk", 90),
            // A success is not an attack; an old failure is outside the window.
            event("81.2.69.11", "vm-uk", "alice", ago(now, 89), false, "ssh"),
            f("89.160.20.6", "vm-uk", 2 * 86_400),
        ],
    )
    .await;
    s.control
        .store()
        .append_alert(&alert(
            "geo-al",
            "89.160.20.5",
            ME,
            "port_scan",
            ago(now, 50),
            1,
        ))
        .await
        .unwrap();

    let g = get(&s, "/api/v1/geo-attacks").await;
    assert_eq!(
        g["database"],
        json!({"database_type": "GeoLite2-City", "build_epoch": 1_714_521_600})
    );
    assert_eq!(
        (g["total_attacks"].as_u64(), g["unique_ips"].as_u64()),
        (Some(12), Some(7)),
        "{g}"
    );
    let rows: Vec<(&str, &str, u64, u64, u64, u64)> = g["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_u64().unwrap();
            (
                c["country_code"].as_str().unwrap(),
                c["country"].as_str().unwrap(),
                n("attacks"),
                n("failed_logins"),
                n("alerts"),
                n("unique_ips"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("GB", "United Kingdom", 4, 4, 0, 2),
            ("DE", "Germany", 3, 3, 0, 2),
            ("SE", "Sweden", 3, 2, 1, 1),
            ("unknown", "unknown", 2, 2, 0, 2),
        ]
    );
    assert_eq!(
        g["countries"][0]["cities"],
        json!([{"city": "London", "attacks": 3, "unique_ips": 1}])
    );
    assert_eq!(
        g["countries"][1]["cities"],
        json!([{"city": "Berlin", "attacks": 2, "unique_ips": 1}])
    );
    assert_eq!(g["countries"][2]["cities"], json!([]));

    let de = get(&s, "/api/v1/geo-attacks?vm_id=vm-de").await;
    assert_eq!(
        (
            de["total_attacks"].as_u64(),
            de["countries"].as_array().unwrap().len()
        ),
        (Some(3), 1)
    );
    assert_eq!(de["countries"][0]["country_code"], "DE");
    // With the 2-day-old failure SE ties GB at 4: equal counts are ordered by country code.
    let week = get(&s, "/api/v1/geo-attacks?since=7d").await;
    let codes: Vec<&str> = week["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["country_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["GB", "SE", "DE", "unknown"], "{week}");
    assert_eq!(week["countries"][1]["attacks"], 4);
    refused(
        &s,
        VIEWER,
        Method::GET,
        "/api/v1/geo-attacks?since=later",
        None,
        400,
        Some("since"),
    )
    .await;
    refused(
        &s,
        AGENT,
        Method::GET,
        "/api/v1/geo-attacks",
        None,
        403,
        None,
    )
    .await;
    s.stop().await;
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn bad_geoip_db_stops_the_daemon_before_it_attaches() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"this is not a MaxMind database").unwrap();
    let missing = dir.path().join("missing.mmdb");
    for (path, says) in [
        (&missing, "No such file"),
        (&junk, "not a valid MaxMind DB"),
    ] {
        // An interface that does not exist: even if the GeoIP check were skipped, nothing could be
        // attached; the message must be the GeoIP one, which comes first.
        let out = Command::new(netguard_bin())
            .args(["run", "--iface", "ng-no-such-if0", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--geoip-db")
            .arg(path)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains(&path.display().to_string()) && text.contains(says),
            "{text}"
        );
        assert!(
            text.contains("--geoip-db") && text.contains("GeoLite2-City"),
            "{text}"
        );
        assert!(
            !text.contains("ng-no-such-if0"),
            "failed at the interface, not the database: {text}"
        );
    }
}

#[test]
fn daemon_serves_geo_attacks_from_geoip_db() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("geoip");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("GeoLite2-City.mmdb");
    geo_db(&db);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let token = "multivm-geoip-admin-token-0123456789";
    let daemon = Daemon::start(
        &lab,
        &state,
        "127.0.0.1:9751",
        token,
        &["--geoip-db", db.to_str().unwrap()],
    );
    let g = daemon.get_json("/api/v1/geo-attacks");
    assert_eq!(g["database"]["database_type"], "GeoLite2-City", "{g}");
    assert_eq!(
        (g["total_attacks"].as_u64(), g["countries"].clone()),
        (Some(0), json!([]))
    );

    // Events posted the way agents post them reach /geo-attacks and /suspicious-ips (3 failures stay
    // under the default thresholds, so nothing else changes).
    let now = Utc::now();
    let ts = |s: i64| ago(now, s).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = json!([
        {"source_vm_id": "agent-uk", "ts": ts(30), "src_ip": "81.2.69.10", "username": "Administrator", "src_port": 50001, "event_type": "windows_4625"},
        {"source_vm_id": "agent-uk", "ts": ts(20), "src_ip": "81.2.69.10", "username": "Administrator", "src_port": 50002, "event_type": "windows_4625"},
        {"source_vm_id": "agent-uk", "ts": ts(10), "src_ip": "81.2.69.10", "username": "admin", "src_port": 50003, "event_type": "windows_4625"},
        {"source_vm_id": "agent-de", "ts": ts(5), "src_ip": "2a02:d8c0:1::7", "username": "root", "src_port": 50004, "event_type": "ssh_failed"},
    ]);
    let out = run_in(
        &lab.sensor,
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            "http://127.0.0.1:9751/api/v1/events",
        ],
    );
    let posted: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "POST /events: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(posted["accepted"], 4, "{posted}");
    let g = daemon.get_json("/api/v1/geo-attacks");
    let rows: Vec<(String, u64)> = g["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["country_code"].as_str().unwrap().to_owned(),
                c["attacks"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("GB".to_owned(), 3), ("DE".to_owned(), 1)], "{g}");
    assert_eq!(
        g["countries"][0]["cities"],
        json!([{"city": "London", "attacks": 3, "unique_ips": 1}])
    );
    let sus = daemon.get_json("/api/v1/suspicious-ips");
    assert_eq!(sus["total"], 2, "{sus}");
    assert_eq!(sus["ips"][0]["ip"], "81.2.69.10");
    assert_eq!(sus["ips"][0]["vms"], json!(["agent-uk"]));
    assert_eq!(sus["ips"][0]["services"], json!(["windows"]));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("GeoIP") && log.contains("GeoLite2-City"),
        "{log}"
    );
}
