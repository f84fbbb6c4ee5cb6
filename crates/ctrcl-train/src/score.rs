//! Scoring a folder of predicted label maps (NIfTI volumes or PNG images) against a folder of
//! references, paired by case id (file name without extensions), in the published conventions
//! (METHOD.md §8): `ctrcl evaluate`'s pipeline. The result holds the JSON of ARCHITECTURE.md's
//! schema (null for non-finite values) and a per-case × per-class CSV, written atomically by
//! [`FolderScores::write`]; the binary only parses arguments and prints.

use crate::tester::class_metrics_json;
use anyhow::{bail, Context, Result};
use ctrcl_data::labels::{geometry_mismatch, label_case_id, read_label_file, ClassSet, LabelFile};
use ctrcl_metrics::distance::Hd95Mode;
use ctrcl_metrics::modes::{class_mean, evaluate_case, per_class_mean, ClassMetrics, Mode};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How predictions are scored.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// TransUNet's per-case rules (unit spacing unless given) or strict (NaN where a mask is
    /// empty, spacing from the file header).
    pub mode: Mode,
    /// medpy's pooled 95th percentile or MONAI's larger directed one.
    pub hd95: Hd95Mode,
    /// Voxel spacing x,y,z in mm overriding the mode's default (2D images use x,y).
    pub spacing: Option<Vec<f64>>,
    /// The foreground label values to score (default: a dataset.json's labels beside the
    /// references, else every value the references hold).
    pub labels: Option<Vec<u8>>,
    /// Score a prediction off its reference's grid voxel by voxel instead of refusing it.
    pub ignore_geometry: bool,
    /// Skip cases present on one side only instead of failing.
    pub allow_missing: bool,
}

/// The scores of a folder of predictions.
#[derive(Debug, Clone)]
pub struct FolderScores {
    /// The cases scored, in id order.
    pub ids: Vec<String>,
    /// Per case, per class `1..k` (class `c` is label value `label_values[c - 1]`).
    pub per_case: Vec<Vec<ClassMetrics>>,
    /// Per class, the mean over cases in the mode's convention.
    pub means: Vec<ClassMetrics>,
    /// The mean over classes.
    pub overall: ClassMetrics,
    /// The name of each class `1..k` (dataset.json's, else "class VALUE").
    pub class_names: Vec<String>,
    /// The label value of each class `1..k`.
    pub label_values: Vec<usize>,
    /// The JSON document `ctrcl evaluate` writes.
    pub json: Value,
    /// Things the user should know that did not stop the scoring (skipped cases, labels
    /// outside the classes, predictions off the grid with `ignore_geometry`).
    pub warnings: Vec<String>,
    /// Facts about how files were read (0/255 masks).
    pub notes: Vec<String>,
}

impl FolderScores {
    /// The per-case × per-class CSV (`case,class,dice,jaccard,hd95,asd`; empty cells for
    /// non-finite values).
    pub fn csv(&self) -> String {
        let ids = &self.ids;
        let per_case = &self.per_case;
        let value = |c: usize| self.label_values[c - 1];
        let mut csv = String::from("case,class,dice,jaccard,hd95,asd\n");
        let cell = |v: f64| {
            if v.is_finite() {
                v.to_string()
            } else {
                String::new()
            }
        };
        for (id, m) in ids.iter().zip(per_case) {
            for (i, x) in m.iter().enumerate() {
                let _ = writeln!(
                    csv,
                    "{id},{},{},{},{},{}",
                    value(i + 1),
                    cell(x.dice),
                    cell(x.jaccard),
                    cell(x.hd95),
                    cell(x.asd)
                );
            }
        }
        csv
    }

    /// Writes the JSON to `out` and the CSV beside it (extension .csv), each atomically;
    /// returns the CSV's path.
    pub fn write(&self, out: &Path) -> Result<PathBuf> {
        ctrcl_data::error::write_atomic(out, serde_json::to_string_pretty(&self.json)?.as_bytes())?;
        let csv_path = out.with_extension("csv");
        ctrcl_data::error::write_atomic(&csv_path, self.csv().as_bytes())?;
        Ok(csv_path)
    }
}

/// Scores every prediction in `pred_dir` against the reference of the same case id in
/// `truth_dir`.
pub fn score_folders(
    pred_dir: &Path,
    truth_dir: &Path,
    opts: &ScoreOptions,
) -> Result<FolderScores> {
    let (mode, hd95) = (opts.mode, opts.hd95);
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    check_spacing(opts.spacing.as_deref())?;
    let preds = cases_in(pred_dir)?;
    let truths = cases_in(truth_dir)?;
    let mut ids = Vec::new();
    for (id, truth) in &truths {
        match preds.get(id) {
            Some(_) => ids.push(id.clone()),
            None if opts.allow_missing => {
                warnings.push(format!("no prediction for {} (skipped)", truth.display()))
            }
            None => bail!(
                "no prediction for case {id}: {} has no match in {}",
                truth.display(),
                pred_dir.display()
            ),
        }
    }
    for (id, pred) in &preds {
        if !truths.contains_key(id) {
            if opts.allow_missing {
                warnings.push(format!("no reference for {} (skipped)", pred.display()));
            } else {
                bail!(
                    "no reference for case {id}: {} has no match in {}",
                    pred.display(),
                    truth_dir.display()
                );
            }
        }
    }
    if ids.is_empty() {
        bail!(
            "no case is present in both {} and {}",
            pred_dir.display(),
            truth_dir.display()
        );
    }
    let names = class_names(truth_dir);
    let mut loaded = Vec::with_capacity(ids.len());
    let mut binary_255 = Vec::new();
    for id in &ids {
        let pred = read_label_file(&preds[id])?;
        let truth = read_label_file(&truths[id])?;
        if pred.shape != truth.shape {
            bail!(
                "case {id}: {} has shape {} but {} has {}",
                preds[id].display(),
                shape_xyz(&pred.shape),
                truths[id].display(),
                shape_xyz(&truth.shape)
            );
        }
        if let Some(why) = geometry_mismatch(&pred, &truth) {
            let what = format!(
                "case {id}: the prediction {} is not on the reference's grid: {why} ({})",
                preds[id].display(),
                truths[id].display()
            );
            if !opts.ignore_geometry {
                bail!("{what}; resample it onto the reference, or give --ignore-geometry to score it voxel by voxel anyway");
            }
            warnings.push(format!("{what}; scored voxel by voxel (--ignore-geometry)"));
        }
        for (file, path) in [(&pred, &preds[id]), (&truth, &truths[id])] {
            if file.binary_255 {
                binary_255.push(path.display().to_string());
            }
        }
        loaded.push((pred, truth));
    }
    if !binary_255.is_empty() {
        notes.push(format!(
            "{} file(s) are 0/255 masks, read as 0/1 (e.g. {})",
            binary_255.len(),
            binary_255[0]
        ));
    }
    // The classes: as given, else the dataset's, else the values the references hold — never
    // 1..=(largest value), which invented classes present in neither file.
    let classes = match (&opts.labels, &names) {
        (Some(given), _) => ClassSet::new(given.clone()),
        (None, Some(n)) if n.keys().any(|&l| (1..=255).contains(&l)) => {
            ClassSet::new(n.keys().filter_map(|&l| u8::try_from(l).ok()).collect())
        }
        (None, _) => ClassSet::present(loaded.iter().map(|(_, t)| t.labels.as_slice())),
    };
    for (id, (pred, truth)) in ids.iter().zip(&loaded) {
        for (side, file, path) in [
            ("prediction", pred, &preds[id]),
            ("reference", truth, &truths[id]),
        ] {
            for (value, voxels) in classes.outside(&file.labels) {
                warnings.push(format!(
                    "{} ({side}) holds label {value} in {voxels} voxel(s), not one of the classes scored {:?}; counted as background (give --labels to choose the classes)",
                    path.display(),
                    classes.labels
                ));
            }
        }
    }
    let k = classes.num_classes();
    let lut = classes.lut();
    let compact = |labels: &[u8]| -> Vec<u8> { labels.iter().map(|&v| lut[v as usize]).collect() };
    // Cases in parallel (and, inside each, classes and directions): rayon's pool, all cores
    // unless RAYON_NUM_THREADS says otherwise.
    let per_case: Vec<_> = loaded
        .par_iter()
        .map(|(pred, truth)| {
            let spacing = case_spacing(truth, opts.spacing.as_deref(), mode);
            evaluate_case(
                &compact(&pred.labels),
                &compact(&truth.labels),
                &truth.shape,
                &spacing,
                k,
                mode,
                hd95,
            )
        })
        .collect();
    let means = per_class_mean(&per_case, mode);
    let overall = class_mean(&means, mode);
    // Class `c` (1..k) is label value `classes.labels[c - 1]`; outputs are keyed by the value.
    let value = |c: usize| classes.labels.get(c - 1).map_or(c, |&v| usize::from(v));
    let class_name = |c: usize| {
        names
            .as_ref()
            .and_then(|n| n.get(&value(c)).cloned())
            .unwrap_or_else(|| format!("class {}", value(c)))
    };
    let keyed = |per_class: &[ctrcl_metrics::modes::ClassMetrics]| -> Value {
        Value::Object(
            per_class
                .iter()
                .enumerate()
                .map(|(i, m)| (value(i + 1).to_string(), class_metrics_json(m)))
                .collect(),
        )
    };
    let class_map: serde_json::Map<String, Value> = (1..k)
        .map(|c| (value(c).to_string(), json!(class_name(c))))
        .collect();
    let doc = json!({
        "mode": match mode { Mode::TransUnet => "transunet", Mode::Strict => "strict" },
        "hd95": match hd95 { Hd95Mode::Pooled => "pooled", Hd95Mode::Max => "max" },
        "classes": class_map,
        "cases": ids.iter().zip(&per_case).map(|(id, m)| json!({"case": id, "per_class": keyed(m)})).collect::<Vec<_>>(),
        "per_class_mean": keyed(&means),
        "mean": class_metrics_json(&overall),
    });
    Ok(FolderScores {
        per_case,
        means,
        overall,
        class_names: (1..k).map(class_name).collect(),
        label_values: (1..k).map(value).collect(),
        json: doc,
        warnings,
        notes,
        ids,
    })
}

/// Case id → file, for every label file (NIfTI, PNG) in `dir`.
fn cases_in(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read folder {}", dir.display()))?
            .path();
        if let Some(id) = label_case_id(&path) {
            if let Some(other) = out.insert(id.clone(), path.clone()) {
                bail!(
                    "case {id} appears twice in {}: {} and {}",
                    dir.display(),
                    other.display(),
                    path.display()
                );
            }
        }
    }
    if out.is_empty() {
        bail!("{} holds no .nii, .nii.gz or .png files", dir.display());
    }
    Ok(out)
}

/// `--spacing`: three finite voxel sizes above 0 (a zero or NaN spacing would make every
/// distance 0 or NaN).
pub fn check_spacing(spacing: Option<&[f64]>) -> Result<()> {
    let Some(s) = spacing else {
        return Ok(());
    };
    if s.len() != 3 {
        bail!(
            "--spacing takes three voxel sizes x,y,z (e.g. --spacing 1,1,2.5), got {}",
            s.len()
        );
    }
    if let Some(v) = s.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        bail!("--spacing {v}: voxel sizes must be finite numbers above 0 (mm)");
    }
    Ok(())
}

/// Class names from a `dataset.json` in the truth folder or its parent, if any.
fn class_names(truth: &Path) -> Option<BTreeMap<usize, String>> {
    let candidates = [
        truth.join("dataset.json"),
        truth.parent()?.join("dataset.json"),
    ];
    let path = candidates.iter().find(|p| p.exists())?;
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let labels = v.get("labels")?.as_object()?;
    Some(
        labels
            .iter()
            .filter_map(|(name, v)| Some((v.as_u64()? as usize, name.clone())))
            .collect(),
    )
}

/// A `[Z, Y, X]` (or `[Y, X]`) array shape written as `data inspect` writes shapes: `X×Y×Z`.
fn shape_xyz(shape: &[usize]) -> String {
    let xyz: Vec<String> = shape.iter().rev().map(|d| d.to_string()).collect();
    format!(
        "{} (x×y{})",
        xyz.join("×"),
        if shape.len() == 3 { "×z" } else { "" }
    )
}

/// Spacing per axis of `file.shape`: `--spacing x,y,z` if given, else unit spacing (transunet)
/// or the header's (strict).
fn case_spacing(file: &LabelFile, given: Option<&[f64]>, mode: Mode) -> Vec<f64> {
    match (given, mode) {
        // `shape` is slowest axis first: (z, y, x) or (y, x).
        (Some(s), _) => [s[2], s[1], s[0]][3 - file.shape.len()..].to_vec(),
        (None, Mode::TransUnet) => vec![1.0; file.shape.len()],
        (None, Mode::Strict) => file.spacing.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctrcl_data::nifti::{write_nifti, IDENTITY};

    /// A 4×4×1 label map with label 1 on `voxels` (x + 4·y).
    fn write_case(dir: &Path, id: &str, voxels: &[usize]) {
        let mut data = vec![0.0f32; 16];
        for &v in voxels {
            data[v] = 1.0;
        }
        let path = dir.join(format!("{id}.nii.gz"));
        write_nifti(&path, [4, 4, 1], &data, true, None, [1.0; 3], IDENTITY).unwrap();
    }

    fn options() -> ScoreOptions {
        ScoreOptions {
            mode: Mode::TransUnet,
            hd95: Hd95Mode::Pooled,
            spacing: None,
            labels: None,
            ignore_geometry: false,
            allow_missing: false,
        }
    }

    /// By hand: case `a` predicted exactly (Dice 1, HD95 0); case `b`'s 2×2 square predicted as
    /// its upper half — Dice 2·2/(4 + 2) = 2/3, Jaccard 2/4, and every border voxel of each side:
    /// distances 0, 0 (prediction → reference) and 0, 0, 1, 1 (reference → prediction), whose
    /// pooled 95th percentile (numpy's linear interpolation, medpy's hd95) is 1. Means over the
    /// two cases: Dice 5/6, HD95 0.5. The CSV has a row per case and class.
    #[test]
    fn a_folder_is_scored_case_by_case_as_worked_out_by_hand() {
        let tmp = tempfile::tempdir().unwrap();
        let (pred, truth) = (tmp.path().join("pred"), tmp.path().join("truth"));
        std::fs::create_dir_all(&pred).unwrap();
        std::fs::create_dir_all(&truth).unwrap();
        let square = [5, 6, 9, 10];
        write_case(&truth, "a", &square);
        write_case(&pred, "a", &square);
        write_case(&truth, "b", &square);
        write_case(&pred, "b", &[5, 6]);
        let s = score_folders(&pred, &truth, &options()).unwrap();
        assert_eq!(s.ids, ["a", "b"]);
        assert_eq!(s.label_values, [1]);
        let (a, b) = (s.per_case[0][0], s.per_case[1][0]);
        assert_eq!((a.dice, a.hd95), (1.0, 0.0));
        assert!((b.dice - 2.0 / 3.0).abs() < 1e-12 && (b.jaccard - 0.5).abs() < 1e-12);
        assert!((b.hd95 - 1.0).abs() < 1e-12, "{}", b.hd95);
        assert!((s.means[0].dice - 5.0 / 6.0).abs() < 1e-12);
        assert!((s.means[0].hd95 - 0.5).abs() < 1e-12);
        assert_eq!(s.csv().lines().count(), 3);
        assert!(s.csv().lines().nth(1).unwrap().starts_with("a,1,1,1,0,"));

        // A case on one side only is an error naming it, or skipped with a warning if allowed.
        write_case(&truth, "c", &square);
        let err = format!(
            "{:#}",
            score_folders(&pred, &truth, &options()).unwrap_err()
        );
        assert!(err.contains("no prediction for case c"), "{err}");
        let lenient = ScoreOptions {
            allow_missing: true,
            ..options()
        };
        let s = score_folders(&pred, &truth, &lenient).unwrap();
        assert_eq!(s.ids, ["a", "b"]);
        assert!(
            s.warnings.iter().any(|w| w.contains("c.nii.gz")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn spacings_must_be_positive_and_finite() {
        assert!(check_spacing(None).is_ok());
        assert!(check_spacing(Some(&[1.0, 0.7, 0.7])).is_ok());
        for bad in [
            vec![0.0, 1.0, 1.0],
            vec![f64::NAN, 1.0, 1.0],
            vec![1.0, f64::INFINITY, 1.0],
            vec![1.0, 1.0],
        ] {
            assert!(check_spacing(Some(&bad)).is_err(), "{bad:?}");
        }
    }
}
