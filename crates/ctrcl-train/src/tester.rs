//! `ctrcl test`: loads a run directory's students and scores them on a split of its dataset.
//! The run directory is self-describing (config.toml + run.json): nothing else is needed.

use crate::checkpoint::write_text_atomic;
use crate::config::TrainConfig;
use crate::evaluate::{predict_split, DiceScores};
use crate::student::{load_net, Role};
use crate::trainer::RunInfo;
use anyhow::{Context, Result};
use burn::prelude::*;
use ctrcl_data::dataset::Dataset;
use ctrcl_data::split::Split;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Scores of one student.
#[derive(Debug, Clone)]
pub struct StudentResult {
    pub role: Role,
    pub architecture: String,
    pub checkpoint: PathBuf,
    pub scores: DiceScores,
}

/// The outcome of testing a run.
#[derive(Debug, Clone)]
pub struct TestReport {
    pub run: PathBuf,
    pub method: String,
    pub split: Split,
    pub class_names: Vec<String>,
    pub students: Vec<StudentResult>,
    pub json_path: PathBuf,
}

/// Reads `config.toml` and `run.json` of a run directory.
pub fn open_run(run: &Path) -> Result<(TrainConfig, RunInfo)> {
    let cfg = TrainConfig::load(&run.join("config.toml"), &[])
        .with_context(|| format!("{} is not a ctrcl run directory", run.display()))?;
    let path = run.join("run.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let info: RunInfo =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    Ok((cfg, info))
}

/// The checkpoint a student is tested from: `best-ROLE/` if validation chose one, else `last/`.
pub fn checkpoint_dir(run: &Path, role: Role) -> Result<PathBuf> {
    let best = run.join(format!("best-{}", role.name()));
    let last = run.join("last");
    [best, last]
        .into_iter()
        .find(|d| d.join(format!("{}.mpk", role.name())).exists())
        .with_context(|| {
            format!(
                "{} has no checkpoint of the {} student (best-{0}/ or last/)",
                run.display(),
                role.name()
            )
        })
}

/// Tests `roles` of the run on `split`; writes `metrics/test-SPLIT.json` in the run directory.
pub fn test_run<B: Backend>(
    run: &Path,
    roles: &[Role],
    split: Split,
    device: &B::Device,
) -> Result<TestReport> {
    let (cfg, info) = open_run(run)?;
    let dataset = Dataset::open(&info.dataset, cfg.data.normalize)
        .with_context(|| format!("opening the run's dataset {}", info.dataset.display()))?;
    let k = dataset.num_classes();
    let size = cfg.data.image_size;
    let mut students = Vec::new();
    for &role in roles {
        let arch = match role {
            Role::Cnn => cfg.students.cnn,
            Role::Transformer => cfg.students.transformer,
        };
        let dir = checkpoint_dir(run, role)?;
        let template = cfg.models.init::<B>(arch, size, 1, k, device);
        let net = load_net(template, &dir, role, device)?;
        let (pred, truth) = predict_split(&net, &dataset, split, size, device);
        students.push(StudentResult {
            role,
            architecture: arch.name().to_string(),
            checkpoint: dir,
            scores: DiceScores::from_maps(&pred, &truth, k),
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
        "case": dataset.case.id,
        "slices": dataset.split.slices(split).len(),
        "metric": "Dice, TransUNet per-case convention, on the stacked slab at native resolution",
        "classes": classes,
        "method": info.method,
    });
    for s in &students {
        doc[s.role.name()] = student_json(s);
    }
    let json_path = run
        .join("metrics")
        .join(format!("test-{}.json", split.name()));
    write_text_atomic(&json_path, &serde_json::to_string_pretty(&doc)?)?;
    Ok(TestReport {
        run: run.to_path_buf(),
        method: info.method,
        split,
        class_names: dataset.class_names,
        students,
        json_path,
    })
}

/// `{"mean_dice": f, "per_class_dice": {"1": f, ...}, "architecture": ..., "checkpoint": ...}`.
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
    })
}
