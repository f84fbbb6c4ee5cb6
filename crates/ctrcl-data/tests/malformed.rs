//! The malformed-input corpus (`tests/data/malformed/`, made from real files by
//! `scripts/reference/malformed_corpus.py`): every damaged file or folder gives an error that
//! names the file and says what is wrong — never a panic, never a silently wrong array — and the
//! damage the standards define as harmless (NIfTI slope 0 or NaN) reads the right values.

use ctrcl_data::dataset::{Dataset, Normalize};
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
        let result = if path.is_dir() && !name.starts_with("dicom") {
            Dataset::open(&path, Normalize::None).map(|_| ())
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
