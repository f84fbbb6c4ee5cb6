//! nnU-Net raw folders (`dataset.json`, `imagesTr/CASE_0000.ext`, `labelsTr/CASE.ext`, further
//! channels `CASE_0001…`, `imagesTs`/`labelsTs`; Decathlon folders without the `_0000`), split
//! by `ctrcl_split.json` (the folder's, or another file named by `data.split`) or by nnU-Net's
//! folds.

use crate::classes::{
    class_names, labels_as_classes, mapped_class_names, remap_labels, DatasetJson,
};
use crate::dataset::{parse_split, Case, Dataset, DatasetSplit};
use crate::error::{DataError, Result};
use crate::geometry::ImageResize;
use crate::nifti::{read_nifti, NiftiVolume, IDENTITY};
use crate::normalize::{normalize_by_channel_names, Intensity, Normalize};
use crate::split::{Split, SPLIT_FILE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(crate) fn open_nnunet(
    root: &Path,
    intensity: Intensity,
    label_map: &BTreeMap<String, u8>,
    fold: usize,
    split_file: Option<&Path>,
) -> Result<Dataset> {
    let json_path = root.join("dataset.json");
    let text = std::fs::read_to_string(&json_path).map_err(|e| DataError::io(&json_path, e))?;
    let mut meta: DatasetJson = serde_json::from_str(&text)
        .map_err(|e| DataError::invalid(&json_path, format!("not a valid dataset.json: {e}")))?;
    if meta.channel_names.is_empty() {
        meta.channel_names = std::mem::take(&mut meta.modality);
    }
    let (class_names, classes_note) =
        mapped_class_names(class_names(&meta, &json_path)?, label_map, &json_path)?;
    let ending = meta.file_ending.clone().unwrap_or_else(|| ".nii.gz".into());
    let split_path = split_file.map_or_else(|| root.join(SPLIT_FILE), Path::to_path_buf);
    let mut notes: Vec<String> = classes_note.into_iter().collect();
    let mut folds = None;
    if split_file.is_some() {
        notes.push(format!("split read from {}", split_path.display()));
    }
    // A split file named by the config must exist: falling back to the folder's own split or
    // nnU-Net's folds would train and score on another split than the one asked for.
    let split = if split_path.exists() || split_file.is_some() {
        let text =
            std::fs::read_to_string(&split_path).map_err(|e| DataError::io(&split_path, e))?;
        parse_split(&text, &split_path)?
    } else {
        let (split, all, note) = crate::nnunet::fold_split(root, &ending, fold)?;
        notes.push(note);
        folds = Some(all);
        DatasetSplit::Cases(split)
    };
    let channel_names: Vec<String> = if meta.channel_names.is_empty() {
        vec![String::new()]
    } else {
        (0..meta.channel_names.len())
            .map(|c| {
                meta.channel_names
                    .get(&c.to_string())
                    .cloned()
                    .ok_or_else(|| {
                        DataError::invalid(
                            &json_path,
                            format!(
                                "channel_names must number channels 0..{}",
                                meta.channel_names.len()
                            ),
                        )
                    })
            })
            .collect::<Result<_>>()?
    };
    let by_name = intensity.normalize == Normalize::ChannelNames;
    let mut channel_norms = Vec::new();
    // Per-image normalisation happens below (by channel name) when asked for, not in Case::new.
    let case_intensity = if by_name {
        Intensity {
            clip: intensity.clip,
            normalize: Normalize::None,
        }
    } else {
        intensity
    };
    let mut loaded = Vec::new();
    for id in split.case_ids() {
        let (image_path, label_path) = nnunet_case_paths(root, &id, &ending);
        let mut image = read_volume(&image_path)?;
        let mut label_vol = read_volume(&label_path)?;
        remap_labels(&mut label_vol.data, label_map, &label_path)?;
        check_same_grid("label", &label_vol, &label_path, &image, &image_path)?;
        // Further channels: CASE_0001, CASE_0002, … on the same grid, appended channel-major.
        for c in 1..channel_names.len() {
            let file = image_path.with_file_name(format!("{id}_{c:04}{ending}"));
            let extra = read_volume(&file)?;
            check_same_grid("channel", &extra, &file, &image, &image_path)?;
            image.data.extend(extra.data);
        }
        let label = labels_as_classes(&label_vol.data, class_names.len(), &label_path)?;
        loaded.push((id, image, label));
    }
    if by_name {
        // CT statistics from training data only: the training cases, or a slab split's
        // training slices.
        let train: Vec<(String, Option<Vec<usize>>)> = match &split {
            DatasetSplit::Slabs(s) => vec![(s.case.clone(), Some(s.slices(Split::Train)))],
            DatasetSplit::Cases(c) => c.train.iter().map(|id| (id.clone(), None)).collect(),
        };
        channel_norms = normalize_by_channel_names(&mut loaded, &channel_names, &train);
    }
    let cases: Vec<Case> = loaded
        .into_iter()
        .map(|(id, image, label)| Case::new(id, image, label, case_intensity))
        .collect();
    if let DatasetSplit::Slabs(s) = &split {
        s.validate(cases[0].image.dims[2], &split_path)?;
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        class_names,
        split,
        cases,
        intensity,
        layout: "nnunet",
        notes,
        image_resize: ImageResize::Bilinear,
        folds,
        channel_norms,
    })
}

/// `imagesTr/ID_0000.ext` + `labelsTr/ID.ext`, or the `imagesTs`/`labelsTs` pair if the case is
/// not in the training folders.
fn nnunet_case_paths(root: &Path, id: &str, ending: &str) -> (PathBuf, PathBuf) {
    let pair = |images: &str, labels: &str| {
        (
            root.join(images).join(format!("{id}_0000{ending}")),
            root.join(labels).join(format!("{id}{ending}")),
        )
    };
    let train = pair("imagesTr", "labelsTr");
    if train.0.exists() {
        return train;
    }
    let test = pair("imagesTs", "labelsTs");
    if test.0.exists() {
        return test;
    }
    // A Medical Segmentation Decathlon folder as downloaded: single-channel images without the
    // `_0000` suffix.
    for (images, labels) in [("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")] {
        let image = root.join(images).join(format!("{id}{ending}"));
        if image.exists() {
            return (image, root.join(labels).join(format!("{id}{ending}")));
        }
    }
    train
}

/// A label or further channel (`vol`, read from `path`) must lie on its image's grid: the same
/// dims and, within float noise, the same voxel → world affine (nnU-Net checks the same). A label
/// shifted 10 mm off its image would otherwise train on misaligned anatomy without a word.
fn check_same_grid(
    what: &str,
    vol: &NiftiVolume,
    path: &Path,
    image: &NiftiVolume,
    image_path: &Path,
) -> Result<()> {
    let why = if vol.dims != image.dims {
        format!(
            "{what} grid {:?} differs from image grid {:?} of {}",
            vol.dims,
            image.dims,
            image_path.display()
        )
    } else {
        match crate::nifti::affine_mismatch(&vol.affine, &image.affine, "the image's") {
            Some(why) => format!(
                "{what} {why} ({}): not on the image's grid",
                image_path.display()
            ),
            None => return Ok(()),
        }
    };
    Err(DataError::invalid(path, why))
}

/// Reads a NIfTI volume, or a 2D PNG/JPEG image as a one-slice volume (`[W, H, 1]`, intensities
/// in [0, 1] for images; label values as stored for PNG label maps via [`read_label_file`]).
pub fn read_volume(path: &Path) -> Result<NiftiVolume> {
    if crate::image2d::image_stem(path).is_some() && crate::nifti::nifti_stem(path).is_none() {
        let file = crate::labels::read_label_file(path);
        // A grey PNG is read by value (a label map or an 8/16-bit image alike).
        let f = file?;
        let [h, w] = [f.shape[0], f.shape[1]];
        let data = f.labels.iter().map(|&v| f32::from(v)).collect();
        return Ok(NiftiVolume::from_parts(
            [w, h, 1],
            [1.0; 3],
            IDENTITY,
            data,
            crate::nifti::NiftiType::U8,
        ));
    }
    read_nifti(path)
}
