//! Fitting and evaluating the decision tree.
//!
//! linfa-trees grows the tree (CART, Gini). On its own it is not reproducible: it keeps class
//! frequencies in `std::collections::HashMap`s, whose iteration order is random per process, so the
//! float sums that rank candidate splits differ in their last bits from run to run, and of two splits of
//! equal quality either may win (on tie-heavy data most refits differ; see the
//! `linfa_alone_is_not_reproducible` test). Two measures make "same data + same seed ⇒ same model
//! bytes" hold:
//! - seeded sample weights of 1 + (a distinct sliver below 1/64) put different partitions in general
//!   position, so their quality differs by far more than rounding (`tie_breaking_weights`);
//! - the fitted tree is rewritten in a canonical form: among the features that separate a node's
//!   training samples into exactly the same two sets, the lowest-indexed one is used, with the threshold
//!   halfway between the sets; leaf class counts are recomputed from the training samples, the majority
//!   decided with ties going to the lower class index, and sibling leaves with the same verdict merged.
//!
//! The `fitting_is_deterministic_even_with_tied_splits` test refits tie-heavy data to watch for it.

use std::collections::BTreeMap;

use linfa::prelude::*;
use linfa_trees::{DecisionTree, SplitQuality, TreeNode};
use ndarray::{Array1, ArrayView2};
use rand_chacha::{
    ChaCha8Rng,
    rand_core::{RngCore, SeedableRng},
};
use serde::{Deserialize, Serialize};

use super::{
    CLASSES, DetectError,
    features::FEATURES,
    model::{Model, Node, Tree, leaf_verdict},
    sketch::mix64,
};

/// Hyper-parameters, recorded in the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    pub max_depth: usize,
    pub min_samples_leaf: usize,
    pub seed: u64,
    /// Share of each class held out for evaluation.
    pub holdout: f64,
    /// At most this many rows per class (a seeded sample), so that one huge scenario (a spoofed flood
    /// records a row per forged address) cannot drown the others.
    #[serde(default)]
    pub max_per_class: Option<usize>,
    /// Weigh each class's rows so that every class carries the same total weight when splits are
    /// chosen (leaf verdicts still count rows). The lab records far more benign windows than attack
    /// ones; unweighted, a split that isolates a few dozen attack rows barely moves the Gini impurity.
    #[serde(default)]
    pub balance_classes: bool,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            max_depth: 12,
            min_samples_leaf: 3,
            seed: 42,
            holdout: 0.25,
            max_per_class: None,
            balance_classes: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Held-out rows of this class.
    pub support: u64,
}

/// Where the training data came from, so a report can be traced back to its data set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Relative paths of the CSV files, sorted.
    pub files: Vec<String>,
    pub rows_per_class: BTreeMap<String, usize>,
    /// FNV-1a 64 of every label and value in load order: equal data gives an equal fingerprint.
    pub fingerprint: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub train_rows: usize,
    pub test_rows: usize,
    /// `confusion[actual][predicted]`, in [`CLASSES`] order.
    pub confusion: Vec<Vec<u64>>,
    pub per_class: Vec<ClassMetrics>,
    /// Mean F1 over the classes present in the held-out set.
    pub macro_f1: f64,
    pub accuracy: f64,
    pub depth: usize,
    pub leaves: usize,
    /// Normalised Gini importance, highest first (features that are never used are left out).
    pub feature_importance: Vec<(String, f64)>,
    pub data: DataSummary,
}

/// Fisher-Yates on a ChaCha8 stream: both are fixed algorithms (unlike a library `shuffle`, whose
/// algorithm may change between versions), so a seed always gives the same order.
fn shuffle(idx: &mut [usize], rng: &mut ChaCha8Rng) {
    for i in (1..idx.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
}

/// Row indices to train and evaluate on: all of them, or at most `max` per class (a seeded sample,
/// returned in data order).
pub fn cap_per_class(labels: &[usize], max: Option<usize>, seed: u64) -> Vec<usize> {
    let Some(max) = max else {
        return (0..labels.len()).collect();
    };
    // A stream of its own, so that capping does not change the split of classes below the cap.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6361_705f_7065_725f);
    let mut keep = Vec::new();
    for class in 0..CLASSES.len() {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        if idx.len() > max {
            shuffle(&mut idx, &mut rng);
            idx.truncate(max);
        }
        keep.extend(idx);
    }
    keep.sort_unstable();
    keep
}

/// Per class, a seeded shuffle and the first `holdout` share to the test set (at least one row of any
/// class with two or more). Both index lists come back sorted, so fitting sees rows in data order.
pub fn stratified_split(labels: &[usize], holdout: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in 0..CLASSES.len() {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        shuffle(&mut idx, &mut rng);
        let n = idx.len();
        let k = if n < 2 {
            0
        } else {
            ((n as f64 * holdout).round() as usize).clamp(1, n - 1)
        };
        test.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Fits a tree on `x` (rows × [`FEATURES`]) and labels `y` (indices into [`CLASSES`]).
pub fn fit(
    x: ArrayView2<'_, f32>,
    y: &[usize],
    params: &TrainParams,
) -> Result<(Tree, Vec<f64>), DetectError> {
    if x.nrows() != y.len() || x.ncols() != FEATURES.len() || y.is_empty() {
        return Err(DetectError::Fit(format!(
            "{} rows × {} columns for {} labels",
            x.nrows(),
            x.ncols(),
            y.len()
        )));
    }
    let targets = Array1::from(y.to_vec());
    let mut weights = tie_breaking_weights(y.len(), params.seed);
    if params.balance_classes {
        let per_class = counts(&(0..y.len()).collect::<Vec<_>>(), y);
        let present = per_class.iter().filter(|&&n| n > 0).count() as f32;
        for (w, &c) in weights.iter_mut().zip(y) {
            *w *= y.len() as f32 / (present * per_class[c] as f32);
        }
    }
    let ds = DatasetBase::new(x, targets.view()).with_weights(weights);
    let leaf = params.min_samples_leaf.max(1) as f32;
    let fitted: DecisionTree<f32, usize> = DecisionTree::params()
        .split_quality(SplitQuality::Gini)
        .max_depth(Some(params.max_depth.max(1)))
        .min_weight_leaf(leaf)
        .min_weight_split(2.0 * leaf)
        .fit(&ds)
        .map_err(|e| DetectError::Fit(e.to_string()))?;
    let mut nodes = Vec::new();
    let mut importance = vec![0f64; FEATURES.len()];
    let all: Vec<usize> = (0..y.len()).collect();
    canonical(fitted.root_node(), &all, x, y, &mut nodes, &mut importance);
    let total: f64 = importance.iter().sum();
    if total > 0.0 {
        importance.iter_mut().for_each(|v| *v = round6(*v / total));
    }
    Ok((Tree { nodes }, importance))
}

/// Weights of 1 plus a distinct, seeded sliver below 1/64: splits whose quality is exactly equal with
/// unit weights (common in small nodes) now differ by far more than f32 rounding, so linfa's choice no
/// longer depends on the order in which it happens to sum class frequencies. Leaf statistics and the
/// reported metrics use plain counts.
fn tie_breaking_weights(n: usize, seed: u64) -> Array1<f32> {
    (0..n as u64)
        .map(|i| 1.0 + (mix64(seed ^ mix64(i)) >> 40) as f32 / (1u64 << 30) as f32)
        .collect()
}

fn counts(idx: &[usize], y: &[usize]) -> Vec<u32> {
    let mut c = vec![0u32; CLASSES.len()];
    for &i in idx {
        c[y[i]] += 1;
    }
    c
}

fn gini(c: &[u32]) -> f64 {
    let n: f64 = c.iter().map(|&v| f64::from(v)).sum();
    if n == 0.0 {
        return 0.0;
    }
    1.0 - c.iter().map(|&v| (f64::from(v) / n).powi(2)).sum::<f64>()
}

/// Rewrites the linfa subtree reached by the samples `idx` into `out` (preorder); returns its index.
fn canonical(
    node: &TreeNode<f32, usize>,
    idx: &[usize],
    x: ArrayView2<'_, f32>,
    y: &[usize],
    out: &mut Vec<Node>,
    importance: &mut [f64],
) -> u32 {
    let me = out.len() as u32;
    let c = counts(idx, y);
    let children = node.children();
    let (feature, threshold, _) = node.split();
    let (l, r): (Vec<usize>, Vec<usize>) = idx.iter().partition(|&&i| x[[i, feature]] <= threshold);
    let (Some(lnode), Some(rnode)) = (children[0].as_deref(), children[1].as_deref()) else {
        out.push(Node::Leaf { counts: c });
        return me;
    };
    if node.is_leaf() || l.is_empty() || r.is_empty() {
        out.push(Node::Leaf { counts: c });
        return me;
    }
    let (g, thr, swap) = equivalent_split(x, &l, &r, feature);
    let (l, r, lnode, rnode) = if swap {
        (r, l, rnode, lnode)
    } else {
        (l, r, lnode, rnode)
    };
    out.push(Node::Leaf { counts: Vec::new() }); // placeholder, replaced below
    let left = canonical(lnode, &l, x, y, out, importance);
    let right = canonical(rnode, &r, x, y, out, importance);
    let verdict = |n: &Node| match n {
        Node::Leaf { counts } => Some(leaf_verdict(counts).0),
        Node::Split { .. } => None,
    };
    let (vl, vr) = (verdict(&out[left as usize]), verdict(&out[right as usize]));
    if vl.is_some() && vl == vr {
        // Both sides say the same thing: the split only adds a compare.
        out.truncate(me as usize);
        out.push(Node::Leaf { counts: c });
        return me;
    }
    let (cl, cr) = (counts(&l, y), counts(&r, y));
    importance[g] +=
        idx.len() as f64 * gini(&c) - l.len() as f64 * gini(&cl) - r.len() as f64 * gini(&cr);
    out[me as usize] = Node::Split {
        feature: g as u32,
        threshold: thr,
        left,
        right,
    };
    me
}

/// The lowest feature index (up to linfa's own `f`) whose values separate `l` from `r` completely, in
/// either direction, with the threshold halfway between; `swap` when `r` holds the lower values.
fn equivalent_split(
    x: ArrayView2<'_, f32>,
    l: &[usize],
    r: &[usize],
    f: usize,
) -> (usize, f32, bool) {
    let range = |set: &[usize], g: usize| {
        set.iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &i| {
                (lo.min(x[[i, g]]), hi.max(x[[i, g]]))
            })
    };
    for g in 0..=f {
        let ((lmin, lmax), (rmin, rmax)) = (range(l, g), range(r, g));
        if lmax < rmin {
            return (g, between(lmax, rmin), false);
        }
        if g < f && rmax < lmin {
            return (g, between(rmax, lmin), true);
        }
    }
    unreachable!("linfa's own split separates its partition")
}

/// A threshold t with a <= t < b, as close to the middle as f32 allows.
fn between(a: f32, b: f32) -> f32 {
    let mid = a + (b - a) / 2.0;
    if mid >= b || mid < a { a } else { mid }
}

/// Metrics are kept to 6 decimals: plenty for a report, and short decimals parse back to exactly the
/// same f64, so a saved model re-saves to the same bytes.
pub(crate) fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Held-out metrics of `model` on rows `x` with labels `y`.
pub fn evaluate(model: &Model, x: ArrayView2<'_, f32>, y: &[usize]) -> TrainReport {
    let k = CLASSES.len();
    let mut confusion = vec![vec![0u64; k]; k];
    for (row, &actual) in x.rows().into_iter().zip(y) {
        let values = row.to_vec();
        confusion[actual][model.predict(&values).index] += 1;
    }
    let mut per_class = Vec::with_capacity(k);
    let (mut f1_sum, mut present, mut correct) = (0.0, 0usize, 0u64);
    for c in 0..k {
        let tp = confusion[c][c];
        let predicted: u64 = (0..k).map(|a| confusion[a][c]).sum();
        let support: u64 = confusion[c].iter().sum();
        let precision = if predicted > 0 {
            tp as f64 / predicted as f64
        } else {
            0.0
        };
        let recall = if support > 0 {
            tp as f64 / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        if support > 0 {
            f1_sum += f1;
            present += 1;
        }
        correct += tp;
        per_class.push(ClassMetrics {
            class: CLASSES[c].into(),
            precision: round6(precision),
            recall: round6(recall),
            f1: round6(f1),
            support,
        });
    }
    TrainReport {
        test_rows: y.len(),
        confusion,
        per_class,
        macro_f1: round6(if present > 0 {
            f1_sum / present as f64
        } else {
            0.0
        }),
        accuracy: round6(if y.is_empty() {
            0.0
        } else {
            correct as f64 / y.len() as f64
        }),
        ..TrainReport::default()
    }
}
