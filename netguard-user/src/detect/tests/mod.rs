//! Unit tests of feature windows, the model file, rules and response. No root needed.

mod engine;
pub(crate) mod model;
mod response;
pub(crate) mod sim;
mod windows;

/// The daemon moves these into its tasks.
#[test]
fn detection_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<crate::detect::Extractor>();
    check::<crate::detect::Detector>();
    check::<crate::detect::Model>();
}

/// Writes the simulated scenarios as a labelled data set, to try `netguard train` before the lab has
/// recorded real traffic: `NETGUARD_SIM_DATA=/tmp/sim cargo test -p netguard-user write_sim_dataset -- --ignored`
#[test]
#[ignore = "a tool, not a check"]
fn write_sim_dataset() {
    use std::io::Write as _;
    let Some(dir) = std::env::var_os("NETGUARD_SIM_DATA") else {
        eprintln!("skipped: set NETGUARD_SIM_DATA=DIR");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (ci, class) in crate::detect::CLASSES.iter().enumerate() {
        let mut f = std::fs::File::create(dir.join(format!("sim-{class}.csv"))).unwrap();
        writeln!(
            f,
            "{}{}",
            crate::detect::RECORD_MAGIC,
            crate::detect::SCHEMA_VERSION
        )
        .unwrap();
        writeln!(f, "label,ts_ms,src,{}", crate::detect::FEATURES.join(",")).unwrap();
        for s in 0..20u64 {
            for v in sim::scenario(class, s * 31 + ci as u64, 20) {
                let mut row = Vec::new();
                crate::detect::record_row(&mut row, &v).unwrap();
                write!(f, "{class},").unwrap();
                f.write_all(&row).unwrap();
            }
        }
    }
}
