//! Label-map files of any format ctrcl reads (NIfTI volumes, PNG images), as one array with its
//! shape and spacing, for `evaluate` and `report`.

use crate::error::{DataError, Result};
use crate::image2d::{image_stem, is_png, read_label_png};
use crate::nifti::{nifti_stem, read_nifti};
use std::path::Path;

/// A label map read from a file.
#[derive(Debug, Clone)]
pub struct LabelFile {
    /// Labels in row-major order of `shape`.
    pub labels: Vec<u8>,
    /// Array shape, slowest axis first: NIfTI `[Z, Y, X]`, or `[Y, X]` when Z = 1; PNG `[H, W]`.
    pub shape: Vec<usize>,
    /// Spacing (mm) per axis of `shape`: the NIfTI header's pixdim; 1 for PNG.
    pub spacing: Vec<f64>,
    /// A PNG holding only 0 and 255, read as 0/1.
    pub binary_255: bool,
}

/// The case id of a label file (`.nii`, `.nii.gz`, `.png`), or `None` for other files.
pub fn label_case_id(path: &Path) -> Option<String> {
    nifti_stem(path).or_else(|| image_stem(path).filter(|_| is_png(path)))
}

/// Values as labels 0..255; a fraction or a value out of range is an error naming the file and
/// the `what` (pixel/voxel) index.
fn as_labels(values: impl Iterator<Item = f64>, what: &str, path: &Path) -> Result<Vec<u8>> {
    values
        .enumerate()
        .map(|(i, v)| {
            if (0.0..=255.0).contains(&v) && v.fract() == 0.0 {
                Ok(v as u8)
            } else {
                Err(DataError::invalid(
                    path,
                    format!("{what} {i} holds {v}, not a label (0..255 integers)"),
                ))
            }
        })
        .collect()
}

/// Reads a NIfTI or PNG label map; non-integer or out-of-range values are errors naming the file.
pub fn read_label_file(path: &Path) -> Result<LabelFile> {
    if crate::image2d::is_tiff(path) {
        let t = crate::image2d::read_tiff_samples(path)?;
        if t.channels != 1 {
            return Err(DataError::invalid(
                path,
                "a label TIFF must be single-channel (grey), not colour",
            ));
        }
        return Ok(LabelFile {
            labels: as_labels(t.values.iter().copied(), "pixel", path)?,
            shape: vec![t.h, t.w],
            spacing: vec![1.0, 1.0],
            binary_255: false,
        });
    }
    if is_png(path) {
        let png = read_label_png(path)?;
        return Ok(LabelFile {
            labels: png.labels,
            shape: vec![png.h, png.w],
            spacing: vec![1.0, 1.0],
            binary_255: png.binary_255,
        });
    }
    let v = read_nifti(path)?;
    let labels = as_labels(v.data.iter().map(|&x| f64::from(x)), "voxel", path)?;
    let [x, y, z] = v.dims;
    let [sx, sy, sz] = v.spacing.map(f64::from);
    // A single-slice volume (nnU-Net's 2D datasets) is scored as a 2D image: in 3D, the zero
    // border above and below would make every pixel a surface pixel.
    let (shape, spacing) = if z == 1 {
        (vec![y, x], vec![sy, sx])
    } else {
        (vec![z, y, x], vec![sz, sy, sx])
    };
    Ok(LabelFile {
        labels,
        shape,
        spacing,
        binary_255: false,
    })
}
