//! `PUT /api/v1/thresholds` outlives a restart. The thresholds are kept in the state dir
//! (`thresholds.json`, 0600, written whole) and, when that file exists at start, they are the ones
//! in force instead of `[events]` in the config. The start's log says which applies, so an
//! operator who edits the config knows why it does not take effect.

use std::path::{Path, PathBuf};

use super::Thresholds;

pub const THRESHOLDS_FILE: &str = "thresholds.json";

/// The thresholds kept in `dir`, if any. A file that does not parse or validate is an error that
/// names it and every problem: starting with other thresholds than the operator set would be a
/// silent change of policy.
pub fn load(dir: &Path) -> Result<Option<Thresholds>, String> {
    let path = dir.join(THRESHOLDS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let fix = "fix it, or delete it to use [events] from the config";
    let t: Thresholds = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid thresholds ({e}); {fix}", path.display()))?;
    t.validate("").map_err(|errors| {
        let list: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.error))
            .collect();
        format!(
            "{} is not valid: {}; {fix}",
            path.display(),
            list.join("; ")
        )
    })?;
    Ok(Some(t))
}

/// Keeps `t` in `dir` for the next start.
pub fn save(dir: &Path, t: &Thresholds) -> Result<PathBuf, String> {
    let path = dir.join(THRESHOLDS_FILE);
    let mut json = serde_json::to_vec_pretty(t).expect("thresholds serialise");
    json.push(b'\n');
    crate::statedir::write_private(&path, &json)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn saved_thresholds_load_back_private_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mut t = Thresholds::default();
        t.global.max_retry = 17;
        let path = save(dir.path(), &t).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(t));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "{\"global\": 5}").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            e.contains("thresholds.json") && e.contains("delete it"),
            "{e}"
        );
        let mut bad = Thresholds::default();
        bad.global.max_retry = 0;
        std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.contains("global.max_retry"), "{e}");
    }
}
