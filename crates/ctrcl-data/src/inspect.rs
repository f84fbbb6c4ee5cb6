//! `ctrcl data inspect`: what a file or a folder holds — format, shape (the file's own axis order:
//! NIfTI X, Y, Z; NumPy order for npy/npz; H, W[, C] for images), stored dtype in NumPy's names,
//! min/max, spacing and orientation where known, and the sorted unique values of integer data.
//!
//! Length: ~410 lines of code (one description per format) and ~200 of tests.

use crate::dicom::{is_dicom, read_all_series, read_dicom, DicomImage, DicomSeries};
use crate::error::{DataError, Result};
use crate::hdf5::{is_hdf5, H5File};
use crate::image2d::{image_stem, is_png, read_png_samples};
use crate::mrc::{is_mrc, read_mrc_any};
use crate::nifti::{nifti_stem, visit_nifti, NiftiType, NiftiVolume};
use crate::npy::parse_npy;
use crate::nrrd::{is_nrrd, read_nrrd_any};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::Path;

/// Most unique values listed; integer arrays with more report `unique: null`.
pub const MAX_UNIQUE: usize = 1000;

/// Most 3D volumes of a 4D+ NIfTI given their own statistics (a hostile header could claim
/// millions of one-voxel volumes).
const MAX_VOLUMES: usize = 4096;

/// Running statistics of an array's values: min/max of the finite ones, NaN and infinity
/// counts, the unique values of integer data (up to [`MAX_UNIQUE`]), whether any is fractional.
/// Fed one value at a time, so no copy of the array is needed.
struct Stats {
    min: f64,
    max: f64,
    /// Sum and count of the finite values, for the mean.
    sum: f64,
    finite: usize,
    nan: usize,
    inf: usize,
    fractional: bool,
    unique: Option<std::collections::BTreeSet<i64>>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            finite: 0,
            nan: 0,
            inf: 0,
            fractional: false,
            unique: Some(Default::default()),
        }
    }

    fn push(&mut self, v: f64) {
        if v.is_nan() {
            self.nan += 1;
            return;
        }
        if v.is_infinite() {
            self.inf += 1;
            return;
        }
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.finite += 1;
        self.fractional |= v.fract() != 0.0;
        if let Some(set) = &mut self.unique {
            if set.insert(v as i64) && set.len() > MAX_UNIQUE {
                self.unique = None;
            }
        }
    }

    /// Min, max and mean of the finite values (null when there are none).
    fn range_json(&self) -> Value {
        let finite = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        let mean = if self.finite > 0 {
            finite(self.sum / self.finite as f64)
        } else {
            Value::Null
        };
        json!({"min": finite(self.min), "max": finite(self.max), "mean": mean})
    }

    /// `{"format", "shape", "dtype", "min", "max", "mean", "spacing", "unique"[, "nan", "inf"]}`.
    /// Only integer data list unique values, and not when made fractional (a slope, a
    /// rescale).
    fn json(self, format: &str, shape: &[usize], dtype: &str) -> Value {
        let range = self.range_json();
        let finite = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        let integer = dtype.starts_with("int") || dtype.starts_with("uint") || dtype == "bool";
        let unique = self
            .unique
            .filter(|_| integer && !self.fractional)
            .map(|s| s.into_iter().collect::<Vec<i64>>());
        let mut j = json!({
            "format": format,
            "shape": shape,
            "dtype": dtype,
            "min": finite(self.min),
            "max": finite(self.max),
            "mean": range["mean"],
            "spacing": Value::Null,
            "unique": unique,
        });
        if self.nan + self.inf > 0 {
            j["nan"] = json!(self.nan);
            j["inf"] = json!(self.inf);
        }
        j
    }
}

/// [`Stats`] of one array's values.
fn array_json<I: IntoIterator<Item = f64>>(
    format: &str,
    shape: &[usize],
    dtype: &str,
    values: I,
) -> Value {
    let mut stats = Stats::new();
    values.into_iter().for_each(|v| stats.push(v));
    stats.json(format, shape, dtype)
}

fn nifti_dtype(t: NiftiType) -> &'static str {
    match t {
        NiftiType::U8 => "uint8",
        NiftiType::I8 => "int8",
        NiftiType::I16 => "int16",
        NiftiType::U16 => "uint16",
        NiftiType::I32 => "int32",
        NiftiType::U32 => "uint32",
        NiftiType::I64 => "int64",
        NiftiType::U64 => "uint64",
        NiftiType::F32 => "float32",
        NiftiType::F64 => "float64",
    }
}

/// Axis codes of an affine (nibabel's `aff2axcodes`): for each voxel axis, the world axis it
/// mostly follows, as R/L, A/P, S/I by the sign.
pub fn axis_codes(affine: &[[f64; 4]; 3]) -> String {
    (0..3)
        .map(|col| {
            let row = (0..3)
                .max_by(|&a, &b| affine[a][col].abs().total_cmp(&affine[b][col].abs()))
                .expect("three rows");
            let positive = affine[row][col] >= 0.0;
            match (row, positive) {
                (0, true) => 'R',
                (0, false) => 'L',
                (1, true) => 'A',
                (1, false) => 'P',
                (2, true) => 'S',
                _ => 'I',
            }
        })
        .collect()
}

/// A 3D volume (X, Y, Z order) with its spacing and orientation.
fn volume_json(format: &str, v: &NiftiVolume, dtype: &str) -> Value {
    let j = array_json(format, &v.dims, dtype, v.data.iter().map(|&x| f64::from(x)));
    with_geometry(j, v)
}

/// Spacing and orientation of a volume added to its statistics.
fn with_geometry(mut j: Value, v: &NiftiVolume) -> Value {
    j["spacing"] = json!(v.spacing);
    j["orientation"] = json!(axis_codes(&v.affine));
    j
}

/// One DICOM file: shape as pydicom's `pixel_array` gives it (`[frames,] rows, cols[, samples]`),
/// the stored dtype, modality values (rescale applied), and the geometry tags.
fn dicom_json(img: &DicomImage) -> Value {
    let h = &img.header;
    let mut shape = vec![h.rows, h.cols];
    if h.frames > 1 {
        shape.insert(0, h.frames);
    }
    if h.samples_per_pixel > 1 {
        shape.push(h.samples_per_pixel);
    }
    let mut j = array_json(
        "dicom",
        &shape,
        h.dtype,
        img.data.iter().map(|&v| f64::from(v)),
    );
    // (A rescale that made the values fractional lists no unique values: see `Stats::json`.)
    j["spacing"] = json!(h.pixel_spacing);
    j["transfer_syntax"] = json!(h.transfer_syntax);
    j["modality"] = json!(h.modality);
    j["photometric"] = json!(h.photometric);
    j["position"] = json!(h.position);
    j["orientation_patient"] = json!(h.orientation);
    j["instance"] = json!(h.instance);
    j["series_uid"] = json!(h.series_uid);
    j
}

/// One assembled DICOM series: the volume as ctrcl trains on it (columns, rows, slices; RAS).
fn series_json(s: &DicomSeries) -> Value {
    let mut j = volume_json("dicom-series", &s.volume, s.dtype);
    j["series_uid"] = json!(s.series_uid);
    j["files"] = json!(s.files.len());
    j["sorted_by"] = json!(s.sorted_by);
    j["affine"] = json!(s.volume.affine);
    j
}

/// Describes one file; `None` if ctrcl does not read its format.
pub fn inspect_file(path: &Path) -> Result<Option<Value>> {
    if is_dicom(path) {
        return Ok(Some(dicom_json(&read_dicom(path)?)));
    }
    if nifti_stem(path).is_some() {
        // Statistics stream from the file's bytes (no decoded copy: a 300-million-voxel uint8
        // volume costs its 300 MB); NaN and infinite intensities are counted, not refused.
        // A 4D (or larger) file also gets each 3D volume's min, max and mean, in file order.
        let mut stats = Stats::new();
        let mut volumes: Vec<Stats> = Vec::new();
        let (v, extra) = visit_nifti(path, &mut |volume, x| {
            let x = f64::from(x);
            stats.push(x);
            if volume < MAX_VOLUMES {
                if volumes.len() <= volume {
                    // Range and mean only: no per-volume set of unique values.
                    volumes.push(Stats {
                        unique: None,
                        ..Stats::new()
                    });
                }
                volumes[volume].push(x);
            }
        })?;
        let dtype = nifti_dtype(v.dtype);
        let shape: Vec<usize> = v.dims.iter().chain(&extra).copied().collect();
        let mut j = with_geometry(stats.json("nifti", &shape, dtype), &v);
        if !extra.is_empty() {
            j["volumes"] = json!(volumes.iter().map(Stats::range_json).collect::<Vec<_>>());
            let count: usize = extra.iter().product();
            if count > MAX_VOLUMES {
                j["note"] = json!(format!(
                    "{count} volumes: statistics listed for the first {MAX_VOLUMES}"
                ));
            }
        }
        return Ok(Some(j));
    }
    if is_nrrd(path) {
        let v = read_nrrd_any(path)?;
        return Ok(Some(volume_json("nrrd", &v, nifti_dtype(v.dtype))));
    }
    if is_mrc(path) {
        let m = read_mrc_any(path)?;
        let mut j = volume_json("mrc", &m.volume, m.dtype);
        if !m.spacing_known {
            // The header gives no voxel size (cella = 0): say so rather than print 1 mm.
            j["spacing"] = Value::Null;
        }
        return Ok(Some(j));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("npy") => {
            let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
            let a = parse_npy(path, &bytes)?;
            Ok(Some(array_json(
                "npy",
                &a.shape,
                &a.dtype,
                a.data.iter().copied(),
            )))
        }
        Some("npz") => inspect_npz(path).map(Some),
        _ if is_hdf5(path) => {
            let f = H5File::open(path)?;
            let mut arrays = Map::new();
            for name in f.datasets()? {
                let a = f.read(&name)?;
                let values = a.data.iter().map(|&v| f64::from(v));
                arrays.insert(name, array_json("hdf5", &a.shape, a.dtype, values));
            }
            Ok(Some(json!({"format": "hdf5", "arrays": arrays})))
        }
        _ if is_png(path) && crate::image2d::has_png_signature(path) => {
            let p = read_png_samples(path)?;
            let shape = if p.channels == 1 {
                vec![p.h, p.w]
            } else {
                vec![p.h, p.w, p.channels]
            };
            let dtype = if p.bit_depth == 16 { "uint16" } else { "uint8" };
            let values = p.values.iter().map(|&v| f64::from(v));
            let mut j = array_json("png", &shape, dtype, values);
            j["palette"] = json!(p.indexed);
            Ok(Some(j))
        }
        _ if crate::image2d::is_tiff(path) => {
            let t = crate::image2d::read_tiff_samples(path)?;
            let shape = if t.channels == 1 {
                vec![t.h, t.w]
            } else {
                vec![t.h, t.w, t.channels]
            };
            Ok(Some(array_json(
                "tiff",
                &shape,
                t.dtype,
                t.values.iter().copied(),
            )))
        }
        // JPEG (or another image named .png: decoded by its content, and said so).
        _ if image_stem(path).is_some() => {
            let img = crate::image2d::decode_image(path)?;
            let misnamed = is_png(path);
            let c = img.color().channel_count() as usize;
            let (h, w) = (img.height() as usize, img.width() as usize);
            let rgb = img.to_rgb8();
            let values: Vec<f64> = if c == 1 {
                rgb.pixels().map(|p| f64::from(p[0])).collect()
            } else {
                rgb.as_raw().iter().map(|&v| f64::from(v)).collect()
            };
            let shape = if c == 1 { vec![h, w] } else { vec![h, w, 3] };
            let mut j = array_json("jpeg", &shape, "uint8", values);
            if misnamed {
                j["note"] = json!("not a PNG file despite its name (read by its content)");
            }
            Ok(Some(j))
        }
        _ => Ok(None),
    }
}

/// Every `.npy` member of an `.npz` archive (stored or deflated) under `arrays`.
fn inspect_npz(path: &Path) -> Result<Value> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| DataError::invalid(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let mut arrays = Map::new();
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| DataError::invalid(path, format!("member {i}: {e}")))?;
        let name = member.name().to_string();
        let mut bytes = Vec::new();
        member
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::invalid(path, format!("member {name}: {e}")))?;
        let inner = path.join(&name);
        let a = parse_npy(&inner, &bytes)?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        arrays.insert(
            key,
            array_json("npy", &a.shape, &a.dtype, a.data.iter().copied()),
        );
    }
    Ok(json!({"format": "npz", "arrays": arrays}))
}

/// A file, or a folder: its readable files (not recursive) under `files`, and its
/// `dataset.json` under `dataset` if it has one.
pub fn inspect(path: &Path) -> Result<Value> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| DataError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let mut files = Map::new();
        // A bad file is described as such ({"format": "error", "error": why}) and the others
        // still are: one corrupt file must not hide the folder.
        for entry in entries.iter().filter(|p| p.is_file()) {
            let v = match inspect_file(entry) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => json!({"format": "error", "error": e.to_string()}),
            };
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
            files.insert(name.unwrap_or_default(), v);
        }
        let dataset = std::fs::read_to_string(path.join("dataset.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let series: Vec<Value> = read_all_series(path)?.iter().map(series_json).collect();
        let subfolders: Vec<String> = entries
            .iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        return Ok(json!({
            "format": "folder",
            "files": files,
            "folders": subfolders,
            "dataset": dataset,
            "dicom_series": series,
        }));
    }
    inspect_file(path)?.ok_or_else(|| {
        DataError::invalid(
            path,
            "not a format ctrcl reads (.nii, .nii.gz, .nrrd, .nhdr, .mrc, .h5, .npy, .npz, .png, .jpg, .jpeg, .tif, .dcm)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::write_nifti;

    /// Every truncation and many single-byte corruptions of real files give a result or an error
    /// naming the file — never a panic.
    #[test]
    fn truncated_and_corrupted_files_never_panic() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("src.png");
        crate::image2d::write_label_png(&png, &[0, 1, 2, 3, 4, 5], 2, 3).unwrap();
        let nii = dir.path().join("src.nii");
        let vol: Vec<f32> = (0..24).map(|i| i as f32).collect();
        crate::nifti::write_nifti(
            &nii,
            [4, 3, 2],
            &vol,
            false,
            None,
            [1.0; 3],
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
            ],
        )
        .unwrap();
        let nifti2 = {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(
                std::fs::File::open(data.join("nifti2/int16_be.nii.gz")).unwrap(),
            )
            .read_to_end(&mut out)
            .unwrap();
            out
        };
        let sources: Vec<(&str, Vec<u8>)> = vec![
            (
                "npy",
                std::fs::read(data.join("npy/int16_fortran_2x3.npy")).unwrap(),
            ),
            (
                "npy",
                std::fs::read(data.join("npy/float16_4.npy")).unwrap(),
            ),
            ("png", std::fs::read(&png).unwrap()),
            ("nii", std::fs::read(&nii).unwrap()),
            ("nii", nifti2),
            (
                "nrrd",
                std::fs::read(data.join("nrrd/ct_lps_gzip.nrrd")).unwrap(),
            ),
            (
                "nrrd",
                std::fs::read(data.join("nrrd/labels_ascii.nrrd")).unwrap(),
            ),
            ("mrc", std::fs::read(data.join("mrc/permuted.mrc")).unwrap()),
            (
                "tif",
                std::fs::read(data.join("tiff/grey16_deflate_be.tif")).unwrap(),
            ),
            ("tif", std::fs::read(data.join("tiff/rgb8.tif")).unwrap()),
        ];
        for (k, (ext, bytes)) in sources.iter().enumerate() {
            let path = dir.path().join(format!("bad{k}.{ext}"));
            let mut variants: Vec<Vec<u8>> =
                (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
            for at in (0..bytes.len()).step_by(3) {
                for flip in [0xffu8, 0x80, 0x01] {
                    let mut v = bytes.clone();
                    v[at] ^= flip;
                    variants.push(v);
                }
            }
            for v in variants {
                std::fs::write(&path, &v).unwrap();
                if let Err(e) = inspect(&path) {
                    assert!(e.to_string().contains(&format!("bad{k}.{ext}")), "{e}");
                }
            }
        }
    }

    #[test]
    fn axis_codes_follow_the_affine() {
        let ras = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        assert_eq!(axis_codes(&ras), "RAS");
        // LPS with the first two voxel axes swapped: (x → -A = P, y → -R = L, z → S).
        let m = [
            [0.0, -0.8, 0.0, 0.0],
            [-0.7, 0.0, 0.1, 0.0],
            [0.0, 0.0, 2.5, 0.0],
        ];
        assert_eq!(axis_codes(&m), "PLS");
    }

    #[test]
    fn per_volume_statistics_stop_at_max_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("series.nii");
        let n = MAX_VOLUMES + 10;
        let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let eye = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        crate::nifti::write_nifti_channels(&path, [1, 1, 1], n, &data, true, None, [1.0; 3], eye)
            .unwrap();
        let v = inspect(&path).unwrap();
        assert_eq!(v["shape"], json!([1, 1, 1, n]));
        assert_eq!(v["volumes"].as_array().unwrap().len(), MAX_VOLUMES);
        assert_eq!(v["volumes"][9]["mean"], json!(2.0));
        assert_eq!(v["max"], json!(6.0));
        assert!(v["note"].as_str().unwrap().contains("first 4096"), "{v}");
    }

    #[test]
    fn nifti_npy_npz_and_png_are_described() {
        let dir = tempfile::tempdir().unwrap();
        let nii = dir.path().join("labels.nii.gz");
        let affine = [
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, -1.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
        ];
        let data: Vec<f32> = (0..24).map(|i| (i % 3) as f32).collect();
        write_nifti(&nii, [4, 3, 2], &data, true, None, [1.0, 1.0, 2.0], affine).unwrap();
        let v = inspect(&nii).unwrap();
        assert_eq!(v["shape"], json!([4, 3, 2]));
        assert_eq!(v["dtype"], "uint8");
        assert_eq!(v["unique"], json!([0, 1, 2]));
        assert_eq!(
            (v["min"].as_f64(), v["max"].as_f64()),
            (Some(0.0), Some(2.0))
        );
        assert_eq!(v["spacing"], json!([1.0, 1.0, 2.0]));
        assert_eq!(v["orientation"], "LPS");

        let npy_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/npy");
        let v = inspect(&npy_dir.join("int16_fortran_2x3.npy")).unwrap();
        assert_eq!(
            (v["shape"].clone(), v["dtype"].clone()),
            (json!([2, 3]), json!("int16"))
        );
        assert_eq!(v["unique"], json!([-32768, -3, 0, 5, 7, 1000]));
        let f = inspect(&npy_dir.join("float64_be_3.npy")).unwrap();
        assert!(f["unique"].is_null(), "no unique values for float data");

        // An npz of two members, one deflated, as np.savez_compressed writes.
        let npz = dir.path().join("case.npz");
        {
            use std::io::Write;
            let mut w = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
            let stored = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            let deflated = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            w.start_file("image.npy", stored).unwrap();
            w.write_all(&std::fs::read(npy_dir.join("float64_be_3.npy")).unwrap())
                .unwrap();
            w.start_file("label.npy", deflated).unwrap();
            w.write_all(&std::fs::read(npy_dir.join("uint8_2x2x2.npy")).unwrap())
                .unwrap();
            w.finish().unwrap();
        }
        let v = inspect(&npz).unwrap();
        assert_eq!(v["arrays"]["label"]["shape"], json!([2, 2, 2]));
        assert_eq!(
            v["arrays"]["label"]["unique"],
            json!([0, 30, 60, 90, 120, 150, 180, 210])
        );
        assert_eq!(v["arrays"]["image"]["dtype"], "float64");

        let png = dir.path().join("mask.png");
        crate::image2d::write_label_png(&png, &[0, 3, 3, 1, 0, 0], 2, 3).unwrap();
        let v = inspect(&png).unwrap();
        assert_eq!(
            (v["shape"].clone(), v["unique"].clone()),
            (json!([2, 3]), json!([0, 1, 3]))
        );

        let folder = inspect(dir.path()).unwrap();
        assert_eq!(folder["files"].as_object().unwrap().len(), 3);
        let err = inspect(&dir.path().join("notes.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("notes.txt"), "{err}");
    }
}
