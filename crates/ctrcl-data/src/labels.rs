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
    /// Voxel → world (mm) affine of a NIfTI file (rows of a 3×4 matrix); `None` for images.
    pub affine: Option<[[f64; 4]; 3]>,
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
            affine: None,
        });
    }
    if is_png(path) {
        let png = read_label_png(path)?;
        return Ok(LabelFile {
            labels: png.labels,
            shape: vec![png.h, png.w],
            spacing: vec![1.0, 1.0],
            binary_255: png.binary_255,
            affine: None,
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
        affine: Some(v.affine),
    })
}

/// Why a prediction and its reference are not on one grid (voxel size or placement differ by
/// more than 1e-3 mm / 1e-4 relative), or `None`. Scoring such a pair voxel by voxel would be
/// silently wrong.
pub fn geometry_mismatch(pred: &LabelFile, truth: &LabelFile) -> Option<String> {
    if !pred
        .spacing
        .iter()
        .zip(&truth.spacing)
        .all(|(&a, &b)| crate::nifti::close_mm(a, b))
    {
        return Some(format!(
            "voxel size {:?} mm differs from the reference's {:?} mm",
            pred.spacing, truth.spacing
        ));
    }
    match (&pred.affine, &truth.affine) {
        (Some(p), Some(t)) => crate::nifti::affine_mismatch(p, t, "the reference's"),
        _ => None,
    }
}

/// The classes a set of label maps is scored on: foreground label values, ascending, each
/// mapped to its position `1..=K` (0 stays background). Values outside the set count as
/// background.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSet {
    /// Foreground label values, ascending, without duplicates.
    pub labels: Vec<u8>,
}

impl ClassSet {
    /// The given foreground values (duplicates and 0 removed).
    pub fn new(mut labels: Vec<u8>) -> Self {
        labels.retain(|&l| l != 0);
        labels.sort_unstable();
        labels.dedup();
        ClassSet { labels }
    }

    /// Every foreground value present in `maps`.
    pub fn present<'a>(maps: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut seen = [false; 256];
        for map in maps {
            for &v in map {
                seen[v as usize] = true;
            }
        }
        ClassSet::new((1..=255u8).filter(|&v| seen[v as usize]).collect())
    }

    /// Classes scored, background included (`K + 1`, at least 2).
    pub fn num_classes(&self) -> usize {
        (self.labels.len() + 1).max(2)
    }

    /// Label value → class index (0 = background or not a class).
    pub fn lut(&self) -> [u8; 256] {
        let mut lut = [0u8; 256];
        for (i, &l) in self.labels.iter().enumerate() {
            lut[l as usize] = (i + 1) as u8;
        }
        lut
    }

    /// Values in `map` that are neither background nor a class, with their voxel counts.
    pub fn outside(&self, map: &[u8]) -> Vec<(u8, usize)> {
        let lut = self.lut();
        let mut counts = [0usize; 256];
        for &v in map {
            if v != 0 && lut[v as usize] == 0 {
                counts[v as usize] += 1;
            }
        }
        (1..=255u8)
            .filter(|&v| counts[v as usize] > 0)
            .map(|v| (v, counts[v as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(spacing: Vec<f64>, origin: f64) -> LabelFile {
        LabelFile {
            labels: vec![0],
            shape: vec![1, 1, 1],
            spacing,
            binary_255: false,
            affine: Some([
                [1.0, 0.0, 0.0, origin],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
            ]),
        }
    }

    /// Found by the hostile-input probe (issue #21): a prediction whose spacing or origin
    /// differed from the reference's was scored without a word.
    #[test]
    fn predictions_off_the_reference_grid_are_named() {
        let t = file(vec![1.0, 1.0, 1.0], 0.0);
        assert_eq!(geometry_mismatch(&file(vec![1.0, 1.0, 1.0], 0.0), &t), None);
        // Float noise of a header round trip is not a mismatch.
        assert_eq!(
            geometry_mismatch(&file(vec![1.0, 1.00001, 1.0], 1e-5), &t),
            None
        );
        let m = geometry_mismatch(&file(vec![2.0, 1.0, 1.0], 0.0), &t).unwrap();
        assert!(m.contains("voxel size"), "{m}");
        let m = geometry_mismatch(&file(vec![1.0, 1.0, 1.0], 10.0), &t).unwrap();
        assert!(m.contains("origin"), "{m}");
    }

    /// Found by the probe: the class set was 1..=max label, so one stray voxel of label 9 made
    /// classes that exist in neither file and a perfect prediction scored 0.444.
    #[test]
    fn the_class_set_is_the_values_present_not_one_to_the_maximum() {
        let truth = [0u8, 1, 2, 3, 3];
        let pred = [0u8, 1, 2, 3, 9];
        let set = ClassSet::present([&truth[..]]);
        assert_eq!(set.labels, vec![1, 2, 3]);
        assert_eq!(set.outside(&pred), vec![(9, 1)]);
        let lut = set.lut();
        assert_eq!(pred.map(|v| lut[v as usize]), [0, 1, 2, 3, 0]);
        let sparse = ClassSet::new(vec![5, 1, 0, 5]);
        assert_eq!(sparse.labels, vec![1, 5]);
        assert_eq!(sparse.num_classes(), 3);
        assert_eq!(sparse.lut()[5], 2);
    }
}
