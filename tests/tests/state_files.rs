//! The real daemon's state dir: created 0700 with its store and generated admin token 0600; an
//! existing dir left 0755 and files left 0644 are tightened at start, with a warning naming each.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use netguard_tests::daemon::Daemon;
use netguard_tests::netns::{NetnsPair, require_root};

const API: &str = "127.0.0.1:9752";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o777
}

#[test]
fn state_dir_and_files_are_root_only() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("statef");
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("netguard.log");
    let state = tmp.path().join("fresh/state");
    let (db, token) = (state.join("netguard-store.redb"), state.join("admin.token"));

    let d = Daemon::start_generating_token(&lab, &log, &state, API, &[]);
    assert_eq!(
        d.get_json("/api/v1/blocklist").as_array().map(Vec::len),
        Some(0),
        "the generated token works"
    );
    assert_eq!(
        (mode(&state), mode(&db), mode(&token)),
        (0o700, 0o600, 0o600)
    );
    let (status, text) = d.stop();
    assert!(status.success(), "{text}");
    assert!(
        !text.contains("was open to other users"),
        "a fresh dir warned: {text}"
    );

    // Left open by hand (or an older version): tightened at the next start, each one named.
    for (p, m) in [(&state, 0o755), (&db, 0o644), (&token, 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let d = Daemon::start_generating_token(&lab, &log, &state, API, &[]);
    assert_eq!(
        (mode(&state), mode(&db), mode(&token)),
        (0o700, 0o600, 0o600)
    );
    let (status, text) = d.stop();
    assert!(status.success(), "{text}");
    for (p, m) in [(&state, "755"), (&db, "644"), (&token, "644")] {
        let warning = format!("{} was open to other users (mode {m})", p.display());
        assert!(text.contains(&warning), "no warning `{warning}`: {text}");
    }
}
