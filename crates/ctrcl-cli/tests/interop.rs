//! Users' own formats as they keep them (#19): nnU-Net raw folders without a ctrcl split file.

mod common;

use common::*;
use ctrcl_data::nifti::{read_nifti, write_nifti};
use ctrcl_data::nnunet::Fold;
use std::path::{Path, PathBuf};

/// An nnU-Net raw dataset as nnU-Net users keep it, from real anatomy: ICBM152 cut into seven
/// axial slabs, `case_000`…`case_005` in imagesTr/labelsTr and `case_006` in imagesTs/labelsTs,
/// dataset.json v2, no ctrcl_split.json. `msd` writes a v1 / Medical Segmentation Decathlon
/// folder instead: dataset.json with `labels` value → name and `modality`, images without the
/// `_0000` suffix.
fn nnunet_raw(root: &Path, msd: bool) -> PathBuf {
    nnunet_raw_with(root, msd, Raw::default())
}

/// Variations of [`nnunet_raw`]'s folder.
#[derive(Default)]
struct Raw {
    /// Stored label value of each class (default: the class numbers).
    values: Option<[f32; 4]>,
    /// A second channel (`_0001`: the T1 scaled by 0.5 and shifted by 100) named "T2".
    two_channels: bool,
    /// Channel 0's name (default "T1").
    channel0: Option<&'static str>,
}

fn nnunet_raw_with(root: &Path, msd: bool, raw: Raw) -> PathBuf {
    let src = prepared();
    let image = read_nifti(&src.join("imagesTr/icbm152_0000.nii.gz")).unwrap();
    let label = read_nifti(&src.join("labelsTr/icbm152.nii.gz")).unwrap();
    let dir = root.join(if msd {
        "Task01_Brain"
    } else {
        "Dataset001_Brain"
    });
    let [x, y, z] = image.dims;
    let depth = z / 7;
    for k in 0..7 {
        let (images, labels) = if k < 6 {
            ("imagesTr", "labelsTr")
        } else {
            ("imagesTs", "labelsTs")
        };
        let id = format!("case_{k:03}");
        let suffix = if msd { "" } else { "_0000" };
        let z0 = k * depth;
        let cut = |v: &[f32]| v[z0 * x * y..(z0 + depth) * x * y].to_vec();
        let mut affine = image.affine;
        for row in &mut affine {
            row[3] += row[2] * z0 as f64;
        }
        let dims = [x, y, depth];
        let stored = |v: &[f32]| -> Vec<f32> {
            let values = raw.values.unwrap_or([0.0, 1.0, 2.0, 3.0]);
            cut(v).iter().map(|&l| values[l as usize]).collect()
        };
        let mut files = vec![
            (
                images,
                format!("{id}{suffix}.nii.gz"),
                cut(&image.data),
                false,
            ),
            (labels, format!("{id}.nii.gz"), stored(&label.data), true),
        ];
        if raw.two_channels {
            let t2 = cut(&image.data).iter().map(|v| v * 0.5 + 100.0).collect();
            files.push((images, format!("{id}_0001.nii.gz"), t2, false));
        }
        for (folder, name, data, is_label) in files {
            std::fs::create_dir_all(dir.join(folder)).unwrap();
            let path = dir.join(folder).join(name);
            write_nifti(&path, dims, &data, is_label, None, image.spacing, affine).unwrap();
        }
    }
    let json = if msd {
        r#"{"name": "Brain", "modality": {"0": "MRI"}, "numTraining": 6,
            "labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
            "training": [], "test": []}"#
            .to_string()
    } else {
        let channels = match (raw.two_channels, raw.channel0.unwrap_or("T1")) {
            (true, c0) => format!(r#"{{"0": "{c0}", "1": "T2"}}"#),
            (false, c0) => format!(r#"{{"0": "{c0}"}}"#),
        };
        // dataset.json's labels are the classes (after data.label_map), as nnU-Net's are.
        format!(
            r#"{{"channel_names": {channels}, "file_ending": ".nii.gz", "numTraining": 6,
            "labels": {{"background": 0, "CSF": 1, "GM": 2, "WM": 3}}}}"#
        )
    };
    std::fs::write(dir.join("dataset.json"), json).unwrap();
    dir
}

/// nnU-Net's generated folds for `case_000`…`case_{n-1}` (sklearn; scripts/reference/nnunet_folds.py).
fn reference_folds(n: usize) -> Vec<Fold> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ctrcl-data/tests/data/nnunet_folds/expected.json");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(all[n.to_string()].clone()).unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn train_fold(data: &Path, out: &Path, fold: &str) -> std::process::Output {
    let mut sets = tiny_settings(data);
    sets.push("schedule.iterations=2".into());
    let config = config_path();
    let mut args = train_args(&config, out.to_str().unwrap(), &sets);
    args.extend(["--fold", fold]);
    ctrcl(&args)
}

#[test]
fn an_nnunet_raw_folder_trains_on_nnunets_own_folds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = nnunet_raw(tmp.path(), false);
    let folds = reference_folds(6);
    let run = tmp.path().join("fold2");
    let out = train_fold(&data, &run, "2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fold 2 of nnU-Net's generated folds"),
        "{stderr}"
    );
    assert_eq!(lines(&run.join("split/train.txt")), folds[2].train);
    assert_eq!(lines(&run.join("split/val.txt")), folds[2].val);
    assert_eq!(lines(&run.join("split/test.txt")), ["case_006"]);
    let written: Vec<Fold> =
        serde_json::from_str(&std::fs::read_to_string(run.join("splits_final.json")).unwrap())
            .unwrap();
    assert_eq!(written, folds);

    // The user's splits_final.json wins over the generated folds.
    let custom = r#"[{"train": ["case_000", "case_001", "case_002", "case_003"],
                      "val": ["case_004", "case_005"]}]"#;
    std::fs::write(data.join("splits_final.json"), custom).unwrap();
    let run = tmp.path().join("custom");
    let out = train_fold(&data, &run, "0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&run.join("split/val.txt")), ["case_004", "case_005"]);
    let out = train_fold(&data, &tmp.path().join("bad"), "3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("data.fold = 3") && err.contains("folds 0..0"),
        "{err}"
    );
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn a_decathlon_folder_with_a_v1_dataset_json_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = nnunet_raw(tmp.path(), true);
    let run = tmp.path().join("run");
    let out = train_fold(&data, &run, "4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&run.join("split/val.txt")), reference_folds(6)[4].val);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        info["class_names"],
        serde_json::json!(["background", "CSF", "GM", "WM"])
    );
}

/// A tiny run on an nnU-Net folder under `normalize = "channel-names"`: (dataset, run).
fn trained_by_channel_names(root: &Path, raw: Raw) -> (PathBuf, PathBuf) {
    let data = nnunet_raw_with(root, false, raw);
    let run = root.join("run");
    let mut sets = tiny_settings(&data);
    sets.push("data.normalize=\"channel-names\"".into());
    ok(&train_args(&config_path(), run.to_str().unwrap(), &sets));
    (data, run)
}

/// `ctrcl predict --run RUN --input INPUT --output OUT`.
fn predict(run: &Path, input: &Path, out: &Path) -> std::process::Output {
    ctrcl(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ])
}

/// The distinct values of a NIfTI label map.
fn values_of(path: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = read_nifti(path)
        .unwrap()
        .data
        .iter()
        .map(|&x| x as i64)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Labels stored as 5/10/20/30 and mapped to classes by `data.label_map`: `predict` writes the
/// stored values back (before, it wrote the class numbers 0–3).
#[test]
fn predict_writes_the_datasets_own_label_values() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = Raw {
        values: Some([5.0, 10.0, 20.0, 30.0]),
        ..Raw::default()
    };
    let data = nnunet_raw_with(tmp.path(), false, raw);
    let run = tmp.path().join("run");
    let mut sets = tiny_settings(&data);
    sets.push(r#"data.label_map={"5"=0,"10"=1,"20"=2,"30"=3}"#.into());
    ok(&train_args(&config_path(), run.to_str().unwrap(), &sets));
    let out = tmp.path().join("pred");
    let o = predict(&run, &data.join("imagesTs"), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written = values_of(&out.join("case_006.nii.gz"));
    assert!(!written.is_empty());
    assert!(
        written.iter().all(|v| [5, 10, 20, 30].contains(v)),
        "{written:?}"
    );
}

/// A two-channel student predicts from `CASE_0000` + `CASE_0001` side by side (one output per
/// case, on the input's grid); a missing channel file is an error naming it.
#[test]
fn a_multi_channel_student_predicts_nnunet_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = Raw {
        two_channels: true,
        ..Raw::default()
    };
    let (data, run) = trained_by_channel_names(tmp.path(), raw);
    let out = tmp.path().join("pred");
    let input = data.join("imagesTs");
    let o = predict(&run, &input, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["case_006.nii.gz"]);
    let pred = read_nifti(&out.join("case_006.nii.gz")).unwrap();
    let image = read_nifti(&input.join("case_006_0000.nii.gz")).unwrap();
    assert_eq!(pred.dims, image.dims);
    std::fs::remove_file(input.join("case_006_0001.nii.gz")).unwrap();
    let o = predict(&run, &input, &tmp.path().join("pred2"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("case_006_0001.nii.gz"), "{err}");
}

/// Under `normalize = "channel-names"` a CT channel is normalised with the training data's
/// statistics, recorded in run.json so `predict` needs no training data. A run without them
/// (older runs) recomputes them from its dataset — giving the same label maps — or, when the
/// dataset is gone, says so instead of z-scoring each image.
#[test]
fn predict_normalises_a_ct_channel_with_the_recorded_training_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = Raw {
        channel0: Some("CT"),
        ..Raw::default()
    };
    let (data, run) = trained_by_channel_names(tmp.path(), raw);
    let info_path = run.join("run.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    let norm = &info["channel_normalization"][0];
    assert_eq!(norm["kind"], "ct", "{info}");
    assert!(norm["std"].as_f64().unwrap() > 0.0);
    let images = data.join("imagesTs");
    let predict = |name: &str| {
        let out = tmp.path().join(name);
        (predict(&run, &images, &out), out.join("case_006.nii.gz"))
    };
    let (o, recorded) = predict("recorded");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    info.as_object_mut()
        .unwrap()
        .remove("channel_normalization");
    std::fs::write(&info_path, info.to_string()).unwrap();
    let (o, recomputed) = predict("recomputed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("recomputed"));
    assert_eq!(
        read_nifti(&recorded).unwrap().data,
        read_nifti(&recomputed).unwrap().data
    );
    std::fs::rename(&data, tmp.path().join("moved")).unwrap();
    std::fs::create_dir_all(data.join("imagesTs")).unwrap();
    let moved = tmp.path().join("moved/imagesTs/case_006_0000.nii.gz");
    std::fs::copy(moved, data.join("imagesTs/case_006_0000.nii.gz")).unwrap();
    let (o, _) = predict("gone");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("records no channel statistics"), "{err}");
}

/// `ctrcl export`: both students of a real run as .safetensors + .json (the settings also in
/// the file's metadata), and the refusals that protect the user's files. The values against
/// PyTorch and ONNX runtime are checked by bench/pytorch/test_export.py (CI).
#[test]
fn export_writes_both_students_and_never_replaces_a_file() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    let sets = tiny_settings(prepared());
    ok(&train_args(&config_path(), run.to_str().unwrap(), &sets));
    let run_s = run.to_str().unwrap();
    for role in ["cnn", "transformer"] {
        let out = root.path().join(format!("{role}.safetensors"));
        let said = ok(&[
            "export",
            "--run",
            run_s,
            "--student",
            role,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            said.contains(&format!("exported the {role} student")),
            "{said}"
        );
        let settings: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
                .unwrap();
        assert_eq!(settings["format"], "ctrcl-export/1");
        assert_eq!(settings["student"], role);
        assert_eq!(settings["output"]["classes"].as_array().unwrap().len(), 4);
        // The header's `__metadata__.ctrcl` holds the same settings.
        let bytes = std::fs::read(&out).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(header["__metadata__"]["ctrcl"].as_str().unwrap()).unwrap();
        assert_eq!(meta, settings);
        let class = settings["twin"]["class"].as_str().unwrap();
        assert_eq!(class, if role == "cnn" { "UNet" } else { "SwinUnet" });
    }
    // An existing file is never replaced, whichever of the two it is.
    let out = root.path().join("cnn.safetensors");
    let before = std::fs::read(&out).unwrap();
    let said = fails(&["export", "--run", run_s, "--out", out.to_str().unwrap()]);
    assert!(said.contains("cnn.safetensors exists"), "{said}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let json_only = root.path().join("other.json");
    std::fs::write(&json_only, "mine").unwrap();
    let said = fails(&[
        "export",
        "--run",
        run_s,
        "--out",
        root.path().join("other.safetensors").to_str().unwrap(),
    ]);
    assert!(said.contains("other.json exists"), "{said}");
    assert_eq!(std::fs::read_to_string(&json_only).unwrap(), "mine");
    assert!(!root.path().join("other.safetensors").exists());
    // Another format, a missing folder, a folder that is not a run: named.
    let said = fails(&["export", "--run", run_s, "--out", "model.pt"]);
    assert!(
        said.contains("model.pt") && said.contains(".safetensors"),
        "{said}"
    );
    let said = fails(&[
        "export",
        "--run",
        run_s,
        "--out",
        "/nonexistent/dir/m.safetensors",
    ]);
    assert!(
        said.contains("/nonexistent/dir") && said.contains("does not exist"),
        "{said}"
    );
    let said = fails(&[
        "export",
        "--run",
        root.path().to_str().unwrap(),
        "--out",
        root.path().join("x.safetensors").to_str().unwrap(),
    ]);
    assert!(said.contains("not a ctrcl run directory"), "{said}");
}
