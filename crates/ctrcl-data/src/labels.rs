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

/// Reads a NIfTI or PNG label map; non-integer or out-of-range values are errors naming the file.
pub fn read_label_file(path: &Path) -> Result<LabelFile> {
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
    let mut labels = Vec::with_capacity(v.data.len());
    for (i, &x) in v.data.iter().enumerate() {
        if !(0.0..=255.0).contains(&x) || x.fract() != 0.0 {
            return Err(DataError::invalid(
                path,
                format!("voxel {i} holds {x}, not a label (0..255 integers)"),
            ));
        }
        labels.push(x as u8);
    }
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
