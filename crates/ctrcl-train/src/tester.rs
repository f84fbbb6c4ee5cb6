//! `ctrcl test`: loads a run directory's students and scores them on a split of its dataset.
//! The run directory is self-describing (config.toml + run.json): nothing else is needed.

use crate::checkpoint::write_text_atomic;
use crate::config::TrainConfig;
use crate::inference::{predict_split, DiceScores};
use crate::role::Role;
use crate::run_dir;
use crate::run_dir::{checkpoint_dir, checkpoint_step, open_run};
use crate::student::load_net;
use anyhow::{Context, Result};
use burn::prelude::*;
use ctrcl_data::dataset::Dataset;
use ctrcl_data::geometry::Upsample;
use ctrcl_data::split::Split;
use ctrcl_metrics::distance::Hd95Mode;
use ctrcl_metrics::modes::{class_mean, evaluate_case, per_class_mean, ClassMetrics, Mode};
use ctrcl_models::Student;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Scores of one student.
#[derive(Debug, Clone)]
pub struct StudentResult {
    pub role: Role,
    pub architecture: String,
    pub checkpoint: PathBuf,
    /// The training step the checkpoint was written at (its `state.json`).
    pub checkpoint_step: Option<u64>,
    /// Dice per foreground class, TransUNet convention (the headline numbers).
    pub scores: DiceScores,
    /// Dice, Jaccard, HD95 (pooled, medpy) and ASD per foreground class, TransUNet convention.
    pub transunet: Vec<ClassMetrics>,
    /// The same in the strict convention (NaN where a mask is empty).
    pub strict: Vec<ClassMetrics>,
    /// Binary tasks: mean over cases of the per-image MAE of the foreground probability.
    pub mae: Option<f64>,
}

/// The outcome of testing a run.
#[derive(Debug, Clone)]
pub struct TestReport {
    pub run: PathBuf,
    pub method: String,
    pub split: Split,
    pub upsample: Upsample,
    pub class_names: Vec<String>,
    pub students: Vec<StudentResult>,
    pub json_path: PathBuf,
}

/// Whether test metrics written by [`test_run`] (its JSON) still describe the run's current
/// checkpoints: a run tested part-way and then resumed has newer ones.
pub fn metrics_are_current(run: &Path, metrics: &serde_json::Value) -> bool {
    Role::BOTH.iter().all(|&role| {
        let recorded = metrics[role.name()]["checkpoint_step"].as_u64();
        let current = checkpoint_dir(run, role)
            .ok()
            .and_then(|d| checkpoint_step(&d));
        recorded.is_some() && recorded == current
    })
}

/// The deployable student of `role` in run directory `run` (configured by `cfg`, `k` classes),
/// loaded from its checkpoint directory, which is returned too.
pub fn load_student<B: Backend>(
    run: &Path,
    cfg: &TrainConfig,
    role: Role,
    k: usize,
    device: &B::Device,
) -> Result<(Student<B>, PathBuf)> {
    let dir = checkpoint_dir(run, role)?;
    let template = cfg.models.init::<B>(
        cfg.students.of(role),
        cfg.data.image_size,
        cfg.data.channels,
        k,
        device,
    );
    Ok((load_net(template, &dir, role, device)?, dir))
}

/// Tests `roles` of the run on `split`; writes `metrics/test-SPLIT.json` in the run directory.
/// `upsample` overrides the run's `eval.upsample`; an override that differs from it writes
/// `metrics/test-SPLIT-UPSAMPLE.json` instead, so scoring a run both ways keeps both results.
pub fn test_run<B: Backend>(
    run: &Path,
    roles: &[Role],
    split: Split,
    upsample: Option<Upsample>,
    device: &B::Device,
) -> Result<TestReport> {
    let (cfg, info) = open_run(run)?;
    let file_name = match upsample {
        Some(u) if u != cfg.eval.upsample => format!(
            "test-{}-{}.json",
            split.name(),
            serde_json::to_value(u)?.as_str().unwrap_or("upsample")
        ),
        _ => format!("test-{}.json", split.name()),
    };
    let upsample = upsample.unwrap_or(cfg.eval.upsample);
    let dataset = Dataset::open(&info.dataset, cfg.data.open_options())
        .with_context(|| format!("opening the run's dataset {}", info.dataset.display()))?;
    let k = dataset.num_classes();
    let size = cfg.data.image_size;
    let mut students = Vec::new();
    for &role in roles {
        let arch = cfg.students.of(role);
        let (net, dir) = load_student::<B>(run, &cfg, role, k, device)?;
        let cases = predict_split(&net, &dataset, split, size, upsample, device);
        if cases.is_empty() {
            anyhow::bail!(
                "the {} split of {} has no cases to test",
                split.name(),
                info.dataset.display()
            );
        }
        // Per case, then the mean over cases (TransUNet's test_single_volume convention).
        let eval = |mode| {
            let per_case: Vec<_> = cases
                .iter()
                .map(|c| {
                    evaluate_case(
                        &c.pred,
                        &c.truth,
                        &c.shape,
                        &c.spacing,
                        k,
                        mode,
                        Hd95Mode::Pooled,
                    )
                })
                .collect();
            per_class_mean(&per_case, mode)
        };
        let transunet = eval(Mode::TransUnet);
        students.push(StudentResult {
            role,
            architecture: arch.name().to_string(),
            checkpoint_step: checkpoint_step(&dir),
            checkpoint: dir,
            scores: DiceScores::from_per_class(transunet.iter().map(|m| m.dice).collect()),
            transunet,
            strict: eval(Mode::Strict),
            mae: cases
                .iter()
                .map(|c| c.mae)
                .sum::<Option<f64>>()
                .map(|total| total / cases.len() as f64),
        });
    }
    let classes: serde_json::Map<String, serde_json::Value> = dataset
        .class_names
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, n)| (i.to_string(), json!(n)))
        .collect();
    let mut doc = json!({
        "split": split.name(),
        "case": if dataset.cases.len() == 1 { json!(dataset.cases[0].id) } else { serde_json::Value::Null },
        "cases": dataset.split_ids(split),
        "slices": dataset.parts(split).iter().map(|(_, zs)| zs.len()).sum::<usize>(),
        "metric": "per class and case on the split's stacked slices at native resolution with the header's spacing, then the mean over cases; mean_dice/per_class_dice: Dice in TransUNet's convention; transunet/strict: Dice, Jaccard, HD95 (medpy, pooled) and ASD (mm) in each convention, null where undefined",
        "classes": classes,
        "method": info.method,
        // The commit and the machine that trained the run (its run.json), for tables filled
        // over many sittings, perhaps on several machines.
        "trained_at": info.commit,
        "trained_on": if info.machine.is_empty() {
            String::new()
        } else {
            format!("{} on {}", info.backend, info.machine)
        },
        "upsample": upsample,
        "layout": dataset.layout,
    });
    if dataset.layout == "kvasir" {
        doc["mask_threshold"] = json!(cfg.data.mask_threshold);
    }
    for s in &students {
        doc[s.role.name()] = student_json(s);
    }
    let json_path = run_dir::metrics(run, &file_name);
    write_text_atomic(&json_path, &serde_json::to_string_pretty(&doc)?)?;
    Ok(TestReport {
        run: run.to_path_buf(),
        method: info.method,
        split,
        upsample,
        class_names: dataset.class_names,
        students,
        json_path,
    })
}

/// A number, or `null` when it is NaN or infinite (strict mode's undefined values).
pub fn finite_json(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

/// `{"dice", "jaccard", "hd95", "asd"}` of one class, non-finite → null.
pub fn class_metrics_json(m: &ClassMetrics) -> serde_json::Value {
    json!({"dice": finite_json(m.dice), "jaccard": finite_json(m.jaccard), "hd95": finite_json(m.hd95), "asd": finite_json(m.asd)})
}

/// `{"1": {...}, "2": {...}}` for classes 1..K.
pub fn per_class_json(per_class: &[ClassMetrics]) -> serde_json::Value {
    serde_json::Value::Object(
        per_class
            .iter()
            .enumerate()
            .map(|(i, m)| ((i + 1).to_string(), class_metrics_json(m)))
            .collect(),
    )
}

/// `{"per_class": {...}, "mean": {...}}` of one case; the mean follows the mode's rule.
fn metrics_json(per_class: &[ClassMetrics], mode: Mode) -> serde_json::Value {
    json!({
        "per_class": per_class_json(per_class),
        "mean": class_metrics_json(&class_mean(per_class, mode)),
    })
}

/// `{"mean_dice": f, "per_class_dice": {"1": f, ...}, "architecture", "checkpoint", "transunet": {...}, "strict": {...}}`.
pub fn student_json(s: &StudentResult) -> serde_json::Value {
    let per_class: serde_json::Map<String, serde_json::Value> = s
        .scores
        .per_class
        .iter()
        .enumerate()
        .map(|(i, d)| ((i + 1).to_string(), json!(d)))
        .collect();
    json!({
        "mean_dice": s.scores.mean,
        "per_class_dice": per_class,
        "architecture": s.architecture,
        "checkpoint": s.checkpoint,
        "checkpoint_step": s.checkpoint_step,
        "transunet": metrics_json(&s.transunet, Mode::TransUnet),
        "strict": metrics_json(&s.strict, Mode::Strict),
        "mae": s.mae,
    })
}
