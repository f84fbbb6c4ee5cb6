//! The hostile-input probe of issue #21, end to end: each case here lost data, panicked or gave a
//! silently wrong result at 24da8f1 and must now be a clear error, a correct result, or a kept
//! file. (Unit-level cases live beside their code: checkpoint.rs, config.rs, split.rs,
//! predictor.rs, labels.rs, nifti.rs, prepare.rs.)

mod common;

use common::*;
use ctrcl_data::nifti::{read_nifti, write_nifti};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One finished tiny run (ctrcl, U-Net + Swin-UNet on ICBM152), trained once per test process.
fn tiny_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ctrcl-hostile-run-{}", std::process::id()));
        let sets = tiny_settings(prepared());
        let config = config_path();
        ok(&train_args(&config, dir.to_str().unwrap(), &sets));
        dir
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A dataset folder beside the prepared ICBM152 one: its images (and labels, unless replaced)
/// linked, with its own `ctrcl_split.json` text.
fn variant_dataset(root: &Path, split: &str) -> PathBuf {
    let src = prepared();
    let dir = root.join("data");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy(src.join("dataset.json"), dir.join("dataset.json")).unwrap();
    for f in ["imagesTr/icbm152_0000.nii.gz", "labelsTr/icbm152.nii.gz"] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("ctrcl_split.json"), split).unwrap();
    dir
}

#[test]
fn an_empty_training_split_is_an_error_and_leaves_no_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = variant_dataset(
        tmp.path(),
        r#"{"case": "icbm152", "axis": "z", "train": [], "val": [[75, 84]], "test": [[90, 105]]}"#,
    );
    let out = tmp.path().join("run");
    let sets = tiny_settings(&data);
    let config = config_path();
    let err = fails(&train_args(&config, s(&out), &sets));
    assert!(err.contains("no training slices"), "{err}");
    assert!(!out.exists(), "no half-created run directory blocks --out");
    // The same for a setup failure after the directory was made (an unreadable teacher run):
    // the directory is gone again, so the corrected command can use the same --out.
    let mut offline = tiny_settings(prepared());
    offline.push("method=kd".into());
    offline.push(format!("teacher.run={}", tmp.path().join("nope").display()));
    let err = fails(&train_args(&config, s(&out), &offline));
    assert!(err.contains("teacher.run"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_label_off_its_image_is_an_error_naming_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let data = variant_dataset(
        tmp.path(),
        &std::fs::read_to_string(prepared().join("ctrcl_split.json")).unwrap(),
    );
    // The label's affine moved 10 mm along x; its voxels unchanged.
    let label_path = data.join("labelsTr/icbm152.nii.gz");
    let mut label = read_nifti(&prepared().join("labelsTr/icbm152.nii.gz")).unwrap();
    std::fs::remove_file(&label_path).unwrap();
    label.affine[0][3] += 10.0;
    write_nifti(
        &label_path,
        label.dims,
        &label.data,
        true,
        None,
        label.spacing,
        label.affine,
    )
    .unwrap();
    let sets = tiny_settings(&data);
    let config = config_path();
    let err = fails(&train_args(&config, s(&tmp.path().join("r")), &sets));
    assert!(
        err.contains("labelsTr/icbm152.nii.gz") && err.contains("label origin"),
        "{err}"
    );
}

#[test]
fn a_diverged_run_says_there_is_no_checkpoint_yet_and_logs_its_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    let mut sets = tiny_settings(prepared());
    sets.push("optim.cnn.lr=1e30".into());
    sets.push("schedule.validate_every=100".into());
    let config = config_path();
    let err = fails(&train_args(&config, s(&out), &sets));
    assert!(
        err.contains("not finite") && err.contains("no checkpoint was written yet"),
        "{err}"
    );
    assert!(!err.contains("is intact"), "{err}");
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let stop: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "stop")
        .expect("a stop event in log.jsonl");
    assert_eq!(stop["reason"], "diverged");
    assert_eq!(stop["role"], "cnn");
}

#[test]
fn a_set_value_of_the_wrong_type_names_the_key_and_the_set() {
    let config = config_path();
    let tmp = tempfile::tempdir().unwrap();
    let sets = vec!["schedule.iterations=abc".to_string()];
    let err = fails(&train_args(&config, s(&tmp.path().join("r")), &sets));
    assert!(
        err.contains("--set schedule.iterations=abc: schedule.iterations: invalid type"),
        "{err}"
    );
    assert!(
        !err.contains("in config"),
        "the config file is not to blame: {err}"
    );
}

#[test]
fn a_checkpoint_of_another_architecture_or_size_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    copy_dir(tiny_run(), &run);
    // The transformer's network where the CNN's belongs.
    std::fs::copy(
        run.join("best-transformer/transformer.mpk"),
        run.join("best-cnn/cnn.mpk"),
    )
    .unwrap();
    let err = fails(&["test", "--run", s(&run), "--student", "cnn"]);
    assert!(
        err.contains("best-cnn/cnn.mpk") && err.contains("holds a swin-unet network"),
        "{err}"
    );
    // A U-Net of other widths.
    let other = tmp.path().join("wide");
    let mut sets = tiny_settings(prepared());
    sets.push("models.unet.channels=[4,8,8,16,32]".into());
    sets.push("schedule.iterations=2".into());
    let config = config_path();
    ok(&train_args(&config, s(&other), &sets));
    std::fs::copy(other.join("best-cnn/cnn.mpk"), run.join("best-cnn/cnn.mpk")).unwrap();
    let err = fails(&["test", "--run", s(&run), "--student", "cnn"]);
    assert!(err.contains("other layer sizes"), "{err}");
    // No checkpoint at all names the folders a student is looked for in.
    std::fs::remove_dir_all(run.join("best-cnn")).unwrap();
    std::fs::remove_dir_all(run.join("last")).unwrap();
    let err = fails(&["test", "--run", s(&run), "--student", "cnn"]);
    assert!(err.contains("(best-cnn/ or last/)"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn predict_refuses_outputs_that_collide_or_replace_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let image = prepared().join("imagesTr/icbm152_0000.nii.gz");
    std::fs::copy(&image, input.join("b_0000.nii.gz")).unwrap();
    std::fs::copy(&image, input.join("b.nii.gz")).unwrap();
    let out = tmp.path().join("out");
    let err = fails(&[
        "predict",
        "--run",
        s(tiny_run()),
        "--input",
        s(&input),
        "--output",
        s(&out),
    ]);
    assert!(err.contains("both be written"), "{err}");
    assert!(
        !out.join("b.nii.gz").exists(),
        "nothing is written when outputs collide"
    );
    std::fs::remove_file(input.join("b_0000.nii.gz")).unwrap();
    let before = std::fs::read(input.join("b.nii.gz")).unwrap();
    let err = fails(&[
        "predict",
        "--run",
        s(tiny_run()),
        "--input",
        s(&input),
        "--output",
        s(&input),
    ]);
    assert!(err.contains("is the input folder"), "{err}");
    assert_eq!(std::fs::read(input.join("b.nii.gz")).unwrap(), before);
}

#[test]
fn prepare_keeps_an_edited_split_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("icbm");
    ok(&["data", "prepare", "--out", s(&out)]);
    let split = out.join("ctrcl_split.json");
    let edited = r#"{"case": "icbm152", "axis": "z", "train": [[0, 60]], "val": [[75, 84]], "test": [[90, 105]]}"#;
    std::fs::write(&split, edited).unwrap();
    let err = fails(&["data", "prepare", "--out", s(&out)]);
    assert!(
        err.contains("ctrcl_split.json") && err.contains("was kept"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&split).unwrap(), edited);
}

/// Label maps `[x, y, z]` = `[4, 3, 2]`, written as NIfTI with unit spacing (origin `dx` mm).
fn label_volume(path: &Path, labels: &[f32], dx: f64) {
    write_nifti(
        path,
        [4, 3, 2],
        labels,
        true,
        None,
        [1.0; 3],
        [
            [1.0, 0.0, 0.0, dx],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ],
    )
    .unwrap();
}

#[test]
fn evaluate_scores_the_classes_present_and_checks_spacing_and_grids() {
    let tmp = tempfile::tempdir().unwrap();
    let (pred, truth) = (tmp.path().join("pred"), tmp.path().join("truth"));
    for d in [&pred, &truth] {
        std::fs::create_dir_all(d).unwrap();
    }
    let reference: Vec<f32> = (0..24).map(|i| (i % 4) as f32).collect();
    label_volume(&truth.join("a.nii.gz"), &reference, 0.0);
    // A perfect prediction but for one stray voxel of label 9 (on a background voxel).
    let mut stray = reference.clone();
    stray[0] = 9.0;
    label_volume(&pred.join("a.nii.gz"), &stray, 0.0);
    let out = tmp.path().join("m.json");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--pred",
            s(&pred),
            "--truth",
            s(&truth),
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        ctrcl(&args)
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("holds label 9 in 1 voxel(s)"), "{err}");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(m["mean"]["dice"], 1.0, "{m}");
    assert_eq!(
        m["classes"].as_object().unwrap().len(),
        3,
        "classes 1..3 only: {m}"
    );
    // Chosen classes, keyed by their label values.
    assert!(run(&["--labels", "1,3"]).status.success());
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let keys: Vec<&String> = m["per_class_mean"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["1", "3"]);
    // Spacing: both documented forms; NaN, infinite and zero are errors, not panics.
    assert!(run(&["--spacing", "1,1,2"]).status.success());
    assert!(run(&["--spacing", "1", "1", "2"]).status.success());
    for bad in ["nan,1,1", "inf,1,1", "0,0,0", "1,1"] {
        let o = run(&["--spacing", bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && !err.contains("panicked"),
            "{bad}: {err}"
        );
        assert!(err.contains("--spacing"), "{bad}: {err}");
    }
    // A prediction 10 mm off the reference's grid is an error unless asked for.
    label_volume(&pred.join("a.nii.gz"), &reference, 10.0);
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("not on the reference's grid")
            && err.contains("origin"),
        "{err}"
    );
    let o = run(&["--ignore-geometry"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning"));
}

#[test]
fn report_retests_a_run_resumed_after_it_was_tested() {
    let tmp = tempfile::tempdir().unwrap();
    // Without a validation split the best checkpoints follow the last one, so continuing the
    // run certainly replaces them.
    let data = variant_dataset(
        tmp.path(),
        r#"{"case": "icbm152", "axis": "z", "train": [[0, 69], [111, 154]], "val": [], "test": [[90, 105]]}"#,
    );
    let run = tmp.path().join("r");
    let sets = tiny_settings(&data);
    let config = config_path();
    ok(&train_args(&config, s(&run), &sets));
    ok(&["test", "--run", s(&run)]);
    let metrics = run.join("metrics/test-test.json");
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    assert_eq!(first["cnn"]["checkpoint_step"], 4);
    // The run is continued to 8 iterations (as after `ctrcl test` of an interrupted run).
    let cfg_path = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(text.contains("iterations = 4"), "{text}");
    std::fs::write(&cfg_path, text.replace("iterations = 4", "iterations = 8")).unwrap();
    ok(&["train", "--resume", s(&run)]);
    let best_step = |role: &str| -> u64 {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(format!("best-{role}/state.json"))).unwrap(),
        )
        .unwrap();
        v["step"].as_u64().unwrap()
    };
    ok(&[
        "report",
        s(&run),
        "--out",
        s(&tmp.path().join("rep")),
        "--overlay-slices",
        "0",
    ]);
    let after: Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    for role in ["cnn", "transformer"] {
        assert_eq!(best_step(role), 8);
        assert_eq!(
            after[role]["checkpoint_step"].as_u64(),
            Some(8),
            "{role}: the report's metrics describe the current checkpoint"
        );
    }
}

/// README's determinism promise: one seed gives bit-identical logs (losses, both transfer terms,
/// validation Dice) on 1, 2 and 3 threads. The quickstart's sizes (96², batch 8), not the tiny
/// ones: the parallel kernels must split their work into several chunks for the thread count to
/// matter (at 32², batch 2 every LayerNorm fits one chunk). Before the LayerNorm backward summed
/// its per-chunk partials in a fixed order, the 2-thread run's `cfcl` terms differed from step 3.
#[test]
fn a_seed_gives_identical_logs_on_one_two_and_three_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let sets: Vec<String> = [
        format!("data.dataset={}", prepared().display()),
        "schedule.iterations=5".into(),
        "schedule.validate_every=5".into(),
        "schedule.log_every=1".into(),
    ]
    .into();
    let config = config_file("quickstart");
    let logs: Vec<Vec<Value>> = ["1", "2", "3"]
        .iter()
        .map(|threads| {
            let out = tmp.path().join(threads);
            let status = std::process::Command::new(env!("CARGO_BIN_EXE_ctrcl"))
                .args(train_args(&config, s(&out), &sets))
                .env("RAYON_NUM_THREADS", threads)
                .output()
                .unwrap();
            assert!(
                status.status.success(),
                "{}",
                String::from_utf8_lossy(&status.stderr)
            );
            step_lines(&out)
        })
        .collect();
    let losses: Vec<&Value> = logs[0].iter().filter(|v| v.get("lr").is_some()).collect();
    assert_eq!(losses.len(), 5);
    assert!(losses[4]["cnn"]["cfcl"].as_f64().is_some_and(|v| v > 0.0));
    assert!(logs[0].iter().any(|v| v.get("val").is_some()));
    assert_eq!(logs[0], logs[1], "1 vs 2 threads");
    assert_eq!(logs[0], logs[2], "1 vs 3 threads");
}

/// An image size whose step cannot fit is refused before training, with the estimate and the keys
/// to change — not "memory allocation of … bytes failed" and an abort in the first step (what
/// 1024² did under `ulimit -v 8000000` before). Nothing is left behind.
#[test]
fn an_image_size_too_large_for_memory_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let command = format!(
        "ulimit -v 4000000 && exec '{}' train --config '{}' --set data.dataset='{}' \
         --set data.image_size=1024 --set schedule.iterations=2 --out '{}'",
        env!("CARGO_BIN_EXE_ctrcl"),
        config_file("icbm152_small"),
        prepared().display(),
        out.display()
    );
    let run = std::process::Command::new("sh")
        .args(["-c", &command])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    for needle in [
        "data.image_size = 1024",
        "data.batch_size = 8",
        "ulimit -v",
        "skip_memory_check",
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
    assert!(!out.exists());
}

/// The calibration steps draw from the random streams before the run seeds its own: a checked run
/// logs exactly what an unchecked one does, and records the estimate.
#[test]
fn the_memory_check_does_not_change_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sets = tiny_settings(prepared());
    sets.push("data.image_size=128".into());
    sets.push("schedule.iterations=3".into());
    let config = config_path();
    let mut logs = Vec::new();
    for skip in ["false", "true"] {
        let out = tmp.path().join(skip);
        let mut sets = sets.clone();
        sets.push(format!("skip_memory_check={skip}"));
        ok(&train_args(&config, s(&out), &sets));
        logs.push(step_lines(&out));
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        assert_eq!(
            log.contains("\"event\":\"memory\""),
            skip == "false",
            "{log}"
        );
    }
    assert!(!logs[0].is_empty());
    assert_eq!(logs[0], logs[1]);
}
