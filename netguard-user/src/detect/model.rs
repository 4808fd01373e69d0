//! A trained model as a file: the decision tree in a flat, canonical form, the schema it was fitted on,
//! the training parameters, and the held-out metrics. Serving walks a compact copy of the tree, so a
//! prediction is a handful of compares and no allocation.
//!
//! The tree is stored flat rather than as linfa's own serialisation because (a) the file must be
//! byte-for-byte reproducible from the same data and seed, and linfa's node structs are not (see
//! `fit.rs`), and (b) linfa's `predict` takes an `Array2` and allocates per call.

use std::{fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use super::{
    CLASSES, DetectError,
    features::{FEATURES, SCHEMA_VERSION},
    fit::{TrainParams, TrainReport},
};

/// Identifies the file format; bumped only if the JSON layout itself changes.
pub const MODEL_FORMAT: &str = "netguard-model/1";

/// One tree node. Children always come after their parent (preorder), which `load` checks so that a
/// corrupt file cannot make prediction loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Node {
    /// `values[feature] <= threshold` goes left, otherwise right.
    Split {
        feature: u32,
        threshold: f32,
        left: u32,
        right: u32,
    },
    /// Training samples per class (in [`CLASSES`] order) that ended here.
    Leaf { counts: Vec<u32> },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// The verdict on one vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    pub class: &'static str,
    pub index: usize,
    /// Laplace-smoothed purity of the leaf, (n_class + 1) / (n + classes): a leaf backed by a handful
    /// of training samples is not reported as certain.
    pub confidence: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    pub schema_version: u32,
    pub features: Vec<String>,
    pub classes: Vec<String>,
    pub params: TrainParams,
    pub tree: Tree,
    pub report: TrainReport,
    /// The tree as serving walks it (built by `compile`, not stored).
    #[serde(skip)]
    fast: Vec<Fast>,
}

/// 16 bytes per node; a leaf has `feature == LEAF`, its class in `left` and confidence in `threshold`.
#[derive(Clone, Copy, Debug)]
struct Fast {
    feature: u32,
    threshold: f32,
    left: u32,
    right: u32,
}

const LEAF: u32 = u32::MAX;

/// Only the fields needed to decide whether the rest can be trusted, so that a model from another
/// schema gets the schema message rather than a field-level JSON error.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    format: String,
    schema_version: u32,
}

impl Model {
    pub(crate) fn new(
        params: TrainParams,
        tree: Tree,
        report: TrainReport,
    ) -> Result<Self, DetectError> {
        let mut m = Model {
            format: MODEL_FORMAT.into(),
            schema_version: SCHEMA_VERSION,
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            classes: CLASSES.iter().map(|s| s.to_string()).collect(),
            params,
            tree,
            report,
            fast: Vec::new(),
        };
        m.compile("<new model>")?;
        Ok(m)
    }

    /// Loads and checks a model file: schema version, feature names, classes and tree structure.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DetectError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| DetectError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Same as [`Model::load`] for a model already in memory (e.g. embedded with `include_str!`);
    /// `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, DetectError> {
        let json = |source| DetectError::Json {
            path: origin.into(),
            source,
        };
        let header: Header = serde_json::from_str(text).map_err(json)?;
        if header.format != MODEL_FORMAT {
            return Err(DetectError::ModelMismatch {
                path: origin.into(),
                detail: format!("file format {:?}, expected {MODEL_FORMAT:?}", header.format),
            });
        }
        if header.schema_version != SCHEMA_VERSION {
            return Err(DetectError::SchemaMismatch {
                path: origin.into(),
                found: header.schema_version,
                expected: SCHEMA_VERSION,
            });
        }
        let mut m: Model = serde_json::from_str(text).map_err(json)?;
        if m.features
            .iter()
            .map(String::as_str)
            .ne(FEATURES.iter().copied())
        {
            let detail = match m.features.iter().zip(FEATURES).position(|(a, b)| a != b) {
                Some(i) => format!(
                    "feature {i} is {:?}, expected {:?}",
                    m.features[i], FEATURES[i]
                ),
                None => format!("{} features, expected {}", m.features.len(), FEATURES.len()),
            };
            return Err(DetectError::ModelMismatch {
                path: origin.into(),
                detail,
            });
        }
        if m.classes
            .iter()
            .map(String::as_str)
            .ne(CLASSES.iter().copied())
        {
            return Err(DetectError::ModelMismatch {
                path: origin.into(),
                detail: format!("classes {:?}, expected {CLASSES:?}", m.classes),
            });
        }
        m.compile(origin)?;
        Ok(m)
    }

    /// Pretty JSON with a trailing newline; the same model always gives the same bytes.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a model always serialises");
        s.push('\n');
        s
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DetectError> {
        let path = path.as_ref();
        let io = |source| DetectError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Write then rename, so a daemon never loads a half-written model.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn compile(&mut self, origin: &str) -> Result<(), DetectError> {
        let corrupt = |detail: String| DetectError::ModelCorrupt {
            path: origin.into(),
            detail,
        };
        let nodes = &self.tree.nodes;
        if nodes.is_empty() {
            return Err(corrupt("the tree has no nodes".into()));
        }
        let mut fast = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            fast.push(match n {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    let child_ok = |c: u32| (c as usize) > i && (c as usize) < nodes.len();
                    if (*feature as usize) >= FEATURES.len()
                        || !child_ok(*left)
                        || !child_ok(*right)
                        || !threshold.is_finite()
                    {
                        return Err(corrupt(format!("node {i} has an invalid split")));
                    }
                    Fast {
                        feature: *feature,
                        threshold: *threshold,
                        left: *left,
                        right: *right,
                    }
                }
                Node::Leaf { counts } => {
                    if counts.len() != CLASSES.len() {
                        return Err(corrupt(format!(
                            "leaf {i} has {} class counts",
                            counts.len()
                        )));
                    }
                    let (class, conf) = leaf_verdict(counts);
                    Fast {
                        feature: LEAF,
                        threshold: conf,
                        left: class as u32,
                        right: 0,
                    }
                }
            });
        }
        self.fast = fast;
        Ok(())
    }

    /// Classifies one vector (`values` in [`FEATURES`] order; missing values read as 0).
    #[inline]
    pub fn predict(&self, values: &[f32]) -> Prediction {
        let mut i = 0usize;
        loop {
            let n = self.fast[i];
            if n.feature == LEAF {
                return Prediction {
                    class: CLASSES[n.left as usize],
                    index: n.left as usize,
                    confidence: n.threshold,
                };
            }
            let x = values.get(n.feature as usize).copied().unwrap_or(0.0);
            i = if x <= n.threshold { n.left } else { n.right } as usize;
        }
    }

    /// The prediction and the features tested on the way to the leaf (root first, each once): the
    /// evidence of a model alert.
    pub fn explain(&self, values: &[f32]) -> (Prediction, Vec<usize>) {
        let mut path = Vec::new();
        let mut i = 0usize;
        loop {
            let n = self.fast[i];
            if n.feature == LEAF {
                return (self.predict(values), path);
            }
            if !path.contains(&(n.feature as usize)) {
                path.push(n.feature as usize);
            }
            let x = values.get(n.feature as usize).copied().unwrap_or(0.0);
            i = if x <= n.threshold { n.left } else { n.right } as usize;
        }
    }

    pub fn depth(&self) -> usize {
        fn go(nodes: &[Node], i: usize) -> usize {
            match &nodes[i] {
                Node::Leaf { .. } => 0,
                Node::Split { left, right, .. } => {
                    1 + go(nodes, *left as usize).max(go(nodes, *right as usize))
                }
            }
        }
        go(&self.tree.nodes, 0)
    }

    pub fn leaves(&self) -> usize {
        self.tree
            .nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count()
    }

    /// The tree as indented text, for the Markdown report.
    pub fn tree_text(&self) -> String {
        fn go(m: &Model, i: usize, depth: usize, out: &mut String) {
            let pad = "  ".repeat(depth);
            match &m.tree.nodes[i] {
                Node::Leaf { counts } => {
                    let (c, conf) = leaf_verdict(counts);
                    let n: u32 = counts.iter().sum();
                    let _ = writeln!(out, "{pad}=> {} (n={n}, confidence {conf:.3})", CLASSES[c]);
                }
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    let _ = writeln!(out, "{pad}{} <= {threshold}", FEATURES[*feature as usize]);
                    go(m, *left as usize, depth + 1, out);
                    let _ = writeln!(out, "{pad}{} > {threshold}", FEATURES[*feature as usize]);
                    go(m, *right as usize, depth + 1, out);
                }
            }
        }
        let mut s = String::new();
        go(self, 0, 0, &mut s);
        s
    }
}

/// Majority class of a leaf (ties go to the lower index, i.e. towards `benign`) and its smoothed purity.
pub(crate) fn leaf_verdict(counts: &[u32]) -> (usize, f32) {
    let mut best = 0;
    for (i, c) in counts.iter().enumerate() {
        if *c > counts[best] {
            best = i;
        }
    }
    let n: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let conf = (f64::from(counts[best]) + 1.0) / (n as f64 + counts.len() as f64);
    (best, conf as f32)
}

/// Mean cost of [`Model::predict`] in ns, over `rounds` passes of `vectors` (a benchmark helper for
/// `cargo xtask bench`; it is never asserted on).
pub fn bench_predict(model: &Model, vectors: &[Vec<f32>], rounds: usize) -> f64 {
    if vectors.is_empty() || rounds == 0 {
        return 0.0;
    }
    let mut sink = 0usize;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for v in vectors {
            sink = sink.wrapping_add(model.predict(std::hint::black_box(v)).index);
        }
    }
    let ns = start.elapsed().as_nanos() as f64;
    std::hint::black_box(sink);
    ns / (rounds * vectors.len()) as f64
}
