//! Test support: compares volumes read by ctrcl with the values a reference writer recorded in
//! `tests/data/<format>/expected.json` (see `scripts/reference/`).

use crate::nifti::NiftiVolume;
use std::path::{Path, PathBuf};

#[derive(serde::Deserialize)]
pub struct Expected {
    pub dims: [usize; 3],
    pub data: Vec<f64>,
    pub spacing: [f64; 3],
    pub affine: [[f64; 4]; 3],
}

/// The fixture folder of a format and its expected values by file name.
pub fn expected(format: &str) -> (PathBuf, std::collections::BTreeMap<String, Expected>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format);
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    (
        dir,
        serde_json::from_str(&text).expect("valid expected.json"),
    )
}

/// Grid, every voxel, spacing and affine. Values are compared after rounding the reference to f32
/// (ctrcl keeps voxels as f32; every fixture value is exact in f32 except float64 noise, which
/// rounds the same way), geometry to 1e-6 (f32 header fields).
pub fn assert_matches(name: &str, v: &NiftiVolume, e: &Expected) {
    assert_eq!(v.dims, e.dims, "{name}: dims");
    assert_eq!(v.data.len(), e.data.len(), "{name}: voxel count");
    for (i, (got, want)) in v.data.iter().zip(&e.data).enumerate() {
        assert_eq!(*got, *want as f32, "{name}: voxel {i}");
    }
    for i in 0..3 {
        assert!(
            (f64::from(v.spacing[i]) - e.spacing[i]).abs() < 1e-6,
            "{name}: spacing {:?} vs {:?}",
            v.spacing,
            e.spacing
        );
        for j in 0..4 {
            assert!(
                (v.affine[i][j] - e.affine[i][j]).abs() < 1e-6,
                "{name}: affine {:?} vs {:?}",
                v.affine,
                e.affine
            );
        }
    }
}
