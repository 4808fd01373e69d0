use std::{io::Write as _, path::Path};

use super::*;
use crate::detect::{FeatureVector, RECORD_MAGIC, read_dataset, record_row, write_record_header};

/// Writes simulated scenarios as a lab data set: one CSV per class, a schema line and a label column.
fn write_dataset(dir: &Path, per_class: u64, ticks: usize) {
    for (ci, class) in CLASSES.iter().enumerate() {
        let sub = dir.join(if ci % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&sub).unwrap();
        let mut f = std::fs::File::create(sub.join(format!("{class}.csv"))).unwrap();
        writeln!(f, "{RECORD_MAGIC}{SCHEMA_VERSION}").unwrap();
        writeln!(f, "label,ts_ms,src,{}", FEATURES.join(",")).unwrap();
        for s in 0..per_class {
            for v in crate::detect::tests::sim::scenario(class, 100 + s * 13 + ci as u64, ticks) {
                let mut row = Vec::new();
                record_row(&mut row, &v).unwrap();
                write!(f, "{class},").unwrap();
                f.write_all(&row).unwrap();
            }
        }
    }
}

fn args(data: &Path, out: &Path) -> TrainArgs {
    TrainArgs {
        data: data.into(),
        max_depth: 10,
        min_samples_leaf: 2,
        seed: 7,
        holdout: 0.3,
        max_per_class: None,
        balance_classes: false,
        out: Some(out.join("model.json")),
        report: None,
        evaluate: None,
    }
}

#[test]
fn trains_to_a_high_macro_f1_and_is_byte_for_byte_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, 6, 12);
    let (o1, o2) = (dir.path().join("o1"), dir.path().join("o2"));
    let first = run(&args(&data, &o1)).unwrap();
    let r = &first.model.report;
    assert!(
        r.macro_f1 >= 0.95,
        "macro F1 {}\n{}",
        r.macro_f1,
        metrics_text(r)
    );
    assert_eq!(r.per_class.len(), CLASSES.len());
    assert!(r.test_rows > 0 && r.train_rows > r.test_rows);
    assert_eq!(r.data.files.len(), CLASSES.len());
    assert_eq!(first.report_path, o1.join("model.md"));

    let second = run(&args(&data, &o2)).unwrap();
    let (a, b) = (
        std::fs::read(&first.model_path).unwrap(),
        std::fs::read(&second.model_path).unwrap(),
    );
    assert!(a == b, "same data and seed must give identical model bytes");
    assert_eq!(
        std::fs::read(&first.report_path).unwrap(),
        std::fs::read(&second.report_path).unwrap()
    );
    let loaded = Model::load(&first.model_path).unwrap();
    assert_eq!(loaded.params.seed, 7);

    // Another seed splits differently (the data fingerprint stays).
    let other = run(&TrainArgs {
        seed: 8,
        ..args(&data, &dir.path().join("o3"))
    })
    .unwrap();
    assert_eq!(other.model.report.data.fingerprint, r.data.fingerprint);
    let md = std::fs::read_to_string(&first.report_path).unwrap();
    assert!(
        md.contains("Macro F1") && md.contains("| syn_flood |"),
        "{md}"
    );
}

#[test]
fn a_class_cap_samples_big_classes_and_keeps_small_ones_whole() {
    let labels: Vec<usize> = (0..1000).map(|i| if i < 900 { 1 } else { i % 6 }).collect();
    let rows = crate::detect::cap_per_class(&labels, Some(50), 3);
    let count = |c| rows.iter().filter(|&&i| labels[i] == c).count();
    assert_eq!(count(1), 50);
    assert_eq!(count(0), labels.iter().filter(|&&l| l == 0).count());
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "data order");
    assert_eq!(rows, crate::detect::cap_per_class(&labels, Some(50), 3));
    assert_eq!(crate::detect::cap_per_class(&labels, None, 3).len(), 1000);
}

#[test]
fn the_split_is_stratified_and_seeded() {
    let labels: Vec<usize> = (0..600).map(|i| i % 6).collect();
    let (tr, te) = crate::detect::stratified_split(&labels, 0.25, 1);
    assert_eq!(te.len(), 150);
    for c in 0..6 {
        assert_eq!(te.iter().filter(|&&i| labels[i] == c).count(), 25);
    }
    assert_eq!(tr.len() + te.len(), 600);
    assert_eq!(
        crate::detect::stratified_split(&labels, 0.25, 1),
        (tr.clone(), te.clone())
    );
    assert_ne!(crate::detect::stratified_split(&labels, 0.25, 2).1, te);
}

fn one_file(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("x.csv"), body).unwrap();
}

fn header() -> String {
    format!(
        "{RECORD_MAGIC}{SCHEMA_VERSION}\nlabel,ts_ms,src,{}\n",
        FEATURES.join(",")
    )
}

fn row(label: &str) -> String {
    format!(
        "{label},1,10.0.0.1,{}\n",
        vec!["0"; FEATURES.len()].join(",")
    )
}

fn load_err(body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    one_file(dir.path(), body);
    read_dataset(dir.path(), &mut |_| {})
        .unwrap_err()
        .to_string()
}

#[test]
fn data_errors_name_the_file_and_line() {
    let e = load_err(&format!("{RECORD_MAGIC}0\n"));
    assert!(
        e.contains("x.csv") && e.contains(&format!("v{SCHEMA_VERSION}")) && e.contains("re-record"),
        "{e}"
    );
    let e = load_err(&format!("{}{}{}", header(), row("benign"), row("dos")));
    assert!(
        e.contains("x.csv:4") && e.contains("unknown label `dos`"),
        "{e}"
    );
    let e = load_err(&format!(
        "{}{}benign,1,10.0.0.1,0\n",
        header(),
        row("benign")
    ));
    assert!(e.contains("x.csv:4") && e.contains("columns"), "{e}");
    let e = load_err(&format!(
        "{}{}",
        header(),
        row("benign").replacen(",0", ",NaN", 1)
    ));
    assert!(e.contains("x.csv:3") && e.contains(FEATURES[0]), "{e}");
    let e = load_err(&format!(
        "{RECORD_MAGIC}{SCHEMA_VERSION}\nts_ms,src,{}\n",
        FEATURES.join(",")
    ));
    assert!(e.contains("x.csv:2") && e.contains("unlabelled"), "{e}");
    let e = load_err("ts_ms,src\n");
    assert!(e.contains("x.csv:1") && e.contains("schema line"), "{e}");
}

#[test]
fn a_recording_round_trips_exact_values() {
    let v = FeatureVector {
        src: "2001:db8::1".parse().unwrap(),
        ts: chrono::Utc::now(),
        values: (0..FEATURES.len()).map(|i| i as f32 / 3.0 + 1e-7).collect(),
        dst_ip: None,
        dst_port: None,
    };
    let mut buf = Vec::new();
    write_record_header(&mut buf).unwrap();
    record_row(&mut buf, &v).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("# netguard-features v{SCHEMA_VERSION}"));
    assert_eq!(lines[1], format!("ts_ms,src,{}", FEATURES.join(",")));
    let cols: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(cols[0], v.ts.timestamp_millis().to_string());
    assert_eq!(cols[1], "2001:db8::1");
    let back: Vec<f32> = cols[2..].iter().map(|c| c.parse().unwrap()).collect();
    assert_eq!(back, v.values);
    // Labelled, it loads.
    let dir = tempfile::tempdir().unwrap();
    let labelled = format!("{}\nlabel,{}\nport_scan,{}\n", lines[0], lines[1], lines[2]);
    one_file(dir.path(), &labelled);
    let ds = read_dataset(dir.path(), &mut |_| {}).unwrap();
    assert_eq!(ds.labels, vec![4]);
    assert_eq!(ds.x.row(0).to_vec(), v.values);
}

/// `cargo xtask train` (no arguments) must rewrite the shipped model and report byte for byte: the
/// shipped data set, the parameters the model records, the fixed seed.
#[test]
fn the_shipped_model_and_report_are_reproduced_from_the_shipped_data() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_path = root.join("models/default.json");
    let shipped = Model::load(&model_path).expect("the shipped model loads");
    assert_eq!(
        shipped.params,
        TrainParams::default(),
        "the shipped model was trained with non-default parameters: `cargo xtask train` would not reproduce it"
    );
    let data = read_dataset(&root.join("models/lab-data"), &mut |_| {}).unwrap();
    assert_eq!(
        data.summary.fingerprint, shipped.report.data.fingerprint,
        "shipped data set changed since training"
    );
    let again = train(&data, &shipped.params, &mut |_| {}).unwrap();
    assert!(
        again.to_json() == std::fs::read_to_string(&model_path).unwrap(),
        "retraining gives a different model: run `cargo xtask train` and commit the result"
    );
    let md = std::fs::read_to_string(root.join("models/default.md")).unwrap();
    assert!(
        md.starts_with(&format!(
            "{}\n## Leave-one-family-out",
            report_markdown(&again)
        )),
        "the shipped report does not match the model"
    );
    // The leave-one-family-out section takes ~60 fits: all of them in release (the next test), a few
    // families of each kind here, each of whose rows must be in the report as it is.
    let few = [
        "benign_download_unlimited",
        "benign_rates",
        "syn_flood_fixed_ports",
        "udp_flood_everyday",
        "icmp_flood_spoofed_2k",
        "port_scan_slow_t2",
        "ssh_brute_force_v6",
    ];
    let scores =
        lofo::evaluate_some(&data, &shipped.params, &|f| few.contains(&f), &mut |_| {}).unwrap();
    assert_eq!(
        scores.len(),
        few.len(),
        "a family of the check is gone from the data"
    );
    for f in &scores {
        let row = lofo::markdown_row(f);
        assert!(
            md.contains(&row),
            "the report lacks `{row}`: run `cargo xtask train`"
        );
    }
    assert!(
        again.report.macro_f1 > 0.9,
        "macro F1 {}",
        again.report.macro_f1
    );
}

/// The whole shipped report, leave-one-family-out section included: about 60 fits, seconds in a release
/// build (`cargo test --release -p netguard-user --lib shipped`), minutes in a debug one.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "about 60 tree fits; run in release: cargo test --release -p netguard-user --lib shipped"
)]
fn the_shipped_report_with_its_leave_one_family_out_section_is_reproduced() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = Model::load(root.join("models/default.json")).unwrap();
    let data = read_dataset(&root.join("models/lab-data"), &mut |_| {}).unwrap();
    let families = lofo::evaluate(&data, &shipped.params, &mut |_| {}).unwrap();
    assert_eq!(
        full_report(&shipped, &families),
        std::fs::read_to_string(root.join("models/default.md")).unwrap(),
        "the shipped report does not match the model and its leave-one-family-out evaluation"
    );
}

#[test]
fn evaluate_scores_a_given_model_on_every_row_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, 2, 12);
    let trained = run(&args(&data, dir.path())).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let mut a = args(&data, &elsewhere);
    a.evaluate = Some(trained.model_path.clone());
    let out = run(&a).unwrap();
    assert!(!elsewhere.exists(), "evaluation wrote files");
    let eval = out.evaluation.expect("an evaluation");
    let rows: u64 = eval.confusion.iter().flatten().sum();
    let all = trained.model.report.train_rows + trained.model.report.test_rows;
    assert_eq!(rows as usize, all, "every row, not only the held-out ones");
    assert!(eval.macro_f1 > 0.9, "{}", eval.macro_f1);
}

/// One hand-made row: label, source address, the features that are not 0.
type Row<'a> = (&'a str, &'a str, &'a [(crate::detect::F, f32)]);

/// A data set of hand-made rows, one family, with the given labels, sources and features.
fn rows(spec: &[Row<'_>]) -> Dataset {
    let mut values = Vec::new();
    let (mut labels, mut src) = (Vec::new(), Vec::new());
    for (label, addr, set) in spec {
        let mut v = vec![0f32; FEATURES.len()];
        v[crate::detect::F::Sources as usize] = 1.0;
        for (f, x) in *set {
            v[*f as usize] = *x;
        }
        values.extend(v);
        labels.push(crate::detect::class_index(label).unwrap());
        src.push(addr.parse().unwrap());
    }
    Dataset {
        x: ndarray::Array2::from_shape_vec((labels.len(), FEATURES.len()), values).unwrap(),
        family: vec![0; labels.len()],
        families: vec!["f".into()],
        labels,
        src,
        summary: Default::default(),
    }
}

#[test]
fn lofo_scores_with_the_daemons_gates_and_evidence() {
    use crate::detect::{DetectConfig, F, Node, Tree};
    // A tree that calls everything a UDP flood, confidently: (10+1)/(10+6) = 0.69.
    let tree = Tree {
        nodes: vec![Node::Leaf {
            counts: vec![0, 0, 10, 0, 0, 0],
        }],
    };
    let model = Model::new(TrainParams::default(), tree, Default::default()).unwrap();
    let flood: &[(F, f32)] = &[
        (F::PktsPerS1s, 2000.0),
        (F::PktsPerS10s, 2000.0),
        (F::UdpShare10s, 1.0),
    ];
    let data = rows(&[
        // A download's ACKs: the verdict's own evidence (UDP share) stops it.
        (
            "benign",
            "10.0.0.1",
            &[
                (F::PktsPerS1s, 2000.0),
                (F::PktsPerS10s, 2000.0),
                (F::TcpShare10s, 1.0),
            ],
        ),
        // UDP at a flood's rate from a benign client: a false alert.
        ("benign", "10.0.0.2", flood),
        // Quiet in the closing tick: the daemon does not judge it.
        (
            "benign",
            "10.0.0.3",
            &[(F::PktsPerS10s, 2000.0), (F::UdpShare10s, 1.0)],
        ),
        // The aggregate of three small sources: not judged either.
        (
            "benign",
            "0.0.0.0",
            &[
                (F::PktsPerS1s, 2000.0),
                (F::PktsPerS10s, 2000.0),
                (F::UdpShare10s, 1.0),
                (F::Sources, 3.0),
            ],
        ),
        ("udp_flood", "10.0.12.1", flood),
        // 100 pps: below the floor, judged but not eligible.
        (
            "udp_flood",
            "10.0.12.2",
            &[
                (F::PktsPerS1s, 100.0),
                (F::PktsPerS10s, 100.0),
                (F::UdpShare10s, 1.0),
            ],
        ),
        // Gone quiet: not judged.
        (
            "udp_flood",
            "10.0.12.3",
            &[(F::PktsPerS10s, 900.0), (F::UdpShare10s, 1.0)],
        ),
    ]);
    let all: Vec<usize> = (0..data.labels.len()).collect();
    let s = lofo::score_family(&model, &data, "f", &all, &DetectConfig::default());
    assert_eq!(s.class, crate::detect::class_index("udp_flood").unwrap());
    assert_eq!(
        (s.attack_rows, s.judged, s.eligible, s.detected),
        (3, 2, 1, 1)
    );
    assert_eq!(s.benign_rows, 4);
    assert_eq!(s.false_alerts.get("udp_flood"), Some(&1));
    assert_eq!(s.rejected, 1);
    assert!(
        !s.below_floor() && !s.meets_goal(),
        "a false alert misses the goal"
    );
    assert!(
        (s.false_per_min() - 15.0).abs() < 1e-9,
        "1 of 4 rows is 15 per minute"
    );
    let md = lofo::markdown(std::slice::from_ref(&s));
    assert!(
        md.contains("| `f` | udp_flood | 3 | 2 | 1 | 1 | 1.000 | 4 | 1 (1 udp_flood) | **miss** |"),
        "{md}"
    );
}

#[test]
fn lofo_holds_out_each_family_and_says_which_miss() {
    // Simulated scenarios, one family per class: a held-out attack class is one the tree never saw,
    // so it cannot be recalled, and the summary names it.
    let data = crate::detect::tests::model::sim_dataset(3, 8);
    let params = TrainParams {
        min_samples_leaf: 1,
        ..TrainParams::default()
    };
    let mut heard = Vec::new();
    // The tree alone: no threshold rules.
    let tree_only = crate::detect::DetectConfig {
        rules: crate::detect::RulesConfig::inherit(),
        ..Default::default()
    };
    let scores = lofo::evaluate_with(&data, &params, &tree_only, &|_| true, &mut |s| {
        heard.push(s.to_string())
    })
    .unwrap();
    assert_eq!(scores.len(), CLASSES.len());
    assert_eq!(heard.len(), CLASSES.len());
    let benign = &scores[0];
    assert_eq!((benign.class, benign.attack_rows), (0, 0));
    assert!(benign.benign_rows > 0);
    for s in &scores[1..] {
        assert!(s.detected == 0, "{s:?}");
    }
    // The daemon's default rules are not trained: they still catch a flood the tree never saw.
    let with_rules = lofo::evaluate(&data, &params, &mut |_| {}).unwrap();
    let syn = with_rules.iter().find(|s| s.class == 1).unwrap();
    assert!(syn.detected > 0, "{syn:?}");
    assert!(with_rules[0].false_alerts.is_empty(), "{:?}", with_rules[0]);
    let text = lofo::text(&scores);
    assert!(
        text.contains("benign families") && text.contains("missed:"),
        "{text}"
    );
}
