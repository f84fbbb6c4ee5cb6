//! Helpers shared by the end-to-end test binaries: running `ctrcl`, the real ICBM152 dataset
//! prepared once per test process, and tiny training settings.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn ctrcl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ctrcl"))
        .args(args)
        .output()
        .expect("ctrcl runs")
}

pub fn ok(args: &[&str]) -> String {
    let out = ctrcl(args);
    assert!(
        out.status.success(),
        "ctrcl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn fails(args: &[&str]) -> String {
    let out = ctrcl(args);
    assert!(!out.status.success(), "ctrcl {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("panicked"),
        "a panic instead of an error: {err}"
    );
    err
}

/// The real ICBM152 dataset, prepared once per test process.
pub fn prepared() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ctrcl-test-icbm152-{}", std::process::id()));
        ok(&[
            "data",
            "prepare",
            "--source",
            "icbm152",
            "--out",
            dir.to_str().unwrap(),
        ]);
        dir
    })
}

/// Tiny sizes so a real training run takes seconds: 32×32 inputs (Swin grids 8, 4, 2, 1 with
/// window 4), narrow students, a handful of iterations.
pub fn tiny_settings(dataset: &Path) -> Vec<String> {
    [
        format!("data.dataset={}", dataset.display()),
        "data.image_size=32".into(),
        "data.batch_size=2".into(),
        "models.unet.channels=[4,8,8,16,16]".into(),
        "models.swin_unet.embed_dim=8".into(),
        "models.swin_unet.heads=[1,1,2,2]".into(),
        "models.swin_unet.window=4".into(),
        "cfcl.dim=8".into(),
        "schedule.iterations=4".into(),
        "schedule.validate_every=2".into(),
        "schedule.log_every=1".into(),
    ]
    .into_iter()
    .collect()
}

pub fn train_args<'a>(config: &'a str, out: &'a str, sets: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["train", "--config", config, "--out", out];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    args
}

/// `configs/NAME.toml` of the repository.
pub fn config_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../configs/{name}.toml"))
        .display()
        .to_string()
}

pub fn config_path() -> String {
    config_file("icbm152_ctrcl")
}

/// The lines of a run's `log.jsonl` that carry a step (losses and validations), without the
/// wall-clock field: what must match exactly between runs that promise the same result.
pub fn step_lines(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("step").is_some())
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("elapsed_s");
            v
        })
        .collect()
}
