//! `ctrcl data prepare`: turns a fetched source into the nnU-Net raw layout
//! (`dataset.json`, `imagesTr/CASE_0000.nii.gz`, `labelsTr/CASE.nii.gz`) plus ctrcl's split.

use crate::error::{write_atomic, DataError, Result};
use crate::nifti::{read_nifti, write_nifti, NiftiVolume};
use crate::split::{SlabSplit, SPLIT_FILE};
use std::path::Path;

/// Case id of the single ICBM152 volume.
pub const ICBM152_CASE: &str = "icbm152";

/// Builds the 4-class ICBM152 labels (DATA.md §2): inside the brain (T1 > 0) the arg-max of
/// (CSF = clip(255 − GM − WM, 0), GM, WM), first maximum wins, giving 1 = CSF, 2 = GM, 3 = WM;
/// outside the brain 0.
pub fn icbm152_labels(t1: &[f32], gm: &[f32], wm: &[f32]) -> Vec<f32> {
    t1.iter()
        .zip(gm)
        .zip(wm)
        .map(|((&t, &g), &w)| {
            if t <= 0.0 {
                return 0.0;
            }
            let csf = (255.0 - g - w).max(0.0);
            if csf >= g && csf >= w {
                1.0
            } else if g >= w {
                2.0
            } else {
                3.0
            }
        })
        .collect()
}

/// Prepares ICBM152 from the fetched directory (holding `t1.nii.gz`, `gm.nii.gz`, `wm.nii.gz`).
pub fn prepare_icbm152(fetched: &Path, out: &Path) -> Result<()> {
    let read = |name: &str| read_nifti(&fetched.join(name));
    let (t1, gm, wm) = (read("t1.nii.gz")?, read("gm.nii.gz")?, read("wm.nii.gz")?);
    for (v, name) in [(&gm, "gm.nii.gz"), (&wm, "wm.nii.gz")] {
        if v.dims != t1.dims {
            return Err(DataError::invalid(
                fetched.join(name),
                format!("grid {:?} differs from t1.nii.gz {:?}", v.dims, t1.dims),
            ));
        }
    }
    let labels = icbm152_labels(&t1.data, &gm.data, &wm.data);
    write_case(out, ICBM152_CASE, &t1, &labels)?;
    let dataset = serde_json::json!({
        "name": "ICBM152",
        "description": "ICBM 2009a nonlinear symmetric template (nilearn 0.14.1): skull-stripped T1, labels by arg-max of CSF/GM/WM probability maps inside the brain",
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "CSF": 1, "GM": 2, "WM": 3},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "licence": crate::fetch::ICBM152.licence,
    });
    write_json(&out.join("dataset.json"), &dataset)?;
    let split = SlabSplit::icbm152_default();
    split.validate(t1.dims[2], &out.join(SPLIT_FILE))?;
    write_json(
        &out.join(SPLIT_FILE),
        &serde_json::to_value(&split).expect("serialisable"),
    )
}

fn write_case(out: &Path, case: &str, image: &NiftiVolume, labels: &[f32]) -> Result<()> {
    let image_path = out.join("imagesTr").join(format!("{case}_0000.nii.gz"));
    let label_path = out.join("labelsTr").join(format!("{case}.nii.gz"));
    write_nifti(
        &image_path,
        image.dims,
        &image.data,
        false,
        Some(image),
        image.spacing,
        image.affine,
    )?;
    write_nifti(
        &label_path,
        image.dims,
        labels,
        true,
        Some(image),
        image.spacing,
        image.affine,
    )
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_argmax_rule() {
        // outside; CSF wins (255-10-20=225); GM wins; WM wins; tie CSF=GM → CSF (first max).
        let t1 = [0.0, 50.0, 50.0, 50.0, 50.0];
        let gm = [200.0, 10.0, 150.0, 40.0, 85.0];
        let wm = [0.0, 20.0, 60.0, 200.0, 85.0];
        assert_eq!(icbm152_labels(&t1, &gm, &wm), vec![0.0, 1.0, 2.0, 3.0, 1.0]);
    }
}
