//! A prepared dataset (nnU-Net raw layout + `ctrcl_split.json`) opened for training and testing:
//! validated volumes, normalised intensities, and 2D axial slices per split.

use crate::error::{DataError, Result};
use crate::nifti::{read_nifti, NiftiVolume};
use crate::normalize::normalize_by_channel_names;
pub use crate::normalize::{normalize_in_place, ChannelNorm};
use crate::resize::{crop_from_square, pad_to_square, resize_bilinear, resize_nearest};
use crate::split::{CaseSplit, SlabSplit, Split, SPLIT_FILE};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Intensity normalisation applied per volume before slicing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// (x − mean) / std over the whole volume (nnU-Net's non-CT default).
    Zscore,
    /// (x − min) / (max − min) over the whole volume.
    Minmax,
    /// Values as stored (after slope/intercept).
    None,
    /// nnU-Net's rule by `dataset.json` `channel_names`: `CT` clips to the 0.5/99.5 percentiles
    /// of the training cases' foreground and z-scores with its mean and std; `noNorm` keeps the
    /// values; `rescale_to_0_1` min-max scales each image; `rgb_to_0_1` divides by 255; any other
    /// name z-scores each image. Datasets without channel names z-score.
    ChannelNames,
}

/// Intensity handling of a volume: an optional clip window (CT windowing, e.g. `[-125, 275]` HU
/// as TransUNet's Synapse), then normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intensity {
    pub clip: Option<[f32; 2]>,
    pub normalize: Normalize,
}

impl From<Normalize> for Intensity {
    fn from(normalize: Normalize) -> Self {
        Intensity {
            clip: None,
            normalize,
        }
    }
}

impl Intensity {
    /// Clips (if a window is set), then normalises `data` in place.
    pub fn apply(&self, data: &mut [f32]) {
        if let Some([lo, hi]) = self.clip {
            data.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
        }
        normalize_in_place(data, self.normalize);
    }
}

/// How a dataset is read: intensities, the grey level from which a 2D mask pixel is foreground
/// (Kvasir-SEG's JPEG masks are not binary), and a label remap for nnU-Net raw datasets.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenOptions {
    pub intensity: Intensity,
    pub mask_threshold: u8,
    pub image_resize: ImageResize,
    /// Stored label value → class, applied to nnU-Net raw label files before they are checked
    /// against dataset.json's classes; the key `"*"` maps every value not listed. Empty: labels
    /// are classes as stored.
    pub label_map: BTreeMap<String, u8>,
    /// The nnU-Net fold to train on when an nnU-Net raw folder has no `ctrcl_split.json`
    /// ([`crate::nnunet`]).
    pub fold: usize,
}

/// The stored label value to write for each class `0..k` — the inverse of a label map (see
/// [`OpenOptions::label_map`]), so predictions come back in the dataset's own values. A class
/// that several stored values map to is written as the smallest of them (and said in the
/// returned notes); a class reached only through `"*"` keeps its class number; without a map,
/// class `c` is value `c`.
pub fn stored_label_values(map: &BTreeMap<String, u8>, k: usize) -> (Vec<i64>, Vec<String>) {
    let mut values: Vec<Vec<i64>> = vec![Vec::new(); k];
    for (key, &class) in map {
        if let (Ok(value), Some(slot)) = (key.trim().parse::<i64>(), values.get_mut(class as usize))
        {
            slot.push(value);
        }
    }
    let mut notes = Vec::new();
    let out = values
        .into_iter()
        .enumerate()
        .map(|(c, mut v)| {
            v.sort_unstable();
            if v.len() > 1 {
                notes.push(format!(
                    "class {c} stands for label values {v:?} (data.label_map); written as {}",
                    v[0]
                ));
            }
            v.first().copied().unwrap_or(c as i64)
        })
        .collect();
    (out, notes)
}

/// Applies a label map (see [`OpenOptions::label_map`]) in place; a value without an entry (and
/// no `"*"`) or a key that is not an integer is an error naming `path`.
pub fn remap_labels(data: &mut [f32], map: &BTreeMap<String, u8>, path: &Path) -> Result<()> {
    if map.is_empty() {
        return Ok(());
    }
    let mut by_value = BTreeMap::new();
    let mut rest = None;
    for (key, &class) in map {
        if key == "*" {
            rest = Some(class);
            continue;
        }
        let value: i64 = key.trim().parse().map_err(|_| {
            DataError::invalid(
                path,
                format!("data.label_map key \"{key}\" is not an integer label value or \"*\""),
            )
        })?;
        by_value.insert(value, class);
    }
    for (i, v) in data.iter_mut().enumerate() {
        let class = if v.fract() == 0.0 {
            by_value.get(&(*v as i64)).copied().or(rest)
        } else {
            None
        };
        *v = match class {
            Some(c) => f32::from(c),
            None => {
                return Err(DataError::invalid(
                    path,
                    format!(
                        "voxel {i} has label {v}, which data.label_map does not map (add it, or \"*\" for the rest)"
                    ),
                ))
            }
        };
    }
    Ok(())
}

impl<T: Into<Intensity>> From<T> for OpenOptions {
    fn from(intensity: T) -> Self {
        OpenOptions {
            intensity: intensity.into(),
            mask_threshold: 128,
            image_resize: ImageResize::Bilinear,
            label_map: BTreeMap::new(),
            fold: 0,
        }
    }
}

/// nnU-Net's `dataset.json`, v2 (`labels`: name → value, `channel_names`) or v1 / Medical
/// Segmentation Decathlon (`labels`: value → name, `modality`); see [`class_names`].
#[derive(Deserialize)]
struct DatasetJson {
    labels: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    file_ending: Option<String>,
    /// Channel index ("0", "1", …) → modality name.
    #[serde(default)]
    channel_names: BTreeMap<String, String>,
    /// v1/MSD's name for `channel_names`.
    #[serde(default)]
    modality: BTreeMap<String, String>,
}

/// One labelled case: image and label volumes on the same grid.
pub struct Case {
    pub id: String,
    /// Normalised intensities (x fastest, then y, z), channel after channel: `image.data` holds
    /// [`Case::channels`] volumes of the `image.dims` grid.
    pub image: NiftiVolume,
    /// Label per voxel (0..num_classes), same order as `image.data`.
    pub label: Vec<u8>,
    /// Normalised value of the volume's minimum: the fill for padding.
    pub background: f32,
}

impl Case {
    /// Builds a case from an image volume (normalised here, each channel on its own) and its
    /// labels.
    pub fn new(id: String, mut image: NiftiVolume, label: Vec<u8>, intensity: Intensity) -> Self {
        let voxels = label.len().max(1);
        image
            .data
            .chunks_mut(voxels)
            .for_each(|channel| intensity.apply(channel));
        let background = image.data.iter().cloned().fold(f32::INFINITY, f32::min);
        Case {
            id,
            image,
            label,
            background,
        }
    }

    /// Slice geometry for a network input of `size × size`.
    pub fn geometry(&self, size: usize) -> Geometry {
        let [w, h, _] = self.image.dims;
        Geometry {
            h,
            w,
            size,
            image_resize: ImageResize::Bilinear,
        }
    }

    /// Image channels (1 grey, 3 RGB).
    pub fn channels(&self) -> usize {
        self.image.data.len() / self.label.len().max(1)
    }

    /// The intensities of slice `z`, all channels.
    ///
    /// # Shapes
    /// → `[C, h, w]`.
    pub fn slice_image(&self, z: usize) -> Vec<f32> {
        let [w, h, _] = self.image.dims;
        let plane = w * h;
        let volume = self.label.len();
        (0..self.channels())
            .flat_map(|c| {
                let at = c * volume + z * plane;
                self.image.data[at..at + plane].iter().copied()
            })
            .collect()
    }
}

/// A 2D axial slice at native resolution: `h = Y` rows of `w = X` pixels, `image` channel-major
/// (`[C, h, w]`).
#[derive(Debug, Clone)]
pub struct Slice2d {
    /// Index of the case in [`Dataset::cases`].
    pub case: usize,
    pub z: usize,
    pub h: usize,
    pub w: usize,
    pub image: Vec<f32>,
    pub label: Vec<u8>,
}

/// A slice resampled to the square training size.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Row-major `C × size × size` intensities.
    pub image: Vec<f32>,
    /// Row-major `size × size` labels.
    pub label: Vec<u8>,
}

/// How a prediction at the training size returns to the native grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Upsample {
    /// Arg-max at the training size, then the label map resized with nearest neighbour: what
    /// TransUNet's and SSL4MIS's `test_single_volume` do, so published tables are comparable.
    #[default]
    Nearest,
    /// Class probabilities resized bilinearly to the native grid, arg-max there: smoother
    /// boundaries, much better on thin structures (CSF) when the training size is coarse.
    Bilinear,
}

/// How images are resized to the network's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageResize {
    /// Bilinear, PyTorch's `interpolate(align_corners=False)` convention.
    #[default]
    Bilinear,
    /// Cubic B-spline, `scipy.ndimage.zoom(order=3)`: TransUNet's and Swin-Unet's image resize.
    Spline3,
}

/// How native slices map to the network's square input and back: centred zero-padding to a
/// square, then resizing (`image_resize` for images, nearest for labels).
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub h: usize,
    pub w: usize,
    pub size: usize,
    pub image_resize: ImageResize,
}

impl Geometry {
    fn side(&self) -> usize {
        self.h.max(self.w)
    }

    /// Native image → `size × size`, padding with `fill`, channel by channel.
    ///
    /// # Shapes
    /// `image`: `[C, h, w]` → `[C, size, size]` (C = 1 for grey images).
    pub fn image_to_input(&self, image: &[f32], fill: f32) -> Vec<f32> {
        image
            .chunks(self.h * self.w)
            .flat_map(|plane| {
                let sq = pad_to_square(plane, self.h, self.w, self.side(), fill);
                let side = self.side();
                match self.image_resize {
                    ImageResize::Bilinear => resize_bilinear(&sq, side, side, self.size, self.size),
                    ImageResize::Spline3 => {
                        crate::resize::resize_spline3(&sq, side, side, self.size, self.size)
                    }
                }
            })
            .collect()
    }

    /// Native labels → `size × size` (nearest).
    pub fn label_to_input(&self, label: &[u8]) -> Vec<u8> {
        let sq = pad_to_square(label, self.h, self.w, self.side(), 0);
        resize_nearest(&sq, self.side(), self.side(), self.size, self.size)
    }

    /// A `size × size` predicted label map → native `h × w` (nearest, then crop).
    pub fn prediction_to_native(&self, pred: &[u8]) -> Vec<u8> {
        let sq = resize_nearest(pred, self.size, self.size, self.side(), self.side());
        crop_from_square(&sq, self.side(), self.h, self.w)
    }

    /// `k` class maps at `size × size` → `k` maps at native `h × w` (bilinear, then crop).
    ///
    /// # Shapes
    /// `probs`: `[k, size, size]` → `[k, h, w]`, row-major.
    pub fn probabilities_to_native(&self, probs: &[f32], k: usize) -> Vec<f32> {
        let plane = self.size * self.size;
        assert_eq!(
            probs.len(),
            k * plane,
            "probability maps and shape disagree"
        );
        let mut out = Vec::with_capacity(k * self.h * self.w);
        for class in probs.chunks(plane) {
            let sq = resize_bilinear(class, self.size, self.size, self.side(), self.side());
            out.extend(crop_from_square(&sq, self.side(), self.h, self.w));
        }
        out
    }
}

/// Label per pixel from `k` class maps (the first class wins ties, as `torch.argmax`).
///
/// # Shapes
/// `maps`: `[k, n]` row-major → `n` labels.
pub fn argmax_classes(maps: &[f32], k: usize) -> Vec<u8> {
    let n = maps.len() / k.max(1);
    let mut best = maps[..n].to_vec();
    let mut labels = vec![0u8; n];
    for c in 1..k {
        for ((b, l), &v) in best
            .iter_mut()
            .zip(&mut labels)
            .zip(&maps[c * n..(c + 1) * n])
        {
            if v > *b {
                *b = v;
                *l = c as u8;
            }
        }
    }
    labels
}

/// How a dataset is split: axial slabs of one volume, or whole cases.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSplit {
    Slabs(SlabSplit),
    Cases(CaseSplit),
}

impl DatasetSplit {
    /// Every case id the split names, in first-use order.
    fn case_ids(&self) -> Vec<String> {
        match self {
            DatasetSplit::Slabs(s) => vec![s.case.clone()],
            DatasetSplit::Cases(c) => {
                let mut ids: Vec<String> = Vec::new();
                for id in c.train.iter().chain(&c.val).chain(&c.test) {
                    if !ids.contains(id) {
                        ids.push(id.clone());
                    }
                }
                ids
            }
        }
    }
}

/// An opened dataset: its cases (images normalised) and how they split.
pub struct Dataset {
    pub root: PathBuf,
    /// Class names by label value, background included (index = label).
    pub class_names: Vec<String>,
    pub split: DatasetSplit,
    pub cases: Vec<Case>,
    pub intensity: Intensity,
    /// What kind of folder this was (`nnunet`, `synapse`, `acdc`, `kvasir`).
    pub layout: &'static str,
    /// What was detected while reading (list files used, slice axes), for the log.
    pub notes: Vec<String>,
    /// How slices are resized to the network input.
    pub image_resize: ImageResize,
    /// All folds of an nnU-Net raw folder split by fold (`splits_final.json` or nnU-Net's
    /// generated ones), recorded beside a run; `None` for an explicit split.
    pub folds: Option<Vec<crate::nnunet::Fold>>,
    /// Each channel's rule under `normalize = "channel-names"` (empty otherwise), with the CT
    /// statistics of the training data.
    pub channel_norms: Vec<ChannelNorm>,
}

impl Dataset {
    /// Opens a dataset folder: a `ctrcl data prepare` output or any nnU-Net raw dataset with a
    /// `ctrcl_split.json`, a Synapse folder (`train_npz/`, `test_vol_h5/`), an SSL4MIS ACDC
    /// folder (`data/slices/`, `train_slices.list`, …) or a Kvasir-SEG folder (`images/`,
    /// `masks/`); validates geometry and labels.
    pub fn open(root: &Path, options: impl Into<OpenOptions>) -> Result<Self> {
        let options = options.into();
        let intensity = options.intensity;
        let image_resize = options.image_resize;
        let mut dataset = if root.join("images").is_dir() && root.join("masks").is_dir() {
            crate::layouts::open_kvasir(root, options.clone())?
        } else if root.join("train_npz").is_dir() || root.join("test_vol_h5").is_dir() {
            crate::layouts::open_synapse(root, intensity)?
        } else if root.join("data").join("slices").is_dir() {
            crate::layouts::open_acdc(root, intensity)?
        } else {
            Self::open_nnunet(root, intensity, &options.label_map, options.fold)?
        };
        dataset.image_resize = image_resize;
        Ok(dataset)
    }

    /// Slice geometry of case `case` for a network input of `size × size`, with the dataset's
    /// image resize.
    pub fn geometry(&self, case: usize, size: usize) -> Geometry {
        Geometry {
            image_resize: self.image_resize,
            ..self.cases[case].geometry(size)
        }
    }

    fn open_nnunet(
        root: &Path,
        intensity: Intensity,
        label_map: &BTreeMap<String, u8>,
        fold: usize,
    ) -> Result<Self> {
        let json_path = root.join("dataset.json");
        let text = std::fs::read_to_string(&json_path).map_err(|e| DataError::io(&json_path, e))?;
        let mut meta: DatasetJson = serde_json::from_str(&text).map_err(|e| {
            DataError::invalid(&json_path, format!("not a valid dataset.json: {e}"))
        })?;
        if meta.channel_names.is_empty() {
            meta.channel_names = std::mem::take(&mut meta.modality);
        }
        let class_names = class_names(&meta, &json_path)?;
        let ending = meta.file_ending.clone().unwrap_or_else(|| ".nii.gz".into());
        let split_path = root.join(SPLIT_FILE);
        let mut notes = Vec::new();
        let mut folds = None;
        let split = if split_path.exists() {
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

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Image channels of the dataset's cases (all cases have the same number).
    pub fn channels(&self) -> usize {
        self.cases.first().map_or(1, Case::channels)
    }

    /// The cases of a split with the slice indices of each that belong to it.
    pub fn parts(&self, which: Split) -> Vec<(usize, Vec<usize>)> {
        match &self.split {
            DatasetSplit::Slabs(s) => vec![(0, s.slices(which))],
            DatasetSplit::Cases(c) => c
                .ids(which)
                .iter()
                .filter_map(|id| self.cases.iter().position(|k| &k.id == id))
                .map(|i| (i, (0..self.cases[i].image.dims[2]).collect()))
                .collect(),
        }
    }

    /// The ids of the cases in a split, in split order.
    pub fn split_ids(&self, which: Split) -> Vec<&str> {
        self.parts(which)
            .iter()
            .map(|(i, _)| self.cases[*i].id.as_str())
            .collect()
    }

    /// Native slices of a split, case by case in z order.
    pub fn slices(&self, which: Split) -> Vec<Slice2d> {
        let mut out = Vec::new();
        for (ci, zs) in self.parts(which) {
            let case = &self.cases[ci];
            let [w, h, _] = case.image.dims;
            let n = w * h;
            out.extend(zs.into_iter().map(|z| Slice2d {
                case: ci,
                z,
                h,
                w,
                image: case.slice_image(z),
                label: case.label[z * n..(z + 1) * n].to_vec(),
            }));
        }
        out
    }

    /// Slices of a split resampled to the training size.
    pub fn samples(&self, which: Split, size: usize) -> Vec<Sample> {
        self.slices(which)
            .iter()
            .map(|s| {
                let case = &self.cases[s.case];
                let geo = self.geometry(s.case, size);
                Sample {
                    image: geo.image_to_input(&s.image, case.background),
                    label: geo.label_to_input(&s.label),
                }
            })
            .collect()
    }
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

/// The identity voxel → world affine.
pub const IDENTITY: [[f64; 4]; 3] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
];

/// Parses `ctrcl_split.json`: slabs of one case, or lists of cases.
pub fn parse_split(text: &str, path: &Path) -> Result<DatasetSplit> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| DataError::invalid(path, format!("not valid JSON: {e}")))?;
    let split = if value.get("case").is_some() {
        DatasetSplit::Slabs(
            serde_json::from_value(value)
                .map_err(|e| DataError::invalid(path, format!("not a valid slab split: {e}")))?,
        )
    } else {
        let cases: CaseSplit = serde_json::from_value(value)
            .map_err(|e| DataError::invalid(path, format!("not a valid case split: {e}")))?;
        cases.validate(path)?;
        DatasetSplit::Cases(cases)
    };
    Ok(split)
}

pub(crate) fn class_names_from(
    labels: &BTreeMap<String, serde_json::Value>,
    path: &Path,
) -> Result<Vec<String>> {
    class_names(
        &DatasetJson {
            labels: labels.clone(),
            file_ending: None,
            channel_names: BTreeMap::new(),
            modality: BTreeMap::new(),
        },
        path,
    )
}

fn class_names(meta: &DatasetJson, path: &Path) -> Result<Vec<String>> {
    // v1 / MSD: {"0": "background", "1": "left atrium"}, value → name.
    let v1 = !meta.labels.is_empty()
        && meta
            .labels
            .iter()
            .all(|(k, v)| k.parse::<u64>().is_ok() && v.is_string());
    let labels: BTreeMap<String, serde_json::Value> = if v1 {
        meta.labels
            .iter()
            .map(|(k, v)| {
                let value: u64 = k.parse().expect("checked above");
                (v.as_str().unwrap_or_default().to_string(), value.into())
            })
            .collect()
    } else {
        meta.labels.clone()
    };
    if v1 && labels.len() != meta.labels.len() {
        return Err(DataError::invalid(
            path,
            "two label values share one name in \"labels\"",
        ));
    }
    let mut by_value = BTreeMap::new();
    for (name, v) in &labels {
        let value = v.as_u64().filter(|v| *v < 256).ok_or_else(|| {
            DataError::invalid(
                path,
                format!("label '{name}' must map to an integer 0..255, got {v}"),
            )
        })?;
        if let Some(other) = by_value.insert(value as usize, name.clone()) {
            return Err(DataError::invalid(
                path,
                format!("labels '{other}' and '{name}' share value {value}"),
            ));
        }
    }
    let k = by_value.len();
    if k < 2 || by_value.keys().copied().ne(0..k) {
        return Err(DataError::invalid(
            path,
            "labels must be the consecutive values 0..K-1, K >= 2",
        ));
    }
    Ok(by_value.into_values().collect())
}

/// Label values as classes `0..k`; anything else is an error naming the file and voxel.
pub fn labels_as_classes(data: &[f32], k: usize, path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    for (i, &v) in data.iter().enumerate() {
        if v.fract() != 0.0 || v < 0.0 || v >= k as f32 {
            return Err(DataError::invalid(
                path,
                format!(
                    "voxel {i} has label {v}, outside the declared classes 0..{}",
                    k - 1
                ),
            ));
        }
        out.push(v as u8);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_label_values_invert_the_label_map() {
        let map: BTreeMap<String, u8> = [("21", 1), ("22", 2), ("23", 2), ("*", 0)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let (values, notes) = stored_label_values(&map, 4);
        // Class 0 only through "*", class 2 from 22 and 23, class 3 from nothing.
        assert_eq!(values, [0, 21, 22, 3]);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("[22, 23]"), "{notes:?}");
        // Mapped back through the map, every written value gives its class again.
        for (class, &v) in values.iter().enumerate().take(3) {
            let mut data = [v as f32];
            remap_labels(&mut data, &map, Path::new("x")).unwrap();
            assert_eq!(data[0], class as f32);
        }
        assert_eq!(stored_label_values(&BTreeMap::new(), 3).0, [0, 1, 2]);
    }

    #[test]
    fn geometry_round_trip_restores_native_labels() {
        let geo = Geometry {
            h: 6,
            w: 4,
            size: 12,
            image_resize: ImageResize::Bilinear,
        };
        let label: Vec<u8> = (0..24).map(|i| (i % 4) as u8).collect();
        let input = geo.label_to_input(&label);
        assert_eq!(input.len(), 144);
        assert_eq!(geo.prediction_to_native(&input), label);
    }

    #[test]
    fn remap_labels_maps_listed_values_and_the_rest() {
        let p = Path::new("labels.nii");
        let map: BTreeMap<String, u8> = [("21", 1), ("22", 2), ("*", 0)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let mut d = vec![0.0, 21.0, 22.0, 23.0, 105.0];
        remap_labels(&mut d, &map, p).unwrap();
        assert_eq!(d, [0.0, 1.0, 2.0, 0.0, 0.0]);
        let strict: BTreeMap<String, u8> = [("21".to_string(), 1)].into();
        let msg = remap_labels(&mut [21.0, 7.0], &strict, p)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("labels.nii") && msg.contains("voxel 1 has label 7"),
            "{msg}"
        );
        let bad: BTreeMap<String, u8> = [("L1".to_string(), 1)].into();
        let msg = remap_labels(&mut [1.0], &bad, p).unwrap_err().to_string();
        assert!(msg.contains("\"L1\" is not an integer"), "{msg}");
    }

    #[test]
    fn clip_window_comes_before_normalisation() {
        // HU -1000 (air) and 1500 (bone) fall to the window edges; minmax then maps the window
        // to [0, 1]: 0 HU → 125/400.
        let mut d = vec![-1000.0, -125.0, 0.0, 275.0, 1500.0];
        Intensity {
            clip: Some([-125.0, 275.0]),
            normalize: Normalize::Minmax,
        }
        .apply(&mut d);
        assert_eq!(d, vec![0.0, 0.0, 0.3125, 1.0, 1.0]);
    }

    #[test]
    fn zscore_has_zero_mean_unit_std() {
        let mut d = vec![1.0, 2.0, 3.0, 4.0];
        normalize_in_place(&mut d, Normalize::Zscore);
        let mean: f32 = d.iter().sum::<f32>() / 4.0;
        let var: f32 = d.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }
}
