//! Feature recordings and labelled data sets, both CSV.
//!
//! `netguard run --record-features FILE` writes what the daemon computes live:
//! ```text
//! # netguard-features v2
//! ts_ms,src,pkts_per_s_1s,...
//! 1714560000000,10.0.0.5,1234.5,...
//! ```
//! The lab labels those rows by scenario; a data set file has the same first line and a `label` column
//! in front (`label,ts_ms,src,<FEATURES...>`). `netguard train --data DIR` reads every `*.csv` under DIR.
//! The schema line is checked per file, so a data set recorded by another version is refused by name.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Write},
    net::IpAddr,
    path::{Path, PathBuf},
};

use ndarray::Array2;

use super::{
    CLASSES, DetectError, class_index,
    features::{FEATURES, FeatureVector, SCHEMA_VERSION},
    fit::DataSummary,
};

/// First line of every recording and data set file, followed by the schema version.
pub const RECORD_MAGIC: &str = "# netguard-features v";

/// Writes the schema line and the column header of a recording.
pub fn write_record_header(w: &mut impl Write) -> io::Result<()> {
    writeln!(w, "{RECORD_MAGIC}{SCHEMA_VERSION}")?;
    writeln!(w, "ts_ms,src,{}", FEATURES.join(","))
}

/// Writes one vector as a CSV row. Values use Rust's shortest round-trip formatting, so reading the row
/// back gives the same f32 bits the daemon saw.
pub fn record_row(w: &mut impl Write, v: &FeatureVector) -> io::Result<()> {
    write!(w, "{},{}", v.ts.timestamp_millis(), v.src)?;
    for x in &v.values {
        write!(w, ",{x}")?;
    }
    writeln!(w)
}

/// A labelled data set in memory.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// rows × [`FEATURES`].
    pub x: Array2<f32>,
    /// Index into [`CLASSES`] per row.
    pub labels: Vec<usize>,
    /// Index into `families` per row: the scenario the row was recorded in.
    pub family: Vec<usize>,
    /// Scenario families, sorted: a CSV file's stem (`benign_voice` for `run3-everyday/benign_voice.csv`).
    /// Files of the same stem in several runs are one family: the same scenario recorded again.
    pub families: Vec<String>,
    /// Source address per row (the aggregate of small and untracked sources is `0.0.0.0`).
    pub src: Vec<IpAddr>,
    pub summary: DataSummary,
}

/// The family (scenario) of a data set file: its stem.
pub fn family_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn csv_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DetectError> {
    let io = |source| DetectError::Io {
        path: dir.into(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            csv_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "csv") {
            out.push(path);
        }
    }
    Ok(())
}

/// FNV-1a, 64 bit: a stable fingerprint of the data (not a security hash).
struct Fnv(u64);

impl Fnv {
    fn eat(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Reads every `*.csv` under `dir` (recursively, in path order). `progress` hears one line per file.
pub fn read_dataset(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<Dataset, DetectError> {
    let mut files = Vec::new();
    csv_files(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(DetectError::NoData {
            dir: dir.into(),
            detail: "no *.csv files (record some with `cargo xtask lab`)".into(),
        });
    }
    let header = format!("label,ts_ms,src,{}", FEATURES.join(","));
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut fnv = Fnv(0xcbf2_9ce4_8422_2325);
    let mut names = Vec::new();
    let mut families: Vec<String> = files.iter().map(|p| family_of(p)).collect();
    families.sort();
    families.dedup();
    let mut family = Vec::new();
    let mut src = Vec::new();
    for path in &files {
        let before = labels.len();
        read_file(path, &header, &mut values, &mut labels, &mut src, &mut fnv)?;
        let f = families
            .binary_search(&family_of(path))
            .expect("every file's family is listed");
        family.resize(labels.len(), f);
        let rel = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        progress(&format!("{rel}: {} rows", labels.len() - before));
        names.push(rel);
    }
    if labels.is_empty() {
        return Err(DetectError::NoData {
            dir: dir.into(),
            detail: format!("{} file(s) but no data rows", files.len()),
        });
    }
    let mut rows_per_class = BTreeMap::new();
    for &l in &labels {
        *rows_per_class.entry(CLASSES[l].to_string()).or_insert(0) += 1;
    }
    let x = Array2::from_shape_vec((labels.len(), FEATURES.len()), values)
        .expect("rows × features values");
    Ok(Dataset {
        x,
        labels,
        family,
        families,
        src,
        summary: DataSummary {
            files: names,
            rows_per_class,
            fingerprint: format!("{:016x}", fnv.0),
        },
    })
}

fn read_file(
    path: &Path,
    header: &str,
    values: &mut Vec<f32>,
    labels: &mut Vec<usize>,
    srcs: &mut Vec<IpAddr>,
    fnv: &mut Fnv,
) -> Result<(), DetectError> {
    let file = std::fs::File::open(path).map_err(|source| DetectError::Io {
        path: path.into(),
        source,
    })?;
    let row_err = |line: usize, detail: String| DetectError::DataRow {
        path: path.into(),
        line,
        detail,
    };
    let mut lines = io::BufReader::new(file).lines();
    let mut next = |n: usize| -> Result<Option<String>, DetectError> {
        match lines.next() {
            None => Ok(None),
            Some(Ok(l)) => Ok(Some(l.trim_end_matches('\r').to_string())),
            Some(Err(source)) => Err(DetectError::DataRow {
                path: path.into(),
                line: n,
                detail: source.to_string(),
            }),
        }
    };
    let first = next(1)?.unwrap_or_default();
    let Some(version) = first.strip_prefix(RECORD_MAGIC) else {
        return Err(row_err(
            1,
            format!("expected the schema line `{RECORD_MAGIC}{SCHEMA_VERSION}`, found `{first}`"),
        ));
    };
    if version.trim() != SCHEMA_VERSION.to_string() {
        return Err(DetectError::DataSchema {
            path: path.into(),
            found: version.trim().into(),
            expected: SCHEMA_VERSION,
        });
    }
    let head = next(2)?.unwrap_or_default();
    if head != header {
        let detail = if head.starts_with("ts_ms,") {
            "this is an unlabelled recording (`netguard run --record-features`); the data set needs a `label` column first".to_string()
        } else {
            let (got, want): (Vec<&str>, Vec<&str>) =
                (head.split(',').collect(), header.split(',').collect());
            match got.iter().zip(&want).position(|(a, b)| a != b) {
                Some(i) => format!(
                    "header column {} is `{}`, expected `{}`",
                    i + 1,
                    got[i],
                    want[i]
                ),
                None => format!("header has {} columns, expected {}", got.len(), want.len()),
            }
        };
        return Err(row_err(2, detail));
    }
    let width = 3 + FEATURES.len();
    let mut n = 2;
    while let Some(line) = next(n + 1)? {
        n += 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != width {
            return Err(row_err(
                n,
                format!("{} columns, expected {width}", cols.len()),
            ));
        }
        let label = class_index(cols[0].trim()).ok_or_else(|| {
            row_err(
                n,
                format!(
                    "unknown label `{}` (known: {})",
                    cols[0],
                    CLASSES.join(", ")
                ),
            )
        })?;
        let src: IpAddr = cols[2].trim().parse().map_err(|_| {
            row_err(
                n,
                format!("column `src`: `{}` is not an IP address", cols[2]),
            )
        })?;
        labels.push(label);
        srcs.push(src);
        fnv.eat(&[label as u8]);
        for (i, c) in cols[3..].iter().enumerate() {
            let v: f32 = c
                .trim()
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| {
                    row_err(
                        n,
                        format!("column `{}`: `{c}` is not a finite number", FEATURES[i]),
                    )
                })?;
            fnv.eat(&v.to_bits().to_le_bytes());
            values.push(v);
        }
    }
    Ok(())
}
