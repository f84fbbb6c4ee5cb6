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
        for (folder, name, data, is_label) in [
            (
                images,
                format!("{id}{suffix}.nii.gz"),
                cut(&image.data),
                false,
            ),
            (labels, format!("{id}.nii.gz"), cut(&label.data), true),
        ] {
            std::fs::create_dir_all(dir.join(folder)).unwrap();
            let path = dir.join(folder).join(name);
            write_nifti(&path, dims, &data, is_label, None, image.spacing, affine).unwrap();
        }
    }
    let json = if msd {
        r#"{"name": "Brain", "modality": {"0": "MRI"}, "numTraining": 6,
            "labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
            "training": [], "test": []}"#
    } else {
        r#"{"channel_names": {"0": "T1"}, "file_ending": ".nii.gz", "numTraining": 6,
            "labels": {"background": 0, "CSF": 1, "GM": 2, "WM": 3}}"#
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
