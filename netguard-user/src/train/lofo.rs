//! Leave-one-family-out (LOFO) evaluation: how the model does on a kind of traffic it has never seen.
//!
//! The random split scores rows of scenarios whose other rows the model trained on, which says little
//! about a download or a voice call that no scenario showed it. Here each family (a lab scenario: the
//! CSV file stem, the same stem in several runs being one family) is held out in turn, a tree is
//! fitted on all the other families with the same parameters, and the held-out rows are judged the way
//! the daemon would act on them:
//! - only windows the daemon judges count (`Detector::candidates`): the source sent in the closing
//!   tick, at least `model_min_packets` packets in the long window, and the `0.0.0.0` aggregate only
//!   with `aggregate_min_sources` sources in it;
//! - a window "would be alerted" when the verdict is not benign, its confidence reaches
//!   `detect.min_confidence`, and the verdict's defining evidence holds (`check_evidence`), or when a
//!   default threshold rule (`[detect.rules]`) fires and its class's evidence holds: the daemon
//!   judges every window with both.
//!
//! Attack families are scored by recall: the share of their judged attack rows that reach their
//! class's evidence floor (a 100 pps "flood" does not, by design) and are alerted as that class.
//! Families where fewer than half the judged attack rows reach the floor are listed apart, as below
//! the floor, with the same figures. Benign families (and the benign rows beside an attack) are
//! scored by false alerts: rows (one-second windows) that would raise an alert, per minute of rows.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use ndarray::Axis;

use crate::detect::{
    CLASSES, Dataset, DetectConfig, DetectError, F, FeatureVector, Model, OVERFLOW_SRC,
    TrainParams, TrainReport, cap_per_class, check_evidence, compile_rules, fit_model,
};

/// Recall an attack family must reach, and false alerts a benign family may raise.
pub const RECALL_GOAL: f64 = 0.95;

/// One held-out family's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FamilyScore {
    pub family: String,
    /// The family's attack class (index into [`CLASSES`]), 0 for a benign-only family.
    pub class: usize,
    pub attack_rows: usize,
    /// Attack rows the daemon judges at all.
    pub judged: usize,
    /// Judged attack rows whose own class's evidence holds (at or above the floor).
    pub eligible: usize,
    /// Eligible rows that would be alerted as their class.
    pub detected: usize,
    pub benign_rows: usize,
    /// Benign rows that would raise an alert, by the class alerted.
    pub false_alerts: BTreeMap<String, usize>,
    /// Benign rows the model called an attack with enough confidence, where the evidence check
    /// stopped the alert.
    pub rejected: usize,
}

impl FamilyScore {
    pub fn recall(&self) -> f64 {
        if self.eligible == 0 {
            0.0
        } else {
            self.detected as f64 / self.eligible as f64
        }
    }

    pub fn false_alert_count(&self) -> usize {
        self.false_alerts.values().sum()
    }

    /// False alerts per minute of benign rows (60 one-second rows make a minute).
    pub fn false_per_min(&self) -> f64 {
        if self.benign_rows == 0 {
            0.0
        } else {
            self.false_alert_count() as f64 * 60.0 / self.benign_rows as f64
        }
    }

    /// An attack family whose judged rows mostly stay below its class's evidence floor.
    pub fn below_floor(&self) -> bool {
        self.class != 0 && self.eligible * 2 < self.judged.max(1)
    }

    pub fn meets_goal(&self) -> bool {
        let benign_ok = self.false_alert_count() == 0;
        if self.class == 0 || self.below_floor() {
            benign_ok
        } else {
            benign_ok && self.recall() >= RECALL_GOAL
        }
    }
}

/// Whether the daemon judges this window at all: the gates of `Detector::candidates`.
pub fn judged(values: &[f32], src: IpAddr, cfg: &DetectConfig) -> bool {
    let g = |f: F| values[f as usize];
    let packets = f64::from(g(F::PktsPerS10s)) * cfg.features.long_window.as_secs_f64();
    let aggregate_ok = src != OVERFLOW_SRC || g(F::Sources) >= cfg.aggregate_min_sources as f32;
    g(F::PktsPerS1s) > 0.0 && aggregate_ok && packets + 0.5 >= f64::from(cfg.model_min_packets)
}

fn vector(values: &[f32], src: IpAddr) -> FeatureVector {
    FeatureVector {
        src,
        ts: chrono::DateTime::UNIX_EPOCH,
        values: values.to_vec(),
        dst_ip: None,
        dst_port: None,
    }
}

/// Holds out each family in turn, fits on the rest with `params`, and scores the held-out rows.
pub fn evaluate(
    data: &Dataset,
    params: &TrainParams,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<FamilyScore>, DetectError> {
    evaluate_some(data, params, &|_| true, progress)
}

/// [`evaluate`] for the families `which` selects only (a test checks a few of the shipped report's
/// rows in a debug build, where all ~60 fits would take minutes).
pub fn evaluate_some(
    data: &Dataset,
    params: &TrainParams,
    which: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<FamilyScore>, DetectError> {
    evaluate_with(data, params, &DetectConfig::default(), which, progress)
}

/// [`evaluate_some`] with the daemon's gates, evidence floors and rules taken from `cfg`.
pub fn evaluate_with(
    data: &Dataset,
    params: &TrainParams,
    cfg: &DetectConfig,
    which: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<FamilyScore>, DetectError> {
    // The same rows as the random split draws from (the per-class cap, if any).
    let usable = cap_per_class(&data.labels, params.max_per_class, params.seed);
    let mut out = Vec::with_capacity(data.families.len());
    for (fi, name) in data.families.iter().enumerate() {
        if !which(name) {
            continue;
        }
        let train_idx: Vec<usize> = usable
            .iter()
            .copied()
            .filter(|&i| data.family[i] != fi)
            .collect();
        let test_idx: Vec<usize> = (0..data.labels.len())
            .filter(|&i| data.family[i] == fi)
            .collect();
        let y: Vec<usize> = train_idx.iter().map(|&i| data.labels[i]).collect();
        let (tree, _) = fit_model(data.x.select(Axis(0), &train_idx).view(), &y, params)?;
        let model = Model::new(params.clone(), tree, TrainReport::default())?;
        let score = score_family(&model, data, name, &test_idx, cfg);
        progress(&format!(
            "held out {name}: trained on {} rows, depth {}",
            train_idx.len(),
            model.depth()
        ));
        out.push(score);
    }
    Ok(out)
}

/// Scores `rows` (one family) with `model` as the daemon would act on them.
pub fn score_family(
    model: &Model,
    data: &Dataset,
    name: &str,
    rows: &[usize],
    cfg: &DetectConfig,
) -> FamilyScore {
    let mut s = FamilyScore {
        family: name.into(),
        ..FamilyScore::default()
    };
    let mut classes = vec![0usize; CLASSES.len()];
    // The threshold rules judge every window beside the model, as in the daemon; they are config,
    // not trained, so they see the held-out family no differently than any other.
    let rules = compile_rules(&cfg.rules);
    for &i in rows {
        let values = data.x.row(i);
        let values = values.as_slice().expect("rows are contiguous");
        let label = data.labels[i];
        classes[label] += 1;
        let v = vector(values, data.src[i]);
        let ruled: Vec<&str> = rules
            .iter()
            .filter(|r| r.fires(values) && check_evidence(&r.class, &v, &cfg.evidence).is_ok())
            .map(|r| r.class.as_str())
            .collect();
        if !judged(values, data.src[i], cfg) {
            if label != 0 {
                s.attack_rows += 1;
            } else {
                s.benign_rows += 1;
                if let Some(c) = ruled.first() {
                    *s.false_alerts.entry((*c).to_string()).or_default() += 1;
                }
            }
            continue;
        }
        let p = model.predict(values);
        let confident = p.index != 0 && p.confidence >= cfg.min_confidence;
        let by_model = confident && check_evidence(p.class, &v, &cfg.evidence).is_ok();
        let alerted = by_model || !ruled.is_empty();
        if label == 0 {
            s.benign_rows += 1;
            if alerted {
                let class = if by_model { p.class } else { ruled[0] };
                *s.false_alerts.entry(class.to_string()).or_default() += 1;
            } else if confident {
                s.rejected += 1;
            }
        } else {
            s.attack_rows += 1;
            s.judged += 1;
            if check_evidence(CLASSES[label], &v, &cfg.evidence).is_ok() {
                s.eligible += 1;
                if (by_model && p.index == label) || ruled.contains(&CLASSES[label]) {
                    s.detected += 1;
                }
            }
        }
    }
    // A scenario has one attack class; its most frequent one, should a file ever hold two.
    s.class = (1..CLASSES.len())
        .filter(|&c| classes[c] > 0)
        .max_by_key(|&c| (classes[c], std::cmp::Reverse(c)))
        .unwrap_or(0);
    s
}

/// The rule, in the words both the console output and the report use.
const RULE: &str = "Each family (a lab scenario: the CSV file stem; one stem in several runs is one family) is \
held out in turn; a tree with the same parameters is fitted on all other families and judges the held-out \
rows as the daemon would act: only windows the daemon judges (the source sent in the closing tick, at least \
`model_min_packets` packets, the `0.0.0.0` aggregate only with `aggregate_min_sources` sources), alerted when \
the verdict is not benign, its confidence is at least `min_confidence` (0.6) and the verdict's defining \
evidence holds (`[detect.evidence]` defaults), or when a default threshold rule (`[detect.rules]`, not \
trained, so blind to the hold-out as much as to anything) fires and its class's evidence holds. Recall: alerted as its own class / judged attack rows that \
reach their class's evidence floor. False alerts: benign rows (one-second windows) that would raise an \
alert; per minute = per 60 rows.";

/// The LOFO tables as Markdown (the report's last section).
pub fn markdown(scores: &[FamilyScore]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Leave-one-family-out\n\n{RULE}\n");
    let _ = writeln!(s, "{}\n", summary(scores));
    let attack = |below: bool| {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| family | class | attack rows | judged | at/above floor | alerted | recall | benign rows | false alerts | |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for f in scores
            .iter()
            .filter(|f| f.class != 0 && f.below_floor() == below)
        {
            let _ = writeln!(t, "{}", markdown_row(f));
        }
        t
    };
    let _ = writeln!(
        s,
        "### Attack families (goal: recall >= {RECALL_GOAL})\n\n{}",
        attack(false)
    );
    let _ = writeln!(
        s,
        "### Attack families below the flood floor: not alerted by design\n\nMost of their judged rows stay \
         below their class's evidence floor (e.g. `min_udp_pps` 1000); the rows that reach it are scored as \
         above.\n\n{}",
        attack(true)
    );
    let _ = writeln!(
        s,
        "### Benign families (goal: no false alert)\n\n| family | rows | minutes | false alerts | per minute | stopped by evidence | |\n|---|---:|---:|---:|---:|---:|---|"
    );
    for f in scores.iter().filter(|f| f.class == 0) {
        let _ = writeln!(s, "{}", markdown_row(f));
    }
    s
}

/// A family's row in its Markdown table (attack or benign).
pub fn markdown_row(f: &FamilyScore) -> String {
    let verdict = if f.meets_goal() { "" } else { "**miss**" };
    if f.class == 0 {
        format!(
            "| `{}` | {} | {:.1} | {} | {:.2} | {} | {verdict} |",
            f.family,
            f.benign_rows,
            f.benign_rows as f64 / 60.0,
            alerts_text(f),
            f.false_per_min(),
            f.rejected,
        )
    } else {
        format!(
            "| `{}` | {} | {} | {} | {} | {} | {:.3} | {} | {} | {verdict} |",
            f.family,
            CLASSES[f.class],
            f.attack_rows,
            f.judged,
            f.eligible,
            f.detected,
            f.recall(),
            f.benign_rows,
            alerts_text(f),
        )
    }
}

fn alerts_text(f: &FamilyScore) -> String {
    if f.false_alerts.is_empty() {
        return "0".into();
    }
    let by: Vec<String> = f
        .false_alerts
        .iter()
        .map(|(c, n)| format!("{n} {c}"))
        .collect();
    format!("{} ({})", f.false_alert_count(), by.join(", "))
}

/// One line: how many families meet their goal, and which do not.
pub fn summary(scores: &[FamilyScore]) -> String {
    let count = |pred: &dyn Fn(&FamilyScore) -> bool| scores.iter().filter(|f| pred(f)).count();
    let attack = count(&|f| f.class != 0 && !f.below_floor());
    let attack_ok = count(&|f| f.class != 0 && !f.below_floor() && f.meets_goal());
    let benign = count(&|f| f.class == 0);
    let benign_ok = count(&|f| f.class == 0 && f.meets_goal());
    let below = count(&|f| f.below_floor());
    let misses: Vec<&str> = scores
        .iter()
        .filter(|f| !f.meets_goal())
        .map(|f| f.family.as_str())
        .collect();
    format!(
        "Goals met by {attack_ok} of {attack} attack families and {benign_ok} of {benign} benign families \
         ({below} attack families below the floor){}.",
        if misses.is_empty() {
            String::new()
        } else {
            format!("; missed: {}", misses.join(", "))
        }
    )
}

/// The tables as plain text for the console.
pub fn text(scores: &[FamilyScore]) -> String {
    let mut s = String::new();
    let w = scores
        .iter()
        .map(|f| f.family.len())
        .max()
        .unwrap_or(10)
        .max(10);
    let _ = writeln!(
        s,
        "leave-one-family-out (each scenario judged by a model that never saw it, daemon gates applied)"
    );
    let _ = writeln!(
        s,
        "{:w$}  {:15}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  false alerts",
        "family", "class", "attack", "judged", "floor", "alert", "recall", "benign"
    );
    let mut part = |title: &str, pred: &dyn Fn(&FamilyScore) -> bool| {
        let _ = writeln!(s, "-- {title}");
        for f in scores.iter().filter(|f| pred(f)) {
            let _ = writeln!(
                s,
                "{:w$}  {:15}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {}{}",
                f.family,
                CLASSES[f.class],
                f.attack_rows,
                f.judged,
                f.eligible,
                f.detected,
                if f.class == 0 {
                    "-".to_string()
                } else {
                    format!("{:.3}", f.recall())
                },
                f.benign_rows,
                alerts_text(f),
                if f.meets_goal() { "" } else { "  MISS" }
            );
        }
    };
    part("attack families", &|f| f.class != 0 && !f.below_floor());
    part("below the flood floor: not alerted by design", &|f| {
        f.below_floor()
    });
    part("benign families", &|f| f.class == 0);
    let _ = writeln!(s, "{}", summary(scores));
    s
}
