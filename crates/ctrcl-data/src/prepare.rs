//! `ctrcl data prepare`: turns a fetched source into the nnU-Net raw layout
//! (`dataset.json`, `imagesTr/CASE_0000.nii.gz`, `labelsTr/CASE.nii.gz`) plus ctrcl's split.

use crate::error::{write_atomic, DataError, Result};
use crate::mrc::read_mrc;
use crate::nifti::{read_nifti, write_nifti, NiftiVolume};
use crate::nrrd::{parse_header, read_nrrd};
use crate::split::{SlabSplit, ICBM152_CASE, SPLIT_FILE};
use std::path::Path;

/// Prepares a fetched source by name (`icbm152`, `lits117`, `ctchest`).
/// Fetches `source` (into `cache`, default ctrcl's cache directory; nothing is downloaded when
/// the verified files are there) and prepares it into `out`; `log` hears the fetch's progress.
pub fn fetch_and_prepare(
    source: &str,
    out: &Path,
    cache: Option<&Path>,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let src = crate::fetch::source(source)?;
    let fetched = crate::fetch::fetch(src, cache, log)?;
    prepare_source(source, &fetched, out)
}

pub fn prepare_source(name: &str, fetched: &Path, out: &Path) -> Result<()> {
    match name {
        "icbm152" => prepare_icbm152(fetched, out),
        "lits117" => prepare_lits117(fetched, out),
        "ctchest" => prepare_ctchest(fetched, out),
        "nuclei" => prepare_nuclei(fetched, out),
        other => Err(DataError::External(format!(
            "no preparation for source '{other}'; available: icbm152, lits117, ctchest, nuclei"
        ))),
    }
}

/// Checks that a label volume shares the image grid and holds only `0..k`.
fn check_labels(image: &NiftiVolume, labels: &NiftiVolume, k: usize, path: &Path) -> Result<()> {
    if labels.dims != image.dims {
        return Err(DataError::invalid(
            path,
            format!(
                "label grid {:?} differs from the image grid {:?}",
                labels.dims, image.dims
            ),
        ));
    }
    if let Some((i, v)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, &v)| v.fract() != 0.0 || v < 0.0 || v >= k as f32)
    {
        return Err(DataError::invalid(
            path,
            format!("voxel {i} has label {v}, outside the classes 0..{}", k - 1),
        ));
    }
    Ok(())
}

/// LiTS case 117 (DATA.md §2): the MRC pair as one NIfTI case, 3 classes (background, liver,
/// tumour). The MRC sections (its third axis) are the axial slices; the files record no voxel
/// size, so 1 mm is written (distances in voxels) and said in `dataset.json`.
pub fn prepare_lits117(fetched: &Path, out: &Path) -> Result<()> {
    let image = read_mrc(&fetched.join("img_117.mrc"))?.volume;
    let labels = read_mrc(&fetched.join("lab_117.mrc"))?.volume;
    check_labels(&image, &labels, 3, &fetched.join("lab_117.mrc"))?;
    let split = SlabSplit {
        case: "lits117".into(),
        axis: "z".into(),
        train: vec![[0, 59], [108, 127]],
        val: vec![[65, 74]],
        test: vec![[80, 102]],
    };
    let dataset = serde_json::json!({
        "name": "LiTS117",
        "description": "LiTS case 117, 128^3 CT crop (HU) with liver and tumour labels, from liver-ct-segmentation-package 1.6.0. The MRC files record no voxel size: 1 mm is assumed, so HD95/ASD are in voxels.",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "licence": crate::fetch::LITS117.licence,
    });
    write_single_case(out, &split, &image, &labels.data, dataset)
}

/// The 3D Slicer chest CT (DATA.md §2): `CTChest4.nrrd` + `Segmentation.seg.nrrd`, classes named
/// from the segmentation's `SegmentN_Name`/`SegmentN_LabelValue` keys (one layer only).
pub fn prepare_ctchest(fetched: &Path, out: &Path) -> Result<()> {
    let seg_path = fetched.join("Segmentation.seg.nrrd");
    let image = read_nrrd(&fetched.join("CTChest4.nrrd"))?;
    let labels = read_nrrd(&seg_path)?;
    let bytes = std::fs::read(&seg_path).map_err(|e| DataError::io(&seg_path, e))?;
    let header = parse_header(&seg_path, &bytes)?;
    let mut names = serde_json::Map::new();
    names.insert("background".into(), 0.into());
    for i in 0.. {
        let Some(name) = header.keys.get(&format!("Segment{i}_Name")) else {
            break;
        };
        let value: u64 = header
            .keys
            .get(&format!("Segment{i}_LabelValue"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                DataError::invalid(&seg_path, format!("Segment{i} has no LabelValue"))
            })?;
        if header
            .keys
            .get(&format!("Segment{i}_Layer"))
            .map(String::as_str)
            != Some("0")
        {
            return Err(DataError::invalid(
                &seg_path,
                format!("Segment{i} is not on layer 0: overlapping segments are not supported"),
            ));
        }
        names.insert(name.clone(), value.into());
    }
    let k = names.len();
    check_labels(&image, &labels, k, &seg_path)?;
    // 34 slices of 10 mm; cervical spine exists only at z >= 26 and lumbar only at z <= 12, so
    // no axial slab holds every class: the test slab holds the thorax (ribs, thoracic spine,
    // both lungs, tissue).
    let split = SlabSplit {
        case: "ctchest".into(),
        axis: "z".into(),
        train: vec![[0, 11], [25, 33]],
        val: vec![[13, 14]],
        test: vec![[17, 22]],
    };
    let dataset = serde_json::json!({
        "name": "CTChest",
        "description": "3D Slicer sample chest CT (HU, 3.05x3.05x10 mm) with 7 labelled structures, from slicerio 1.4.0",
        "channel_names": {"0": "CT"},
        "labels": names,
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "licence": crate::fetch::CTCHEST.licence,
    });
    write_single_case(out, &split, &image, &labels.data, dataset)
}

/// Side of the square tiles `prepare_nuclei` cuts.
pub const NUCLEI_TILE: usize = 128;

/// The DSB2018 nuclei image (DATA.md §2): 512×512 uint16 intensities and instance ids, made
/// binary (nucleus = any instance id > 0) and cut into 4×4 tiles of 128×128, each a one-slice
/// case `nuclei_rRcC`. Split by tile (the tiles do not overlap): test r0c0, r1c2, r2c1, r3c3
/// (one per row and column), validation r0c3, r3c0, training the other 10.
pub fn prepare_nuclei(fetched: &Path, out: &Path) -> Result<()> {
    use crate::image2d::read_tiff_samples;
    let image_path = fetched.join("img2d.tif");
    let mask_path = fetched.join("mask2d.tif");
    let image = read_tiff_samples(&image_path)?;
    let mask = read_tiff_samples(&mask_path)?;
    if (mask.h, mask.w) != (image.h, image.w) || image.channels != 1 || mask.channels != 1 {
        return Err(DataError::invalid(
            &mask_path,
            format!(
                "mask {}×{}×{} does not match the grey image {}×{}×{}",
                mask.h, mask.w, mask.channels, image.h, image.w, image.channels
            ),
        ));
    }
    let t = NUCLEI_TILE;
    let (rows, cols) = (image.h / t, image.w / t);
    let mut ids = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            let id = format!("nuclei_r{r}c{c}");
            let tile = |values: &[f64], f: &dyn Fn(f64) -> f32| -> Vec<f32> {
                (0..t)
                    .flat_map(|y| {
                        let row = (r * t + y) * image.w + c * t;
                        values[row..row + t]
                            .iter()
                            .map(|&v| f(v))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            let img = tile(&image.values, &|v| v as f32);
            let lab = tile(&mask.values, &|v| f32::from(u8::from(v > 0.0)));
            let vol = NiftiVolume::from_parts(
                [t, t, 1],
                [1.0; 3],
                crate::nifti::IDENTITY,
                img,
                crate::nifti::NiftiType::F32,
            );
            write_case(out, &id, &vol, &lab)?;
            ids.push(id);
        }
    }
    let pick = |names: &[&str]| -> Vec<String> { names.iter().map(|s| s.to_string()).collect() };
    let test = pick(&["nuclei_r0c0", "nuclei_r1c2", "nuclei_r2c1", "nuclei_r3c3"]);
    let val = pick(&["nuclei_r0c3", "nuclei_r3c0"]);
    let train = ids
        .into_iter()
        .filter(|id| !test.contains(id) && !val.contains(id))
        .collect();
    let split = crate::split::CaseSplit { train, val, test };
    split.validate(&out.join(SPLIT_FILE))?;
    let dataset = serde_json::json!({
        "name": "Nuclei",
        "description": "DSB2018 fluorescence nuclei (stardist 0.9.2 sample), 512x512 uint16, instance ids made binary, cut into 16 tiles of 128x128",
        "channel_names": {"0": "fluorescence"},
        "labels": {"background": 0, "nucleus": 1},
        "numTraining": 16,
        "file_ending": ".nii.gz",
        "licence": crate::fetch::NUCLEI.licence,
    });
    write_json(&out.join("dataset.json"), &dataset)?;
    write_json(
        &out.join(SPLIT_FILE),
        &serde_json::to_value(&split).expect("serialisable"),
    )
}

/// Writes one case, its `dataset.json` and its validated split.
fn write_single_case(
    out: &Path,
    split: &SlabSplit,
    image: &NiftiVolume,
    labels: &[f32],
    dataset: serde_json::Value,
) -> Result<()> {
    split.validate(image.dims[2], &out.join(SPLIT_FILE))?;
    write_case(out, &split.case, image, labels)?;
    write_json(&out.join("dataset.json"), &dataset)?;
    write_json(
        &out.join(SPLIT_FILE),
        &serde_json::to_value(split).expect("serialisable"),
    )
}

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

/// Writes a metadata file (`dataset.json`, `ctrcl_split.json`). One that exists with other
/// content — a split or label names the user edited — is kept and the preparation stops with an
/// error naming it: preparing again into the same folder must not undo someone's edit. (The
/// images and labels it rewrote are regenerated from the fetched source, byte for byte.)
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let same = serde_json::from_str::<serde_json::Value>(&existing).is_ok_and(|v| &v == value);
        if same {
            return Ok(());
        }
        return Err(DataError::invalid(
            path,
            "exists with other content (edited?) and was kept; prepare into a new --out folder, or move this file away to have it written anew",
        ));
    }
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the hostile-input probe (issue #21): preparing again into a folder replaced the
    /// user's edited `ctrcl_split.json`.
    #[test]
    fn an_edited_metadata_file_is_kept_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPLIT_FILE);
        let split = serde_json::to_value(SlabSplit::icbm152_default()).unwrap();
        write_json(&path, &split).unwrap();
        // Preparing again with the same content is allowed.
        write_json(&path, &split).unwrap();
        let edited = "{\"case\": \"icbm152\", \"axis\": \"z\", \"train\": [[0, 80]], \"val\": [], \"test\": [[90, 105]]}";
        std::fs::write(&path, edited).unwrap();
        let err = write_json(&path, &split).unwrap_err().to_string();
        assert!(
            err.contains(SPLIT_FILE) && err.contains("was kept"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    }

    #[test]
    fn labels_follow_the_argmax_rule() {
        // outside; CSF wins (255-10-20=225); GM wins; WM wins; tie CSF=GM → CSF (first max).
        let t1 = [0.0, 50.0, 50.0, 50.0, 50.0];
        let gm = [200.0, 10.0, 150.0, 40.0, 85.0];
        let wm = [0.0, 20.0, 60.0, 200.0, 85.0];
        assert_eq!(icbm152_labels(&t1, &gm, &wm), vec![0.0, 1.0, 2.0, 3.0, 1.0]);
    }
}
