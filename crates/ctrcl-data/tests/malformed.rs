//! The malformed-input corpus (`tests/data/malformed/`, made from real files by
//! `scripts/reference/malformed_corpus.py`): every damaged file or folder gives an error that
//! names the file and says what is wrong — never a panic, never a silently wrong array — and the
//! damage the standards define as harmless (NIfTI slope 0 or NaN) reads the right values.

use ctrcl_data::dataset::Dataset;
use ctrcl_data::normalize::Normalize;
use serde_json::Value;
use std::path::Path;

#[test]
fn every_malformed_input_is_a_clear_error_or_the_standard_reading() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let entries = manifest.as_object().unwrap();
    assert!(entries.len() >= 15, "the corpus lost entries");
    for (name, expect) in entries {
        let path = dir.join(name);
        if let Some(ok) = expect.get("ok") {
            let v = ctrcl_data::nifti::read_nifti(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(serde_json::json!(v.dims), ok["dims"], "{name}");
            let sum: f64 = v.data.iter().map(|&x| f64::from(x)).sum();
            assert_eq!(sum, ok["sum"].as_f64().unwrap(), "{name}");
            continue;
        }
        // DICOM series folders are read by assembling their series, as `data inspect` does.
        // NIfTI files through the reader training uses: `data inspect` describes a NaN
        // intensity (counted) where training refuses it.
        let result = if path.is_dir() && !name.starts_with("dicom") {
            Dataset::open(&path, Normalize::None).map(|_| ())
        } else if ctrcl_data::nifti::nifti_stem(&path).is_some() {
            ctrcl_data::nifti::read_nifti(&path).map(|_| ())
        } else {
            ctrcl_data::inspect::inspect(&path).map(|_| ())
        };
        let msg = match result {
            Ok(()) => panic!("{name}: read without an error"),
            Err(e) => e.to_string(),
        };
        if path.is_file() {
            assert!(
                msg.contains(name.as_str()),
                "{name}: the error does not name the file: {msg}"
            );
        }
        for needle in expect["error"].as_array().unwrap() {
            let needle = needle.as_str().unwrap();
            assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}");
        }
    }
}

/// Found by the hostile-input probe (issue #21): `data inspect` refused to describe an image that
/// holds NaN. It describes it, counting the non-finite values and leaving them out of min/max.
#[test]
fn inspect_describes_an_image_holding_nan() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed/nan_intensity.nii");
    let v = ctrcl_data::inspect::inspect(&path).unwrap();
    assert!(v["nan"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["min"].as_f64().unwrap().is_finite(), "{v}");
}

/// Found by the probe: `data inspect` of a folder stopped at its first bad file. The bad file is
/// described as an error naming what is wrong; the good files are still described.
#[test]
fn inspect_of_a_folder_describes_every_file_and_names_the_bad_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed");
    let dir = tempfile::tempdir().unwrap();
    for f in ["nan_slope.nii", "too_short.nii", "zero_slope.nii"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let v = ctrcl_data::inspect::inspect(dir.path()).unwrap();
    let files = v["files"].as_object().unwrap();
    assert_eq!(files.len(), 3, "{v}");
    assert_eq!(files["too_short.nii"]["format"], "error");
    assert!(files["too_short.nii"]["error"]
        .as_str()
        .unwrap()
        .contains("shorter"));
    assert_eq!(files["zero_slope.nii"]["format"], "nifti");
}

/// The same for NRRD and MRC: training's readers refuse a NaN, `data inspect` counts it.
#[test]
fn inspect_describes_nrrd_and_mrc_volumes_holding_nan() {
    let dir = tempfile::tempdir().unwrap();
    let nrrd = dir.path().join("nan.nrrd");
    let mut bytes =
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 1 1\nendian: little\nencoding: raw\n\n"
            .to_vec();
    bytes.extend_from_slice(&f32::NAN.to_le_bytes());
    bytes.extend_from_slice(&2.5f32.to_le_bytes());
    std::fs::write(&nrrd, bytes).unwrap();
    assert!(ctrcl_data::nrrd::read_nrrd(&nrrd)
        .unwrap_err()
        .to_string()
        .contains("not finite"));
    let v = ctrcl_data::inspect::inspect(&nrrd).unwrap();
    assert_eq!(
        (v["nan"].as_u64(), v["max"].as_f64()),
        (Some(1), Some(2.5)),
        "{v}"
    );
    // A float32 map whose first voxel (right after the 1024-byte header) becomes NaN.
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mrc/float32.mrc");
    let mut bytes = std::fs::read(seed).unwrap();
    bytes[1024..1028].copy_from_slice(&f32::NAN.to_le_bytes());
    let mrc = dir.path().join("nan.mrc");
    std::fs::write(&mrc, bytes).unwrap();
    assert!(ctrcl_data::mrc::read_mrc(&mrc)
        .unwrap_err()
        .to_string()
        .contains("not finite"));
    let v = ctrcl_data::inspect::inspect(&mrc).unwrap();
    assert_eq!(v["nan"].as_u64(), Some(1), "{v}");
}
