//! `netguard train`: fits the detection model on a labelled data set recorded by the lab, evaluates it
//! on a stratified held-out split and family by family (`lofo`: each scenario judged by a model that
//! never saw it), and writes the model (JSON) and a Markdown report. Same data and
//! seed give byte-identical files, so `cargo xtask train` can reproduce the shipped model.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use ndarray::Axis;

pub use crate::detect::Dataset;
use crate::detect::{
    CLASSES, DetectError, FEATURES, Model, SCHEMA_VERSION, TrainParams, TrainReport,
    evaluate_model, fit_model, read_dataset,
};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Directory of labelled feature CSVs (read recursively), as `cargo xtask lab` writes them.
    #[arg(long)]
    pub data: PathBuf,
    /// Deepest tree allowed.
    #[arg(long, default_value_t = TrainParams::default().max_depth)]
    pub max_depth: usize,
    /// Fewest training rows in a leaf.
    #[arg(long, default_value_t = TrainParams::default().min_samples_leaf)]
    pub min_samples_leaf: usize,
    /// Seed of the train/held-out split.
    #[arg(long, default_value_t = TrainParams::default().seed)]
    pub seed: u64,
    /// Share of each class held out for evaluation (0 < h < 1).
    #[arg(long, default_value_t = TrainParams::default().holdout)]
    pub holdout: f64,
    /// Use at most N rows per class (a seeded sample): keeps one huge scenario from drowning the rest.
    #[arg(long)]
    pub max_per_class: Option<usize>,
    /// Weigh classes equally when choosing splits (see `TrainParams::balance_classes`).
    #[arg(long, default_value_t = TrainParams::default().balance_classes, action = clap::ArgAction::Set)]
    pub balance_classes: bool,
    /// Model file; default netguard-user/models/default.json inside the repository, else ./model.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Markdown report; default: the model path with a .md extension.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Do not train: evaluate this model on every row of --data and print its confusion matrix and
    /// per-class figures (e.g. the shipped model on a fresh lab run). Writes nothing.
    #[arg(long, value_name = "MODEL")]
    pub evaluate: Option<PathBuf>,
}

/// Where `run` wrote its files.
#[derive(Debug)]
pub struct TrainOutcome {
    pub model: Model,
    pub model_path: PathBuf,
    pub report_path: PathBuf,
    /// With `--evaluate`: the model's figures on every row of the data.
    pub evaluation: Option<TrainReport>,
}

fn default_out() -> PathBuf {
    if Path::new("netguard-user/Cargo.toml").is_file() {
        PathBuf::from("netguard-user/models/default.json")
    } else {
        PathBuf::from("model.json")
    }
}

/// The CLI entry point: load, fit, evaluate, print, save. Progress goes to stdout.
pub fn run(args: &TrainArgs) -> Result<TrainOutcome, DetectError> {
    if !(args.holdout > 0.0 && args.holdout < 1.0) {
        return Err(DetectError::Fit(format!(
            "--holdout {} must be between 0 and 1",
            args.holdout
        )));
    }
    let params = TrainParams {
        max_depth: args.max_depth,
        min_samples_leaf: args.min_samples_leaf,
        seed: args.seed,
        holdout: args.holdout,
        max_per_class: args.max_per_class,
        balance_classes: args.balance_classes,
    };
    let mut say = |s: &str| println!("{s}");
    say(&format!(
        "loading {} (feature schema v{SCHEMA_VERSION}, {} features)",
        args.data.display(),
        FEATURES.len()
    ));
    let t0 = Instant::now();
    let data = read_dataset(&args.data, &mut |s| println!("  {s}"))?;
    say(&format!(
        "loaded {} rows in {:.1?}",
        data.labels.len(),
        t0.elapsed()
    ));
    if let Some(path) = &args.evaluate {
        let model = Model::load(path)?;
        let report = evaluate_model(&model, data.x.view(), &data.labels);
        println!(
            "\n{} on every row of {}:\n",
            path.display(),
            args.data.display()
        );
        // Every row here, not a held-out share.
        print!("{}", metrics_text(&report).replace("held-out rows", "rows"));
        return Ok(TrainOutcome {
            model,
            model_path: path.clone(),
            report_path: PathBuf::new(),
            evaluation: Some(report),
        });
    }
    let model = train(&data, &params, &mut say)?;
    println!();
    print!("{}", metrics_text(&model.report));
    let t = Instant::now();
    let families = lofo::evaluate(&data, &params, &mut |_| {})?;
    println!(
        "\n{} families held out one at a time in {:.1?}",
        families.len(),
        t.elapsed()
    );
    print!("{}", lofo::text(&families));
    let model_path = args.out.clone().unwrap_or_else(default_out);
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| model_path.with_extension("md"));
    model.save(&model_path)?;
    std::fs::write(&report_path, full_report(&model, &families)).map_err(|source| {
        DetectError::Io {
            path: report_path.clone(),
            source,
        }
    })?;
    println!(
        "\nsaved model to {} and report to {}",
        model_path.display(),
        report_path.display()
    );
    if model.report.macro_f1 < 0.97 {
        println!(
            "note: held-out macro F1 {:.4} is below the 0.97 goal",
            model.report.macro_f1
        );
    }
    Ok(TrainOutcome {
        model,
        model_path,
        report_path,
        evaluation: None,
    })
}

/// Splits, fits and evaluates (no files). `progress` hears each step.
pub fn train(
    data: &Dataset,
    params: &TrainParams,
    progress: &mut dyn FnMut(&str),
) -> Result<Model, DetectError> {
    let per_class: Vec<String> = CLASSES
        .iter()
        .map(|c| {
            format!(
                "{c} {}",
                data.summary.rows_per_class.get(*c).copied().unwrap_or(0)
            )
        })
        .collect();
    progress(&format!("rows per class: {}", per_class.join(", ")));
    let missing: Vec<&str> = CLASSES
        .iter()
        .copied()
        .filter(|c| !data.summary.rows_per_class.contains_key(*c))
        .collect();
    if !missing.is_empty() {
        progress(&format!(
            "warning: no rows for {}: the model will never predict them",
            missing.join(", ")
        ));
    }
    let rows = crate::detect::cap_per_class(&data.labels, params.max_per_class, params.seed);
    if rows.len() < data.labels.len() {
        progress(&format!(
            "using {} of {} rows (at most {} per class, seeded sample)",
            rows.len(),
            data.labels.len(),
            params.max_per_class.unwrap_or(0)
        ));
    }
    let labels: Vec<usize> = rows.iter().map(|&i| data.labels[i]).collect();
    let (train_pos, test_pos) =
        crate::detect::stratified_split(&labels, params.holdout, params.seed);
    let train_idx: Vec<usize> = train_pos.iter().map(|&p| rows[p]).collect();
    let test_idx: Vec<usize> = test_pos.iter().map(|&p| rows[p]).collect();
    progress(&format!(
        "split: {} train / {} held out (stratified, {:.0}% per class, seed {})",
        train_idx.len(),
        test_idx.len(),
        params.holdout * 100.0,
        params.seed
    ));
    let x_train = data.x.select(Axis(0), &train_idx);
    let y_train: Vec<usize> = train_idx.iter().map(|&i| data.labels[i]).collect();
    progress(&format!(
        "fitting decision tree (Gini, max depth {}, min {} rows per leaf) on {} rows × {} features",
        params.max_depth,
        params.min_samples_leaf,
        x_train.nrows(),
        FEATURES.len()
    ));
    let t = Instant::now();
    let (tree, importance) = fit_model(x_train.view(), &y_train, params)?;
    let mut model = Model::new(params.clone(), tree, TrainReport::default())?;
    progress(&format!(
        "fitted in {:.1?}: depth {}, {} leaves",
        t.elapsed(),
        model.depth(),
        model.leaves()
    ));
    progress(&format!("evaluating on {} held-out rows", test_idx.len()));
    let x_test = data.x.select(Axis(0), &test_idx);
    let y_test: Vec<usize> = test_idx.iter().map(|&i| data.labels[i]).collect();
    let mut report = evaluate_model(&model, x_test.view(), &y_test);
    report.train_rows = train_idx.len();
    report.depth = model.depth();
    report.leaves = model.leaves();
    let mut imp: Vec<(String, f64)> = importance
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0.0)
        .map(|(i, v)| (FEATURES[i].to_string(), *v))
        .collect();
    imp.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    report.feature_importance = imp;
    report.data = data.summary.clone();
    model.report = report;
    Ok(model)
}

/// Confusion matrix, per-class precision/recall/F1 and macro F1 as plain text.
pub fn metrics_text(r: &TrainReport) -> String {
    let mut s = String::new();
    let w = CLASSES.iter().map(|c| c.len()).max().unwrap_or(8);
    let _ = writeln!(
        s,
        "confusion matrix (rows: actual, columns: predicted), {} held-out rows",
        r.test_rows
    );
    let _ = write!(s, "{:w$} ", "");
    for c in CLASSES {
        let _ = write!(s, " {:>10}", abbreviate(c));
    }
    let _ = writeln!(s);
    for (c, row) in CLASSES.iter().zip(&r.confusion) {
        let _ = write!(s, "{c:w$} ");
        for n in row {
            let _ = write!(s, " {n:>10}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n{:w$}  precision  recall      f1  support", "class");
    for m in &r.per_class {
        let _ = writeln!(
            s,
            "{:w$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}",
            m.class, m.precision, m.recall, m.f1, m.support
        );
    }
    let _ = writeln!(
        s,
        "\nmacro F1 {:.4}   accuracy {:.4}",
        r.macro_f1, r.accuracy
    );
    s
}

/// Column headings of at most 10 characters (only `ssh_brute_force` is longer).
fn abbreviate(c: &str) -> &str {
    if c.len() > 10 {
        c.trim_end_matches("_force")
    } else {
        c
    }
}

/// The report shipped next to the model: the model's own part, then the leave-one-family-out tables
/// (kept out of the model file: the daemon has no use for them).
pub fn full_report(m: &Model, families: &[lofo::FamilyScore]) -> String {
    format!("{}\n{}", report_markdown(m), lofo::markdown(families))
}

/// The model's part of the Markdown report shipped next to it. It holds nothing time-dependent, so it is as
/// reproducible as the model.
pub fn report_markdown(m: &Model) -> String {
    let r = &m.report;
    let p = &m.params;
    let mut s = String::new();
    let _ = writeln!(s, "# NetGuard detection model\n");
    let _ = writeln!(
        s,
        "Decision tree (linfa-trees, Gini) on feature schema v{} ({} features). Reproduce with:\n\n```\nnetguard train --data DIR --max-depth {} --min-samples-leaf {} --seed {} --holdout {}{}\n```\n",
        m.schema_version,
        m.features.len(),
        p.max_depth,
        p.min_samples_leaf,
        p.seed,
        p.holdout,
        p.max_per_class
            .map(|n| format!(" --max-per-class {n}"))
            .unwrap_or_default()
            + &format!(" --balance-classes {}", p.balance_classes)
    );
    let _ = writeln!(
        s,
        "## Data\n\n- fingerprint `{}`\n- {} training rows, {} held-out rows (stratified per class)",
        r.data.fingerprint, r.train_rows, r.test_rows
    );
    for (c, n) in &r.data.rows_per_class {
        let _ = writeln!(s, "- `{c}`: {n} rows");
    }
    let _ = writeln!(
        s,
        "- files: {}\n",
        r.data
            .files
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "## Held-out results\n\nMacro F1 **{:.4}**, accuracy {:.4}.\n",
        r.macro_f1, r.accuracy
    );
    let _ = writeln!(
        s,
        "| class | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|"
    );
    for c in &r.per_class {
        let _ = writeln!(
            s,
            "| {} | {:.4} | {:.4} | {:.4} | {} |",
            c.class, c.precision, c.recall, c.f1, c.support
        );
    }
    let _ = writeln!(
        s,
        "\nConfusion matrix (rows: actual, columns: predicted):\n"
    );
    let _ = writeln!(s, "| | {} |", CLASSES.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(CLASSES.len()));
    for (c, row) in CLASSES.iter().zip(&r.confusion) {
        let cells: Vec<String> = row.iter().map(u64::to_string).collect();
        let _ = writeln!(s, "| **{c}** | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        s,
        "\n## Tree\n\nDepth {}, {} leaves. Feature importance (normalised Gini decrease):\n",
        r.depth, r.leaves
    );
    for (f, v) in &r.feature_importance {
        let _ = writeln!(s, "- `{f}`: {v:.4}");
    }
    let _ = writeln!(s, "\n```\n{}```", m.tree_text());
    s
}

pub mod lofo;

#[cfg(test)]
mod tests;
